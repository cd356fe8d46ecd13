"""Checkpoints: everything a fit needs to go on exactly where it stopped, written atomically, read without running
code.

A checkpoint is a dict of tensors and plain values, so `torch.load(..., weights_only=True)` reads it:

    format, version   'cyclr-checkpoint', 1
    model             model.state_dict()
    optimizer         {'type': 'SGD', 'state': opt.state_dict()}, or None before the optimizer exists
    progress          where it was taken ('at'), the position to go on from (epoch, iter, train_iter) and the
                      fit's planned length (n_epoch, batches_per_epoch, n_train_iters)
    callbacks         {'<ClassName>_<i>': cb.state_dict()} for every attached callback (i counts that class)
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

import copy
import hashlib
import os
import pickle
import pickletools
import random
import re
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..callbacks.core import Callback
from ..data.state import atomic_torch_save, rng_state, set_rng_state

# Version 2 adds `checksum`, a SHA-256 over every tensor and value of the other parts, checked when read; version 1
# files (no checksum) are still read.
FORMAT, VERSION, READABLE_VERSIONS = "cyclr-checkpoint", 2, (1, 2)
POSITIONS = ("epoch_end", "batch_end", "outside_fit")
PARTS = ("model", "optimizer", "progress", "callbacks", "data", "rng")


# Pickle's own opcodes: one that torch's weights-only reader refuses builds objects; any other byte is damage.
_OPCODES = {op.code for op in pickletools.opcodes}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit this learner; raised before the learner is changed."""


# ----- writing -------------------------------------------------------------------------------------------------------
def save_checkpoint(learn, path, at: str | None = None) -> Path:
    """Write `learn`'s full state to `path` (see the module docstring); returns the path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    at = _position(learn, at)
    if not getattr(learn, "is_main_process", True):
        return Path(path)  # data-parallel: every process holds the same state; the main one writes it

    callbacks = {}
    for key, cb in callback_keys(learn.cbs).items():
        state = cb.state_dict()
        _check_plain(state, f"{key}.state_dict()")
        callbacks[key] = state
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
    """SHA-256 over every part but `checksum`: each tensor's dtype, shape and bytes, each plain value's repr, in a
    fixed order. One flipped bit anywhere changes it."""
    digest = hashlib.sha256()

    def feed(obj) -> None:
        if isinstance(obj, torch.Tensor):
            tensor = obj.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            digest.update(f"D{len(obj)}".encode())
            for key in sorted(obj, key=repr):
                feed(key)
                feed(obj[key])
        elif isinstance(obj, (list, tuple)):
            digest.update(f"L{len(obj)}".encode())
            for item in obj:
                feed(item)
        else:
            digest.update(f"V{obj!r};".encode())

    feed({k: v for k, v in ckpt.items() if k != "checksum"})
    return digest.hexdigest()


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


def _progress(learn, at: str) -> dict:
    planned = {"n_epoch": learn.n_epoch, "batches_per_epoch": len(learn.dls.train),
               "n_train_iters": learn.n_train_iters}
    if at == "batch_end":
        # Called from after_batch: the loop counts this batch's step (learn.stepped) only after that event.
        position = {"epoch": learn.epoch, "iter": learn.iter + 1, "train_iter": learn.train_iter + int(learn.stepped)}
    elif at == "epoch_end":
        position = {"epoch": learn.epoch + 1, "iter": 0, "train_iter": learn.train_iter}
    else:
        position = {"epoch": learn.epoch, "iter": 0, "train_iter": learn.train_iter}
    return {"at": at, **position, **planned}


def _data_state(dls, mid_epoch: bool) -> dict:
    if not hasattr(dls, "state_dict"):
        return {}
    return dls.state_dict(mid_epoch=True) if mid_epoch else dls.state_dict()


_PLAIN = (bool, int, float, str, type(None), torch.Tensor, torch.Size, torch.dtype)


def _check_plain(obj, where: str) -> None:
    """Refuse, at save time, a value `torch.load(weights_only=True)` would refuse at load time."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"{where} is a {type(obj).__module__}.{type(obj).__name__}: a checkpoint holds only tensors and plain "
            "values (bool, int, float, str, None, lists, tuples, dicts) so that it loads without running code; "
            "convert it (e.g. torch.as_tensor(x) or x.tolist())"
        )


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


def read_checkpoint(path) -> dict:
    """The checkpoint at `path`, read with `torch.load(weights_only=True)`: a file holding anything but tensors and
    plain values is refused without running any of it."""
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
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def save_model_state(learn, path) -> Path:
    """The model's plain `state_dict` at `path`, atomically: plain PyTorch reads it with
    `model.load_state_dict(torch.load(path, weights_only=True))`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    if not getattr(learn, "is_main_process", True):
        return Path(path)
    return atomic_torch_save(_unwrapped(learn.model).state_dict(), path)


def load_model_state(learn, path) -> None:
    """The model's weights from a plain `state_dict` file or from a cyclr checkpoint, checked before loading."""
    saved = _load_file(path)
    if isinstance(saved, dict) and saved.get("format") == FORMAT:
        saved = saved.get("model")
    _check_model(learn.model, saved)
    learn.model.load_state_dict(saved)


# ----- checking each part against the learner, then applying them ---------------------------------------------------
def restore(learn, ckpt: dict, *, with_opt: bool = True, model_only: bool = False, cbs=None,
            warn_missing_callbacks: bool = False) -> None:
    """Check every part of `ckpt` against `learn` (raising CheckpointError with nothing changed), then apply them.

    `cbs`: the callbacks whose state to restore (default `learn.cbs`; a resumed fit adds its own). The optimizer is
    created first when the learner has none yet (and dropped again if a check fails)."""
    _check_model(learn.model, ckpt["model"])
    if model_only:
        learn.model.load_state_dict(ckpt["model"])
        return
    cbs = learn.cbs if cbs is None else cbs
    created_opt = with_opt and ckpt["optimizer"] is not None and learn.opt is None
    if created_opt:
        learn.create_opt()
    try:
        if with_opt and ckpt["optimizer"] is not None:
            _check_optimizer(learn.opt, ckpt["optimizer"])
        keyed = callback_keys(cbs)
        _check_callbacks(learn, keyed, ckpt["callbacks"])
        _check_data(learn.dls, ckpt["data"])
        _check_rng(ckpt["rng"])
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
            stacklevel=4,
        )
    if ckpt["data"]:
        learn.dls.load_state_dict(ckpt["data"])
    set_rng_state(ckpt["rng"])
    progress = ckpt["progress"]
    learn.epoch, learn.train_iter = progress["epoch"], progress["train_iter"]
    learn.n_epoch, learn.n_train_iters = progress["n_epoch"], progress["n_train_iters"]


def _names(keys, limit: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_model(model, saved) -> None:
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise CheckpointError("model: the checkpoint's model part is not a state_dict of tensors")
    current = model.state_dict()
    problems = []
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [f"{k} {tuple(saved[k].shape)} in the checkpoint vs {tuple(v.shape)} in the model"
              for k, v in current.items() if k in saved and saved[k].shape != v.shape]
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    if shapes:
        problems.append(f"other shapes: {_names(shapes, 3)}")
    if problems:
        raise CheckpointError(
            f"model: the checkpoint does not fit this model ({'; '.join(problems)}); it was saved from another "
            "architecture. Build the same model, or load only matching weights yourself"
        )


def _check_optimizer(opt, saved) -> None:
    if not isinstance(saved, dict) or not {"type", "state"} <= saved.keys():
        raise CheckpointError("optimizer: the checkpoint's optimizer part is malformed")
    if saved["type"] != type(opt).__name__:
        raise CheckpointError(
            f"optimizer: the checkpoint holds the state of {saved['type']} but this learner's optimizer is "
            f"{type(opt).__name__}; create the Learner with the same opt_func, or load(path, with_opt=False)"
        )
    groups = saved["state"].get("param_groups", [])
    if len(groups) != len(opt.param_groups):
        raise CheckpointError(
            f"optimizer: the checkpoint has {len(groups)} parameter group(s), this optimizer "
            f"{len(opt.param_groups)}; use the same splitter"
        )
    params = []
    for i, (saved_group, group) in enumerate(zip(groups, opt.param_groups, strict=True)):
        if len(saved_group["params"]) != len(group["params"]):
            raise CheckpointError(
                f"optimizer: parameter group {i} has {len(saved_group['params'])} parameters in the checkpoint and "
                f"{len(group['params'])} here; it was saved from another model or splitter"
            )
        params += list(zip(saved_group["params"], group["params"], strict=True))
    param_of = dict(params)
    for index, state in saved["state"].get("state", {}).items():
        if index not in param_of:
            raise CheckpointError(f"optimizer: state for parameter {index}, which no parameter group holds")
        p = param_of[index]
        for name, value in state.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != p.shape:
                raise CheckpointError(
                    f"optimizer: {name!r} of parameter {index} has shape {tuple(value.shape)} in the checkpoint but "
                    f"the parameter has shape {tuple(p.shape)}"
                )


def _check_callbacks(learn, keyed: dict, saved) -> None:
    if not isinstance(saved, dict):
        raise CheckpointError("callbacks: the checkpoint's callbacks part is not a dict")
    # Trial loads into copies; the learner, model, optimizer and loaders are shared, not copied, by the copies.
    memo = {id(obj): obj for obj in (learn, learn.model, learn.opt, learn.dls)}
    for key, cb in keyed.items():
        if key not in saved or not (saved[key] or cb.state_dict()):
            continue  # nothing saved and nothing to restore (most callbacks keep no state)
        trial = copy.deepcopy(cb, dict(memo))
        try:
            trial.load_state_dict(saved[key])
        except Exception as e:
            raise CheckpointError(
                f"callback {key}: its saved state does not fit ({type(e).__name__}: {_first_line(e)})"
            ) from None


def _check_data(dls, saved) -> None:
    if not saved:
        return
    if not hasattr(dls, "load_state_dict"):
        raise CheckpointError(f"data: the checkpoint holds loader states but learn.dls ({type(dls).__name__}) has "
                              "no load_state_dict")
    current = dls.state_dict()
    try:
        dls.load_state_dict(saved)
    except Exception as e:
        raise CheckpointError(f"data: the loaders' saved state does not fit ({_first_line(e)})") from None
    finally:
        dls.load_state_dict(current)


def _check_rng(saved) -> None:
    if not isinstance(saved, dict) or "torch" not in saved or "random" not in saved:
        raise CheckpointError("rng: the checkpoint's RNG part lacks the torch or python state")
    cpu = saved["torch"]
    if not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8 and cpu.shape == torch.get_rng_state().shape):
        raise CheckpointError("rng: the torch CPU generator state has the wrong type or size")
    current = random.getstate()
    try:
        random.setstate(saved["random"])
    except Exception as e:
        raise CheckpointError(f"rng: the python random state does not fit ({_first_line(e)})") from None
    finally:
        random.setstate(current)
    numpy_state = saved.get("numpy")
    if numpy_state is not None and not (
        isinstance(numpy_state, dict) and isinstance(numpy_state.get("key"), torch.Tensor)
        and numpy_state["key"].shape == (624,)
    ):
        raise CheckpointError("rng: the numpy generator state is malformed")


def check_progress(progress) -> None:
    keys = ("at", "epoch", "iter", "train_iter", "n_epoch", "batches_per_epoch", "n_train_iters")
    if not isinstance(progress, dict) or not set(keys) <= progress.keys() or progress["at"] not in POSITIONS:
        raise CheckpointError(f"progress: the checkpoint's progress part must have {keys}, 'at' in {POSITIONS}")
    if any(isinstance(progress[k], bool) or not isinstance(progress[k], int) or progress[k] < 0 for k in keys[1:]):
        raise CheckpointError(f"progress: counters must be ints >= 0, got {progress}")
