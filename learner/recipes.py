"""The recipes (mixed into `Learner`): each builds its callback and calls `fit`. Their defaults are declared once, on
the schedules (`ONE_CYCLE`, `SGDR_DEFAULTS`) and the LR finder (`LR_FIND`), and only referenced here."""

from __future__ import annotations

from collections.abc import Iterable

from ..callbacks.core import Callback
from ..callbacks.lr_finder import LR_FIND, LRFinderPlots, run_lr_find
from ..callbacks.scheduler import OneCycleCallback, SGDRCallback
from ..callbacks.schedules import ONE_CYCLE, SGDR_DEFAULTS


class Recipes:
    def fit_one_cycle(self, cyc_len: int, max_lr=None, moms=ONE_CYCLE.moms, div_factor: float = ONE_CYCLE.div_factor,
                      pct_start: float = ONE_CYCLE.pct_start, final_div: float | None = ONE_CYCLE.final_div,
                      wd: float | None = None, cbs: Iterable[Callback] = (), resume=None,
                      allow_length_change: bool = False):
        """Train `cyc_len` epochs with the one-cycle policy (`cyclr.callbacks.scheduler.OneCycleCallback`).

        `max_lr` (default `self.lr`) may be a list or `slice(lo, hi)` for per-group rates; `moms=None` leaves the
        momentum alone."""
        cb = OneCycleCallback(self.lr if max_lr is None else max_lr, div_factor, pct_start, final_div, moms)
        self.fit(cyc_len, wd=wd, cbs=[cb, *cbs], resume=resume, allow_length_change=allow_length_change)

    def fit_sgdr(self, n_cycles: int, cycle_len: int, max_lr=None, cycle_mult: int = SGDR_DEFAULTS.cycle_mult,
                 eta_min: float = SGDR_DEFAULTS.eta_min, wd: float | None = None, cbs: Iterable[Callback] = (),
                 resume=None, allow_length_change: bool = False):
        """Train with SGDR: `n_cycles` cosine cycles, cycle k lasting `cycle_len * cycle_mult**k` epochs."""
        cb = SGDRCallback(self.lr if max_lr is None else max_lr, n_cycles, cycle_len, cycle_mult, eta_min)
        if self.is_main_process:
            print(f"fit_sgdr: {n_cycles} cycles of {cycle_len}*{cycle_mult}**k epochs = {cb.total_epochs} epochs")
        self.fit(cb.total_epochs, wd=wd, cbs=[cb, *cbs], resume=resume, allow_length_change=allow_length_change)

    def lr_find(self, start_lr: float = LR_FIND.start_lr, end_lr: float = LR_FIND.end_lr, num_it: int = LR_FIND.num_it,
                step_mode: str = LR_FIND.step_mode, stop_div: bool = LR_FIND.stop_div, show_plot: bool = False,
                wds=None, suggest_funcs=LR_FIND.suggest_funcs,
                snapshot_memory_limit: int = LR_FIND.snapshot_memory_limit):
        """Train `num_it` batches with the rate growing from `start_lr` to `end_lr` ('exp' or 'linear' steps) and
        return the curve of loss against rate with suggestions (`cyclr.callbacks.lr_finder.LRFinderResult`).

        Stops early at a non-finite loss and, with `stop_div`, when the smoothed loss exceeds 4x its minimum.
        `wds=[1e-2, 1e-3, 0]` runs one sweep per weight decay and returns an `LRFinderSweep`. Afterwards the
        learner is exactly as before (weights, optimizer, RNGs, loaders, callbacks, history), even after an
        exception; the result is kept for `learn.recorder.plot_lr_find()` and `learn.sched`."""
        result = run_lr_find(self, start_lr, end_lr, num_it, step_mode, stop_div, wds, suggest_funcs,
                             snapshot_memory_limit, show_plot)
        self.recorder.lr_find_result = result
        return result

    @property
    def sched(self) -> LRFinderPlots:
        """fastai 0.7's `learn.sched` after `lr_find`: `.plot()` the LR-finder curve, `.plot_lr()` the sweep's rates."""
        result = getattr(self.recorder, "lr_find_result", None)
        if result is None:
            raise RuntimeError("learn.sched draws the last LR-finder sweep: run learn.lr_find() first")
        return LRFinderPlots(result)
