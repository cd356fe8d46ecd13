"""The Recorder's per-batch history, stored by column, and the side file that checkpoints keep it in.

`BatchHistory` holds one typed array per column instead of a dict per row: 8 bytes per value for the step counter
and the floats (loss, smoothed loss, pct, lr, mom, one lr and mom per group when there are several), and the fit and
epoch indices as runs (they change once per epoch). Rows are built only when read, so `Recorder.batch_rows` and
`to_df` look as they always did.

The side file. A checkpoint taken during a fit does not carry the history itself (it would grow with every step,
and with `every_n_batches` the total written would grow quadratically): it names a file beside it,
`cyclr-history-<run>.bin`, and how much of it is its own. The file is append-only, written in blocks:

    b"cyclr-history 1\\n"
    block*:  b"CYHB"  payload length (8 bytes, little-endian)  chain (32 bytes)  payload
    payload: header length (4 bytes)  header (JSON: start_row, n_rows, columns [[name, dtype], ...])  column bytes

A block replaces the rows from `start_row` on with its own, so a run resumed from an earlier checkpoint appends
after the rows of the future it abandoned, and every checkpoint still reads back the history it was saved with.
`chain` is SHA-256(previous block's chain + SHA-256(payload)): a checkpoint records the file's length and the last
chain it wrote, so reading it checks every byte it depends on, while a save writes only the rows since the last one.
Columns are read with numpy from raw bytes: nothing in the file can run code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import struct
from array import array
from pathlib import Path

import numpy as np
import torch

from ..data.state import fsync_directory, open_for_write
from ..data.writer_lock import WriterLock

# Columns every row has, in the order `to_df` shows them; the others (lr_0, mom_0, eff_lr, ...) follow.
BASE_COLUMNS = ("fit", "epoch", "train_iter", "pct", "lr", "mom", "loss", "smooth_loss")
RUN_COLUMNS = ("fit", "epoch")  # stored as runs: (first row, value) each time the value changes
INT_COLUMNS = ("fit", "epoch", "train_iter")

FILE_MAGIC = b"cyclr-history 1\n"
BLOCK_MAGIC = b"CYHB"
_BLOCK_HEAD = struct.Struct("<4sQ32s")  # magic, payload length, chain
_NO_CHAIN = bytes(32)


class HistoryFileError(ValueError):
    """A history side file that is missing, damaged or does not match the checkpoint that names it."""


class _Runs:
    """An integer column that changes rarely, stored as the rows where it changes and its values there."""

    def __init__(self):
        self.starts, self.values, self.n = array("q"), array("q"), 0

    def append(self, value: int) -> None:
        if not self.values or self.values[-1] != value:
            self.starts.append(self.n)
            self.values.append(value)
        self.n += 1

    def __getitem__(self, i: int) -> int:
        return self.values[int(np.searchsorted(np.frombuffer(self.starts, np.int64), i, side="right")) - 1]

    def to_numpy(self) -> np.ndarray:
        starts = np.frombuffer(self.starts, np.int64)
        counts = np.diff(np.append(starts, self.n))
        return np.repeat(np.frombuffer(self.values, np.int64), counts)

    def extend(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.int64)
        changes = np.flatnonzero(np.diff(values, prepend=values[:1] - 1)) if len(values) else values
        for start in changes:
            v = int(values[start])
            if not self.values or self.values[-1] != v:
                self.starts.append(self.n + int(start))
                self.values.append(v)
        self.n += len(values)

    def truncate(self, n: int) -> None:
        keep = int(np.searchsorted(np.frombuffer(self.starts, np.int64), n, side="left"))
        del self.starts[keep:]
        del self.values[keep:]
        self.n = min(self.n, n)

    def nbytes(self) -> int:
        return (len(self.starts) + len(self.values)) * 8


def _new_column(name: str):
    if name in RUN_COLUMNS:
        return _Runs()
    return array("q") if name in INT_COLUMNS else array("d")


def _as_numpy(column) -> np.ndarray:
    if isinstance(column, _Runs):
        return column.to_numpy()
    return np.frombuffer(column, np.int64 if column.typecode == "q" else np.float64)


class BatchHistory:
    """The per-batch rows of every fit, column by column (see the module docstring)."""

    def __init__(self):
        self.columns: dict[str, object] = {name: _new_column(name) for name in BASE_COLUMNS}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    # ----- writing ---------------------------------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """One row: every base column, and any others (a column first seen now reads NaN for the rows before)."""
        for name in row:
            if name not in self.columns:
                self.columns[name] = array("d", [math.nan]) * self.n
        for name, column in self.columns.items():
            value = row.get(name, math.nan)
            column.append(int(value) if name in INT_COLUMNS else float(value))
        self.n += 1

    def extend(self, columns: dict[str, np.ndarray], n_rows: int) -> None:
        """Rows given as whole columns (a checkpoint's, a side file block's)."""
        for name in columns:
            if name not in self.columns:
                self.columns[name] = array("d", [math.nan]) * self.n
        for name, column in self.columns.items():
            values = columns.get(name)
            if values is None:
                values = np.full(n_rows, math.nan)
            if len(values) != n_rows:
                raise HistoryFileError(f"column {name!r} has {len(values)} rows, the others {n_rows}")
            if isinstance(column, _Runs):
                column.extend(np.asarray(values, np.int64))
            else:
                column.frombytes(np.ascontiguousarray(values, np.int64 if column.typecode == "q" else np.float64)
                                 .tobytes())
        self.n += n_rows

    def truncate(self, n: int) -> None:
        """Keep the first `n` rows; a column no kept row has a value in is dropped."""
        for column in self.columns.values():
            if isinstance(column, _Runs):
                column.truncate(n)
            else:
                del column[n:]
        self.n = min(self.n, n)
        for name in [k for k in self.columns if k not in BASE_COLUMNS]:
            if np.isnan(_as_numpy(self.columns[name])).all():
                del self.columns[name]

    # ----- reading ---------------------------------------------------------------------------------------------------
    def row(self, i: int) -> dict:
        """Row `i` as a dict: the base columns, and the other columns where they have a value."""
        if not -self.n <= i < self.n:
            raise IndexError(f"batch row {i} out of range ({self.n} rows)")
        i %= self.n
        return {name: column[i] for name, column in self.columns.items()
                if name in BASE_COLUMNS or not math.isnan(column[i])}

    def numpy(self, name: str) -> np.ndarray:
        return _as_numpy(self.columns[name])

    def to_columns(self, start: int = 0) -> dict[str, np.ndarray]:
        """Every column from row `start` on, as numpy arrays (int64 / float64)."""
        return {name: _as_numpy(column)[start:] for name, column in self.columns.items()}

    def nbytes(self) -> int:
        """Bytes the values take (array headers and spare capacity aside)."""
        return sum(c.nbytes() if isinstance(c, _Runs) else len(c) * c.itemsize for c in self.columns.values())

    # ----- inline state (a checkpoint taken between fits, the LR finder's snapshot) -------------------------------
    def state_dict(self) -> dict:
        return {"n_rows": self.n, "columns": {k: torch.from_numpy(v.copy()) for k, v in self.to_columns().items()}}

    @classmethod
    def from_state(cls, state: dict) -> BatchHistory:
        history = cls()
        history.extend({k: v.numpy() for k, v in state["columns"].items()}, int(state["n_rows"]))
        return history

    @classmethod
    def from_rows(cls, rows) -> BatchHistory:
        """From a list of row dicts (checkpoints of version 1 and 2)."""
        history = cls()
        for row in rows:
            history.append(row)
        return history


class BatchRows:
    """`Recorder.batch_rows`: a read-only sequence of row dicts over a `BatchHistory`, built as they are read."""

    def __init__(self, history: BatchHistory, rows: range | None = None):
        self.history, self.range = history, rows

    def _rows(self) -> range:
        return range(len(self.history)) if self.range is None else self.range

    def __len__(self) -> int:
        return len(self._rows())

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.history.row(j) for j in self._rows()[i]]
        return self.history.row(self._rows()[i])

    def __iter__(self):
        return (self.history.row(j) for j in self._rows())

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, tuple, BatchRows)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"BatchRows({len(self)} rows; recorder.to_df('batches') shows them as a DataFrame)"


# ----- the side file -------------------------------------------------------------------------------------------------
def history_file_name(run_id: str) -> str:
    return f"cyclr-history-{run_id}.bin"


def history_writer_lock(path) -> WriterLock:
    """The lock that keeps a second process from writing the side file at `path` (`cyclr-history-<run>.lock` beside
    it): two processes resuming one checkpoint would otherwise interleave their blocks and corrupt each other's
    checkpoints. SaveModelCallback holds it for the whole fit; each append takes it too."""
    path = Path(path)
    return WriterLock(path.with_suffix(".lock"), f"the batch history {path}")


def _chain(previous: bytes, payload: bytes) -> bytes:
    return hashlib.sha256(previous + hashlib.sha256(payload).digest()).digest()


def _payload(history: BatchHistory, start_row: int) -> bytes:
    columns = history.to_columns(start_row)
    header = {"start_row": start_row, "n_rows": history.n - start_row,
              "columns": [[name, str(values.dtype)] for name, values in columns.items()]}
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(np.ascontiguousarray(v).tobytes() for v in columns.values())


def _decode(payload: bytes) -> tuple[int, int, dict[str, np.ndarray]]:
    (head_len,) = struct.unpack_from("<I", payload)
    header = json.loads(payload[4:4 + head_len])
    start, n = int(header["start_row"]), int(header["n_rows"])
    columns, offset = {}, 4 + head_len
    for name, dtype in header["columns"]:
        if dtype not in ("int64", "float64"):
            raise HistoryFileError(f"column {name!r} has dtype {dtype!r}")
        size = n * 8
        columns[name] = np.frombuffer(payload, dtype, count=n, offset=offset).copy()
        offset += size
    if offset != len(payload):
        raise HistoryFileError("a block's columns do not fill it")
    return start, n, columns


def _blocks(data: bytes, start: int = len(FILE_MAGIC), base: int = 0):
    """(end offset, chain, payload) of each whole block in `data` from `start`, offsets counted from `base`; stops at
    the end or at a partial block."""
    pos = start
    while pos + _BLOCK_HEAD.size <= len(data):
        magic, length, chain = _BLOCK_HEAD.unpack_from(data, pos)
        end = pos + _BLOCK_HEAD.size + length
        if magic != BLOCK_MAGIC or end > len(data):
            return
        yield base + end, chain, data[pos + _BLOCK_HEAD.size:end]
        pos = end


def read_history_file(path, size: int, chain: str) -> BatchHistory:
    """The history a checkpoint saved: the first `size` bytes of the side file at `path`, every block's chain checked
    and the last one equal to `chain`."""
    path = Path(path)
    if not path.is_file():
        raise HistoryFileError(f"its batch history is kept in {path}, which is missing")
    with open(path, "rb") as f:
        data = f.read(size)
    if len(data) < size or not data.startswith(FILE_MAGIC):
        raise HistoryFileError(f"{path} is shorter than the checkpoint expects or is not a cyclr history file")
    history, previous, end = BatchHistory(), _NO_CHAIN, len(FILE_MAGIC)
    for block_end, stored, payload in _blocks(data):
        end = block_end
        previous = _chain(previous, payload)
        if previous != stored:
            raise HistoryFileError(f"{path} is corrupt: a block does not match its checksum")
        start, n, columns = _decode(payload)
        history.truncate(start)
        if len(history) != start:
            raise HistoryFileError(f"{path} is corrupt: a block starts at row {start} of {len(history)}")
        history.extend(columns, n)
    if end != size or previous.hex() != chain:
        raise HistoryFileError(f"{path} does not hold the history this checkpoint was saved with (it was changed)")
    return history


def append_history_file(path, history: BatchHistory, known: dict | None) -> dict:
    """Write the rows of `history` the file does not hold yet to the side file at `path`, durably; returns what a
    checkpoint records of it: {'file', 'bytes', 'chain', 'rows'}.

    `known` is what the last save (or the checkpoint this run was loaded from) recorded of this file; None when this
    learner has not written it. Whole blocks after `known['bytes']` (a future this run abandoned by resuming from an
    earlier checkpoint) are kept, since later checkpoints may read them; a partial block (a save that was killed)
    is cut off."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with history_writer_lock(path):
        return _append(path, history, known)


def _append(path: Path, history: BatchHistory, known: dict | None) -> dict:
    with open_for_write(path, "a+b") as f:
        created = os.fstat(f.fileno()).st_size == 0  # new, or made empty by a save killed before its first byte
        f.seek(0)
        if created or f.read(len(FILE_MAGIC)) != FILE_MAGIC:
            if not created:
                raise HistoryFileError(f"{path} exists and is not a cyclr history file; move it away")
            f.write(FILE_MAGIC)
            f.flush()
        end, chain, start_row = _file_end(f, known)
        start_row = min(start_row, history.n)
        payload = _payload(history, start_row)
        chain = _chain(chain, payload)
        try:
            f.truncate(end)
            f.seek(end)
            f.write(_BLOCK_HEAD.pack(BLOCK_MAGIC, len(payload), chain) + payload)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                f.truncate(end)  # no partial block left behind (the next save would cut it off anyway)
            if e.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no space left at {path.parent} to add to the batch history "
                                            f"{path.name}; the checkpoints already there are intact: free some "
                                            "space and save again") from e
            raise
        end = f.tell()
    if created:
        fsync_directory(path.parent)
    return {"file": path.name, "bytes": end, "chain": chain.hex(), "rows": history.n}


def _file_end(f, known: dict | None) -> tuple[int, bytes, int]:
    """Where the next block goes, the chain it continues, and the first row it must hold."""
    size = os.fstat(f.fileno()).st_size
    if known is not None and len(FILE_MAGIC) <= known["bytes"] <= size:
        f.seek(known["bytes"])
        rest = f.read()  # normally empty: blocks written after the checkpoint this run was loaded from
        end, chain = _last_whole_block(rest, 0, known["bytes"], known["bytes"], bytes.fromhex(known["chain"]))
        return end, chain, known["rows"]
    f.seek(0)
    end, chain = _last_whole_block(f.read(), len(FILE_MAGIC), 0, len(FILE_MAGIC), _NO_CHAIN)
    return end, chain, 0  # a file this learner does not know: one block with the whole history


def _last_whole_block(data: bytes, start: int, base: int, end: int, chain: bytes) -> tuple[int, bytes]:
    """The end offset and chain of the last whole block in `data` (`end`, `chain` if there is none)."""
    for block_end, block_chain, _ in _blocks(data, start, base):
        end, chain = block_end, block_chain
    return end, chain
