"""Learning rates per parameter group, as the recipes, `fit(lr=...)` and `Learner.set_hyper('lr', ...)` take them:
a number (every group), a list (one per group) or a slice (spread geometrically over the groups, fastai's way)."""

from __future__ import annotations

import numbers

from .schedules.base import check_rate, check_rate_slice


def lrs_per_group(lr, n_groups: int, name: str = "max_lr") -> list[float]:
    """One learning rate per parameter group: a number (all equal), a list (one each), `slice(lo, hi)` (geometric,
    lo first, hi last; lo <= hi) or `slice(hi)` (hi/10 to all groups but the last: fastai's convention)."""
    if isinstance(lr, slice):
        lo, hi = lr.start, lr.stop
        if lr.step is not None or hi is None:
            raise ValueError(f"{name} as a slice must be slice(lo, hi) or slice(hi), got {lr!r}")
        check_rate(f"{name} slice end", hi)
        if n_groups == 1:
            return [hi]
        if lo is None:
            return [hi / 10] * (n_groups - 1) + [hi]
        check_rate(f"{name} slice start", lo)
        check_rate_slice(name, lo, hi)
        return [lo * (hi / lo) ** (i / (n_groups - 1)) for i in range(n_groups)]
    if isinstance(lr, (list, tuple)):
        if len(lr) != n_groups:
            raise ValueError(f"{name} has {len(lr)} values for {n_groups} parameter groups; give one per group")
        return list(lr)
    return [lr] * n_groups


def one_or_per_group(lr, n_groups: int | None, name: str = "max_lr"):
    """A number stays one number (one schedule for all groups); a list or slice gives one lr per group, or with
    `n_groups=None` (before any fit) the last group's."""
    if isinstance(lr, numbers.Real):
        return lr
    if n_groups is None:
        return lr.stop if isinstance(lr, slice) else lr[-1]
    return lrs_per_group(lr, n_groups, name)


def check_lr_spec(name: str, lr, check=check_rate) -> None:
    """Refuse a bad learning rate (number, list or slice) at construction, before the groups are known."""
    if isinstance(lr, slice):
        lrs_per_group(lr, 2, name)
    elif isinstance(lr, (list, tuple)):
        if not lr:
            raise ValueError(f"{name} is an empty list; give one learning rate per parameter group")
        for i, v in enumerate(lr):
            check(f"{name}[{i}]", v)
    else:
        check(name, lr)
