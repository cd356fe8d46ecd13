"""Mixed precision: the forward pass and the loss under `torch.autocast`, on the CPU and on CUDA.

`MixedPrecision(torch.bfloat16)` needs nothing else: bfloat16 has float32's range. `MixedPrecision(torch.float16)`
adds a `torch.amp.GradScaler`: the loss gradient is multiplied by the scale before backward (so small float16
gradients do not underflow), the gradients are unscaled before the step (so GradientClip and the optimizer see the
true ones), and a step whose gradients overflowed is skipped and the scale lowered. A skipped step is not a step:
it is not recorded, it does not advance `learn.train_iter` (so the schedule does not move), and its gradients are
dropped.
"""

from __future__ import annotations

import torch

from ..data.checks import int_at_least, positive
from .core import ORDER, Callback, CancelBatchException

DTYPES = (torch.bfloat16, torch.float16)


class _StepProbe:
    """Stands in for the optimizer in `GradScaler.step`, which unscales the gradients of `param_groups` and calls
    `step()` only when they are all finite: that call is how the scaler's decision is read through its public API.
    The real step is then the learner's own."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.param_groups = opt.param_groups
        self.finite = False

    def step(self) -> None:
        self.finite = True


class MixedPrecision(Callback):
    """Train (and validate) under autocast to `dtype` (torch.bfloat16 or torch.float16) on the learner's device.

    float16 uses a GradScaler (`init_scale`, `growth_interval` as in torch); its state is in `state_dict()`, so a
    resumed fit continues with the same scale. `skipped_steps` counts the steps the scaler skipped.
    """

    # Before GradientClip (15), which must see unscaled gradients, and after GradientAccumulation (3), which
    # cancels the steps of non-final micro-batches: the gradients are unscaled once, right before the real step.
    order = ORDER.mixed_precision

    def __init__(self, dtype: torch.dtype = torch.bfloat16, init_scale: float = 2.0**16, growth_interval: int = 2000):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype!r}")
        positive("init_scale", init_scale)
        growth_interval = int_at_least("growth_interval", growth_interval, 1)
        self.dtype, self.init_scale, self.growth_interval = dtype, float(init_scale), growth_interval
        self.scaler: torch.amp.GradScaler | None = None
        self._scaler_device: str | None = None
        self._scaler_state: dict | None = None  # loaded before the scaler exists (it needs the device)
        self._autocast = None
        self._in_autocast = False
        self.skipped_steps = 0

    def before_fit(self, learn):
        device_type = learn.device.type
        self._autocast = torch.autocast(device_type, dtype=self.dtype)
        if self.dtype is torch.float16 and (self.scaler is None or self._scaler_device != device_type):
            self.scaler = torch.amp.GradScaler(device_type, init_scale=self.init_scale,
                                               growth_interval=self.growth_interval)
            self._scaler_device = device_type
            if self._scaler_state is not None:
                self.scaler.load_state_dict(self._scaler_state)
                self._scaler_state = None

    # ----- autocast around the forward pass and the loss ------------------------------------------------------------
    def before_batch(self, learn):
        if self._autocast is None:  # validate() outside a fit
            self._autocast = torch.autocast(learn.device.type, dtype=self.dtype)
        self._autocast.__enter__()
        self._in_autocast = True

    def after_loss(self, learn):
        self._exit_autocast()  # backward runs outside autocast, as torch recommends

    def after_batch(self, learn):
        self._exit_autocast()  # a batch cancelled before after_loss

    def cleanup_fit(self, learn):
        self._exit_autocast()  # an exception or KeyboardInterrupt inside a batch

    def _exit_autocast(self) -> None:
        if self._in_autocast:
            self._autocast.__exit__(None, None, None)
            self._in_autocast = False

    # ----- loss scaling (float16) -----------------------------------------------------------------------------------
    def before_backward(self, learn):
        if self.scaler is not None:
            # Scales the gradient flowing out of the loss: backward of loss * scale, with learn.loss left unscaled
            # for the Recorder and the other callbacks.
            learn.loss.register_hook(self.scaler.scale)

    def before_step(self, learn):
        if self.scaler is None:
            return
        probe = _StepProbe(learn.opt)
        self.scaler.step(probe)  # unscales the gradients in place; probe.step() runs only if all are finite
        self.scaler.update()  # lowers the scale after an overflow, raises it after growth_interval good steps
        if not probe.finite:
            self.skipped_steps += 1
            learn.zero_grad()
            raise CancelBatchException()  # no step: not recorded, learn.train_iter does not advance

    # ----- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        scaler = self.scaler.state_dict() if self.scaler is not None else self._scaler_state
        return {"dtype": str(self.dtype).removeprefix("torch."), "scaler": scaler, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        saved = state["dtype"]
        if saved != str(self.dtype).removeprefix("torch."):
            raise ValueError(
                f"the checkpoint was trained with MixedPrecision({saved}), this callback uses {self.dtype}; "
                "resume with the same dtype"
            )
        self.skipped_steps = int(state["skipped_steps"])
        if state["scaler"]:
            if self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            else:
                self._scaler_state = dict(state["scaler"])
