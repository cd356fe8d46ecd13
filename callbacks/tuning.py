"""Searching hyperparameters with Optuna (the optional extra: pip install 'cyclr[tune]').

- `OptunaPruning(trial, monitor)`: reports the monitored value to an Optuna trial after every epoch and, when the
  trial's pruner says so, stops the fit through cyclr's cancellation path and raises `optuna.TrialPruned` out of it.
- `tune_lr(make_learner, n_trials, epochs, ...)`: the recipe. Searches `fit_one_cycle`'s max_lr (and optionally wd
  and pct_start) with Optuna's default sampler (TPE) and a MedianPruner, in a study kept in a database (SQLite by
  default, any SQLAlchemy URL) that a later call with the same storage and name goes on with. Optionally seeded from
  `lr_find`'s valley suggestion: the search then looks around it, and its first trial trains at it.

Optuna is imported only when one of them is used, so `import cyclr` works without it. This module never imports the
learner: `tune_lr` takes a function that makes one and calls its public methods.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from ..data.checks import int_at_least, positive, user_stacklevel
from .core import ORDER, CancelFitException
from .loggers import MLflowCallback
from .monitors import Monitor

__all__ = ["OptunaPruning", "tune_lr", "SEARCH_SCALES", "DEFAULT_SEARCH", "TUNE_EXTRA"]

TUNE_EXTRA = "pip install 'cyclr[tune]'"
# The hyperparameters tune_lr searches, each with the scale it samples on: rates and weight decays span decades.
SEARCH_SCALES = {"max_lr": "log", "wd": "log", "pct_start": "linear"}
DEFAULT_SEARCH = {"max_lr": (1e-5, 1.0)}


def _optuna():
    if importlib.util.find_spec("optuna") is None:
        raise ImportError(f"the Optuna integration needs the 'optuna' package, which is not installed: {TUNE_EXTRA}")
    import optuna

    return optuna


class OptunaPruning(Monitor):
    """Report `monitor` (a column of the Recorder's epoch table: 'valid_loss', 'train_loss' or a metric's name) to
    the Optuna `trial` at the end of every epoch, as `trial.report(value, step=epoch)`; when `trial.should_prune()`
    stop the fit as EarlyStoppingCallback does (CancelFitException: after_fit and cleanup_fit run, every file and
    tracker is closed), then raise `optuna.TrialPruned` out of `fit`, which Optuna records as a pruned trial.

    A pruned epoch is complete: it runs after the Recorder, the trackers and SaveModelCallback, so the epoch is
    recorded, logged and checkpointed before the fit stops, and no later step is taken. An MLflowCallback's run of
    a pruned trial ends KILLED (not FINISHED) with the tags `optuna.trial` and `optuna.pruned_epoch`; TensorBoard
    has no run status: its series end at the pruned epoch. `pruned_epoch` is that epoch (None when not pruned).

    `mode` ('auto': 'min' for losses and error rates, 'max' otherwise) must agree with the study's direction, or
    the pruner would stop the best trials: a mismatch is refused. A monitor the Recorder does not record is refused
    in before_fit, before the first step. Not for data-parallel fits (each process would report to the trial).
    During an `lr_find` sweep the callback does nothing."""

    # After SaveModelCallback (90) and the trackers (58), which write the epoch that the decision is about.
    order = ORDER.pruning
    sits_out_lr_find = True  # nothing of an lr_find sweep is reported to the trial

    def __init__(self, trial, monitor: str = "valid_loss", mode: str = "auto"):
        optuna = _optuna()
        if not isinstance(trial, optuna.trial.BaseTrial):
            raise TypeError(f"trial must be an optuna Trial (the argument of the objective function), got "
                            f"{type(trial).__name__}")
        self._init_monitor(monitor, mode, 0.0)
        study = getattr(trial, "study", None)  # None for a FixedTrial, which never prunes
        if study is not None:
            if len(study.directions) > 1:
                raise ValueError("Optuna cannot prune trials of a multi-objective study; use OptunaPruning with a "
                                 "single-objective study (one direction)")
            wanted = "minimize" if self.mode == "min" else "maximize"
            if study.direction.name.lower() != wanted:
                raise ValueError(
                    f"monitor={monitor!r} improves when it {'falls' if self.mode == 'min' else 'rises'} (mode "
                    f"{self.mode!r}), but the study has direction={study.direction.name.lower()!r}: create the study "
                    f"with direction={wanted!r}, or pass mode='{'max' if self.mode == 'min' else 'min'}' if "
                    f"{monitor!r} is better {'higher' if self.mode == 'min' else 'lower'}")
        self.trial = trial
        self.pruned_epoch: int | None = None
        self.pruned_value: float | None = None

    def before_fit(self, learn):
        self.check(learn)
        self.pruned_epoch = self.pruned_value = None

    def check(self, learn) -> None:
        """Refuse a learner this callback cannot prune: a monitor it does not record, a data-parallel fit."""
        self._check_monitor(learn)
        if getattr(learn, "world_size", 1) > 1:
            raise ValueError("OptunaPruning cannot prune a data-parallel fit (every process would report to the "
                             "trial): tune on one process")

    def after_epoch(self, learn):
        value = float(self._current(learn))
        self.trial.report(value, step=learn.epoch)
        if self.trial.should_prune():
            self.pruned_epoch, self.pruned_value = learn.epoch, value
            raise CancelFitException()

    def after_fit(self, learn):
        if self.pruned_epoch is not None:
            raise _optuna().TrialPruned(f"trial {self.trial.number} pruned after epoch {self.pruned_epoch} "
                                        f"({self.monitor}={self.pruned_value:.6g})")

    def cleanup_fit(self, learn):
        # The trackers (58) closed their runs as FINISHED just before: after_fit ran. Say what really happened.
        if self.pruned_epoch is None:
            return
        for cb in learn.cbs:
            if isinstance(cb, MLflowCallback) and cb.run_id is not None:
                try:
                    cb.client.set_tag(cb.run_id, "optuna.trial", str(self.trial.number))
                    cb.client.set_tag(cb.run_id, "optuna.pruned_epoch", str(self.pruned_epoch))
                    cb.client.set_terminated(cb.run_id, "KILLED")
                except Exception as e:  # noqa: BLE001 - raising here would replace TrialPruned: the trial would FAIL
                    warnings.warn(f"OptunaPruning could not mark the MLflow run {cb.run_id} of pruned trial "
                                  f"{self.trial.number} as KILLED ({type(e).__name__}: {e}); it stays FINISHED",
                                  RuntimeWarning, stacklevel=user_stacklevel())


# ----- the recipe ---------------------------------------------------------------------------------------------------
def check_search(search: Mapping) -> dict[str, tuple[float, float]]:
    """`search` as {name: (lo, hi)}, each name one of SEARCH_SCALES, 0 < lo < hi (pct_start: hi < 1)."""
    if not isinstance(search, Mapping) or not search:
        raise TypeError(f"search must be a non-empty dict like {{'max_lr': (1e-4, 1.0)}}, got {search!r}")
    checked = {}
    for name, bounds in search.items():
        if name not in SEARCH_SCALES:
            raise ValueError(f"search has {name!r}; tune_lr searches {list(SEARCH_SCALES)}")
        if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
            raise TypeError(f"search[{name!r}] must be a pair (lo, hi), got {bounds!r}")
        lo, hi = (positive(f"search[{name!r}] bounds", b, " (a log-scale range excludes 0)") for b in bounds)
        if lo >= hi:
            raise ValueError(f"search[{name!r}] must have lo < hi, got {bounds!r}")
        if name == "pct_start" and hi >= 1:
            raise ValueError(f"search['pct_start'] must lie in (0, 1), got {bounds!r}")
        checked[name] = (float(lo), float(hi))
    return checked


def default_storage() -> str:
    """A SQLite database `optuna.db` in the current folder, as an absolute URL (a later call from another folder
    finds the same study)."""
    return f"sqlite:///{Path('optuna.db').resolve()}"


def tune_lr(make_learner: Callable[[], object], n_trials: int, epochs: int, storage: str | None = None,
            study_name: str = "cyclr-tune-lr", search: Mapping | None = None, monitor: str = "valid_loss",
            mode: str = "auto", seed_from_lr_find: bool = False, lr_find_span: float = 10.0, pruner=None,
            seed: int | None = None):
    """Search `fit_one_cycle(epochs, max_lr, wd=..., pct_start=...)` with Optuna; return the `optuna.Study`
    (`study.best_params`, `study.best_value`, `study.trials_dataframe()`).

    `make_learner()` returns a fresh Learner (new model, same data) for each trial. `search` maps 'max_lr', 'wd'
    (both sampled on a log scale) and 'pct_start' (linear) to their (lo, hi) ranges; default
    `{'max_lr': (1e-5, 1.0)}`; the rest keep the recipe's defaults. Each trial's `monitor` (default 'valid_loss';
    `mode` as in `OptunaPruning`) at the end of the fit is its value, the study minimizes or maximizes it as the
    mode says, and a MedianPruner (unless `pruner` is given) stops a trial whose value is worse than the median of
    earlier trials at the same epoch, from the second half of the fit on (`n_warmup_steps=epochs // 2`: one-cycle's
    best rates look worst while they warm up). A fit that diverges (stopped at a NaN loss) is scored as the worst
    value (inf, or -inf for a maximized metric) with the user attribute `diverged`, so the sampler learns to avoid
    its region. Each trial records `seconds` and `epochs_trained` (fractional when stopped mid-epoch) as user
    attributes: the search's cost.

    The study lives in `storage` (an SQLAlchemy URL; default `default_storage()`, a SQLite file `optuna.db` in the
    current folder) under `study_name`: a later call with the same two runs `n_trials` more trials of the same
    study. `seed` seeds the sampler (TPE).

    `seed_from_lr_find=True` runs `lr_find()` on one learner first (once per study: the suggestion is kept in the
    study's user attributes `lr_find_valley`, `lr_find_seconds`) and searches max_lr within `lr_find_span` times of
    its valley suggestion either side, the first trial at the valley itself; `search` must then not give max_lr.
    Callbacks every trial needs go on the learner `make_learner` returns: a tracker made there logs one run per
    trial (a pruned trial's MLflow run ends KILLED).

    Args:
        make_learner: called with no arguments, returns a fresh Learner (new model, same data) for each trial.
        n_trials: the number of trials this call runs (>= 1), added to those the study already has.
        epochs: the length of each trial's `fit_one_cycle`, in epochs (>= 1).
        storage: the study's SQLAlchemy URL (e.g. 'sqlite:///optuna.db'); None: `default_storage()`.
        study_name: the study's name in `storage`; an existing study of that name is continued.
        search: the ranges searched, `{'max_lr': (lo, hi), 'wd': (lo, hi), 'pct_start': (lo, hi)}` (any of the
            three); None: `{'max_lr': (1e-5, 1.0)}`.
        monitor: the epoch-table column each trial is scored by, read at the end of its fit.
        mode: 'min', 'max', or 'auto' (as in `OptunaPruning`): whether the study minimizes or maximizes `monitor`.
        seed_from_lr_find: search max_lr around the valley suggestion of one `lr_find()`, run once per study.
        lr_find_span: with `seed_from_lr_find`, max_lr is searched from valley / span to valley * span (> 1).
        pruner (optuna.pruners.BasePruner | None): stops unpromising trials; None: a MedianPruner that prunes from
            the second half of the fit on.
        seed: the seed of the TPE sampler; None: a random one.
    """
    optuna = _optuna()
    if not callable(make_learner):
        raise TypeError(f"make_learner must be a function returning a new Learner, got {type(make_learner).__name__}")
    int_at_least("n_trials", n_trials, 1)
    int_at_least("epochs", epochs, 1)
    space = check_search(DEFAULT_SEARCH if search is None else search)
    if seed_from_lr_find:
        positive("lr_find_span", lr_find_span)
        if lr_find_span <= 1:
            raise ValueError(f"lr_find_span must be > 1 (the range is valley / span to valley * span), "
                             f"got {lr_find_span!r}")
        if search is not None and "max_lr" in search:
            raise ValueError("seed_from_lr_find=True searches max_lr around lr_find's valley: leave max_lr out of "
                             "search, or set seed_from_lr_find=False to search the range you give")
    if storage is not None and not isinstance(storage, (str, os.PathLike)):
        raise TypeError(f"storage must be an SQLAlchemy URL like 'sqlite:///optuna.db', got {type(storage).__name__}")

    # The checks a trial would otherwise fail in (a monitor not recorded, a direction that disagrees), before the
    # study is created or anything trains: on a learner of the kind every trial gets.
    probe = make_learner()
    for method in ("fit_one_cycle", "lr_find"):
        if not callable(getattr(probe, method, None)):
            raise TypeError(f"make_learner() must return a cyclr Learner, got {type(probe).__name__}")
    check = OptunaPruning(optuna.trial.FixedTrial({}), monitor, mode)
    check.check(probe)
    direction = "minimize" if check.mode == "min" else "maximize"

    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = pruner if pruner is not None else optuna.pruners.MedianPruner(n_warmup_steps=epochs // 2)
    study = optuna.create_study(storage=os.fspath(storage) if storage is not None else default_storage(),
                                study_name=study_name, direction=direction, sampler=sampler, pruner=pruner,
                                load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {study_name!r} in that storage has direction {study.direction.name.lower()!r}, "
                         f"but monitor={monitor!r} needs {direction!r}: give another study_name")
    if seed_from_lr_find:
        valley = _lr_find_valley(study, probe)
        space = {**space, "max_lr": (valley / lr_find_span, valley * lr_find_span)}
        if not study.trials:
            study.enqueue_trial({"max_lr": valley})
    worst = math.inf if direction == "minimize" else -math.inf

    def objective(trial) -> float:
        params = {name: trial.suggest_float(name, lo, hi, log=SEARCH_SCALES[name] == "log")
                  for name, (lo, hi) in space.items()}
        learn = make_learner()
        start = time.perf_counter()
        try:
            learn.fit_one_cycle(epochs, cbs=[OptunaPruning(trial, monitor, mode)], **params)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - start)
            trial.set_user_attr("epochs_trained", learn.train_iter / len(learn.dls.train))
        value = learn.recorder.epoch_rows[-1][monitor] if learn.recorder.epoch_rows else math.nan
        diverged = learn.train_iter < learn.n_train_iters or not math.isfinite(value)
        trial.set_user_attr("diverged", diverged)
        return worst if diverged else float(value)

    study.optimize(objective, n_trials=n_trials)
    return study


def _lr_find_valley(study, learn) -> float:
    """lr_find's valley on `learn`, run once per study: a resumed study searches the same range."""
    if "lr_find_valley" not in study.user_attrs:
        start = time.perf_counter()
        result = learn.lr_find(suggest_funcs=("valley",))
        study.set_user_attr("lr_find_seconds", time.perf_counter() - start)
        study.set_user_attr("lr_find_valley", float(result.suggestions["valley"].lr))
    return float(study.user_attrs["lr_find_valley"])
