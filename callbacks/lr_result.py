"""What an LR-finder sweep returns: `LRFinderResult` (one curve, its suggestions, its plots) and `LRFinderSweep` (one
curve per weight decay, per momentum, or per (wd, mom) pair). Both have fastai 0.7's `plot()` and `plot_lr()`, so
`learn.sched` (the last result) runs that course's snippets as they are.

The plots draw the loss smoothed without lag and *uncapped*, so the blow-up after the minimum shows as it happened
(the suggestions read a capped curve, `centred_losses`); the y-range keeps the descent readable: it reaches half
the descent's height above its start, and the blow-up leaves the frame there. `skip_start` / `skip_end` leave
points out of the drawing at either end (the smoothing still sees the whole curve)."""

from __future__ import annotations

import math

from .lr_suggest import Suggestion, centred_smooth


class LRFinderResult:
    """One LR-finder curve, as the LR finder builds it (`learn.lr_find()` returns it).

    Each argument is kept as the attribute of the same name; `centred_losses` is `losses` smoothed without lag by
    `centred_smooth`: the curve the suggestions are read from.

    Args:
        lrs (list[float]): the rate of the reference group at each recorded batch.
        losses (list[float]): the raw training loss of each recorded batch.
        smooth_losses (list[float]): the losses as a debiased EMA (beta 0.98), as fastai draws them.
        suggestions (dict[str, Suggestion]): the suggested rates by name ('valley', 'steep', ...).
        stop_reason (str): why the sweep ended (completed, diverged, a non-finite loss, ...), in words.
        reference_group (int): the parameter group with the largest rate, the one `lrs` and the suggestions refer
            to.
        group_ratios (Sequence[float]): each group's rate divided by the reference group's, kept fixed during the
            sweep.
        wd (float | None): the weight decay this curve was swept with; None when the sweep left it unchanged.
        start_lr (float | None): the sweep's first rate.
        end_lr (float | None): the sweep's last rate.
        num_it (int | None): the number of batches the sweep was asked for.
        step_mode (str): how the rate moved from `start_lr` to `end_lr`: 'exp' (geometrically) or 'linear'.
        mom (float | None): the momentum this curve was swept with; None when the sweep left it unchanged.
        swept_groups (list[int] | None): the groups whose rate was swept (all but the frozen ones); None: every
            group.
    """

    def __init__(self, lrs, losses, smooth_losses, suggestions, stop_reason, reference_group=0, group_ratios=(1.0,),
                 wd=None, start_lr=None, end_lr=None, num_it=None, step_mode="exp", mom=None, swept_groups=None):
        self.lrs, self.losses, self.smooth_losses = list(lrs), list(losses), list(smooth_losses)
        self.centred_losses = centred_smooth(self.losses)
        self.suggestions: dict[str, Suggestion] = dict(suggestions)
        self.stop_reason, self.reference_group, self.group_ratios = stop_reason, reference_group, list(group_ratios)
        self.wd, self.start_lr, self.end_lr, self.num_it, self.step_mode = wd, start_lr, end_lr, num_it, step_mode
        self.mom = mom
        self.swept_groups = list(range(len(self.group_ratios))) if swept_groups is None else list(swept_groups)

    def group_lrs(self, lr: float) -> list[float]:
        """One rate per parameter group for a reference-group rate `lr`, with the ratios the sweep kept."""
        return [lr * r for r in self.group_ratios]

    def group_note(self) -> str:
        if len(self.group_ratios) == 1:
            return ""
        ratios = ", ".join(f"{r:.3g}" for r in self.group_ratios)
        return f"rates are for group {self.reference_group} (the largest); the groups' ratios are [{ratios}]"

    def settings_label(self) -> str:
        """'wd=0.01, mom=0.9' for the settings this curve was swept with ('' when it changed neither)."""
        return ", ".join(f"{name}={value:g}" for name, value in (("wd", self.wd), ("mom", self.mom))
                         if value is not None)

    def __repr__(self) -> str:
        wd = f"{self.settings_label()}, " if self.settings_label() else ""
        lines = [f"LRFinderResult({wd}{len(self.lrs)} points, lr {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}; "
                 f"{self.stop_reason})"]
        lines += [f"  {s}" for s in self.suggestions.values()]
        if self.group_note():
            lines.append(f"  {self.group_note()}")
        return "\n".join(lines)

    def plotted_losses(self) -> list[float]:
        """The line the plots draw: smoothed without lag like `centred_losses`, but with the blow-up kept."""
        return centred_smooth(self.losses, cap=False)

    def plot(self, ax=None, suggestions: bool = True, raw: bool = True, skip_start: int = 0, skip_end: int = 0):
        """Loss against lr on a log axis: the loss smoothed without lag (blow-up included), the raw losses in a light
        line, fastai's EMA dashed, the suggestions marked. `skip_start` / `skip_end` points are left out at each
        end. Returns the Figure (of `ax` when given).

        Args:
            ax (matplotlib.axes.Axes | None): the axes to draw on; None: a new figure.
            suggestions: mark each suggestion (those inside the drawn range).
            raw: also draw the raw per-batch losses, in a light line.
            skip_start: points left out of the drawing at the start (the smoothing still sees them).
            skip_end: points left out of the drawing at the end; at least 2 points must remain.
        """
        import matplotlib.pyplot as plt

        keep = _kept(len(self.lrs), skip_start, skip_end)
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
        lrs, drawn = self.lrs[keep], self.plotted_losses()[keep]
        if raw:
            ax.plot(lrs, self.losses[keep], alpha=0.25, color="C0", label="loss (batch)")
        ax.plot(lrs, drawn, color="C0", label="loss (smoothed, no lag)")
        ax.plot(lrs, self.smooth_losses[keep], color="0.5", linewidth=0.8, linestyle="--", label="EMA 0.98 (lags)")
        if suggestions:
            self._mark_suggestions(ax, lrs, drawn)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate" + (f" (group {self.reference_group})" if len(self.group_ratios) > 1 else ""))
        ax.set_ylabel("loss")
        focus_y(ax, [drawn])
        title = "LR finder" + (f", {self.settings_label()}" if self.settings_label() else "")
        ax.set_title(title + (f"\n{self.group_note()}" if self.group_note() else ""), fontsize=9)
        ax.legend(fontsize=8)
        return fig

    def _mark_suggestions(self, ax, lrs, drawn) -> None:
        markers = {"valley": "o", "steep": "^", "minimum": "s", "slide": "D"}
        for k, s in enumerate(self.suggestions.values()):
            if lrs and lrs[0] <= s.lr <= lrs[-1]:  # not marked when skipped out of the drawing
                ax.plot([s.lr], [_interp_log(s.lr, lrs, drawn)], linestyle="none", marker=markers[s.name],
                        markersize=8, color=f"C{k + 1}", label=f"{s.name}: {s.lr:.2e}")

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
    """One LR-finder curve per weight decay, per momentum (Adam's beta1), or per (wd, mom) pair, each from the same
    starting state: Smith's "A disciplined approach to neural network hyper-parameters" (2018) in one place. The
    setting whose curve reaches the lowest loss at the largest rates is the one to train with.

    `curves` maps each key (the wd, the mom, or the `(wd, mom)` pair; `names` says which) to its `LRFinderResult`
    (`sweep[key]` too); `best_key` is the key whose smoothed loss (without lag) reaches the lowest minimum, and
    `best_wd`, `best_mom`, `best_pair` its settings (None for one not swept); `to_df()` is one row per curve."""

    def __init__(self, curves: dict, names: tuple[str, ...] = ("wd",)):
        self.curves: dict = dict(curves)
        self.names = tuple(names)

    def __getitem__(self, key) -> LRFinderResult:
        return self.curves[key]

    @property
    def wds(self) -> list[float]:
        return list(dict.fromkeys(r.wd for r in self.curves.values()))

    @property
    def moms(self) -> list[float]:
        return list(dict.fromkeys(r.mom for r in self.curves.values()))

    @property
    def suggestions(self) -> dict:
        return {key: r.suggestions for key, r in self.curves.items()}

    @property
    def best_key(self):
        return min(self.curves, key=lambda key: min(self.curves[key].centred_losses))

    @property
    def best(self) -> LRFinderResult:
        return self.curves[self.best_key]

    @property
    def best_wd(self) -> float | None:
        return self.best.wd

    @property
    def best_mom(self) -> float | None:
        return self.best.mom

    @property
    def best_pair(self) -> tuple:
        """(wd, mom) of the curve with the lowest loss."""
        return self.best.wd, self.best.mom

    def to_df(self):
        """One row per curve: its settings, the lowest smoothed loss, the lr there, each suggestion's lr, whether it
        is the best, and why it stopped."""
        import pandas as pd

        best, rows = self.best_key, []
        for key, r in self.curves.items():
            low = min(range(len(r.centred_losses)), key=r.centred_losses.__getitem__)
            row = {name: getattr(r, name) for name in self.names}
            row.update({"min_loss": r.centred_losses[low], "lr_at_min": r.lrs[low]})
            row.update({name: s.lr for name, s in r.suggestions.items()})
            row.update({"best": key == best, "stop_reason": r.stop_reason})
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        best = self.best.settings_label()
        lines = [f"LRFinderSweep({len(self.curves)} curves over {' x '.join(self.names)}; lowest loss with {best})"]
        for r in self.curves.values():
            picks = ", ".join(f"{s.name} {s.lr:.3g}" for s in r.suggestions.values())
            lines.append(f"  {r.settings_label()}: min smoothed loss {min(r.centred_losses):.4g}; {picks}")
        return "\n".join(lines)

    def plot(self, ax=None, suggestion: str | None = "valley", raw: bool = False, skip_start: int = 0,
             skip_end: int = 0):
        """Every curve's smoothed loss (blow-up included) against lr on one log axis, each with `suggestion` marked
        (None marks nothing), and a star at the minimum of the curve with the lowest loss. Returns the Figure.

        Args:
            ax (matplotlib.axes.Axes | None): the axes to draw on; None: a new figure.
            suggestion: the name of the suggestion to mark on each curve ('valley', 'steep', ...); None: none.
            raw: also draw each curve's raw per-batch losses, in a light line.
            skip_start: points left out of each curve's drawing at the start (the smoothing still sees them).
            skip_end: points left out of each curve's drawing at the end; at least 2 points must remain.
        """
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
        drawn_curves, best = [], self.best_key
        for k, (key, r) in enumerate(self.curves.items()):
            color, keep = f"C{k % 10}", _kept(len(r.lrs), skip_start, skip_end)
            lrs, drawn = r.lrs[keep], r.plotted_losses()[keep]
            drawn_curves.append(drawn)
            if raw:
                ax.plot(lrs, r.losses[keep], alpha=0.2, color=color)
            ax.plot(lrs, drawn, color=color, linewidth=2.2 if key == best else 1.2, label=r.settings_label())
            if suggestion is not None and suggestion in r.suggestions and lrs[0] <= r.suggestions[suggestion].lr:
                s = r.suggestions[suggestion]
                ax.plot([s.lr], [_interp_log(s.lr, lrs, drawn)], linestyle="none", marker="o", color=color,
                        label=f"  {suggestion}: {s.lr:.2e}")
        low = min(range(len(self.best.centred_losses)), key=self.best.centred_losses.__getitem__)
        ax.plot([self.best.lrs[low]], [self.best.centred_losses[low]], linestyle="none", marker="*", markersize=14,
                color="k", label=f"lowest loss: {self.best.settings_label()}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        focus_y(ax, drawn_curves)
        ax.set_title(f"LR finder: one curve per {' x '.join(self.names)}", fontsize=9)
        ax.legend(fontsize=7)
        return fig

    def plot_lr(self, ax=None):
        return next(iter(self.curves.values())).plot_lr(ax=ax)


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


def _kept(n: int, skip_start: int, skip_end: int) -> slice:
    """The points a plot draws after leaving out `skip_start` and `skip_end` at the ends (torch-lr-finder's)."""
    for name, value in (("skip_start", skip_start), ("skip_end", skip_end)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0 (points left out of the plot), got {value!r}")
    if skip_start + skip_end > n - 2:
        raise ValueError(f"skip_start + skip_end must leave at least 2 of the curve's {n} points to draw, got "
                         f"skip_start={skip_start}, skip_end={skip_end}; skip fewer")
    return slice(skip_start, n - skip_end)


def focus_y(ax, curves: list[list[float]]) -> tuple[float, float]:
    """A y-range that keeps the descent readable and shows the blow-up: from just below the lowest point to half
    the descent's height above the highest level before the minimum (or to the top of the blow-up, if lower).
    Returns the limits set."""
    curves = [c for c in curves if c]
    if not curves:
        return ax.get_ylim()
    lo = min(min(c) for c in curves)
    descent_top = max(max(c[:c.index(min(c)) + 1]) for c in curves)
    span = descent_top - lo if descent_top > lo else max(abs(descent_top), 1e-8)
    top = max(descent_top + 0.1 * span, min(max(max(c) for c in curves), descent_top + 0.5 * span))
    limits = (lo - 0.1 * span, top + 0.05 * span)
    ax.set_ylim(*limits)
    return limits
