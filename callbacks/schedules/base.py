"""The common shape of every schedule, the building blocks on the 'pct' clock, and rebuilding from a state dict.

`Configured` gives repr, equality and `state_dict()` from a `config()`; `Schedule` adds the call on a position, its
clock (`domain`) and `plot(n)`. `Lin`, `Cos`, `Exp`, `Poly` run from pct 0 to pct 1, `Const` works on either clock,
and `Combine` runs phases one after another. `schedule_from_state` rebuilds any schedule of this package (and
`OneCycle`) from a whitelist of kinds.
"""

from __future__ import annotations

import bisect
import math
import textwrap
from collections.abc import Sequence

from ...data.checks import int_at_least, non_negative, positive, real
from ...data.nested import map_leaves
from ...data.state import plain

# A position this close to a phase or cycle boundary belongs to the phase that starts there: `i / N` computed in
# floating point can land a hair before the boundary it means (e.g. 0.1 + 0.2 != 0.3).
BOUNDARY_TOL = 1e-12


def check_schedule(name: str, value) -> Schedule:
    """`value` if it is a schedule object (which can be saved and rebuilt), else a TypeError naming `name`."""
    if not isinstance(value, Schedule):
        raise TypeError(
            f"{name} must be a schedule from cyclr.callbacks.schedules (Lin, Cos, ...), got {type(value).__name__} "
            f"({value!r}); only schedule objects can be saved and rebuilt"
        )
    return value


# The largest rate torch's optimizers can take: they hold it in the parameters' float32 (foreach and fused kernels
# convert it), and a larger one fails deep inside torch ("value cannot be converted to type float without overflow").
MAX_RATE = 3.4028234663852886e38


def check_rate(name: str, value, allow_zero: bool = False):
    """A learning rate: finite, > 0 (>= 0 with `allow_zero`) and at most MAX_RATE; else an error saying so."""
    (non_negative if allow_zero else positive)(name, value)
    if value > MAX_RATE:
        raise ValueError(
            f"{name} must be at most {MAX_RATE:.3g} (float32's largest number, in which torch's optimizers hold the "
            f"rate), got {value!r}; learning rates are usually between 1e-6 and 10"
        )
    return value


def check_rate_slice(name: str, lo, hi) -> None:
    """Refuse `slice(lo, hi)` of per-group rates with lo > hi: such a slice spreads rates from its start (the first
    parameter group, the body) to its stop (the last group, the head), and reversed it would train the body faster
    than the new head, the opposite of what discriminative rates are for. A list says falling rates explicitly."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(
            f"{name}=slice({lo!r}, {hi!r}) is reversed: a slice gives its start to the first parameter group (the "
            f"body) and its stop to the last (the head), so the body would train faster than the head. Pass "
            f"slice({hi!r}, {lo!r}), or a list with one rate per group if falling rates are what you mean"
        )


def wrap_title(text: str, width: int = 70) -> str:
    """A plot title broken into lines of at most `width` characters (a schedule's repr can be long)."""
    return "\n".join(textwrap.wrap(text, width))


# ----- the common shape of every schedule -------------------------------------------------------------------------
class Configured:
    """repr, equality and state_dict, all read from `config()`: the constructor arguments, in order."""

    def config(self) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.state_dict() == other.state_dict()

    def __hash__(self) -> int:
        return hash(repr(self))

    def state_dict(self) -> dict:
        """`config()` as plain values (data/state.py's `plain`): nested schedules as their state dicts, tuples as
        lists, so that equal schedules have equal states."""
        config = map_leaves(lambda v: v.state_dict() if isinstance(v, Configured) else v, self.config())
        return {"kind": type(self).__name__, **plain(config, f"{type(self).__name__}.config()", config=True)}


class Schedule(Configured):
    """A pure function of a position. Subclasses set `domain` ('pct', 'step' or None for any) and `value(pos)`."""

    domain: str | None = "pct"

    def __call__(self, pos: float) -> float:
        if self.domain == "pct" and not -BOUNDARY_TOL <= pos <= 1 + BOUNDARY_TOL:
            raise ValueError(
                f"{self!r} is a function of the fraction of training, in [0, 1]; got position {pos!r}. "
                "With ParamScheduler use unit='pct'."
            )
        if self.domain == "step" and pos < 0:
            raise ValueError(f"{self!r} is a function of an update count t >= 0; got position {pos!r}")
        return float(self.value(pos))

    def value(self, pos: float) -> float:
        raise NotImplementedError

    def positions(self, n: int) -> list[float]:
        """The positions `plot(n)` samples: i/n for i < n on the 'pct' clock (batch i of n), else 0..n-1."""
        int_at_least("n", n, 1)
        return [i / n for i in range(n)] if self.domain == "pct" else list(range(n))

    def plot(self, n: int = 100, ax=None):
        """Plot the schedule at `positions(n)`, before any training; returns the matplotlib Figure."""
        import matplotlib.pyplot as plt

        xs = self.positions(n)
        if ax is None:
            fig, ax = plt.subplots(figsize=(5, 3.5))
        else:
            fig = ax.figure
        ax.plot(xs, [self(x) for x in xs])
        ax.set_xlabel("fraction of training (batch i of n at i/n)" if self.domain == "pct" else "step t")
        ax.set_title(wrap_title(repr(self)), fontsize=8)
        return fig


# ----- building blocks on the 'pct' clock: start at pct 0, end at pct 1 --------------------------------------------
class Lin(Schedule):
    """Linear from `start` (pct 0) to `end` (pct 1)."""

    def __init__(self, start: float, end: float):
        self.start, self.end = real("start", start), real("end", end)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end}

    def value(self, pct):
        return self.start + (self.end - self.start) * pct


class Cos(Schedule):
    """Half a cosine from `start` (pct 0) to `end` (pct 1): flat at both ends."""

    def __init__(self, start: float, end: float):
        self.start, self.end = real("start", start), real("end", end)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end}

    def value(self, pct):
        return self.start + (self.end - self.start) * (1 - math.cos(math.pi * pct)) / 2


class Exp(Schedule):
    """Geometric from `start` (pct 0) to `end` (pct 1): a straight line on a log axis. Both must be > 0."""

    def __init__(self, start: float, end: float):
        self.start, self.end = positive("start", start), positive("end", end)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end}

    def value(self, pct):
        return self.start * (self.end / self.start) ** pct


class Poly(Schedule):
    """`start + (end - start) * pct**power`: power 1 is linear, power 2 starts slow."""

    def __init__(self, start: float, end: float, power: float):
        self.start, self.end, self.power = real("start", start), real("end", end), positive("power", power)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end, "power": self.power}

    def value(self, pct):
        return self.start + (self.end - self.start) * pct**self.power


class Const(Schedule):
    """The same value everywhere, on either clock."""

    domain = None

    def __init__(self, value: float):
        self.constant = real("value", value)

    def config(self) -> dict:
        return {"value": self.constant}

    def value(self, pos):
        return self.constant


class Combine(Schedule):
    """Phases run one after another: phase k covers a fraction `pcts[k]` of training and sees its own pct in [0, 1].

    The phase fractions must sum to 1 (within 1e-6). A position on a boundary belongs to the phase starting there,
    and pct == 1 to the last phase (its end).
    """

    def __init__(self, pcts: Sequence[float], scheds: Sequence[Schedule]):
        if not isinstance(pcts, Sequence) or not isinstance(scheds, Sequence):
            raise TypeError("pcts and scheds must be lists (one phase fraction and one schedule per phase)")
        if len(pcts) != len(scheds) or len(pcts) == 0:
            raise ValueError(
                f"pcts and scheds must have the same, non-zero length, got {len(pcts)} pcts and {len(scheds)} scheds"
            )
        for i, p in enumerate(pcts):
            positive(f"pcts[{i}]", p)
        if abs(sum(pcts) - 1) > 1e-6:
            raise ValueError(f"pcts must sum to 1 (they split the whole of training), got sum {sum(pcts)!r}: {pcts}")
        for i, s in enumerate(scheds):
            check_schedule(f"scheds[{i}]", s)
            if s.domain == "step":
                raise ValueError(f"scheds[{i}] = {s!r} counts steps; combine needs schedules of pct (Lin, Cos, ...)")
        self.pcts, self.scheds = tuple(pcts), tuple(scheds)
        # Phase k spans [starts[k], ends[k]); the last phase ends at exactly 1 whatever the rounding of the sum.
        self._starts = [0.0]
        for p in self.pcts[:-1]:
            self._starts.append(self._starts[-1] + p)
        self._ends = self._starts[1:] + [1.0]

    def config(self) -> dict:
        return {"pcts": self.pcts, "scheds": self.scheds}

    def value(self, pct):
        phase = max(0, min(len(self.scheds) - 1, bisect.bisect_right(self._starts, pct + BOUNDARY_TOL) - 1))
        start, end = self._starts[phase], self._ends[phase]
        local = min(1.0, max(0.0, (pct - start) / (end - start)))
        return self.scheds[phase].value(local)  # `local` is in [0, 1] by construction: no range check per call


def combine(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Combine:
    """Run `scheds` one after another, phase k over a fraction `pcts[k]` of training (fastai's combine_scheds)."""
    return Combine(pcts, scheds)


# ----- rebuilding from a state dict --------------------------------------------------------------------------------
def schedule_kinds() -> dict[str, type]:
    """The kinds a state dict may name, by class name: a whitelist, never a module path, so loading a state dict
    can't run arbitrary code."""
    # Imported here, not at the top: the cycles and the decays build on this module.
    from .cycles import SGDR, Cyclical, OneCycle
    from .decay import CosineDecay, Factor, MultiFactor, SquareRoot, Warmup

    return {cls.__name__: cls for cls in (Lin, Cos, Exp, Poly, Const, Combine, OneCycle, SGDR, Cyclical, SquareRoot,
                                          Factor, MultiFactor, CosineDecay, Warmup)}


def schedule_from_state(state: dict):
    """Rebuild the schedule (or OneCycle) that `state_dict()` described."""
    if not isinstance(state, dict) or "kind" not in state:
        raise TypeError(f"expected a schedule state dict with a 'kind' key, got {state!r}")
    kinds = schedule_kinds()
    cls = kinds.get(state["kind"])
    if cls is None:
        raise ValueError(f"unknown schedule kind {state['kind']!r}; known kinds: {', '.join(kinds)}")
    return cls(**{k: _rebuild(v) for k, v in state.items() if k != "kind"})


def _rebuild(value):
    if isinstance(value, dict) and "kind" in value:
        return schedule_from_state(value)
    if isinstance(value, list):
        return [_rebuild(v) for v in value]
    return value


def scheds_state(value, describe) -> dict | list[dict]:
    """A scheduler's entry (one schedule or a list, one per group) as plain values: a schedule object as its state
    dict, any other callable as `{'kind': 'callable', 'repr': describe(it)}`, which cannot be rebuilt."""
    def entry(sched):
        return sched.state_dict() if isinstance(sched, Schedule) else {"kind": "callable", "repr": describe(sched)}

    return [entry(s) for s in value] if isinstance(value, list) else entry(value)


def scheds_from_state(name: str, saved, current):
    """The entry `scheds_state` saved for hyperparameter `name`, rebuilt; a saved plain callable is taken from
    `current` (the scheduler's own entry), which must be a callable in the same place."""
    def rebuild(saved_one, current_one):
        if saved_one["kind"] != "callable":
            return schedule_from_state(saved_one)
        if current_one is None or isinstance(current_one, Schedule):
            raise ValueError(
                f"the saved schedule for {name!r} was a plain callable ({saved_one['repr']}), which cannot be "
                "rebuilt from a checkpoint: create the ParamScheduler with that same callable, then load"
            )
        return current_one

    if isinstance(saved, list):
        currents = current if isinstance(current, list) and len(current) == len(saved) else [None] * len(saved)
        return [rebuild(s, c) for s, c in zip(saved, currents, strict=True)]
    return rebuild(saved, None if isinstance(current, list) else current)
