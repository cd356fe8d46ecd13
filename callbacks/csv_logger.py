"""`CSVLogger`: the Recorder's epoch table, one row per epoch, in a CSV file."""

from __future__ import annotations

import csv
import io
import os

from ..data.state import open_for_write
from ..data.writer_lock import WriterConflictError, WriterLock
from .core import ORDER, Callback
from .held_failure import HeldFailure, after_checkpoint


class CSVLogger(Callback):
    """Append each epoch's row of the Recorder's table (fit, epoch, losses, metrics, time) to a CSV file, written
    and flushed as the epoch ends, so a crash loses at most the epoch in progress.

    A new fit starts a new file unless `append=True`. A resumed fit (`fit(..., resume=...)`) keeps the rows written
    up to its checkpoint and drops any written after it, so the file matches the uninterrupted run's.

    On a shared machine: one fit writes the file at a time. The fit holds a lock (`<path>.lock`, an advisory lock
    the kernel drops when the process ends, however it ends) from its start to its end, and a second fit on the same
    file, in this process or another, on this host or another sharing the folder, is refused before its first step,
    naming the process that writes it; once that one has ended, appending to its file is allowed again. The file is
    never written through a symbolic link planted at `path`, and a new file's mode comes from the umask.

    A file that cannot be opened (read-only, a link) is refused when the fit starts; a row that cannot be written
    (a full disk) fails the fit only once the epoch's checkpoint is written (callbacks/held_failure.py).
    """

    order = ORDER.csv_logger
    writes_files = True  # the LR finder runs without it (callbacks/lr_finder.py)

    def __init__(self, path: str | os.PathLike = "history.csv", append: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        self.path, self.append = os.fspath(path), bool(append)
        self.rows_written = 0  # rows of this file (header excluded), kept in checkpoints
        self._file = None  # open (binary, appending) from before_fit to cleanup_fit
        self._lock: WriterLock | None = None
        self._failure = HeldFailure()

    def before_fit(self, learn):
        self._failure = HeldFailure()
        if not getattr(learn, "is_main_process", True):
            return  # data-parallel: the main process writes the file
        self._take_lock()
        try:
            # 'a+': never truncated by the open itself, only once this fit holds the lock (the file may be another
            # live run's until then).
            self._file = open_for_write(self.path, "a+b", buffering=0)  # each row written at once, or not at all
            if learn.resuming:
                self._keep_rows(self.rows_written)
            elif self.append:
                self._file.seek(0)
                self.rows_written = max(0, self._file.read().count(b"\n") - 1)
            else:
                self._file.truncate(0)
                self.rows_written = 0
        except BaseException:
            self.cleanup_fit(learn)
            raise

    def _take_lock(self) -> None:
        lock = WriterLock(f"{self.path}.lock", f"the CSV log {self.path}")
        if lock.held:  # the lock is reentrant within a process: another fit of this one holds it
            raise WriterConflictError(
                f"the CSV log {self.path} is being written by another fit in this process: two fits appending to one "
                "file would interleave their rows; give each its own CSVLogger path")
        lock.acquire()
        self._lock = lock

    def _keep_rows(self, n_rows: int) -> None:
        self._file.seek(0)
        lines = self._file.read().splitlines(keepends=True)
        self._file.truncate(sum(len(line) for line in lines[: n_rows + 1]))  # the header and the first n_rows rows

    def before_epoch(self, learn):
        self._failure.raise_if_held()  # the previous epoch's checkpoint is written by now

    def after_epoch(self, learn):
        if self._file is not None:
            self._failure.attempt(lambda: self._write_row(learn.recorder.epoch_rows[-1]), lambda e: after_checkpoint(
                f"CSVLogger could not write epoch {learn.epoch} to {self.path}: {type(e).__name__}: {e}",
                f"the file's first {self.rows_written} rows"))

    def after_fit(self, learn):
        self._failure.raise_if_held()  # the last epoch's checkpoint is written by now

    def _write_row(self, row: dict) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            writer.writerow(list(row))
        writer.writerow(row.values())  # floats as repr: they read back exactly
        data = memoryview(text.getvalue().encode())
        try:
            while data:
                data = data[self._file.write(data):]
        except OSError:
            self._file.truncate(size)  # no half row left for a later append to continue
            raise
        self.rows_written += 1

    def cleanup_fit(self, learn):
        file, self._file = self._file, None
        lock, self._lock = self._lock, None
        try:
            if file is not None:
                file.close()
        finally:
            if lock is not None:
                lock.release()

    def state_dict(self) -> dict:
        return {"rows_written": self.rows_written}

    def load_state_dict(self, state: dict) -> None:
        self.rows_written = int(state["rows_written"])

    def __getstate__(self) -> dict:
        # A checkpoint's trial restore deep-copies callbacks: the open file and the lock stay with this one.
        return {**self.__dict__, "_file": None, "_lock": None, "_failure": HeldFailure()}
