"""What a fit was started with, recorded in its checkpoints (`progress['config']`) and compared when it resumes.

A resumed fit goes on from the checkpoint's counters; its hyperparameters come from this fit's arguments and
callbacks. If those differ from the ones the checkpoint's fit started with, the run would silently mix two
settings, so `fit(..., resume=path)` compares them (learner/checkpoints.py) and refuses, naming each difference, unless
`allow_config_change` allows it. The config holds plain values only (the checkpoint is read with
`torch.load(weights_only=True)`):

    lr, wd              the fit's `lr` and `wd` as resolved (None given: the Learner's `lr` and `wd`); an `lr`
                        per group as a list, a slice as its repr
    optimizer           the optimizer's type (recorded, not compared here: restoring the optimizer's state refuses
                        another type, naming both)
    train_batch_size, train_samples, valid_batch_size
                        the loaders' batch sizes and the training data's size (None where a loader does not say)
    callbacks           {'<ClassName>_<i>': cb.fit_config()} for each callback that describes itself (the
                        schedulers), keyed as the checkpoint keys their states

It is taken when the fit starts (`learn.fit_config`, set in `Learner.fit` before `before_fit`), never mid-schedule.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection
from dataclasses import dataclass

from ..data.state import plain
from .checkpoint_files import callback_keys

# The fit's own entries, each with how a difference in it reads.
FIT_ENTRIES = {
    "lr": "the fit's lr",
    "wd": "the fit's wd",
    "optimizer": "the optimizer",
    "train_batch_size": "batch size of the training data",
    "train_samples": "number of training samples",
    "valid_batch_size": "batch size of the validation data",
}
# A callback's fit_config() is kept as plain values, tuples as lists and NumPy numbers as Python's, as both sides
# of a comparison must be (data/state.py's `plain`); anything else is refused with this hint.
_DESCRIBE_IT = "; a fit's config is kept in checkpoints: describe it as a plain value (e.g. its repr)"
# Restoring the optimizer's state already refuses another type, with its own fix (create the Learner with the same
# opt_func): a type change cannot be allowed, so it is not offered here.
NOT_COMPARED = ("optimizer",)


# ----- what a fit starts with ---------------------------------------------------------------------------------------
def describe_fit(learn, lr: float | None, wd: float | None, cbs=()) -> dict:
    """The config of a fit of `learn` called with `lr`, `wd` and callbacks `cbs` (attached or not yet)."""
    attached = list(learn.cbs)
    everything = sorted([*attached, *(cb for cb in cbs if cb not in attached)], key=lambda cb: cb.order)
    callbacks = {}
    for key, cb in callback_keys(everything).items():  # the order add_cbs gives them, so the checkpoint's keys
        described = cb.fit_config()
        if described is not None:
            callbacks[key] = plain(described, f"{key}.fit_config()", _DESCRIBE_IT, config=True)
    train, valid = learn.dls.train, getattr(learn.dls, "valid", None)
    wd = learn.wd if wd is None else wd
    return {
        "lr": _rate(learn.lr if lr is None else lr),
        "wd": None if wd is None else float(wd),  # None: the optimizer's own weight decay
        "optimizer": None if learn.opt is None else type(learn.opt).__name__,
        "train_batch_size": _batch_size(train),
        "train_samples": _n_samples(train),
        "valid_batch_size": None if valid is None else _batch_size(valid),
        "callbacks": callbacks,
    }


def _rate(lr):
    # a slice as its repr (as the schedulers record theirs), one rate per group as a list
    if isinstance(lr, slice):
        return repr(lr)
    return [float(v) for v in lr] if isinstance(lr, (list, tuple)) else float(lr)


def _batch_size(dl) -> int | None:
    # cyclr's loaders call it `bs`, torch's DataLoader `batch_size`; a loader of one's own may say neither.
    value = getattr(dl, "bs", None)
    value = getattr(dl, "batch_size", None) if value is None else value
    return int(value) if isinstance(value, numbers.Integral) else None


def _n_samples(dl) -> int | None:
    n = getattr(dl, "n", None)  # cyclr's loaders: the whole data set, all ranks together
    if isinstance(n, numbers.Integral):
        return int(n)
    dataset = getattr(dl, "dataset", None)
    return len(dataset) if hasattr(type(dataset), "__len__") else None


# ----- comparing two configs ----------------------------------------------------------------------------------------
class _Absent:
    def __repr__(self) -> str:
        return "absent"


ABSENT = _Absent()


@dataclass(frozen=True)
class ConfigChange:
    """One difference between the config a checkpoint's fit started with and this fit's."""

    name: str  # what allow_config_change takes: 'train_batch_size', 'OneCycleCallback.max_lr'
    label: str  # how it reads: 'batch size of the training data', 'OneCycleCallback max_lr'
    saved: object
    now: object
    callback: str | None = None  # the checkpoint's key of the callback it belongs to

    def __str__(self) -> str:
        return f"{self.label}: {_shown(self.saved)} in the checkpoint, {_shown(self.now)} now"

    def allowed_by(self, allow: bool | frozenset) -> bool:
        """`allow` True, or naming this change in full or by its last part (`'max_lr'` for any callback's)."""
        return allow is True or bool(allow) and (self.name in allow or self.name.rsplit(".", 1)[-1] in allow)


def _shown(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return repr(value)


def config_changes(saved: dict, now: dict) -> list[ConfigChange]:
    """Every difference from `saved` (a checkpoint's config) to `now`. What `saved` does not record (an entry a
    later cyclr adds) is not compared; a describing callback this fit has and the checkpoint's did not is a change
    (one the checkpoint's fit had and this one lacks is warned about when its state finds no callback to go to)."""
    changes = [ConfigChange(name, label, saved[name], now.get(name, ABSENT))
               for name, label in FIT_ENTRIES.items()
               if name in saved and name not in NOT_COMPARED and saved[name] != now.get(name, ABSENT)]
    saved_cbs = saved.get("callbacks", {})
    for key, described in now["callbacks"].items():
        shown = key.removesuffix("_0")  # 'OneCycleCallback' for the only (or first) one of its class
        if key not in saved_cbs:
            changes.append(ConfigChange(shown, shown, ABSENT, "present", callback=key))
            continue
        changes += [ConfigChange(f"{shown}.{param}", f"{shown} {param}", value, described.get(param, ABSENT),
                                 callback=key)
                    for param, value in saved_cbs[key].items() if value != described.get(param, ABSENT)]
    return changes


def allowed_changes(allow_config_change) -> bool | frozenset:
    """`allow_config_change` checked: True, False, or a collection of names (a frozenset of them)."""
    if isinstance(allow_config_change, bool):
        return allow_config_change
    if isinstance(allow_config_change, str) or not isinstance(allow_config_change, Collection):
        raise TypeError(
            "allow_config_change must be True, False or a list of the names of the settings allowed to change, "
            f"e.g. allow_config_change=['max_lr'], got {allow_config_change!r}"
        )
    names = frozenset(allow_config_change)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"allow_config_change must list setting names as strings, got {sorted(map(repr, names))}")
    return names
