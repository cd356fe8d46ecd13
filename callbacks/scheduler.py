"""ParamScheduler: set any optimizer hyperparameter from a schedule before every training batch.

`ParamScheduler({'lr': f, 'mom': g, 'wd': h}, unit='pct')` calls each schedule with the position of the batch about
to run and writes the value into the optimizer through `learn.set_hyper`:

- unit='pct':   the fraction of the fit done, `learn.pct_train` (batch i of N sees i/N);
- unit='batch': the global training batch index of this fit, `learn.train_iter` (0, 1, ...);
- unit='epoch': the epoch index, `learn.epoch`, so the value is constant within an epoch (d2l steps its schedulers
  once per epoch, as torch's epoch schedulers do).

A value may be one callable for every parameter group, or a list with one callable per group (discriminative
learning rates). Any callable works; the schedule objects of `callbacks.schedules` also save and plot themselves.
`OneCycleCallback`, `FlatCosCallback`, `SGDRCallback` and `CyclicLRCallback` are ParamSchedulers with their
schedules built for you.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence

from ..data.checks import in_unit_interval, int_at_least, non_negative, positive
from .core import Callback
from .hypers import has_hyper
from .schedules import (
    CYCLICAL,
    FLAT_COS,
    ONE_CYCLE,
    SGDR_DEFAULTS,
    OneCycle,
    Schedule,
    cyclical,
    flat_cos,
    schedule_from_state,
    sgdr,
)

UNITS = ("pct", "batch", "epoch")


def _describe(sched) -> str:
    return repr(sched) if isinstance(sched, Schedule) else getattr(sched, "__qualname__", None) or repr(sched)


class ParamScheduler(Callback):
    """Schedules hyperparameters per training batch: `scheds` maps a name ('lr', 'mom', 'wd', 'beta2' or any
    param_group key) to a schedule, or to a list of schedules, one per parameter group. See the module docstring."""

    # Sets values in before_batch; the Recorder (order 50) reads what the optimizer uses in before_step.
    order = 10

    def __init__(self, scheds: dict, unit: str = "pct"):
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        if not isinstance(scheds, dict) or not scheds:
            raise TypeError(f"scheds must be a non-empty dict like {{'lr': sched}}, got {scheds!r}")
        self.unit = unit
        self.scheds = {name: self._checked(name, value) for name, value in scheds.items()}
        self._active: dict = {}

    def _checked(self, name, value):
        if not isinstance(name, str):
            raise TypeError(f"schedule names must be strings like 'lr' or 'mom', got {name!r}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError(f"the schedule list for {name!r} is empty; give one schedule per parameter group")
        for sched in values:
            if isinstance(sched, OneCycle):
                raise TypeError(
                    f"{name!r}: a OneCycle holds two schedules; pass ParamScheduler(one_cycle(...).scheds()) "
                    "or use OneCycleCallback"
                )
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

    # ----- hooks -------------------------------------------------------------------------------------------------
    def before_fit(self, learn) -> None:
        groups = learn.opt.param_groups
        self._active = {}
        for name, value in self.scheds.items():
            if name == "mom" and not all(has_hyper(g, "mom") for g in groups):
                warnings.warn(
                    f"{type(learn.opt).__name__} has no momentum or betas: the 'mom' schedule is ignored in this fit",
                    stacklevel=2,
                )
                continue
            if name != "mom":
                missing = [i for i, g in enumerate(groups) if not has_hyper(g, name)]
                if missing:
                    raise ValueError(
                        f"cannot schedule {name!r}: {type(learn.opt).__name__} has no {name!r} in parameter group(s) "
                        f"{missing}; its keys are {sorted(groups[missing[0]])}"
                    )
            if isinstance(value, list) and len(value) != len(groups):
                raise ValueError(
                    f"{len(value)} schedules for {name!r} but the optimizer has {len(groups)} parameter groups; "
                    "give one schedule per group, or a single schedule for all"
                )
            self._active[name] = value
        for pos in self._sample_positions(learn):
            for name, value in self._active.items():
                for sched in value if isinstance(value, list) else [value]:
                    self._value(sched, pos, name)

    def before_batch(self, learn) -> None:
        if not learn.training:
            return
        pos = self.position(learn)
        for name, value in self._active.items():
            if isinstance(value, list):
                for group, sched in enumerate(value):
                    learn.set_hyper(name, self._value(sched, pos, name), group)
            else:
                learn.set_hyper(name, self._value(value, pos, name))

    # ----- positions and values ------------------------------------------------------------------------------------
    def position(self, learn) -> float:
        """The position the schedules see for the batch about to run."""
        if self.unit == "pct":
            return learn.pct_train
        if self.unit == "batch":
            return learn.train_iter
        return learn.epoch

    def _sample_positions(self, learn) -> list:
        """The first position and a few others, checked before training so a bad schedule fails before any step."""
        if self.unit == "epoch":
            return sorted({0, learn.n_epoch // 2, learn.n_epoch - 1})
        n = learn.n_train_iters
        iters = sorted({0, n // 4, n // 2, 3 * n // 4, max(0, n - 1)})
        return [i / n for i in iters] if self.unit == "pct" else iters

    @staticmethod
    def _value(sched: Callable, pos, name: str) -> float:
        value = sched(pos)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"the schedule for {name!r} ({_describe(sched)}) must return a float, got "
                f"{type(value).__name__} ({value!r}) at position {pos!r}"
            )
        if not math.isfinite(value):
            raise ValueError(
                f"the schedule for {name!r} ({_describe(sched)}) returned {value!r} at position {pos!r}; "
                "hyperparameters must be finite"
            )
        return float(value)

    # ----- checkpoints ---------------------------------------------------------------------------------------------
    def fit_config(self) -> dict:
        """The unit and each schedule as its repr (a plain function as its name: two functions of the same name
        look alike), recorded when a fit starts and compared on resume (learner/fit_config.py)."""
        config = {"unit": self.unit}
        for name, value in self.scheds.items():
            config[name] = [_describe(s) for s in value] if isinstance(value, list) else _describe(value)
        return config

    def state_dict(self) -> dict:
        """Plain values only. Schedule objects are saved as their state dicts; a plain function is saved as its repr
        only, so resuming needs a ParamScheduler created with the same callable (load_state_dict keeps it).

        On `fit(..., resume=path)` the checkpoint's schedules are compared with this fit's first (`fit_config`):
        the same, they are loaded as saved; allowed to differ (`allow_config_change`), this fit's schedules are
        kept and used from the resume point on, at the checkpoint's position, as a one-cycle's new `max_lr` is."""

        def entry(sched):
            if isinstance(sched, Schedule):
                return sched.state_dict()
            return {"kind": "callable", "repr": _describe(sched)}

        return {
            "unit": self.unit,
            "scheds": {
                name: [entry(s) for s in value] if isinstance(value, list) else entry(value)
                for name, value in self.scheds.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        if state["unit"] not in UNITS:
            raise ValueError(f"state has unit {state['unit']!r}; expected one of {UNITS}")

        def rebuild(name, saved, current):
            if saved["kind"] != "callable":
                return schedule_from_state(saved)
            if current is None or isinstance(current, Schedule):
                raise ValueError(
                    f"the saved schedule for {name!r} was a plain callable ({saved['repr']}), which cannot be "
                    "rebuilt from a checkpoint: create the ParamScheduler with that same callable, then load"
                )
            return current

        scheds = {}
        for name, saved in state["scheds"].items():
            current = self.scheds.get(name)
            if isinstance(saved, list):
                currents = current if isinstance(current, list) and len(current) == len(saved) else [None] * len(saved)
                scheds[name] = [rebuild(name, s, c) for s, c in zip(saved, currents, strict=True)]
            else:
                scheds[name] = rebuild(name, saved, None if isinstance(current, list) else current)
        self.unit = state["unit"]
        self.scheds = {name: self._checked(name, value) for name, value in scheds.items()}


# ----- per-group learning rates ---------------------------------------------------------------------------------------
def lrs_per_group(lr, n_groups: int, name: str = "max_lr") -> list[float]:
    """One learning rate per parameter group from a number (all equal), a list (one each), or `slice(lo, hi)`:
    geometrically spread, lo for the first group and hi for the last; `slice(hi)` gives hi/10 to all groups but the
    last (fastai's convention)."""
    if isinstance(lr, slice):
        lo, hi = lr.start, lr.stop
        if lr.step is not None or hi is None:
            raise ValueError(f"{name} as a slice must be slice(lo, hi) or slice(hi), got {lr!r}")
        positive(f"{name} slice end", hi)
        if n_groups == 1:
            return [hi]
        if lo is None:
            return [hi / 10] * (n_groups - 1) + [hi]
        positive(f"{name} slice start", lo)
        return [lo * (hi / lo) ** (i / (n_groups - 1)) for i in range(n_groups)]
    if isinstance(lr, (list, tuple)):
        if len(lr) != n_groups:
            raise ValueError(f"{name} has {len(lr)} values for {n_groups} parameter groups; give one per group")
        return list(lr)
    return [lr] * n_groups


def _plain_lr(value):
    """A rate as a checkpoint keeps it: a `slice` (not a plain value) as its repr."""
    return repr(value) if isinstance(value, slice) else value


def _check_lr_spec(name: str, lr, check=positive) -> None:
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


class _PerGroupScheduler(ParamScheduler):
    """A ParamScheduler whose lr schedules are rebuilt for the optimizer's groups at the start of each fit, from the
    arguments named in `config_names` (what `fit_config` records)."""

    config_names: tuple[str, ...] = ()

    def fit_config(self) -> dict:
        return {name: _plain_lr(getattr(self, name)) for name in self.config_names}

    def before_fit(self, learn) -> None:
        self.scheds = self._make_scheds(len(learn.opt.param_groups))
        super().before_fit(learn)

    def _make_scheds(self, n_groups: int | None) -> dict:
        """n_groups None: before any fit, one schedule when the lr is a number, else the last group's."""
        raise NotImplementedError

    @staticmethod
    def _lrs(lr, n_groups, name="max_lr"):
        """A number stays one number (one schedule for all groups); a list or slice gives one lr per group."""
        if isinstance(lr, numbers.Real):
            return lr
        if n_groups is None:
            return lr.stop if isinstance(lr, slice) else lr[-1]
        return lrs_per_group(lr, n_groups, name)


class OneCycleCallback(_PerGroupScheduler):
    """Smith's one-cycle policy (fastai v1's fit_one_cycle, on fastai v2's clock): see `callbacks.schedules.OneCycle`.

    `max_lr` may be a number, a list (one per parameter group) or `slice(lo, hi)`. `moms=None`, or an optimizer
    without momentum, schedules no momentum. `anneal_strategy` ('cos' or 'linear') and `three_phase` have torch
    OneCycleLR's meaning.
    """

    config_names = ("max_lr", "div_factor", "pct_start", "final_div", "moms", "anneal_strategy", "three_phase")

    def __init__(self, max_lr, div_factor: float = ONE_CYCLE.div_factor, pct_start: float = ONE_CYCLE.pct_start,
                 final_div: float | None = ONE_CYCLE.final_div, moms: Sequence[float] | None = ONE_CYCLE.moms,
                 anneal_strategy: str = ONE_CYCLE.anneal_strategy, three_phase: bool = ONE_CYCLE.three_phase):
        _check_lr_spec("max_lr", max_lr)
        self.max_lr, self.div_factor, self.pct_start, self.final_div, self.moms = (
            max_lr, div_factor, pct_start, final_div, moms)
        self.anneal_strategy, self.three_phase = anneal_strategy, three_phase
        # The schedule of the last (or only) group: validates every other argument now, and is what `plot` shows.
        self.one_cycle = self._cycle(self._lrs(max_lr, None))
        super().__init__(self._make_scheds(None), unit="pct")

    def _cycle(self, lr: float) -> OneCycle:
        return OneCycle(lr, self.div_factor, self.pct_start, self.final_div, self.moms, self.anneal_strategy,
                        self.three_phase)

    def _make_scheds(self, n_groups):
        lrs = self._lrs(self.max_lr, n_groups)
        scheds = {"lr": [self._cycle(lr).lr for lr in lrs] if isinstance(lrs, list) else self._cycle(lrs).lr}
        if self.one_cycle.mom is not None:
            scheds["mom"] = self.one_cycle.mom
        return scheds

    def plot(self, n: int = 100, ax=None):
        """The last group's lr and momentum, at pct i/n; `ax` may be a pair of axes. Returns the Figure."""
        return self.one_cycle.plot(n, ax=ax)


class FlatCosCallback(_PerGroupScheduler):
    """fastai's `fit_flat_cos`: each group's rate flat for `pct_start` of training, then half a cosine down to
    `lr / div_final` (see `callbacks.schedules.flat_cos`). `lr` may be a number, a list or `slice(lo, hi)`."""

    config_names = ("lr", "pct_start", "div_final")

    def __init__(self, lr, pct_start: float = FLAT_COS.pct_start, div_final: float = FLAT_COS.div_final):
        _check_lr_spec("lr", lr)
        self.lr, self.pct_start, self.div_final = lr, pct_start, div_final
        self.flat_cos = flat_cos(self._lrs(lr, None, "lr"), pct_start, div_final)  # validates the rest now
        super().__init__(self._make_scheds(None), unit="pct")

    def _make_scheds(self, n_groups):
        lrs = self._lrs(self.lr, n_groups, "lr")
        make = lambda lr: flat_cos(lr, self.pct_start, self.div_final)  # noqa: E731
        return {"lr": [make(lr) for lr in lrs] if isinstance(lrs, list) else make(lrs)}

    def plot(self, n: int = 100, ax=None):
        return self.flat_cos.plot(n, ax=ax)


class SGDRCallback(_PerGroupScheduler):
    """SGDR (cosine annealing with warm restarts): see `callbacks.schedules.SGDR`. Fit for `total_epochs` epochs;
    with another fit length the cycles stretch to fill it (a warning says so)."""

    config_names = ("max_lr", "n_cycles", "cycle_len", "cycle_mult", "eta_min")

    def __init__(self, max_lr, n_cycles: int, cycle_len: int, cycle_mult: int = SGDR_DEFAULTS.cycle_mult,
                 eta_min: float = SGDR_DEFAULTS.eta_min):
        _check_lr_spec("max_lr", max_lr)
        self.max_lr, self.n_cycles, self.cycle_len, self.cycle_mult, self.eta_min = (
            max_lr, n_cycles, cycle_len, cycle_mult, eta_min)
        self.sgdr = self._sgdr(self._lrs(max_lr, None))
        self.total_epochs = self.sgdr.total_epochs
        super().__init__(self._make_scheds(None), unit="pct")

    def _sgdr(self, lr):
        return sgdr(lr, self.n_cycles, self.cycle_len, self.cycle_mult, self.eta_min)

    def _make_scheds(self, n_groups):
        lrs = self._lrs(self.max_lr, n_groups)
        return {"lr": [self._sgdr(lr) for lr in lrs] if isinstance(lrs, list) else self._sgdr(lrs)}

    def before_fit(self, learn) -> None:
        if learn.n_epoch != self.total_epochs:
            warnings.warn(
                f"SGDR cycles assume {self.total_epochs} epochs but this fit has {learn.n_epoch}: "
                "the cycles are stretched to fit",
                stacklevel=2,
            )
        super().before_fit(learn)

    def plot(self, n: int = 100, ax=None):
        return self.sgdr.plot(n, ax=ax)


class CyclicLRCallback(_PerGroupScheduler):
    """Smith's cyclical learning rates per batch ('triangular', 'triangular2', 'exp_range'), as torch's CyclicLR.

    With `cycle_momentum`, momentum cycles inversely between max_momentum and base_momentum; an optimizer without
    momentum then gets a warning and no momentum schedule. `base_lr`, `max_lr`, `base_momentum` and `max_momentum`
    may be lists, one per group (or `slice` for the rates). `step_size_down` (default: `step_size`, torch's
    `step_size_up`) makes the cycles asymmetric.
    """

    config_names = ("base_lr", "max_lr", "step_size", "step_size_down", "mode", "gamma", "cycle_momentum",
                    "base_momentum", "max_momentum")

    def __init__(self, base_lr, max_lr, step_size: int, mode: str = CYCLICAL.mode, gamma: float = CYCLICAL.gamma,
                 cycle_momentum: bool = True, base_momentum=CYCLICAL.base_momentum,
                 max_momentum=CYCLICAL.max_momentum, step_size_down: int | None = None):
        _check_lr_spec("base_lr", base_lr, check=non_negative)
        _check_lr_spec("max_lr", max_lr)
        int_at_least("step_size", step_size, 1)
        if step_size_down is not None:
            int_at_least("step_size_down", step_size_down, 1)
        if cycle_momentum:
            _check_lr_spec("base_momentum", base_momentum, check=in_unit_interval)
            _check_lr_spec("max_momentum", max_momentum, check=in_unit_interval)
        self.base_lr, self.max_lr, self.step_size, self.mode, self.gamma = base_lr, max_lr, step_size, mode, gamma
        self.step_size_down = step_size_down
        self.cycle_momentum, self.base_momentum, self.max_momentum = cycle_momentum, base_momentum, max_momentum
        super().__init__(self._make_scheds(None), unit="batch")

    def _cyclical(self, base_lr, max_lr):
        return cyclical(base_lr, max_lr, self.step_size, self.mode, self.gamma, self.step_size_down)

    def _make_scheds(self, n_groups):
        values = {name: self._lrs(getattr(self, name), n_groups, name)
                  for name in ("base_lr", "max_lr", "base_momentum", "max_momentum")}
        if any(isinstance(v, list) for v in values.values()):  # only once n_groups is known
            values = {k: v if isinstance(v, list) else [v] * n_groups for k, v in values.items()}
            lr = [self._cyclical(b, m) for b, m in zip(values["base_lr"], values["max_lr"], strict=True)]
            mom = [s.momentum(b, m) for s, b, m in zip(lr, values["base_momentum"], values["max_momentum"],
                                                       strict=True)]
        else:
            lr = self._cyclical(values["base_lr"], values["max_lr"])
            mom = lr.momentum(values["base_momentum"], values["max_momentum"])
        return {"lr": lr, "mom": mom} if self.cycle_momentum else {"lr": lr}
