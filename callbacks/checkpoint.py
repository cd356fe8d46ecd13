"""SaveModelCallback: checkpoints during a fit, of the best epoch or of every epoch (and every n steps).

Each checkpoint is a full one (`learn.save`: model, optimizer, counters, callbacks, loaders, RNGs), written
atomically, so `fit(..., resume=path)` continues from it exactly.
"""

from __future__ import annotations

import glob
import math
import os
import string
from pathlib import Path

from ..data.checks import int_at_least
from ..data.state import check_file_path
from ..data.writer_lock import WriterLock
from .core import ORDER
from .history import history_file_name, history_writer_lock
from .monitors import Monitor

PATH_FIELDS = ("epoch", "train_iter")


def _check_path_template(path: str) -> bool:
    """Whether `path` has format fields; refuses fields other than PATH_FIELDS and bad format specs now, not at the
    end of the first epoch."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(path) if name is not None}
        unknown = sorted(fields - set(PATH_FIELDS))
        if not unknown:
            path.format(epoch=0, train_iter=0)
    except (ValueError, IndexError) as e:
        raise ValueError(f"path {path!r} is not a valid format string ({e}); double literal braces as {{{{ }}}}") from e
    if unknown:
        raise ValueError(f"path {path!r} has format field(s) {unknown}; the fields it may use are "
                         f"{', '.join('{' + f + '}' for f in PATH_FIELDS)}")
    return bool(fields)


class SaveModelCallback(Monitor):
    """Save checkpoints to `path` during a fit.

    - default: at the end of each epoch where `monitor` improved by more than `min_delta`: `path` then holds the
      best epoch so far (`best_epoch`), and `load_best_at_end=True` loads its weights when the fit ends.
    - `every_epoch=True`: at the end of every epoch. A `{epoch}` field in `path` (e.g. 'ckpt_{epoch}.pt' or
      'ckpt_{epoch:03d}.pt'; also `{train_iter}`, the optimizer steps the checkpoint holds) keeps one file per
      epoch; without it the file is replaced each time (atomically: a crash never leaves a broken file).
    - a `monitor` value that is NaN or infinite is warned about, naming the epoch, and never counts as the best.
    - `every_n_batches=n` (with `every_epoch=True`): also after every n-th optimizer step, so a fit resumes
      mid-epoch. A checkpoint is only taken after a real step (never between the micro-batches of
      GradientAccumulation).

    On a preemption signal (callbacks/preemption.py) the fit saves where this callback would (`preemption_path`):
    with `every_epoch`, the file of the current step; for the best epoch, beside it, `<name>.preempted<ext>` (the
    best stays the best; the file is removed when the fit ends normally). `fit(..., resume='auto')` looks for the
    newest of the files this callback writes (`resume_paths`).

    Args:
        path: the checkpoint file; may hold `{epoch}` and `{train_iter}` fields (with `every_epoch`: one file per
            save). Relative paths are relative to the working directory.
        monitor: the column of the Recorder's epoch table to watch: 'valid_loss', 'train_loss' or a metric's name
            (checked when the fit starts).
        mode: 'min' (lower is better), 'max', or 'auto': 'min' for a name containing "loss" or "error", else
            'max'.
        min_delta: the smallest change that counts as an improvement, in the monitored value's unit (>= 0).
        every_epoch: save at the end of every epoch; False: only when `monitor` improved (the best epoch).
        every_n_batches: with `every_epoch`, also save after every n-th optimizer step (>= 1); None: only at epoch
            ends.
        load_best_at_end: load the best epoch's weights into the model when the fit ends (needs
            `every_epoch=False`).
    """

    # After every callback that updates its state at the end of a batch or epoch (the Recorder, the monitors, the
    # loggers), so the checkpoint holds their updates.
    order = ORDER.checkpoint
    writes_files = True  # the LR finder runs without it (callbacks/lr_finder.py)

    def __init__(self, path: str | os.PathLike = "model.pt", monitor: str = "valid_loss", mode: str = "auto",
                 min_delta: float = 0.0, every_epoch: bool = False, every_n_batches: int | None = None,
                 load_best_at_end: bool = False):
        check_file_path(path, "model_{epoch}.pt")
        self._init_monitor(monitor, mode, min_delta)
        self._templated = _check_path_template(os.fspath(path))
        self.path, self.every_epoch, self.load_best_at_end = os.fspath(path), bool(every_epoch), load_best_at_end
        self.every_n_batches = None if every_n_batches is None else int_at_least("every_n_batches",
                                                                                  every_n_batches, 1)
        if self.every_n_batches is not None and not self.every_epoch:
            raise ValueError(
                "every_n_batches saves the latest state, which would replace the best epoch's checkpoint: pass "
                "every_epoch=True too, or use a second SaveModelCallback with another path for the best epoch"
            )
        if load_best_at_end and self.every_epoch:
            raise ValueError("load_best_at_end needs every_epoch=False: with every_epoch=True no file holds the best")
        self.best_epoch: int | None = None
        self.last_saved: str | None = None
        self._writer_lock = None  # held from before_fit to cleanup_fit: this run's files have one writer

    def _file(self, learn, steps_done: int) -> str:
        return self._format(learn.epoch, steps_done)

    def _format(self, epoch: int, steps_done: int) -> str:
        return self.path.format(epoch=epoch, train_iter=steps_done) if self._templated else self.path

    def before_fit(self, learn):
        if not self.every_epoch:
            self._check_monitor(learn)
        self._claim_run_files(learn)
        if not learn.resuming:
            self._reset_best()
            self.best_epoch = None

    def after_batch(self, learn):
        n = self.every_n_batches
        # learn.stepped: this batch took an optimizer step; learn.train_iter counts it only after after_batch.
        if n is not None and learn.training and learn.stepped and (learn.train_iter + 1) % n == 0:
            self.last_saved = str(learn.save(self._file(learn, learn.train_iter + 1)))

    def after_epoch(self, learn):
        if not self.every_epoch:
            value = self._current(learn)
            if not math.isfinite(value):
                self._warn_not_finite(learn, value, f"no checkpoint is written for it (the best stays epoch "
                                                    f"{self.best_epoch}); EarlyStoppingCallback stops such a fit")
            if not self._improved(value):
                return
            self.best, self.best_epoch = value, learn.epoch
        self.last_saved = str(learn.save(self._file(learn, learn.train_iter)))

    def preemption_path(self, learn) -> str:
        """Where a preempted fit saves, at the end of the current training batch or epoch."""
        if not self.every_epoch:
            return self._preempted_file()
        return self._file(learn, learn.train_iter + int(learn.event == "after_batch" and learn.stepped))

    def resume_paths(self) -> list[str]:
        """Every file this callback may have written in an earlier run (for `fit(..., resume='auto')`)."""
        pattern = "".join(glob.escape(text) + ("*" if field is not None else "")
                          for text, field, _, _ in string.Formatter().parse(self.path))
        found = sorted(glob.glob(pattern)) if self._templated else [self.path]
        return found if self.every_epoch else [*found, self._preempted_file()]

    def _preempted_file(self) -> str:
        # One file for the best-epoch mode, its name the path's without format fields: 'best_{epoch}.pt' ->
        # 'best_.preempted.pt'.
        p = Path("".join(text for text, _, _, _ in string.Formatter().parse(self.path)))
        return str(p.with_name(f"{p.stem}.preempted{p.suffix}"))

    def after_fit(self, learn):
        if not self.every_epoch and getattr(learn, "is_main_process", True):
            Path(self._preempted_file()).unlink(missing_ok=True)  # the fit ended: nothing to resume from it
        if self.load_best_at_end and self.best_epoch is not None:
            learn.barrier()  # data-parallel: the main process wrote the file the others read
            learn.load(self.last_saved, model_only=True)

    def cleanup_fit(self, learn):
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    def _claim_run_files(self, learn) -> None:
        """Hold this run's writer lock for the fit (released in cleanup_fit): another process writing the same run's
        history side file (two fits resumed from one checkpoint) is refused before the first step, and kept out."""
        recorder = getattr(learn, "recorder", None)
        lock = None if recorder is None or not getattr(learn, "is_main_process", True) else \
            self.run_files_lock(recorder.run_id)
        if lock is not None:
            lock.acquire()
            self._writer_lock = lock

    def run_files_lock(self, run_id: str) -> WriterLock | None:
        """The lock on the history side file of run `run_id` beside this callback's checkpoints; None when they go to
        a folder per epoch (each save then takes the lock of its own folder's side file)."""
        folder = Path(self._format(0, 0)).parent
        if folder != Path(self._format(1, 1)).parent:
            return None
        return history_writer_lock(folder / history_file_name(run_id))
