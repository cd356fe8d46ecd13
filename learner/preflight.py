"""Checks done before any weight changes: the Learner's arguments, a fit's arguments, and one batch of the data run
through the model and the loss, so that bad input fails with a message that says what to change, not deep inside
an epoch."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..callbacks.core import Callback, check_hook_names
from ..data.checks import int_at_least, non_negative, positive

_COMPILE_KEYS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")


def check_learner_arguments(model, dls, loss_func, opt_func, lr, wd, metrics) -> list:
    """The Learner's arguments, checked; returns the metrics as a list."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(dls, "train"):
        raise TypeError(
            f"dls must be a data.DataLoaders (with .train and .valid), got {type(dls).__name__}; "
            "build one with DataLoaders(train_dl, valid_dl) or DataLoaders.from_tensors(...)"
        )
    if not callable(loss_func):
        raise TypeError(f"loss_func must be callable (e.g. torch.nn.CrossEntropyLoss()), got {loss_func!r}")
    if not callable(opt_func):
        raise TypeError(f"opt_func must be callable as opt_func(params, lr=...), got {opt_func!r}")
    positive("lr", lr)
    non_negative("wd", wd)
    metrics = list(metrics)
    for m in metrics:
        if not callable(m):
            raise TypeError(f"each metric must be callable as metric(pred, target), got {m!r}")
    return metrics


def check_fit_arguments(n_epoch, lr, wd, cbs) -> list[Callback]:
    """A fit's arguments, checked; returns its callbacks as a list."""
    int_at_least("n_epoch", n_epoch, 1)
    if lr is not None:
        positive("lr", lr)
    if wd is not None:
        non_negative("wd", wd)
    if isinstance(cbs, Callback):
        raise TypeError(f"cbs must be a list of callbacks, got a single {cbs.name}; pass cbs=[{cbs.name}(...)]")
    cbs = list(cbs)
    for cb in cbs:
        check_hook_names(cb)
    return cbs


def compile_options(channels_last, compile) -> dict | None:
    """The keyword arguments for torch.compile (None: don't compile), after checking both speed options."""
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be True or False, got {channels_last!r}")
    if isinstance(compile, bool):
        return {} if compile else None
    if not isinstance(compile, dict):
        raise TypeError(
            f"compile must be True, False or a dict of torch.compile arguments like {{'mode': 'max-autotune'}}, "
            f"got {type(compile).__name__}"
        )
    unknown = sorted(set(compile) - set(_COMPILE_KEYS))
    if unknown:
        raise ValueError(f"compile has unknown torch.compile arguments {unknown}; allowed: {', '.join(_COMPILE_KEYS)}")
    return dict(compile)


def warn_compile_on_cpu(device: torch.device, options: dict | None) -> None:
    """torch.compile pays off on GPUs; on the CPU it was measured 1.68x slower than eager for LeNet (README)."""
    if options is not None and device.type == "cpu":
        warnings.warn(
            "compile=True on the CPU: torch.compile's generated CPU code was measured 1.68x slower than the eager "
            "model for LeNet on Fashion-MNIST; it pays off on CUDA devices. Pass compile=False to train eagerly.",
            UserWarning, stacklevel=3,
        )


def parse_device(device) -> torch.device:
    """`device` as a torch.device; None: the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be a torch.device or a string like 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}"
        ) from e


def check_data(learn) -> None:
    """Non-empty loaders, and a first training batch that the model and the loss accept, with labels that fit."""
    train = learn.dls.train
    if train is None or len(train) == 0:
        raise ValueError("the training loader is empty: give DataLoaders at least one training batch")
    valid = getattr(learn.dls, "valid", None)
    if valid is not None and hasattr(valid, "__len__") and len(valid) == 0:
        raise ValueError("the validation loader is empty: give it at least one batch, or pass valid=None")
    xb, yb = _first_items(train)
    if xb is None:
        return
    xb, yb = learn.to_device(xb), learn.to_device(yb)
    model = learn.model
    was_training = model.training
    model.eval()  # eval + no_grad: the check must not touch batch-norm statistics or gradients
    try:
        with torch.no_grad():
            try:
                pred = model(xb)
            except Exception as e:
                raise ValueError(
                    f"the model failed on a training batch of shape {tuple(xb.shape)}: {e}. "
                    "Check that the model's input layer fits the data."
                ) from e
            _check_labels(pred, yb, train)
            _check_loss(learn.loss_func, pred, yb)
    finally:
        model.train(was_training)


def _check_loss(loss_func, pred, yb) -> None:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = loss_func(pred, yb)
    except Exception as e:
        raise ValueError(
            f"loss_func failed on the model output of shape {tuple(pred.shape)} and targets of shape "
            f"{tuple(yb.shape)}: {e}"
        ) from e
    # MSELoss and friends broadcast a target of another shape with only a warning: the loss would be silently wrong.
    if any("target size" in str(w.message) for w in caught):
        raise ValueError(
            f"loss_func got a model output of shape {tuple(pred.shape)} and targets of shape {tuple(yb.shape)}, "
            "which it would broadcast into a wrong loss: make the model's last layer output the targets' shape"
        )
    for w in caught:  # the others are not ours to swallow
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_func must return a scalar tensor, got {shape}; reduce it (e.g. reduction='mean')")


def _first_items(dl):
    """A first batch to check shapes with, taken without advancing the loader's shuffling state."""
    if hasattr(dl, "x") and hasattr(dl, "y"):
        bs = max(1, min(getattr(dl, "bs", 1), len(dl.y)))
        return dl.x[:bs], dl.y[:bs]
    dataset = getattr(dl, "dataset", None)
    if dataset is not None and hasattr(dataset, "__getitem__") and len(dataset) > 0:
        n = min(getattr(dl, "batch_size", None) or 1, len(dataset), 8)
        items = [dataset[i] for i in range(n)]
        try:
            return torch.utils.data.default_collate(items)
        except Exception:
            return None, None
    return None, None


def _check_labels(pred, yb, train) -> None:
    """Class labels must index the model's outputs; otherwise cross-entropy fails deep inside a batch."""
    if not (isinstance(pred, torch.Tensor) and isinstance(yb, torch.Tensor)):
        return
    if pred.ndim != 2 or yb.ndim != 1 or yb.dtype not in (torch.int64, torch.int32, torch.uint8):
        return
    labels = train.y if hasattr(train, "y") else yb
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= pred.shape[1]:
        raise ValueError(
            f"labels range over [{lo}, {hi}] but the model outputs {pred.shape[1]} classes; "
            f"labels must lie in [0, {pred.shape[1] - 1}]: give the last layer {hi + 1} outputs or fix the labels"
        )

