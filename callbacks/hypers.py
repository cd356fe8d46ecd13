"""The one place that reads and writes hyperparameters on an optimizer's parameter groups.

Names users schedule and record: `lr`; `mom`, the momentum of SGD-like optimizers or the first beta of Adam-like ones;
`wd`, torch's `weight_decay`; `beta2`, Adam's second beta. Any other name is a raw param_group key, left to the
optimizer to interpret.

Values are checked where they enter (`set_hyper`, a callback's constructor, a scheduler's `before_fit` over the
whole fit: `out_of_range`), never per batch: `writer` resolves the key once and then only writes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from ..data.checks import in_unit_interval, non_negative

__all__ = ["NAMED_HYPERS", "has_hyper", "get_hyper", "set_group_hyper", "check_hyper_value", "set_hyper",
           "group_hypers", "writer", "out_of_range", "hyper_range", "saved_hypers", "restore_hypers"]

NAMED_HYPERS = ("lr", "mom", "wd", "beta2")
_KEYS = {"wd": "weight_decay"}


def has_hyper(group: dict, name: str) -> bool:
    """Whether `group` has hyperparameter `name` (a named one or a raw key)."""
    if name == "mom":
        return "momentum" in group or "betas" in group
    if name == "beta2":
        return "betas" in group
    return _KEYS.get(name, name) in group


def get_hyper(group: dict, name: str) -> float:
    """The value of `name` in `group`; NaN for a momentum the optimizer does not have (the Recorder's column)."""
    if name == "mom":
        if "momentum" in group:
            return float(group["momentum"])
        return float(group["betas"][0]) if "betas" in group else math.nan
    if name == "beta2":
        return float(group["betas"][1]) if "betas" in group else math.nan
    return group[_KEYS.get(name, name)]


def set_group_hyper(group: dict, name: str, value, opt_name: str = "the optimizer") -> None:
    """Set `name` in one group; a KeyError naming what the optimizer has when it lacks it."""
    if name == "mom":
        if "momentum" in group:
            group["momentum"] = value
        elif "betas" in group:
            group["betas"] = (value, group["betas"][1])
        else:
            raise KeyError(f"{opt_name} has no momentum (neither 'momentum' nor 'betas')")
    elif name == "beta2":
        if "betas" not in group:
            raise KeyError(f"{opt_name} has no 'betas', so no beta2 to set")
        group["betas"] = (group["betas"][0], value)
    else:
        key = _KEYS.get(name, name)
        if key not in group:
            raise KeyError(f"{opt_name} has no hyperparameter {key!r}; it has {sorted(group)}")
        group[key] = value


def writer(groups: list[dict], name: str, opt_name: str = "the optimizer") -> Callable[[float], None]:
    """A function that sets `name` to its argument in each of `groups`, with the key resolved now (a KeyError naming
    what the optimizer has when a group lacks it) and no check per call: for values checked before the fit."""
    for group in groups:
        if not has_hyper(group, name):
            set_group_hyper(group, name, None, opt_name)  # raises the KeyError that says what the group has
    in_betas = name == "beta2" or (name == "mom" and any("momentum" not in g for g in groups))
    if in_betas:  # one half of Adam's betas tuple: a new tuple each time, as torch reads it

        def write_betas(value: float) -> None:
            for g in groups:
                set_group_hyper(g, name, value, opt_name)

        return write_betas
    key = "momentum" if name == "mom" else _KEYS.get(name, name)

    def write_key(value: float) -> None:
        for g in groups:
            g[key] = value

    return write_key


def hyper_range(name: str) -> tuple[float, float, str]:
    """(low, high, as words) of the values `name` may take: low <= value < high. Raw keys: any finite number."""
    if name in ("lr", "wd"):
        return 0.0, math.inf, "finite and >= 0"
    if name in ("mom", "beta2"):
        return 0.0, 1.0, "in [0, 1)"
    return -math.inf, math.inf, "finite"


def out_of_range(name: str, value) -> str | None:
    """What `name` must be when `value` cannot be it (not a real number, not finite, outside its range), else None:
    the test a scheduler runs on every value of a fit before its first step, so it costs a comparison, not a message."""
    low, high, words = hyper_range(name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{name} must be a real number ({words})"
    if low <= value < high:
        return None
    return f"{name} must be {words}" if math.isfinite(value) else f"hyperparameters must be finite ({name}: {words})"


def check_hyper_value(name: str, value) -> None:
    """The ranges of the named hyperparameters; raw param_group keys are left to the optimizer."""
    if name in ("lr", "wd"):
        non_negative(name, value)
    elif name in ("mom", "beta2"):
        in_unit_interval(name, value)


def set_hyper(opt, name: str, value, group: int | None = None) -> None:
    """Set `name` to `value` in every parameter group of `opt`, or in group number `group`, after checking both."""
    check_hyper_value(name, value)
    n_groups = len(opt.param_groups)
    if group is not None and (isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < n_groups):
        raise IndexError(f"group must be in [0, {n_groups - 1}] (the optimizer has {n_groups} parameter "
                         f"group(s)), got {group!r}")
    opt_name = type(opt).__name__
    for g in opt.param_groups if group is None else [opt.param_groups[group]]:
        set_group_hyper(g, name, value, opt_name)


def saved_hypers(opt) -> list[dict]:
    """Every parameter group's settings (all but its parameters), as `restore_hypers` puts them back."""
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def restore_hypers(opt, saved: list[dict]) -> None:
    for group, settings in zip(opt.param_groups, saved, strict=True):
        group.update(settings)


def group_hypers(group: dict) -> dict:
    """lr, mom and wd of one group (mom and wd None where the optimizer has none)."""
    mom = get_hyper(group, "mom")
    return {"lr": group["lr"], "mom": None if math.isnan(mom) else mom, "wd": group.get("weight_decay")}
