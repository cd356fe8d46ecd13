"""Weight averaging: `SWA` (stochastic weight averaging, Izmailov et al. 2018) and `EMA` (an exponential moving
average of the weights), on torch's `torch.optim.swa_utils` (`AveragedModel`, `update_bn`, `get_ema_multi_avg_fn`).

Both keep their averaged copy beside the model (`swa.model`, `ema.model`; each fit starts its own average), save it
in `state_dict()` so that a checkpoint taken mid-fit resumes exactly, sit out the LR finder's sweep, and add columns
to the epoch table: how many weights have been averaged so far (`swa_n`, `ema_n`: 0 while averaging has not
started) and the averaged model's validation loss and metrics (`swa_valid_loss`, `swa_<metric>`; `ema_...`), NaN
where it was not validated.

    learn.fit_one_cycle(10, 1e-2, cbs=[SWA(start=0.75)])   # the last 25% averaged; learn.model ends averaged
    # the paper's: a constant rate while averaging, the tail of the one-cycle (truncated at `start`)
    learn.fit_one_cycle(10, 0.1, cbs=[SWA(start=0.75, lr=0.01)])
    # or the whole one-cycle squeezed into the first 75%, then the constant tail
    learn.fit(10, cbs=[ParamScheduler(swa_scheds(one_cycle(0.1, final_div=10), Const(0.01))), SWA()])
    ema = EMA(decay=0.999)
    learn.fit(5, cbs=[ema])
    with ema.applied(learn):                                 # the EMA weights for this block only
        learn.validate()
"""

from __future__ import annotations

import contextlib
import numbers
import warnings

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..data.checks import int_at_least, positive, real, user_stacklevel
from .core import ORDER, Callback
from .ensembles import cycle_ends, lr_per_step
from .schedule_tail import check_tail
from .scheduler import ParamScheduler
from .schedules.base import Const, Lin, Schedule, combine
from .schedules.cycles import OneCycle
from .weights import exchange_weights, recompute_batch_norm, validate_with, validation_columns

__all__ = ["SWA", "EMA", "ema_decay", "swa_scheds", "swa_cycles", "SWA_START"]

SWA_START = 0.75  # SWA's default start: the last quarter of the fit averaged


def swa_scheds(head: OneCycle | Schedule, tail: Schedule, start: float = SWA_START) -> dict:
    """Schedules (of the fraction of the fit) for a ParamScheduler: `head` over the first `start` of the fit (its
    own pct run from 0 to 1 there), then `tail`, the rate while SWA averages. A one-cycle head brings its momentum,
    held at its first value during the tail."""
    if not 0 < real("start", start) < 1:
        raise ValueError(f"start must be a fraction of the fit in (0, 1), got {start!r}")
    lr = head.lr if isinstance(head, OneCycle) else head
    scheds = {"lr": combine([start, 1 - start], [lr, tail])}
    if isinstance(head, OneCycle) and head.mom is not None:
        scheds["mom"] = combine([start, 1 - start], [head.mom, Const(head.moms[0])])
    return scheds


def swa_cycles(high: float, low: float, n_cycles: int) -> Schedule:
    """The paper's cyclical averaging rate, as a tail for `swa_scheds`: `n_cycles` cycles, each linear from `high`
    down to `low`; `SWA(every='cycle')` then averages at each cycle's lowest rate."""
    int_at_least("n_cycles", n_cycles, 1)
    return combine([1 / n_cycles] * n_cycles, [Lin(high, low)] * n_cycles)


def _epoch_row(learn) -> dict | None:
    """This epoch's row of the epoch table, written by the Recorder (order 50) just before our after_epoch."""
    rows = learn.recorder.epoch_rows
    if rows and rows[-1]["epoch"] == learn.epoch and rows[-1]["fit"] == learn.recorder.fit_index:
        return rows[-1]
    return None


class _Averaging(Callback):
    """What SWA and EMA share: the averaged copy (`self.averaged`, an AveragedModel), its state in checkpoints (kept
    aside when loaded before the fit has built the copy: a resumed fit loads states before `before_fit`), exchanging
    it with the learner's weights for a block, and the epoch table's columns."""

    prefix = ""
    sits_out_lr_find = True  # no swept weight is ever averaged or kept

    def __init__(self):
        self.averaged: AveragedModel | None = None
        self.n = 0  # weights averaged so far in this fit (a Python int: reading AveragedModel.n_averaged would sync)
        self._pending: dict | None = None

    @property
    def model(self):
        """The averaged weights as a module of the model's architecture (None before the first fit)."""
        return None if self.averaged is None else self.averaged.module

    def _new_average(self, learn) -> AveragedModel:
        raise NotImplementedError

    def before_fit(self, learn):
        if learn.resuming and self._pending is not None:
            self.averaged = self._new_average(learn)
            self._load_pending()
            return
        self.averaged, self.n, self._pending = self._new_average(learn), 0, None

    @contextlib.contextmanager
    def applied(self, learn):
        """`learn.model` holds the averaged weights inside the block and exactly its own again after it (they are
        exchanged, bit for bit, even after an error). Inside or outside a fit, after `learn.load(checkpoint)` too;
        `learn.validate()`, `learn.get_preds()` in the block use the averaged weights."""
        if self.averaged is None and self._pending is not None:  # loaded from a checkpoint, no fit since
            self.averaged = self._new_average(learn)
            self._load_pending()
        if self.averaged is None:
            raise RuntimeError(f"{self.name} has no averaged weights yet: fit with it attached first")
        exchange_weights(learn.model, self.averaged.module)
        try:
            yield learn
        finally:
            exchange_weights(learn.model, self.averaged.module)

    def _validated(self, learn) -> dict[str, float]:
        with self.applied(learn):
            return validate_with(learn, self.prefix)

    def _fill_row(self, learn, validation: dict | None) -> None:
        row = _epoch_row(learn)
        if row is None:
            return
        row[f"{self.prefix}_n"] = self.n
        row.update(validation_columns(learn, self.prefix))
        row.update(validation or {})

    def state_dict(self) -> dict:
        weights = None if self.averaged is None else dict(self.averaged.state_dict())
        return {"n": self.n, "averaged": weights, **self._extra_state()}

    def _extra_state(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        self._pending = dict(state)
        if self.averaged is not None:
            self._load_pending()

    def _load_pending(self) -> None:
        state, self._pending = self._pending, None
        self.n = int(state["n"])
        if state["averaged"] is not None:
            self.averaged.load_state_dict(state["averaged"])
        self._load_extra(state)

    def _load_extra(self, state: dict) -> None:
        pass


class SWA(_Averaging):
    """Stochastic Weight Averaging: the plain mean of the weights at the averaging points from `start` to the end of
    the fit, with the batch-norm statistics recomputed for the mean at the end.

    - `start`: a fraction of the fit in (0, 1) (0.75: the last quarter of the optimizer steps) or an epoch index
      (int: from that epoch on).
    - `every`: 'epoch' averages the weights at the end of each training epoch after `start` (the paper's with a
      constant rate); 'cycle' at the end of each cycle of the lr schedule after it (the paper's cyclical rate, which
      averages at the cycle minima; the cycle ends are read from the schedule, as `SnapshotEnsemble` reads them); an
      int n every n optimizer steps after it.
    - at the end of the last epoch the mean's batch-norm statistics are recomputed over one pass of the training data
      (torch's `update_bn`, momentum None; RNGs and loaders put back, so a resume stays exact; averaged over the
      processes when data-parallel) and it is validated: `swa_valid_loss` and `swa_<metric>` in the last row of the
      epoch table. `swap=True` (default) then copies it into `learn.model`; `swa.model` keeps it either way.

    - `lr`: the learning rate while averaging, from `start` to the end: None (the default) leaves the fit's schedule
      as it is; a number (the paper's constant rate) or a schedule of the fraction of the averaging done (its
      cyclical rate, K cycles from a1 down to a2: `swa_cycles(a1, a2, K)` with `every='cycle'`) becomes the tail of
      the fit's lr schedule: the ParamScheduler of the fit (`fit_one_cycle`'s, `fit_sgdr`'s, your own) runs its
      own rates up to `start`, exactly, then this one (`Callback.schedule_tails`), so one writer sets, checks and
      records every rate; momentum keeps its own schedule. A fit without a ParamScheduler of the rate is refused.
      `swa_scheds(head, tail, start)` instead squeezes the whole head into the first `start` of the fit.
    """

    order = ORDER.swa  # after the Recorder wrote the epoch's row; before the loggers, the table, the checkpoints
    prefix = "swa"

    def __init__(self, start: float | int = SWA_START, every: str | int = "epoch", swap: bool = True,
                 lr: float | Schedule | None = None):
        super().__init__()
        if isinstance(start, bool) or not isinstance(start, numbers.Real):
            raise TypeError(f"start must be a fraction of the fit in (0, 1) or an epoch index (int), got {start!r}")
        if isinstance(start, numbers.Integral):
            int_at_least("start (an epoch index)", start, 0)
        elif not 0 < real("start", start) < 1:
            raise ValueError(f"start must be a fraction of the fit in (0, 1) (0.75: average the last quarter) or an "
                             f"epoch index (int), got {start!r}")
        if every not in ("epoch", "cycle"):
            int_at_least("every (optimizer steps between averaging points, or 'epoch' or 'cycle')", every, 1)
        self.start, self.every, self.swap = start, every, bool(swap)
        self.lr = None if lr is None else check_tail("lr", lr)
        if self.lr is not None:
            positive("lr", self.lr.value(0.0))  # a first look; the ParamScheduler checks the whole tail in the fit
        self.start_step = 0  # averaging points come after this many optimizer steps of the fit
        self.points: set[int] = set()  # every='cycle' or n: the optimizer steps done at each averaging point
        self.finalized = False

    def __repr__(self) -> str:
        lr = "" if self.lr is None else f", lr={self.lr!r}"
        return f"SWA(start={self.start!r}, every={self.every!r}, swap={self.swap}{lr})"

    def fit_config(self) -> dict:
        return {"start": self.start, "every": self.every, "swap": self.swap,
                "lr": None if self.lr is None else repr(self.lr)}

    def schedule_tails(self, learn) -> dict:
        """With `lr`, the averaging rate as the tail of the fit's lr schedule, from the first averaged step on."""
        return {} if self.lr is None else {"lr": (self.start_step_in(learn), self.lr)}

    def start_step_in(self, learn) -> int:
        """The optimizer steps of the fit before averaging starts (`start` as an epoch index or a fraction)."""
        if isinstance(self.start, numbers.Integral):
            if self.start >= learn.n_epoch:
                raise ValueError(f"SWA start={self.start} is an epoch index after the end of this fit of "
                                 f"{learn.n_epoch} epochs: pass an epoch < {learn.n_epoch} or a fraction in (0, 1)")
            return self.start * (learn.n_train_iters // learn.n_epoch)
        return round(self.start * learn.n_train_iters)

    def _new_average(self, learn) -> AveragedModel:
        # Parameters only: the buffers (batch-norm statistics) are recomputed for the mean at the end.
        return AveragedModel(learn.model, use_buffers=False)

    def before_fit(self, learn):
        if self.lr is not None and not any(isinstance(cb, ParamScheduler) and "lr" in cb.fit_scheds
                                           for cb in learn.cbs):
            raise ValueError(f"{self!r} supplies the learning rate while averaging as the tail of the fit's lr "
                             "schedule, but no ParamScheduler schedules the rate in this fit: use a recipe "
                             "(fit_one_cycle, fit_sgdr, ...) or a ParamScheduler({'lr': ...}), or SWA without lr")
        steps_per_epoch = learn.n_train_iters // learn.n_epoch
        start_step = self.start_step_in(learn)
        n = learn.n_train_iters
        if self.every == "epoch":
            self.points = set()
            n_points = (n - start_step) // steps_per_epoch
        else:
            ends = [t + 1 for t in cycle_ends(lr_per_step(learn))] if self.every == "cycle" else range(n + 1)
            step = 1 if self.every == "cycle" else self.every
            self.points = {p for p in ends if p > start_step and (p - start_step) % step == 0}
            n_points = len(self.points)
        if n_points < 1:
            raise ValueError(f"SWA(start={self.start!r}, every={self.every!r}) has no averaging point in this fit of "
                             f"{learn.n_train_iters} optimizer steps ({steps_per_epoch} an epoch): start earlier "
                             "or average more often")
        self.start_step = start_step
        if not learn.resuming:
            self.finalized = False
        super().before_fit(learn)

    def _average(self, learn) -> None:
        self.averaged.update_parameters(learn.model)
        self.n += 1

    def after_step(self, learn):
        if learn.train_iter + 1 in self.points:
            self._average(learn)

    def after_train(self, learn):
        if self.every == "epoch" and (learn.epoch + 1) * (learn.n_train_iters // learn.n_epoch) > self.start_step:
            self._average(learn)

    def after_epoch(self, learn):
        last = learn.epoch == learn.n_epoch - 1
        self._fill_row(learn, self._finalize(learn) if last else None)

    def after_fit(self, learn):
        if not self.finalized:  # the fit stopped early (EarlyStoppingCallback, a NaN loss): no last epoch's row
            self._finalize(learn)

    def _finalize(self, learn) -> dict:
        """Batch-norm statistics for the mean, its validation, and with `swap` the mean copied into the model."""
        self.finalized = True
        if self.n == 0:
            warnings.warn("SWA: the fit stopped before the first averaging point; nothing was averaged and the model "
                          "is left as trained", stacklevel=user_stacklevel())
            return {}
        with self.applied(learn):
            recompute_batch_norm(learn)
            results = validate_with(learn, self.prefix) if learn.dls.valid is not None else {}
        if self.swap:
            with torch.no_grad():
                learn.model.load_state_dict(self.averaged.module.state_dict())
        return results

    def _extra_state(self) -> dict:
        return {"finalized": self.finalized}

    def _load_extra(self, state: dict) -> None:
        self.finalized = bool(state["finalized"])


def ema_decay(step: int, decay: float, warmup: bool = True, warmup_gamma: float = 1.0,
              warmup_power: float = 2 / 3) -> float:
    """The decay of the EMA's update number `step` (0 for the first, which copies the weights): `decay`, or with
    `warmup` timm's ModelEmaV3 warm-up, `min(decay, 1 - (1 + step / warmup_gamma) ** -warmup_power)` (0.37 at
    step 1, 0.9 at about 31, 0.999 at about 31 600 with the defaults)."""
    if not warmup:
        return decay
    return min(decay, 1 - (1 + step / warmup_gamma) ** -warmup_power)


class EMA(_Averaging):
    """An exponential moving average of the weights: `ema = d * ema + (1 - d) * weights` after every `every`-th
    step, `d = ema_decay(update, decay, warmup, ...)`. Floating-point buffers (batch-norm statistics) are averaged
    like the weights, as timm does; integer ones are copied. Data-parallel: each process averages its own batch-norm
    statistics, and the EMA's are averaged over the processes at each training epoch's end, so they agree.

    Validating the EMA weights (`validate=True`) exchanges them with the model's for the validation only;
    `with ema.applied(learn):` uses them for a block.

    Args:
        decay: the weight the average keeps at each update, in (0, 1); 0.999 forgets over about 1000 updates. With
            `warmup` it is the ceiling the warmed-up decay reaches.
        warmup: warm the decay up as timm's ModelEmaV3 does, `min(decay, 1 - (1 + n / warmup_gamma) **
            -warmup_power)` at update n, so the average forgets its random start quickly; False: `decay` from the
            second update on (the first copies the weights).
        warmup_gamma: the warm-up's time scale, in updates (> 0).
        warmup_power: the warm-up's exponent (> 0); the default 2/3 reaches 0.999 after about 31 600 updates.
        every: update the average after every `every`-th optimizer step (>= 1).
        validate: also validate the EMA weights at the end of every epoch (`ema_valid_loss`, `ema_<metric>` in the
            epoch table).
        swap_at_end: leave the EMA weights in `learn.model` after the fit; False: the trained weights stay.
    """

    order = ORDER.ema  # after SWA: both read the epoch's row from the Recorder
    prefix = "ema"

    def __init__(self, decay: float = 0.999, warmup: bool = True, warmup_gamma: float = 1.0,
                 warmup_power: float = 2 / 3, every: int = 1, validate: bool = True, swap_at_end: bool = False):
        super().__init__()
        if not 0 < real("decay", decay) < 1:
            raise ValueError(f"decay must be in (0, 1) (the weight the average keeps at each update; 0.999 forgets "
                             f"over about 1000 updates), got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.warmup_gamma, self.warmup_power = positive("warmup_gamma", warmup_gamma), positive("warmup_power",
                                                                                                 warmup_power)
        self.every = int_at_least("every", every, 1)
        self.validate, self.swap_at_end = bool(validate), bool(swap_at_end)
        # Positions of the averaged (floating-point) and copied tensors, and ours of each: set at the first update.
        self._floats: list[int] | None = None
        self._others: list[int] = []
        self._ours: tuple[list, list] = ([], [])

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, warmup={self.warmup}, every={self.every})"

    def fit_config(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "warmup_gamma": self.warmup_gamma,
                "warmup_power": self.warmup_power, "every": self.every}

    def _new_average(self, learn) -> AveragedModel:
        # The container: the copy (`module`), its count and its state dict. The per-step update is `_update`.
        self._floats = None
        return AveragedModel(learn.model, use_buffers=True)

    @torch.no_grad()
    def _update(self, model) -> None:
        """One update with torch's `get_ema_multi_avg_fn`, given the tensors directly: AveragedModel's own
        `update_parameters` reads its count on the host twice per call (two syncs a step on a GPU) and groups the
        tensors by dtype every time (about three times the time of this on a small MLP)."""
        theirs = [*model.parameters(), *model.buffers()]
        if self._floats is None:  # our tensors never change: which are averaged (floating point), which copied
            ours = [*self.averaged.module.parameters(), *self.averaged.module.buffers()]
            self._floats = [i for i, t in enumerate(ours) if t.is_floating_point() or t.is_complex()]
            self._others = [i for i in range(len(ours)) if i not in set(self._floats)]
            self._ours = ([ours[i].detach() for i in self._floats], [ours[i].detach() for i in self._others])
        averaged, copied = self._ours
        if self.n == 0:  # the first update copies (decay 0)
            for a, i in zip(averaged, self._floats, strict=True):
                a.copy_(theirs[i])
        else:
            get_ema_multi_avg_fn(self.decay_at(self.n))(averaged, [theirs[i] for i in self._floats], None)
        for a, i in zip(copied, self._others, strict=True):
            a.copy_(theirs[i])
        self.averaged.n_averaged += 1

    def decay_at(self, step: int) -> float:
        return ema_decay(step, self.decay, self.warmup, self.warmup_gamma, self.warmup_power)

    def after_step(self, learn):
        if (learn.train_iter + 1) % self.every == 0:
            self._update(learn.model)
            self.n += 1

    def after_train(self, learn):
        if learn.is_distributed:
            with torch.no_grad():
                for b in self.averaged.module.buffers():
                    if b.is_floating_point():
                        b.copy_(learn.all_reduce_mean(b))

    def after_epoch(self, learn):
        wanted = self.validate and self.n > 0 and learn.dls.valid is not None
        self._fill_row(learn, self._validated(learn) if wanted else None)

    def after_fit(self, learn):
        if self.swap_at_end and self.n > 0:
            with torch.no_grad():
                learn.model.load_state_dict(self.averaged.module.state_dict())

