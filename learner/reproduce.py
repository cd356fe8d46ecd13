"""Published learning-rate experiments, run for real: `cyclr reproduce d2l` and `cyclr reproduce blog`.

d2l: the chapter "Learning Rate Scheduling" of Dive into Deep Learning, PyTorch edition. The modern LeNet with
PyTorch's default initialisation on Fashion-MNIST (pixels in [0, 1]), batch 256, plain SGD (no momentum, no weight
decay), cross-entropy, 30 epochs, the learning rate changed once per epoch. Five schedules as the chapter describes
them, plus two as the book's published run actually trained them (see `OneEpochLate` and `d2l_runs`).

blog: experiments 1-3 of "Understanding the learning rates of cycle_policy" (`fit_one_cycle` called verbatim). The
study it translates trained ResNet-56 on CIFAR-10 for 95 (or 50) epochs on a GPU; on a CPU the same calls run on
Fashion-MNIST with LeNet and the epochs scaled by `epoch_scale` (stated in every output).

Each runner appends one CSV row per finished (run, seed) as soon as it finishes, so a long run that is cut short
keeps what it did, and a later call with more seeds only trains the missing ones. Then it writes the summary (CSV
and a markdown table) and the plots.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..callbacks.scheduler import ParamScheduler
from ..callbacks.schedules import Const, Schedule, cosine, multi_factor, square_root

from .learner import Learner
from .metrics import accuracy
from .models import lenet, lenet_bn, resnet56

__all__ = [
    "OneEpochLate", "D2LRun", "d2l_runs", "D2L_BOOK", "DJL_EDITION", "run_d2l", "plot_d2l_schedules",
    "BlogCall", "BLOG_CALLS", "BLOG_SOURCE", "scaled_epochs", "run_blog", "plot_blog_runs", "blog_claims",
    "machine_description",
]


# ==================================================================================================================
# d2l: "Learning Rate Scheduling", PyTorch edition
# ==================================================================================================================
class OneEpochLate(Schedule):
    """The learning rate the d2l PyTorch edition's `train` really uses with a custom scheduler.

    Its loop sets `lr = scheduler(epoch)` *after* epoch `epoch` has trained, so epoch 0 runs at the optimizer's
    initial lr and epoch t >= 1 at `scheduler(t - 1)`: the schedule arrives one epoch late.
    """

    domain = "step"

    def __init__(self, sched: Schedule, initial_lr: float):
        if not isinstance(sched, Schedule):
            raise TypeError(f"sched must be a schedule from callbacks.schedules, got {type(sched).__name__}")
        if isinstance(initial_lr, bool) or not isinstance(initial_lr, (int, float)) or not initial_lr >= 0:
            raise ValueError(f"initial_lr must be a number >= 0, got {initial_lr!r}")
        self.sched, self.initial_lr = sched, float(initial_lr)

    def config(self) -> dict:
        return {"sched": self.sched, "initial_lr": self.initial_lr}

    def value(self, t):
        return self.initial_lr if t < 1 else self.sched(t - 1)


@dataclass(frozen=True)
class D2LRun:
    """One training run of the chapter: `sched` maps the epoch index to the learning rate."""

    name: str
    description: str
    sched: Schedule
    initial_lr: float  # what the book passes to torch.optim.SGD(..., lr=...); the schedule overrides it per epoch


D2L_EPOCHS = 30
D2L_BATCH_SIZE = 256

# The published PyTorch-edition figures (train loss, train acc, test acc after epoch 30), printed by the book's
# notebook d2l-ai/d2l-pytorch-sagemaker @ 0053994 ("Version 1.0.3"), chapter_optimization/lr-scheduler.ipynb,
# executed 2023-08-18 on a GPU; d2l.ai's PyTorch tab is rendered from the same release. Keyed by the run that
# trained the schedule the book's code really applied (see `d2l_runs`).
D2L_BOOK_SOURCE = ("d2l-ai/d2l-pytorch-sagemaker @ 0053994 (d2l 1.0.3), chapter_optimization/lr-scheduler.ipynb, "
                   "executed 2023-08-18")
D2L_BOOK = {
    "constant": (0.145, 0.944, 0.877),
    "square_root": (0.273, 0.900, 0.886),
    "multi_factor_as_published": (0.194, 0.927, 0.869),
    "cosine": (0.159, 0.942, 0.904),
    "cosine_warmup_as_published": (0.181, 0.934, 0.901),
}
# The DJL edition (the seed text): every run printed loss 2.30 and accuracy 0.10, chance level for ten classes,
# from its first epoch on: it never trained. Its network also differs (1 filter per convolution instead of 6 and
# 16) and it trained 10 epochs, not 30.
DJL_EDITION = (2.30, 0.10, 0.10)


def d2l_runs() -> list[D2LRun]:
    """The chapter's runs, in its order, then the two "as published" variants.

    The book's square-root and cosine runs also went through its one-epoch-late loop (`OneEpochLate`); for those the
    lag shifts the schedule by one epoch out of 30 and their runs here follow the text. Two published runs differ
    from the text by more than that, and get their own run:
    - multi-factor: the plotting cell stepped the `MultiStepLR(milestones=[15, 30], gamma=0.5)` 30 times before
      training, past both milestones, so training ran at 0.5 * 0.5**2 = 0.125 throughout;
    - warm-up: the optimizer was created with lr 0.3, so epoch 1 trained at 0.3, epoch 2 at scheduler(0) = 0.0
      (the warm-up's start), epoch 3 at scheduler(1) = 0.06, ...: the whole schedule one epoch late.
    """
    warmup_cosine = cosine(0.3, 0.01, 20, warmup_steps=5)
    return [
        D2LRun("constant", "constant 0.3", Const(0.3), 0.3),
        D2LRun("square_root", "square root: 0.1 * (t + 1) ** -0.5", square_root(0.1), 0.1),
        D2LRun("multi_factor", "multi-factor: 0.5, halved at epoch 15 (and 30)", multi_factor(0.5, [15, 30], 0.5),
               0.5),
        D2LRun("cosine", "cosine 0.3 -> 0.01 over 20 epochs, then pinned", cosine(0.3, 0.01, 20), 0.3),
        D2LRun("cosine_warmup", "5 warm-up epochs from 0, then cosine 0.3 -> 0.01 until epoch 20", warmup_cosine,
               0.3),
        D2LRun("multi_factor_as_published", "as published: multi-factor stepped past both milestones = 0.125",
               Const(0.125), 0.5),
        D2LRun("cosine_warmup_as_published", "as published: 0.3 in epoch 1, then the warm-up schedule one epoch late",
               OneEpochLate(warmup_cosine, 0.3), 0.3),
    ]


def _sgd_without_momentum(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)


def _d2l_learner(run: D2LRun, dls, seed: int, device) -> Learner:
    torch.manual_seed(seed)  # the weights: PyTorch's default initialisation, drawn from this seed
    return Learner(
        lenet(), dls, nn.CrossEntropyLoss(), opt_func=_sgd_without_momentum, lr=run.initial_lr,
        metrics=[accuracy], cbs=[ParamScheduler({"lr": run.sched}, unit="epoch")], device=device,
        progress=False, train_metrics=True,
    )


D2L_RUN_FIELDS = ["run", "seed", "epochs", "n_train", "n_valid", "train_loss", "train_acc", "test_loss", "test_acc",
                  "seconds"]
D2L_HISTORY_FIELDS = ["run", "seed", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]


def run_d2l(
    out: str | Path,
    seeds: Sequence[int] = (0, 1),
    epochs: int = D2L_EPOCHS,
    quick: bool = False,
    runs: Sequence[str] | None = None,
    n_train: int | None = None,
    n_valid: int | None = None,
    device=None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict:
    """Train every run of `d2l_runs()` (or those named in `runs`) once per seed and write to `out`:

    d2l_runs.csv (one row per run and seed, appended as each finishes), d2l_history.csv (one row per epoch),
    d2l_summary.csv and d2l_table.md (mean and spread over seeds, beside the book's figures), d2l_schedules.png
    (every schedule previewed before training) and d2l_curves.png (test accuracy and train loss per epoch).

    `quick` trains on 1024 training and 512 test images for 3 epochs: a smoke test of the whole pipeline, not a
    result. Returns {'summary': [...], 'out': Path}.
    """
    all_runs = d2l_runs()
    chosen = _choose_runs(all_runs, runs)
    seeds = _check_seeds(seeds)
    if quick:
        epochs, n_train, n_valid = 3, n_train or 1024, n_valid or 512
    _check_positive_int("epochs", epochs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_csv, history_csv = out / "d2l_runs.csv", out / "d2l_history.csv"
    config = {"epochs": epochs, "n_train": n_train or 60000, "n_valid": n_valid or 10000}
    done = {(r["run"], int(r["seed"])) for r in _rows_of_config(runs_csv, config)}

    from ..data.fashion_mnist import fashion_mnist

    for seed in seeds:  # every run once before the next seed: a cut-short run still covers all schedules
        # Pixels in [0, 1] (no normalisation), as the book's load_data_fashion_mnist gives them.
        dls = fashion_mnist(bs=D2L_BATCH_SIZE, normalize=False, n_train=n_train, n_valid=n_valid, seed=seed,
                            device=device)
        for run in chosen:
            if (run.name, seed) in done:
                log(f"d2l {run.name} seed {seed}: already in {runs_csv}, skipped")
                continue
            learn = _d2l_learner(run, dls, seed, device)
            start = time.perf_counter()
            learn.fit(epochs)
            seconds = time.perf_counter() - start
            history = _epoch_history(learn)
            for row in history:
                _append_row(history_csv, D2L_HISTORY_FIELDS, {"run": run.name, "seed": seed, **row})
            last = history[-1]
            result = {"run": run.name, "seed": seed, **config, "train_loss": last["train_loss"],
                      "train_acc": last["train_acc"], "test_loss": last["test_loss"], "test_acc": last["test_acc"],
                      "seconds": seconds}
            _append_row(runs_csv, D2L_RUN_FIELDS, result)
            log(f"d2l {run.name} seed {seed}: train loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
                f"test acc {last['test_acc']:.3f} ({seconds:.0f} s)")

    summary = d2l_summary(_read_rows(runs_csv), [r.name for r in chosen])
    _write_rows(out / "d2l_summary.csv", list(summary[0].keys()) if summary else [], summary)
    (out / "d2l_table.md").write_text(d2l_markdown(summary, config, quick=quick, command=command))
    _save(plot_d2l_schedules(chosen, epochs=max(epochs, D2L_EPOCHS)), out / "d2l_schedules.png")
    _save(plot_d2l_curves(_last_per_epoch(_read_rows(history_csv)), [r.name for r in chosen]), out / "d2l_curves.png")
    return {"summary": summary, "out": out}


def _epoch_history(learn: Learner) -> list[dict]:
    """One dict per epoch of the learner's last fit, with the lr its first training batch used."""
    fit = learn.recorder.n_fits - 1
    first_lr = {}
    for row in learn.recorder.batch_rows:
        if row["fit"] == fit:
            first_lr.setdefault(row["epoch"], row["lr"])
    return [
        {"epoch": r["epoch"], "lr": first_lr.get(r["epoch"], math.nan), "train_loss": r["train_loss"],
         "train_acc": r["train_accuracy"], "test_loss": r["valid_loss"], "test_acc": r["accuracy"],
         "seconds": r["time"]}
        for r in learn.recorder.epoch_rows if r["fit"] == fit
    ]


def d2l_summary(rows: list[dict], order: Sequence[str]) -> list[dict]:
    """Mean, sample standard deviation and range over seeds of the final figures, per run, in `order`."""
    out = []
    for name in order:
        mine = [r for r in rows if r["run"] == name]
        if not mine:
            continue
        entry = {"run": name, "seeds": " ".join(str(int(r["seed"])) for r in mine), "n": len(mine)}
        for key in ("train_loss", "train_acc", "test_acc", "test_loss"):
            stats = _stats([float(r[key]) for r in mine])
            entry.update({f"{key}_{k}": v for k, v in stats.items()})
        book = D2L_BOOK.get(name)
        entry.update({"book_train_loss": book[0] if book else math.nan, "book_train_acc": book[1] if book else math.nan,
                      "book_test_acc": book[2] if book else math.nan})
        out.append(entry)
    return out


def _heading(title: str, quick: bool, command: str | None) -> list[str]:
    """A results table's title and provenance line: date, machine, torch version and the command that made it."""
    provenance = f"{_today()}, {machine_description()}, torch {torch.__version__}"
    return [title + (" -- QUICK SMOKE RUN" if quick else ""), "",
            provenance + (f", command `{command}`" if command else "") + "."]


def d2l_markdown(summary: list[dict], config: dict, quick: bool = False, command: str | None = None) -> str:
    descriptions = {r.name: r.description for r in d2l_runs()}
    lines = _heading("### d2l \"Learning Rate Scheduling\" (PyTorch edition) on Fashion-MNIST", quick, command) + [
        f"LeNet, batch {D2L_BATCH_SIZE}, SGD without momentum or weight decay, {config['epochs']} epochs, "
        f"{config['n_train']} training / {config['n_valid']} test images. Figures after the last epoch: mean +- "
        "sample standard deviation over the seeds (train loss and accuracy are running means over the last epoch, "
        "as the book computes them).",
        "",
        "| run | lr schedule | seeds | train loss | train acc | test acc | book: train loss / train acc / test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        book = "-" if math.isnan(e["book_test_acc"]) else (
            f"{e['book_train_loss']:.3f} / {e['book_train_acc']:.3f} / {e['book_test_acc']:.3f}")
        lines.append(
            f"| {e['run']} | {descriptions.get(e['run'], '')} | {e['seeds']} | {_pm(e, 'train_loss')} | "
            f"{_pm(e, 'train_acc')} | {_pm(e, 'test_acc')} | {book} |")
    lines += [
        "",
        f"Book: {D2L_BOOK_SOURCE}. Its multi-factor and warm-up figures come from the runs the book's code really "
        "trained (the \"as published\" rows); the DJL edition printed loss 2.30, accuracy 0.10 (chance) in every "
        "run: it never trained.",
        "",
    ]
    return "\n".join(lines)


def plot_d2l_schedules(runs: Sequence[D2LRun] | None = None, epochs: int = D2L_EPOCHS):
    """Every run's learning rate against the epoch, previewed with `sched.plot` before any training."""
    import matplotlib.pyplot as plt

    runs = list(runs) if runs is not None else d2l_runs()
    cols = min(4, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, run in zip(axes.flat, runs, strict=False):
        run.sched.plot(epochs, ax=ax)
        ax.set_title(f"{run.name}\n{run.description}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_d2l_curves(history: list[dict], order: Sequence[str], seeds: Sequence[int] | None = None):
    """Test accuracy and train loss per epoch, averaged over the seeds, one line per run."""
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4))
    for name in order:
        mine = [r for r in history if r["run"] == name and (seeds is None or int(r["seed"]) in seeds)]
        if not mine:
            continue
        epochs = sorted({int(r["epoch"]) for r in mine})
        acc = [statistics.fmean(float(r["test_acc"]) for r in mine if int(r["epoch"]) == e) for e in epochs]
        loss = [statistics.fmean(float(r["train_loss"]) for r in mine if int(r["epoch"]) == e) for e in epochs]
        x = [e + 1 for e in epochs]
        ax_acc.plot(x, acc, label=name)
        ax_loss.plot(x, loss, label=name)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (mean over seeds)")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss, running mean over the epoch", yscale="log")
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ==================================================================================================================
# the blog: experiments 1-3 with fit_one_cycle
# ==================================================================================================================
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
    seeds = _check_seeds(seeds)
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
    done = {(r["run"], int(r["seed"])) for r in _rows_of_config(runs_csv, config)}

    recorders = {}
    for seed in seeds:
        dls, make_model = _blog_setup(setup, cpu_model, seed, n_train, n_valid, device)
        for call in BLOG_CALLS:
            if (call.name, seed) in done:
                log(f"blog {call.name} seed {seed}: already in {runs_csv}, skipped")
                continue
            epochs = scaled_epochs(call.cyc_len, epoch_scale)
            torch.manual_seed(seed)
            learn = Learner(make_model(), dls, nn.CrossEntropyLoss(), lr=call.max_lr, metrics=[accuracy],
                            device=device, progress=False)
            start = time.perf_counter()
            learn.fit_one_cycle(**call.fit_kwargs(epochs))
            seconds = time.perf_counter() - start
            history = _blog_history(learn)
            for row in history:
                _append_row(history_csv, BLOG_HISTORY_FIELDS,
                            {"run": call.name, "seed": seed, "setup": setup, "model": config["model"], **row})
            if seed == seeds[0]:
                recorders[call.name] = learn.recorder
                for row in _thinned(learn.recorder.batch_rows):
                    _append_row(batches_csv, BLOG_BATCH_FIELDS,
                                {"run": call.name, "seed": seed, "model": config["model"],
                                 **{k: _round(row[k]) for k in BLOG_BATCH_FIELDS[3:]}})
            result = {"run": call.name, "seed": seed, "epochs": epochs, **config,
                      **blog_measurements(history, learn.recorder.lrs), "seconds_per_epoch": seconds / epochs}
            _append_row(runs_csv, BLOG_RUN_FIELDS, result)
            log(f"blog {call.name} seed {seed} ({epochs} epochs): valid loss {result['valid_loss']:.3f}, "
                f"accuracy {result['accuracy']:.4f}, train loss {result['train_loss']:.3f} ({seconds:.0f} s)")

    summary = blog_summary(_read_rows(runs_csv))
    _write_rows(out / "blog_summary.csv", list(summary[0].keys()) if summary else [], summary)
    claims = blog_claims(summary)
    (out / "blog_table.md").write_text(blog_markdown(summary, claims, config, quick=quick, command=command))
    if recorders or batches_csv.exists():
        _save(plot_blog_runs(_read_rows(batches_csv), _last_per_epoch(_read_rows(history_csv))), out / "blog_runs.png")
    return {"summary": summary, "claims": claims, "recorders": recorders, "out": out}


def _blog_setup(setup: str, cpu_model: str, seed: int, n_train, n_valid, device):
    if setup == "gpu":
        from ..data.cifar10 import cifar10

        # The study: batch 512, padding-4 random crops and horizontal flips, per-channel normalisation.
        dls = cifar10(bs=512, augment=True, device=device or "cuda", seed=seed, n_train=n_train, n_valid=n_valid)
        return dls, resnet56
    from ..data.fashion_mnist import fashion_mnist

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
            stats = _stats([float(r[key]) for r in mine])
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
    lines = _heading("### The blog's experiments 1-3 (`fit_one_cycle`, arguments verbatim)", quick, command) + [
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
            f"| {e['run']} (seeds {e['seeds']}) | `{call}` | {e['epochs']} | {_pm(e, 'train_loss')} | "
            f"{_pm(e, 'valid_loss')} | {_pm(e, 'accuracy', 4)} | {_pm(e, 'gap')} | {e['valid_loss_rises_mean']:.1f} | "
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
    """The three runs side by side (one column each): learning rate, momentum, and the train loss (smoothed, per
    batch) with the valid loss at each epoch's end, from the recorded histories of one seed (the first)."""
    import matplotlib.pyplot as plt

    names = [c.name for c in BLOG_CALLS if any(b["run"] == c.name for b in batches)]
    if seed is None and batches:
        seed = int(batches[0]["seed"])
    fig, axes = plt.subplots(3, max(1, len(names)), figsize=(5 * max(1, len(names)), 9), squeeze=False,
                             sharey="row")
    for col, name in enumerate(names):
        mine = [b for b in batches if b["run"] == name and int(b["seed"]) == seed]
        its = [int(b["train_iter"]) for b in mine]
        axes[0, col].plot(its, [float(b["lr"]) for b in mine])
        axes[0, col].set_title(name, fontsize=9)
        axes[1, col].plot(its, [float(b["mom"]) for b in mine])
        axes[2, col].plot(its, [float(b["smooth_loss"]) for b in mine], label="train (smoothed)")
        ep = sorted((r for r in epochs if r["run"] == name and int(r["seed"]) == seed), key=lambda r: int(r["epoch"]))
        if ep and its:
            per_epoch = (max(its) + 1) / len(ep)
            axes[2, col].plot([(int(r["epoch"]) + 1) * per_epoch for r in ep], [float(r["valid_loss"]) for r in ep],
                              "o-", markersize=3, label="valid")
        axes[2, col].set(xlabel="iteration", yscale="log")
        axes[2, col].legend(fontsize=8)
    for row, label in enumerate(("learning rate", "momentum", "loss")):
        axes[row, 0].set_ylabel(label)
    fig.tight_layout()
    return fig


# ==================================================================================================================
# helpers
# ==================================================================================================================
def machine_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU, {os.cpu_count()}-core CPU"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU"


def _today() -> str:
    return datetime.date.today().isoformat()


def _choose_runs(all_runs: list[D2LRun], names: Sequence[str] | None) -> list[D2LRun]:
    if names is None:
        return all_runs
    known = {r.name: r for r in all_runs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown d2l run(s) {unknown}; choose from {list(known)}")
    return [known[n] for n in names]


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds=(0, 1)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"each seed must be an int >= 0, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
            "min": min(values), "max": max(values)}


def _pm(entry: dict, key: str, digits: int = 3) -> str:
    mean, sd = entry[f"{key}_mean"], entry[f"{key}_sd"]
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} +- {sd:.{digits}f}"


def _round(value):
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _rows_of_config(path: Path, config: dict) -> list[dict]:
    """The rows already in the results CSV `path`, after checking they were made with `config`: one folder holds
    the runs of one configuration, so that its summary and plots never mix two."""
    rows = _read_rows(path)
    for row in rows:
        if not _same_config(row, config):
            theirs = {k: row.get(k) for k in config}
            raise ValueError(f"{path} holds results of another configuration ({theirs}, this run: {config}); "
                             "give another output folder (--out) or remove that one")
    return rows


def _thinned(rows: list, points: int = 500) -> list:
    """About `points` evenly spaced rows, the last one included: enough for a plot, small enough to commit."""
    stride = max(1, len(rows) // points)
    kept = rows[::stride]
    return kept if not rows or kept[-1] is rows[-1] else [*kept, rows[-1]]


def _last_per_epoch(rows: list[dict]) -> list[dict]:
    """One history row per (run, seed, epoch), the last written: a run that was cut short after writing part of
    its history and trained again on the next call has its epochs twice."""
    latest = {(r["run"], r["seed"], r["epoch"]): r for r in rows}
    return list(latest.values())


def _same_config(row: dict, config: dict) -> bool:
    for key, value in config.items():
        if key not in row:
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isclose(float(row[key]), float(value)):
                return False
        elif str(row[key]) != str(value):
            return False
    return True


def _append_row(path: Path, fields: list[str], row: dict) -> None:
    """Append one row, writing the header first for a new file; the file is closed (flushed) after each row."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)

