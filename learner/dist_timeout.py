"""How long a process waits for the others in a collective, and which rank stopped answering when one times out.

torch's default is 30 minutes: a rank stopped (SIGSTOP, a dead NFS mount, a loader that never returns) holds every
other process, and torchrun, that long. cyclr's default, 10 minutes, still leaves room for a first collective that
waits on data decoding or compilation; `Learner(dist_timeout=...)` or `$CYCLR_DIST_TIMEOUT` (seconds) changes it
for the process group cyclr creates (a script that creates its own passes `timeout` to `init_process_group`).

When a collective times out (gloo raises; NCCL's watchdog ends the process itself, so this does not apply there),
the ranks that are still alive check in under a key of the rendezvous store (the one at MASTER_ADDR:MASTER_PORT),
and those that do not check in within a grace period are named in a note on the error.
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta

import torch.distributed as dist

__all__ = ["DIST_TIMEOUT_ENV", "DEFAULT_DIST_TIMEOUT_S", "dist_timeout", "is_timeout", "note_ranks_not_answering"]

DIST_TIMEOUT_ENV = "CYCLR_DIST_TIMEOUT"
DEFAULT_DIST_TIMEOUT_S = 600.0
ROLL_CALL_GRACE_S = 30.0  # at most this long for the other live ranks to reach their own timeout and check in
_NOTE_MARK = "cyclr: "


def dist_timeout(timeout: float | timedelta | None = None) -> timedelta:
    """The process group's timeout: `timeout` (seconds, or a timedelta) when given, else $CYCLR_DIST_TIMEOUT, else
    DEFAULT_DIST_TIMEOUT_S (10 minutes)."""
    where = "timeout"
    if timeout is None:
        raw = os.environ.get(DIST_TIMEOUT_ENV)
        if raw is None:
            return timedelta(seconds=DEFAULT_DIST_TIMEOUT_S)
        where = f"${DIST_TIMEOUT_ENV}"
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"{where} must be a number of seconds > 0, got {raw!r}") from None
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{where} must be a number of seconds > 0 (or a timedelta), got {timeout!r}; e.g. 600 for "
                         "10 minutes")
    return timedelta(seconds=float(seconds))


def is_timeout(error: BaseException | None) -> bool:
    """Whether `error` is a collective that waited past the process group's timeout (gloo's wording)."""
    return isinstance(error, RuntimeError) and "timed out" in str(error).lower()


def _roll_call(rank: int, world_size: int, grace_s: float) -> list[int] | None:
    """The ranks that did not check in within `grace_s` (None when the rendezvous store cannot be reached)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=grace_s))
    prefix = f"cyclr/roll-call/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    store.set(f"{prefix}{rank}", "alive")
    deadline = time.monotonic() + grace_s
    while True:
        missing = [r for r in range(world_size) if not store.check([f"{prefix}{r}"])]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.1)


def note_ranks_not_answering(error: BaseException, rank: int, world_size: int, timeout: timedelta | None,
                             grace_s: float = ROLL_CALL_GRACE_S) -> None:
    """Add a note to a collective's timeout `error` naming the ranks that stopped answering (once per error)."""
    if any(note.startswith(_NOTE_MARK) for note in getattr(error, "__notes__", ())):
        return
    waited = "the process group's timeout" if timeout is None else f"{timeout.total_seconds():g} s"
    grace_s = min(grace_s, timeout.total_seconds()) if timeout is not None else grace_s
    try:
        missing = _roll_call(rank, world_size, grace_s)
    except Exception as e:  # the store's host is gone or stopped too
        missing, store_error = None, e
    else:
        store_error = None
    how = (f"(the timeout: ${DIST_TIMEOUT_ENV} seconds for the group cyclr creates; "
           "init_process_group(timeout=...) for one the script creates)")
    if missing:
        alive = [r for r in range(world_size) if r not in missing]
        message = (f"rank(s) {missing} of {world_size} stopped answering: rank {rank} waited {waited} for them in a "
                   f"collective {how}; ranks {alive} are alive. Look at what stopped them: a stopped or swapped-out "
                   "process, a dead network file system, a data loader that never returns")
    elif store_error is not None:
        message = (f"rank {rank} waited {waited} in a collective {how}, and the rendezvous store at "
                   f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} does not answer either "
                   f"({type(store_error).__name__}): the process hosting it (rank 0 unless torchrun started the "
                   "job) has probably stopped")
    elif missing is None:
        message = (f"rank {rank} waited {waited} in a collective {how}; which rank stopped answering is unknown "
                   "(no MASTER_ADDR and MASTER_PORT to find the rendezvous store at)")
    else:
        message = (f"rank {rank} waited {waited} in a collective {how}; every rank checked in afterwards, so one "
                   "was slow rather than stopped: raise the timeout if that is expected")
    error.add_note(_NOTE_MARK + message)
