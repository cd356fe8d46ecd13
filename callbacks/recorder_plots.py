"""The Recorder's plots, as plain functions of a `Recorder` (its methods `plot_loss`, `plot_metrics`, `plot_sched`
and `plot_lr_find` call these): each reads only the recorded history, draws on the `ax` (one panel) or `axs` (several)
it is given, or on a new figure, and returns the matplotlib Figure, so several plots compose on one figure."""

from __future__ import annotations

import math


def panel_axes(axs, n: int, figsize):
    """`n` axes: those given (any sequence or array of at least n), or a new row of them."""
    import matplotlib.pyplot as plt

    if axs is None:
        fig, grid = plt.subplots(1, n, figsize=figsize, squeeze=False)
        return fig, list(grid[0])
    flat = list(getattr(axs, "flat", axs))
    if len(flat) < n:
        raise ValueError(f"axs must hold at least {n} axes (one per panel), got {len(flat)}")
    return flat[0].figure, flat[:n]


def plot_loss(recorder, skip_start: int = 0, with_valid: bool = True, ax=None):
    """Training loss per batch (raw and smoothed) of the last fit, with the validation loss at each epoch end."""
    import matplotlib.pyplot as plt

    rows = recorder.last_fit_rows()[skip_start:]
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    its = [r["train_iter"] for r in rows]
    ax.plot(its, [r["loss"] for r in rows], alpha=0.3, label="train (batch)")
    ax.plot(its, [r["smooth_loss"] for r in rows], label="train (smoothed)")
    epochs = [r for r in recorder.epoch_rows if r["fit"] == recorder.n_fits - 1]
    if with_valid and rows and epochs and not all(math.isnan(e["valid_loss"]) for e in epochs):
        per_epoch = (max(its) + 1) / len(epochs)
        ax.plot([(e["epoch"] + 1) * per_epoch for e in epochs], [e["valid_loss"] for e in epochs],
                "o-", label="valid")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    return fig


def plot_metrics(recorder, axs=None):
    """Train/valid loss and every metric per epoch, across all fits (one panel each: `axs` needs one per panel)."""
    df = recorder.to_df("epochs")
    names = ["loss"] + [c for c in df.columns if c not in ("fit", "epoch", "time", "train_loss", "valid_loss")]
    fig, axes = panel_axes(axs, len(names), (4.5 * len(names), 3.5))
    x = range(1, len(df) + 1)
    for ax, name in zip(axes, names, strict=True):
        if name == "loss":
            ax.plot(x, df["train_loss"], "o-", label="train_loss")
            ax.plot(x, df["valid_loss"], "o-", label="valid_loss")
            ax.legend()
        else:
            ax.plot(x, df[name], "o-")
        ax.set_title(name)
        ax.set_xlabel("epoch")
    if axs is None:
        fig.tight_layout()
    return fig


def plot_sched(recorder, axs=None):
    """Learning rate and momentum of every parameter group against iteration, as recorded in the last fit (`axs`:
    a pair of axes). With Prodigy or D-Adaptation the effective rate `d * lr` is drawn beside the nominal one, on a
    log axis: the two differ by orders of magnitude."""
    fig, (ax_lr, ax_mom) = panel_axes(axs, 2, (10, 3.5))
    effective = recorder.group_values("eff_lr")
    for name, ax in (("lr", ax_lr), ("mom", ax_mom)):
        series = recorder.group_values(name)
        for i, values in enumerate(series):
            label = f"group {i}" if len(series) > 1 else None
            if name == "lr" and effective:
                label = f"nominal lr{f' (group {i})' if len(series) > 1 else ''}"
            ax.plot(range(len(values)), values, label=label)
        if name == "lr":
            for i, values in enumerate(effective):
                ax.plot(range(len(values)), values, "--",
                        label=f"effective d * lr{f' (group {i})' if len(effective) > 1 else ''}")
            if effective:
                ax.set_yscale("log")
        ax.set_title("learning rate" if name == "lr" else "momentum")
        ax.set_xlabel("iteration")
        if len(series) > 1 or (name == "lr" and effective):
            ax.legend()
    if axs is None:
        fig.tight_layout()
    return fig


def plot_lr_find(recorder, ax=None, **kwargs):
    """The last `learn.lr_find()` curve: loss against lr on a log axis, suggestions marked (one curve per setting
    after `lr_find(wds=..., moms=...)`). `ax` and the other keyword arguments (`skip_start`, `skip_end`, ...) go to
    the result's `plot`."""
    if recorder.lr_find_result is None:
        raise RuntimeError("no LR-finder result to plot: run learn.lr_find() first")
    return recorder.lr_find_result.plot(ax=ax, **kwargs)
