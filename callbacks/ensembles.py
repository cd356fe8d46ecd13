"""Snapshot ensembles (Huang et al. 2017, "train 1, get M for free") and fast geometric ensembles (FGE, Garipov et
al. 2018): `SnapshotEnsemble` keeps the weights at the end of each cycle of the learning-rate schedule and averages
the snapshots' probabilities at prediction time.

The cycle ends are read from the schedule itself, before the first step: the steps after which the rate rises again
having come down into them (SGDR's restarts, a triangular schedule's minima, the joins of repeated one-cycles), and
the fit's last step when the rate comes down into it. So SGDR with `cycle_mult=2`, a cyclical schedule or several
one-cycles in a row all give one snapshot per cycle without the user counting anything.

FGE is the same callback with a short cyclical schedule after a pretrained run, e.g. a triangular rate of a few
epochs per cycle: `learn.fit(n, cbs=[CyclicLRCallback(lo, hi, step_size), SnapshotEnsemble()])`; the snapshots are
taken at the cycles' minima, as the paper collects them.

    ens = SnapshotEnsemble(keep=5)                 # the 5 most recent cycle ends; keep=None keeps all
    learn.fit_sgdr(5, 1, 1e-2, cycle_mult=1, cbs=[ens])
    probs, targets = ens.get_preds(learn)          # the mean of the snapshots' softmax
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.checks import int_at_least
from ..data.state import atomic_torch_save
from .core import ORDER, Callback
from .scheduler import ParamScheduler
from .weights import copy_state, loaded_weights

__all__ = ["SnapshotEnsemble", "cycle_ends", "lr_per_step"]


def cycle_ends(lrs: list[float]) -> list[int]:
    """The steps (0-based) after which a cycle of the learning rates `lrs` (one per optimizer step) ends: where the
    rate rises at the next step after coming down into this one (flat stretches in between allowed), and the last
    step when the rate came down into it."""
    ends, direction = [], 0  # direction: of the last change of the rate, -1 down, +1 up, 0 none yet
    for t in range(len(lrs) - 1):
        if lrs[t + 1] > lrs[t]:
            if direction < 0:
                ends.append(t)
            direction = 1
        elif lrs[t + 1] < lrs[t]:
            direction = -1
    if lrs and direction < 0:
        ends.append(len(lrs) - 1)
    return ends


def _lr_scheduler(learn):
    """The attached scheduler of the learning rate (a ParamScheduler or one of its recipes)."""
    found = [cb for cb in learn.cbs if isinstance(cb, ParamScheduler) and "lr" in cb.fit_scheds]
    if not found:
        raise ValueError("SnapshotEnsemble takes a snapshot at the end of each cycle of the learning-rate schedule, "
                         "but this fit has no lr schedule: use fit_sgdr, fit_one_cycle, or a ParamScheduler / "
                         "CyclicLRCallback with cycles")
    if len(found) > 1:
        raise ValueError(f"this fit has {len(found)} lr schedulers ({', '.join(cb.name for cb in found)}): "
                         "SnapshotEnsemble reads the cycles of one")
    return found[0]


def lr_per_step(learn) -> list[float]:
    """The learning rate (of the last parameter group, as the Recorder records it) at every optimizer step of the
    fit being started, read from its scheduler (tails included) at the positions its unit gives each step."""
    sched = _lr_scheduler(learn)
    lr = sched.fit_scheds["lr"]
    lr = lr[-1] if isinstance(lr, list) else lr
    n, steps_per_epoch = learn.n_train_iters, max(1, learn.n_train_iters // learn.n_epoch)
    positions = {"pct": lambda t: t / n, "batch": lambda t: t, "epoch": lambda t: t // steps_per_epoch}[sched.unit]
    return [float(lr(positions(t))) for t in range(n)]


class SnapshotEnsemble(Callback):
    """Keeps the model's weights at the end of each cycle of the learning-rate schedule (see the module docstring):
    the `keep` most recent (None: all), in memory (on the CPU) or, with `path`, as files in that folder
    (`snapshot-<steps>.pt`, written atomically; a checkpoint then names the files instead of holding the weights).
    `taken` lists the optimizer steps done at each kept snapshot.

    `get_preds(learn, dl)` and `predict(learn, item)` average the snapshots' probabilities (`act`, softmax by
    default); the learner's own weights are put back exactly afterwards. Files of snapshots no longer kept are
    removed when the fit ends (not before: a checkpoint taken mid-fit may still name them).
    """

    order = ORDER.snapshot_ensemble  # before the checkpoints, which then hold the new snapshot
    sits_out_lr_find = True  # no swept weight is ever kept as a snapshot

    def __init__(self, keep: int | None = None, path: str | os.PathLike | None = None):
        self.keep = None if keep is None else int_at_least("keep", keep, 1)
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a folder (str or os.PathLike) or None (memory), got {type(path).__name__}")
        self.path = None if path is None else Path(path)
        self.taken: list[int] = []
        self.snapshots: list[dict] = []  # in memory: one CPU state dict per kept snapshot
        self.files: list[str] = []  # on disk: one file per kept snapshot
        self.written: list[str] = []  # the files this fit wrote (removed at its end unless kept)
        self.ends: set[int] = set()

    def __repr__(self) -> str:
        return f"SnapshotEnsemble(keep={self.keep}, path={None if self.path is None else str(self.path)!r})"

    def fit_config(self) -> dict:
        return {"keep": self.keep, "path": None if self.path is None else str(self.path)}

    def before_fit(self, learn):
        ends = cycle_ends(lr_per_step(learn))
        if not ends:
            raise ValueError("SnapshotEnsemble: the lr schedule of this fit never comes down to a cycle end, so no "
                             "snapshot would be taken; use a schedule with cycles (SGDR, cyclical, one-cycle)")
        self.ends = set(ends)
        if learn.resuming:
            missing = [f for f in self.files if not Path(f).exists()]
            if missing:
                raise FileNotFoundError(f"the checkpoint names snapshot files that are gone: {missing}; resume "
                                        "with them in place, or start the fit again")
            return
        self.taken, self.snapshots, self.files, self.written = [], [], [], []
        if self.path is not None and learn.is_main_process:
            self.path.mkdir(parents=True, exist_ok=True)

    def after_step(self, learn):
        if learn.train_iter in self.ends:
            self._take(learn, learn.train_iter + 1)

    def _take(self, learn, steps: int) -> None:
        self.taken.append(steps)
        state = copy_state(learn.model)
        if learn.is_distributed:
            # Mid-epoch each process's batch-norm statistics are its own shard's: the snapshot takes their mean over
            # the processes, so that it is the same everywhere (the model's own are left alone).
            for name, buffer in learn.model.named_buffers():
                if buffer.is_floating_point():
                    state[name] = learn.all_reduce_mean(buffer).cpu()
        if self.path is None:
            self.snapshots.append(state)
        else:
            file = str(self.path / f"snapshot-{steps:08d}.pt")
            if learn.is_main_process:
                atomic_torch_save(state, file)
            learn.barrier()  # data-parallel: the file exists for every process before anyone reads it
            self.files.append(file)
            self.written.append(file)
        if self.keep is not None and len(self.taken) > self.keep:
            self.taken.pop(0)
            (self.snapshots if self.path is None else self.files).pop(0)

    def after_fit(self, learn):
        if learn.is_main_process:
            for file in self.written:
                if file not in self.files and os.path.exists(file):
                    os.unlink(file)
        self.written = list(self.files)

    # ----- the ensemble ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.taken)

    def snapshot(self, k: int) -> dict:
        """The state dict of kept snapshot number `k` (0: the oldest kept)."""
        if self.path is None:
            return self.snapshots[k]
        return torch.load(self.files[k], map_location="cpu", weights_only=True)

    def _check_taken(self) -> None:
        if not self.taken:
            raise ValueError("the ensemble has no snapshot yet: fit with SnapshotEnsemble attached and a schedule "
                             "with cycles first (a snapshot is taken at the end of each cycle)")

    def get_preds(self, learn, dl=None, act=None, with_targets: bool | None = None):
        """`(probabilities, targets)` over `dl` (default: the validation loader): the mean over the snapshots of
        `act(outputs)` (default softmax over the last dimension), each snapshot run with the learner's `get_preds`
        (`with_targets` as there). The learner's weights are its own again afterwards."""
        self._check_taken()
        act = act if act is not None else (lambda out: out.softmax(-1))
        total, targets = None, None
        for k in range(len(self.taken)):
            with loaded_weights(learn.model, self.snapshot(k)):
                probs, targets = learn.get_preds(dl, act=act, with_targets=with_targets)
            total = probs.double() if total is None else total + probs.double()
        return (total / len(self.taken)).to(probs.dtype), targets

    def predict(self, learn, item, act=None):
        """The mean over the snapshots of `act(learn.predict(item))` (default softmax): one item or a batch."""
        self._check_taken()
        act = act if act is not None else (lambda out: out.softmax(-1))
        outs = []
        for k in range(len(self.taken)):
            with loaded_weights(learn.model, self.snapshot(k)):
                outs.append(act(torch.as_tensor(learn.predict(item))).double())
        return torch.stack(outs).mean(0).float()

    # ----- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The steps of the kept snapshots and either their weights (memory) or their files' paths (disk)."""
        return {"taken": list(self.taken), "snapshots": [dict(s) for s in self.snapshots],
                "files": list(self.files), "written": list(self.written)}

    def load_state_dict(self, state: dict) -> None:
        self.taken = [int(t) for t in state["taken"]]
        self.snapshots = [dict(s) for s in state["snapshots"]]
        self.files, self.written = [str(f) for f in state["files"]], [str(f) for f in state["written"]]
        if len(self.taken) != len(self.snapshots) + len(self.files):
            raise ValueError(f"SnapshotEnsemble state lists {len(self.taken)} snapshots but holds "
                             f"{len(self.snapshots)} in memory and {len(self.files)} files")
