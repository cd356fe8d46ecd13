"""Checks done before any weight changes: the Learner's arguments, a fit's arguments, and one batch of the data run
through the model and the loss, so that bad input fails with a message that says what to change, not deep inside
an epoch."""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ..callbacks.core import Callback, check_hook_names
from ..callbacks.group_rates import check_lr_spec
from ..callbacks.recorder import is_epoch_metric, metric_name
from ..callbacks.schedules.base import check_rate
from ..data.checks import int_at_least, non_negative, user_stacklevel
from ..data.core import Targets, loader_length
from ..data.nested import tensors_in
from ..data.state import rng_state, set_rng_state
from .batches import describe, target_args

_COMPILE_KEYS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")


def check_learner_arguments(model, dls, loss_func, opt_func, lr, wd, metrics, n_inp=None) -> list:
    """The Learner's arguments, checked; returns the metrics as a list (a single metric is accepted)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(dls, "train"):
        raise TypeError(
            f"dls must be a cyclr.DataLoaders (with .train and .valid), got {type(dls).__name__}; "
            "build one with DataLoaders(train_dl, valid_dl) or DataLoaders.from_tensors(...)"
        )
    if loss_func is not None and not callable(loss_func):
        raise TypeError(
            f"loss_func must be callable (e.g. torch.nn.CrossEntropyLoss()), or None to use the model output's "
            f"'loss', got {loss_func!r}"
        )
    if not callable(opt_func):
        raise TypeError(f"opt_func must be callable as opt_func(params, lr=...), got {opt_func!r}")
    check_rate("lr", lr)
    if wd is not None:
        non_negative("wd", wd)
    if n_inp is not None:
        int_at_least("n_inp", n_inp, 1)
    metrics = [metrics] if callable(metrics) else list(metrics)
    for m in metrics:
        if not callable(m) and not is_epoch_metric(m):
            raise TypeError(
                f"each metric must be callable as metric(pred, target), or an object with update/compute/reset "
                f"(a torchmetrics Metric), got {m!r}"
            )
    return metrics


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def callback_list(cbs) -> list[Callback]:
    """`cbs` as a list: a single callback is accepted as well as a list of them, and None as none."""
    if cbs is None:
        return []
    if isinstance(cbs, Callback):
        return [cbs]
    if isinstance(cbs, (str, bytes, dict)) or not hasattr(cbs, "__iter__"):
        raise TypeError(f"cbs must be a Callback, a list of them or None, got {type(cbs).__name__} {cbs!r}")
    return list(cbs)


def check_fit_arguments(n_epoch, lr, wd, cbs) -> list[Callback]:
    """A fit's arguments, checked; returns its callbacks as a list."""
    int_at_least("n_epoch", n_epoch, 1)
    if lr is not None:
        check_lr_spec("lr", lr)  # a number, one per parameter group, or a slice
    if wd is not None:
        non_negative("wd", wd)
    cbs = callback_list(cbs)
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
            UserWarning, stacklevel=user_stacklevel(),
        )


def parse_device(device) -> torch.device:
    """`device` as a torch.device; None: the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be a torch.device or a string like 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}"
        ) from e
    if parsed.type == "meta":  # checked before the model moves: on 'meta' its weights would be gone for good
        raise ValueError(
            "device='meta' holds no data: the model's weights would be discarded and nothing could train; pass "
            "a real device ('cpu', 'cuda'), or build the model on 'meta' yourself and load weights before training"
        )
    return parsed


def check_first_batches(learn) -> None:
    """Non-empty loaders; a first training batch, exactly as the loader yields it, through the same split_batch /
    forward / get_loss the loop calls, with labels that fit; then (`sanity_check`) one validation batch through the
    loss and the metrics, so that a broken metric fails before the first step rather than after an epoch."""
    if not any(p.requires_grad for p in learn.model.parameters()):
        raise ValueError(
            "the model has no trainable parameters (every parameter has requires_grad=False), so no step could "
            "change it: unfreeze some with learn.unfreeze() or learn.freeze_to(n), or param.requires_grad_(True)"
        )
    train = learn.dls.train
    if train is None or loader_length(train) == 0:
        raise ValueError("the training loader is empty: give DataLoaders at least one training batch")
    valid = getattr(learn.dls, "valid", None)
    if valid is not None and loader_length(valid) == 0:
        raise ValueError("the validation loader is empty: give it at least one batch, or pass valid=None")
    model = learn.model
    was_training = model.training
    model.eval()  # eval + no_grad: the check must not touch batch-norm statistics or gradients
    def checks(few: bool) -> None:
        xb, yb, pred, all_yb = _run_first_batch(learn, train, "training", few)
        _check_labels(learn.metric_output(pred), all_yb, train)
        _check_loss(learn, pred, yb)
        if valid is not None and getattr(learn, "sanity_check", True):
            xb, yb, pred, _ = _run_first_batch(learn, valid, "validation", few)
            loss = _check_loss(learn, pred, yb, "validation")
            _check_metrics(learn, pred, yb, loss)

    single = {}  # batch-norm layers that see one value per channel of a sample: they cannot train on one sample
    hooks = [m.register_forward_pre_hook(functools.partial(_record_single, single, name))
             for name, m in model.named_modules() if isinstance(m, _BATCH_NORMS)]
    try:
        with torch.no_grad():
            try:
                checks(few=True)  # a couple of samples per batch: a fraction of a forward pass
            except Exception:
                checks(few=False)  # the whole batches: the error, if any, then names their real shapes
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    _check_last_batch(train, single)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _record_single(single: dict, name: str, module, args) -> None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and math.prod(x.shape[2:]) == 1:
        single[name or "the model"] = type(module).__name__


def _check_last_batch(train, single: dict) -> None:
    """A last training batch of one sample through a batch norm that sees one value per channel fails in the
    middle of the first epoch (torch: 'Expected more than 1 value per channel when training'): refused now."""
    if not single or getattr(train, "drop_last", False):
        return
    n, bs = getattr(train, "n_local", None), getattr(train, "bs", None)
    if n is None:
        dataset = getattr(train, "dataset", None)
        n = len(dataset) if hasattr(type(dataset), "__len__") else None
        bs = getattr(train, "batch_size", None)
    if not isinstance(n, int) or not isinstance(bs, int) or bs < 2 or n % bs != 1:
        return
    name, kind = next(iter(single.items()))
    raise ValueError(
        f"the training loader's last batch (batch {n // bs} of each epoch: {n} samples in batches of {bs}) holds "
        f"one sample, and {name} ({kind}) cannot normalise a single value per channel in training: pass "
        "drop_last=True to the training loader, or a batch size that leaves more than one sample at the end"
    )


def first_batch(dl, peeked: dict | None = None):
    """The loader's first batch as it yields it (collate_fn, batch_tfm included), leaving its shuffling state and
    the global RNGs as they were. A one-shot stream (an iterator, such as a generator) cannot give a
    batch back: the one drawn is kept in `peeked` (the learner's), where the next epoch over it takes it first."""
    if peeked is not None and isinstance(dl, Iterator):  # iter(dl) would start an epoch of any other loader
        if id(dl) not in peeked:
            peeked[id(dl)] = next(dl)
        return peeked[id(dl)]
    if hasattr(dl, "one_batch"):
        return dl.one_batch()
    rng = rng_state()
    state = dl.state_dict() if hasattr(dl, "state_dict") else None
    try:
        return next(iter(dl))
    finally:
        if state is not None:
            dl.load_state_dict(state)
        set_rng_state(rng)


def _head(batch, n: int = 2):
    """The first `n` samples of a batch of any structure (tensors sliced along their first dimension, tuples and
    dicts of them, lists of items), so the checks cost a tiny forward pass, not a whole batch's; None when the
    batch size cannot be told."""
    size = next((t.shape[0] for t in tensors_in(batch) if t.dim() > 0), None)
    if size is None or size <= n:
        return None

    def cut(part):
        if isinstance(part, torch.Tensor):
            return part[:n] if part.dim() > 0 and part.shape[0] == size else part
        if isinstance(part, dict):
            return {k: cut(v) for k, v in part.items()}
        if isinstance(part, (tuple, list)) and any(isinstance(p, (torch.Tensor, dict, tuple, list)) and
                                                   next(tensors_in(p), None) is not None for p in part):
            return type(part)(cut(p) for p in part)  # a structure of inputs and targets
        if isinstance(part, list) and len(part) == size:
            return part[:n]  # a batch of items (token lists, strings)
        return part

    return cut(batch)


def _run_first_batch(learn, dl, phase: str, few: bool):
    """(inputs, targets, output) of the loader's first batch, or with `few` of its first samples, and the targets
    of the whole batch (whose labels are all checked, whatever `few`)."""
    whole = learn.to_device(first_batch(dl, learn.peeked))
    batch = (_head(whole) or whole) if few else whole
    try:
        xb, yb = learn.split_batch(batch)
        all_yb = yb if batch is whole else learn.split_batch(whole)[1]
        if phase == "training" and learn.train_n_inp is None and isinstance(batch, (tuple, list)):
            # what every later batch, at inference too, is split with, whatever loaders come later
            learn.train_n_inp = learn.n_inp or len(batch) - 1
    except Exception as e:
        raise ValueError(f"split_batch failed on a {phase} batch {_shaped(batch)}: {e}") from e
    try:
        pred = learn.forward(xb)
    except Exception as e:
        raise ValueError(
            f"the model failed on a {phase} batch {_shaped(xb)}: {e}. Check that the model's "
            "input layer fits the data, and the batch format (tuple inputs go in as model(*inputs), dicts as "
            "model(**batch); Learner(n_inp=...) sets how many leading parts of a tuple batch are inputs)"
        ) from e
    return xb, yb, pred, all_yb


def _check_loss(learn, pred, yb, phase: str = "training"):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = learn.get_loss(pred, yb)
    except Exception as e:
        several = (f". The batches have {len(yb)} targets after their {learn.n_inp or 1} input(s), given to the loss "
                   f"as separate arguments, loss_func(pred, {', '.join(f'y{i}' for i in range(len(yb)))}) (fastai's "
                   "convention): write the loss to take them, or set n_inp if some are inputs."
                   if type(yb) is Targets else "")
        raise ValueError(
            f"loss_func failed on the model output {_shaped(pred)} and targets {_shaped(yb)} of a {phase} batch: "
            f"{e}{several}"
        ) from e
    # MSELoss and friends broadcast a target of another shape with only a warning: the loss would be silently wrong.
    if any("target size" in str(w.message) for w in caught):
        raise ValueError(
            f"loss_func got a model output {_shaped(pred)} and targets {_shaped(yb)}, which it would "
            "broadcast into a wrong loss: make the model's last layer output the targets' shape"
        )
    for w in caught:  # the others are not ours to swallow
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_func must return a scalar tensor, got {shape}; reduce it (e.g. reduction='mean')")
    return loss


def _check_metrics(learn, pred, yb, loss) -> None:
    """Each metric on one validation batch; epoch-level ones are updated and computed on a copy, so their own
    state is left as it was."""
    out = learn.metric_output(pred)
    for m in learn.metrics:
        try:
            if is_epoch_metric(m):
                probe = copy.deepcopy(m)
                if isinstance(probe, nn.Module):
                    probe.to(loss.device)
                probe.reset()
                probe.update(out, *target_args(yb))
                value = probe.compute()
            else:
                value = m(out, *target_args(yb))
            torch.as_tensor(value).float()
        except Exception as e:
            raise ValueError(
                f"the metric {metric_name(m)} failed on a validation batch, given the model output {_shaped(out)} "
                f"and targets {_shaped(yb)}: {e}. Fix the metric or the data, or pass "
                "Learner(..., sanity_check=False) to skip this check"
            ) from e


def _shaped(obj) -> str:
    """'of shape (4, 3)' for a tensor, 'of <description>' for anything else (lists of tokens, dicts, outputs)."""
    return f"of shape {tuple(obj.shape)}" if isinstance(obj, torch.Tensor) else f"({describe(obj)})"


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

