"""What users bring (mixed into `Learner`): splitting a batch into inputs and targets, calling the model with them,
reading the loss and the metrics' input off the model's output, and moving nested batches to the device.

Batches: `(x, y)`; `(x1, ..., xn, y)` (the first `n_inp` are inputs, default all but the last); several targets
`(x, y, w)` with `n_inp=1`, which the loss and the metrics get as separate arguments, `loss_func(pred, y, w)` (fastai's
convention: `Targets`); `((x1, x2), y)`; a
dict (HuggingFace style), passed whole as `model(**batch)`, its targets read from `labels` (or `label`, `target`,
`targets`, `y`). Inputs that are a tuple/list of tensors go in as `model(*inputs)`; a list of anything else (token
lists, strings from a `collate_fn`) is one argument.

Outputs: a tensor, a tuple, a dict or an object with attributes (HF `ModelOutput`). With `loss_func=None` the loss
is the output's `loss`; metrics see the output's `logits` when it has some, otherwise the output as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.core import Targets, loader_length

TARGET_KEYS = ("labels", "label", "target", "targets", "y")


def target_args(yb) -> tuple:
    """The targets as the loss and the metrics take them after the output: several (`Targets`) as separate
    arguments, one as it is."""
    return yb if type(yb) is Targets else (yb,)


def output_field(out, name: str):
    """`out.name` or `out[name]`, None when the output has no such field (tensors and tuples have none)."""
    if isinstance(out, dict):
        return out.get(name)
    if isinstance(out, (torch.Tensor, tuple, list)):
        return None
    return getattr(out, name, None)


def logits_of(out):
    """What the metrics and `get_preds` see of a model output: its `logits` when it has some, else itself."""
    if isinstance(out, torch.Tensor):
        return out
    logits = output_field(out, "logits")
    return out if logits is None else logits


def describe(obj) -> str:
    """A short description of a batch or an output for error messages, whatever its type (never fails)."""
    if isinstance(obj, torch.Tensor):
        return f"tensor of shape {tuple(obj.shape)} ({obj.dtype})"
    if isinstance(obj, dict):
        return "dict {" + ", ".join(f"{k!r}: {describe(v)}" for k, v in list(obj.items())[:6]) + "}"
    if isinstance(obj, (tuple, list)):
        if obj and all(isinstance(o, (torch.Tensor, tuple, list, dict)) for o in obj):
            return f"{type(obj).__name__} of {len(obj)} (" + ", ".join(describe(o) for o in obj[:6]) + ")"
        return f"{type(obj).__name__} of {len(obj)} {type(obj[0]).__name__ if obj else 'item'}s"
    if obj is None:
        return "None"
    fields = [n for n in ("loss", "logits") if getattr(obj, n, None) is not None]
    return f"{type(obj).__name__}" + (f" with {', '.join(fields)}" if fields else "")


# Failures of the loss that say nothing about the batch's data: re-raised as they are.
_NOT_ABOUT_THE_BATCH = (MemoryError, torch.cuda.OutOfMemoryError)


def batch_loss_error(learn, error: Exception, pred, yb) -> Exception:
    """`error`, raised by the loss on a batch of the loop, as an exception of the same type (RuntimeError when that
    type cannot be built from a message) whose message says which batch, what its targets and the model's output
    were, and what to change. Computed only on failure: reading the targets' range costs a host sync."""
    phase = "training" if learn.training else "validation"
    n = loader_length(learn.dl)
    where = f"{phase} batch {learn.iter}" + (f" (of {n})" if n is not None else "")
    if learn.in_fit:
        where += f" in epoch {learn.epoch}"
    message = (
        f"computing the loss failed on {where} ({type(error).__name__}: {error}); its targets: "
        f"{_described_values(yb)}; the model's output: {describe(pred)}. {_what_to_change(learn, pred, yb)} The "
        "pre-flight check before the fit ran only the first batch of each loader (and every label of a training "
        "loader with a .y, like InMemoryLoader), so data that differs later fails only when its batch comes."
    )
    try:
        return type(error)(message)
    except Exception:  # an exception type that wants other arguments than a message
        return RuntimeError(message)


def _target_range(yb) -> tuple | None:
    """(min, max) of a real-valued target tensor, None when it has none or it cannot be read (a CUDA device-side
    assert leaves the device unusable)."""
    if not isinstance(yb, torch.Tensor) or yb.numel() == 0 or yb.dtype == torch.bool or yb.is_complex():
        return None
    try:
        return yb.min().item(), yb.max().item()
    except Exception:
        return None


def _described_values(yb) -> str:
    span = _target_range(yb)
    if span is None:
        return describe(yb)
    lo, hi = (f"{v:.6g}" if isinstance(v, float) else str(v) for v in span)
    return f"{describe(yb)}, values {lo}..{hi}"


def _what_to_change(learn, pred, yb) -> str:
    span = _target_range(yb)
    classes = (isinstance(pred, torch.Tensor) and isinstance(yb, torch.Tensor) and not yb.is_floating_point()
               and span is not None and pred.ndim == yb.ndim + 1)
    if classes:
        lo, hi = span
        n_classes = pred.shape[1]
        ignored = getattr(learn.loss_func, "ignore_index", None)  # CrossEntropyLoss skips targets equal to it
        if hi >= n_classes or (lo < 0 and lo != ignored):
            wider = f", or give the model's last layer {hi + 1} outputs" if hi >= n_classes else ""
            return (f"The targets range {lo}..{hi} but the model outputs {n_classes} classes: class labels must lie "
                    f"in 0..{n_classes - 1}: fix the labels in the data{wider}.")
    return ("Check this batch's targets (dtype, shape, values) and the model's output against what loss_func "
            "expects.")


def _is_argument_list(xb) -> bool:
    return isinstance(xb, (tuple, list)) and len(xb) > 0 and all(isinstance(o, torch.Tensor) for o in xb)


class Batches:
    """A batch's steps a subclass may change: splitting it, moving it to the device, the forward pass, the loss.
    Reads the Learner's n_inp, loss_func, device, channels_last, model, compile_options and keeps `_compiled`
    (all declared in `Learner.__init__`)."""

    def split_batch(self, batch):
        """(inputs, targets) of a batch as the loader yields it; targets None when it has none."""
        if isinstance(batch, dict):
            return batch, next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if isinstance(batch, (tuple, list)):
            n_inp = len(batch) - 1 if self.n_inp is None else self.n_inp
            if len(batch) == 2 and n_inp == 1:  # the common (x, y): no slicing per batch
                return batch[0], batch[1]
            if n_inp < 1 or n_inp > len(batch):
                raise ValueError(
                    f"n_inp must be in [1, {len(batch)}] for batches of {len(batch)} parts, got {n_inp}; pass "
                    "Learner(..., n_inp=k) with the number of leading parts that are inputs"
                )
            xb = batch[0] if n_inp == 1 else tuple(batch[:n_inp])
            targets = batch[n_inp:]
            yb = None if not targets else targets[0] if len(targets) == 1 else Targets(targets)
            return xb, yb
        return batch, None  # a bare tensor (an unlabelled loader): all input

    def _model_to_run(self) -> nn.Module:
        """`self.model`, or with `compile=` its `torch.compile` wrapper, which shares its parameters (`self.model`
        itself stays the plain module, so state dicts and checkpoints keep their keys). Compiled again when
        `self.model` is replaced (e.g. wrapped for data-parallel training)."""
        if self.compile_options is None:
            return self.model
        if self._compiled is None or self._compiled._orig_mod is not self.model:
            self._compiled = torch.compile(self.model, **self.compile_options)
        return self._compiled

    def forward(self, xb):
        model = self._model_to_run()
        if isinstance(xb, torch.Tensor):
            return model(xb)
        if isinstance(xb, dict):
            return model(**xb)
        if _is_argument_list(xb):
            return model(*xb)
        return model(xb)

    def get_loss(self, pred, yb):
        """`loss_func(pred, yb)`; with several targets (`Targets`), `loss_func(pred, *yb)`, as fastai calls it."""
        if self.loss_func is not None:
            try:
                return self.loss_func(pred, *yb) if type(yb) is Targets else self.loss_func(pred, yb)
            except _NOT_ABOUT_THE_BATCH:
                raise
            except Exception as e:
                # Only the loop's own call (on the current batch) is explained here: the pre-flight, which calls
                # this on a batch of its own, words its messages itself.
                if pred is not getattr(self, "pred", None) or yb is not getattr(self, "yb", None):
                    raise
                raise batch_loss_error(self, e, pred, yb) from e
        loss = output_field(pred, "loss")
        if loss is None:
            raise ValueError(
                f"loss_func is None, so the loss must come from the model's output, but the output ({describe(pred)}) "
                "has no 'loss': pass a loss_func, or return an output with a loss (e.g. a dict {'loss': ...})"
            )
        return loss

    def metric_output(self, pred):
        """What the metrics are given of the model's output (`logits` when it has some)."""
        return pred if isinstance(pred, torch.Tensor) else logits_of(pred)

    def to_device(self, b):
        """`b` with every tensor in it on the learner's device; a batch already there comes back as it is (the
        same tuple or list), without a call into torch per tensor."""
        if isinstance(b, torch.Tensor):
            if self.channels_last and b.dim() == 4:  # images in the weights' layout (no copy when already in it)
                return b.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            return b if b.device == self.device else b.to(self.device, non_blocking=True)
        if isinstance(b, (list, tuple)):
            if not self.channels_last:
                for o in b:  # the usual (x, y) already on the device: nothing to build
                    if not isinstance(o, torch.Tensor) or o.device != self.device:
                        break
                else:
                    return b
            moved = [self.to_device(o) for o in b]
            return b if all(m is o for m, o in zip(moved, b, strict=True)) else type(b)(moved)
        if isinstance(b, dict):
            return {k: self.to_device(v) for k, v in b.items()}
        return b
