"""Metrics. A batch metric is a function of (model output, target) returning a scalar tensor (kept on the device);
the Recorder averages it over the samples of the epoch. An epoch-level metric is an object with `update(pred,
target)`, `compute()` and `reset()`: a torchmetrics `Metric`, or `AccumMetric(func)`, which computes `func` once on
the epoch's concatenated outputs and targets (F1, AUC and the like, whose batch average is not their value)."""

from __future__ import annotations

import functools

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (pred.argmax(dim=-1) == target).float().mean()


def error_rate(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - accuracy."""
    return 1 - accuracy(pred, target)


def top_k_accuracy(pred: torch.Tensor, target: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Fraction of samples whose target is among the `k` highest-scoring classes; `functools.partial(top_k_accuracy,
    k=3)` is named `top_k_accuracy` in the tables."""
    top = pred.topk(min(k, pred.shape[-1]), dim=-1).indices
    return (top == target.unsqueeze(-1)).any(dim=-1).float().mean()


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error, over the batch (a batch average of it is not the epoch's value: use
    `AccumMetric(rmse)` for that)."""
    return torch.sqrt(torch.mean((pred.float().reshape(target.shape) - target.float()) ** 2))


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error."""
    return torch.mean((pred.float().reshape(target.shape) - target.float()).abs())


class AccumMetric:
    """`func(all_preds, all_targets)` on the epoch's outputs and targets, concatenated (on the device they came
    from), instead of an average of per-batch values.

    `activation` (any callable, e.g. `functools.partial(torch.softmax, dim=-1)`) is applied to the concatenated
    outputs first; `flatten=True` flattens both. Under data-parallel training each process computes it
    on its own share of the validation set."""

    def __init__(self, func, name: str | None = None, activation=None, flatten: bool = False):
        if not callable(func):
            raise TypeError(f"AccumMetric(func): func must be callable as func(preds, targets), got {func!r}")
        self.func, self.activation, self.flatten = func, activation, flatten
        self.name = name or _function_name(func)
        self.reset()

    def reset(self) -> None:
        self._preds, self._targets = [], []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._preds.append(pred.detach())
        self._targets.append(target.detach())

    def compute(self):
        if not self._preds:
            return torch.tensor(float("nan"))
        preds, targets = torch.cat(self._preds), torch.cat(self._targets)
        if self.activation is not None:
            preds = self.activation(preds)
        if self.flatten:
            preds, targets = preds.flatten(), targets.flatten()
        return self.func(preds, targets)

    def __repr__(self) -> str:
        return f"AccumMetric({self.name})"


def _function_name(func) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)
