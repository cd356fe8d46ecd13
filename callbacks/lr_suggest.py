"""Suggestions read off an LR-finder curve: `suggest_valley`, `suggest_steep`, `suggest_minimum` and `suggest_slide`,
each on the curve smoothed without lag by `centred_smooth`, each returning a `Suggestion` (lr, index, one-line
reason), never None or NaN; `suggest` runs the named ones and warns once when the curve shows no clear descent.

Pure functions of the recorded rates and losses: no torch, no learner.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..data.checks import user_stacklevel

SUGGESTION_NAMES = ("valley", "steep", "minimum", "slide")
# A curve has a clear descent when its smoothed loss falls by this fraction of its level, or by this many times the
# batch-to-batch noise (and at least NOISE_FLOOR of its level, for curves without noise).
MIN_RELATIVE_DROP = 0.05
NOISE_MULTIPLE = 3.0
NOISE_FLOOR = 0.005
# The descent is read between the points where the loss is this fraction of the way down and of the way up.
DESCENT_EDGE = 0.1


@dataclass(frozen=True)
class Suggestion:
    """A learning rate read off an LR-finder curve: `lr` (always finite and > 0), the `index` into the curve's `lrs`
    that it was read at, and a one-line `reason`. `group_lrs` gives the rate of every parameter group (the sweep
    keeps their ratios); `lr` is the rate of the group with the largest rate.

    Args:
        name: the rule that read it: 'valley', 'steep', 'minimum' or 'slide'.
        lr: the suggested rate of the reference group (the one with the largest rate).
        index: the position in the curve's `lrs` where it was read.
        reason: one line saying how it was read.
        group_lrs: the suggested rate of every parameter group, in order; empty: `(lr,)`, a single group.
    """

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


def centred_smooth(losses: Sequence[float], half_width: int | None = None, cap: bool = True) -> list[float]:
    """A smoothing without lag: the running median over +-`half_width` points (default: a 50th of the curve), with
    the blow-up at the end capped at the highest level before the minimum (`cap=False` keeps it: what the plots
    draw), then the running mean over the same window. The EMA of `smooth_losses` lags by up to 1/(1 - beta) = 50
    iterations, which on a 100-iteration sweep moves its minimum a decade or more to the right of where the loss
    really bottoms out; suggestions read off this curve instead."""
    losses = [float(v) for v in losses]
    n = len(losses)
    if n == 0:
        return []
    h = max(1, n // 50) if half_width is None else half_width
    medians = [statistics.median(losses[max(0, i - h):i + h + 1]) for i in range(n)]
    if cap:
        # Capped so that a huge blow-up cannot drag the mean window around the minimum up.
        top = max(medians[:medians.index(min(medians)) + 1])
        medians = [min(v, top) for v in medians]
    return [statistics.fmean(medians[max(0, i - h):i + h + 1]) for i in range(n)]


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


def check_suggestion_names(names) -> tuple[str, ...]:
    """`names` (one name or several) as a tuple, each one of SUGGESTION_NAMES; else a ValueError."""
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
    names = check_suggestion_names(names)
    problem = _Curve(lrs, losses).problem
    if problem:
        warnings.warn(
            f"the LR-finder curve shows no clear descent ({problem}); every suggestion falls back to the lr at the "
            "minimum / 10. Try a smaller start_lr, a larger end_lr or more iterations (num_it).",
            stacklevel=user_stacklevel(),
        )
    out = {}
    for name in names:
        s = _SUGGESTERS[name](lrs, losses)
        out[name] = Suggestion(s.name, s.lr, s.index, s.reason, tuple(s.lr * r for r in group_ratios))
    return out

