"""Going on with a fit from a checkpoint, and the Learner's `save` / `load` (mixed into `Learner`).

`fit(..., resume=path)` reads the checkpoint, checks that it marks a place inside a fit of the same planned length,
restores everything (learner/checkpoint.py) and sets the loop's counters; the loop then starts at that epoch and
passes over the batches already done. Nothing else in the loop knows about resuming.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..callbacks.optimizer_modes import evaluating
from .checkpoint import (
    CheckpointError,
    check_progress,
    load_model_state,
    read_checkpoint,
    restore,
    save_checkpoint,
    save_model_state,
)


class Checkpoints:
    def save(self, path, at: str | None = None, model_only: bool = False) -> Path:
        """Write a checkpoint of everything to `path`, atomically (learner/checkpoint.py): model, optimizer, loop
        counters and the fit's planned length, every callback's state, the loaders' shuffling state, the RNGs.

        Between fits, or from a hook inside a fit: from after_batch of a training batch, or from after_epoch, the
        checkpoint records that place, so `fit(..., resume=path)` goes on from there (`at`, 'batch_end' or
        'epoch_end', is read off the running event; passed, it must agree). Only the main process writes
        (data-parallel runs). `model_only=True` writes the model's plain `state_dict` instead, which plain PyTorch
        reads with `model.load_state_dict(torch.load(path, weights_only=True))`."""
        with evaluating(self):  # a schedule-free optimizer's evaluation weights, as its authors ask
            return save_model_state(self, path) if model_only else save_checkpoint(self, path, at)

    def load(self, path, with_opt: bool = True, model_only: bool = False):
        """Load a checkpoint written by `save`: everything it holds, or the model's weights only (`model_only`), or
        all but the optimizer (`with_opt=False`). Read with `torch.load(weights_only=True)`, so a file can never run
        code; every part is checked against this learner first, and a `CheckpointError` names the part that does not
        fit (another architecture, another optimizer, a truncated file), with the learner left unchanged.
        With `model_only`, a plain `state_dict` file (`save(path, model_only=True)`, or plain PyTorch's) loads too."""
        if model_only:
            load_model_state(self, path)
        else:
            restore(self, read_checkpoint(path), with_opt=with_opt)
        return self

    def resume_from(self, path, n_epoch: int, cbs, allow_length_change: bool) -> None:
        """Called by `fit(..., resume=path)` before its callbacks are attached: their checkpoint keys come from the
        order `add_cbs` will give them."""
        all_cbs = sorted([*self.cbs, *cbs], key=lambda cb: cb.order)
        resume(self, path, n_epoch, all_cbs, allow_length_change)


def resume(learn, path, n_epoch: int, cbs, allow_length_change: bool = False) -> None:
    """Restore `learn` from the checkpoint at `path` and set the loop to go on from its position in a fit of
    `n_epoch` epochs (called by `Learner.fit(..., resume=path)`, with `cbs` the callbacks of that fit)."""
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
    batches = len(learn.dls.train)
    if (p["n_epoch"], p["batches_per_epoch"]) != (n_epoch, batches) and not allow_length_change:
        raise ValueError(
            f"{where} was saved by a fit planned for {p['n_epoch']} epochs of {p['batches_per_epoch']} batches "
            f"({p['n_epoch'] * p['batches_per_epoch']} batches), but this fit plans {n_epoch} epochs of {batches} "
            f"batches ({n_epoch * batches}): its schedule would not continue where it stopped. Resume with "
            f"n_epoch={p['n_epoch']} and the same data, or pass allow_length_change=True to go on with the new length"
        )
    finished = p["epoch"] >= n_epoch if p["at"] == "epoch_end" else p["epoch"] >= n_epoch or p["iter"] > batches
    if finished:
        raise ValueError(
            f"{where} is at epoch {p['epoch']} (batch {p['iter']}) of its fit: nothing is left to train in a fit of "
            f"{n_epoch} epochs; to train more, pass a larger n_epoch with allow_length_change=True"
        )
    restore(learn, ckpt, cbs=cbs, warn_missing_callbacks=True)
    learn.n_epoch, learn.n_train_iters = n_epoch, n_epoch * batches
    learn.train_iter, learn.start_epoch, learn.skip_batches = p["train_iter"], p["epoch"], p["iter"]
