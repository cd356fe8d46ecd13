"""The one place that reads and writes hyperparameters on an optimizer's parameter groups.

Names users schedule and record: `lr`; `mom`, the momentum of SGD-like optimizers or the first beta of Adam-like ones;
`wd`, torch's `weight_decay`; `beta2`, Adam's second beta. Any other name is a raw param_group key, left to the
optimizer to interpret.
"""

from __future__ import annotations

import math

from ..data.checks import in_unit_interval, non_negative

__all__ = ["NAMED_HYPERS", "has_hyper", "get_hyper", "set_group_hyper", "check_hyper_value", "set_hyper",
           "group_hypers"]

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


def group_hypers(group: dict) -> dict:
    """lr, mom and wd of one group (mom and wd None where the optimizer has none)."""
    mom = get_hyper(group, "mom")
    return {"lr": group["lr"], "mom": None if math.isnan(mom) else mom, "wd": group.get("weight_decay")}
