"""Runs side by side: `compare_runs` draws the losses, metrics and schedules of several runs on shared axes (one
panel per quantity, one colour per run), and `stack_runs` stacks their histories into one DataFrame with a `run`
column.

A run is a `Recorder`, one of its DataFrames (`to_df('epochs')` or `to_df('batches')`, or a CSV read back with the
same columns), or a pair `(batches, epochs)` of them. The x axis is the epoch, counted across a recorder's fits (a
`fine_tune` is two fits, one after the other): epoch rows at the end of their epoch, batch rows at
`epoch offset + pct * epochs of that fit`, so runs of different lengths line up by epoch.
"""

from __future__ import annotations

import math

_NOT_METRICS = ("run", "fit", "epoch", "time", "train_loss", "valid_loss", "lr", "mom", "seconds", "seed", "setup",
                "model", "x")


def _tables(run):
    """(batches, epochs) DataFrames of one run, either None when the run has none."""
    import pandas as pd

    if hasattr(run, "to_df") and hasattr(run, "batch_rows"):  # a Recorder
        return run.to_df("batches"), run.to_df("epochs")
    if isinstance(run, tuple) and len(run) == 2:
        batches, epochs = run
        return batches, epochs
    if isinstance(run, pd.DataFrame):
        if "pct" in run.columns and "lr" in run.columns:
            return run, None
        if "valid_loss" in run.columns or "train_loss" in run.columns:
            return None, run
        raise ValueError(f"a run's DataFrame must be a Recorder's batch table (with 'pct' and 'lr') or epoch table "
                         f"(with 'train_loss' / 'valid_loss'), got columns {list(run.columns)}")
    raise TypeError(f"each run must be a Recorder, a DataFrame of its history or a (batches, epochs) pair, got "
                    f"{type(run).__name__}")


def _labelled(runs, labels) -> list[tuple[str, object]]:
    if isinstance(runs, dict):
        if labels is not None:
            raise ValueError("give the labels as the dict's keys or as labels=, not both")
        pairs = [(str(k), v) for k, v in runs.items()]
    else:
        runs = list(runs)
        labels = [f"run {i}" for i in range(len(runs))] if labels is None else [str(lab) for lab in labels]
        if len(labels) != len(runs):
            raise ValueError(f"labels has {len(labels)} names for {len(runs)} runs; give one label per run")
        pairs = list(zip(labels, runs, strict=True))
    if not pairs:
        raise ValueError("no runs to compare: give at least one Recorder or DataFrame")
    if len({lab for lab, _ in pairs}) != len(pairs):
        raise ValueError(f"labels must be distinct, got {[lab for lab, _ in pairs]}")
    return pairs


def _with_x(batches, epochs):
    """Copies of the tables with an `x` column: the epoch, counted across fits (see the module docstring)."""
    fits = lambda df: df["fit"] if "fit" in df.columns else 0  # noqa: E731 (a CSV of one fit has no fit column)
    n_epochs = {}
    if epochs is not None and len(epochs):
        epochs = epochs.assign(fit=fits(epochs))
        n_epochs = epochs.groupby("fit")["epoch"].max().add(1).to_dict()
    if batches is not None and len(batches):
        batches = batches.assign(fit=fits(batches))
        for fit, n in batches.groupby("fit")["epoch"].max().add(1).items() if "epoch" in batches.columns else ():
            n_epochs.setdefault(fit, n)
    offsets, total = {}, 0
    for fit in sorted(n_epochs):
        offsets[fit], total = total, total + n_epochs[fit]
    if epochs is not None and len(epochs):
        epochs = epochs.assign(x=[offsets[f] + e + 1 for f, e in zip(epochs["fit"], epochs["epoch"], strict=True)])
    if batches is not None and len(batches):
        batches = batches.assign(x=[offsets.get(f, 0) + p * n_epochs.get(f, 1)
                                    for f, p in zip(batches["fit"], batches["pct"], strict=True)])
    return batches, epochs


def stack_runs(runs, labels=None, kind: str = "epochs"):
    """One DataFrame of every run's `kind` table ('epochs' or 'batches'), a `run` column first (its label)."""
    import pandas as pd

    if kind not in ("epochs", "batches"):
        raise ValueError(f"kind must be one of 'epochs', 'batches', got {kind!r}")
    frames = []
    for label, run in _labelled(runs, labels):
        batches, epochs = _tables(run)
        table = epochs if kind == "epochs" else batches
        if table is not None:
            frames.append(table.assign(run=label)[["run", *[c for c in table.columns if c != "run"]]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run"])


def compare_runs(runs, labels=None, axs=None, metrics=None):
    """Draw several runs on shared axes: a 'loss' panel (valid loss per epoch, solid; train loss, dashed), one
    panel per metric (default: every metric the epoch tables share), and 'learning rate' and 'momentum' panels
    (the last group's, per batch). `runs` is a dict label -> run, or a list with `labels`; `axs` (one per panel)
    puts the panels on axes of your own figure. Returns the Figure."""
    from .recorder_plots import panel_axes

    tables = [(label, *_with_x(*_tables(run))) for label, run in _labelled(runs, labels)]
    epoch_tables = [e for _, _, e in tables if e is not None and len(e)]
    if metrics is None:
        shared = [set(e.columns) for e in epoch_tables]
        metrics = [c for c in (epoch_tables[0].columns if epoch_tables else ()) if c not in _NOT_METRICS
                   and not c.startswith("train_") and all(c in s for s in shared)]
    has_mom = any(b is not None and "mom" in b.columns and not all(math.isnan(float(v)) for v in b["mom"])
                  for _, b, _ in tables)
    panels = ["loss", *metrics, "learning rate"] + (["momentum"] if has_mom else [])
    fig, axes = panel_axes(axs, len(panels), (4.5 * len(panels), 3.5))
    by_name = dict(zip(panels, axes, strict=True))
    for k, (label, batches, epochs) in enumerate(tables):
        color = f"C{k % 10}"
        if epochs is not None and len(epochs):
            if "valid_loss" in epochs.columns:
                by_name["loss"].plot(epochs["x"], epochs["valid_loss"], "o-", markersize=3, color=color,
                                     label=f"{label} valid")
            if "train_loss" in epochs.columns:
                by_name["loss"].plot(epochs["x"], epochs["train_loss"], "--", color=color, label=f"{label} train")
            for name in metrics:
                by_name[name].plot(epochs["x"], epochs[name], "o-", markersize=3, color=color, label=label)
        if batches is not None and len(batches):
            by_name["learning rate"].plot(batches["x"], batches["lr"], color=color, label=label)
            if has_mom and "mom" in batches.columns:
                by_name["momentum"].plot(batches["x"], batches["mom"], color=color, label=label)
    for name, ax in by_name.items():
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=7)
    if axs is None:
        fig.tight_layout()
    return fig
