"""What the experiment trackers (callbacks/loggers.py: TensorBoardCallback, MLflowCallback) share: which fits they
log, the step of each row, the fit's hyperparameters, the LR finder's curve, and what happens when a tracker fails.

A tracker that fails (a full disk under its folder or store, a store that refuses a write) must not cost the epoch's
checkpoint: its failure is held and raised as a `LoggerError` once the checkpoint is written
(callbacks/held_failure.py). A failure at the start of a fit, before anything is trained, is raised at once.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings

import torch

from ..data.checks import user_stacklevel
from ..data.core import loader_length
from .core import ORDER, Callback
from .held_failure import HeldFailure, after_checkpoint
from .hypers import get_hyper
from .lr_finder import LRFinderCallback
from .scheduler import ParamScheduler

__all__ = ["TrackerCallback", "fit_hyperparameters", "lr_find_series", "require"]

TRACK_EXTRA = "pip install 'cyclr[track]'"
# Hyperparameters the Recorder does not record, logged per step only when a ParamScheduler changes them.
_EXTRA_HYPERS = ("wd", "beta2")
# Callbacks every learner carries: not part of what makes one fit differ from another.
_DEFAULT_CALLBACKS = (
    "Recorder", "ProgressCallback", "TerminateOnNaNCallback", "OptimizerModes", "PreemptionCheckpoint",
)


def require(module: str, package: str, callback: str) -> None:
    """An ImportError naming the extra to install, raised when the callback is created rather than mid-fit."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{callback} needs the {package!r} package, which is not installed: {TRACK_EXTRA}")


class TrackerCallback(Callback):
    """What both trackers share: which fits to log, the step of each row, the hyperparameters, the LR finder, and
    holding a failure until the checkpoint is written (module docstring).

    Subclasses write: `_open(learn)`, `_write(metrics)` with `metrics` a list of (key, value, step),
    `_write_params(params)`, `_write_figure(name, fig, step)`, `_write_lr_find(learn, finder)`, `_close(status)`,
    and say where they write (`_where()`) and why a write failed (`_reason(error)`)."""

    # After the Recorder, which writes the rows read here; before SaveModelCallback, so a checkpoint holds how far
    # this run was logged.
    order = ORDER.trackers

    def __init__(self, log_figures: bool = False):
        self.log_figures = bool(log_figures)
        self.fit_offset = 0  # the run's step at train_iter 0 of this fit: a second fit goes on after the first
        self.logged_until = 0  # one past the last step logged
        self.rows_logged = self.epochs_logged = 0  # the Recorder's rows already logged
        self.n_fits = 0
        self._logging = self._finished = False
        self._failure = HeldFailure()  # raised once the epoch's checkpoint is written
        self._finder: LRFinderCallback | None = None
        self._extra_names: list[str] = []
        self._extra: dict[int, dict[str, list[float]]] = {}

    # ----- hooks -------------------------------------------------------------------------------------------------
    def before_fit(self, learn):
        self._logging = self._finished = False
        self._failure = HeldFailure()
        self._finder = None
        if not getattr(learn, "is_main_process", True):
            return
        self._finder = next((cb for cb in learn.cbs if isinstance(cb, LRFinderCallback)), None)
        if self._finder is not None:
            return  # an LR-finder sweep: logged as a run of its own at its end, none of it into the training run
        scheduled = {name for cb in learn.cbs if isinstance(cb, ParamScheduler) for name in cb.scheds}
        self._extra_names = [n for n in _EXTRA_HYPERS if n in scheduled]
        if not learn.resuming:
            self.fit_offset = self.logged_until
            self.rows_logged, self.epochs_logged = len(learn.recorder.batch_rows), len(learn.recorder.epoch_rows)
            self._extra = {}
        self._logging = True  # from here on cleanup_fit ends the run, whatever fails next
        # Nothing is trained yet: a failure here is raised at once.
        self._failure.attempt(lambda: self._start_run(learn), lambda e: self._describe("the start of the fit", e))
        self._failure.raise_if_held()

    def _start_run(self, learn) -> None:
        self._open(learn)
        if not learn.resuming:
            prefix = f"fit{self.n_fits}/" if self.n_fits else ""
            self._write_params({prefix + k: v for k, v in fit_hyperparameters(learn, self).items()})
            self.n_fits += 1

    def before_epoch(self, learn):
        self._failure.raise_if_held()  # the previous epoch's checkpoint is written by now

    def before_step(self, learn):
        if self._logging and self._extra_names:
            groups = learn.opt.param_groups
            self._extra[learn.train_iter] = {n: [get_hyper(g, n) for g in groups] for n in self._extra_names}

    def after_epoch(self, learn):
        if self._logging:
            step = self.fit_offset + max(learn.train_iter - 1, 0)
            self._failure.attempt(lambda: self._log_new_rows(learn, epoch_step=step),
                                  lambda e: self._describe(f"epoch {learn.epoch}", e))

    def after_fit(self, learn):
        if self._finder is not None and self._finder.lrs:
            self._write_lr_find(learn, self._finder)
        if not self._logging:
            return
        # A fit cancelled mid-epoch: the batches it did train.
        self._failure.attempt(lambda: self._finish(learn), lambda e: self._describe("the end of the fit", e))
        self._failure.raise_if_held()  # the last epoch's checkpoint is written by now

    def _finish(self, learn) -> None:
        self._log_new_rows(learn, epoch_step=None)
        self.logged_until = max(self.logged_until, self.fit_offset + learn.train_iter)
        if self.log_figures:
            self._log_recorder_figures(learn)
        self._finish_run(learn)
        self._finished = True

    def _finish_run(self, learn) -> None:
        """What a subclass adds at the end of a fit that ended normally (artifacts)."""

    def cleanup_fit(self, learn):
        # Reached from the fit's `finally`: after an exception or Ctrl-C too, with the exception still in flight.
        if not self._logging:
            return
        self._logging = False
        error = sys.exc_info()[1]
        if not self._finished:
            # Interrupted mid-epoch (Ctrl-C, an error): the Recorder (order 50) kept the steps taken; so does the run.
            self._failure.attempt(lambda: self._log_new_rows(learn, epoch_step=None),
                                  lambda e: self._describe("the steps of the interrupted epoch", e))
        if self._finished:
            status = "FINISHED"
        else:
            status = "FAILED" if isinstance(error, Exception) or error is None else "KILLED"
        ended = HeldFailure()  # raising here would hide the fit's own exception: said as a warning instead
        ended.attempt(lambda: self._close(status), lambda e: self._describe(f"the end of its run (as {status})", e))
        failure = self._failure.error or ended.error  # the first says it: closing after a failure fails again
        if failure is not None and failure is not error:
            warnings.warn(str(failure), RuntimeWarning, stacklevel=user_stacklevel())

    # ----- failures ----------------------------------------------------------------------------------------------
    def _describe(self, what: str, error: Exception) -> str:
        failed = f"{self.name} could not log {what} to {self._where()}: {self._reason(error)}"
        if what == "the start of the fit":
            return f"{failed}. Nothing was trained yet: fix the tracker's location (or remove it) and fit again"
        return after_checkpoint(failed, f"the steps this run logged before (below step {self.logged_until})")

    def _where(self) -> str:
        raise NotImplementedError

    def _reason(self, error: Exception) -> str:
        return f"{type(error).__name__}: {error}"

    # ----- rows -> (key, value, step) ---------------------------------------------------------------------------
    def _log_new_rows(self, learn, epoch_step: int | None) -> None:
        """Write the Recorder's rows not logged yet; the counters move only once the write succeeded, so what a
        checkpoint records as logged was logged."""
        rows = learn.recorder.batch_rows[self.rows_logged:]
        metrics, logged_until = [], self.logged_until
        for row in rows:
            step = self.fit_offset + int(row["train_iter"])
            metrics += [(f"train/{k}", row[k], step) for k in row if k not in ("fit", "epoch", "train_iter", "pct")]
            for name, values in self._extra.get(int(row["train_iter"]), {}).items():
                metrics += ([(f"train/{name}", values[-1], step)] if len(values) == 1 else
                            [(f"train/{name}_{i}", v, step) for i, v in enumerate(values)])
            logged_until = max(logged_until, step + 1)
        new_epoch = epoch_step is not None and len(learn.recorder.epoch_rows) > self.epochs_logged
        if new_epoch:
            row = learn.recorder.epoch_rows[-1]
            metrics += [(f"epoch/{k}", row[k], epoch_step) for k in row if k not in ("fit", "epoch", "time")]
            metrics.append(("epoch/epoch", row["epoch"], epoch_step))
            logged_until = max(logged_until, epoch_step + 1)
        metrics = [(k, float(v), s) for k, v, s in metrics if not math.isnan(float(v))]  # a missing momentum
        if metrics:
            self._write(metrics)
        for row in rows:
            self._extra.pop(int(row["train_iter"]), None)
        self.rows_logged += len(rows)
        self.epochs_logged = len(learn.recorder.epoch_rows) if new_epoch else self.epochs_logged
        self.logged_until = logged_until

    def _log_recorder_figures(self, learn) -> None:
        import matplotlib.pyplot as plt

        step = max(self.logged_until - 1, 0)
        for name, draw in (("loss", learn.recorder.plot_loss), ("schedule", learn.recorder.plot_sched),
                           ("metrics", learn.recorder.plot_metrics)):
            fig = draw()
            try:
                self._write_figure(f"figures/{name}", fig, step)
            finally:
                plt.close(fig)

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"fit_offset": self.fit_offset, "logged_until": self.logged_until, "rows_logged": self.rows_logged,
                "epochs_logged": self.epochs_logged, "n_fits": self.n_fits,
                "extra": {int(k): {n: list(v) for n, v in d.items()} for k, d in self._extra.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.fit_offset, self.logged_until = int(state["fit_offset"]), int(state["logged_until"])
        self.rows_logged, self.epochs_logged = int(state["rows_logged"]), int(state["epochs_logged"])
        self.n_fits = int(state["n_fits"])
        self._extra = {int(k): {n: list(v) for n, v in d.items()} for k, d in state.get("extra", {}).items()}

    def __getstate__(self) -> dict:
        # A checkpoint's trial restore deep-copies callbacks: the open writer / client (threads, connections) and a
        # held failure (its traceback) stay with this one.
        state = {k: (None if k in ("writer", "_client") else v) for k, v in self.__dict__.items()}
        return {**state, "_failure": HeldFailure()}

    # ----- what subclasses write --------------------------------------------------------------------------------
    def _open(self, learn) -> None:
        raise NotImplementedError

    def _write(self, metrics: list[tuple[str, float, int]]) -> None:
        raise NotImplementedError

    def _write_params(self, params: dict) -> None:
        raise NotImplementedError

    def _write_figure(self, name: str, fig, step: int) -> None:
        raise NotImplementedError

    def _write_lr_find(self, learn, finder: LRFinderCallback) -> None:
        raise NotImplementedError

    def _close(self, status: str) -> None:
        raise NotImplementedError


# ----- the fit's hyperparameters -------------------------------------------------------------------------------------
def fit_hyperparameters(learn, tracker=None) -> dict:
    """What the fit really used, as plain values: its length, the data, the optimizer, the rates per group and every
    scheduler's arguments as params of their own (`one_cycle.max_lr`, `one_cycle.pct_start`, ...).

    Read from `learn.fit_config` (recorded as the fit starts, learner/fit_config.py) and the optimizer's groups.
    `lr` (and `lr_<i>` per group when there are several) is logged only when no scheduler sets the rate: a
    scheduled fit's rates are its scheduler's arguments, and `lr_schedule` names the scheduler (or 'constant')."""
    config = getattr(learn, "fit_config", None) or {}
    described = config.get("callbacks", {})
    groups = learn.opt.param_groups
    length = loader_length(learn.dls.train)  # None: a stream, whose epochs the fit's steps_per_epoch measures
    params = {"n_epoch": learn.n_epoch, "n_steps": learn.n_train_iters,
              "batches_per_epoch": (learn.steps_per_epoch or None) if length is None else length,
              "bs": config.get("train_batch_size", getattr(learn.dls.train, "bs", None)),
              "optimizer": config.get("optimizer") or type(learn.opt).__name__,
              "wd": _wd(groups), "loss_func": _name(learn.loss_func), "model": type(learn.model).__name__,
              "n_param_groups": len(groups)}
    lr_schedulers = [_short_name(key) for key, cfg in described.items() if _schedules_lr(cfg)]
    lr_schedulers += [_short_name(cb.name) for cb in learn.cbs if _short_name(cb.name) not in lr_schedulers and (
        isinstance(cb, ParamScheduler) and "lr" in cb.scheds or _torch_scheduler(cb) is not None)]
    if lr_schedulers:
        params["lr_schedule"] = ", ".join(lr_schedulers)
    else:
        params["lr_schedule"] = "constant"
        params.update(_last_and_each("lr", [g["lr"] for g in groups]))  # what this fit set (its lr, or the groups')
    for key, cfg in described.items():
        params.update(_scheduler_params(_short_name(key), cfg, len(groups)))
    for cb in learn.cbs:
        params.update(_torch_scheduler_params(cb, groups))
    for cb in learn.cbs:
        if cb is tracker or isinstance(cb, TrackerCallback) or cb.name in _DEFAULT_CALLBACKS:
            continue
        if not any(_short_name(key).startswith(_short_name(cb.name)) for key in described):
            params[f"cb/{cb.name}"] = repr(cb)[:500]  # a callback that does not describe itself: its repr
    return {k: ("None" if v is None else v) for k, v in params.items()}


# Arguments of cyclr's schedulers that are learning rates (a number, one per group, or a slice): logged per group too.
_LR_ARGUMENTS = ("lr", "max_lr", "base_lr")


def _torch_scheduler(cb):
    """The torch lr scheduler a callback runs (TorchScheduler's, built in its before_fit), else None."""
    scheduler = getattr(cb, "scheduler", None)
    lr_scheduler = torch.optim.lr_scheduler
    return scheduler if isinstance(scheduler, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)) else None


# Entries of a torch scheduler's state_dict that are its position, not its settings.
_TORCH_SCHEDULER_STATE = ("last_epoch", "verbose", "best", "num_bad_epochs", "cooldown_counter")


def _torch_scheduler_params(cb, groups) -> dict:
    """A torch scheduler's settings: its class, the plain entries of its state_dict (T_max, eta_min, total_steps,
    ...), and the rates it keeps on the groups (max_lr, initial_lr; per group where they differ)."""
    scheduler = _torch_scheduler(cb)
    if scheduler is None:
        return {}
    prefix = _short_name(cb.name)
    params = {f"{prefix}.scheduler": type(scheduler).__name__}
    for name, value in scheduler.state_dict().items():
        if name.startswith("_") or name in _TORCH_SCHEDULER_STATE:
            continue
        if isinstance(value, (int, float, str)):
            params[f"{prefix}.{name}"] = value
        elif name.endswith("_lrs") and isinstance(value, list) and len(value) == len(groups):  # base_lrs, max_lrs
            params.update(_last_and_each(f"{prefix}.{name[:-1]}", value))
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):  # its peak is kept on the groups, set as built
        params.update(_last_and_each(f"{prefix}.max_lr", [g["max_lr"] for g in groups]))
    return params


def _last_and_each(name: str, values: list) -> dict:
    """`name`: the last group's value (fastai's convention for "the" rate); `name_<i>` per group where they differ."""
    values = [float(v) for v in values]
    return {name: values[-1], **({f"{name}_{i}": v for i, v in enumerate(values)} if len(set(values)) > 1 else {})}


def _wd(groups) -> float | None:
    """The weight decay the fit starts with (the last group's, as `lr`): fit(wd=...) or the optimizer's own."""
    return float(groups[-1]["weight_decay"]) if "weight_decay" in groups[-1] else None


def _schedules_lr(cfg: dict) -> bool:
    return any(name in cfg for name in _LR_ARGUMENTS)


def _scheduler_params(prefix: str, cfg: dict, n_groups: int) -> dict:
    params = {}
    for name, value in cfg.items():
        plain = isinstance(value, (int, float, str, bool)) or value is None
        params[f"{prefix}.{name}"] = value if plain else str(value)  # a list: one param, as given
        per_group = _per_group(value, n_groups) if name in _LR_ARGUMENTS else None
        if per_group is not None:
            params.update({f"{prefix}.{name}_{i}": v for i, v in enumerate(per_group)})
    return params


def _per_group(value, n_groups: int) -> list[float] | None:
    """A rate given per group (a list, or a slice as its repr in a fit's config) spread over the groups."""
    from .group_rates import lrs_per_group

    if isinstance(value, str) and value.startswith("slice("):
        parts = [p.strip() for p in value[len("slice("):-1].split(",")]
        try:
            value = slice(*(None if p == "None" else float(p) for p in parts))
        except ValueError:
            return None
    if not isinstance(value, (list, slice)) or n_groups < 2:
        return None
    try:
        return [float(v) for v in lrs_per_group(value, n_groups)]
    except (TypeError, ValueError):
        return None


def _short_name(key: str) -> str:
    """'OneCycleCallback_0' -> 'one_cycle', 'SGDRCallback_1' -> 'sgdr_1', 'GradientAccumulation_0' ->
    'gradient_accumulation': the fit config's key of a callback, as a param prefix."""
    name, _, index = key.rpartition("_") if key.rpartition("_")[2].isdigit() else (key, "", "")
    name = name.removesuffix("Callback") or name
    snake = "".join(("_" + c.lower()) if c.isupper() and i and not name[i - 1].isupper() else c.lower()
                    for i, c in enumerate(name))
    return snake if index in ("", "0") else f"{snake}_{index}"


def _name(obj) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def lr_find_series(finder: LRFinderCallback) -> list[tuple[str, float, int]]:
    """The sweep's curve, one point per iteration."""
    return [(f"lr_find/{name}", float(v), i) for name, values in
            (("loss", finder.losses), ("smooth_loss", finder.smooth_losses), ("lr", finder.lrs))
            for i, v in enumerate(values) if math.isfinite(v)]
