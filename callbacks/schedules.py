"""Hyperparameter schedules: pure functions of a position, with a readable repr, that plot themselves.

A schedule holds only its configuration, never a counter: ``sched(pos)`` gives the same value every time, so a
resumed fit needs nothing but the learner's counters. Two clocks exist:

- ``domain == 'pct'``: the fraction of the fit done, in [0, 1]; batch ``i`` of ``N`` sees ``i / N``
  (``Lin``, ``Cos``, ``Exp``, ``Poly``, ``combine``, ``one_cycle``, ``sgdr``).
- ``domain == 'step'``: an update count ``t = 0, 1, 2, ...``: the global batch index or the epoch index, whichever
  unit the ``ParamScheduler`` feeds (``triangular``, ``triangular2``, ``exp_range``, and the d2l trackers
  ``square_root``, ``factor``, ``multi_factor``, ``cosine``, ``warmup``).

``Const`` works on either clock. Every schedule has ``state_dict()`` (plain values only, so
``torch.load(weights_only=True)`` reads it back) and ``schedule_from_state(state)`` rebuilds it from a whitelist of
the kinds defined here.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Sequence

# A position this close to a phase or cycle boundary belongs to the phase that starts there: `i / N` computed in
# floating point can land a hair before the boundary it means (e.g. 0.1 + 0.2 != 0.3).
_BOUNDARY_TOL = 1e-12


# ----- parameter checks: each names the parameter and the range it must lie in --------------------------------------
def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _positive(name: str, value) -> float:
    if _real(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _non_negative(name: str, value) -> float:
    if _real(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def _int_at_least(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _momentum(name: str, value) -> float:
    if not 0 <= _real(name, value) < 1:
        raise ValueError(f"{name} must be in [0, 1) (a momentum or Adam beta1), got {value!r}")
    return value


def _schedule(name: str, value) -> Schedule:
    if not isinstance(value, Schedule):
        raise TypeError(
            f"{name} must be a schedule from callbacks.schedules (Lin, Cos, ...), got {type(value).__name__} "
            f"({value!r}); only schedule objects can be saved and rebuilt"
        )
    return value


def _plain(value):
    """Configuration value -> what goes into a state dict: nested schedules as dicts, tuples as lists."""
    if isinstance(value, (Schedule, OneCycle)):
        return value.state_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----- the common shape of every schedule -------------------------------------------------------------------------
class _Configured:
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
        return {"kind": type(self).__name__, **{k: _plain(v) for k, v in self.config().items()}}


class Schedule(_Configured):
    """A pure function of a position. Subclasses set `domain` ('pct', 'step' or None for any) and `value(pos)`."""

    domain: str | None = "pct"

    def __call__(self, pos: float) -> float:
        if self.domain == "pct" and not -_BOUNDARY_TOL <= pos <= 1 + _BOUNDARY_TOL:
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
        _int_at_least("n", n, 1)
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
        ax.set_title(_wrap(repr(self)), fontsize=8)
        return fig


def _wrap(text: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# ----- building blocks on the 'pct' clock: start at pct 0, end at pct 1 --------------------------------------------
class Lin(Schedule):
    """Linear from `start` (pct 0) to `end` (pct 1)."""

    def __init__(self, start: float, end: float):
        self.start, self.end = _real("start", start), _real("end", end)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end}

    def value(self, pct):
        return self.start + (self.end - self.start) * pct


class Cos(Schedule):
    """Half a cosine from `start` (pct 0) to `end` (pct 1): flat at both ends."""

    def __init__(self, start: float, end: float):
        self.start, self.end = _real("start", start), _real("end", end)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end}

    def value(self, pct):
        return self.start + (self.end - self.start) * (1 - math.cos(math.pi * pct)) / 2


class Exp(Schedule):
    """Geometric from `start` (pct 0) to `end` (pct 1): a straight line on a log axis. Both must be > 0."""

    def __init__(self, start: float, end: float):
        self.start, self.end = _positive("start", start), _positive("end", end)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end}

    def value(self, pct):
        return self.start * (self.end / self.start) ** pct


class Poly(Schedule):
    """`start + (end - start) * pct**power`: power 1 is linear, power 2 starts slow."""

    def __init__(self, start: float, end: float, power: float):
        self.start, self.end, self.power = _real("start", start), _real("end", end), _positive("power", power)

    def config(self) -> dict:
        return {"start": self.start, "end": self.end, "power": self.power}

    def value(self, pct):
        return self.start + (self.end - self.start) * pct**self.power


class Const(Schedule):
    """The same value everywhere, on either clock."""

    domain = None

    def __init__(self, value: float):
        self.constant = _real("value", value)

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
            _positive(f"pcts[{i}]", p)
        if abs(sum(pcts) - 1) > 1e-6:
            raise ValueError(f"pcts must sum to 1 (they split the whole of training), got sum {sum(pcts)!r}: {pcts}")
        for i, s in enumerate(scheds):
            _schedule(f"scheds[{i}]", s)
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
        phase = max(0, min(len(self.scheds) - 1, bisect.bisect_right(self._starts, pct + _BOUNDARY_TOL) - 1))
        start, end = self._starts[phase], self._ends[phase]
        local = min(1.0, max(0.0, (pct - start) / (end - start)))
        return self.scheds[phase](local)


def combine(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Combine:
    """Run `scheds` one after another, phase k over a fraction `pcts[k]` of training (fastai's combine_scheds)."""
    return Combine(pcts, scheds)


# ----- one-cycle ---------------------------------------------------------------------------------------------------
class OneCycle(_Configured):
    """Smith's one-cycle policy as fastai implements it: `lr` and `mom`, two schedules of pct.

    lr: cosine from `max_lr/div_factor` up to `max_lr` over the first `pct_start` of training, then cosine down to
    `max_lr/final_div` (`final_div` defaults to `div_factor * 1e4`, as in fastai).
    mom: cosine from `moms[0]` to `moms[1]` while lr rises, then to `moms[2]` (`moms[0]` for a 2-tuple);
    `moms=None` schedules no momentum (`mom` is then None).

    Not itself callable: unpack it (`lr, mom = one_cycle(0.1)`) or hand `scheds()` to a ParamScheduler.

    Batch i of N runs at pct i/N (fastai v2): the lr peaks at batch pct_start*N and the last batch, (N-1)/N, stops
    one step short of `max_lr/final_div`. torch's OneCycleLR maps step i to i/(pct_start*N - 1) in the first phase
    and ends exactly on the final lr at step N-1, so it peaks one batch earlier; fastai v1 (the blog) rounds the
    peak down to batch int(pct_start*N). torch's `final_div_factor` is our `final_div / div_factor`.
    """

    def __init__(
        self,
        max_lr: float,
        div_factor: float = 25.0,
        pct_start: float = 0.3,
        final_div: float | None = None,
        moms: Sequence[float] | None = (0.95, 0.85),
    ):
        self.max_lr = _positive("max_lr", max_lr)
        self.div_factor = _positive("div_factor", div_factor)
        if not 0 < _real("pct_start", pct_start) < 1:
            raise ValueError(
                f"pct_start must be in (0, 1) (the fraction of training spent raising the lr), got {pct_start!r}"
            )
        self.pct_start = pct_start
        self.final_div = _positive("final_div", div_factor * 1e4 if final_div is None else final_div)
        if moms is not None:
            if not isinstance(moms, Sequence) or len(moms) not in (2, 3):
                raise ValueError(f"moms must be a 2-tuple (start, mid) or a 3-tuple (start, mid, end), got {moms!r}")
            moms = tuple(_momentum(f"moms[{i}]", m) for i, m in enumerate(moms))
        self.moms = moms

        phases = (pct_start, 1 - pct_start)
        self.lr = Combine(phases, (Cos(max_lr / div_factor, max_lr), Cos(max_lr, max_lr / self.final_div)))
        self.mom = None
        if moms is not None:
            start, mid = moms[0], moms[1]
            end = moms[2] if len(moms) == 3 else start
            self.mom = Combine(phases, (Cos(start, mid), Cos(mid, end)))

    def config(self) -> dict:
        return {"max_lr": self.max_lr, "div_factor": self.div_factor, "pct_start": self.pct_start,
                "final_div": self.final_div, "moms": self.moms}

    def __iter__(self):
        return iter((self.lr, self.mom))

    def scheds(self) -> dict:
        """`{'lr': ..., 'mom': ...}` for a ParamScheduler (no 'mom' when `moms` is None)."""
        return {"lr": self.lr} if self.mom is None else {"lr": self.lr, "mom": self.mom}

    def plot(self, n: int = 100, ax=None):
        """lr and momentum side by side at pct i/n; `ax` may be a pair of matplotlib axes. Returns the Figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        else:
            fig = ax[0].figure
        for axis, sched, name in zip(ax, (self.lr, self.mom), ("learning rate", "momentum"), strict=True):
            xs = self.lr.positions(n)
            if sched is not None:
                axis.plot(xs, [sched(x) for x in xs])
            axis.set_title(name)
            axis.set_xlabel("fraction of training (batch i of n at i/n)")
        fig.suptitle(_wrap(repr(self), 120), fontsize=8)
        fig.tight_layout()
        return fig


def one_cycle(
    max_lr: float,
    div_factor: float = 25.0,
    pct_start: float = 0.3,
    final_div: float | None = None,
    moms: Sequence[float] | None = (0.95, 0.85),
) -> OneCycle:
    """The one-cycle lr and momentum schedules (see `OneCycle`); `lr, mom = one_cycle(...)` unpacks them."""
    return OneCycle(max_lr, div_factor, pct_start, final_div, moms)


# ----- SGDR --------------------------------------------------------------------------------------------------------
class SGDR(Schedule):
    """Cosine from `max_lr` to `eta_min` within each cycle, restarting at `max_lr` (Loshchilov & Hutter).

    A function of pct: cycle k lasts `cycle_len * cycle_mult**k` of the `total_epochs` =
    `cycle_len * sum(cycle_mult**k for k < n_cycles)`. `cycle_mult=1` gives equal cycles.
    """

    def __init__(self, max_lr: float, n_cycles: int, cycle_len: int, cycle_mult: int = 2, eta_min: float = 0.0):
        self.max_lr = _positive("max_lr", max_lr)
        self.n_cycles = _int_at_least("n_cycles", n_cycles, 1)
        self.cycle_len = _int_at_least("cycle_len", cycle_len, 1)
        self.cycle_mult = _int_at_least("cycle_mult", cycle_mult, 1)
        self.eta_min = _non_negative("eta_min", eta_min)
        if eta_min > max_lr:
            raise ValueError(f"eta_min must be <= max_lr, got eta_min={eta_min!r} > max_lr={max_lr!r}")
        # Cycle lengths and starts in units of `cycle_len` epochs: integers, so the boundaries are exact.
        self._lengths = [self.cycle_mult**k for k in range(self.n_cycles)]
        self._starts = [sum(self._lengths[:k]) for k in range(self.n_cycles)]
        self._units = sum(self._lengths)

    @property
    def total_epochs(self) -> int:
        return self.cycle_len * self._units

    def config(self) -> dict:
        return {"max_lr": self.max_lr, "n_cycles": self.n_cycles, "cycle_len": self.cycle_len,
                "cycle_mult": self.cycle_mult, "eta_min": self.eta_min}

    def value(self, pct):
        pos = pct * self._units
        cycle = max(0, min(self.n_cycles - 1, bisect.bisect_right(self._starts, pos + _BOUNDARY_TOL * self._units) - 1))
        local = min(1.0, max(0.0, (pos - self._starts[cycle]) / self._lengths[cycle]))
        return self.eta_min + (self.max_lr - self.eta_min) * (1 + math.cos(math.pi * local)) / 2


def sgdr(max_lr: float, n_cycles: int, cycle_len: int, cycle_mult: int = 2, eta_min: float = 0.0) -> SGDR:
    """SGDR with warm restarts as a function of pct; `.total_epochs` is the fit length the cycles assume."""
    return SGDR(max_lr, n_cycles, cycle_len, cycle_mult, eta_min)


# ----- cyclical learning rates (Smith 2015), on the step clock -------------------------------------------------------
_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


class Cyclical(Schedule):
    """Smith's cyclical schedule of the batch index t, with torch's CyclicLR formulas.

    Goes from `start` (t = 0) to `mid` (t = step_size) and back over each cycle of 2*step_size steps. The distance
    |mid - start| is scaled by 1 ('triangular'), halved each cycle ('triangular2') or multiplied by gamma**t
    ('exp_range'). A momentum schedule is the same shape with start=max_momentum, mid=base_momentum:
    see `momentum()`.
    """

    domain = "step"

    def __init__(self, start: float, mid: float, step_size: int, mode: str = "triangular", gamma: float = 1.0):
        self.start, self.mid = _real("start", start), _real("mid", mid)
        self.step_size = _int_at_least("step_size", step_size, 1)
        if mode not in _CYCLIC_MODES:
            raise ValueError(f"mode must be one of {_CYCLIC_MODES}, got {mode!r}")
        self.mode = mode
        if not 0 < _real("gamma", gamma) <= 1:
            raise ValueError(f"gamma must be in (0, 1] (the exp_range decay per step), got {gamma!r}")
        self.gamma = gamma

    def config(self) -> dict:
        return {"start": self.start, "mid": self.mid, "step_size": self.step_size, "mode": self.mode,
                "gamma": self.gamma}

    def value(self, t):
        cycle_size = 2 * self.step_size
        cycle = math.floor(1 + t / cycle_size)  # 1-based, as torch counts it
        x = 1.0 + t / cycle_size - cycle  # position in the cycle, in [0, 1)
        scale_factor = x / 0.5 if x <= 0.5 else (x - 1) / (0.5 - 1)
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:
            amplitude = self.gamma**t
        return self.start + (self.mid - self.start) * scale_factor * amplitude

    def momentum(self, base_momentum: float = 0.8, max_momentum: float = 0.9) -> Cyclical:
        """The inverse momentum schedule (CyclicLR's cycle_momentum): max_momentum when this is lowest, and back."""
        _momentum("base_momentum", base_momentum)
        _momentum("max_momentum", max_momentum)
        return Cyclical(max_momentum, base_momentum, self.step_size, self.mode, self.gamma)


def _cyclical(base_lr, max_lr, step_size, mode, gamma=1.0) -> Cyclical:
    _non_negative("base_lr", base_lr)
    _positive("max_lr", max_lr)
    return Cyclical(base_lr, max_lr, step_size, mode, gamma)


def triangular(base_lr: float, max_lr: float, step_size: int) -> Cyclical:
    """lr from base_lr up to max_lr over `step_size` batches and back, forever (Smith's 'triangular')."""
    return _cyclical(base_lr, max_lr, step_size, "triangular")


def triangular2(base_lr: float, max_lr: float, step_size: int) -> Cyclical:
    """Like `triangular`, with the amplitude halved after each cycle."""
    return _cyclical(base_lr, max_lr, step_size, "triangular2")


def exp_range(base_lr: float, max_lr: float, step_size: int, gamma: float) -> Cyclical:
    """Like `triangular`, with the amplitude multiplied by gamma**t at batch t."""
    return _cyclical(base_lr, max_lr, step_size, "exp_range", gamma)


# ----- the d2l chapter's trackers, on the step clock -----------------------------------------------------------------
class SquareRoot(Schedule):
    """`lr0 * (t + 1) ** -0.5` (d2l's SquareRootScheduler)."""

    domain = "step"

    def __init__(self, lr0: float):
        self.lr0 = _positive("lr0", lr0)

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
        self.base = _positive("base", base)
        if not 0 < _real("factor", factor) <= 1:
            raise ValueError(f"factor must be in (0, 1] (the decay per step), got {factor!r}")
        self.factor = factor
        self.stop = _non_negative("stop", stop)

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
        self.base = _positive("base", base)
        if not isinstance(steps, Sequence) or len(steps) == 0:
            raise ValueError(f"steps must be a non-empty list of increasing ints >= 1, got {steps!r}")
        for i, s in enumerate(steps):
            _int_at_least(f"steps[{i}]", s, 1)
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must be strictly increasing, got {list(steps)}")
        self.steps = tuple(int(s) for s in steps)
        self.factor = _positive("factor", factor)

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
        self.base = _positive("base", base)
        self.final = _non_negative("final", final)
        self.max_update = _int_at_least("max_update", max_update, 1)
        self.warmup_steps = _int_at_least("warmup_steps", warmup_steps, 0)
        if warmup_steps >= max_update:
            raise ValueError(
                f"warmup_steps must be < max_update (the cosine needs at least one step), "
                f"got warmup_steps={warmup_steps} and max_update={max_update}"
            )
        self.warmup_begin = _non_negative("warmup_begin", warmup_begin)

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
        self.sched = _schedule("sched", sched)
        if sched.domain == "pct":
            raise ValueError(f"sched={sched!r} is a function of pct; warmup wraps schedules of a step count t")
        self.steps = _int_at_least("steps", steps, 1)
        self.begin = _real("begin", begin)

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
    """d2l's cosine schedule, pinned at `final` after `max_update`, with an optional linear warmup."""
    return CosineDecay(base, final, max_update, warmup_steps, warmup_begin)


def warmup(sched: Schedule, steps: int, begin: float = 0.0) -> Warmup:
    """Linear warmup over `steps` from `begin` to `sched(0)`, then `sched` shifted to start after the warmup."""
    return Warmup(sched, steps, begin)


# ----- rebuilding from a state dict --------------------------------------------------------------------------------
# A whitelist: a state dict names a kind, never a module path, so loading one can't run arbitrary code.
_KINDS = {cls.__name__: cls for cls in (Lin, Cos, Exp, Poly, Const, Combine, OneCycle, SGDR, Cyclical, SquareRoot,
                                        Factor, MultiFactor, CosineDecay, Warmup)}


def schedule_from_state(state: dict):
    """Rebuild the schedule (or OneCycle) that `state_dict()` described."""
    if not isinstance(state, dict) or "kind" not in state:
        raise TypeError(f"expected a schedule state dict with a 'kind' key, got {state!r}")
    cls = _KINDS.get(state["kind"])
    if cls is None:
        raise ValueError(f"unknown schedule kind {state['kind']!r}; known kinds: {', '.join(_KINDS)}")
    return cls(**{k: _rebuild(v) for k, v in state.items() if k != "kind"})


def _rebuild(value):
    if isinstance(value, dict) and "kind" in value:
        return schedule_from_state(value)
    if isinstance(value, list):
        return [_rebuild(v) for v in value]
    return value
