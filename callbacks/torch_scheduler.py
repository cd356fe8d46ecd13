"""TorchScheduler: a learning-rate scheduler a user already has (torch.optim.lr_scheduler's, HF's
`get_*_schedule_with_warmup`, which are LambdaLRs, or any object with `step`, `state_dict` and `load_state_dict`)
run by the fit, instead of a cyclr schedule.

    learn.fit(3, cbs=[TorchScheduler(lambda opt, total_steps: OneCycleLR(opt, max_lr=0.1, total_steps=total_steps))])
    learn.fit(3, cbs=[TorchScheduler(functools.partial(OneCycleLR, max_lr=0.1))])      # the same: it takes total_steps
    learn.fit(9, cbs=[TorchScheduler(lambda opt: ReduceLROnPlateau(opt, patience=1), interval='epoch',
                                     monitor='valid_loss')])

The scheduler is built by a factory, at the start of each fit, on the optimizer the Learner created, at the rates
the fit starts with: `factory(opt)`, or `factory(opt, total_steps=n)` when the factory has a parameter named
`total_steps` (torch's OneCycleLR has one), `n` being the number of times this fit will step it: its optimizer steps
(`learn.n_train_iters`, fewer than batches under GradientAccumulation) with `interval='step'`, its epochs with
`interval='epoch'`. It is stepped after each optimizer step (a step that float16 MixedPrecision skips is no step: it
does not count), or at the end of each epoch, after validation, with the epoch table's `monitor` value (a column:
'valid_loss', 'train_loss', a metric's name) for a plateau scheduler.

It is the one writer of the learning rate in its fit: a cyclr schedule of the same hyperparameter (a ParamScheduler,
fit_one_cycle's, ReduceLROnPlateau's scaling) in the same fit is refused before the first step; combine torch
schedulers in one factory (SequentialLR, ChainedScheduler). The Recorder records the values it sets, as it records
any rate. Its state is in checkpoints and a resumed fit goes on exactly; its settings (the factory, the interval, the
monitor) go into the resume check, and the scheduler the factory builds on resuming must be the checkpoint's (same
total_steps, rates, milestones, ...) or the resume is refused before the first step. `lr_find` leaves it untouched:
it sits the sweep out.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import torch

from .core import ORDER, Callback
from .hypers import set_group_hyper
from .monitors import ReduceLROnPlateau, recorded_columns

__all__ = ["TorchScheduler", "is_torch_scheduler", "refuse_torch_scheduler"]

INTERVALS = ("step", "epoch")
# Entries of a scheduler's state_dict that depend on the rate it was built at, not on its settings: compared between
# two schedulers built at the start of a fit, they may differ (a resumed fit builds its own at the restored rate).
_RATE_DEPENDENT = ("_last_lr",)


def is_torch_scheduler(obj) -> bool:
    """Whether `obj` is a learning-rate scheduler object bound to an optimizer (torch's, or one of its kind)."""
    return isinstance(obj, torch.optim.lr_scheduler.LRScheduler) or (
        callable(getattr(obj, "step", None)) and isinstance(getattr(obj, "optimizer", None), torch.optim.Optimizer))


def refuse_torch_scheduler(obj, where: str) -> None:
    """A TypeError that says to use TorchScheduler when `obj`, given as `where`, is a torch scheduler object."""
    if is_torch_scheduler(obj):
        name = type(obj).__name__
        raise TypeError(
            f"{where} is a torch scheduler ({name}), which cyclr cannot step as it is: pass "
            f"cbs=[TorchScheduler(lambda opt: {name}(opt, ...))], which builds it on "
            "the optimizer the fit uses, steps it after each optimizer step (interval='step') or epoch "
            "(interval='epoch', monitor=... for ReduceLROnPlateau) and saves it in checkpoints"
        )


def _put_back(groups: list[dict], settings: list[dict], exactly: bool = False) -> None:
    """Each group's settings as they were; `exactly`: the keys added since (a scheduler's) removed too."""
    for g, before in zip(groups, settings, strict=True):
        if exactly:
            for key in [k for k in g if k != "params" and k not in before]:
                del g[key]
            g.update({k: v for k, v in before.items() if k not in g})
        for key, value in before.items():
            if key in g:
                set_group_hyper(g, key, value)


def _describe_factory(factory) -> str:
    """How the resume check names a factory: a partial with its arguments, anything else by its qualified name."""
    if isinstance(factory, functools.partial):
        args = [repr(a) for a in factory.args] + [f"{k}={v!r}" for k, v in factory.keywords.items()]
        return f"{_describe_factory(factory.func)}({', '.join(args)})"
    return getattr(factory, "__qualname__", None) or repr(factory)


def _takes_total_steps(factory) -> bool:
    if isinstance(factory, functools.partial) and "total_steps" in factory.keywords:
        return False  # the user gave it
    try:
        return "total_steps" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _without(state, keys: tuple):
    """`state` with `keys` left out at every level (a SequentialLR holds its schedulers' states)."""
    if isinstance(state, dict):
        return {k: _without(v, keys) for k, v in state.items() if k not in keys}
    if isinstance(state, (list, tuple)):
        return [_without(v, keys) for v in state]
    return state


def _differences(saved, now, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in _differences(saved.get(k, "absent"), now.get(k, "absent"), f"{where}.{k}" if where else k)]
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)) and len(saved) == len(now):
        return [d for i, (s, n) in enumerate(zip(saved, now, strict=True)) for d in _differences(s, n, f"{where}[{i}]")]
    return [] if saved == now else [f"{where}: {saved!r} in the checkpoint, {now!r} now"]


class TorchScheduler(Callback):
    """Run a torch learning-rate scheduler built by `factory` over the fit: see the module docstring.

    `factory(opt)` or `factory(opt, total_steps=n)` returns the scheduler, built on `opt`. `interval`: 'step' (after
    each optimizer step) or 'epoch' (at the end of each epoch, after validation). `monitor`: the epoch table's
    column whose value is passed to `step` (ReduceLROnPlateau), with `interval='epoch'`. `scheduler` is the one
    the running (or last) fit built."""

    # After the Recorder (50), which has written the epoch's row that `monitor` reads when this steps in after_epoch,
    # and before SaveModelCallback (90), so checkpoints hold the stepped state. Stepping in after_step, its order
    # against the others does not matter: the Recorder reads the rate in before_step.
    order = ORDER.torch_scheduler
    sits_out_lr_find = True  # an lr_find sweep sets the rates itself; this scheduler is left as it was

    def __init__(self, factory, interval: str = "step", monitor: str | None = None):
        refuse_torch_scheduler(factory, "TorchScheduler's factory")
        if not callable(factory):
            raise TypeError(
                "TorchScheduler(factory): factory must be callable as factory(opt) (or factory(opt, total_steps=n)) "
                f"and return a scheduler, e.g. lambda opt: CosineAnnealingLR(opt, T_max=10); got {factory!r}"
            )
        if interval not in INTERVALS:
            raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise TypeError(f"monitor must be the name of a column of the epoch table like 'valid_loss', got "
                            f"{monitor!r}")
        if monitor is not None and interval != "epoch":
            raise ValueError(f"monitor={monitor!r} is read once per epoch: pass interval='epoch' with it")
        self.factory, self.interval, self.monitor = factory, interval, monitor
        self.scheduler = None
        self._initial: dict | None = None  # the scheduler's state when it was built: its settings, for resuming
        self._saved: dict | None = None  # a checkpoint's state, loaded before the fit that resumes builds one
        self._active = False  # whether this fit built a scheduler (cleanup_fit then takes the groups back)

    def __repr__(self) -> str:
        monitor = "" if self.monitor is None else f", monitor={self.monitor!r}"
        return f"TorchScheduler({_describe_factory(self.factory)}, interval={self.interval!r}{monitor})"

    # ----- hooks -------------------------------------------------------------------------------------------------
    def before_fit(self, learn) -> None:
        saved, self._saved = self._saved, None
        self._check_writers(learn, "lr")
        self._check_monitor(learn)
        groups = learn.opt.param_groups
        before = [{k: v for k, v in g.items() if k != "params"} for g in groups]
        for g in groups:
            if not learn.resuming:
                # A scheduler of an earlier fit left its `initial_lr` in the groups, which torch's schedulers would
                # take as their base rate: this fit's scheduler starts from this fit's rates.
                g.pop("initial_lr", None)
            elif "initial_lr" in g:
                # Built again from where the checkpoint's fit started: schedulers that compute each rate from the
                # last one (CosineAnnealingLR) start from the group's rate.
                set_group_hyper(g, "lr", g["initial_lr"])
        try:
            scheduler = self._build(learn)
            if getattr(scheduler, "cycle_momentum", False):  # OneCycleLR, CyclicLR: the momentum is theirs too
                self._check_writers(learn, "mom")
            if learn.resuming:
                self._resume(learn, scheduler, saved, before)
        except BaseException:
            _put_back(groups, before, exactly=True)  # a refused or failed build changes nothing
            raise
        self.scheduler, self._active = scheduler, True

    def after_step(self, learn) -> None:
        if self._active and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, learn) -> None:
        if not (self._active and self.interval == "epoch"):
            return
        if self.monitor is None:
            self.scheduler.step()
        else:
            self.scheduler.step(learn.recorder.epoch_rows[-1][self.monitor])

    def cleanup_fit(self, learn) -> None:
        if self._active:
            # The scheduler is done with the optimizer: a group keeping its `initial_lr` would read, to the next
            # fit (and to torch's next scheduler), as one a scheduler still steps. Checkpoints keep theirs.
            for g in learn.opt.param_groups:
                g.pop("initial_lr", None)
        self._active = False

    # ----- building -------------------------------------------------------------------------------------------------
    def _total_steps(self, learn) -> int:
        return learn.n_train_iters if self.interval == "step" else learn.n_epoch

    def _build(self, learn):
        total = self._total_steps(learn)
        scheduler = self.factory(learn.opt, total_steps=total) if _takes_total_steps(self.factory) else \
            self.factory(learn.opt)
        what = f"TorchScheduler's factory ({_describe_factory(self.factory)})"
        if not all(callable(getattr(scheduler, m, None)) for m in ("step", "state_dict", "load_state_dict")):
            raise TypeError(f"{what} must return a scheduler (with step, state_dict and load_state_dict), got "
                            f"{type(scheduler).__name__}")
        if getattr(scheduler, "optimizer", learn.opt) is not learn.opt:
            raise ValueError(f"{what} built its scheduler on another optimizer than the one it was given: build it "
                             "on the factory's argument (lambda opt: Scheduler(opt, ...)), not on one of your own")
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if plateau and self.monitor is None:
            raise ValueError(f"{what} built a ReduceLROnPlateau, which steps on a value: pass interval='epoch' and "
                             "monitor= the column it watches (e.g. monitor='valid_loss')")
        planned = getattr(scheduler, "total_steps", None)
        if isinstance(planned, int) and planned < total:
            unit = "optimizer steps" if self.interval == "step" else "epochs"
            raise ValueError(
                f"{what} built {type(scheduler).__name__} with total_steps={planned}, but this fit steps it {total} "
                f"times ({unit}), past its end: give the factory a total_steps parameter "
                "(lambda opt, total_steps: ...), which the fit fills in, or total_steps >= {total}".replace(
                    "{total}", str(total))
            )
        self._initial = scheduler.state_dict()
        return scheduler

    def _resume(self, learn, scheduler, saved, restored: list[dict]) -> None:
        """The new scheduler put where the checkpoint's was: its saved state loaded, after checking that the factory
        built the same one, and the optimizer back at the checkpoint's rates (`restored`); or (its settings allowed
        to change: no state came) stepped to the checkpoint's place, at the new settings' rates."""
        if saved and saved.get("scheduler") is not None:
            differences = _differences(_without(saved["initial"], _RATE_DEPENDENT),
                                       _without(self._initial, _RATE_DEPENDENT))
            if differences:
                raise ValueError(
                    f"the scheduler {_describe_factory(self.factory)} builds now is not the one the checkpoint's fit "
                    f"built ({'; '.join(differences)}): the run would go on with another schedule. Resume with the "
                    "same factory and settings, or start a new fit"
                )
            scheduler.load_state_dict(saved["scheduler"])
            _put_back(learn.opt.param_groups, restored)  # building set step 0's rates (and momenta)
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError("a ReduceLROnPlateau's state cannot be rebuilt without the checkpoint's (it depends on "
                             "the values it watched): resume with the same TorchScheduler settings")
        done = learn.train_iter if self.interval == "step" else learn.start_epoch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of steps before the optimizer's: these replay the past
            for _ in range(done):
                scheduler.step()

    # ----- checks -----------------------------------------------------------------------------------------------------
    def _check_writers(self, learn, name: str) -> None:
        """Refuse a second writer of hyperparameter `name` in this fit: another TorchScheduler or cyclr's
        ReduceLROnPlateau (the rate), a ParamScheduler or a recipe scheduling it."""
        for cb in learn.cbs:
            scheds = getattr(cb, "scheds", None)
            writes = isinstance(scheds, dict) and name in scheds or name == "lr" and cb is not self and isinstance(
                cb, (TorchScheduler, ReduceLROnPlateau))
            if writes:
                what = "the learning rate" if name == "lr" else "the momentum"
                raise ValueError(
                    f"{cb.name} sets {what} in this fit as well as {self!r}: two writers of one hyperparameter. Keep "
                    "one: schedule with TorchScheduler alone (combine torch schedulers with SequentialLR or "
                    "ChainedScheduler; torch's ReduceLROnPlateau with monitor= replaces cyclr's), or with cyclr's "
                    "(fit_one_cycle, ParamScheduler) alone"
                )

    def _check_monitor(self, learn) -> None:
        if self.monitor is None:
            return
        names = recorded_columns(learn)
        if self.monitor not in names:
            raise ValueError(f"TorchScheduler: monitor={self.monitor!r} is not recorded; choose one of {names}")

    # ----- checkpoints ------------------------------------------------------------------------------------------------
    def fit_config(self) -> dict:
        return {"factory": _describe_factory(self.factory), "interval": self.interval, "monitor": self.monitor}

    def state_dict(self) -> dict:
        """The scheduler's own state_dict, and its state when it was built (its settings, checked on resuming);
        empty before the first fit."""
        if self.scheduler is None:
            return {}
        return {"scheduler": self.scheduler.state_dict(), "initial": self._initial}

    def load_state_dict(self, state: dict) -> None:
        """Kept until the fit that resumes builds its scheduler (on the restored optimizer), which then loads it."""
        if state and not isinstance(state.get("scheduler"), dict):
            raise ValueError(f"a TorchScheduler state holds the scheduler's state_dict, got {sorted(state)}")
        self._saved = dict(state) if state else None
