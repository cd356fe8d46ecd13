"""The LR finder (Smith, "Cyclical Learning Rates for Training Neural Networks", 2015, section 3.3).

Train for `num_it` batches while the learning rate grows from `start_lr` to `end_lr` (exponentially by default),
record the loss of every batch, and read a good learning rate off the curve of loss against log lr: the loss falls,
reaches a minimum, then climbs as training diverges; a good rate lies to the left of the minimum, where the loss is
still falling fast.

- `LRFinderCallback` runs the sweep inside an ordinary `learn.fit`: it sets the rate in `before_batch`, records the
  loss of that batch in `after_loss` (computed before the step taken at that rate, so `lrs[i]` and `losses[i]`
  belong together), cancels validation, and cancels the fit after `num_it` batches or when the loss diverges.
- `TrainingSnapshot` saves everything a sweep changes (weights, buffers, gradients, optimizer state and
  hyperparameters, RNG states, loader shuffling states, callback states, loop counters) and puts it back, so the
  finder leaves no trace.
- `run_lr_find(learn, ...)` ties them together; `Learner.lr_find` calls it.
- `suggest_valley`, `suggest_steep`, `suggest_minimum` and `suggest_slide` read suggestions off a curve, smoothed
  without lag by `centred_smooth`; each returns a `Suggestion` (lr, index, one-line reason), never None or NaN.
"""

from __future__ import annotations

import copy
import math
import os
import random
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .core import Callback, CancelFitException, CancelValidException
from .recorder import SmoothedValue
from .schedules import Exp, Lin

__all__ = [
    "LRFinderCallback", "LRFinderResult", "LRFinderSweep", "LRFinderPlots", "Suggestion", "TrainingSnapshot",
    "run_lr_find", "suggest", "centred_smooth", "suggest_valley", "suggest_steep", "suggest_minimum", "suggest_slide",
    "SUGGESTION_NAMES", "STEP_MODES", "SNAPSHOT_MEMORY_LIMIT",
]

STEP_MODES = ("exp", "linear")
SUGGESTION_NAMES = ("valley", "steep", "minimum", "slide")
# Above this many bytes of weights, buffers, gradients and optimizer state, the snapshot goes to a temporary file.
SNAPSHOT_MEMORY_LIMIT = 1 << 30
# A curve has a clear descent when its smoothed loss falls by this fraction of its level, or by this many times the
# batch-to-batch noise (and at least NOISE_FLOOR of its level, for curves without noise).
MIN_RELATIVE_DROP = 0.05
NOISE_MULTIPLE = 3.0
NOISE_FLOOR = 0.005
# The descent is read between the points where the loss is this fraction of the way down and of the way up.
DESCENT_EDGE = 0.1


# ----- suggestions ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Suggestion:
    """A learning rate read off an LR-finder curve: `lr` (always finite and > 0), the `index` into the curve's `lrs`
    that it was read at, and a one-line `reason`. `group_lrs` gives the rate of every parameter group (the sweep
    keeps their ratios); `lr` is the rate of the group with the largest rate."""

    name: str
    lr: float
    index: int
    reason: str
    group_lrs: tuple[float, ...] = ()

    def __post_init__(self):
        if not self.group_lrs:  # a single group: its rate is the suggestion
            object.__setattr__(self, "group_lrs", (self.lr,))

    def __float__(self) -> float:
        return self.lr

    def __str__(self) -> str:
        return f"{self.name}: {self.lr:.3g} ({self.reason})"


def centred_smooth(losses: Sequence[float], half_width: int | None = None) -> list[float]:
    """A smoothing without lag: the running median over +-`half_width` points (default: a 50th of the curve), with
    the blow-up at the end capped at the highest level before the minimum, then the running mean over the same
    window. The EMA of `smooth_losses` lags by up to 1/(1 - beta) = 50 iterations, which on a 100-iteration sweep
    moves its minimum a decade or more to the right of where the loss really bottoms out; suggestions read off
    this curve instead."""
    losses = [float(v) for v in losses]
    n = len(losses)
    if n == 0:
        return []
    h = max(1, n // 50) if half_width is None else half_width
    medians = [statistics.median(losses[max(0, i - h):i + h + 1]) for i in range(n)]
    cap = max(medians[:medians.index(min(medians)) + 1])
    capped = [min(v, cap) for v in medians]
    return [statistics.fmean(capped[max(0, i - h):i + h + 1]) for i in range(n)]


class _Curve:
    """A curve as the suggestions read it: smoothed without lag (`centred_smooth`), with the first tenth (where
    training has barely started) and the last few points (the blow-up that stopped the sweep) left out."""

    def __init__(self, lrs: Sequence[float], losses: Sequence[float]):
        lrs, losses = [float(v) for v in lrs], [float(v) for v in losses]
        if len(lrs) != len(losses):
            raise ValueError(f"lrs and losses must have the same length, got {len(lrs)} and {len(losses)}")
        if not lrs:
            raise ValueError("the curve is empty: no (lr, loss) point to read a suggestion from")
        if any(not (math.isfinite(v) and v > 0) for v in lrs):
            raise ValueError("lrs must all be finite and > 0")
        if any(not math.isfinite(v) for v in losses):
            raise ValueError("losses must all be finite; the LR finder stops before recording a non-finite loss")
        self.lrs = lrs
        self.y = centred_smooth(losses)
        n = len(lrs)
        self.lo, self.hi = n // 10, n - min(5, n // 10)  # the window is indices lo .. hi-1
        if self.hi - self.lo < 3:  # too short to trim: read all of it
            self.lo, self.hi = 0, n
        self.argmin = min(range(self.lo, self.hi), key=self.y.__getitem__)
        self.min_loss = self.y[self.argmin]
        # Where the descent starts from: the median of the first quarter before the minimum. On a plateau that is
        # its level, whatever its wiggles; on a curve falling from the first point, the level it falls from.
        head = self.y[self.lo:self.lo + max(3, (self.argmin - self.lo) // 4)]
        self.top = statistics.median(head)
        # The batch-to-batch noise: a robust standard deviation (1.4826 x the median absolute deviation) of the raw
        # losses around the smoothed curve, before the minimum.
        residuals = [abs(r - s) for r, s in zip(losses[self.lo:self.argmin + 1], self.y[self.lo:self.argmin + 1],
                                                strict=True)]
        self.noise = 1.4826 * statistics.median(residuals)
        self.problem = self._problem()

    def _problem(self) -> str | None:
        """Why the curve shows no clear descent, or None when it does."""
        if self.hi - self.lo < 3:
            n = len(self.lrs)
            return f"only {n} point{'' if n == 1 else 's'} recorded"
        if self.argmin == self.lo:
            return "the loss never falls below its first value: it only rises"
        drop = self.top - self.min_loss
        scale = max(abs(self.top), abs(self.min_loss))
        if drop < MIN_RELATIVE_DROP * scale and drop < max(NOISE_MULTIPLE * self.noise, NOISE_FLOOR * scale):
            return (f"the smoothed loss falls by only {max(drop, 0) / scale:.1%} ({self.top:.4g} -> "
                    f"{self.min_loss:.4g}), within {NOISE_MULTIPLE:g}x the batch-to-batch noise ({self.noise:.2g})")
        return None

    def last_above(self, fraction: float) -> int:
        """The last index left of the minimum whose loss is still `fraction` of the descent above the minimum."""
        level = self.min_loss + fraction * (self.top - self.min_loss)
        i = self.argmin
        while i > self.lo and self.y[i] < level:
            i -= 1
        return i

    def fallback(self, name: str) -> Suggestion:
        lr = self.lrs[self.argmin] / 10
        return Suggestion(name, lr, self.argmin,
                          f"no clear descent ({self.problem}); fell back to the lr at the minimum / 10")


def suggest_minimum(lrs: Sequence[float], losses: Sequence[float]) -> Suggestion:
    """The lr at the minimum of the smoothed loss, divided by 10: a decade below where training stops improving."""
    curve = _Curve(lrs, losses)
    if curve.problem:
        return curve.fallback("minimum")
    i = curve.argmin
    return Suggestion("minimum", curve.lrs[i] / 10, i,
                      f"minimum of the smoothed loss ({curve.min_loss:.4g} at lr {curve.lrs[i]:.3g}) divided by 10")


def suggest_steep(lrs: Sequence[float], losses: Sequence[float]) -> Suggestion:
    """The lr where the smoothed loss falls fastest against log10(lr), within the descent (from where it has
    fallen `DESCENT_EDGE` of the way to the minimum), so a wiggle of the plateau before it cannot win."""
    curve = _Curve(lrs, losses)
    if curve.problem:
        return curve.fallback("steep")
    x, y = [math.log10(v) for v in curve.lrs], curve.y
    k = max(1, len(x) // 50)  # central differences over the smoothing's width
    best_i, best_slope = curve.argmin, 0.0
    for i in range(curve.last_above(1 - DESCENT_EDGE), curve.argmin + 1):
        left, right = max(i - k, curve.lo), min(i + k, curve.hi - 1)
        if x[right] > x[left]:
            slope = (y[right] - y[left]) / (x[right] - x[left])
            if slope < best_slope:
                best_i, best_slope = i, slope
    return Suggestion("steep", curve.lrs[best_i], best_i,
                      f"steepest fall of the smoothed loss: {best_slope:.3g} per decade of lr")


def suggest_slide(lrs: Sequence[float], losses: Sequence[float]) -> Suggestion:
    """Slide left from the minimum to the last point where the loss is still clearly falling: the largest lr below
    the minimum whose smoothed loss is at least `DESCENT_EDGE` (10%) of the descent above the minimum. The
    boldest pick."""
    curve = _Curve(lrs, losses)
    if curve.problem:
        return curve.fallback("slide")
    i = curve.last_above(DESCENT_EDGE)
    return Suggestion("slide", curve.lrs[i], i,
                      f"largest lr left of the minimum whose smoothed loss is still {DESCENT_EDGE:.0%} of the "
                      "descent above it")


def suggest_valley(lrs: Sequence[float], losses: Sequence[float]) -> Suggestion:
    """The middle, on the log-lr axis, of the descent: from where the smoothed loss has fallen `DESCENT_EDGE`
    (10%) of the way to its minimum, to where it is within 10% of it (the `slide` point). Training there moves fast
    and stays clear of the minimum, beyond which it diverges. The default pick."""
    curve = _Curve(lrs, losses)
    if curve.problem:
        return curve.fallback("valley")
    first, last = curve.last_above(1 - DESCENT_EDGE), curve.last_above(DESCENT_EDGE)
    middle = (math.log(curve.lrs[first]) + math.log(curve.lrs[last])) / 2
    i = min(range(first, last + 1), key=lambda k: abs(math.log(curve.lrs[k]) - middle))
    return Suggestion("valley", curve.lrs[i], i,
                      f"middle of the descent of the smoothed loss, from lr {curve.lrs[first]:.3g} (10% down) to "
                      f"{curve.lrs[last]:.3g} (90% down)")


_SUGGESTERS: dict[str, Callable[[Sequence[float], Sequence[float]], Suggestion]] = {
    "valley": suggest_valley, "steep": suggest_steep, "minimum": suggest_minimum, "slide": suggest_slide,
}


def _check_suggestion_names(names) -> tuple[str, ...]:
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise ValueError(f"suggest_funcs is empty; name at least one of {SUGGESTION_NAMES}")
    for name in names:
        if name not in _SUGGESTERS:
            raise ValueError(f"unknown suggestion {name!r} in suggest_funcs; choose from {SUGGESTION_NAMES}")
    return names


def suggest(lrs: Sequence[float], losses: Sequence[float], names: Iterable[str] = SUGGESTION_NAMES,
            group_ratios: Sequence[float] = (1.0,)) -> dict[str, Suggestion]:
    """The named suggestions for the losses recorded at `lrs` (raw: each suggestion smooths them with
    `centred_smooth`); warns once when the curve has no clear descent (the suggestions then fall back to the lr at
    the minimum / 10 and say so)."""
    names = _check_suggestion_names(names)
    problem = _Curve(lrs, losses).problem
    if problem:
        warnings.warn(
            f"the LR-finder curve shows no clear descent ({problem}); every suggestion falls back to the lr at the "
            "minimum / 10. Try a smaller start_lr, a larger end_lr or more iterations (num_it).",
            stacklevel=2,
        )
    out = {}
    for name in names:
        s = _SUGGESTERS[name](lrs, losses)
        out[name] = Suggestion(s.name, s.lr, s.index, s.reason, tuple(s.lr * r for r in group_ratios))
    return out


# ----- results -------------------------------------------------------------------------------------------------------
class LRFinderResult:
    """One LR-finder curve.

    Attributes: `lrs` (the rate of the reference group at each recorded batch), `losses` (raw), `smooth_losses`
    (debiased EMA, beta 0.98, as fastai draws it), `centred_losses` (smoothed without lag by `centred_smooth`: the
    curve the suggestions are read from), `suggestions` (name -> `Suggestion`), `stop_reason`, `reference_group`
    (the group with the largest rate, the one `lrs` and the suggestions refer to), `group_ratios` (each group's rate
    divided by the reference group's, kept fixed during the sweep), `wd` (the weight decay of the sweep, None when
    unchanged), and the sweep's settings `start_lr`, `end_lr`, `num_it`, `step_mode`.
    """

    def __init__(self, lrs, losses, smooth_losses, suggestions, stop_reason, reference_group=0, group_ratios=(1.0,),
                 wd=None, start_lr=None, end_lr=None, num_it=None, step_mode="exp"):
        self.lrs, self.losses, self.smooth_losses = list(lrs), list(losses), list(smooth_losses)
        self.centred_losses = centred_smooth(self.losses)
        self.suggestions: dict[str, Suggestion] = dict(suggestions)
        self.stop_reason, self.reference_group, self.group_ratios = stop_reason, reference_group, list(group_ratios)
        self.wd, self.start_lr, self.end_lr, self.num_it, self.step_mode = wd, start_lr, end_lr, num_it, step_mode

    def group_lrs(self, lr: float) -> list[float]:
        """One rate per parameter group for a reference-group rate `lr`, with the ratios the sweep kept."""
        return [lr * r for r in self.group_ratios]

    def group_note(self) -> str:
        if len(self.group_ratios) == 1:
            return ""
        ratios = ", ".join(f"{r:.3g}" for r in self.group_ratios)
        return f"rates are for group {self.reference_group} (the largest); the groups' ratios are [{ratios}]"

    def __repr__(self) -> str:
        wd = "" if self.wd is None else f"wd={self.wd:g}, "
        lines = [f"LRFinderResult({wd}{len(self.lrs)} points, lr {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}; "
                 f"{self.stop_reason})"]
        lines += [f"  {s}" for s in self.suggestions.values()]
        if self.group_note():
            lines.append(f"  {self.group_note()}")
        return "\n".join(lines)

    def plot(self, ax=None, suggestions: bool = True, raw: bool = True):
        """Loss against lr on a log axis, with the suggestions marked on the curve they are read from (smoothed
        without lag); the raw losses in a light line and fastai's EMA dashed."""
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
        if raw:
            ax.plot(self.lrs, self.losses, alpha=0.25, color="C0", label="loss (batch)")
        ax.plot(self.lrs, self.centred_losses, color="C0", label="loss (smoothed, no lag)")
        ax.plot(self.lrs, self.smooth_losses, color="0.5", linewidth=0.8, linestyle="--", label="EMA 0.98 (lags)")
        if suggestions:
            self._mark_suggestions(ax)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate" + (f" (group {self.reference_group})" if len(self.group_ratios) > 1 else ""))
        ax.set_ylabel("loss")
        _focus_y(ax, [self.centred_losses], raw=self.losses if raw else None)
        title = "LR finder" + ("" if self.wd is None else f", wd={self.wd:g}")
        ax.set_title(title + (f"\n{self.group_note()}" if self.group_note() else ""), fontsize=9)
        ax.legend(fontsize=8)
        return fig

    def _mark_suggestions(self, ax) -> None:
        markers = {"valley": "o", "steep": "^", "minimum": "s", "slide": "D"}
        for k, s in enumerate(self.suggestions.values()):
            y = _interp_log(s.lr, self.lrs, self.centred_losses)
            ax.plot([s.lr], [y], linestyle="none", marker=markers[s.name], markersize=8, color=f"C{k + 1}",
                    label=f"{s.name}: {s.lr:.2e}")

    def plot_lr(self, ax=None):
        """The learning rate at each iteration of the sweep (the blog's `learn.sched.plot_lr()`)."""
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
        ax.plot(range(len(self.lrs)), self.lrs)
        if self.step_mode == "exp":
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("learning rate")
        ax.set_title("LR finder: learning rate per iteration", fontsize=9)
        return fig


class LRFinderSweep:
    """One LR-finder curve per weight decay, each from the same starting state (Smith, "A disciplined approach to
    neural network hyper-parameters", 2018: the weight decay whose curve reaches the lowest loss at the largest
    rates is the one to train with).

    `curves` maps each wd to its `LRFinderResult` (`sweep[wd]` too); `best_wd` is the wd whose smoothed loss reaches
    the lowest minimum (smoothed without lag); `suggestions` maps each wd to that curve's suggestions."""

    def __init__(self, curves: dict):
        self.curves: dict[float, LRFinderResult] = dict(curves)

    def __getitem__(self, wd) -> LRFinderResult:
        return self.curves[wd]

    @property
    def wds(self) -> list[float]:
        return list(self.curves)

    @property
    def suggestions(self) -> dict[float, dict[str, Suggestion]]:
        return {wd: r.suggestions for wd, r in self.curves.items()}

    @property
    def best_wd(self) -> float:
        return min(self.curves, key=lambda wd: min(self.curves[wd].centred_losses))

    @property
    def best(self) -> LRFinderResult:
        return self.curves[self.best_wd]

    def __repr__(self) -> str:
        lines = [f"LRFinderSweep({len(self.curves)} weight decays; lowest loss with wd={self.best_wd:g})"]
        for wd, r in self.curves.items():
            picks = ", ".join(f"{s.name} {s.lr:.3g}" for s in r.suggestions.values())
            lines.append(f"  wd={wd:g}: min smoothed loss {min(r.centred_losses):.4g}; {picks}")
        return "\n".join(lines)

    def plot(self, ax=None, suggestion: str | None = "valley", raw: bool = False):
        """Every curve's smoothed loss against lr on one log axis, with a legend; `suggestion` marks that suggestion
        on each curve (None marks nothing)."""
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
        for k, (wd, r) in enumerate(self.curves.items()):
            color = f"C{k}"
            if raw:
                ax.plot(r.lrs, r.losses, alpha=0.2, color=color)
            ax.plot(r.lrs, r.centred_losses, color=color, label=f"wd={wd:g}")
            if suggestion is not None and suggestion in r.suggestions:
                s = r.suggestions[suggestion]
                ax.plot([s.lr], [_interp_log(s.lr, r.lrs, r.centred_losses)], linestyle="none", marker="o",
                        color=color, label=f"  {suggestion}: {s.lr:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        _focus_y(ax, [r.centred_losses for r in self.curves.values()])
        ax.set_title("LR finder: one curve per weight decay", fontsize=9)
        ax.legend(fontsize=8)
        return fig

    def plot_lr(self, ax=None):
        return next(iter(self.curves.values())).plot_lr(ax=ax)


class LRFinderPlots:
    """What `learn.sched` returns after `lr_find`, for fastai 0.7's snippets: `plot()` draws the LR-finder curve,
    `plot_lr()` the learning rate per iteration. Read-only: it only draws the stored result."""

    def __init__(self, result):
        self.result = result

    def plot(self, **kwargs):
        return self.result.plot(**kwargs)

    def plot_lr(self, **kwargs):
        return self.result.plot_lr(**kwargs)

    def __repr__(self) -> str:
        return f"LRFinderPlots(for {type(self.result).__name__})"


def _interp_log(lr: float, lrs: list[float], losses: list[float]) -> float:
    """The loss at `lr`, linearly interpolated on log lr (clamped to the ends of the curve)."""
    pairs = sorted(zip(lrs, losses, strict=True))
    if lr <= pairs[0][0]:
        return pairs[0][1]
    for (x0, y0), (x1, y1) in zip(pairs, pairs[1:], strict=False):
        if x0 <= lr <= x1:
            t = 0.0 if x1 == x0 else (math.log(lr) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return pairs[-1][1]


def _focus_y(ax, curves: list[list[float]], raw: list[float] | None = None) -> None:
    """Keep the blow-up at the end of a sweep from squashing the interesting part of the curve: the top is the
    highest smoothed loss before each curve's minimum, the bottom the lowest loss drawn."""
    curves = [c for c in curves if c]
    if not curves:
        return
    lo = min([min(c) for c in curves] + ([min(raw)] if raw else []))
    hi = max(max(c[:c.index(min(c)) + 1]) for c in curves)
    span = hi - lo if hi > lo else max(abs(hi), 1e-8)
    ax.set_ylim(lo - 0.1 * span, hi + 0.25 * span)


# ----- the callback --------------------------------------------------------------------------------------------------
def check_sweep(start_lr, end_lr, num_it, step_mode, stop_div=True) -> None:
    """Refuse bad sweep settings with a message naming the parameter and its allowed range."""
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if start_lr >= end_lr:
        raise ValueError(f"start_lr must be smaller than end_lr, got start_lr={start_lr!r} >= end_lr={end_lr!r}")
    if isinstance(num_it, bool) or not isinstance(num_it, int):
        raise TypeError(f"num_it must be an int >= 2, got {type(num_it).__name__} ({num_it!r})")
    if num_it < 2:
        raise ValueError(f"num_it must be an int >= 2 (the sweep needs a first and a last rate), got {num_it}")
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
    if not isinstance(stop_div, bool):
        raise TypeError(f"stop_div must be True or False, got {stop_div!r}")


class LRFinderCallback(Callback):
    """Sweeps the learning rate from `start_lr` to `end_lr` over `num_it` training batches and records the loss of
    each; see the module docstring. Attach it to a fit with enough epochs for `num_it` batches (`run_lr_find` does).

    Every parameter group's rate is its rate at the start of the fit times a common factor, so discriminative
    ratios survive; `lrs` are the rates of the group with the largest rate. The fit stops at a non-finite loss
    (always) and, with `stop_div`, when the smoothed loss exceeds `div_factor` times its minimum.
    """

    # After the schedulers (ParamScheduler: 10), so the sweep's rate is the one used; before the Recorder (50),
    # which reads the rate in before_step.
    order = 20

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, step_mode: str = "exp",
                 stop_div: bool = True, div_factor: float = 4.0, beta: float = 0.98):
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
        self.reference_group, self.group_ratios = 0, [1.0]
        self._smoother = SmoothedValue(self.beta)
        self._best = math.inf

    def lr_at(self, i: int) -> float:
        """The reference group's rate at sweep iteration i: start_lr at 0, end_lr at num_it - 1."""
        return self.sched(i / (self.num_it - 1))

    def before_fit(self, learn) -> None:
        self._reset()
        base = [g["lr"] for g in learn.opt.param_groups]
        # The largest rate is the reference (the last of equal ones, as the Recorder's `lr` column is the last
        # group's); a group at rate 0 stays at 0.
        self.reference_group = max(range(len(base)), key=lambda i: (base[i], i))
        top = base[self.reference_group]
        self.group_ratios = [b / top for b in base] if top > 0 else [1.0] * len(base)
        self.stop_reason = f"fit ended after fewer than num_it={self.num_it} batches"

    def before_batch(self, learn) -> None:
        if not learn.training:
            return
        lr = self.lr_at(min(learn.train_iter, self.num_it - 1))
        for group, ratio in zip(learn.opt.param_groups, self.group_ratios, strict=True):
            group["lr"] = lr * ratio

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

    def result(self, suggest_funcs: Iterable[str] = SUGGESTION_NAMES, wd=None) -> LRFinderResult:
        if not self.lrs:
            hint = ("; the loss of the first batch, before any step, is already not finite: check the data, the model "
                    "and the loss function" if "non-finite" in self.stop_reason else "")
            raise ValueError(f"the LR finder recorded no loss ({self.stop_reason}){hint}")
        suggestions = suggest(self.lrs, self.losses, suggest_funcs, self.group_ratios)
        return LRFinderResult(self.lrs, self.losses, self.smooth_losses, suggestions, self.stop_reason,
                              self.reference_group, self.group_ratios, wd, self.start_lr, self.end_lr, self.num_it,
                              self.step_mode)

    def state_dict(self) -> dict:
        return {"start_lr": self.start_lr, "end_lr": self.end_lr, "num_it": self.num_it, "step_mode": self.step_mode,
                "stop_div": self.stop_div, "lrs": list(self.lrs), "losses": list(self.losses),
                "smooth_losses": list(self.smooth_losses)}


# ----- leaving no trace ----------------------------------------------------------------------------------------------
_LOOP_STATE = ("training", "epoch", "n_epoch", "iter", "train_iter", "n_train_iters", "dl", "xb", "yb", "pred", "loss")


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _clone_tensors(obj):
    """A copy whose tensors share no memory with the original (so later in-place updates cannot reach it)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tensors(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tensors(v) for v in obj)
    return copy.deepcopy(obj)


class TrainingSnapshot:
    """Everything a sweep of training steps changes, saved now and put back by `restore()`, any number of times.

    Saved: the model's parameters, buffers, gradients and train/eval flags; the optimizer (the object, its state
    and every group's hyperparameters, or its absence); the RNG states (torch CPU and CUDA, numpy, python
    `random`); the loaders' shuffling state (`dls.state_dict()`); the attached callbacks and their `state_dict()`;
    the learner's loop counters. Tensors are copied in memory, or, when weights + gradients + optimizer state exceed
    `memory_limit` bytes, written to a temporary file that `discard()` removes.
    """

    def __init__(self, learn, memory_limit: int = SNAPSHOT_MEMORY_LIMIT):
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit < 0:
            raise ValueError(f"memory_limit must be an int >= 0 (bytes), got {memory_limit!r}")
        self.model = learn.model
        self.opt = learn.opt
        self.params = list(self.model.parameters())
        self.module_modes = [m.training for m in self.model.modules()]
        tensors = {
            "model": self.model.state_dict(),
            "grads": [None if p.grad is None else p.grad.detach() for p in self.params],
            "opt": None if self.opt is None else self.opt.state_dict(),
        }
        self.nbytes = _tensor_bytes(tensors)
        self.path: str | None = None
        if self.nbytes > memory_limit:
            fd, self.path = tempfile.mkstemp(prefix="cyclr-lr-find-", suffix=".pt")
            try:
                with os.fdopen(fd, "wb") as f:
                    torch.save(tensors, f)
            except BaseException:
                os.unlink(self.path)
                raise
            self._tensors = None
        else:
            self._tensors = _clone_tensors(tensors)

        self.rng = _rng_state()
        self.dls_state = copy.deepcopy(learn.dls.state_dict()) if hasattr(learn.dls, "state_dict") else None
        self.cbs = list(learn.cbs)
        self.cb_states = [copy.deepcopy(cb.state_dict()) for cb in self.cbs]
        self.loop_state = {name: getattr(learn, name) for name in _LOOP_STATE if hasattr(learn, name)}

    def _load_tensors(self) -> dict:
        if self._tensors is not None:
            # Copies again: optimizer.load_state_dict keeps the tensors it is given, and the next sweep updates them
            # in place.
            return _clone_tensors(self._tensors)
        return torch.load(self.path, weights_only=True)

    def restore(self, learn) -> None:
        tensors = self._load_tensors()
        learn.model = self.model
        with torch.no_grad():
            self.model.load_state_dict(tensors["model"])
        for p, g in zip(self.params, tensors["grads"], strict=True):
            p.grad = g
        for m, mode in zip(self.model.modules(), self.module_modes, strict=True):
            m.training = mode
        learn.opt = self.opt
        if self.opt is not None:
            self.opt.load_state_dict(tensors["opt"])
        _set_rng_state(self.rng)
        if self.dls_state is not None:
            learn.dls.load_state_dict(copy.deepcopy(self.dls_state))
        for name, value in self.loop_state.items():
            setattr(learn, name, value)
        if learn.cbs != self.cbs:  # a callback added or removed callbacks during the sweep
            learn.remove_cbs(list(learn.cbs))
            learn.add_cbs(self.cbs)
        for cb, state in zip(self.cbs, self.cb_states, strict=True):
            cb.load_state_dict(copy.deepcopy(state))

    def discard(self) -> None:
        """Remove the temporary file, if any."""
        if self.path is not None and os.path.exists(self.path):
            os.unlink(self.path)
        self.path = None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # numpy is optional: nothing to save then
        pass
    else:
        state["numpy"] = np.random.get_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


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


def run_lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, step_mode: str = "exp",
                stop_div: bool = True, wds=None, suggest_funcs=SUGGESTION_NAMES,
                snapshot_memory_limit: int = SNAPSHOT_MEMORY_LIMIT, show_plot: bool = False):
    """Run the LR finder on `learn` (see `Learner.lr_find`); return an `LRFinderResult`, or an `LRFinderSweep`
    when `wds` is given. Whatever happens, the learner is left as it was found."""
    check_sweep(start_lr, end_lr, num_it, step_mode, stop_div)
    names = _check_suggestion_names(suggest_funcs)
    wds = _check_wds(wds)
    n_batches = len(learn.dls.train)
    if n_batches == 0:
        raise ValueError("the training loader is empty: the LR finder needs training batches")
    # Optimizer steps per epoch: fewer than batches under GradientAccumulation, which says how many.
    steps = min([cb.steps_per_epoch(n_batches) for cb in learn.cbs if hasattr(cb, "steps_per_epoch")] + [n_batches])
    n_epoch = math.ceil(num_it / steps)  # the callback cancels the fit once num_it steps are done

    snapshot = TrainingSnapshot(learn, snapshot_memory_limit)
    progress = learn.progress
    show_table = progress.show_table if progress is not None else None
    curves = {}
    try:
        if progress is not None:
            progress.show_table = False  # an epoch table of a sweep, without validation, says nothing
        for k, wd in enumerate(wds if wds is not None else [None]):
            if k:
                snapshot.restore(learn)  # every curve starts from the same state
            finder = LRFinderCallback(start_lr, end_lr, num_it, step_mode, stop_div)
            learn.fit(n_epoch, wd=wd, cbs=[finder])
            curves[wd] = finder.result(names, wd=wd)
    finally:
        try:
            snapshot.restore(learn)
            if progress is not None:
                progress.show_table = show_table
        finally:
            snapshot.discard()
    result = curves[None] if wds is None else LRFinderSweep(curves)
    if show_plot:
        _show(result.plot())
    return result


def _show(fig) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    # A non-interactive backend (Agg in scripts and tests) cannot show anything and would only warn.
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "ps", "svg", "cairo", "template"):
        plt.show()
