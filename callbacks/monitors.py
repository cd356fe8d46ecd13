"""Callbacks that watch one column of the Recorder's epoch table: EarlyStoppingCallback and ReduceLROnPlateau, and
their base Monitor, which SaveModelCallback shares. Their orders are explained in callbacks/training.py."""

from __future__ import annotations

import logging
import math
import warnings

from ..data.checks import int_at_least, non_negative, real, user_stacklevel
from .core import ORDER, Callback, CancelFitException
from .hypers import set_group_hyper
from .recorder import metric_name

MODES = ("auto", "min", "max")


def recorded_columns(learn) -> list[str]:
    """The columns of the Recorder's epoch table a callback may watch: the losses and each metric (and its
    `train_` twin when the Recorder measures the metrics on the training set too)."""
    metric_names = [metric_name(m) for m in learn.metrics]
    names = ["train_loss", "valid_loss", *metric_names]
    if learn.recorder.train_metrics:
        names += [f"train_{n}" for n in metric_names]
    return names


class Monitor(Callback):
    """A callback that watches one column of the Recorder's epoch table ('valid_loss', 'train_loss', a metric)."""

    def _init_monitor(self, monitor: str, mode: str, min_delta: float) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be the name of a recorded value like 'valid_loss', got {monitor!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.monitor, self.min_delta = monitor, non_negative("min_delta", min_delta)
        # Losses and error rates improve downwards, every other metric (accuracy, F1, ...) upwards.
        lower_is_better = "loss" in monitor or "error" in monitor
        self.mode = mode if mode != "auto" else ("min" if lower_is_better else "max")
        self._reset_best()

    def _check_monitor(self, learn) -> None:
        """Refuse a name the Recorder does not record, before the first step."""
        names = recorded_columns(learn)
        if self.monitor not in names:
            raise ValueError(f"{self.name}: monitor={self.monitor!r} is not recorded; choose one of {names}")
        if getattr(learn.dls, "valid", None) is None and not self.monitor.startswith("train_"):
            raise ValueError(
                f"{self.name}: monitor={self.monitor!r} is measured on the validation set, but learn.dls has none; "
                "give DataLoaders a validation loader or monitor 'train_loss'"
            )

    def _current(self, learn) -> float:
        return learn.recorder.epoch_rows[-1][self.monitor]

    def _warn_not_finite(self, learn, value: float, consequence: str) -> None:
        warnings.warn(f"{self.name}: {self.monitor} is {value} at epoch {learn.epoch}; {consequence}",
                      RuntimeWarning, stacklevel=user_stacklevel())

    def _improved(self, value: float) -> bool:
        # A NaN never improves (both comparisons are False).
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _reset_best(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf


class EarlyStoppingCallback(Monitor):
    """Stop the fit when `monitor` has not improved by more than `min_delta` for `patience` epochs in a row, or
    (with `check_finite=True`, the default, as Lightning's) as soon as it is NaN or infinite, with a warning naming
    the epoch.

    The decision is taken in after_epoch and carried out at the start of the next epoch, so the epoch that decided
    is complete (recorded, logged, checkpointed with the decision in it) and a resumed fit stops where the
    uninterrupted one would. `stopped_epoch` is the last epoch trained, `best_epoch` the best one.

    Args:
        monitor: the column of the Recorder's epoch table to watch: 'valid_loss', 'train_loss' or a metric's name
            (checked when the fit starts).
        min_delta: the smallest change that counts as an improvement, in the monitored value's unit (>= 0).
        patience: epochs in a row without improvement before stopping (>= 1).
        mode: 'min' (lower is better), 'max', or 'auto': 'min' for a name containing "loss" or "error", else
            'max'.
        check_finite: stop as soon as the monitored value is NaN or infinite; False: such a value counts as no
            improvement.
    """

    order = ORDER.early_stopping

    def __init__(self, monitor: str = "valid_loss", min_delta: float = 0.0, patience: int = 1, mode: str = "auto",
                 check_finite: bool = True):
        self._init_monitor(monitor, mode, min_delta)
        self.patience = int_at_least("patience", patience, 1)
        self.check_finite = bool(check_finite)
        self.wait, self.best_epoch, self.stopped_epoch = 0, None, None

    def before_fit(self, learn):
        self._check_monitor(learn)
        if not learn.resuming:
            self._reset_best()
            self.wait, self.best_epoch, self.stopped_epoch = 0, None, None

    def before_epoch(self, learn):
        if self.stopped_epoch is not None:
            raise CancelFitException()

    def after_epoch(self, learn):
        value = self._current(learn)
        if not math.isfinite(value):
            if self.check_finite:
                self.stopped_epoch = learn.epoch
                self._warn_not_finite(learn, value, f"stopping after this epoch (best {self.best:.6g} at epoch "
                                                    f"{self.best_epoch}); pass check_finite=False to go on")
                return
            self._warn_not_finite(learn, value, "it counts as no improvement (check_finite=False)")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, learn.epoch, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = learn.epoch
            logging.getLogger("cyclr").info(
                "EarlyStoppingCallback: no improvement of %s for %d epochs (best %.6g at epoch %s); stopping after "
                "epoch %d", self.monitor, self.wait, self.best, self.best_epoch, learn.epoch)

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = float(state["best"]), int(state["wait"])
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]


class ReduceLROnPlateau(Monitor):
    """Multiply the learning rate by `factor` when `monitor` has not improved by more than `min_delta` for
    `patience` epochs in a row; never below `min_lr` (nor above what the schedule asks for).

    It acts as a multiplier on top of whatever sets the rate: in before_batch, after any ParamScheduler (order 10)
    has written the scheduled rate, every group's rate becomes `rate * scale`; in after_batch the scheduled rate is
    put back. So with one-cycle or SGDR the shape of the schedule is kept and only scaled down, and without a
    scheduler the base rate never compounds. `scale` (the product of the reductions so far) is in its state.

    Args:
        monitor: the column of the Recorder's epoch table to watch: 'valid_loss', 'train_loss' or a metric's name
            (checked when the fit starts).
        factor: what each reduction multiplies the rate by, in (0, 1).
        patience: epochs in a row without improvement before each reduction (>= 1).
        min_lr: the floor of the reduced rate (>= 0); a scheduled rate already below it is left as it is.
        min_delta: the smallest change that counts as an improvement, in the monitored value's unit (>= 0).
        mode: 'min' (lower is better), 'max', or 'auto': 'min' for a name containing "loss" or "error", else
            'max'.
    """

    order = ORDER.reduce_lr_on_plateau

    def __init__(self, monitor: str = "valid_loss", factor: float = 0.1, patience: int = 1, min_lr: float = 0.0,
                 min_delta: float = 0.0, mode: str = "auto"):
        self._init_monitor(monitor, mode, min_delta)
        if not 0 < real("factor", factor) < 1:
            raise ValueError(f"factor must be in (0, 1) (the rate is multiplied by it), got {factor!r}")
        self.factor, self.patience = factor, int_at_least("patience", patience, 1)
        self.min_lr = non_negative("min_lr", min_lr)
        self.scale, self.wait = 1.0, 0
        self._scheduled: list[float] | None = None  # the rates the schedule set for the batch in progress

    def before_fit(self, learn):
        self._check_monitor(learn)
        if not learn.resuming:
            self._reset_best()
            self.scale, self.wait = 1.0, 0

    def before_batch(self, learn):
        if not learn.training or self.scale == 1.0:
            return
        groups = learn.opt.param_groups
        self._scheduled = [g["lr"] for g in groups]
        for g, lr in zip(groups, self._scheduled, strict=True):
            set_group_hyper(g, "lr", min(lr, max(lr * self.scale, self.min_lr)))

    def after_batch(self, learn):
        self._put_back(learn)

    def cleanup_fit(self, learn):
        self._put_back(learn)  # after an exception too: leave the optimizer at the scheduled rate

    def _put_back(self, learn) -> None:
        if self._scheduled is not None:
            for g, lr in zip(learn.opt.param_groups, self._scheduled, strict=True):
                set_group_hyper(g, "lr", lr)
            self._scheduled = None

    def after_epoch(self, learn):
        value = self._current(learn)
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.scale *= self.factor
            self.wait = 0
            logging.getLogger("cyclr").info(
                f"ReduceLROnPlateau: {self.monitor} has not improved for {self.patience} epochs (best "
                f"{self.best:.6g}); learning rates now x{self.scale:.3g} of the schedule")

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.scale = float(state["best"]), int(state["wait"]), float(state["scale"])
