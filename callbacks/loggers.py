"""Experiment trackers: `TensorBoardCallback` (torch.utils.tensorboard) and `MLflowCallback` (an MLflow store, by
default a local SQLite file, never a server). Both need the optional extra: pip install 'cyclr[track]'.

What they log, both the same way:
- per optimizer step (the Recorder's batch rows): `train/loss`, `train/smooth_loss`, `train/lr`, `train/mom` (with
  several parameter groups `train/lr_0`, `train/lr_1`, ...), and `train/wd`, `train/beta2` when a ParamScheduler
  schedules them;
- per epoch (the Recorder's epoch rows): `epoch/train_loss`, `epoch/valid_loss` and `epoch/<metric>`, at the step of
  the epoch's last optimizer step, so every series shares one x axis;
- at the start: what the fit really used (callbacks/tracker.py `fit_hyperparameters`): epochs, steps, batch size,
  optimizer, wd, `lr` (per group `lr_<i>`) when no scheduler sets it, else `lr_schedule` and each scheduler's
  arguments as params of their own (`one_cycle.max_lr`, `one_cycle.pct_start`, ..., per group `one_cycle.max_lr_0`);
- an `lr_find` run with the logger attached: its curve as a run of its own (`lr_find/loss`, `lr_find/smooth_loss`,
  `lr_find/lr` against the sweep's iteration), never mixed with the training series;
- with `log_figures=True`, the Recorder's plots at the end of each fit.

Values are written once per epoch, when the Recorder turns the epoch's losses into floats: logging adds no host
sync to the batch loop. Only the main process logs (data-parallel runs). A fit interrupted mid-epoch (Ctrl-C, an
error) logs the steps it took, as the Recorder keeps them. A tracker that cannot write (a full disk, a read-only
folder) fails the fit only once the epoch's checkpoint is written (callbacks/tracker.py); an MLflow run ends FAILED
even in a SQLite store whose disk is full.

One callback is one run: a second fit goes on at the step after the first fit's last, and a fit resumed from a
checkpoint (`fit(..., resume=path)`) appends to the same run (the checkpoint holds the run's id or folder and how
far it was logged), without duplicating the steps a crashed run had logged after its checkpoint: TensorBoard hides
them (`purge_step`), MLflow, which cannot delete metrics, keeps the first values logged and skips them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import secrets
import shutil
import time
from pathlib import Path

from .checkpoint import SaveModelCallback
from .hypers import get_hyper
from .tracker import TrackerCallback, lr_find_series, require

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None


# ----- TensorBoard --------------------------------------------------------------------------------------------------
class TensorBoardCallback(TrackerCallback):
    """Log the fit to TensorBoard event files in `log_dir` (default `runs/cyclr-<date>-<time>-<random>`, a folder
    of its own for each run, even for runs started in the same second); see the module docstring. An `lr_find` curve
    goes to `log_dir/lr_find` (`lr_find_1`, ... for later sweeps): a run of its own. Events are flushed at the end of
    each epoch. Open them with `tensorboard --logdir <log_dir>`."""

    def __init__(self, log_dir: str | os.PathLike | None = None, log_figures: bool = False):
        require("tensorboard", "tensorboard", "TensorBoardCallback")
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise TypeError(f"log_dir must be a folder path (str or os.PathLike) or None, got {type(log_dir).__name__}")
        super().__init__(log_figures)
        self._default_dir = log_dir is None  # created by the first fit, as a new folder: never another run's
        log_dir = default_run_dir() if log_dir is None else log_dir
        self.log_dir = os.fspath(Path(log_dir).resolve())  # absolute: a resume from another folder finds it
        self.writer = None

    def _open(self, learn) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._create_default_folder()
        # Resumed: events a crashed run wrote at or after the first step not logged before its checkpoint are
        # hidden by TensorBoard's readers, so the run reads as one continuous series.
        self.writer = SummaryWriter(self.log_dir, purge_step=self.logged_until if learn.resuming else None)

    def _where(self) -> str:
        return _with_free_space(self.log_dir)

    def _write(self, metrics) -> None:
        for key, value, step in metrics:
            self.writer.add_scalar(key, value, step)
        # Written by a thread of TensorBoard's: flushed here, the epoch is on disk (and a failure to write it is
        # raised now, not minutes later) before the checkpoint records it as logged.
        self.writer.flush()

    def _write_params(self, params: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.n_fits:
            return  # the hparams dashboard knows one set per run: the first fit's
        metric_names = {"epoch/train_loss": math.nan, "epoch/valid_loss": math.nan}
        for summary in hparams(params, metric_names):
            self.writer.file_writer.add_summary(summary)

    def _write_figure(self, name: str, fig, step: int) -> None:
        self.writer.add_figure(name, fig, step, close=False)

    def _create_default_folder(self) -> None:
        """A default folder is created by whatever writes first (a fit or an lr_find), as a new folder."""
        if self._default_dir:
            self.log_dir = make_new_folder(self.log_dir)
            self._default_dir = False

    def _write_lr_find(self, learn, finder) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._create_default_folder()
        names = ("lr_find", *(f"lr_find_{i}" for i in range(1, 10_000)))
        folder = next(p for name in names if not (p := Path(self.log_dir) / name).exists())
        with SummaryWriter(os.fspath(folder)) as writer:
            for key, value, step in lr_find_series(finder):
                writer.add_scalar(key, value, step)

    def _close(self, status: str) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "log_dir": self.log_dir}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "log_dir" in state:
            self.log_dir, self._default_dir = state["log_dir"], False  # the checkpoint's run: appended to


def default_run_dir() -> Path:
    """`runs/cyclr-<date>-<time>-<random>`: sortable by start time, and unique for runs started in the same second
    (in one process or several; `make_new_folder` settles the rest)."""
    return Path("runs") / f"{time.strftime('cyclr-%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def make_new_folder(path: str) -> str:
    """Create `path` as a new folder; where one exists already (another run's), a new random suffix: two runs never
    share a default folder."""
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            folder.mkdir()
            return os.fspath(folder)
        except FileExistsError:
            folder = folder.with_name(f"{folder.name.rsplit('-', 1)[0]}-{secrets.token_hex(3)}")


def _with_free_space(path: str) -> str:
    """`path`, with the free space of its file system when it is nearly full (the usual cause of a failed write)."""
    try:
        free = shutil.disk_usage(path if os.path.isdir(path) else os.path.dirname(path) or ".").free
    except OSError:
        return path
    return f"{path} ({free:,} bytes free)" if free < 64 * 2**20 else path


# ----- MLflow -------------------------------------------------------------------------------------------------------
class MLflowCallback(TrackerCallback):
    """Log the fit to an MLflow run; see the module docstring.

    The run ends FINISHED, FAILED (the fit raised) or KILLED (Ctrl-C), even when the fit does not end normally.
    Open the runs with `mlflow ui --backend-store-uri <tracking_uri>`.

    Args:
        tracking_uri: the MLflow store. None: the `MLFLOW_TRACKING_URI` environment variable when set, else a
            SQLite database `mlflow.db` in the current folder (`sqlite:///mlflow.db`), never a server the user did
            not ask for; a SQLite store's artifacts go to `mlartifacts/` beside it.
        experiment: the experiment's name, created when missing; None: 'cyclr'.
        run_name: the run's name in MLflow (an `lr_find` run gets `<run_name> lr_find`); None: MLflow names it.
        log_figures: at the end of a fit, also log the Recorder's plots as figures.
        log_history: at the end of a fit, also log the Recorder's tables as CSV artifacts (`history/batches.csv`,
            `history/epochs.csv`).
        log_checkpoints: at the end of a fit, also log the last file each SaveModelCallback wrote as an artifact.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 log_figures: bool = False, log_history: bool = False, log_checkpoints: bool = False):
        require("mlflow", "mlflow-skinny", "MLflowCallback")
        for name, value in (("tracking_uri", tracking_uri), ("experiment", experiment), ("run_name", run_name)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
        super().__init__(log_figures)
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or default_store_uri()
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment or "cyclr", run_name
        self.log_history, self.log_checkpoints = bool(log_history), bool(log_checkpoints)
        self.run_id: str | None = None
        self._client = None
        self._skip: dict[str, int] = {}  # resumed: per key, the last step the store already holds

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            with store_lock(self._sqlite_path):  # the client may create the store's tables: see _experiment_id
                self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def _sqlite_path(self) -> Path | None:
        """The database file of a SQLite store, else None."""
        prefix = "sqlite:///"
        return Path(self.tracking_uri[len(prefix):]) if self.tracking_uri.startswith(prefix) else None

    def _experiment_id(self) -> str:
        # Runs started at once on a new SQLite file would each create its tables (MLflow's migrations are not safe
        # to run twice at the same time): the first creates them under the lock, the others then find them.
        client = self.client  # outside the lock, which creating it takes
        with store_lock(self._sqlite_path):
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            location = None
            if self._sqlite_path is not None:  # artifacts beside the database, not in the current folder
                location = (self._sqlite_path.parent / "mlartifacts").resolve().as_uri()
            return client.create_experiment(self.experiment, artifact_location=location)

    def _open(self, learn) -> None:
        self._skip = {}
        if self.run_id is None:
            experiment_id = self._experiment_id()  # first: creating the client may create the store
            run = self.client.create_run(experiment_id, run_name=self.run_name, tags={"cyclr.kind": "fit"})
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
        with store_errors_reported_by_us():
            for i in range(0, len(batch), 1000):  # MLflow's limit per log_batch call
                self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def _write_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        with store_errors_reported_by_us():
            for i in range(0, len(items), 100):  # MLflow's limit of params per log_batch call
                self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _write_figure(self, name: str, fig, step: int) -> None:
        self.client.log_figure(self.run_id, fig, f"{name}.png")

    def _finish_run(self, learn) -> None:
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
        experiment_id = self._experiment_id()
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
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
        if self.run_id is None:
            return
        try:
            with store_errors_reported_by_us():
                self.client.set_terminated(self.run_id, status)
        except Exception as e:
            if self._sqlite_path is None or not _store_full(e):
                raise
            end_run_in_full_store(self._sqlite_path, self.run_id, status)  # else it would stay RUNNING for ever

    def _where(self) -> str:
        store = _with_free_space(os.fspath(self._sqlite_path)) if self._sqlite_path else self.tracking_uri
        return f"the MLflow store {store}" + (f", run {self.run_id}" if self.run_id else "")

    def _reason(self, error: Exception) -> str:
        # MLflow wraps the database's error in SQLAlchemy's, whose message runs to pages of SQL: the root says it.
        root = error
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        return f"{type(root).__name__}: {str(root).splitlines()[0][:300] if str(root) else ''}"

    def state_dict(self) -> dict:
        return {**super().state_dict(), "run_id": self.run_id, "tracking_uri": self.tracking_uri,
                "experiment": self.experiment}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.run_id = state.get("run_id")
        self.tracking_uri = state.get("tracking_uri", self.tracking_uri)
        self.experiment = state.get("experiment", self.experiment)
        self._client = None  # the restored store may be another one


def _store_full(error: BaseException | None) -> bool:
    while error is not None:
        if "database or disk is full" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def end_run_in_full_store(db_path: Path, run_id: str, status: str) -> None:
    """End a run whose SQLite store has no space left. MLflow's own UPDATE needs a rollback journal, a new file on
    the full disk; the run's row exists already, so the same UPDATE with the journal kept in memory rewrites it in
    place (one page: nothing is lost but the atomicity of that one page's write)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        db.execute("PRAGMA journal_mode=MEMORY")
        db.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                   (status, int(time.time() * 1000), run_id))
        db.commit()


@contextlib.contextmanager
def store_errors_reported_by_us():
    """MLflow logs a failed database statement with its SQL and parameters (pages of them) before raising: the error
    reaches the tracker, which reports it in one line with the original chained, so that log would only repeat it."""
    log = logging.getLogger("mlflow.store.db.utils")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def default_store_uri() -> str:
    """The store MLflowCallback writes when given none: `mlflow.db` in the current folder, refused when that name is
    a symbolic link (it could lead to another run's or another user's store)."""
    path = Path("mlflow.db")
    if path.is_symlink():
        raise ValueError(
            f"{path.absolute()} is a symbolic link (to {os.readlink(path)}): cyclr does not write its default MLflow "
            "store through a link; remove the link, or name the store you mean: "
            "MLflowCallback(tracking_uri='sqlite:////path/to/mlflow.db') or $MLFLOW_TRACKING_URI")
    return f"sqlite:///{path.resolve()}"


@contextlib.contextmanager
def store_lock(db_path: Path | None):
    """Hold an exclusive advisory lock on `<db>.cyclr-lock` beside a SQLite store (no-op for other stores, or
    where the file system has no locks: MLflow's own checks then apply). Never removed: a lock file removed while
    another process waits on it would let a third one lock a new file at the same time."""
    if db_path is None or fcntl is None:
        yield
        return
    db_path.parent.mkdir(parents=True, exist_ok=True)
    lock = db_path.with_name(f".{db_path.name}.cyclr-lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process creates the store
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):  # a file system without locks: MLflow's own checks
                raise
        yield
    finally:
        os.close(fd)  # releases the lock
