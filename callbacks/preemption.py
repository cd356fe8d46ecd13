"""Preemption: a scheduler's or a spot instance's SIGTERM (SLURM's warning signal SIGUSR1) ends the fit cleanly.

The signal handler only notes the signal (nothing else is safe inside a handler). The fit goes on to the next
point where a checkpoint is valid: the end of the current training batch that took an optimizer step, or the end of
the epoch when the signal came during validation or when the training loader is a stream (no len(), or an
IterableDataset underneath: it cannot be replayed to a batch, so a resume refuses a mid-epoch checkpoint of it; the
log says once that the checkpoint waits). There the run is saved where the user asked for checkpoints
(`PreemptionCheckpoint(path)`, else every SaveModelCallback's `preemption_path`), and `Preempted` is raised: the fit's
cleanup runs with it in flight (trackers end their runs as KILLED, logs keep the steps taken), then the process exits
with status `PREEMPTED_EXIT_CODE`. A requeued job running the same script with `fit(..., resume='auto')` goes on from
the newest checkpoint of that run, exactly.

- Handlers are installed from the main thread only (Python allows no other), for the fit's duration; the handlers
  that were there before are put back when it ends. A second arrival of the same signal before the fit stops gives
  it back to the previous handler at once (a second SIGTERM then kills as it always did).
- During an LR-finder sweep the weights are the sweep's, never worth saving: the signal waits for the next fit's
  first valid point.
- Data-parallel runs: every rank stops at the same batch. They agree through one all-reduce of the flag per step,
  only when there are several processes.
- `Preempted` is a `SystemExit`: a script exits with its code; IPython and Jupyter report it and keep the kernel.
- In a SLURM job (SLURM_JOB_ID set, `scontrol` on the PATH) the main process also requeues the job once the
  checkpoint is written (`scontrol requeue`, as Lightning does); `requeue=False` leaves that to the job script,
  which can requeue on exit status 75.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading

import torch
import torch.distributed as dist

from ..data.core import describe_loader, is_stream
from ..data.state import check_file_path
from .core import ORDER, Callback
from .lr_finder import LRFinderCallback

__all__ = ["PREEMPTED_EXIT_CODE", "PREEMPTION_SIGNALS", "Preempted", "PreemptionCheckpoint"]

# sysexits.h's EX_TEMPFAIL, "a temporary failure; the user is invited to retry": a job script can requeue on it.
PREEMPTED_EXIT_CODE = 75
"""The exit status of a preempted fit (75, sysexits' EX_TEMPFAIL): the run is saved; requeue the same command."""
# SIGTERM: what SLURM, Kubernetes and spot instances send before SIGKILL; SIGUSR1: SLURM's `--signal` warning.
PREEMPTION_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

logger = logging.getLogger("cyclr")


class Preempted(SystemExit):
    """Raised by the fit after a preemption signal, once it has saved the run (`checkpoints`, maybe empty) and stopped
    at a valid point. A `SystemExit` with code `PREEMPTED_EXIT_CODE`: the fit's cleanup runs first."""

    def __init__(self, signum: int, checkpoints: list[str], train_iter: int, requeued: str = ""):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.signum, self.checkpoints, self.train_iter = signum, checkpoints, train_iter
        where = f"saved to {', '.join(checkpoints)}" if checkpoints else (
            "no checkpoint written: pass SaveModelCallback(every_epoch=True) or PreemptionCheckpoint(path)")
        self.message = (f"preempted by {signal.Signals(signum).name} after {train_iter} optimizer steps; {where}. "
                        f"{requeued}Run the same script with fit(..., resume='auto') to go on (exit status "
                        f"{PREEMPTED_EXIT_CODE})")

    def __str__(self) -> str:
        return self.message


class SignalFlag:
    """Notes the first of `signals` to arrive; installed and restored by the fit's main thread only."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self, signals) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal raises elsewhere; a fit in a thread leaves signals to the main thread's owner
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._note)

    def restore(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _note(self, signum, frame) -> None:
        if self.received == signum:  # asked twice: the previous handler decides now
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum


class PreemptionCheckpoint(Callback):
    """Stops a fit cleanly on `signals` (default SIGTERM and SIGUSR1) and saves it first: to `path` when given (a
    checkpoint just for this, e.g. on a fast local disk), else where each SaveModelCallback of the fit saves (its
    `preemption_path`). Every Learner has one (path None); pass your own, in the Learner's or the fit's callbacks, to
    give a path or other signals (`signals=()` turns preemption handling off): the last one attached decides.
    `requeue=True`: in a SLURM job, requeue it once the checkpoint is written (module docstring)."""

    # Runs last at after_batch / after_epoch: the step's and the epoch's state are complete (trackers have logged,
    # SaveModelCallback has decided on its best) when it saves and stops. Shares its slot with pruning, which also
    # decides on the epoch the trackers and checkpoints wrote.
    order = ORDER.pruning
    # False deliberately, although it saves checkpoints: the LR finder detaches the callbacks that write files during
    # its sweep, and this one must stay attached then, to hold a signal back until after the sweep.
    writes_files = False

    def __init__(self, path: str | os.PathLike | None = None, signals=PREEMPTION_SIGNALS, requeue: bool = True):
        if path is not None:
            check_file_path(path, "preempted.pt")
        if not isinstance(requeue, bool):
            raise TypeError(f"requeue must be True or False, got {requeue!r}")
        self.requeue = requeue
        self.path = None if path is None else os.fspath(path)
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.flag = SignalFlag()
        # Set in before_fit: this one decides for the fit; the ranks must agree (data-parallel); an LR-finder sweep;
        # the training loader is a stream (the checkpoint waits for the epoch's end), not yet said in the log.
        self._active = self._collective = self._sweeping = self._stream = self._waiting_said = False

    def preemption_path(self, learn) -> str | None:
        return self.path

    def resume_paths(self) -> list[str]:
        return [] if self.path is None else [self.path]

    def before_fit(self, learn):
        ours = [cb for cb in learn.cbs if isinstance(cb, PreemptionCheckpoint)]
        self._active = ours[-1] is self and bool(self.signals)
        if self._active:  # a signal held back by another (the default one, during an LR-finder sweep) is ours now
            for cb in ours[:-1]:
                self.flag.received, cb.flag.received = self.flag.received or cb.flag.received, None
        if self._active and not self.flag.installed:
            self.flag.install(self.signals)
        self._collective = getattr(learn, "world_size", 1) > 1 and dist.is_initialized()
        self._sweeping = any(isinstance(cb, LRFinderCallback) for cb in learn.cbs)
        self._stream, self._waiting_said = is_stream(learn.dls.train), False

    def after_batch(self, learn):
        # A checkpoint is valid after a training batch that stepped (never between accumulation micro-batches).
        # The hot path: a single process with no signal reads three attributes.
        if self._active and learn.training and learn.stepped and (self.flag.received or self._collective):
            if self._stream:  # after_epoch stops it (the ranks agree there)
                self._say_waiting(learn)
            else:
                self._stop_if_asked(learn)

    def after_epoch(self, learn):
        # After the last epoch only after_fit is left: the fit ends as it would have (a checkpoint here would mark a
        # finished fit, which resume='auto' refuses); a signal still held stops the script's next fit.
        if self._active and learn.epoch < learn.n_epoch - 1:
            self._stop_if_asked(learn)

    def cleanup_fit(self, learn):
        self.flag.restore()
        self._active = self._collective = self._sweeping = self._stream = False

    def _say_waiting(self, learn) -> None:
        if self.flag.received is None or self._waiting_said or self._sweeping:
            return
        self._waiting_said = True
        logger.warning(
            "%s received at epoch %d, batch %d of a stream (%s): on a stream the checkpoint waits for the epoch's "
            "end: a stream cannot be replayed to a batch, so a resume would refuse a checkpoint taken now",
            signal.Signals(self.flag.received).name, learn.epoch, learn.iter, describe_loader(learn.dls.train))

    def _stop_if_asked(self, learn) -> None:
        if self._sweeping or not self._agreed(learn):
            return
        signum, self.flag.received = self.flag.received, None
        paths = self._save(learn)
        steps = learn.train_iter + int(learn.event == "after_batch" and learn.stepped)
        requeued = slurm_requeue() if self.requeue and getattr(learn, "is_main_process", True) else ""
        preempted = Preempted(signum or signal.SIGTERM, paths, steps, requeued)
        print(preempted.message, file=sys.stderr)  # the job's log says why it stopped: SystemExit(75) prints nothing
        raise preempted

    def _agreed(self, learn) -> bool:
        """Whether this rank, or under data-parallel training any rank, has received a signal."""
        asked = self.flag.received is not None
        if not self._collective:
            return asked
        flag = torch.tensor([int(asked)], device=learn.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # one collective per step, only when distributed
        if flag.item() and not asked:
            self.flag.received = signal.SIGTERM  # another rank was signalled
        return bool(flag.item())

    def _save(self, learn) -> list[str]:
        targets = [self] if self.path is not None else learn.cbs
        paths = [p for p in (cb.preemption_path(learn) for cb in targets) if p is not None]
        paths = list(dict.fromkeys(paths))
        for path in paths:
            learn.save(path)  # only the main process writes
        if getattr(learn, "world_size", 1) > 1:
            learn.barrier()  # no rank exits (torchrun would then stop the others) before the checkpoint is written
        return paths


def slurm_requeue() -> str:
    """Requeue this SLURM job (`scontrol requeue`) when running in one; what happened, as a sentence ('' outside
    SLURM). An array task is requeued by its own id."""
    job = os.environ.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol")
    if job is None or scontrol is None:
        return ""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array_job}_{task}" if array_job and task else job
    try:
        done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"SLURM job {job} NOT requeued ({e}). "
    if done.returncode != 0:
        return f"SLURM job {job} NOT requeued (scontrol: {done.stderr.strip() or done.returncode}). "
    return f"SLURM job {job} requeued. "
