"""What an LR-finder sweep returns: `LRFinderResult` (one curve, its suggestions, its plots), `LRFinderSweep` (one
curve per weight decay) and `LRFinderPlots` (what `learn.sched` draws, for fastai 0.7's snippets)."""

from __future__ import annotations

import math

from .lr_suggest import Suggestion, centred_smooth


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

