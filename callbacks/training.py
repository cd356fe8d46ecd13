"""The standard training callbacks: stopping on a NaN loss or gradient, gradient clipping, gradient accumulation and
a CSV log of the epoch table; early stopping and LR reduction on a plateau (callbacks/monitors.py) are re-exported
here.

Their orders, and why, are in the one table of every callback's order, `cyclr.callbacks.core.ORDER`.

Every callback here keeps its state in `state_dict()` (plain values), so a resumed fit continues exactly.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..data.checks import int_at_least, positive, user_stacklevel
from ..data.core import loader_length
from .core import ORDER, Callback, CancelBatchException, CancelFitException
from .mixed_precision import MixedPrecision


class TerminateOnNaNCallback(Callback):
    """Stop the fit at the first training batch whose loss or gradients are NaN or infinite, before its step, so the
    weights stay those of the last good step. A learner has one by default, and it tests every step.

    The loss and every gradient are tested together in before_step, on the device, by torch's fused non-finite test
    (the kernel GradScaler uses to find overflowing gradients: one pass, no host read until the end), then read on
    the host once per step; data-parallel processes add up their answers in one all-reduce first, so all stop at
    the same batch. `check_grads=False` tests the loss only: on CUDA its answer is copied to pinned host memory
    without blocking in after_loss and waited for in before_step, so the host waits for the forward pass alone, not
    the backward pass already queued. Under float16 MixedPrecision the gradients are left to its GradScaler, which
    skips the steps whose scaled gradients overflow. `stopped_at` is `(epoch, batch, optimizer_step)` once it
    stopped a fit, else None.
    """

    # before_step before GradientAccumulation, which cancels the step of non-final micro-batches, and before
    # MixedPrecision, whose scaler would take a NaN loss for an overflow and skip the step without stopping.
    order = ORDER.nan_guard

    def __init__(self, check_grads: bool = True):
        self.check_grads = bool(check_grads)
        self.stopped_at: tuple[int, int, int] | None = None
        self._finite = self._copied = None
        self._pinned: torch.Tensor | None = None
        self._grads_checked = self.check_grads
        self._found = self._one = None  # the fused test's count of non-finite tensors and its scale 1.0, on the device

    def before_fit(self, learn):
        self.stopped_at = None
        # float16 loss scaling expects overflowing gradients now and then: its GradScaler skips those steps itself.
        scaled = any(isinstance(cb, MixedPrecision) and cb.dtype is torch.float16 for cb in learn.cbs)
        self._grads_checked = self.check_grads and not scaled

    def after_loss(self, learn):
        if not learn.training or self._grads_checked:
            return  # the loss is tested with the gradients in before_step
        finite = torch.isfinite(learn.loss.detach()).all()
        if finite.device.type == "cuda":
            if self._pinned is None:
                self._pinned = torch.empty((), dtype=torch.bool, pin_memory=True)
            self._pinned.copy_(finite, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
            self._finite = self._pinned
        else:
            self._finite, self._copied = finite, None

    def before_step(self, learn):
        if self._grads_checked:
            grads = [p.grad for g in learn.opt.param_groups for p in g["params"] if p.grad is not None]
            # A copy of the loss: the test writes its tensors in place, which a graph saving the loss would refuse.
            bad = self.non_finite([learn.loss.detach().clone(), *grads])
        else:
            if self._copied is not None:
                self._copied.synchronize()  # waits for the forward pass and the copy, not for the backward pass
            bad = ~self._finite
        if getattr(learn, "is_distributed", False):
            # Every process must stop at the same batch, or the others wait forever in the next collective.
            bad = learn.all_reduce_sum(bad.float().to(learn.device))
        if not bad.item():  # the one host read per step
            return
        self.stopped_at = (learn.epoch, learn.iter, learn.train_iter)
        loss = learn.loss.detach().float().flatten()[0].item()
        what = (f"the training loss is {loss}" if not math.isfinite(loss) else
                f"the training loss is finite ({loss:.6g}) but a gradient is NaN or infinite")
        warnings.warn(
            f"{what} at epoch {learn.epoch}, batch {learn.iter} (optimizer step {learn.train_iter}): the fit stopped "
            "before this batch's step, so the weights are those of the last step with finite loss and gradients. "
            "Try a lower learning rate, gradient clipping (GradientClip) or check the data of this batch.",
            RuntimeWarning,
            stacklevel=user_stacklevel(),
        )
        raise CancelFitException()

    def non_finite(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Non-zero (a tensor on the device) when any of `tensors` holds a NaN or an infinity."""
        device = tensors[0].device
        if self._found is None or self._found.device != device:
            self._found, self._one = torch.zeros(1, device=device), torch.ones(1, device=device)
        if FUSED_NON_FINITE_TEST is not None:
            self._found.zero_()
            try:
                FUSED_NON_FINITE_TEST(tensors, self._found, self._one)
                return self._found
            except RuntimeError:  # tensors on several devices (a model split over GPUs), gradients with a graph
                pass
        return ~torch.isfinite(largest_abs(tensors))


# torch's fused non-finite test, the kernel GradScaler unscales gradients with: adds to `found` (a 1-element float
# tensor) when one of the tensors holds a NaN or an infinity, on their device, in one pass over all of them, without
# a host read. It multiplies each tensor in place by `inv_scale` (here exactly 1.0, which changes no value).
FUSED_NON_FINITE_TEST = getattr(torch, "_amp_foreach_non_finite_check_and_unscale_", None)


def largest_abs(grads: list[torch.Tensor]) -> torch.Tensor:
    """The largest |gradient| (a 0-d tensor, no host read): NaN or infinite exactly when some gradient is. Where the
    fused test cannot run: on CUDA torch's foreach inf-norm, on the CPU, where that kernel is slow, |g|.max() per
    tensor (benchmarks/nan_guard.py)."""
    if grads[0].device.type == "cuda":
        return torch.nn.utils.get_total_norm(grads, norm_type=math.inf)
    return torch.stack([g.detach().abs().max().float() for g in grads]).max()  # .float(): grads of mixed dtypes


class GradientClip(Callback):
    """Clip the norm of all gradients together to `max_norm` before each step (`torch.nn.utils.clip_grad_norm_`).

    `last_norm` is the total norm before clipping at the last step, a tensor left on the device (no host sync).
    """

    order = ORDER.gradient_clip

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0):
        self.max_norm = positive("max_norm", max_norm)
        self.norm_type = norm_type if norm_type == math.inf else positive("norm_type", norm_type)
        self.last_norm: torch.Tensor | None = None

    def before_step(self, learn):
        self.last_norm = torch.nn.utils.clip_grad_norm_(learn.model.parameters(), self.max_norm, self.norm_type)


class GradientAccumulation(Callback):
    """Take one optimizer step every `n_batches` training batches (micro-batches), with their gradients averaged:
    the step of a batch `n_batches` times larger, in the memory of one.

    Schedules, the Recorder and checkpoints count optimizer steps, not micro-batches:

    - the step of a non-final micro-batch is cancelled (CancelBatchException in before_step: no step, no zero_grad,
      so the gradients add up); the fit loop counts `learn.train_iter` only for batches that stepped, so every
      micro-batch of a step sees the same `pct_train` and thus the same scheduled values;
    - `learn.n_train_iters` becomes the number of steps, `n_epoch * ceil(len(dls.train) / n_batches)` (a stream:
      its fit's `steps_per_epoch` for the len(), which it needs): a group never spans two epochs (the last one of
      an epoch may be shorter), so `pct_train` still ends at (N-1)/N;
    - each micro-batch's loss gradient is divided by the size of its group, so the gradients are the mean of the
      micro-batches' gradients;
    - the Recorder records one row per step, whose loss is the mean of its micro-batches' losses (the epoch's
      `train_loss` averages every micro-batch, sample-weighted, as without accumulation).
    """

    order = ORDER.gradient_accumulation

    def __init__(self, n_batches: int):
        self.n_batches = int_at_least("n_batches", n_batches, 1)
        self._epoch_batches = 0  # set by before_fit
        self._losses: list[torch.Tensor] = []
        self._micro_loss: torch.Tensor | None = None

    def fit_config(self) -> dict:
        # The effective batch size: a resumed fit with another n_batches would take steps of another size.
        return {"n_batches": self.n_batches}

    def steps_per_epoch(self, n_batches: int) -> int:
        """A group of `self.n_batches` batches takes one step; an epoch's last group may be shorter."""
        return math.ceil(n_batches / self.n_batches)

    def before_fit(self, learn):
        # The training batches an epoch draws: the loader's len(), or a stream's steps_per_epoch.
        self._epoch_batches = loader_length(learn.dls.train) or learn.steps_per_epoch
        if not self._epoch_batches:
            raise ValueError(
                f"GradientAccumulation({self.n_batches}) on a training loader without a len() (a stream) needs the "
                "epoch's length, to know where its last group of batches ends (and take that group's step): pass "
                "fit(n_epoch, steps_per_epoch=N)"
            )
        learn.set_counters(n_train_iters=learn.n_epoch * self.steps_per_epoch(self._epoch_batches))

    def _group_size(self, learn) -> int:
        first = learn.iter // self.n_batches * self.n_batches
        return min(self.n_batches, self._epoch_batches - first)

    def _is_last_of_group(self, learn) -> bool:
        return (learn.iter + 1) % self.n_batches == 0 or learn.iter + 1 == self._epoch_batches

    def after_loss(self, learn):
        if not learn.training:
            return
        if learn.iter % self.n_batches == 0:
            self._losses = []
        self._losses.append(learn.loss.detach())

    def before_backward(self, learn):
        size = self._group_size(learn)
        if size > 1:
            # Scales the gradient flowing out of the loss, i.e. backward of loss / size, without touching learn.loss.
            learn.loss.register_hook(lambda grad: grad / size)

    def before_step(self, learn):
        if not self._is_last_of_group(learn):
            raise CancelBatchException()  # no step, no zero_grad: the next micro-batch adds its gradients
        if len(self._losses) > 1:
            self._micro_loss = learn.loss
            learn.loss = torch.stack(self._losses).mean()  # what the Recorder (order 50) records for this step

    def after_batch(self, learn):
        if self._micro_loss is not None:  # the epoch's train_loss averages micro-batches: give it this one back
            learn.loss, self._micro_loss = self._micro_loss, None
