"""What users bring (mixed into `Learner`): splitting a batch into inputs and targets, calling the model with them,
reading the loss and the metrics' input off the model's output, and moving nested batches to the device.

Batches: `(x, y)`; `(x1, ..., xn, y)` (the first `n_inp` are inputs, default all but the last); `((x1, x2), y)`; a
dict (HuggingFace style), passed whole as `model(**batch)`, its targets read from `labels` (or `label`, `target`,
`targets`, `y`). Inputs that are a tuple/list of tensors go in as `model(*inputs)`; a list of anything else (token
lists, strings from a `collate_fn`) is one argument.

Outputs: a tensor, a tuple, a dict or an object with attributes (HF `ModelOutput`). With `loss_func=None` the loss
is the output's `loss`; metrics see the output's `logits` when it has some, otherwise the output as it is.
"""

from __future__ import annotations

import torch

TARGET_KEYS = ("labels", "label", "target", "targets", "y")


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


def _is_argument_list(xb) -> bool:
    return isinstance(xb, (tuple, list)) and len(xb) > 0 and all(isinstance(o, torch.Tensor) for o in xb)


class Batches:
    n_inp: int | None
    loss_func: object

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
            yb = None if not targets else targets[0] if len(targets) == 1 else tuple(targets)
            return xb, yb
        return batch, None  # a bare tensor (an unlabelled loader): all input

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
        if self.loss_func is not None:
            return self.loss_func(pred, yb)
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
        if isinstance(b, torch.Tensor):
            if self.channels_last and b.dim() == 4:  # images in the weights' layout (no copy when already in it)
                return b.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            return b.to(self.device, non_blocking=True)
        if isinstance(b, (list, tuple)):
            return type(b)(self.to_device(o) for o in b)
        if isinstance(b, dict):
            return {k: self.to_device(v) for k, v in b.items()}
        return b
