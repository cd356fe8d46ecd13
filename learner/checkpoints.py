"""Going on with a fit from a checkpoint, and the Learner's `save` / `load` (mixed into `Learner`).

`fit(..., resume=path)` reads the checkpoint, checks that it marks a place inside a fit of the same planned length
started with the same settings (hyperparameters, schedulers, batch sizes, data size: learner/fit_config.py),
restores everything (learner/checkpoint_files.py) and sets the loop's counters; the loop then starts at that epoch and
passes over the batches already done. Nothing else in the loop knows about resuming. A stream (a training loader
without a len(), or over an IterableDataset) cannot draw again the batches it drew: it resumes from an epoch-end
checkpoint only (the next epoch draws from the stream anew); a mid-epoch one is refused before anything changes.

`fit(..., resume='auto')` resumes from the newest checkpoint that the fit's checkpoint callbacks could have written
(SaveModelCallback, PreemptionCheckpoint: their `resume_paths()`), or starts fresh when there is none: a job
requeued after a preemption runs the same script unchanged. The newest one must pass the same checks as an explicit
path (the same length and settings): a checkpoint of another run at those paths is refused, never trained over.

The run's writer lock is taken when the checkpoint is checked and held until the fit ends (`release_run_locks`), so
no other process can start writing the run in between.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..callbacks.optimizer_modes import evaluating
from ..data.checks import user_stacklevel
from ..data.core import describe_loader, is_stream
from .checkpoint_checks import check_progress
from .checkpoint_files import (
    load_model_state,
    planned_epoch_length,
    read_checkpoint,
    restore,
    save_checkpoint,
    save_model_state,
)
from .checkpoint_format import CheckpointError
from .fit_config import allowed_changes, config_changes, describe_fit


class Checkpoints:
    """`save`, `load` and a fit's resume. Restoring writes the Learner's model, opt, the loop's counters (through
    `set_counters`), train_n_inp, the callbacks' and loaders' states and the RNGs; a resume holds the run's writer
    locks in run_locks until the fit ends; checkpoints record fit_config, what the fit started with (all declared
    in `Learner.__init__`)."""

    def save(self, path, at: str | None = None, model_only: bool = False, inline_history: bool | None = None) -> Path:
        """Write a checkpoint of everything to `path`, atomically (learner/checkpoint_files.py): model, optimizer, loop
        counters and the fit's planned length, every callback's state, the loaders' shuffling state, the RNGs.

        Between fits, or from a hook inside a fit: from after_batch of a training batch, or from after_epoch, the
        checkpoint records that place, so `fit(..., resume=path)` goes on from there (`at`, 'batch_end' or
        'epoch_end', is read off the running event; passed, it must agree). Only the main process writes
        (data-parallel runs). `model_only=True` writes the model's plain `state_dict` instead, which plain PyTorch
        reads with `model.load_state_dict(torch.load(path, weights_only=True))`.

        The Recorder's batch history: between fits it goes in the file, which then stands alone; during a fit it is
        appended to the run's side file beside it, `cyclr-history-<run>.bin`, which the checkpoint names and checks,
        so a checkpoint's size and save time do not grow with the run. Copy that file along with the checkpoint, or
        pass `inline_history=True`."""
        self._join_launched_group()  # under torchrun, only the main process writes: it must know it is the main one
        with evaluating(self):  # a schedule-free optimizer's evaluation weights, as its authors ask
            if model_only:
                return save_model_state(self, path)
            return save_checkpoint(self, path, at, inline_history=inline_history)

    def load(self, path, with_opt: bool = True, model_only: bool = False, with_history: bool = True):
        """Load a checkpoint written by `save`: everything it holds, or the model's weights only (`model_only`), or
        all but the optimizer (`with_opt=False`). Read with `torch.load(weights_only=True)`, so a file can never run
        code; every part is checked against this learner first, and a `CheckpointError` names the part that does not
        fit (another architecture, another optimizer, a truncated file), with the learner left unchanged.
        With `model_only`, a plain `state_dict` file (`save(path, model_only=True)`, or plain PyTorch's) loads too.
        `with_history=False` leaves out a batch history kept in a side file (when that file is lost)."""
        if model_only:
            load_model_state(self, path)
        else:
            restore(self, read_checkpoint(path, with_history=with_history), with_opt=with_opt)
        return self

    def _resume_from(self, path, n_epoch: int, cbs, allow_length_change: bool, allow_config_change=False,
                    lr: float | None = None, wd: float | None = None) -> None:
        """Called by `fit(..., resume=path)` before its callbacks are attached: their checkpoint keys come from the
        order `add_cbs` will give them."""
        all_cbs = sorted([*self.cbs, *cbs], key=lambda cb: cb.order)
        resume(self, path, n_epoch, all_cbs, allow_length_change, allow_config_change, lr, wd)

    def auto_resume_path(self, cbs) -> str | None:
        """For `fit(..., resume='auto')`: the newest checkpoint written during a fit among the files the fit's
        callbacks (attached and `cbs`) name in `resume_paths()`; None when there is none (the fit starts fresh)."""
        return newest_checkpoint(p for cb in [*self.cbs, *cbs] for p in cb.resume_paths())

    def release_run_locks(self) -> None:
        """Release the writer locks a resume took (called when the fit ends)."""
        locks, self.run_locks = self.run_locks, ()
        for lock in locks:
            lock.release()


def newest_checkpoint(paths) -> str | None:
    """The path among `paths` whose checkpoint, taken during a fit, is furthest on (optimizer steps, then position);
    files that do not read as checkpoints are passed over with a warning, as are those saved between fits."""
    found = []
    for path in dict.fromkeys(os.fspath(p) for p in paths):
        if not os.path.isfile(path):
            continue
        try:
            p = read_checkpoint(path, with_history=False)["progress"]
            check_progress(p)
        except CheckpointError as e:
            warnings.warn(f"resume='auto' passes over {path}: {e}", RuntimeWarning, stacklevel=user_stacklevel())
            continue
        if p["at"] != "outside_fit":
            found.append(((p["train_iter"], p["epoch"], p["iter"]), path))
    return max(found)[1] if found else None


def resume(learn, path, n_epoch: int, cbs, allow_length_change: bool = False, allow_config_change=False,
           lr: float | None = None, wd: float | None = None) -> None:
    """Restore `learn` from the checkpoint at `path` and set the loop to go on from its position in a fit of
    `n_epoch` epochs (called by `Learner.fit(..., resume=path)`, with `cbs` the callbacks of that fit and `lr`,
    `wd` its arguments). The fit must plan the same length (unless `allow_length_change`) and start with the same
    settings as the checkpoint's fit (learner/fit_config.py), unless `allow_config_change` allows them to differ:
    then this fit's settings apply from the checkpoint's position on."""
    allow = allowed_changes(allow_config_change)
    ckpt = read_checkpoint(path)
    check_progress(ckpt["progress"])
    p = ckpt["progress"]
    where = os.fspath(path)
    if p["at"] == "outside_fit":
        raise CheckpointError(
            f"{where} was saved between fits, so it marks no place in one to resume from; load it with "
            "learn.load(path), or resume from a checkpoint written during the fit "
            "(SaveModelCallback(every_epoch=True), or every_n_batches=... for mid-epoch)"
        )
    if p["at"] == "batch_end" and is_stream(learn.dls.train):
        raise CheckpointError(
            f"{where} was taken mid-epoch (epoch {p['epoch']}, after batch {p['iter']}), but the training loader is a "
            f"stream ({describe_loader(learn.dls.train)}): a stream cannot be replayed to the checkpoint's batch, so "
            "the resumed epoch would train on other batches than the interrupted one. Resume from an epoch-end "
            "checkpoint (SaveModelCallback(every_epoch=True), without every_n_batches), or give a loader with a "
            "len() and a restorable order (InMemoryLoader, TorchLoader over a map-style dataset)"
        )
    batches = planned_epoch_length(learn)
    if (p["n_epoch"], p["batches_per_epoch"]) != (n_epoch, batches) and not allow_length_change:
        raise ValueError(
            f"{where} was saved by a fit planned for {p['n_epoch']} epochs of {p['batches_per_epoch']} batches "
            f"({p['n_epoch'] * p['batches_per_epoch']} batches), but this fit plans {n_epoch} epochs of {batches} "
            f"batches ({n_epoch * batches}): its schedule would not continue where it stopped. Resume with "
            f"n_epoch={p['n_epoch']} and the same data, or pass allow_length_change=True to go on with the new length"
        )
    changes = _checked_config_changes(where, p, describe_fit(learn, lr, wd, cbs), allow)
    if learn.is_main_process:  # the only one that writes (data-parallel ranks take the lock of rank 0's run)
        learn.run_locks = _hold_run_locks(ckpt, cbs)
    try:
        _go_on_from(learn, ckpt, where, n_epoch, cbs, changes, lr, wd)
    except BaseException:
        learn.release_run_locks()
        raise


def _go_on_from(learn, ckpt: dict, where: str, n_epoch: int, cbs, changes: list, lr, wd) -> None:
    p, batches = ckpt["progress"], planned_epoch_length(learn)
    finished = p["epoch"] >= n_epoch if p["at"] == "epoch_end" else p["epoch"] >= n_epoch or p["iter"] > batches
    if finished:
        raise ValueError(
            f"{where} is at epoch {p['epoch']} (batch {p['iter']}) of its fit: nothing is left to train in a fit of "
            f"{n_epoch} epochs; to train more, pass a larger n_epoch with allow_length_change=True"
        )
    # A callback whose configuration is allowed to change keeps this fit's: its saved state (for the schedulers,
    # their schedules) is not loaded.
    changed_cbs = {c.callback for c in changes if c.callback is not None}
    ckpt = {**ckpt, "callbacks": {k: v for k, v in ckpt["callbacks"].items() if k not in changed_cbs}}
    restore(learn, ckpt, cbs=cbs, warn_missing_callbacks=True)
    _apply_new_rates(learn, changes, lr, wd)
    learn.set_counters(n_epoch=n_epoch, n_train_iters=n_epoch * batches, train_iter=p["train_iter"],
                       start_epoch=p["epoch"], skip_batches=p["iter"])


def _hold_run_locks(ckpt: dict, cbs) -> tuple:
    """Take the locks of the run's files now, before anything changes and before any callback's before_fit (a CSV
    log truncated, a tracker's run started): a resume whose run another process is writing is refused with a
    WriterConflictError naming that process. Held until the fit ends, so none can start writing it in between (the
    callbacks take them again in before_fit: the lock is reentrant)."""
    run_id = ckpt["callbacks"].get("Recorder_0", {}).get("run_id")
    held = []
    try:
        for cb in cbs if run_id is not None else ():
            lock = cb.run_files_lock(str(run_id))
            if lock is not None:
                lock.acquire()
                held.append(lock)
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return tuple(held)


def _checked_config_changes(where: str, progress: dict, now: dict, allow) -> list:
    """The differences between the settings the checkpoint's fit started with and this fit's, all of them allowed;
    else a ValueError naming each one refused and the argument that allows them."""
    saved = progress.get("config")
    if saved is None:
        warnings.warn(
            f"{where} does not record the settings its fit started with (written by an older cyclr): only the "
            "fit's length was compared; resume with the same hyperparameters, callbacks and data",
            stacklevel=user_stacklevel(),
        )
        return []
    changes = config_changes(saved, now)
    refused = [c for c in changes if not c.allowed_by(allow)]
    if refused:
        raise ValueError(
            f"{where} was saved by a fit started with other settings than this one: "
            f"{'; '.join(map(str, refused))}. Going on would mix the two runs' settings. Resume with the "
            f"checkpoint's settings, or pass allow_config_change={[c.name for c in changes]!r} (or True, to allow "
            "every change) to go on with this fit's settings from the checkpoint's position"
        )
    return changes


def _apply_new_rates(learn, changes: list, lr: float | None, wd: float | None) -> None:
    """A changed lr or wd taken from the Learner (the fit's argument None; a given one `fit` sets itself): set it
    over the optimizer state the checkpoint restored, as a fit starting now would."""
    changed = {c.name for c in changes}
    if "lr" in changed and lr is None:
        learn.reset_lrs()
    if "wd" in changed and wd is None and learn.wd is not None:
        learn.set_hyper("wd", learn.wd)
