"""Recorder: the per-batch and per-epoch history of every fit, as plain floats and pandas DataFrames; its plots are
in callbacks/recorder_plots.py."""

from __future__ import annotations

import functools
import math
import secrets
import time
from pathlib import Path

import numpy as np
import torch

from . import recorder_plots
from .core import ORDER, Callback
from .history import BatchHistory, BatchRows, append_history_file, history_file_name
from .hypers import get_hyper
from .optimizer_modes import effective_lrs
from .phase_sums import PhaseSums, is_distributed


def metric_name(metric) -> str:
    """A readable name: the metric's `name`, its function's name (through `functools.partial`), or its class's."""
    while isinstance(metric, functools.partial):
        metric = metric.func
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__


def metric_names(metrics) -> list[str]:
    """One unique name per metric, in order: a repeated name gets a suffix (`accuracy`, `accuracy_2`), so that no
    column of the epoch table silently replaces another."""
    names, seen = [], set()
    for m in metrics:
        base = name = metric_name(m)
        k = 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        names.append(name)
    return names


def is_epoch_metric(metric) -> bool:
    """An epoch-level metric (torchmetrics `Metric`, `AccumMetric`): update per batch, compute once per phase."""
    return all(callable(getattr(metric, name, None)) for name in ("update", "compute", "reset"))


class SmoothedValue:
    """Exponential moving average with bias correction (debiased EMA), as the LR finder and fastai smooth losses."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.avg, self.count = beta, 0.0, 0

    def add(self, value: float) -> float:
        self.count += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        return self.avg / (1 - self.beta**self.count)


# Losses waiting on the device become floats at the end of each epoch, or after this many steps of a long one, so
# that neither memory nor a mid-epoch checkpoint grows with the epoch's length.
FLUSH_EVERY = 256


class Recorder(Callback):
    """Records, for each training batch, the loss and the hyperparameters the optimizer used at that step, and for
    each epoch the mean training loss, the validation loss, the metrics and the time.

    History is kept across fits; every row carries a `fit` index. `lrs`, `moms` and `losses` are the last fit's.
    Losses stay on the device and become floats once per epoch (or every FLUSH_EVERY steps): no host sync per batch.
    The per-batch history is stored by column (callbacks/history.py, 48 bytes a step with one parameter group);
    `batch_rows` reads it as row dicts and `to_df('batches')` as a DataFrame. A checkpoint taken during a fit keeps
    it in a side file beside the checkpoint, appended to at each save, so checkpoints do not grow with the run.
    """

    order = ORDER.recorder

    def __init__(self, train_metrics: bool = False, beta: float = 0.98):
        # Hooks may be skipped by another callback's cancellation, so every piece of state has a default.
        self._phase_sums: dict[str, PhaseSums] = {}
        self._pending_losses: list[torch.Tensor] = []
        self._pending_hypers: list[tuple] = []
        self.epoch_start = time.perf_counter()
        self.fit_index = 0
        self.metric_names: list[str] = []
        self._batch_index: list[int] = []
        self._epoch_index: list[int] = []
        self._batch_metrics: list = []
        self._epoch_metrics: list = []
        self.train_metrics = train_metrics
        self.beta = beta
        self.smoother = SmoothedValue(beta)
        self.history = BatchHistory()
        self.epoch_rows: list[dict] = []
        # Names this run's history side files (cyclr-history-<run_id>.bin); a loaded checkpoint brings its own.
        self.run_id = secrets.token_hex(4)
        self._history_files: dict[str, dict] = {}  # side file path -> what the last save wrote to it
        self.n_fits = 0
        self.last_validation: dict[str, float] = {}
        self.lr_find_result = None  # set by Learner.lr_find, drawn by plot_lr_find
        self._estimates_d = False  # the optimizer estimates a step size d (Prodigy): eff_lr is recorded

    # ----- hooks -------------------------------------------------------------------------------------------------
    def before_fit(self, learn):
        if getattr(learn, "resuming", False):
            return  # the fit goes on from a checkpoint: its index, smoother and history came with it
        self.fit_index = self.n_fits
        self.n_fits += 1
        self.smoother = SmoothedValue(self.beta)

    def before_epoch(self, learn):
        self.epoch_start = time.perf_counter()
        if getattr(learn, "skip_batches", 0):
            return  # resuming mid-epoch: the epoch's losses and sums so far came with the checkpoint
        self._phase_sums = {}
        self._pending_losses: list[torch.Tensor] = []
        self._pending_hypers: list[tuple] = []

    def before_train(self, learn):
        self._estimates_d = effective_lrs(learn.opt.param_groups) is not None  # asked once, not per step
        self._sort_metrics(learn)
        if getattr(learn, "skip_batches", 0):
            self._move_epoch_state(learn.device)  # loaded from a checkpoint on the CPU
            return
        self._phase_sums.pop("train", None)

    def before_step(self, learn):
        # Read here, after every scheduler has run and just before the optimizer uses them.
        groups = learn.opt.param_groups
        self._pending_losses.append(learn.loss.detach())
        self._pending_hypers.append(
            (learn.epoch, learn.train_iter, learn.pct_train, [float(g["lr"]) for g in groups],
             [get_hyper(g, "mom") for g in groups], effective_lrs(groups) if self._estimates_d else None)
        )
        if len(self._pending_losses) >= FLUSH_EVERY:
            self._flush_batches(learn)

    def after_batch(self, learn):
        if getattr(learn, "loss", None) is None or getattr(learn, "pred", None) is None:
            return
        phase = "train" if learn.training else "valid"
        with_metrics = self.train_metrics or not learn.training
        sums = self._phase_sums.get(phase)
        if sums is None:  # created lazily: a callback that cancels in before_train/before_validate skips our hook
            sums = self._phase_sums[phase] = PhaseSums()
        if with_metrics and (self._batch_metrics or self._epoch_metrics):
            sums.add(learn, self._batch_metrics, self._epoch_metrics if phase == "valid" else ())
        else:
            sums.add(learn, (), ())

    def before_validate(self, learn):
        self._sort_metrics(learn)
        for m in self._epoch_metrics:
            if isinstance(m, torch.nn.Module):  # torchmetrics keeps its state on the module's device
                m.to(learn.device)
            m.reset()
        self._phase_sums.pop("valid", None)

    def after_validate(self, learn):
        batch_names = [self.metric_names[i] for i in self._batch_index]
        sums = self._phase_sums.get("valid", PhaseSums()).summed_over_processes(learn, len(batch_names))
        results = sums.averages("valid_", batch_names)
        if sums.count:
            # Once per validation: the epoch-level metrics' values (torchmetrics syncs across processes itself).
            for i, m in zip(self._epoch_index, self._epoch_metrics, strict=True):
                results[f"valid_{self.metric_names[i]}"] = float(torch.as_tensor(m.compute()).float())
                m.reset()
        self.last_validation = results

    def validation_results(self) -> dict[str, float]:
        """The last validation's loss and metrics, named as in the epoch table: `valid_loss`, then each metric."""
        out = {"valid_loss": self.last_validation.get("valid_loss", math.nan)}
        for name in self.metric_names:
            out[name] = self.last_validation.get(f"valid_{name}", math.nan)
        return out

    def _sort_metrics(self, learn):
        # Split once per phase, never per batch: batch metrics are averaged, epoch metrics updated (valid only).
        self.metric_names = metric_names(learn.metrics)
        self._batch_index = [i for i, m in enumerate(learn.metrics) if not is_epoch_metric(m)]
        self._epoch_index = [i for i, m in enumerate(learn.metrics) if is_epoch_metric(m)]
        self._batch_metrics = [learn.metrics[i] for i in self._batch_index]
        self._epoch_metrics = [learn.metrics[i] for i in self._epoch_index]

    def after_epoch(self, learn):
        # Computed here rather than in after_train so a cancelled after_train hook chain loses nothing.
        self._flush_batches(learn)
        batch_names = [self.metric_names[i] for i in self._batch_index]
        n_train_metrics = len(batch_names) if self.train_metrics else 0
        train_sums = self._phase_sums.get("train", PhaseSums()).summed_over_processes(learn, n_train_metrics)
        train = train_sums.averages("train_", batch_names)  # epoch-level metrics: validation only (NaN here)
        row = {"fit": self.fit_index, "epoch": learn.epoch}
        row["train_loss"] = train.get("train_loss", math.nan)
        if self.train_metrics:
            row.update({f"train_{n}": train.get(f"train_{n}", math.nan) for n in self.metric_names})
        row["valid_loss"] = self.last_validation.get("valid_loss", math.nan)
        for name in self.metric_names:
            row[name] = self.last_validation.get(f"valid_{name}", math.nan)
        row["time"] = time.perf_counter() - self.epoch_start
        self.epoch_rows.append(row)
        self.last_validation = {}

    def after_fit(self, learn):
        # A fit stopped mid-epoch (CancelFitException: a NaN loss, the LR finder) skips after_epoch: keep the rows of
        # the batches it did train.
        self._flush_batches(learn)

    def cleanup_fit(self, learn):
        # After an exception or Ctrl-C mid-epoch neither after_epoch nor after_fit ran: the steps already taken keep
        # their rows (each process its own losses: the others may not reach a collective any more).
        self._flush_batches(learn, across_processes=False)

    def _flush_batches(self, learn, across_processes: bool = True):
        """Turn this epoch's device losses into floats: one host sync per epoch."""
        if not self._pending_losses:
            return
        losses = torch.stack(self._pending_losses).float()
        if across_processes and is_distributed(learn):
            # Data-parallel: each step's loss averaged over all processes' batches (one collective per epoch).
            losses = learn.all_reduce_mean(losses)
        losses = losses.tolist()
        smooth = [self.smoother.add(loss) for loss in losses]
        hypers = [(*h, None) if len(h) == 5 else h for h in self._pending_hypers]  # 5: saved before eff_lr
        n_groups, has_eff = len(hypers[0][3]), hypers[0][5] is not None
        if all(len(h[3]) == n_groups and (h[5] is not None) == has_eff for h in hypers):
            self.history.extend(self._columns(losses, smooth, hypers, n_groups, has_eff), len(losses))
        else:  # the optimizer's groups changed within the block: row by row
            for loss, smoothed, h in zip(losses, smooth, hypers, strict=True):
                self.history.append(self._row(loss, smoothed, *h))
        self._pending_losses, self._pending_hypers = [], []

    def _row(self, loss, smoothed, epoch, train_iter, pct, lrs, moms, eff_lrs) -> dict:
        row = {"fit": self.fit_index, "epoch": epoch, "train_iter": train_iter, "pct": pct,
               "loss": loss, "smooth_loss": smoothed, "lr": lrs[-1], "mom": moms[-1]}
        if eff_lrs is not None:  # Prodigy / D-Adaptation: d * lr (callbacks/optimizer_modes.py)
            row["eff_lr"] = eff_lrs[-1]
        if len(lrs) > 1:
            row.update({f"lr_{i}": v for i, v in enumerate(lrs)})
            row.update({f"mom_{i}": v for i, v in enumerate(moms)})
            row.update({f"eff_lr_{i}": v for i, v in enumerate(eff_lrs or ())})
        return row

    def _columns(self, losses, smooth, hypers, n_groups: int, has_eff: bool) -> dict[str, np.ndarray]:
        """The rows `_row` would make, as columns in the same order (one numpy array each, not a dict per row)."""
        ints = lambda k: np.array([h[k] for h in hypers], np.int64)  # noqa: E731
        floats = lambda k, i: np.array([h[k][i] for h in hypers], np.float64)  # noqa: E731
        columns = {"fit": np.full(len(losses), self.fit_index, np.int64), "epoch": ints(0), "train_iter": ints(1),
                   "pct": np.array([h[2] for h in hypers], np.float64), "loss": np.array(losses, np.float64),
                   "smooth_loss": np.array(smooth, np.float64), "lr": floats(3, -1), "mom": floats(4, -1),
                   **({"eff_lr": floats(5, -1)} if has_eff else {})}
        for name, k in (("lr", 3), ("mom", 4), ("eff_lr", 5)) if n_groups > 1 else ():
            columns.update({f"{name}_{i}": floats(k, i) for i in range(n_groups) if k < 5 or has_eff})
        return columns

    # ----- reading the history ----------------------------------------------------------------------------------
    @property
    def batch_rows(self) -> BatchRows:
        """Every training batch's row, as dicts (read-only; built as they are read)."""
        return BatchRows(self.history)

    def fit_rows(self, fit: int) -> BatchRows:
        """The batch rows of fit number `fit`."""
        return BatchRows(self.history, self._fit_indices(fit))

    def last_fit_rows(self) -> BatchRows:
        """The batch rows of the last fit."""
        return self.fit_rows(self.n_fits - 1)

    def _fit_indices(self, fit: int):
        return np.flatnonzero(self.history.numpy("fit") == fit)

    def _last_fit_column(self, name: str) -> list[float]:
        return self.history.numpy(name)[self._fit_indices(self.n_fits - 1)].tolist()

    @property
    def losses(self) -> list[float]:
        return self._last_fit_column("loss")

    @property
    def lrs(self) -> list[float]:
        """Learning rate of the last parameter group, per training batch of the last fit."""
        return self._last_fit_column("lr")

    @property
    def moms(self) -> list[float]:
        return self._last_fit_column("mom")

    def group_values(self, name: str) -> list[list[float]]:
        """`name` ('lr', 'mom' or 'eff_lr') per parameter group: one list per group, per batch of the last fit."""
        rows = self.last_fit_rows()
        if not len(rows) or name not in rows[0]:
            return []
        n_groups = sum(1 for k in rows[0] if k.startswith(f"{name}_")) or 1
        if n_groups == 1:
            return [self._last_fit_column(name)]
        return [self._last_fit_column(f"{name}_{i}") for i in range(n_groups)]

    def to_df(self, kind: str = "epochs"):
        """The history as a pandas DataFrame: `kind='batches'` (one row per training batch) or `'epochs'`."""
        import pandas as pd

        if kind == "batches":
            return pd.DataFrame(self.history.to_columns())
        if kind == "epochs":
            columns = ["fit", "epoch", "train_loss", "valid_loss"]
            return pd.DataFrame(self.epoch_rows, columns=_ordered_columns(self.epoch_rows, columns))
        raise ValueError(f"to_df(kind={kind!r}): kind must be 'batches' or 'epochs'")

    # ----- plots (callbacks/recorder_plots.py) ---------------------------------------------------------------------
    def plot_loss(self, skip_start: int = 0, with_valid: bool = True, ax=None):
        """Training loss per batch (raw and smoothed) of the last fit, with the validation loss at each epoch end."""
        return recorder_plots.plot_loss(self, skip_start, with_valid, ax=ax)

    def plot_metrics(self, axs=None):
        """Train/valid loss and every metric per epoch, across all fits (one panel each)."""
        return recorder_plots.plot_metrics(self, axs=axs)

    def plot_sched(self, axs=None):
        """Learning rate and momentum of every parameter group against iteration, as recorded in the last fit."""
        return recorder_plots.plot_sched(self, axs=axs)

    def plot_lr_find(self, ax=None, **kwargs):
        """The last `learn.lr_find()` curve, suggestions marked; keyword arguments go to the result's `plot`."""
        return recorder_plots.plot_lr_find(self, ax=ax, **kwargs)

    # ----- checkpoints ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The history, and what a fit resumed from a checkpoint needs to continue it exactly, even mid-epoch: the
        fit index, the smoother, the epoch's losses not yet turned into rows and its training sums (on the CPU)."""
        return {"batch_history": self.history.state_dict(), **self._state_but_history()}

    def checkpoint_state(self, path) -> dict:
        """`state_dict()` for a checkpoint at `path` taken during a fit: the batch history goes to the run's side file
        beside it (only the rows it does not hold yet) and the state names that file (callbacks/history.py)."""
        side = Path(path).parent / history_file_name(self.run_id)
        key = str(side.resolve())
        written = append_history_file(side, self.history, self._history_files.get(key))
        self._history_files[key] = written
        return {"history_file": dict(written), **self._state_but_history()}

    def _state_but_history(self) -> dict:
        smoother = self.smoother
        train = self._phase_sums.get("train")
        return {
            "run_id": self.run_id, "epoch_rows": [dict(r) for r in self.epoch_rows], "n_fits": self.n_fits,
            "fit_index": self.fit_index, "metric_names": list(self.metric_names),
            "smoother": {"beta": smoother.beta, "avg": smoother.avg, "count": smoother.count},
            "pending_losses": torch.stack(self._pending_losses).cpu() if self._pending_losses else None,
            "pending_hypers": [list(h) for h in self._pending_hypers],
            "train_sums": None if train is None else train.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """From `state_dict()`, from a checkpoint whose side file was read (`batch_history` is then a BatchHistory and
        `history_file_known` says what the file held), or from a version 1 or 2 checkpoint (`batch_rows`)."""
        history = state.get("batch_history")
        if isinstance(history, BatchHistory):
            self.history = history
        elif history is not None:
            self.history = BatchHistory.from_state(history)
        else:
            self.history = BatchHistory.from_rows(state["batch_rows"])
        known = state.get("history_file_known")
        # Rows restored from anywhere else may differ from what a side file holds: the next save starts afresh.
        self._history_files = {} if known is None else {known["path"]: {k: v for k, v in known.items() if k != "path"}}
        self.run_id = str(state.get("run_id", self.run_id))
        self.epoch_rows = [dict(r) for r in state["epoch_rows"]]
        self.n_fits = int(state["n_fits"])
        self.fit_index = int(state.get("fit_index", max(self.n_fits - 1, 0)))
        self.metric_names = list(state.get("metric_names", self.metric_names))
        if state.get("smoother") is not None:
            saved = state["smoother"]
            self.smoother = SmoothedValue(float(saved["beta"]))
            self.smoother.avg, self.smoother.count = float(saved["avg"]), int(saved["count"])
        pending = state.get("pending_losses")
        self._pending_losses = [] if pending is None else list(pending.unbind())
        self._pending_hypers = [tuple(h) for h in state.get("pending_hypers", [])]
        train = state.get("train_sums")
        self._phase_sums = {} if train is None else {"train": PhaseSums.from_state(train)}

    def _move_epoch_state(self, device) -> None:
        self._pending_losses = [loss.to(device) for loss in self._pending_losses]
        for sums in self._phase_sums.values():
            sums.loss = None if sums.loss is None else sums.loss.to(device)
            sums.metrics = None if sums.metrics is None else sums.metrics.to(device)


def _ordered_columns(rows: list[dict], first: list[str]) -> list[str]:
    extra = []
    for r in rows:
        extra.extend(k for k in r if k not in first and k not in extra)
    return first + extra
