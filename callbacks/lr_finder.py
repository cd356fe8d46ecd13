"""The LR finder (Smith, "Cyclical Learning Rates for Training Neural Networks", 2015, section 3.3).

Train for `num_it` batches while the learning rate grows from `start_lr` to `end_lr` (exponentially by default),
record the loss of every batch, and read a good learning rate off the curve of loss against log lr: the loss falls,
reaches a minimum, then climbs as training diverges; a good rate lies to the left of the minimum, where the loss is
still falling fast.

- `LRFinderCallback` runs the sweep inside an ordinary `learn.fit`: it sets the rate in `before_batch`, records the
  loss of that batch in `after_loss` (computed before the step taken at that rate, so `lrs[i]` and `losses[i]`
  belong together), cancels validation, and cancels the fit after `num_it` batches or when the loss diverges.
- `run_lr_find(learn, ...)` ties it to a `TrainingSnapshot` (callbacks/snapshot.py), which saves everything a sweep
  changes and puts it back, so the finder leaves no trace; `Learner.lr_find` calls it. `LR_FIND` holds the
  sweep's defaults, declared once.
- The suggestions (`suggest_valley`, `suggest_steep`, `suggest_minimum`, `suggest_slide`, read off the curve
  smoothed without lag by `centred_smooth`) live in callbacks/lr_suggest.py, the results (`LRFinderResult`,
  `LRFinderSweep`) in callbacks/lr_result.py; all are importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..data.checks import in_unit_interval, int_at_least, one_of, positive
from ..data.core import loader_length
from .core import ORDER, Callback, CancelFitException, CancelValidException
from .hypers import set_group_hyper
from .lr_result import LRFinderResult, LRFinderSweep
from .lr_suggest import (
    SUGGESTION_NAMES,
    check_suggestion_names,
    suggest,
)
from .recorder import SmoothedValue
from .schedules.base import Exp, Lin
from .snapshot import SNAPSHOT_MEMORY_LIMIT, TrainingSnapshot

__all__ = ["LRFinderCallback", "run_lr_find", "STEP_MODES", "LR_FIND", "LRFindDefaults", "check_sweep"]

STEP_MODES = ("exp", "linear")


@dataclass(frozen=True)
class LRFindDefaults:
    """The defaults of `LRFinderCallback`, `run_lr_find` and `Learner.lr_find`."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    num_it: int = 100
    step_mode: str = "exp"
    stop_div: bool = True
    suggest_funcs: tuple[str, ...] = SUGGESTION_NAMES
    snapshot_memory_limit: int = SNAPSHOT_MEMORY_LIMIT


LR_FIND = LRFindDefaults()


# ----- the callback --------------------------------------------------------------------------------------------------
def check_sweep(start_lr, end_lr, num_it, step_mode, stop_div=True) -> None:
    """Refuse bad sweep settings with a message naming the parameter and its allowed range."""
    positive("start_lr", start_lr)
    positive("end_lr", end_lr)
    if start_lr >= end_lr:
        raise ValueError(f"start_lr must be smaller than end_lr, got start_lr={start_lr!r} >= end_lr={end_lr!r}")
    int_at_least("num_it", num_it, 2, hint=" (the sweep needs a first and a last rate)")
    one_of("step_mode", step_mode, STEP_MODES)
    if not isinstance(stop_div, bool):
        raise TypeError(f"stop_div must be True or False, got {stop_div!r}")


class LRFinderCallback(Callback):
    """Sweeps the learning rate from `start_lr` to `end_lr` over `num_it` training batches and records the loss of
    each; see the module docstring. Attach it to a fit with enough epochs for `num_it` batches (`run_lr_find` does).

    Every trainable parameter group's rate is its rate at the start of the fit times a common factor, so
    discriminative ratios survive; `lrs` are the rates of the trainable group with the largest rate. Frozen groups
    (the first `learn.frozen_idx`, and any whose parameters all have requires_grad False) keep their rate. The fit
    stops at a non-finite loss (always) and, with `stop_div`, when the smoothed loss exceeds `div_factor` times its
    minimum.

    Args:
        start_lr: the sweep's first rate (> 0).
        end_lr: the sweep's last rate (> `start_lr`).
        num_it: the training batches (optimizer steps) of the sweep (>= 2).
        step_mode: 'exp' (the rate grows geometrically) or 'linear'.
        stop_div: stop when the smoothed loss exceeds `div_factor` times its minimum (a non-finite loss always stops
            it).
        div_factor: how many times its minimum the smoothed loss may reach before `stop_div` stops the sweep (> 1).
        beta: the smoothing of the recorded `smooth_losses` (a debiased EMA; 0.98 as fastai).
    """

    # After the schedulers (ParamScheduler: 10), so the sweep's rate is the one used; before the Recorder (50),
    # which reads the rate in before_step.
    order = ORDER.lr_finder

    def __init__(self, start_lr: float = LR_FIND.start_lr, end_lr: float = LR_FIND.end_lr,
                 num_it: int = LR_FIND.num_it, step_mode: str = LR_FIND.step_mode, stop_div: bool = LR_FIND.stop_div,
                 div_factor: float = 4.0, beta: float = 0.98):
        check_sweep(start_lr, end_lr, num_it, step_mode, stop_div)
        if not (isinstance(div_factor, (int, float)) and math.isfinite(div_factor) and div_factor > 1):
            raise ValueError(f"div_factor must be a number > 1, got {div_factor!r}")
        self.start_lr, self.end_lr, self.num_it, self.step_mode = start_lr, end_lr, num_it, step_mode
        self.stop_div, self.div_factor, self.beta = stop_div, div_factor, beta
        self.sched = Exp(start_lr, end_lr) if step_mode == "exp" else Lin(start_lr, end_lr)
        self._reset()

    def _reset(self) -> None:
        self._loss_tensor, self._loss_value = None, math.nan
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smooth_losses: list[float] = []
        self.stop_reason = "not run"
        self.reference_group, self.group_ratios, self.swept_groups = 0, [1.0], [0]
        self._smoother = SmoothedValue(self.beta)
        self._best = math.inf

    def lr_at(self, i: int) -> float:
        """The reference group's rate at sweep iteration i: start_lr at 0, end_lr at num_it - 1."""
        return self.sched(i / (self.num_it - 1))

    def before_fit(self, learn) -> None:
        self._reset()
        groups = learn.opt.param_groups
        base = [g["lr"] for g in groups]
        frozen_idx = getattr(learn, "frozen_idx", 0)  # set by Learner.freeze_to; absent on other learners
        self.swept_groups = [i for i, g in enumerate(groups)
                             if i >= frozen_idx and any(p.requires_grad for p in g["params"])] or list(range(len(base)))
        # The largest swept rate is the reference (the last of equal ones, as the Recorder's `lr` column is the last
        # group's); a group at rate 0 stays at 0.
        self.reference_group = max(self.swept_groups, key=lambda i: (base[i], i))
        top = base[self.reference_group]
        self.group_ratios = [b / top for b in base] if top > 0 else [1.0] * len(base)
        self.stop_reason = f"fit ended after fewer than num_it={self.num_it} batches"

    def before_batch(self, learn) -> None:
        if not learn.training:
            return
        lr = self.lr_at(min(learn.train_iter, self.num_it - 1))
        groups = learn.opt.param_groups
        for i in self.swept_groups:
            set_group_hyper(groups[i], "lr", lr * self.group_ratios[i])

    def after_loss(self, learn) -> None:
        # Non-finite losses are caught here, per batch (micro-batch under gradient accumulation), before any
        # backward; the curve itself is recorded in before_step, once per optimizer step.
        if not learn.training:
            return
        self._loss_tensor, self._loss_value = learn.loss, self._agreed_value(learn, learn.loss)
        if not math.isfinite(self._loss_value):
            lr = learn.opt.param_groups[self.reference_group]["lr"]
            self.stop_reason = (f"stopped: non-finite loss ({self._loss_value}) at lr {lr:.3g}, "
                                f"iteration {len(self.lrs)}")
            raise CancelFitException()

    @staticmethod
    def _agreed_value(learn, loss) -> float:
        loss = loss.detach().float()
        # Data-parallel: every process must record the same curve and stop at the same batch, so they agree on the
        # mean loss (the learner provides all_reduce_mean; a plain learner has nothing to agree on).
        all_reduce_mean = getattr(learn, "all_reduce_mean", None)
        if all_reduce_mean is not None:
            loss = all_reduce_mean(loss)
        return loss.item()  # a host sync per batch: the divergence test needs the value now

    def before_step(self, learn) -> None:
        # GradientAccumulation (order 3) has replaced learn.loss by the mean of the step's micro-batch losses.
        loss = self._loss_value if learn.loss is self._loss_tensor else self._agreed_value(learn, learn.loss)
        lr = learn.opt.param_groups[self.reference_group]["lr"]  # read back: what the step really uses
        smooth = self._smoother.add(loss)
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smooth_losses.append(smooth)
        self._best = min(self._best, smooth)
        # "exceeds div_factor times its minimum", written so that it also means something for negative losses.
        if self.stop_div and smooth - self._best > (self.div_factor - 1) * abs(self._best):
            self.stop_reason = (f"stopped: diverged at lr {lr:.3g} (smoothed loss {smooth:.4g} > {self.div_factor:g} "
                                f"x its minimum {self._best:.4g}), iteration {len(self.lrs) - 1}")
            raise CancelFitException()
        if len(self.lrs) >= self.num_it:
            # The step at the last rate would change nothing that is recorded: skip it.
            self.stop_reason = f"completed {self.num_it} iterations"
            raise CancelFitException()

    def before_validate(self, learn) -> None:
        raise CancelValidException()

    def result(self, suggest_funcs: Iterable[str] = LR_FIND.suggest_funcs, wd=None, mom=None) -> LRFinderResult:
        if not self.lrs:
            hint = ("; the loss of the first batch, before any step, is already not finite: check the data, the model "
                    "and the loss function" if "non-finite" in self.stop_reason else "")
            raise ValueError(f"the LR finder recorded no loss ({self.stop_reason}){hint}")
        suggestions = suggest(self.lrs, self.losses, suggest_funcs, self.group_ratios)
        return LRFinderResult(self.lrs, self.losses, self.smooth_losses, suggestions, self.stop_reason,
                              self.reference_group, self.group_ratios, wd, self.start_lr, self.end_lr, self.num_it,
                              self.step_mode, mom=mom, swept_groups=self.swept_groups)

    def state_dict(self) -> dict:
        return {"start_lr": self.start_lr, "end_lr": self.end_lr, "num_it": self.num_it, "step_mode": self.step_mode,
                "stop_div": self.stop_div, "lrs": list(self.lrs), "losses": list(self.losses),
                "smooth_losses": list(self.smooth_losses)}


# ----- the whole procedure -------------------------------------------------------------------------------------------
def _check_wds(wds) -> list[float] | None:
    if wds is None:
        return None
    if isinstance(wds, (int, float)) and not isinstance(wds, bool):
        raise TypeError(f"wds must be a list of weight decays like [1e-2, 1e-3, 0], got the number {wds!r}")
    wds = list(wds)
    if not wds:
        raise ValueError("wds is empty; give at least one weight decay, e.g. wds=[1e-2, 1e-3, 1e-4, 0]")
    for i, wd in enumerate(wds):
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not math.isfinite(wd) or wd < 0:
            raise ValueError(f"wds[{i}] must be a finite number >= 0, got {wd!r}")
    if len(set(wds)) != len(wds):
        raise ValueError(f"wds has repeated values {wds}; give each weight decay once")
    return wds


def _check_moms(moms) -> list[float] | None:
    if moms is None:
        return None
    if isinstance(moms, (int, float)) and not isinstance(moms, bool):
        raise TypeError(f"moms must be a list of momentums like [0.95, 0.9, 0.85], got the number {moms!r}")
    moms = list(moms)
    if not moms:
        raise ValueError("moms is empty; give at least one momentum, e.g. moms=[0.95, 0.9, 0.85]")
    for i, mom in enumerate(moms):
        in_unit_interval(f"moms[{i}]", mom)
    if len(set(moms)) != len(moms):
        raise ValueError(f"moms has repeated values {moms}; give each momentum once")
    return moms


def _sweep_settings(wds, moms) -> tuple[tuple[str, ...], list[tuple]]:
    """The names swept and, per curve, (key, wd, mom): the key is the one value swept, or the (wd, mom) pair."""
    if wds is not None and moms is not None:
        return ("wd", "mom"), [((wd, mom), wd, mom) for wd in wds for mom in moms]
    if moms is not None:
        return ("mom",), [(mom, None, mom) for mom in moms]
    if wds is not None:
        return ("wd",), [(wd, wd, None) for wd in wds]
    return (), [(None, None, None)]


def run_lr_find(learn, start_lr: float = LR_FIND.start_lr, end_lr: float = LR_FIND.end_lr,
                num_it: int = LR_FIND.num_it, step_mode: str = LR_FIND.step_mode, stop_div: bool = LR_FIND.stop_div,
                wds=None, suggest_funcs=LR_FIND.suggest_funcs,
                snapshot_memory_limit: int = LR_FIND.snapshot_memory_limit, show_plot: bool = False, moms=None):
    """Run the LR finder on `learn` (see `Learner.lr_find`); return an `LRFinderResult`, or an `LRFinderSweep`
    when `wds` and/or `moms` are given (one curve per value, or per (wd, mom) pair, each from the same starting
    state). Whatever happens, the learner is left as it was found."""
    check_sweep(start_lr, end_lr, num_it, step_mode, stop_div)
    names = check_suggestion_names(suggest_funcs)
    swept, settings = _sweep_settings(_check_wds(wds), _check_moms(moms))
    length = loader_length(learn.dls.train)
    if length == 0:
        raise ValueError("the training loader is empty: the LR finder needs training batches")
    # A stream (no len()): the sweep's epochs draw num_it batches each from it, as fit(steps_per_epoch=) does.
    n_batches = num_it if length is None else length
    stream_steps = n_batches if length is None else None
    # Optimizer steps per epoch: fewer than batches under GradientAccumulation, which says how many.
    steps = min((cb.steps_per_epoch(n_batches) for cb in learn.cbs), default=n_batches)
    n_epoch = math.ceil(num_it / steps)  # the callback cancels the fit once num_it steps are done

    # Callbacks that write files (checkpoints, CSV logs) or declare that they sit the sweep out (averages, schedulers)
    # are off the learner during it (Callback's `writes_files`, `sits_out_lr_find`).
    writers = [cb for cb in learn.cbs if cb.writes_files or cb.sits_out_lr_find]
    learn.remove_cbs(writers)
    try:
        snapshot = TrainingSnapshot(learn, snapshot_memory_limit)
    except BaseException:
        learn.add_cbs(writers)
        raise
    progress = learn.progress
    show_table = progress.show_table if progress is not None else None
    curves = {}
    try:
        if progress is not None:
            progress.show_table = False  # an epoch table of a sweep, without validation, says nothing
        for k, (key, wd, mom) in enumerate(settings):
            if k:
                snapshot.restore(learn)  # every curve starts from the same state
            if mom is not None:
                # An optimizer without momentum raises here, before the first step (the snapshot puts all back).
                learn.set_hyper("mom", mom)
            finder = LRFinderCallback(start_lr, end_lr, num_it, step_mode, stop_div)
            learn.fit(n_epoch, wd=wd, cbs=[finder], steps_per_epoch=stream_steps)
            curves[key] = finder.result(names, wd=wd, mom=mom)
    finally:
        try:
            snapshot.restore(learn)  # the last fit's steps_per_epoch too, which the sweep's fit replaced
            if progress is not None:
                progress.show_table = show_table
        finally:
            snapshot.discard()
            learn.add_cbs(writers)
    result = LRFinderSweep(curves, swept) if swept else curves[None]
    if show_plot:
        _show(result.plot())
    return result


def _show(fig) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    # A non-interactive backend (Agg in scripts and tests) cannot show anything and would only warn.
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "ps", "svg", "cairo", "template"):
        plt.show()
