"""Inference with a trained Learner (mixed into `Learner`): `get_preds` over a loader, `predict` on one item or a
batch. Both split batches and call the model with the same `split_batch` / `forward` the fit loop uses."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..callbacks.optimizer_modes import evaluating
from .batches import logits_of


class Inference:
    def get_preds(self, dl=None, with_input: bool = False, with_loss: bool = False, act=None):
        """Model outputs and targets over `dl` (default: the validation loader), concatenated, on the CPU:
        `(preds, targets)`, with the inputs first (`with_input`) and per-sample losses last (`with_loss`).

        Outputs with `logits` give those; tuple and dict outputs are concatenated element by element (0-d entries,
        such as a batch's `loss`, are left out). `act` (e.g. `lambda p: p.softmax(-1)`) is applied to the output
        tensor, or to the first element of a tuple, or to a dict's `logits`. Targets are None on an unlabelled
        loader (batches of inputs only, or dicts without labels)."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no loader to predict on: pass get_preds(dl=...) or build DataLoaders with a valid set")
        loss_func = _per_sample_loss(self.loss_func) if with_loss else None
        inputs, preds, targets, losses = [], [], [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), evaluating(self):  # a schedule-free optimizer's evaluation weights
                for batch in dl:
                    xb, yb = self.split_batch(self.to_device(batch))
                    pred = logits_of(self.forward(xb))
                    preds.append(_to_cpu(pred))
                    targets.append(_to_cpu(yb))
                    if with_input:
                        inputs.append(_to_cpu(xb))
                    if with_loss:
                        losses.append(loss_func(pred, yb).float().cpu())
        finally:
            self.model.train(was_training)
        preds = _apply_act(_concat(preds), act)
        res = [preds, None if any(t is None for t in targets) else _concat(targets)]
        if with_input:
            res.insert(0, _concat(inputs))
        if with_loss:
            res.append(torch.cat(losses))
        return tuple(res)

    def predict(self, item):
        """Model output for one item (a sample without its batch dimension: the output for it, without one) or a
        batch, as a tensor or a numpy array; eval mode, no gradients, on the CPU. Outputs with `logits` give those."""
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f"predict expects a tensor or a numpy array (one item or a batch), got {type(item).__name__}; "
                "for other batch formats use get_preds(dl=...)"
            )
        single = self._sample_shape() == tuple(item.shape)
        xb = item.unsqueeze(0) if single else item
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), evaluating(self):
                out = _to_cpu(logits_of(self.forward(self.to_device(xb))))
        finally:
            self.model.train(was_training)
        return _first_item(out) if single else out

    def _sample_shape(self) -> tuple | None:
        """The shape of one training input, without the batch dimension, from the data (None when unknown)."""
        train = self.dls.train
        x = getattr(train, "x", None)
        if isinstance(x, torch.Tensor):
            return tuple(x.shape[1:])
        dataset = getattr(train, "dataset", None)
        if dataset is not None and len(dataset) > 0:
            sample = dataset[0]
            first = sample[0] if isinstance(sample, (tuple, list)) else sample
            if isinstance(first, (torch.Tensor, np.ndarray)):
                return tuple(first.shape)
        return None


def _per_sample_loss(loss_func):
    if loss_func is None or not hasattr(loss_func, "reduction"):
        raise ValueError(
            "get_preds(with_loss=True) needs a loss_func with a `reduction` attribute (a torch.nn loss such as "
            f"nn.CrossEntropyLoss()), to compute one loss per sample; this learner's loss_func is {loss_func!r}"
        )
    per_sample = copy.copy(loss_func)
    per_sample.reduction = "none"
    return per_sample


def _to_cpu(b):
    if isinstance(b, torch.Tensor):
        return b.detach().cpu()
    if isinstance(b, (tuple, list)):
        return type(b)(_to_cpu(o) for o in b)
    if isinstance(b, dict):
        return {k: _to_cpu(v) for k, v in b.items()}
    return b


def _concat(parts: list):
    """Batches of outputs joined along the batch dimension, element by element for tuples and dicts."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([p.float() if p.is_floating_point() else p for p in parts])
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k, v in first.items()
                if not (isinstance(v, torch.Tensor) and v.ndim == 0)}
    if isinstance(first, tuple) or (isinstance(first, list) and first and isinstance(first[0], torch.Tensor)):
        return type(first)(_concat(list(column)) for column in zip(*parts, strict=True))
    if isinstance(first, list):  # lists of items (token lists, strings): one long list
        return [item for p in parts for item in p]
    return parts


def _apply_act(preds, act):
    if act is None:
        return preds
    if isinstance(preds, torch.Tensor):
        return act(preds)
    if isinstance(preds, tuple):
        return (act(preds[0]), *preds[1:])
    if isinstance(preds, dict) and "logits" in preds:
        return {**preds, "logits": act(preds["logits"])}
    raise ValueError(f"get_preds(act=...): no tensor to apply it to in outputs of type {type(preds).__name__}")


def _first_item(out):
    if isinstance(out, torch.Tensor):
        return out[0]
    if isinstance(out, (tuple, list)):
        return type(out)(_first_item(o) for o in out)
    if isinstance(out, dict):
        return {k: _first_item(v) for k, v in out.items() if not (isinstance(v, torch.Tensor) and v.ndim == 0)}
    return out
