"""The recipes (mixed into `Learner`): each builds its callback and calls `fit`. Their defaults are declared once, on
the schedules (`ONE_CYCLE`, `FLAT_COS`, `SGDR_DEFAULTS`), the LR finder (`LR_FIND`) and `FINE_TUNE` below, and only
referenced here."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from ..callbacks.core import Callback
from ..callbacks.lr_finder import LR_FIND, run_lr_find
from ..callbacks.lr_result import LRFinderResult, LRFinderSweep
from ..callbacks.scheduler import FlatCosCallback, OneCycleCallback, SGDRCallback
from ..callbacks.schedules.cycles import FLAT_COS, ONE_CYCLE, SGDR_DEFAULTS
from ..data.checks import int_at_least, positive
from . import epoch_length, preflight

logger = logging.getLogger("cyclr")


@dataclass(frozen=True)
class FineTuneDefaults:
    """The defaults of `Learner.fine_tune`: fastai v2's (`freeze_pct_start` is the frozen phase's pct_start)."""

    base_lr: float = 2e-3
    freeze_epochs: int = 1
    lr_mult: float = 100.0
    pct_start: float = 0.3
    div: float = 5.0
    freeze_pct_start: float = 0.99


FINE_TUNE = FineTuneDefaults()


class Recipes:
    def fit_one_cycle(self, cyc_len: int, max_lr=None, moms=ONE_CYCLE.moms, div_factor: float = ONE_CYCLE.div_factor,
                      pct_start: float = ONE_CYCLE.pct_start, final_div: float | None = ONE_CYCLE.final_div,
                      wd: float | None = None, cbs: Iterable[Callback] = (), resume=None,
                      allow_length_change: bool = False, anneal_strategy: str = ONE_CYCLE.anneal_strategy,
                      three_phase: bool = ONE_CYCLE.three_phase, allow_config_change: bool | Collection[str] = False,
                      steps_per_epoch: int | None = None):
        """Train `cyc_len` epochs with the one-cycle policy (`cyclr.callbacks.scheduler.OneCycleCallback`).

        `max_lr` (default `self.lr`) may be a list or `slice(lo, hi)` for per-group rates; `moms=None` leaves the
        momentum alone; `anneal_strategy='linear'` and `three_phase=True` as torch's OneCycleLR. `resume`,
        `allow_length_change` and `allow_config_change` as in `fit`. With `cbs=[SWA(start=0.75, lr=0.01)]` the
        cycle runs up to `start` and the rest of the fit at SWA's averaging rate (its `lr`, the cycle's tail).

        Args:
            cyc_len: the epochs of the cycle (>= 1).
            max_lr (float | list[float] | slice | None): the peak rate: a number, one per parameter group, or a slice
                (see `OneCycleCallback`); None: the Learner's `lr`.
            moms (Sequence[float] | None): the momentum's start, middle (and end) values; None: leave the momentum
                alone.
            div_factor: the cycle starts at `max_lr / div_factor`.
            pct_start: the fraction of training spent raising the rate.
            final_div: the cycle ends at `max_lr / final_div`; None: `div_factor * 1e4`.
            wd: the weight decay for the fit; None: leave it as it is.
            cbs (Callback | Iterable[Callback]): callbacks attached for this fit only.
            resume (str | os.PathLike | None): as in `fit`.
            allow_length_change: as in `fit`.
            anneal_strategy: 'cos' or 'linear', as in torch's OneCycleLR.
            three_phase: torch OneCycleLR's three phases (needs `pct_start < 0.5`).
            allow_config_change: as in `fit`.
            steps_per_epoch: as in `fit`: the batches each epoch draws from a training loader without a len() (a
                stream), which this schedule needs; None: the loader's len().
        """
        cb = OneCycleCallback(self.lr if max_lr is None else max_lr, div_factor, pct_start, final_div, moms,
                              anneal_strategy, three_phase)
        self.fit(cyc_len, wd=wd, cbs=[cb, *cbs], resume=resume, allow_length_change=allow_length_change,
                 allow_config_change=allow_config_change, steps_per_epoch=steps_per_epoch)

    def fit_flat_cos(self, n_epoch: int, lr=None, pct_start: float = FLAT_COS.pct_start,
                     div_final: float = FLAT_COS.div_final, wd: float | None = None, cbs: Iterable[Callback] = (),
                     resume=None, allow_length_change: bool = False,
                     allow_config_change: bool | Collection[str] = False, steps_per_epoch: int | None = None):
        """Train `n_epoch` epochs at `lr` (default `self.lr`; a list or slice per group) held flat for `pct_start`
        of training, then annealed by half a cosine to `lr / div_final` (fastai's `fit_flat_cos`). `resume`,
        `allow_length_change` and `allow_config_change` as in `fit`.

        Args:
            n_epoch: the epochs to train (>= 1).
            lr (float | list[float] | slice | None): the flat rate: a number, one per parameter group, or a slice; None:
                the Learner's `lr`.
            pct_start: the fraction of training at the flat rate, in (0, 1).
            div_final: the fit ends at `lr / div_final` (>= 1).
            wd: the weight decay for the fit; None: leave it as it is.
            cbs (Callback | Iterable[Callback]): callbacks attached for this fit only.
            resume (str | os.PathLike | None): as in `fit`.
            allow_length_change: as in `fit`.
            allow_config_change: as in `fit`.
            steps_per_epoch: as in `fit`: the batches each epoch draws from a training loader without a len() (a
                stream), which this schedule needs; None: the loader's len().
        """
        cb = FlatCosCallback(self.lr if lr is None else lr, pct_start, div_final)
        self.fit(n_epoch, wd=wd, cbs=[cb, *cbs], resume=resume, allow_length_change=allow_length_change,
                 allow_config_change=allow_config_change, steps_per_epoch=steps_per_epoch)

    def fine_tune(self, epochs: int, base_lr: float = FINE_TUNE.base_lr, freeze_epochs: int = FINE_TUNE.freeze_epochs,
                  lr_mult: float = FINE_TUNE.lr_mult, pct_start: float = FINE_TUNE.pct_start,
                  div: float = FINE_TUNE.div, wd: float | None = None, cbs: Iterable[Callback] = (),
                  moms=ONE_CYCLE.moms, steps_per_epoch: int | None = None):
        """fastai's `fine_tune`: `freeze()`, one-cycle for `freeze_epochs` at `slice(base_lr)` (the head at
        `base_lr`, the body's groups at a tenth: only their batch norm trains) with pct_start 0.99; then
        `base_lr /= 2`, `unfreeze()`, and one-cycle for `epochs` over `slice(base_lr / lr_mult, base_lr)` with
        `pct_start` and `div_factor=div`. Two fits: the Recorder has both, each group's rate in `lr_0`, `lr_1`, ...

        Args:
            epochs: the epochs of the unfrozen phase (>= 1).
            base_lr: the head's rate in the frozen phase; the unfrozen phase peaks at `base_lr / 2` (> 0).
            freeze_epochs: the epochs of the frozen phase (>= 0; 0 skips it).
            lr_mult: in the unfrozen phase the first group's rate is the last group's divided by `lr_mult` (> 0).
            pct_start: the unfrozen phase's `pct_start` (the frozen phase's is 0.99).
            div: the unfrozen phase's `div_factor`: it starts at its peak / `div`.
            wd: the weight decay for both fits; None: leave it as it is.
            cbs (Callback | Iterable[Callback]): callbacks attached for both fits.
            moms (Sequence[float] | None): both phases' momentum values, as in `fit_one_cycle`; None: leave the momentum
                alone.
            steps_per_epoch: as in `fit`, for both fits: the batches each epoch draws from a training loader without a
                len() (a stream); None: the loader's len().
        """
        # Every argument is checked (and both schedules built) before anything is frozen.
        int_at_least("freeze_epochs", freeze_epochs, 0)
        positive("base_lr", base_lr)
        positive("lr_mult", lr_mult)
        cbs = preflight.check_fit_arguments(epochs, None, wd, cbs)
        frozen_cb = OneCycleCallback(slice(base_lr), pct_start=FINE_TUNE.freeze_pct_start, moms=moms)
        thawed_cb = OneCycleCallback(slice(base_lr / 2 / lr_mult, base_lr / 2), div_factor=div, pct_start=pct_start,
                                     moms=moms)
        # A stream without steps_per_epoch (or a wrong one) is refused here, not after the model is frozen.
        epoch_length.batches_per_epoch(self, [thawed_cb, *cbs], steps_per_epoch)
        self.freeze()
        if freeze_epochs:
            self.fit(freeze_epochs, wd=wd, cbs=[frozen_cb, *cbs], steps_per_epoch=steps_per_epoch)
        self.unfreeze()
        self.fit(epochs, wd=wd, cbs=[thawed_cb, *cbs], steps_per_epoch=steps_per_epoch)

    def fit_sgdr(self, n_cycles: int, cycle_len: int, max_lr=None, cycle_mult: int = SGDR_DEFAULTS.cycle_mult,
                 eta_min: float = SGDR_DEFAULTS.eta_min, wd: float | None = None, cbs: Iterable[Callback] = (),
                 resume=None, allow_length_change: bool = False,
                 allow_config_change: bool | Collection[str] = False, steps_per_epoch: int | None = None):
        """Train with SGDR: `n_cycles` cosine cycles, cycle k lasting `cycle_len * cycle_mult**k` epochs. `resume`,
        `allow_length_change` and `allow_config_change` as in `fit`.

        Args:
            n_cycles: the number of cosine cycles (>= 1).
            cycle_len: the first cycle's length, in epochs (>= 1).
            max_lr (float | list[float] | slice | None): the rate each cycle restarts at; None: the Learner's `lr`.
            cycle_mult: each cycle is `cycle_mult` times as long as the one before (1: equal cycles).
            eta_min: the rate each cycle anneals down to.
            wd: the weight decay for the fit; None: leave it as it is.
            cbs (Callback | Iterable[Callback]): callbacks attached for this fit only.
            resume (str | os.PathLike | None): as in `fit`.
            allow_length_change: as in `fit`.
            allow_config_change: as in `fit`.
            steps_per_epoch: as in `fit`: the batches each epoch draws from a training loader without a len() (a
                stream), which this schedule needs; None: the loader's len().
        """
        cb = SGDRCallback(self.lr if max_lr is None else max_lr, n_cycles, cycle_len, cycle_mult, eta_min)
        if self.is_main_process:
            logger.info("fit_sgdr: %d cycles of %d*%d**k epochs = %d epochs", n_cycles, cycle_len, cycle_mult,
                        cb.total_epochs)
        self.fit(cb.total_epochs, wd=wd, cbs=[cb, *cbs], resume=resume, allow_length_change=allow_length_change,
                 allow_config_change=allow_config_change, steps_per_epoch=steps_per_epoch)

    def lr_find(self, start_lr: float = LR_FIND.start_lr, end_lr: float = LR_FIND.end_lr, num_it: int = LR_FIND.num_it,
                step_mode: str = LR_FIND.step_mode, stop_div: bool = LR_FIND.stop_div, show_plot: bool = False,
                wds=None, suggest_funcs=LR_FIND.suggest_funcs,
                snapshot_memory_limit: int = LR_FIND.snapshot_memory_limit, moms=None):
        """Train `num_it` batches with the rate growing from `start_lr` to `end_lr` ('exp' or 'linear' steps) and
        return the curve of loss against rate with suggestions (`cyclr.callbacks.lr_finder.LRFinderResult`).

        Stops early at a non-finite loss and, with `stop_div`, when the smoothed loss exceeds 4x its minimum.
        `wds=[1e-2, 1e-3, 0]` runs one sweep per weight decay, `moms=[0.95, 0.9, 0.85]` one per momentum (Adam's
        beta1), both one per pair, each from the same starting state, and returns an `LRFinderSweep` (`.to_df()`,
        `.plot()`, `.best_pair`). On a frozen model only the trainable groups are swept. Afterwards the
        learner is exactly as before (weights, optimizer, RNGs, loaders, callbacks, history), even after an
        exception; the result is kept for `learn.recorder.plot_lr_find()` and `learn.sched`.

        Args:
            start_lr: the sweep's first rate (> 0).
            end_lr: the sweep's last rate (> `start_lr`).
            num_it: the training batches (optimizer steps) of the sweep (>= 2).
            step_mode: 'exp' (the rate grows geometrically) or 'linear'.
            stop_div: stop when the smoothed loss exceeds 4 times its minimum (a non-finite loss always stops it).
            show_plot: draw the curve when the sweep ends (on an interactive matplotlib backend).
            wds (Sequence[float] | None): one sweep per weight decay; None: the optimizer's weight decay, one sweep.
            suggest_funcs (str | Sequence[str]): the suggestions to compute, by name: 'valley', 'steep', 'minimum',
                'slide'.
            snapshot_memory_limit: bytes of weights and optimizer state kept in memory to restore afterwards; above it
                the snapshot goes to a temporary file.
            moms (Sequence[float] | None): one sweep per momentum (Adam's beta1); None: the optimizer's momentum, one
                sweep.
        """
        self._join_launched_group()  # under torchrun: before the snapshot, which saves this process's shard
        result = run_lr_find(self, start_lr, end_lr, num_it, step_mode, stop_div, wds, suggest_funcs,
                             snapshot_memory_limit, show_plot, moms=moms)
        self.recorder.lr_find_result = result
        return result

    @property
    def sched(self) -> LRFinderResult | LRFinderSweep:
        """fastai 0.7's `learn.sched` after `lr_find`: the last result, whose `.plot()` draws the LR-finder curve and
        `.plot_lr()` the sweep's rates."""
        result = self.recorder.lr_find_result
        if result is None:
            raise RuntimeError("learn.sched draws the last LR-finder sweep: run learn.lr_find() first")
        return result
