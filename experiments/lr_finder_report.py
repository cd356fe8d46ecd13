"""The LR-finder study's summary, table and figures (experiments/lr_finder_study.py runs it), from its CSVs alone:
`summary.csv` (one row per grid and method), `lr_finder_table.md` and `lr_finder_<task>.png`, plus
`lr_finder_variations.png` for the task run at several budgets and batch sizes.

Per grid (a task, an optimizer, epochs, batch size), each method's rate is compared with the grid's best (the rate
of highest mean accuracy over the seeds): the accuracy it gives (mean over seeds, a diverged fit scored as chance),
its regret in points of accuracy, its rate's ratio to the best rate (geometric mean over seeds), and what finding it
cost per seed, in epochs and seconds, beside what the grid cost per seed. Training at the chosen rate, which every
method needs once, is not counted."""

from __future__ import annotations

import functools
import math
import statistics
from collections import defaultdict
from pathlib import Path

from cyclr.callbacks.lr_suggest import SUGGESTION_NAMES

from .common import heading, read_rows, save_figure, write_rows
from .lr_finder_tasks import TASKS

__all__ = ["write_report", "summarize", "markdown", "plot_task", "plot_variations", "SUMMARY_FIELDS",
           "MISLEAD_POINTS"]

SUMMARY_FIELDS = ["task", "opt", "epochs", "bs", "best_lr", "best_accuracy", "grid_seconds", "method", "lr",
                  "lr_ratio", "accuracy", "accuracy_sd", "regret_points", "diverged", "n", "cost_epochs",
                  "cost_seconds", "cost_pct_of_grid", "no_clear_descent"]
MISLEAD_POINTS = 2.0  # a pick that loses more than this many points against the grid's best misleads
METHOD_STYLE = {"valley": ("o", "C1"), "steep": ("^", "C2"), "minimum": ("v", "C3"), "slide": ("s", "C4"),
                "best_wd valley": ("D", "C5")}


def _geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def _grids(runs: list[dict]) -> dict[tuple, list[dict]]:
    grids = defaultdict(list)
    for r in runs:
        grids[(r["task"], r["opt"], int(r["epochs"]), int(r["bs"]))].append(r)
    return grids


def grid_curve(rows: list[dict]) -> dict[float, list[dict]]:
    """The grid's fits by rate, ascending."""
    by_lr = defaultdict(list)
    for r in rows:
        if r["kind"] == "grid":
            by_lr[float(r["lr"])].append(r)
    return dict(sorted(by_lr.items()))


def _entry(base: dict, method: str, fits: list[dict], cost_epochs: float, cost_seconds: float,
           no_clear_descent: str = "") -> dict:
    """One method's line of the summary: its fits (one per seed) against the grid's best in `base`."""
    accs = [float(r["accuracy"]) for r in fits]
    lr = _geomean([float(r["lr"]) for r in fits])
    return {**base, "method": method, "lr": lr, "lr_ratio": lr / base["best_lr"], "accuracy": statistics.fmean(accs),
            "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else math.nan,
            "regret_points": 100 * (base["best_accuracy"] - statistics.fmean(accs)),
            "diverged": sum(r["diverged"] == "True" for r in fits), "n": len(fits), "cost_epochs": cost_epochs,
            "cost_seconds": cost_seconds, "cost_pct_of_grid": 100 * cost_seconds / base["grid_seconds"],
            "no_clear_descent": no_clear_descent}


def summarize(runs: list[dict], finders: list[dict], trials: list[dict]) -> list[dict]:
    out = []
    for (task, opt, epochs, bs), rows in _grids(runs).items():
        curve = grid_curve(rows)
        if not curve:
            continue
        means = {lr: statistics.fmean(float(r["accuracy"]) for r in fits) for lr, fits in curve.items()}
        best_lr = max(means, key=means.get)
        n_seeds = len(curve[best_lr])
        grid_seconds = sum(float(r["seconds"]) for fits in curve.values() for r in fits) / n_seeds
        grid_epochs = len(curve) * epochs
        base = {"task": task, "opt": opt, "epochs": epochs, "bs": bs, "best_lr": best_lr, "best_accuracy":
                means[best_lr], "grid_seconds": grid_seconds}
        entry = functools.partial(_entry, base)

        out.append(entry("grid best", curve[best_lr], grid_epochs, grid_seconds))
        found = [f for f in finders if (f["task"], f["opt"], int(f["bs"])) == (task, opt, bs)]
        if found:
            finder_epochs = statistics.fmean(int(f["iterations"]) / int(f["batches_per_epoch"]) for f in found)
            finder_seconds = statistics.fmean(float(f["seconds"]) for f in found)
            unclear = sum(f["no_clear_descent"] == "True" for f in found)
            for name in (*SUGGESTION_NAMES, "best_wd valley"):
                fits = [r for r in rows if r["label"] == name]
                if not fits:
                    continue
                if name == "best_wd valley":
                    wd_found = [int(f["wd_sweep_curves"]) * finder_epochs for f in found]
                    cost = (statistics.fmean(wd_found), statistics.fmean(float(f["wd_sweep_seconds"]) for f in found))
                else:
                    cost = (finder_epochs, finder_seconds)
                out.append(entry(name, fits, *cost, no_clear_descent=f"{unclear}/{len(found)}"))
        for label in sorted({r["label"] for r in rows if r["kind"] == "optuna"}, key=_optuna_order):
            search, k = label.split(" k=")
            spent = sorted((t for t in trials if (t["task"], t["opt"], int(t["epochs"]), int(t["bs"]), t["search"])
                            == (task, opt, epochs, bs, search)), key=lambda t: int(t["number"]))[:int(k)]
            # A seeded search first runs lr_find once (on seed 0's learner): its time is part of the search's cost.
            finder_seconds = float(spent[0]["lr_find_seconds"] or 0) if spent else 0.0
            seed0 = [f for f in found if int(f["seed"]) == 0] if search == "seeded" else []
            cost = (sum(float(t["epochs_trained"] or 0) for t in spent)
                    + sum(int(f["iterations"]) / int(f["batches_per_epoch"]) for f in seed0),
                    sum(float(t["seconds"] or 0) for t in spent) + finder_seconds)
            out.append(entry(f"optuna {label}", [r for r in rows if r["label"] == label], *cost))
    return out


def default_config(task: str, quick: bool) -> tuple[int, int]:
    """(epochs, bs) the task runs at outside its variation: one epoch in quick mode."""
    return (1 if quick else TASKS[task].epochs), TASKS[task].bs


def _optuna_order(label: str) -> tuple[str, int]:
    """'blind k=5' before 'blind k=10', then the seeded ones."""
    search, k = label.split(" k=")
    return search, int(k)


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def markdown(summary: list[dict], quick: bool = False, command: str | None = None) -> str:
    lines = heading("### Does the LR finder find the rate a search would?", quick, command) + [
        "",
        "`fit_one_cycle(epochs, max_lr)` with each method's rate, against the best rate of a log grid (half a decade "
        "apart, reaching two decades past the best on each side; one fit per seed at every rate). Accuracy: mean "
        "over seeds, a diverged fit scored as chance. Regret: points of accuracy lost against the grid's best. "
        "Rate: geometric mean over seeds, and its ratio to the best rate. Cost per seed of finding the rate (the "
        "fit at it not counted): epochs and seconds, and as a share of the grid's. `optuna blind k=N`: the best "
        "rate among `tune_lr`'s first N trials (seed 0, TPE and a MedianPruner) over the grid's starting range, "
        "then trained with every seed; `optuna seeded k=N`: the same, searched a decade either side of lr_find's "
        "valley, the sweep's time counted.",
        "",
        "| task | opt | epochs | bs | method | rate | x best | accuracy | regret (points) | diverged | "
        "cost epochs | cost s | % of grid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        sd = "" if math.isnan(e["accuracy_sd"]) else f" +- {e['accuracy_sd']:.4f}"
        lines.append(f"| {e['task']} | {e['opt']} | {e['epochs']} | {e['bs']} | {e['method']} | {_fmt(e['lr'])} | "
                     f"{_fmt(e['lr_ratio'], 2)} | {e['accuracy']:.4f}{sd} | {e['regret_points']:.2f} | "
                     f"{e['diverged']}/{e['n']} | {_fmt(e['cost_epochs'])} | {_fmt(e['cost_seconds'])} | "
                     f"{_fmt(e['cost_pct_of_grid'], 2)} |")
    lines += ["", "#### The claim, per task and optimizer (at the task's own epochs and batch size)", ""]
    for e in summary:
        if e["method"] == "valley" and (e["epochs"], e["bs"]) == default_config(e["task"], quick):
            within = "within" if e["regret_points"] >= 0 else "better, by"
            lines.append(f"- {e['task']} / {e['opt']}: the valley suggestion is {within} "
                         f"{abs(e['regret_points']):.1f} points of the searched optimum at "
                         f"{e['cost_pct_of_grid']:.1f}% of the grid's cost (rate {e['lr_ratio']:.2g}x the best).")
    lines += ["", "#### Which suggestion is the best default", ""]
    by_method = defaultdict(list)
    for e in summary:
        if e["method"] in SUGGESTION_NAMES or e["method"] == "best_wd valley":
            by_method[e["method"]].append(e)
    ranking = sorted(by_method, key=lambda m: statistics.fmean(e["regret_points"] for e in by_method[m]))
    for m in ranking:
        regrets = [e["regret_points"] for e in by_method[m]]
        lines.append(f"- {m}: mean regret {statistics.fmean(regrets):.2f} points over {len(regrets)} grids, worst "
                     f"{max(regrets):.2f}; rate {_fmt(_geomean([e['lr_ratio'] for e in by_method[m]]), 2)}x the best "
                     "(geometric mean)")
    misled = [e for e in summary if e["method"] in by_method and (e["regret_points"] > MISLEAD_POINTS or e["diverged"])]
    lines += ["", f"#### When the finder misleads (regret above {MISLEAD_POINTS:g} points, or a diverged fit)", ""]
    lines += [f"- {e['task']} / {e['opt']} / {e['epochs']} epochs / bs {e['bs']}: {e['method']} at "
              f"{_fmt(e['lr'])} ({_fmt(e['lr_ratio'], 2)}x the best) loses {e['regret_points']:.1f} points"
              + (f", {e['diverged']}/{e['n']} fits diverged" if e["diverged"] else "")
              + (f", curves without a clear descent {e['no_clear_descent']}" if e["no_clear_descent"].startswith(
                  tuple("123456789")) else "") for e in misled] or ["- none"]
    return "\n".join(lines + _moving_optimum(summary)) + "\n"


def _moving_optimum(summary: list[dict]) -> list[str]:
    """For a task run at several budgets or batch sizes: where the grid's best rate went, and the valley beside it
    (the finder sees the batch size, never the budget)."""
    lines = []
    for task in sorted({e["task"] for e in summary}):
        grids = {(e["opt"], e["epochs"], e["bs"]) for e in summary if e["task"] == task}
        if len({(epochs, bs) for _, epochs, bs in grids}) < 2:
            continue
        lines += ["", f"#### The moving optimum: {task} at several budgets and batch sizes", "",
                  "| opt | epochs | bs | grid's best rate | valley | valley / best | valley's regret (points) |",
                  "|---|---|---|---|---|---|---|"]
        for opt, epochs, bs in sorted(grids):
            valley = next((e for e in summary if (e["task"], e["opt"], e["epochs"], e["bs"], e["method"])
                           == (task, opt, epochs, bs, "valley")), None)
            if valley is not None:
                lines.append(f"| {opt} | {epochs} | {bs} | {_fmt(valley['best_lr'])} | {_fmt(valley['lr'])} | "
                             f"{_fmt(valley['lr_ratio'], 2)} | {valley['regret_points']:.2f} |")
    return lines


def plot_task(runs: list[dict], task: str, epochs: int, bs: int, ax_per_opt: bool = True):
    """Accuracy against max_lr for each optimizer: the grid's mean over seeds with their min-max band, and every
    seed's fit at each suggestion (and at Optuna's last pick) marked where it landed."""
    import matplotlib.pyplot as plt

    opts = sorted({r["opt"] for r in runs if r["task"] == task})
    fig, axes = plt.subplots(1, len(opts), figsize=(6 * len(opts), 4.2), squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        rows = [r for r in runs if (r["task"], r["opt"], int(r["epochs"]), int(r["bs"])) == (task, opt, epochs, bs)]
        curve = grid_curve(rows)
        lrs = list(curve)
        accs = [[float(r["accuracy"]) for r in curve[lr]] for lr in lrs]
        ax.plot(lrs, [statistics.fmean(a) for a in accs], "k.-", label="grid (mean over seeds)")
        ax.fill_between(lrs, [min(a) for a in accs], [max(a) for a in accs], color="k", alpha=0.15,
                        label="seeds' range")
        ax.axhline(TASKS[task].chance, color="grey", ls=":", lw=1, label="chance (diverged)")
        for name, (marker, color) in METHOD_STYLE.items():
            fits = [r for r in rows if r["label"] == name]
            if fits:
                ax.scatter([float(r["lr"]) for r in fits], [float(r["accuracy"]) for r in fits], marker=marker,
                           color=color, s=45, zorder=3, label=name)
        labels = sorted({r["label"] for r in rows if r["kind"] == "optuna"}, key=_optuna_order)
        for search, color in (("blind", "C0"), ("seeded", "C9")):
            mine = [label for label in labels if label.startswith(search)]
            if mine:
                fits = [r for r in rows if r["label"] == mine[-1]]
                ax.scatter([float(r["lr"]) for r in fits], [float(r["accuracy"]) for r in fits], marker="*", s=110,
                           color=color, zorder=4, label=f"Optuna best, {mine[-1]}")
        ax.set_xscale("log")
        ax.set_xlabel("max_lr")
        ax.set_ylabel("final accuracy")
        ax.set_title(f"{task}, {opt}, {epochs} epochs, bs {bs}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_variations(runs: list[dict], finders: list[dict], task: str):
    """The optimum moving with the budget and the batch size: one grid curve per (epochs, bs), the grid's best
    marked by a star, and the valley suggestion (geometric mean over seeds; it depends on the batch size only) by a
    dashed line of the batch size's colour."""
    import matplotlib.pyplot as plt

    opts = sorted({r["opt"] for r in runs if r["task"] == task})
    fig, axes = plt.subplots(1, len(opts), figsize=(6 * len(opts), 4.2), squeeze=False)
    for ax, opt in zip(axes[0], opts, strict=True):
        grids = sorted({(int(r["epochs"]), int(r["bs"])) for r in runs if (r["task"], r["opt"]) == (task, opt)})
        sizes = sorted({bs for _, bs in grids})
        for i, (epochs, bs) in enumerate(grids):
            rows = [r for r in runs if (r["task"], r["opt"], int(r["epochs"]), int(r["bs"])) == (task, opt, epochs, bs)]
            curve = grid_curve(rows)
            means = [statistics.fmean(float(r["accuracy"]) for r in fits) for fits in curve.values()]
            line, = ax.plot(list(curve), means, ".-", color=f"C{i}", label=f"{epochs} epochs, bs {bs}")
            best = max(range(len(means)), key=means.__getitem__)
            ax.scatter([list(curve)[best]], [means[best]], marker="*", s=140, color=line.get_color(), zorder=3)
        for j, bs in enumerate(sizes):
            valleys = [float(f["valley"]) for f in finders if (f["task"], f["opt"], int(f["bs"])) == (task, opt, bs)]
            if valleys:
                ax.axvline(_geomean(valleys), ls="--", color=f"C{len(grids) + j}", label=f"valley, bs {bs}")
        ax.set_xscale("log")
        ax.set_xlabel("max_lr")
        ax.set_ylabel("final accuracy (mean over seeds)")
        ax.set_title(f"{task}, {opt}: budget and batch size")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(out: Path, quick: bool = False, command: str | None = None) -> dict:
    runs, finders = read_rows(out / "runs.csv"), read_rows(out / "finder.csv")
    trials = read_rows(out / "optuna_trials.csv")
    summary = summarize(runs, finders, trials)
    write_rows(out / "summary.csv", SUMMARY_FIELDS, summary)
    (out / "lr_finder_table.md").write_text(markdown(summary, quick=quick, command=command))
    grids = sorted({(r["task"], int(r["epochs"]), int(r["bs"])) for r in runs})
    for task in sorted({t for t, _, _ in grids}):
        configs = [(e, b) for t, e, b in grids if t == task]
        save_figure(plot_task(runs, task, *default_config(task, quick)), out / f"lr_finder_{task}.png")
        if len(configs) > 1:
            save_figure(plot_variations(runs, finders, task), out / "lr_finder_variations.png")
    return {"summary": summary, "out": out}
