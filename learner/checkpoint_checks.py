"""Checking each part of a checkpoint against the learner it is loaded into, before anything is changed: each check
raises a CheckpointError that names the part and what does not fit."""

from __future__ import annotations

import copy
import random

import torch

from ..data.state import plain
from .checkpoint_format import POSITIONS, CheckpointError, first_line


def names_preview(keys, limit: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_model(model, saved) -> None:
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise CheckpointError("model: the checkpoint's model part is not a state_dict of tensors")
    current = model.state_dict()
    problems = []
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    shapes = [f"{k} {tuple(saved[k].shape)} in the checkpoint vs {tuple(v.shape)} in the model"
              for k, v in current.items() if k in saved and saved[k].shape != v.shape]
    if missing:
        problems.append(f"missing {names_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected {names_preview(unexpected)}")
    if shapes:
        problems.append(f"other shapes: {names_preview(shapes, 3)}")
    if problems:
        raise CheckpointError(
            f"model: the checkpoint does not fit this model ({'; '.join(problems)}); it was saved from another "
            "architecture. Build the same model, or load only matching weights yourself"
        )


def check_optimizer(opt, saved) -> None:
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


def check_callbacks(learn, keyed: dict, saved) -> None:
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
                f"callback {key}: its saved state does not fit ({type(e).__name__}: {first_line(e)})"
            ) from None


def check_data(dls, saved) -> None:
    if not saved:
        return
    if not hasattr(dls, "load_state_dict"):
        raise CheckpointError(f"data: the checkpoint holds loader states but learn.dls ({type(dls).__name__}) has "
                              "no load_state_dict")
    current = dls.state_dict()
    try:
        dls.load_state_dict(saved)
    except Exception as e:
        raise CheckpointError(f"data: the loaders' saved state does not fit ({first_line(e)})") from None
    finally:
        dls.load_state_dict(current)


def check_rng(saved) -> None:
    if not isinstance(saved, dict) or "torch" not in saved or "random" not in saved:
        raise CheckpointError("rng: the checkpoint's RNG part lacks the torch or python state")
    cpu = saved["torch"]
    if not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8 and cpu.shape == torch.get_rng_state().shape):
        raise CheckpointError("rng: the torch CPU generator state has the wrong type or size")
    current = random.getstate()
    try:
        random.setstate(saved["random"])
    except Exception as e:
        raise CheckpointError(f"rng: the python random state does not fit ({first_line(e)})") from None
    finally:
        random.setstate(current)
    numpy_state = saved.get("numpy")
    if numpy_state is not None and not (
        isinstance(numpy_state, dict) and isinstance(numpy_state.get("key"), torch.Tensor)
        and numpy_state["key"].shape == (624,)
    ):
        raise CheckpointError("rng: the numpy generator state is malformed")


def check_progress(progress) -> None:
    """The position and planned length, and where there are some (a checkpoint from an older cyclr has none)
    `train_n_inp` and `config` (what the fit started with, learner/fit_config.py)."""
    keys = ("at", "epoch", "iter", "train_iter", "n_epoch", "batches_per_epoch", "n_train_iters")
    if not isinstance(progress, dict) or not set(keys) <= progress.keys() or progress["at"] not in POSITIONS:
        raise CheckpointError(f"progress: the checkpoint's progress part must have {keys}, 'at' in {POSITIONS}")
    counters = {k: progress[k] for k in keys[1:]}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counters.values()):
        raise CheckpointError(f"progress: counters must be ints >= 0, got {counters}")
    n_inp = progress.get("train_n_inp")  # absent from checkpoints written before it was kept
    if n_inp is not None and (isinstance(n_inp, bool) or not isinstance(n_inp, int) or n_inp < 1):
        raise CheckpointError(f"progress: train_n_inp (the training batches' number of inputs) must be None or an "
                              f"int >= 1, got {n_inp!r}")
    if "config" in progress:
        check_fit_config(progress["config"])


def check_fit_config(config) -> None:
    """A dict of plain values whose `callbacks` maps each callback's key to a dict."""
    callbacks = config.get("callbacks") if isinstance(config, dict) else None
    if not isinstance(callbacks, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                                  for k, v in callbacks.items()):
        raise CheckpointError("progress: the checkpoint's config (what its fit started with) must be a dict whose "
                              "'callbacks' maps each callback's name to a dict of its settings")
    try:
        plain(config, "the checkpoint's config", config=True)
    except TypeError as e:
        raise CheckpointError(f"progress: {e}") from None
