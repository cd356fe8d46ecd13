"""Experiment trackers: `TensorBoardCallback` (torch.utils.tensorboard) and `MLflowCallback` (an MLflow store, by
default a local SQLite file, never a server). Both need the optional extra: pip install 'cyclr[track]'.

What they log, both the same way:
- per optimizer step (the Recorder's batch rows): `train/loss`, `train/smooth_loss`, `train/lr`, `train/mom` (with
  several parameter groups `train/lr_0`, `train/lr_1`, ...), and `train/wd`, `train/beta2` when a ParamScheduler
  schedules them;
- per epoch (the Recorder's epoch rows): `epoch/train_loss`, `epoch/valid_loss` and `epoch/<metric>`, at the step of
  the epoch's last optimizer step, so every series shares one x axis;
- at the start: the fit's hyperparameters (epochs, batches, batch size, optimizer, loss, model, schedules);
- an `lr_find` run with the logger attached: its curve as a run of its own (`lr_find/loss`, `lr_find/smooth_loss`,
  `lr_find/lr` against the sweep's iteration), never mixed with the training series;
- with `log_figures=True`, the Recorder's plots at the end of each fit.

Values are written once per epoch, when the Recorder turns the epoch's losses into floats: logging adds no host
sync to the batch loop. Only the main process logs (data-parallel runs).

One callback is one run: a second fit goes on at the step after the first fit's last, and a fit resumed from a
checkpoint (`fit(..., resume=path)`) appends to the same run (the checkpoint holds the run's id or folder and how
far it was logged), without duplicating the steps a crashed run had logged after its checkpoint: TensorBoard hides
them (`purge_step`), MLflow, which cannot delete metrics, keeps the first values logged and skips them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from pathlib import Path

from .checkpoint import SaveModelCallback
from .core import Callback
from .hypers import get_hyper
from .lr_finder import LRFinderCallback
from .scheduler import ParamScheduler

TRACK_EXTRA = "pip install 'cyclr[track]'"
# Hyperparameters the Recorder does not record, logged per step only when a ParamScheduler changes them.
_EXTRA_HYPERS = ("wd", "beta2")
# Callbacks every learner carries: not part of what makes one fit differ from another.
_DEFAULT_CALLBACKS = ("Recorder", "ProgressCallback", "TerminateOnNaNCallback")


def require(module: str, package: str, callback: str) -> None:
    """An ImportError naming the extra to install, raised when the callback is created rather than mid-fit."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{callback} needs the {package!r} package, which is not installed: {TRACK_EXTRA}")


class TrackerCallback(Callback):
    """What both trackers share: which fits to log, the step of each row, the hyperparameters, the LR finder.

    Subclasses write: `_open(learn)`, `_write(metrics)` with `metrics` a list of (key, value, step),
    `_write_params(params)`, `_write_figure(name, fig, step)`, `_write_lr_find(learn, finder)`, `_close(status)`."""

    # After the Recorder (50), which writes the rows read here, and CSVLogger (57); before SaveModelCallback (90),
    # so a checkpoint holds how far this run was logged.
    order = 58

    def __init__(self, log_figures: bool = False):
        self.log_figures = bool(log_figures)
        self.fit_offset = 0  # the run's step at train_iter 0 of this fit: a second fit goes on after the first
        self.logged_until = 0  # one past the last step logged
        self.rows_logged = self.epochs_logged = 0  # the Recorder's rows already logged
        self.n_fits = 0
        self._logging = self._finished = False
        self._finder: LRFinderCallback | None = None
        self._extra_names: list[str] = []
        self._extra: dict[int, dict[str, list[float]]] = {}

    # ----- hooks -------------------------------------------------------------------------------------------------
    def before_fit(self, learn):
        self._logging = self._finished = False
        self._finder = None
        if not getattr(learn, "is_main_process", True):
            return
        self._finder = next((cb for cb in learn.cbs if isinstance(cb, LRFinderCallback)), None)
        if self._finder is not None:
            return  # an LR-finder sweep: logged as a run of its own at its end, none of it into the training run
        self._logging = True
        scheduled = {name for cb in learn.cbs if isinstance(cb, ParamScheduler) for name in cb.scheds}
        self._extra_names = [n for n in _EXTRA_HYPERS if n in scheduled]
        if not learn.resuming:
            self.fit_offset = self.logged_until
            self.rows_logged, self.epochs_logged = len(learn.recorder.batch_rows), len(learn.recorder.epoch_rows)
            self._extra = {}
        self._open(learn)
        if not learn.resuming:
            prefix = f"fit{self.n_fits}/" if self.n_fits else ""
            self._write_params({prefix + k: v for k, v in fit_hyperparameters(learn, self).items()})
            self.n_fits += 1

    def before_step(self, learn):
        if self._logging and self._extra_names:
            groups = learn.opt.param_groups
            self._extra[learn.train_iter] = {n: [get_hyper(g, n) for g in groups] for n in self._extra_names}

    def after_epoch(self, learn):
        if self._logging:
            self._log_new_rows(learn, epoch_step=self.fit_offset + max(learn.train_iter - 1, 0))

    def after_fit(self, learn):
        if self._finder is not None and self._finder.lrs:
            self._write_lr_find(learn, self._finder)
        if not self._logging:
            return
        self._log_new_rows(learn, epoch_step=None)  # a fit cancelled mid-epoch: the batches it did train
        self.logged_until = max(self.logged_until, self.fit_offset + learn.train_iter)
        if self.log_figures:
            self._log_recorder_figures(learn)
        self._finished = True

    def cleanup_fit(self, learn):
        # Reached from the fit's `finally`: after an exception or Ctrl-C too, with the exception still in flight.
        if not self._logging:
            return
        self._logging = False
        if self._finished:
            status = "FINISHED"
        else:
            error = sys.exc_info()[1]
            status = "FAILED" if isinstance(error, Exception) or error is None else "KILLED"
        self._close(status)

    # ----- rows -> (key, value, step) ---------------------------------------------------------------------------
    def _log_new_rows(self, learn, epoch_step: int | None) -> None:
        rows = learn.recorder.batch_rows[self.rows_logged:]
        metrics = []
        for row in rows:
            step = self.fit_offset + int(row["train_iter"])
            metrics += [(f"train/{k}", row[k], step) for k in row if k not in ("fit", "epoch", "train_iter", "pct")]
            for name, values in self._extra.pop(int(row["train_iter"]), {}).items():
                metrics += ([(f"train/{name}", values[-1], step)] if len(values) == 1 else
                            [(f"train/{name}_{i}", v, step) for i, v in enumerate(values)])
            self.logged_until = max(self.logged_until, step + 1)
        self.rows_logged += len(rows)
        if epoch_step is not None and len(learn.recorder.epoch_rows) > self.epochs_logged:
            row = learn.recorder.epoch_rows[-1]
            metrics += [(f"epoch/{k}", row[k], epoch_step) for k in row if k not in ("fit", "epoch", "time")]
            metrics.append(("epoch/epoch", row["epoch"], epoch_step))
            self.epochs_logged = len(learn.recorder.epoch_rows)
            self.logged_until = max(self.logged_until, epoch_step + 1)
        metrics = [(k, float(v), s) for k, v, s in metrics if not math.isnan(float(v))]  # a missing momentum
        if metrics:
            self._write(metrics)

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
        # A checkpoint's trial restore deep-copies callbacks: the open writer / client (threads, connections) stay out.
        return {k: (None if k in ("writer", "_client") else v) for k, v in self.__dict__.items()}

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


def fit_hyperparameters(learn, tracker=None) -> dict:
    """The fit's settings as plain values: its length, the data, the optimizer and every schedule."""
    params = {"n_epoch": learn.n_epoch, "batches_per_epoch": len(learn.dls.train),
              "bs": getattr(learn.dls.train, "bs", None), "optimizer": type(learn.opt).__name__,
              "lr": learn.lr, "wd": learn.wd, "loss_func": _name(learn.loss_func), "model": type(learn.model).__name__,
              "n_param_groups": len(learn.opt.param_groups)}
    for cb in learn.cbs:
        if cb is tracker or isinstance(cb, TrackerCallback) or cb.name in _DEFAULT_CALLBACKS:
            continue
        params[f"cb/{cb.name}"] = repr(cb)[:500]  # a schedule's repr holds all of its parameters
    return {k: ("None" if v is None else v) for k, v in params.items()}


def _name(obj) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def lr_find_series(finder: LRFinderCallback) -> list[tuple[str, float, int]]:
    """The sweep's curve, one point per iteration."""
    return [(f"lr_find/{name}", float(v), i) for name, values in
            (("loss", finder.losses), ("smooth_loss", finder.smooth_losses), ("lr", finder.lrs))
            for i, v in enumerate(values) if math.isfinite(v)]


# ----- TensorBoard --------------------------------------------------------------------------------------------------
class TensorBoardCallback(TrackerCallback):
    """Log the fit to TensorBoard event files in `log_dir` (default `runs/cyclr-<date>-<time>`); see the module
    docstring. An `lr_find` curve goes to `log_dir/lr_find` (`lr_find_1`, ... for later sweeps): a run of its own.
    Open them with `tensorboard --logdir <log_dir>`."""

    def __init__(self, log_dir: str | os.PathLike | None = None, log_figures: bool = False):
        require("tensorboard", "tensorboard", "TensorBoardCallback")
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a folder path (str or os.PathLike) or None, got {type(log_dir).__name__}")
        super().__init__(log_figures)
        log_dir = log_dir if log_dir is not None else Path("runs") / time.strftime("cyclr-%Y%m%d-%H%M%S")
        self.log_dir = os.fspath(Path(log_dir).resolve())  # absolute: a resume from another folder finds it
        self.writer = None

    def _open(self, learn) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Resumed: events a crashed run wrote at or after the first step not logged before its checkpoint are
        # hidden by TensorBoard's readers, so the run reads as one continuous series.
        self.writer = SummaryWriter(self.log_dir, purge_step=self.logged_until if learn.resuming else None)

    def _write(self, metrics) -> None:
        for key, value, step in metrics:
            self.writer.add_scalar(key, value, step)

    def _write_params(self, params: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.n_fits:
            return  # the hparams dashboard knows one set per run: the first fit's
        metric_names = {"epoch/train_loss": math.nan, "epoch/valid_loss": math.nan}
        for summary in hparams(params, metric_names):
            self.writer.file_writer.add_summary(summary)

    def _write_figure(self, name: str, fig, step: int) -> None:
        self.writer.add_figure(name, fig, step, close=False)

    def _write_lr_find(self, learn, finder) -> None:
        from torch.utils.tensorboard import SummaryWriter

        names = ("lr_find", *(f"lr_find_{i}" for i in range(1, 10_000)))
        folder = next(p for name in names if not (p := Path(self.log_dir) / name).exists())
        with SummaryWriter(os.fspath(folder)) as writer:
            for key, value, step in lr_find_series(finder):
                writer.add_scalar(key, value, step)

    def _close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "log_dir": self.log_dir}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.log_dir = state.get("log_dir", self.log_dir)


# ----- MLflow -------------------------------------------------------------------------------------------------------
class MLflowCallback(TrackerCallback):
    """Log the fit to an MLflow run; see the module docstring.

    `tracking_uri` None: the `MLFLOW_TRACKING_URI` environment variable when set, else a SQLite database
    `mlflow.db` in the current folder (`sqlite:///mlflow.db`), never a server the user did not ask for; artifacts
    then go to `mlartifacts/` beside it. `experiment` (default 'cyclr') is created when missing. The run ends
    FINISHED, FAILED (the fit raised) or KILLED (Ctrl-C), even when the fit does not end normally.
    `log_history=True` adds the Recorder's histories as CSV artifacts, `log_checkpoints=True` the files written by
    a SaveModelCallback. Open the runs with `mlflow ui --backend-store-uri <tracking_uri>`."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 log_figures: bool = False, log_history: bool = False, log_checkpoints: bool = False):
        require("mlflow", "mlflow-skinny", "MLflowCallback")
        for name, value in (("tracking_uri", tracking_uri), ("experiment", experiment), ("run_name", run_name)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
        super().__init__(log_figures)
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment or "cyclr", run_name
        self.log_history, self.log_checkpoints = bool(log_history), bool(log_checkpoints)
        self.run_id: str | None = None
        self._client = None
        self._skip: dict[str, int] = {}  # resumed: per key, the last step the store already holds

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):  # artifacts beside the database, not in the current folder
            location = (Path(self.tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def _open(self, learn) -> None:
        self._skip = {}
        if self.run_id is None:
            run = self.client.create_run(self._experiment_id(), run_name=self.run_name, tags={"cyclr.kind": "fit"})
            self.run_id = run.info.run_id
            return
        self.client.update_run(self.run_id, status="RUNNING")  # a later fit, or a resumed one, of the same run
        if learn.resuming:
            # Steps a crashed run logged after its checkpoint stay as they are (MLflow deletes no metric): skip them.
            for key in self.client.get_run(self.run_id).data.metrics:
                history = self.client.get_metric_history(self.run_id, key)
                self._skip[key] = max(m.step for m in history)

    def _write(self, metrics) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, s) for k, v, s in metrics if s > self._skip.get(k, -1)]
        for i in range(0, len(batch), 1000):  # MLflow's limit per log_batch call
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def _write_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit of params per log_batch call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _write_figure(self, name: str, fig, step: int) -> None:
        self.client.log_figure(self.run_id, fig, f"{name}.png")

    def after_fit(self, learn):
        super().after_fit(learn)
        if not self._logging:
            return
        if self.log_history:
            for kind in ("batches", "epochs"):
                text = learn.recorder.to_df(kind).to_csv(index=False)
                self.client.log_text(self.run_id, text, f"history/{kind}.csv")
        if self.log_checkpoints:
            for cb in learn.cbs:
                if isinstance(cb, SaveModelCallback) and cb.last_saved and os.path.exists(cb.last_saved):
                    self.client.log_artifact(self.run_id, cb.last_saved, "checkpoints")

    def _write_lr_find(self, learn, finder) -> None:
        from mlflow.entities import Metric, Param

        name = f"{self.run_name} lr_find" if self.run_name else "lr_find"
        tags = {"cyclr.kind": "lr_find"} | ({"cyclr.training_run": self.run_id} if self.run_id else {})
        run = self.client.create_run(self._experiment_id(), run_name=name, tags=tags)
        now = int(time.time() * 1000)
        wd = get_hyper(learn.opt.param_groups[finder.reference_group], "wd")
        params = [Param(k, str(v)) for k, v in (("start_lr", finder.start_lr), ("end_lr", finder.end_lr),
                                                 ("num_it", finder.num_it), ("step_mode", finder.step_mode),
                                                 ("wd", wd), ("stop_reason", finder.stop_reason[:500]))]
        metrics = [Metric(k, v, now, s) for k, v, s in lr_find_series(finder)]
        self.client.log_batch(run.info.run_id, params=params)
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        self.client.set_terminated(run.info.run_id, "FINISHED")

    def _close(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "run_id": self.run_id, "tracking_uri": self.tracking_uri,
                "experiment": self.experiment}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.run_id = state.get("run_id")
        self.tracking_uri = state.get("tracking_uri", self.tracking_uri)
        self.experiment = state.get("experiment", self.experiment)
        self._client = None  # the restored store may be another one
