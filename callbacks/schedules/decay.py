"""The d2l chapter's decays, on the step clock: square root, factor, multi-factor, cosine with warmup, and a warmup
that wraps any schedule of a step count. Each is a pure function of t; where d2l's scheduler keeps state and so
differs by a step, the class says so."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from ...data.checks import int_at_least, non_negative, real
from .base import Schedule, check_rate, check_schedule


class SquareRoot(Schedule):
    """`lr0 * (t + 1) ** -0.5` (d2l's SquareRootScheduler)."""

    domain = "step"

    def __init__(self, lr0: float):
        self.lr0 = check_rate("lr0", lr0)

    def config(self) -> dict:
        return {"lr0": self.lr0}

    def value(self, t):
        return self.lr0 * (t + 1) ** -0.5


class Factor(Schedule):
    """`max(stop, base * factor**t)`: multiply by `factor` per step, never below `stop`.

    d2l's FactorScheduler keeps the running product as state and its first call already returns base*factor; as a
    pure function this one returns `base` at t = 0.
    """

    domain = "step"

    def __init__(self, base: float, factor: float, stop: float = 1e-7):
        self.base = check_rate("base", base)
        if not 0 < real("factor", factor) <= 1:
            raise ValueError(f"factor must be in (0, 1] (the decay per step), got {factor!r}")
        self.factor = factor
        self.stop = non_negative("stop", stop)

    def config(self) -> dict:
        return {"base": self.base, "factor": self.factor, "stop": self.stop}

    def value(self, t):
        return max(self.stop, self.base * self.factor**t)


class MultiFactor(Schedule):
    """Piecewise constant: `base`, multiplied by `factor` at each of `steps` (t >= step), like torch's MultiStepLR
    with `milestones=steps, gamma=factor`. (MXNet's MultiFactorScheduler, used by d2l, applies each drop one update
    later.)"""

    domain = "step"

    def __init__(self, base: float, steps: Sequence[int], factor: float):
        self.base = check_rate("base", base)
        if not isinstance(steps, Sequence) or len(steps) == 0:
            raise ValueError(f"steps must be a non-empty list of increasing ints >= 1, got {steps!r}")
        for i, s in enumerate(steps):
            int_at_least(f"steps[{i}]", s, 1)
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must be strictly increasing, got {list(steps)}")
        self.steps = tuple(int(s) for s in steps)
        if not 0 < real("factor", factor) <= 1:  # as Factor: a decay, never growth without bound
            raise ValueError(f"factor must be in (0, 1] (the decay at each of steps), got {factor!r}")
        self.factor = factor

    def config(self) -> dict:
        return {"base": self.base, "steps": self.steps, "factor": self.factor}

    def value(self, t):
        return self.base * self.factor ** bisect.bisect_right(self.steps, t)


class CosineDecay(Schedule):
    """d2l's CosineScheduler: cosine from `base` (t = warmup_steps) to `final` (t = max_update), then pinned at
    `final`. With `warmup_steps > 0`, first linear from `warmup_begin` (t = 0) towards `base`.

    Equal to `warmup(cosine(base, final, max_update - warmup_steps), warmup_steps, warmup_begin)`.
    """

    domain = "step"

    def __init__(self, base: float, final: float, max_update: int, warmup_steps: int = 0, warmup_begin: float = 0.0):
        self.base = check_rate("base", base)
        self.final = non_negative("final", final)
        if final > base:
            raise ValueError(
                f"final must be <= base (a cosine decay from base to final), got final={final!r} > base={base!r}; "
                f"for a rate that rises along a cosine use Cos({base!r}, {final!r}), a schedule of pct"
            )
        self.max_update = int_at_least("max_update", max_update, 1)
        self.warmup_steps = int_at_least("warmup_steps", warmup_steps, 0)
        if warmup_steps >= max_update:
            raise ValueError(
                f"warmup_steps must be < max_update (the cosine needs at least one step), "
                f"got warmup_steps={warmup_steps} and max_update={max_update}"
            )
        self.warmup_begin = non_negative("warmup_begin", warmup_begin)

    def config(self) -> dict:
        return {"base": self.base, "final": self.final, "max_update": self.max_update,
                "warmup_steps": self.warmup_steps, "warmup_begin": self.warmup_begin}

    def value(self, t):
        if t < self.warmup_steps:
            return self.warmup_begin + (self.base - self.warmup_begin) * t / self.warmup_steps
        if t > self.max_update:
            return self.final
        pct = (t - self.warmup_steps) / (self.max_update - self.warmup_steps)
        return self.final + (self.base - self.final) * (1 + math.cos(math.pi * pct)) / 2


class Warmup(Schedule):
    """Linear warmup from `begin` (t = 0) towards `sched(0)`, then `sched(t - steps)` for t >= steps.

    The wrapped schedule's clock starts when warmup ends, as in DJL's WarmUpTracker (the d2l edition in our seeds)
    and d2l's CosineScheduler, whose cosine is "squeezed" into the steps after warmup.
    """

    domain = "step"

    def __init__(self, sched: Schedule, steps: int, begin: float = 0.0):
        self.sched = check_schedule("sched", sched)
        if sched.domain == "pct":
            raise ValueError(f"sched={sched!r} is a function of pct; warmup wraps schedules of a step count t")
        self.steps = int_at_least("steps", steps, 1)
        self.begin = real("begin", begin)

    def config(self) -> dict:
        return {"sched": self.sched, "steps": self.steps, "begin": self.begin}

    def value(self, t):
        if t < self.steps:
            return self.begin + (self.sched(0) - self.begin) * t / self.steps
        return self.sched(t - self.steps)


def square_root(lr0: float) -> SquareRoot:
    """`lr0 * (t + 1) ** -0.5`."""
    return SquareRoot(lr0)


def factor(base: float, factor: float, stop: float = 1e-7) -> Factor:
    """`max(stop, base * factor**t)`."""
    return Factor(base, factor, stop)


def multi_factor(base: float, steps: Sequence[int], factor: float) -> MultiFactor:
    """`base * factor**(number of steps <= t)` (torch's MultiStepLR)."""
    return MultiFactor(base, steps, factor)


def cosine(base: float, final: float, max_update: int, warmup_steps: int = 0, warmup_begin: float = 0.0) -> CosineDecay:
    """d2l's cosine schedule, pinned at `final` after `max_update`, with an optional linear warmup: a function of
    a step count (the batch index with `ParamScheduler(..., unit='batch')`, the epoch with `unit='epoch'`).

    Args:
        base: the value at the end of the warmup (step `warmup_steps`), where the cosine starts (> 0).
        final: the value the cosine reaches at step `max_update` and keeps after it (>= 0 and <= `base`).
        max_update: the step at which the cosine ends (>= 1).
        warmup_steps: steps of linear warmup before the cosine (< `max_update`); 0: none.
        warmup_begin: the value at step 0, where the warmup starts (>= 0).
    """
    return CosineDecay(base, final, max_update, warmup_steps, warmup_begin)


def warmup(sched: Schedule, steps: int, begin: float = 0.0) -> Warmup:
    """Linear warmup over `steps` from `begin` to `sched(0)`, then `sched` shifted to start after the warmup."""
    return Warmup(sched, steps, begin)
