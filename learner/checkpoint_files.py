"""Checkpoints: everything a fit needs to go on exactly where it stopped, written atomically, read without running
code.

A checkpoint is a dict of tensors and plain values, so `torch.load(..., weights_only=True)` reads it:

    format, version   'cyclr-checkpoint', 3
    checksum          SHA-256 over every other part, checked when read
    model             model.state_dict()
    optimizer         {'type': 'SGD', 'state': opt.state_dict()}, or None before the optimizer exists
    progress          where it was taken ('at'), the position to go on from (epoch, iter, train_iter), the
                      fit's planned length (n_epoch, batches_per_epoch, n_train_iters), `train_n_inp` (how many
                      leading parts of a tuple batch the training batches gave as inputs: inference splits with it)
                      and, during a fit, `config`: what the fit was started with (learner/fit_config.py), compared
                      when it is resumed
    callbacks         {'<ClassName>_<i>': cb.state_dict()} for every attached callback (i counts that class); during
                      a fit the Recorder's batch history is in a side file this part names (callbacks/history.py)
    data              dls.state_dict(): the loaders' shuffling generators
    rng               torch CPU (and CUDA), python `random` and numpy generator states

`progress['at']` is one of
- 'epoch_end' (taken in after_epoch): the fit goes on with epoch `epoch` (the next one), from its first batch;
- 'batch_end' (taken in a training batch's after_batch): the fit goes on in epoch `epoch` after its first `iter`
  batches. `data` then holds the loaders as they were when that epoch started, so the epoch's shuffle is drawn
  again identically and the batches already done are passed over;
- 'outside_fit' (taken between fits): loadable, not resumable.

Loading checks every part against the learner before changing anything (`CheckpointError` says which part does
not fit), then applies them all.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..callbacks.core import Callback
from ..callbacks.history import BatchHistory, HistoryFileError, read_history_file
from ..data.checks import user_stacklevel
from ..data.core import loader_length
from ..data.state import atomic_torch_save, check_file_path, digest, plain, rng_state, set_rng_state
from .checkpoint_checks import (
    check_callbacks,
    check_data,
    check_model,
    check_optimizer,
    check_progress,
    check_rng,
)
from .checkpoint_format import FORMAT, PARTS, POSITIONS, READABLE_VERSIONS, VERSION, CheckpointError

# Pickle's own opcodes: one that torch's weights-only reader refuses builds objects; any other byte is damage.
_OPCODES = {op.code for op in pickletools.opcodes}


# ----- writing -------------------------------------------------------------------------------------------------------
def save_checkpoint(learn, path, at: str | None = None, inline_history: bool | None = None) -> Path:
    """Write `learn`'s full state to `path` (see the module docstring); returns the path.

    `inline_history`: whether the Recorder's batch history goes in the file itself (default: between fits, so the
    file stands alone) or in the run's side file beside it (default during a fit, so that a checkpoint's size and
    save time do not grow with the run: callbacks/history.py)."""
    check_file_path(path)  # before the state is gathered
    at = _position(learn, at)
    if inline_history is None:
        inline_history = at == "outside_fit"
    if not getattr(learn, "is_main_process", True):
        return Path(path)  # data-parallel: every process holds the same state; the main one writes it

    callbacks = {}
    for key, cb in callback_keys(learn.cbs).items():
        state = cb.state_dict() if inline_history else cb.checkpoint_state(path)
        callbacks[key] = plain(state, f"{key}.state_dict()", _LOADS_WITHOUT_CODE, keep=_TENSORS)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model": _unwrapped(learn.model).state_dict(),
        "optimizer": None if learn.opt is None else {"type": type(learn.opt).__name__, "state": learn.opt.state_dict()},
        "progress": _progress(learn, at),
        "callbacks": callbacks,
        # At a batch's end the loaders have already drawn this epoch's shuffle: keep them as they were before it.
        "data": _data_state(learn.dls, mid_epoch=at == "batch_end"),
        "rng": rng_state(),
    }
    ckpt["checksum"] = checksum(ckpt)
    return atomic_torch_save(ckpt, path)


def checksum(ckpt: dict) -> str:
    """SHA-256 over every part but `checksum` itself."""
    return digest({k: v for k, v in ckpt.items() if k != "checksum"})


def _position(learn, at: str | None) -> str:
    """Where in the loop this checkpoint is taken, read off the event the learner is running: 'batch_end' from a
    training batch's after_batch, 'epoch_end' from after_epoch, 'outside_fit' between fits. `at`, when given, must
    agree."""
    if at is not None and at not in POSITIONS:
        raise ValueError(f"at must be one of {POSITIONS}, got {at!r}")
    if not learn.in_fit:
        if at not in (None, "outside_fit"):
            raise ValueError(f"at={at!r} marks a place in a running fit; between fits call learn.save(path)")
        return "outside_fit"
    here = {"after_epoch": "epoch_end", "after_batch": "batch_end" if learn.training else None}.get(learn.event)
    if here is None:
        raise ValueError(
            f"learn.save was called from {learn.event} "
            f"{'of a validation batch ' if learn.event == 'after_batch' else ''}inside a fit: a checkpoint taken there "
            "could not be resumed; save from after_batch of a training batch or from after_epoch "
            "(SaveModelCallback does this for you)"
        )
    if at is not None and at != here:
        raise ValueError(f"at={at!r} does not match where the fit is: {learn.event} is {here!r}; leave at out")
    return here


def _unwrapped(model):
    # During a data-parallel training phase learn.model is the DistributedDataParallel wrapper.
    return model.module if isinstance(model, DistributedDataParallel) else model


def planned_epoch_length(learn) -> int:
    """The training batches an epoch of the fit plans: the loader's len(), or for a stream the fit's
    steps_per_epoch (0: a stream fitted without one, whose epochs run to its end)."""
    length = loader_length(learn.dls.train)
    return learn.steps_per_epoch if length is None else length


def _progress(learn, at: str) -> dict:
    planned = {"n_epoch": learn.n_epoch, "batches_per_epoch": planned_epoch_length(learn),
               "n_train_iters": learn.n_train_iters}
    if at == "batch_end":
        # Called from after_batch: the loop counts this batch's step (learn.stepped) only after that event.
        position = {"epoch": learn.epoch, "iter": learn.iter + 1, "train_iter": learn.train_iter + int(learn.stepped)}
    elif at == "epoch_end":
        position = {"epoch": learn.epoch + 1, "iter": 0, "train_iter": learn.train_iter}
    else:
        position = {"epoch": learn.epoch, "iter": 0, "train_iter": learn.train_iter}
    progress = {"at": at, **position, **planned, "train_n_inp": learn.train_n_inp}
    config = learn.fit_config
    if at != "outside_fit" and config is not None:
        progress["config"] = config  # what the running fit started with, which a resume compares with its own
    return progress


def _data_state(dls, mid_epoch: bool) -> dict:
    if not hasattr(dls, "state_dict"):
        return {}
    return dls.state_dict(mid_epoch=True) if mid_epoch else dls.state_dict()


# A callback's state is refused at save time when `torch.load(weights_only=True)` would refuse it at load time.
_TENSORS = (torch.Tensor, torch.Size, torch.dtype)
_LOADS_WITHOUT_CODE = ("; a checkpoint holds only those and tensors, so that it loads without running code: convert it "
                       "(e.g. torch.as_tensor(x) or x.tolist())")


def callback_keys(cbs) -> dict[str, Callback]:
    """'<ClassName>_<i>' for each callback, i counting the callbacks of that class in `cbs` order."""
    counts: dict[str, int] = {}
    keyed = {}
    for cb in cbs:
        name = type(cb).__name__
        keyed[f"{name}_{counts.get(name, 0)}"] = cb
        counts[name] = counts.get(name, 0) + 1
    return keyed


# ----- reading -------------------------------------------------------------------------------------------------------
def _load_file(path):
    """torch.load(path, weights_only=True), its failures as CheckpointErrors that say what the file is."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {os.fspath(path)!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words every unpickling failure under weights_only alike; only an unsupported global is an object
        # the file would build (possibly code it would run), anything else is damage.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        operand = re.search(r"Unsupported operand (\d+)", str(e))
        real_opcode = operand is not None and int(operand.group(1)) < 256 and chr(int(operand.group(1))) in _OPCODES
        if found or real_opcode:
            what = f" (it would call {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{os.fspath(path)} holds objects other than tensors and plain values{what}; it was refused without "
                "running any of it. Only load checkpoints written by learn.save"
            ) from e
        raise CheckpointError(f"{os.fspath(path)} is corrupt or not a torch file ({type(e).__name__})") from e
    except Exception as e:  # a truncated zip archive, random bytes, an empty file
        raise CheckpointError(
            f"{os.fspath(path)} cannot be read: truncated or corrupt (torch.load raised {type(e).__name__})"
        ) from e
    return ckpt


def read_checkpoint(path, with_history: bool = True) -> dict:
    """The checkpoint at `path`, read with `torch.load(weights_only=True)`: a file holding anything but tensors and
    plain values is refused without running any of it. A batch history kept in a side file is read and checked too
    (`with_history=False`: left out, the Recorder then starts empty)."""
    ckpt = _load_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{os.fspath(path)} is not a cyclr checkpoint (a dict with format={FORMAT!r}); a plain model state_dict "
            "loads with learn.load(path, model_only=True) or learn.model.load_state_dict(torch.load(path, "
            "weights_only=True))"
        )
    if ckpt.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{os.fspath(path)} has checkpoint version {ckpt.get('version')!r}; this cyclr reads "
                              f"versions {READABLE_VERSIONS}")
    if ckpt["version"] >= 2 and ckpt.get("checksum") != checksum(ckpt):
        raise CheckpointError(
            f"{os.fspath(path)} is corrupt: its content does not match the checksum written with it (a damaged disk, "
            "an interrupted copy or an edit); nothing was loaded. Use another checkpoint"
        )
    missing = [part for part in PARTS if part not in ckpt]
    if missing:
        raise CheckpointError(f"{os.fspath(path)} lacks the part(s) {missing}: it is incomplete")
    _read_history_files(ckpt, path, with_history)
    return ckpt


def _read_history_files(ckpt: dict, path, with_history: bool) -> None:
    """Replace each callback state's `history_file` reference by the history it names (callbacks/history.py)."""
    for state in ckpt["callbacks"].values():
        ref = state.get("history_file") if isinstance(state, dict) else None
        if ref is None:
            continue
        del state["history_file"]
        if not with_history:
            state["batch_history"] = BatchHistory()
            continue
        side = Path(path).parent / str(ref["file"])
        try:
            history = read_history_file(side, int(ref["bytes"]), str(ref["chain"]))
        except HistoryFileError as e:
            raise CheckpointError(
                f"{os.fspath(path)}: {e}. A checkpoint taken during a fit keeps its batch history in that file "
                "beside it: copy it along (or save between fits, which writes one file); "
                "learn.load(path, with_history=False) loads everything else"
            ) from e
        if len(history) != ref["rows"]:
            raise CheckpointError(f"{os.fspath(side)} gives {len(history)} batch rows, its checkpoint expects "
                                  f"{ref['rows']}: it was changed")
        state["batch_history"] = history
        state["history_file_known"] = {"path": str(side.resolve()), **ref}


def save_model_state(learn, path) -> Path:
    """The model's plain `state_dict` at `path`, atomically: plain PyTorch reads it with
    `model.load_state_dict(torch.load(path, weights_only=True))`."""
    check_file_path(path)
    if not getattr(learn, "is_main_process", True):
        return Path(path)
    return atomic_torch_save(_unwrapped(learn.model).state_dict(), path)


def load_model_state(learn, path) -> None:
    """The model's weights from a plain `state_dict` file or from a cyclr checkpoint, checked before loading."""
    saved = _load_file(path)
    if isinstance(saved, dict) and saved.get("format") == FORMAT:
        saved = saved.get("model")
    check_model(learn.model, saved)
    learn.model.load_state_dict(saved)


# ----- checking each part against the learner, then applying them ---------------------------------------------------
def restore(learn, ckpt: dict, *, with_opt: bool = True, model_only: bool = False, cbs=None,
            warn_missing_callbacks: bool = False) -> None:
    """Check every part of `ckpt` against `learn` (raising CheckpointError with nothing changed), then apply them.

    `cbs`: the callbacks whose state to restore (default `learn.cbs`; a resumed fit adds its own). The optimizer is
    created first when the learner has none yet (and dropped again if a check fails)."""
    check_model(learn.model, ckpt["model"])
    if model_only:
        learn.model.load_state_dict(ckpt["model"])
        return
    cbs = learn.cbs if cbs is None else cbs
    created_opt = with_opt and ckpt["optimizer"] is not None and learn.opt is None
    if created_opt:
        learn.create_opt()
    try:
        if with_opt and ckpt["optimizer"] is not None:
            check_optimizer(learn.opt, ckpt["optimizer"])
        keyed = callback_keys(cbs)
        check_callbacks(learn, keyed, ckpt["callbacks"])
        check_data(learn.dls, ckpt["data"])
        check_rng(ckpt["rng"])
        check_progress(ckpt["progress"])
    except BaseException:
        if created_opt:
            learn.opt = None
        raise

    learn.model.load_state_dict(ckpt["model"])
    if with_opt and ckpt["optimizer"] is not None:
        learn.opt.load_state_dict(ckpt["optimizer"]["state"])
    for key, cb in keyed.items():
        if key in ckpt["callbacks"]:
            cb.load_state_dict(ckpt["callbacks"][key])
    unused = [key for key, state in ckpt["callbacks"].items() if key not in keyed and state]
    if warn_missing_callbacks and unused:
        warnings.warn(
            f"the checkpoint holds the state of {unused}, which this fit does not have: the run will differ from "
            "the one that was interrupted. Resume with the same callbacks (and the same fit method, e.g. "
            "fit_one_cycle for a one-cycle run)",
            stacklevel=user_stacklevel(),
        )
    if ckpt["data"]:
        learn.dls.load_state_dict(ckpt["data"])
    set_rng_state(ckpt["rng"])
    progress = ckpt["progress"]
    learn.set_counters(epoch=progress["epoch"], train_iter=progress["train_iter"], n_epoch=progress["n_epoch"],
                       n_train_iters=progress["n_train_iters"])
    if progress.get("train_n_inp") is not None:  # absent from older checkpoints; None: not learned (dict batches)
        learn.train_n_inp = progress["train_n_inp"]
