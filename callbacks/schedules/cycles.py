"""Cycles: one-cycle (Smith, as fastai's fit_one_cycle runs it), SGDR (cosine with warm restarts) and Smith's
cyclical learning rates (torch's CyclicLR). Each recipe's defaults are declared once here (`ONE_CYCLE`,
`SGDR_DEFAULTS`, `CYCLICAL`) and referenced by the schedules, the callbacks and the learner's recipes."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ...data.checks import in_unit_interval, int_at_least, non_negative, one_of, positive, real
from .base import BOUNDARY_TOL, Combine, Configured, Const, Cos, Lin, Schedule, check_rate, wrap_title


@dataclass(frozen=True)
class OneCycleDefaults:
    """The defaults of `OneCycle`, `one_cycle`, `OneCycleCallback` and `Learner.fit_one_cycle`: fastai v1's."""

    div_factor: float = 25.0
    pct_start: float = 0.3
    final_div: float | None = None  # None: div_factor * 1e4
    moms: tuple[float, ...] | None = (0.95, 0.85)
    anneal_strategy: str = "cos"
    three_phase: bool = False


@dataclass(frozen=True)
class FlatCosDefaults:
    """The defaults of `flat_cos`, `FlatCosCallback` and `Learner.fit_flat_cos`: fastai v2's `fit_flat_cos`."""

    pct_start: float = 0.75
    div_final: float = 1e5


@dataclass(frozen=True)
class SGDRDefaults:
    """The defaults of `SGDR`, `sgdr`, `SGDRCallback` and `Learner.fit_sgdr`."""

    cycle_mult: int = 2
    eta_min: float = 0.0


@dataclass(frozen=True)
class CyclicalDefaults:
    """The defaults of `Cyclical`, `cyclical` and `CyclicLRCallback`: torch's CyclicLR's."""

    mode: str = "triangular"
    gamma: float = 1.0
    base_momentum: float = 0.8
    max_momentum: float = 0.9


ONE_CYCLE = OneCycleDefaults()
FLAT_COS = FlatCosDefaults()
ANNEAL_STRATEGIES = ("cos", "linear")
SGDR_DEFAULTS = SGDRDefaults()
CYCLICAL = CyclicalDefaults()


# ----- one-cycle ---------------------------------------------------------------------------------------------------
class OneCycle(Configured):
    """Smith's one-cycle policy: `lr` and `mom`, two schedules of pct, with the shape and defaults of fastai v1's
    `fit_one_cycle` (the blog's) on fastai v2's clock.

    lr: cosine from `max_lr/div_factor` up to `max_lr` over the first `pct_start` of training, then cosine down to
    `max_lr/final_div` (`final_div` defaults to `div_factor * 1e4`, as in fastai v1).
    mom: cosine from `moms[0]` to `moms[1]` while lr rises, then to `moms[2]` (`moms[0]` for a 2-tuple, as fastai
    v1's 2-tuple `moms` does); `moms=None` schedules no momentum (`mom` is then None).

    Not itself callable: unpack it (`lr, mom = one_cycle(0.1)`) or hand `scheds()` to a ParamScheduler.

    The clock is fastai v2's (`ParamScheduler` with `combine_scheds`): batch i of N runs at pct i/N, the phases
    split exactly at pct `pct_start`, so the lr peaks at the first batch with i/N >= pct_start, and the last batch,
    (N-1)/N, stops one step short of `max_lr/final_div`. fastai v1 splits at batch int(pct_start*N) instead: the
    same values when pct_start*N is a whole number, else its peak comes one batch earlier. torch's OneCycleLR maps
    step i to i/(pct_start*N - 1) in the first phase and ends exactly on the final lr at step N-1, so it peaks one
    batch earlier. fastai v2's own defaults differ (pct_start 0.25, div_final 1e5, moms (0.95, 0.85, 0.95)).
    torch's `final_div_factor` is our `final_div / div_factor`.

    torch's options, with OneCycleLR's meaning: `anneal_strategy='linear'` runs every phase in a straight line
    instead of half a cosine; `three_phase=True` (needs `pct_start < 0.5`) goes up over `pct_start`, back down to
    `max_lr/div_factor` over the next `pct_start`, then anneals to `max_lr/final_div` over the rest, the momentum
    going down, back up, then from `moms[0]` to the end value (flat for a 2-tuple, as torch holds max_momentum).
    """

    def __init__(
        self,
        max_lr: float,
        div_factor: float = ONE_CYCLE.div_factor,
        pct_start: float = ONE_CYCLE.pct_start,
        final_div: float | None = ONE_CYCLE.final_div,
        moms: Sequence[float] | None = ONE_CYCLE.moms,
        anneal_strategy: str = ONE_CYCLE.anneal_strategy,
        three_phase: bool = ONE_CYCLE.three_phase,
    ):
        self.max_lr = check_rate("max_lr", max_lr)
        self.div_factor = at_least_one("div_factor", div_factor, "the start rate max_lr/div_factor")
        if not 0 < real("pct_start", pct_start) < 1:
            raise ValueError(
                f"pct_start must be in (0, 1) (the fraction of training spent raising the lr), got {pct_start!r}"
            )
        self.pct_start = pct_start
        self.final_div = at_least_one("final_div", div_factor * 1e4 if final_div is None else final_div,
                                      "the final rate max_lr/final_div")
        if moms is not None:
            if not isinstance(moms, Sequence) or len(moms) not in (2, 3):
                raise ValueError(f"moms must be a 2-tuple (start, mid) or a 3-tuple (start, mid, end), got {moms!r}")
            moms = tuple(in_unit_interval(f"moms[{i}]", m) for i, m in enumerate(moms))
        self.moms = moms
        self.anneal_strategy = one_of("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
        if not isinstance(three_phase, bool):
            raise TypeError(f"three_phase must be True or False, got {three_phase!r}")
        if three_phase and pct_start >= 0.5:
            raise ValueError(f"pct_start must be in (0, 0.5) with three_phase=True (the lr goes up over pct_start "
                             f"and back down over another pct_start), got {pct_start!r}")
        self.three_phase = three_phase

        anneal = Cos if anneal_strategy == "cos" else Lin
        low, final = max_lr / div_factor, max_lr / self.final_div
        if three_phase:
            phases = (pct_start, pct_start, 1 - 2 * pct_start)
            self.lr = Combine(phases, (anneal(low, max_lr), anneal(max_lr, low), anneal(low, final)))
        else:
            phases = (pct_start, 1 - pct_start)
            self.lr = Combine(phases, (anneal(low, max_lr), anneal(max_lr, final)))
        self.mom = None
        if moms is not None:
            start, mid = moms[0], moms[1]
            end = moms[2] if len(moms) == 3 else start
            if three_phase:
                last = Const(start) if end == start else anneal(start, end)
                self.mom = Combine(phases, (anneal(start, mid), anneal(mid, start), last))
            else:
                self.mom = Combine(phases, (anneal(start, mid), anneal(mid, end)))

    def config(self) -> dict:
        config = {"max_lr": self.max_lr, "div_factor": self.div_factor, "pct_start": self.pct_start,
                  "final_div": self.final_div, "moms": self.moms}
        # torch's options appear (in the repr and the state dict) only when they differ from fastai's shape.
        if self.anneal_strategy != ONE_CYCLE.anneal_strategy:
            config["anneal_strategy"] = self.anneal_strategy
        if self.three_phase:
            config["three_phase"] = True
        return config

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
        fig.suptitle(wrap_title(repr(self), 120), fontsize=8)
        fig.tight_layout()
        return fig


def at_least_one(name: str, value, what: str):
    """A divisor of the peak rate: > 0, and >= 1 so that `what` stays at or below the peak."""
    if positive(name, value) < 1:
        raise ValueError(f"{name} must be >= 1 ({what} is at most the peak), got {value!r}")
    return value


def one_cycle(
    max_lr: float,
    div_factor: float = ONE_CYCLE.div_factor,
    pct_start: float = ONE_CYCLE.pct_start,
    final_div: float | None = ONE_CYCLE.final_div,
    moms: Sequence[float] | None = ONE_CYCLE.moms,
    anneal_strategy: str = ONE_CYCLE.anneal_strategy,
    three_phase: bool = ONE_CYCLE.three_phase,
) -> OneCycle:
    """The one-cycle lr and momentum schedules (see `OneCycle`); `lr, mom = one_cycle(...)` unpacks them.

    Args:
        max_lr: the peak learning rate (> 0).
        div_factor: the cycle starts at `max_lr / div_factor` (>= 1).
        pct_start: the fraction of training, in (0, 1), spent raising the rate to `max_lr`.
        final_div: the cycle ends at `max_lr / final_div` (>= 1); None: `div_factor * 1e4`, as in fastai v1.
        moms: the momentum goes from `moms[0]` to `moms[1]` while the rate rises, then to `moms[2]` (back to
            `moms[0]` for a pair); each in [0, 1]. None: no momentum schedule (`mom` is None).
        anneal_strategy: 'cos' (each phase half a cosine) or 'linear' (a straight line), as in torch's OneCycleLR.
        three_phase: as in torch's OneCycleLR: up over `pct_start`, back down to the start rate over another
            `pct_start` (so `pct_start < 0.5`), then down to the final rate.
    """
    return OneCycle(max_lr, div_factor, pct_start, final_div, moms, anneal_strategy, three_phase)


# ----- flat, then cosine (fastai's fit_flat_cos) ---------------------------------------------------------------------
def flat_cos(lr: float, pct_start: float = FLAT_COS.pct_start, div_final: float = FLAT_COS.div_final) -> Combine:
    """`lr` held flat for the first `pct_start` of training, then half a cosine down to `lr / div_final` (fastai v2's
    `fit_flat_cos`, `combined_cos(pct_start, lr, lr, lr / div_final)`), a function of pct."""
    check_rate("lr", lr)
    if not 0 < real("pct_start", pct_start) < 1:
        raise ValueError(f"pct_start must be in (0, 1) (the fraction of training at the flat rate), got {pct_start!r}")
    at_least_one("div_final", div_final, "the final rate lr/div_final")
    return Combine((pct_start, 1 - pct_start), (Const(lr), Cos(lr, lr / div_final)))


# ----- SGDR --------------------------------------------------------------------------------------------------------
class SGDR(Schedule):
    """Cosine from `max_lr` to `eta_min` within each cycle, restarting at `max_lr` (Loshchilov & Hutter).

    A function of pct: cycle k lasts `cycle_len * cycle_mult**k` of the `total_epochs` =
    `cycle_len * sum(cycle_mult**k for k < n_cycles)`. `cycle_mult=1` gives equal cycles.
    """

    def __init__(self, max_lr: float, n_cycles: int, cycle_len: int, cycle_mult: int = SGDR_DEFAULTS.cycle_mult,
                 eta_min: float = SGDR_DEFAULTS.eta_min):
        self.max_lr = check_rate("max_lr", max_lr)
        self.n_cycles = int_at_least("n_cycles", n_cycles, 1)
        self.cycle_len = int_at_least("cycle_len", cycle_len, 1)
        self.cycle_mult = int_at_least("cycle_mult", cycle_mult, 1)
        self.eta_min = non_negative("eta_min", eta_min)
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
        cycle = max(0, min(self.n_cycles - 1, bisect.bisect_right(self._starts, pos + BOUNDARY_TOL * self._units) - 1))
        local = min(1.0, max(0.0, (pos - self._starts[cycle]) / self._lengths[cycle]))
        return self.eta_min + (self.max_lr - self.eta_min) * (1 + math.cos(math.pi * local)) / 2


def sgdr(max_lr: float, n_cycles: int, cycle_len: int, cycle_mult: int = SGDR_DEFAULTS.cycle_mult,
         eta_min: float = SGDR_DEFAULTS.eta_min) -> SGDR:
    """SGDR with warm restarts as a function of pct; `.total_epochs` is the fit length the cycles assume.

    Args:
        max_lr: the rate each cycle starts (restarts) at (> 0).
        n_cycles: the number of cycles (>= 1).
        cycle_len: the length of the first cycle, in epochs (>= 1).
        cycle_mult: each cycle is `cycle_mult` times as long as the one before (an integer >= 1; 1: equal cycles).
        eta_min: the rate each cycle anneals down to, at its end (>= 0 and <= `max_lr`).
    """
    return SGDR(max_lr, n_cycles, cycle_len, cycle_mult, eta_min)


# ----- cyclical learning rates (Smith 2015), on the step clock -------------------------------------------------------
CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


class Cyclical(Schedule):
    """Smith's cyclical schedule of the batch index t, with torch's CyclicLR formulas.

    Goes from `start` (t = 0) to `mid` (t = step_size) and back over each cycle of step_size + step_size_down
    steps (`step_size_down=None`: the same as `step_size`, a symmetric cycle; torch's `step_size_up` and
    `step_size_down`). The distance |mid - start| is scaled by 1 ('triangular'), halved each cycle
    ('triangular2') or multiplied by gamma**t ('exp_range'). A momentum schedule is the same shape with
    start=max_momentum, mid=base_momentum: see `momentum()`.
    """

    domain = "step"

    def __init__(self, start: float, mid: float, step_size: int, mode: str = CYCLICAL.mode,
                 gamma: float = CYCLICAL.gamma, step_size_down: int | None = None):
        self.start, self.mid = real("start", start), real("mid", mid)
        self.step_size = int_at_least("step_size", step_size, 1)
        self.step_size_down = None if step_size_down is None else int_at_least("step_size_down", step_size_down, 1)
        if mode not in CYCLIC_MODES:
            raise ValueError(f"mode must be one of {CYCLIC_MODES}, got {mode!r}")
        self.mode = mode
        if not 0 < real("gamma", gamma) <= 1:
            raise ValueError(f"gamma must be in (0, 1] (the exp_range decay per step), got {gamma!r}")
        self.gamma = gamma

    def config(self) -> dict:
        config = {"start": self.start, "mid": self.mid, "step_size": self.step_size, "mode": self.mode,
                  "gamma": self.gamma}
        if self.step_size_down is not None:  # shown only for an asymmetric cycle
            config["step_size_down"] = self.step_size_down
        return config

    def value(self, t):
        down = self.step_size if self.step_size_down is None else self.step_size_down
        cycle_size = self.step_size + down
        step_ratio = self.step_size / cycle_size
        cycle = math.floor(1 + t / cycle_size)  # 1-based, as torch counts it
        x = 1.0 + t / cycle_size - cycle  # position in the cycle, in [0, 1)
        scale_factor = x / step_ratio if x <= step_ratio else (x - 1) / (step_ratio - 1)
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:
            amplitude = self.gamma**t
        return self.start + (self.mid - self.start) * scale_factor * amplitude

    def momentum(self, base_momentum: float = CYCLICAL.base_momentum,
                 max_momentum: float = CYCLICAL.max_momentum) -> Cyclical:
        """The inverse momentum schedule (CyclicLR's cycle_momentum): max_momentum when this is lowest, and back."""
        in_unit_interval("base_momentum", base_momentum)
        in_unit_interval("max_momentum", max_momentum)
        return Cyclical(max_momentum, base_momentum, self.step_size, self.mode, self.gamma, self.step_size_down)


def cyclical(base_lr, max_lr, step_size, mode, gamma=CYCLICAL.gamma, step_size_down=None) -> Cyclical:
    """Smith's cyclical lr from `base_lr` (>= 0) up to `max_lr` (> 0) over `step_size` batches and back over
    `step_size_down` (default: `step_size`): a function of the batch index, as torch's CyclicLR.

    Args:
        base_lr (float): the lowest rate, where each cycle starts (>= 0).
        max_lr (float): the highest rate, reached `step_size` batches into each cycle (>= `base_lr`).
        step_size (int): batches from `base_lr` up to `max_lr` (>= 1): torch's `step_size_up`.
        mode (str): 'triangular' (every cycle the same), 'triangular2' (the amplitude halved after each cycle) or
            'exp_range' (the amplitude multiplied by `gamma**t` at batch t).
        gamma (float): the decay per batch of 'exp_range', in (0, 1]; the other modes ignore it.
        step_size_down (int | None): batches from `max_lr` back down to `base_lr`; None: `step_size` (symmetric).
    """
    non_negative("base_lr", base_lr)
    check_rate("max_lr", max_lr)
    if base_lr > max_lr:
        raise ValueError(
            f"base_lr must be <= max_lr (the cycle goes from base_lr up to max_lr and back), got base_lr={base_lr!r} "
            f"> max_lr={max_lr!r}: swap them"
        )
    return Cyclical(base_lr, max_lr, step_size, mode, gamma, step_size_down)


def triangular(base_lr: float, max_lr: float, step_size: int) -> Cyclical:
    """lr from base_lr up to max_lr over `step_size` batches and back, forever (Smith's 'triangular')."""
    return cyclical(base_lr, max_lr, step_size, "triangular")


def triangular2(base_lr: float, max_lr: float, step_size: int) -> Cyclical:
    """Like `triangular`, with the amplitude halved after each cycle."""
    return cyclical(base_lr, max_lr, step_size, "triangular2")


def exp_range(base_lr: float, max_lr: float, step_size: int, gamma: float) -> Cyclical:
    """Like `triangular`, with the amplitude multiplied by gamma**t at batch t."""
    return cyclical(base_lr, max_lr, step_size, "exp_range", gamma)
