"""Optimizers beyond a schedule: schedule-free ones (two sets of weights, a train and an eval mode) and
learning-rate-free ones (Prodigy, D-Adaptation: an estimated step size `d` multiplying the nominal lr).

- `OptimizerModes`, a default callback of every Learner: puts a schedule-free optimizer (Schedule-Free AdamW, SGD,
  RAdam, `ScheduleFreeWrapper` of the `schedulefree` package: any optimizer with callable `train()` and `eval()`)
  in train mode before the training phase and in eval mode before validation and at the end of a fit, however it
  ends. It acts once per phase, never per batch; other optimizers are left alone.
- `evaluating(learn)`: a context in which the optimizer is in eval mode (what `save`, `get_preds` and `predict`
  run in), back in the mode it was in afterwards.
- `effective_lrs(groups)`: `d * lr` per parameter group for an optimizer that estimates `d`, else None; the
  Recorder records it beside the nominal lr (columns `eff_lr`, `eff_lr_<i>`).
"""

from __future__ import annotations

from contextlib import contextmanager

from .core import ORDER, Callback
from .hypers import get_hyper, has_hyper

__all__ = ["has_modes", "in_train_mode", "evaluating", "effective_lrs", "OptimizerModes"]


def has_modes(opt) -> bool:
    """Whether `opt` keeps a train and an eval mode (schedule-free optimizers): told by its methods, not its class,
    so that wrappers and other packages' schedule-free optimizers count too."""
    return opt is not None and callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))


def in_train_mode(opt, default: bool) -> bool:
    """The mode `opt` says it is in (the `schedulefree` package keeps a `train_mode` flag in every group); `default`
    for an optimizer that keeps no such flag."""
    return any(bool(g.get("train_mode", default)) for g in opt.param_groups)


@contextmanager
def evaluating(learn):
    """Run the body with `learn.opt` in eval mode (the weights a schedule-free optimizer evaluates and saves),
    then put it back in train mode if it was in it, whatever the body raised. A no-op for other optimizers.

    The round trip eval -> train recomputes the training weights from the saved ones, so a fit resumed from a
    checkpoint written here goes on from bitwise the same weights as the fit that wrote it."""
    opt = getattr(learn, "opt", None)
    was_training = has_modes(opt) and in_train_mode(opt, default=bool(learn.in_fit and learn.training))
    if was_training:
        opt.eval()
    try:
        yield
    finally:
        if was_training:
            opt.train()


def effective_lrs(groups) -> list[float] | None:
    """`d * lr` of every group of an optimizer that estimates a step size `d` (Prodigy, D-Adaptation); None for
    others. Read before the step: the `d` that step multiplies its lr by."""
    if not groups or not has_hyper(groups[0], "d"):
        return None
    return [float(get_hyper(g, "d")) * float(get_hyper(g, "lr")) for g in groups]


class OptimizerModes(Callback):
    """Train mode for the training phase, eval mode for validation and after the fit (see the module docstring)."""

    # Before every other callback of a phase: the mixed-precision, gradient and LR-finder callbacks (orders 2-20)
    # and the Recorder (50) must all see the weights of the phase they are in.
    order = ORDER.optimizer_modes

    def before_train(self, learn) -> None:
        if has_modes(learn.opt):
            learn.opt.train()

    def before_validate(self, learn) -> None:
        if has_modes(learn.opt):
            learn.opt.eval()

    def after_fit(self, learn) -> None:
        self.before_validate(learn)

    def cleanup_fit(self, learn) -> None:
        # Also after an exception, which skips after_fit: the model is left with its evaluation weights.
        self.before_validate(learn)
