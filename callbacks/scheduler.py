"""ParamScheduler: set any optimizer hyperparameter from a schedule before every training batch.

`ParamScheduler({'lr': f, 'mom': g, 'wd': h}, unit='pct')` calls each schedule at the position of the batch about to
run and writes the value into the optimizer's parameter groups (through callbacks/hypers.py, the one writer). The
position: with unit='pct' the fraction of the fit done, `learn.pct_train` (batch i of N sees i/N); 'batch' the
fit's global training batch index, `learn.train_iter`; 'epoch' the epoch index, `learn.epoch` (constant within an
epoch, as torch's and d2l's epoch schedulers step).

A value may be one callable for every parameter group, or a list with one callable per group (discriminative
learning rates). Any callable works; the schedule objects of `cyclr.callbacks.schedules` also save and plot themselves.
`OneCycleCallback`, `FlatCosCallback`, `SGDRCallback` and `CyclicLRCallback` are ParamSchedulers with their
schedules built for you (their defaults are declared once, on the schedules). A callback may supply the end of a
schedule (SWA's averaging rate: `Callback.schedule_tails`, callbacks/schedule_tail.py), run as part of it.

Every value a fit will write, tails included, is computed and checked in `before_fit` at exactly the positions the
loop will feed: a schedule that leaves its range anywhere in the fit is refused before the first step, naming the
hyperparameter, the position and the value. Per batch the scheduler only evaluates and writes.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence

from ..data.checks import in_unit_interval, int_at_least, non_negative, user_stacklevel
from .core import ORDER, Callback
from .group_rates import check_lr_spec, lrs_per_group, one_or_per_group
from .hypers import has_hyper, hyper_range, out_of_range, writer
from .schedule_tail import with_tails
from .schedules.base import Schedule, scheds_from_state, scheds_state
from .schedules.cycles import CYCLICAL, FLAT_COS, ONE_CYCLE, SGDR_DEFAULTS, OneCycle, cyclical, flat_cos, sgdr
from .torch_scheduler import refuse_torch_scheduler

UNITS = ("pct", "batch", "epoch")
# The longest fit (in positions) whose scheduled values are kept from the check for the batches to read: 10^6
# floats, about 32 MB a hyperparameter; a longer fit evaluates its schedules per batch.
CACHED_POSITIONS = 1_000_000


def describe(sched) -> str:
    return repr(sched) if isinstance(sched, Schedule) else getattr(sched, "__qualname__", None) or repr(sched)


def evaluator(sched) -> Callable:
    """What computes `sched`'s value per batch: a schedule object's `value` directly (the positions a fit feeds are
    on its clock by construction), any other callable itself."""
    return sched.value if isinstance(sched, Schedule) else sched


class ParamScheduler(Callback):
    """Schedules hyperparameters per training batch: `scheds` maps a name ('lr', 'mom', 'wd', 'beta2' or any
    param_group key) to a schedule, or to a list of schedules, one per parameter group. See the module docstring.
    `before_fit` resolves and checks everything once: the group count, each key, and every value from the resume
    point on; `fit_scheds` are then the schedules the fit runs, with any tails callbacks supplied."""

    order = ORDER.scheduler

    def __init__(self, scheds: dict, unit: str = "pct"):
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if not isinstance(scheds, dict) or not scheds:
            raise TypeError(f"scheds must be a non-empty dict like {{'lr': sched}}, got {scheds!r}")
        self.unit = unit
        self.scheds = {name: self._checked(name, value) for name, value in scheds.items()}
        self.fit_scheds = self.scheds  # what the last fit ran: the schedules with the tails callbacks supplied
        # Built in before_fit: (write, evaluator, the values the check computed) for each value set before a batch,
        # and the loop counter (train_iter, or epoch) at the fit's first position, which those values start at.
        self._writes: list[tuple] = []
        self._first = 0

    def _checked(self, name, value):
        if not isinstance(name, str):
            raise TypeError(f"schedule names must be strings like 'lr' or 'mom', got {name!r}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError(f"the schedule list for {name!r} is empty; give one schedule per parameter group")
        for sched in values:
            if isinstance(sched, OneCycle):
                raise TypeError(f"{name!r}: a OneCycle holds two schedules; pass ParamScheduler(one_cycle(...)"
                                ".scheds()) or use OneCycleCallback")
            refuse_torch_scheduler(sched, f"the schedule for {name!r}")
            if not callable(sched):
                raise TypeError(f"the schedule for {name!r} must be callable as sched(position), got {sched!r}")
            domain = getattr(sched, "domain", None) if isinstance(sched, Schedule) else None
            if domain == "pct" and self.unit != "pct":
                raise ValueError(
                    f"{sched!r} for {name!r} is a function of the fraction of training; use unit='pct', "
                    f"not unit={self.unit!r}"
                )
            if domain == "step" and self.unit == "pct":
                raise ValueError(
                    f"{sched!r} for {name!r} is a function of a step count; use unit='batch' or unit='epoch'"
                )
        return values if isinstance(value, (list, tuple)) else value

    def __repr__(self) -> str:
        return f"{self.name}(unit={self.unit!r}, " + ", ".join(f"{k}={v!r}" for k, v in self.scheds.items()) + ")"

    def group_scheds(self, n_groups: int) -> dict:
        """The schedules of a fit over `n_groups` parameter groups: `scheds` as given (the recipes build theirs)."""
        return self.scheds

    # ----- hooks -------------------------------------------------------------------------------------------------
    def before_fit(self, learn) -> None:
        groups = learn.opt.param_groups
        opt_name = type(learn.opt).__name__
        scheds = self.group_scheds(len(groups))
        self.fit_scheds = with_tails(learn, scheds, self.unit)  # with the ends callbacks supply (SWA's rate)
        plan = []  # (name, group index or None for all, schedule, its evaluator, write)
        for name, value in self.fit_scheds.items():
            if name == "mom" and not all(has_hyper(g, "mom") for g in groups):
                warnings.warn(f"{opt_name} has no momentum or betas: the 'mom' schedule is ignored in this fit",
                              stacklevel=user_stacklevel())
                continue
            missing = [i for i, g in enumerate(groups) if not has_hyper(g, name)]
            if missing:
                raise ValueError(f"cannot schedule {name!r}: {opt_name} has no {name!r} in parameter group(s) "
                                 f"{missing}; its keys are {sorted(groups[missing[0]])}")
            if not isinstance(value, list):
                plan.append((name, None, value, evaluator(value), writer(groups, name, opt_name)))
                continue
            if len(value) != len(groups):
                raise ValueError(f"{len(value)} schedules for {name!r} but the optimizer has {len(groups)} parameter "
                                 "groups; give one schedule per group, or a single schedule for all")
            plan += [(name, i, s, evaluator(s), writer([groups[i]], name, opt_name)) for i, s in enumerate(value)]
        self._first = learn.start_epoch if self.unit == "epoch" else learn.train_iter
        self._writes = [(write, value_at, self._check_values(learn, name, group, sched, value_at))
                        for name, group, sched, value_at, write in plan]
        self.scheds = scheds  # what this fit runs (but for the tails) and its checkpoints save

    def before_batch(self, learn) -> None:
        if not learn.training:
            return
        k = (learn.epoch if self.unit == "epoch" else learn.train_iter) - self._first
        for write, value_at, values in self._writes:
            # A schedule object's value at this position was computed by the check, by the same call; a user's
            # callable is called now, as the batch runs.
            write(values[k] if k < len(values) else float(value_at(self.position(learn))))

    def cleanup_fit(self, learn) -> None:
        self._writes = []  # they hold the optimizer's groups

    # ----- positions and values ------------------------------------------------------------------------------------
    def position(self, learn) -> float:
        """The position the schedules see for the batch about to run."""
        unit = self.unit
        return learn.pct_train if unit == "pct" else learn.train_iter if unit == "batch" else learn.epoch

    def positions(self, learn):
        """Every position the loop will feed the schedules in this fit, from where it starts (a resumed fit: the
        checkpoint's step); batch i of N runs at pct i/N, computed as `pct_train` computes it."""
        if self.unit == "epoch":
            return range(learn.start_epoch, learn.n_epoch)
        steps = range(learn.train_iter, learn.n_train_iters)
        if self.unit == "batch":
            return steps
        n = learn.n_train_iters
        return [i / n for i in steps]

    def _check_values(self, learn, name: str, group: int | None, sched, value_at: Callable) -> list[float]:
        """Checks `sched`'s value at every position the fit will feed it. Returns those values, which the batches
        then read, when `sched` is a schedule object (pure by construction, so its value at a position never
        changes) of a fit no longer than `CACHED_POSITIONS`; else [] (the batches call it)."""
        low, high, _ = hyper_range(name)
        positions = self.positions(learn)
        values = [] if isinstance(sched, Schedule) and len(positions) <= CACHED_POSITIONS else None
        for k, pos in enumerate(positions):
            value = value_at(pos)  # exactly what before_batch would compute at this position
            if type(value) is float and low <= value < high or (problem := out_of_range(name, value)) is None:
                if values is not None:
                    values.append(float(value))
                continue  # the fast test first; then an int or a NumPy number in range
            where = (f"position {pos} (epoch {pos} of {learn.n_epoch})" if self.unit == "epoch" else
                     f"position {pos!r} (step {learn.train_iter + k} of {learn.n_train_iters} in this fit)")
            whose = f"{name!r}" + ("" if group is None else f" of parameter group {group}")
            what, fix = f"the schedule for {whose} ({describe(sched)})", "checked before any step, nothing was changed"
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{what} must return a float, got {type(value).__name__} ({value!r}) at {where}; {fix}")
            raise ValueError(f"{what} returned {value!r} at {where}; {problem}; {fix}")
        return values or []

    # ----- checkpoints ---------------------------------------------------------------------------------------------
    def fit_config(self) -> dict:
        """The unit and each schedule as its repr (a plain function as its name: two functions of the same name
        look alike), recorded when a fit starts and compared on resume (learner/fit_config.py)."""
        config = {"unit": self.unit}
        for name, value in self.scheds.items():
            config[name] = [describe(s) for s in value] if isinstance(value, list) else describe(value)
        return config

    def state_dict(self) -> dict:
        """Plain values only. Schedule objects are saved as their state dicts; a plain function is saved as its repr
        only, so resuming needs a ParamScheduler created with the same callable (load_state_dict keeps it).

        On `fit(..., resume=path)` the checkpoint's schedules are compared with this fit's first (`fit_config`):
        the same, they are loaded as saved; allowed to differ (`allow_config_change`), this fit's schedules are
        kept and used from the resume point on, at the checkpoint's position, as a one-cycle's new `max_lr` is."""
        return {"unit": self.unit, "scheds": {name: scheds_state(v, describe) for name, v in self.scheds.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["unit"] not in UNITS:
            raise ValueError(f"state has unit {state['unit']!r}; expected one of {UNITS}")
        scheds = {name: scheds_from_state(name, v, self.scheds.get(name)) for name, v in state["scheds"].items()}
        self.unit = state["unit"]
        self.scheds = {name: self._checked(name, value) for name, value in scheds.items()}


class RecipeScheduler(ParamScheduler):
    """A ParamScheduler built from a recipe's arguments, named in `config_names` (what `fit_config` records, a
    `slice` as its repr). Rates given as numbers make one schedule for every group, built once at construction; a
    list or slice makes one per group, built in `before_fit` when the groups are known."""

    config_names: tuple[str, ...] = ()

    def fit_config(self) -> dict:
        return {name: repr(v) if isinstance(v := getattr(self, name), slice) else v for name in self.config_names}


class OneCycleCallback(RecipeScheduler):
    """Smith's one-cycle policy (fastai v1's fit_one_cycle, on fastai v2's clock): see `cyclr.one_cycle`.

    Args:
        max_lr (float | list[float] | slice): the peak learning rate: one number for every parameter group, a list
            with one per group, `slice(lo, hi)` (geometric from the first group's `lo` to the last group's `hi`) or
            `slice(hi)` (`hi / 10` for every group but the last).
        div_factor: the cycle starts at `max_lr / div_factor` (>= 1).
        pct_start: the fraction of training, in (0, 1), spent raising the rate to `max_lr`.
        final_div: the cycle ends at `max_lr / final_div` (>= 1); None: `div_factor * 1e4`.
        moms: the momentum (Adam's first beta) goes from `moms[0]` to `moms[1]` while the rate rises, then to
            `moms[2]` (back to `moms[0]` for a pair). None, or an optimizer without momentum, schedules no momentum.
        anneal_strategy: 'cos' (each phase half a cosine) or 'linear' (a straight line), as in torch's OneCycleLR.
        three_phase: as in torch's OneCycleLR: up over `pct_start`, back down to the start rate over another
            `pct_start` (so `pct_start < 0.5`), then down to the final rate.
    """

    config_names = ("max_lr", "div_factor", "pct_start", "final_div", "moms", "anneal_strategy", "three_phase")

    def __init__(self, max_lr, div_factor: float = ONE_CYCLE.div_factor, pct_start: float = ONE_CYCLE.pct_start,
                 final_div: float | None = ONE_CYCLE.final_div, moms: Sequence[float] | None = ONE_CYCLE.moms,
                 anneal_strategy: str = ONE_CYCLE.anneal_strategy, three_phase: bool = ONE_CYCLE.three_phase):
        check_lr_spec("max_lr", max_lr)
        self.max_lr, self.div_factor, self.pct_start, self.final_div, self.moms = (
            max_lr, div_factor, pct_start, final_div, moms)
        self.anneal_strategy, self.three_phase = anneal_strategy, three_phase
        # The last (or only) group's cycle: checks every other argument now, is what `plot` shows, and is the
        # schedule of every fit when max_lr is one number.
        self.one_cycle = self._cycle(one_or_per_group(max_lr, None))
        super().__init__(self.one_cycle.scheds(), unit="pct")

    def _cycle(self, lr: float) -> OneCycle:
        return OneCycle(lr, self.div_factor, self.pct_start, self.final_div, self.moms, self.anneal_strategy,
                        self.three_phase)

    def group_scheds(self, n_groups: int) -> dict:
        if isinstance(self.max_lr, numbers.Real):
            return self.one_cycle.scheds()
        lrs = lrs_per_group(self.max_lr, n_groups)
        scheds = {"lr": [self._cycle(lr).lr for lr in lrs]}
        return scheds if self.one_cycle.mom is None else {**scheds, "mom": self.one_cycle.mom}

    def plot(self, n: int = 100, ax=None):
        """The last group's lr and momentum, at pct i/n; `ax` may be a pair of axes. Returns the Figure."""
        return self.one_cycle.plot(n, ax=ax)


class FlatCosCallback(RecipeScheduler):
    """fastai's `fit_flat_cos`: each group's rate flat for `pct_start` of training, then half a cosine down to
    `lr / div_final` (see `cyclr.flat_cos`). `lr` may be a number, a list or `slice(lo, hi)`."""

    config_names = ("lr", "pct_start", "div_final")

    def __init__(self, lr, pct_start: float = FLAT_COS.pct_start, div_final: float = FLAT_COS.div_final):
        check_lr_spec("lr", lr)
        self.lr, self.pct_start, self.div_final = lr, pct_start, div_final
        self.flat_cos = flat_cos(one_or_per_group(lr, None, "lr"), pct_start, div_final)  # checks the rest now
        super().__init__({"lr": self.flat_cos}, unit="pct")

    def group_scheds(self, n_groups: int) -> dict:
        if isinstance(self.lr, numbers.Real):
            return {"lr": self.flat_cos}
        return {"lr": [flat_cos(lr, self.pct_start, self.div_final) for lr in lrs_per_group(self.lr, n_groups, "lr")]}

    def plot(self, n: int = 100, ax=None):
        return self.flat_cos.plot(n, ax=ax)


class SGDRCallback(RecipeScheduler):
    """SGDR (cosine annealing with warm restarts): see `cyclr.callbacks.schedules.cycles.SGDR`. Fit for
    `total_epochs` epochs; with another fit length the cycles stretch to fill it (a warning says so).

    Args:
        max_lr (float | list[float] | slice): the rate each cycle starts (restarts) at: one number for every
            parameter group, a list with one per group, or a slice as `OneCycleCallback`'s `max_lr`.
        n_cycles: the number of cycles (>= 1).
        cycle_len: the length of the first cycle, in epochs (>= 1).
        cycle_mult: each cycle is `cycle_mult` times as long as the one before (1: equal cycles).
        eta_min: the rate each cycle anneals down to, at its end (<= `max_lr`).
    """

    config_names = ("max_lr", "n_cycles", "cycle_len", "cycle_mult", "eta_min")

    def __init__(self, max_lr, n_cycles: int, cycle_len: int, cycle_mult: int = SGDR_DEFAULTS.cycle_mult,
                 eta_min: float = SGDR_DEFAULTS.eta_min):
        check_lr_spec("max_lr", max_lr)
        self.max_lr, self.n_cycles, self.cycle_len, self.cycle_mult, self.eta_min = (
            max_lr, n_cycles, cycle_len, cycle_mult, eta_min)
        self.sgdr = self._sgdr(one_or_per_group(max_lr, None))
        self.total_epochs = self.sgdr.total_epochs
        super().__init__({"lr": self.sgdr}, unit="pct")

    def _sgdr(self, lr):
        return sgdr(lr, self.n_cycles, self.cycle_len, self.cycle_mult, self.eta_min)

    def group_scheds(self, n_groups: int) -> dict:
        if isinstance(self.max_lr, numbers.Real):
            return {"lr": self.sgdr}
        return {"lr": [self._sgdr(lr) for lr in lrs_per_group(self.max_lr, n_groups)]}

    def before_fit(self, learn) -> None:
        if learn.n_epoch != self.total_epochs:
            warnings.warn(
                f"SGDR cycles assume {self.total_epochs} epochs but this fit has {learn.n_epoch}: "
                "the cycles are stretched to fit",
                stacklevel=user_stacklevel(),
            )
        super().before_fit(learn)

    def plot(self, n: int = 100, ax=None):
        return self.sgdr.plot(n, ax=ax)


class CyclicLRCallback(RecipeScheduler):
    """Smith's cyclical learning rates per batch ('triangular', 'triangular2', 'exp_range'), as torch's CyclicLR.

    With `cycle_momentum`, momentum cycles inversely between max_momentum and base_momentum; an optimizer without
    momentum then gets a warning and no momentum schedule. `base_lr`, `max_lr`, `base_momentum` and `max_momentum`
    may be lists, one per group (or `slice` for the rates). `step_size_down` (default: `step_size`, torch's
    `step_size_up`) makes the cycles asymmetric.

    Args:
        base_lr (float | list[float] | slice): the lowest rate, where each cycle starts (>= 0).
        max_lr (float | list[float] | slice): the highest rate, reached `step_size` batches into each cycle
            (>= `base_lr`; in 'triangular2' and 'exp_range' the peak shrinks cycle by cycle).
        step_size: batches (optimizer steps) from `base_lr` up to `max_lr`: torch's `step_size_up`.
        mode: 'triangular' (every cycle the same), 'triangular2' (the amplitude halved after each cycle) or
            'exp_range' (the amplitude multiplied by `gamma**t` at batch t).
        gamma: the decay per batch of 'exp_range', in (0, 1]; the other modes ignore it.
        cycle_momentum: cycle the momentum (Adam's first beta) too, inversely: `max_momentum` when the rate is
            lowest, `base_momentum` when it is highest.
        base_momentum (float | list[float]): the lowest momentum, in [0, 1].
        max_momentum (float | list[float]): the highest momentum, in [0, 1].
        step_size_down: batches from `max_lr` back down to `base_lr`; None: `step_size` (a symmetric cycle).
    """

    config_names = ("base_lr", "max_lr", "step_size", "step_size_down", "mode", "gamma", "cycle_momentum",
                    "base_momentum", "max_momentum")
    per_group_names = ("base_lr", "max_lr", "base_momentum", "max_momentum")

    def __init__(self, base_lr, max_lr, step_size: int, mode: str = CYCLICAL.mode, gamma: float = CYCLICAL.gamma,
                 cycle_momentum: bool = True, base_momentum=CYCLICAL.base_momentum,
                 max_momentum=CYCLICAL.max_momentum, step_size_down: int | None = None):
        check_lr_spec("base_lr", base_lr, check=non_negative)
        check_lr_spec("max_lr", max_lr)
        int_at_least("step_size", step_size, 1)
        if step_size_down is not None:
            int_at_least("step_size_down", step_size_down, 1)
        if cycle_momentum:
            check_lr_spec("base_momentum", base_momentum, check=in_unit_interval)
            check_lr_spec("max_momentum", max_momentum, check=in_unit_interval)
        self.base_lr, self.max_lr, self.step_size, self.mode, self.gamma = base_lr, max_lr, step_size, mode, gamma
        self.step_size_down = step_size_down
        self.cycle_momentum, self.base_momentum, self.max_momentum = cycle_momentum, base_momentum, max_momentum
        # With every rate and momentum a number, these are every fit's schedules; else the last group's.
        self.shared = self._scheds(*(one_or_per_group(getattr(self, n), None, n) for n in self.per_group_names))
        super().__init__(self.shared, unit="batch")

    def _scheds(self, base_lr, max_lr, base_momentum, max_momentum) -> dict:
        lr = cyclical(base_lr, max_lr, self.step_size, self.mode, self.gamma, self.step_size_down)
        return {"lr": lr, "mom": lr.momentum(base_momentum, max_momentum)} if self.cycle_momentum else {"lr": lr}

    def group_scheds(self, n_groups: int) -> dict:
        values = [getattr(self, name) for name in self.per_group_names]
        if all(isinstance(v, numbers.Real) for v in values):
            return self.shared
        per_group = [one_or_per_group(v, n_groups, name) for v, name in zip(values, self.per_group_names, strict=True)]
        per_group = [v if isinstance(v, list) else [v] * n_groups for v in per_group]
        groups = [self._scheds(*group_values) for group_values in zip(*per_group, strict=True)]
        return {name: [g[name] for g in groups] for name in groups[0]}
