"""Metrics. A batch metric is a function of (model output, target) returning a scalar tensor (kept on the device);
the Recorder averages it over the samples of the epoch. An epoch-level metric is an object with `update(pred,
target)`, `compute()` and `reset()`: a torchmetrics `Metric`, or `AccumMetric(func)`, which computes `func` once on
the epoch's concatenated outputs and targets (F1, AUC and the like, whose batch average is not their value).
`Metric(metric, target='mask', output='seg')` gives either kind one part of dict (or tuple) targets and outputs.
Batches with several targets (`(x, y, w)` with `n_inp=1`) give each as an argument: `metric(pred, y, w)`,
`update(pred, y, w)` and `AccumMetric`'s `func(preds, y, w)`, as fastai calls them; `Metric(m, target=0)` picks one."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..callbacks.recorder import metric_name


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

    def update(self, pred: torch.Tensor, *targets: torch.Tensor) -> None:
        """One batch: its output and its target (or, for batches with several, each: `func(preds, y, w)`)."""
        self._preds.append(pred.detach())
        self._targets.append(tuple(t.detach() for t in targets))

    def compute(self):
        if not self._preds:
            return torch.tensor(float("nan"))
        preds, targets = torch.cat(self._preds), [torch.cat(column) for column in zip(*self._targets, strict=True)]
        if self.activation is not None:
            preds = self.activation(preds)
        if self.flatten:
            preds, targets = preds.flatten(), [t.flatten() for t in targets]
        return self.func(preds, *targets)

    def __repr__(self) -> str:
        return f"AccumMetric({self.name})"


class Metric(nn.Module):
    """`metric` given one part of the targets and of the model's output instead of the whole: `target` and
    `output` name a dict's key (or a tuple's index, or an output's attribute); None passes that side whole.
    E.g. batches `(image, {'mask': m, 'edges': e})`: `Metric(torchmetrics.JaccardIndex(task='multiclass',
    num_classes=3), target='mask')`. The output is what every metric sees (its `logits` when it has some).

    `metric` is a batch metric (a function of (output, target), averaged over the samples) or an epoch-level one
    (update/compute/reset: a torchmetrics `Metric`, an `AccumMetric`), and the wrapper is of the same kind. It is
    a torch Module holding `metric`, so a torchmetrics object inside moves to the learner's device with it. The
    tables name it as `metric` is named, unless `name` is given."""

    def __init__(self, metric, target=None, output=None, name: str | None = None):
        super().__init__()
        epoch_level = all(callable(getattr(metric, m, None)) for m in ("update", "compute", "reset"))
        if not callable(metric) and not epoch_level:
            raise TypeError(
                f"Metric(metric): metric must be callable as metric(pred, target), or an object with "
                f"update/compute/reset (a torchmetrics Metric), got {metric!r}"
            )
        for side, key in (("target", target), ("output", output)):
            if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))):
                raise TypeError(f"Metric({side}=...) must be a key (str), an index (int) or None, got {key!r}")
        self.metric, self.target, self.output = metric, target, output
        self.name = name or metric_name(metric)
        if epoch_level:  # only then does the Recorder see update/compute/reset and treat it as epoch-level
            self.update, self.compute, self.reset = self._update, self._compute, self._reset

    def forward(self, pred, *targets):
        return self.metric(*self.parts(pred, _joined(targets)))

    # Methods of the wrapper, not the metric's own, so that a copy of the wrapper (the pre-flight's) uses its copy.
    def _update(self, pred, *targets) -> None:
        self.metric.update(*self.parts(pred, _joined(targets)))

    def _compute(self):
        return self.metric.compute()

    def _reset(self) -> None:
        self.metric.reset()

    def parts(self, pred, target) -> tuple:
        """(the output's part, the targets' part) this metric reads."""
        return _part(pred, self.output, "output", self), _part(target, self.target, "target", self)

    def extra_repr(self) -> str:
        return f"target={self.target!r}, output={self.output!r}"


def _joined(targets: tuple):
    # Several targets arrive as separate arguments (fastai's convention); `target=i` picks one of them.
    return targets[0] if len(targets) == 1 else targets


def _part(value, key, side: str, metric: Metric):
    if key is None:
        return value
    if isinstance(value, dict):
        if key in value:
            return value[key]
        found = f"a dict with keys {sorted(value, key=str)}"
    elif isinstance(value, (tuple, list)) and isinstance(key, int):
        if -len(value) <= key < len(value):
            return value[key]
        found = f"a {type(value).__name__} of {len(value)}"
    elif isinstance(key, str) and not isinstance(value, (torch.Tensor, tuple, list)) and hasattr(value, key):
        return getattr(value, key)  # an output object with attributes (HF ModelOutput)
    else:
        found = f"a {type(value).__name__}" + (f" of shape {tuple(value.shape)}" if hasattr(value, "shape") else "")
    raise ValueError(
        f"{metric.name}: Metric({side}={key!r}) reads {side} part {key!r}, but the {side} is {found}: pass "
        f"{side}= one of its keys (indices), or None for the whole"
    )


def _function_name(func) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)
