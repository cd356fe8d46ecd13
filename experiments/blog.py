"""blog: experiments 1-3 of "Understanding the learning rates of cycle_policy" (`fit_one_cycle` called verbatim),
run for real (`cyclr reproduce blog`).

The study it translates trained ResNet-56 on CIFAR-10 for 95 (or 50) epochs on a GPU; on a CPU the same calls run on
Fashion-MNIST with LeNet and the epochs scaled by `epoch_scale` (stated in every output).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cyclr import Learner, accuracy, lenet, lenet_bn, resnet56, sgd

from .common import (
    append_row,
    check_seeds,
    heading,
    last_per_epoch,
    plus_minus,
    read_rows,
    round_sig,
    rows_of_config,
    save_figure,
    summary_stats,
    thinned,
    write_rows,
)

__all__ = [
    "BlogCall", "BLOG_CALLS", "BLOG_SOURCE", "BLOG_EPOCH_SCALE", "BLOG_CPU_BATCH_SIZE", "CPU_MODELS",
    "BLOG_RUN_FIELDS", "BLOG_HISTORY_FIELDS", "BLOG_BATCH_FIELDS", "scaled_epochs", "run_blog",
    "blog_measurements", "blog_summary", "blog_claims", "blog_markdown", "plot_blog_runs",
]


@dataclass(frozen=True)
class BlogCall:
    """One of the blog's `learn.fit_one_cycle(...)` calls, with its arguments verbatim, and what the fastai 0.7
    notebook it translates ran instead."""

    name: str
    title: str
    cyc_len: int
    max_lr: float
    div_factor: float
    pct_start: float
    moms: tuple[float, float]
    wd: float
    source_call: str
    source_result: str

    def fit_kwargs(self, epochs: int | None = None) -> dict:
        return {"cyc_len": self.cyc_len if epochs is None else epochs, "max_lr": self.max_lr,
                "div_factor": self.div_factor, "pct_start": self.pct_start, "moms": self.moms, "wd": self.wd}


# sgugger/Deep-Learning, "Cyclical LR and momentums.ipynb" (fastai 0.7, ResNet-56 on CIFAR-10, batch 512, flip and
# reflection-padding-4 crops). `use_clr_beta=(div, pct, max_mom, min_mom)`: lr linear from max_lr/div up to max_lr
# and back over (100 - pct)% of the iterations, then linear down to max_lr/(100*div) over the last pct%; momentum
# linear max_mom -> min_mom -> max_mom, then constant.
BLOG_SOURCE = "sgugger/Deep-Learning, 'Cyclical LR and momentums.ipynb' (fastai 0.7)"
BLOG_CALLS = (
    BlogCall("exp1_one_cycle", "Experiment 1: one cycle", 95, 0.08, 10, 0.1368, (0.95, 0.85), 1e-4,
             "learn.fit(0.8, 1, cycle_len=95, use_clr_beta=(10, 13.68, 0.95, 0.85), wds=1e-4)",
             "valid loss 0.269, accuracy 0.935"),
    BlogCall("exp2_higher_lr_shorter_cycle", "Experiment 2: higher learning rate, shorter cycle", 50, 0.8, 10, 0.5,
             (0.95, 0.85), 1e-4,
             "learn.fit(3, 1, cycle_len=50, use_clr_beta=(20, 10, 0.95, 0.85), wds=1e-4)",
             "valid loss 0.242, accuracy 0.923"),
    BlogCall("exp3_constant_momentum", "Experiment 3: constant momentum", 95, 0.08, 10, 0.1368, (0.9, 0.9), 1e-4,
             "learn.fit(0.8, 1, cycle_len=95, use_clr_beta=(10, 13.68, 0.9, 0.9), wds=1e-4)",
             "valid loss 0.291, accuracy 0.934"),
)
BLOG_EPOCH_SCALE = 0.2  # on the CPU: 95 -> 19 epochs, 50 -> 10
BLOG_CPU_BATCH_SIZE = 512  # the study's batch size
# On the CPU: LeNet with batch norm (the study's ResNet-56 has batch norm, which its peak rates need) or plain LeNet.
CPU_MODELS = {"lenet_bn": lenet_bn, "lenet": lenet}


def scaled_epochs(cyc_len: int, scale: float) -> int:
    """`cyc_len * scale` rounded to the nearest epoch (at least 1): 95 -> 19 and 50 -> 10 at scale 0.2."""
    if not 0 < scale <= 1:
        raise ValueError(f"epoch_scale must be in (0, 1], got {scale!r}")
    return max(1, math.floor(cyc_len * scale + 0.5))


BLOG_RUN_FIELDS = ["run", "seed", "setup", "model", "epochs", "epoch_scale", "n_train", "n_valid", "train_loss",
                   "valid_loss", "accuracy", "gap", "valid_loss_rises", "largest_valid_rise", "min_valid_loss",
                   "first_lr", "peak_lr", "last_lr", "seconds_per_epoch"]
BLOG_HISTORY_FIELDS = ["run", "seed", "setup", "model", "epoch", "lr", "mom", "train_loss", "valid_loss", "accuracy",
                       "seconds"]
BLOG_BATCH_FIELDS = ["run", "seed", "model", "train_iter", "pct", "lr", "mom", "loss", "smooth_loss"]


def run_blog(
    out: str | Path,
    seeds: Sequence[int] = (0, 1),
    epoch_scale: float | None = None,
    quick: bool = False,
    setup: str = "auto",
    cpu_model: str = "lenet_bn",
    n_train: int | None = None,
    n_valid: int | None = None,
    device=None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict:
    """Run the blog's three `fit_one_cycle` calls once per seed and write to `out`:

    blog_runs.csv (final figures and the measurements behind the blog's claims, one row per run and seed),
    blog_history.csv (per epoch), blog_batches.csv (about 500 batches per run, first seed), blog_summary.csv,
    blog_table.md (with the claims checked) and blog_runs.png (lr, momentum, train and valid loss of the three runs
    side by side).

    `setup`: 'gpu' trains ResNet-56 on CIFAR-10 (augmented, batch 512) at full length (scale 1); 'cpu' trains
    `cpu_model` ('lenet_bn', LeNet with batch norm like the study's ResNet-56, or plain 'lenet', which diverges at
    the blog's peak rate of 0.8) on Fashion-MNIST with the epochs scaled by `epoch_scale` (default 0.2); 'auto'
    picks 'gpu' when CUDA is available. `quick`: 2048 training / 1024 test images and scale 0.05 (95 -> 5 epochs),
    a smoke test.
    """
    if setup == "auto":
        setup = "gpu" if torch.cuda.is_available() and not quick else "cpu"
    if setup not in ("cpu", "gpu"):
        raise ValueError(f"setup must be 'auto', 'cpu' or 'gpu', got {setup!r}")
    if setup == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("setup='gpu' trains ResNet-56 on CIFAR-10 and needs CUDA; use setup='cpu' on this machine")
    if cpu_model not in CPU_MODELS:
        raise ValueError(f"cpu_model must be one of {list(CPU_MODELS)}, got {cpu_model!r}")
    seeds = check_seeds(seeds)
    if epoch_scale is None:
        epoch_scale = 1.0 if setup == "gpu" else (0.05 if quick else BLOG_EPOCH_SCALE)
    if quick:
        n_train, n_valid = n_train or 2048, n_valid or 1024
    for call in BLOG_CALLS:
        scaled_epochs(call.cyc_len, epoch_scale)  # refuses a bad scale before any training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_csv, history_csv, batches_csv = out / "blog_runs.csv", out / "blog_history.csv", out / "blog_batches.csv"
    n_train_full, n_valid_full = (50000, 10000) if setup == "gpu" else (60000, 10000)
    config = {"setup": setup, "model": "resnet56" if setup == "gpu" else cpu_model, "epoch_scale": epoch_scale,
              "n_train": n_train or n_train_full, "n_valid": n_valid or n_valid_full}
    done = {(r["run"], int(r["seed"])) for r in rows_of_config(runs_csv, config)}

    recorders = {}
    for seed in seeds:
        dls, make_model = _blog_setup(setup, cpu_model, seed, n_train, n_valid, device)
        for call in BLOG_CALLS:
            if (call.name, seed) in done:
                log(f"blog {call.name} seed {seed}: already in {runs_csv}, skipped")
                continue
            epochs = scaled_epochs(call.cyc_len, epoch_scale)
            torch.manual_seed(seed)
            # The study's SGD, momentum 0.9; fastai 0.7 gave `wds` to torch's SGD over every parameter, so batch
            # norm and biases were decayed too (wd_bn_bias=True).
            learn = Learner(make_model(), dls, nn.CrossEntropyLoss(), opt_func=sgd, lr=call.max_lr,
                            metrics=[accuracy], device=device, progress=False, wd_bn_bias=True)
            start = time.perf_counter()
            learn.fit_one_cycle(**call.fit_kwargs(epochs))
            seconds = time.perf_counter() - start
            history = _blog_history(learn)
            for row in history:
                append_row(history_csv, BLOG_HISTORY_FIELDS,
                            {"run": call.name, "seed": seed, "setup": setup, "model": config["model"], **row})
            if seed == seeds[0]:
                recorders[call.name] = learn.recorder
                for row in thinned(learn.recorder.batch_rows):
                    append_row(batches_csv, BLOG_BATCH_FIELDS,
                                {"run": call.name, "seed": seed, "model": config["model"],
                                 **{k: round_sig(row[k]) for k in BLOG_BATCH_FIELDS[3:]}})
            result = {"run": call.name, "seed": seed, "epochs": epochs, **config,
                      **blog_measurements(history, learn.recorder.lrs), "seconds_per_epoch": seconds / epochs}
            append_row(runs_csv, BLOG_RUN_FIELDS, result)
            log(f"blog {call.name} seed {seed} ({epochs} epochs): valid loss {result['valid_loss']:.3f}, "
                f"accuracy {result['accuracy']:.4f}, train loss {result['train_loss']:.3f} ({seconds:.0f} s)")

    summary = blog_summary(read_rows(runs_csv))
    write_rows(out / "blog_summary.csv", list(summary[0].keys()) if summary else [], summary)
    claims = blog_claims(summary)
    (out / "blog_table.md").write_text(blog_markdown(summary, claims, config, quick=quick, command=command))
    if recorders or batches_csv.exists():
        save_figure(plot_blog_runs(read_rows(batches_csv), last_per_epoch(read_rows(history_csv))),
                    out / "blog_runs.png")
    return {"summary": summary, "claims": claims, "recorders": recorders, "out": out}


def _blog_setup(setup: str, cpu_model: str, seed: int, n_train, n_valid, device):
    if setup == "gpu":
        from cyclr.data.cifar10 import cifar10

        # The study: batch 512, padding-4 random crops and horizontal flips, per-channel normalisation.
        dls = cifar10(bs=512, augment=True, device=device or "cuda", seed=seed, n_train=n_train, n_valid=n_valid)
        return dls, resnet56
    from cyclr import fashion_mnist

    dls = fashion_mnist(bs=BLOG_CPU_BATCH_SIZE, normalize=True, n_train=n_train, n_valid=n_valid, seed=seed,
                        device=device)
    return dls, CPU_MODELS[cpu_model]


def _blog_history(learn: Learner) -> list[dict]:
    fit = learn.recorder.n_fits - 1
    first = {}
    for row in learn.recorder.batch_rows:
        if row["fit"] == fit:
            first.setdefault(row["epoch"], (row["lr"], row["mom"]))
    return [
        {"epoch": r["epoch"], "lr": first.get(r["epoch"], (math.nan,))[0],
         "mom": first.get(r["epoch"], (math.nan, math.nan))[1], "train_loss": r["train_loss"],
         "valid_loss": r["valid_loss"], "accuracy": r["accuracy"], "seconds": r["time"]}
        for r in learn.recorder.epoch_rows if r["fit"] == fit
    ]


def blog_measurements(history: list[dict], lrs: Sequence[float]) -> dict:
    """What the blog's claims are about, from one run's epoch history: the final losses and their gap, how often
    the validation loss rose from one epoch to the next (its instability mid-cycle) and the largest such rise."""
    valid = [float(h["valid_loss"]) for h in history]
    rises = [b - a for a, b in zip(valid, valid[1:], strict=False) if b > a]
    last = history[-1]
    return {
        "train_loss": last["train_loss"], "valid_loss": last["valid_loss"], "accuracy": last["accuracy"],
        "gap": last["valid_loss"] - last["train_loss"], "valid_loss_rises": len(rises),
        "largest_valid_rise": max(rises, default=0.0), "min_valid_loss": min(valid),
        "first_lr": lrs[0] if lrs else math.nan, "peak_lr": max(lrs) if lrs else math.nan,
        "last_lr": lrs[-1] if lrs else math.nan,
    }


def blog_summary(rows: list[dict]) -> list[dict]:
    out = []
    for call in BLOG_CALLS:
        mine = [r for r in rows if r["run"] == call.name]
        if not mine:
            continue
        entry = {"run": call.name, "seeds": " ".join(str(int(r["seed"])) for r in mine), "n": len(mine),
                 "epochs": int(mine[0]["epochs"]), "cyc_len": call.cyc_len}
        for key in ("train_loss", "valid_loss", "accuracy", "gap", "valid_loss_rises", "largest_valid_rise",
                    "min_valid_loss", "first_lr", "peak_lr", "last_lr", "seconds_per_epoch"):
            stats = summary_stats([float(r[key]) for r in mine])
            entry.update({f"{key}_{k}": v for k, v in stats.items()})
        out.append(entry)
    return out


def blog_claims(summary: list[dict]) -> list[dict]:
    """The blog's three claims, each with the measurement that tests it (means over seeds) and a stated criterion.

    'holds' is None when a run it needs is missing."""
    by = {e["run"]: e for e in summary}
    e1, e2, e3 = (by.get(c.name) for c in BLOG_CALLS)
    claims = []

    def add(claim, criterion, measured, holds):
        claims.append({"claim": claim, "criterion": criterion, "measured": measured, "holds": holds})

    if e1:
        add("Exp. 1: the validation loss becomes unstable in the middle of the cycle",
            "the valid loss rises from one epoch to the next at least once",
            f"{e1['valid_loss_rises_mean']:.1f} rises per run, largest +{e1['largest_valid_rise_mean']:.3f}",
            e1["valid_loss_rises_mean"] >= 1)
        add("Exp. 1: ... but it decreases in the end",
            "the final valid loss is within 2% of the lowest one of the run",
            f"final {e1['valid_loss_mean']:.3f}",
            e1["valid_loss_mean"] <= 1.02 * e1["min_valid_loss_mean"])
        add("Exp. 1: the gap between validation and training loss is not significant",
            "final valid loss - final train loss <= 0.05",
            f"{e1['valid_loss_mean']:.3f} - {e1['train_loss_mean']:.3f} = {e1['gap_mean']:+.3f}",
            e1["gap_mean"] <= 0.05)
    if e1 and e2:
        add("Exp. 2: a higher rate (0.8) with a shorter cycle trains without the loss getting too big",
            "finite losses, and accuracy within 1 point of Exp. 1 in about half the epochs",
            f"accuracy {e2['accuracy_mean']:.4f} vs {e1['accuracy_mean']:.4f} ({e2['epochs']} vs {e1['epochs']} "
            f"epochs), valid loss {e2['valid_loss_mean']:.3f} vs {e1['valid_loss_mean']:.3f}",
            math.isfinite(e2["valid_loss_mean"]) and e2["accuracy_mean"] >= e1["accuracy_mean"] - 0.01)
    if e1 and e3:
        add("Exp. 3: constant momentum gives an accuracy close to cycled momentum",
            "|accuracy difference| <= 0.5 points",
            f"{e3['accuracy_mean']:.4f} vs {e1['accuracy_mean']:.4f}",
            abs(e3["accuracy_mean"] - e1["accuracy_mean"]) <= 0.005)
        add("Exp. 3: ... but a larger loss",
            "final valid loss of Exp. 3 > that of Exp. 1",
            f"{e3['valid_loss_mean']:.3f} vs {e1['valid_loss_mean']:.3f}",
            e3["valid_loss_mean"] > e1["valid_loss_mean"])
    return claims


def blog_markdown(summary: list[dict], claims: list[dict], config: dict, quick: bool = False,
                  command: str | None = None) -> str:
    model = {"lenet_bn": "LeNet with batch norm", "lenet": "LeNet (no batch norm)"}.get(config["model"])
    setup = ("ResNet-56 on CIFAR-10 (shared JPEG copy), batch 512, crop+flip augmentation" if config["setup"] == "gpu"
             else f"{model} on Fashion-MNIST (normalised), batch {BLOG_CPU_BATCH_SIZE}")
    lines = heading("### The blog's experiments 1-3 (`fit_one_cycle`, arguments verbatim)", quick, command) + [
        f"{setup}; epochs = cyc_len x {config['epoch_scale']} (rounded); {config['n_train']} training / "
        f"{config['n_valid']} test images. Mean +- sample standard deviation over the seeds.",
        "",
        "| run | call | epochs | train loss | valid loss | accuracy | valid - train | valid-loss rises | "
        "lr first / peak / last | s per epoch |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    calls = {c.name: c for c in BLOG_CALLS}
    for e in summary:
        c = calls[e["run"]]
        call = (f"cyc_len={c.cyc_len}, max_lr={c.max_lr}, div_factor={c.div_factor:g}, pct_start={c.pct_start}, "
                f"moms={c.moms}, wd={c.wd:g}")
        lines.append(
            f"| {e['run']} (seeds {e['seeds']}) | `{call}` | {e['epochs']} | {plus_minus(e, 'train_loss')} | "
            f"{plus_minus(e, 'valid_loss')} | {plus_minus(e, 'accuracy', 4)} | {plus_minus(e, 'gap')} | "
            f"{e['valid_loss_rises_mean']:.1f} | "
            f"{e['first_lr_mean']:.3g} / {e['peak_lr_mean']:.3g} / {e['last_lr_mean']:.2g} | "
            f"{e['seconds_per_epoch_mean']:.1f} |")
    lines += ["", "| claim (blog) | criterion | measured | holds? |", "|---|---|---|---|"]
    for c in claims:
        verdict = "n/a" if c["holds"] is None else ("yes" if c["holds"] else "no")
        lines.append(f"| {c['claim']} | {c['criterion']} | {c['measured']} | {verdict} |")
    lines += [
        "",
        f"The study the blog translates ({BLOG_SOURCE}, ResNet-56 on CIFAR-10, 95 or 50 epochs): "
        + "; ".join(f"`{c.source_call}` gave {c.source_result}" for c in BLOG_CALLS) + ".",
        "",
    ]
    return "\n".join(lines)


def plot_blog_runs(batches: list[dict], epochs: list[dict], seed: int | None = None):
    """The three runs side by side on shared axes (`cyclr.compare_runs`): train and valid loss, accuracy,
    learning rate and momentum against the epoch, from the recorded histories of one seed (the first)."""
    import pandas as pd

    from cyclr import compare_runs

    names = [c.name for c in BLOG_CALLS if any(b["run"] == c.name for b in batches)]
    if seed is None and batches:
        seed = int(batches[0]["seed"])
    runs = {}
    for name in names:
        mine = pd.DataFrame([b for b in batches if b["run"] == name and int(b["seed"]) == seed])
        ep = pd.DataFrame(sorted((r for r in epochs if r["run"] == name and int(r["seed"]) == seed),
                                 key=lambda r: int(r["epoch"])))
        for table, columns in ((mine, ("pct", "lr", "mom", "loss", "smooth_loss")),
                               (ep, ("epoch", "train_loss", "valid_loss", "accuracy"))):
            for column in columns:
                if column in table.columns:  # read back from CSV as text
                    table[column] = table[column].astype(int if column == "epoch" else float)
        runs[name] = (mine, ep[[c for c in ("epoch", "train_loss", "valid_loss", "accuracy") if c in ep.columns]])
    fig = compare_runs(runs, metrics=["accuracy"] if all("accuracy" in e.columns for _, e in runs.values()) else [])
    fig.axes[0].set_yscale("log")
    return fig
