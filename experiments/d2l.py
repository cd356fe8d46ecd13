"""d2l: the chapter "Learning Rate Scheduling" of Dive into Deep Learning, PyTorch edition, run for real
(`cyclr reproduce d2l`).

The modern LeNet with PyTorch's default initialisation on Fashion-MNIST (pixels in [0, 1]), batch 256, plain SGD (no
momentum, no weight decay), cross-entropy, 30 epochs, the learning rate changed once per epoch. Five schedules as the
chapter describes them, plus two as the book's published run actually trained them (see `OneEpochLate` and
`d2l_runs`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cyclr import Const, Learner, ParamScheduler, Schedule, accuracy, cosine, lenet, multi_factor, square_root

from .common import (
    append_row,
    check_positive_int,
    check_seeds,
    heading,
    last_per_epoch,
    plus_minus,
    read_rows,
    rows_of_config,
    save_figure,
    summary_stats,
    write_rows,
)

__all__ = [
    "OneEpochLate", "D2LRun", "d2l_runs", "D2L_BOOK", "D2L_BOOK_SOURCE", "DJL_EDITION", "D2L_EPOCHS",
    "D2L_BATCH_SIZE", "D2L_RUN_FIELDS", "D2L_HISTORY_FIELDS", "run_d2l", "d2l_summary", "d2l_markdown",
    "plot_d2l_schedules", "plot_d2l_curves",
]


class OneEpochLate(Schedule):
    """The learning rate the d2l PyTorch edition's `train` really uses with a custom scheduler.

    Its loop sets `lr = scheduler(epoch)` *after* epoch `epoch` has trained, so epoch 0 runs at the optimizer's
    initial lr and epoch t >= 1 at `scheduler(t - 1)`: the schedule arrives one epoch late.
    """

    domain = "step"

    def __init__(self, sched: Schedule, initial_lr: float):
        if not isinstance(sched, Schedule):
            raise TypeError(f"sched must be a schedule from cyclr.callbacks.schedules, got {type(sched).__name__}")
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
        wd_bn_bias=True,  # the chapter's SGD over net.parameters() (its weight decay is 0: no figure depends on it)
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
    seeds = check_seeds(seeds)
    if quick:
        epochs, n_train, n_valid = 3, n_train or 1024, n_valid or 512
    check_positive_int("epochs", epochs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs_csv, history_csv = out / "d2l_runs.csv", out / "d2l_history.csv"
    config = {"epochs": epochs, "n_train": n_train or 60000, "n_valid": n_valid or 10000}
    done = {(r["run"], int(r["seed"])) for r in rows_of_config(runs_csv, config)}

    from cyclr import fashion_mnist

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
                append_row(history_csv, D2L_HISTORY_FIELDS, {"run": run.name, "seed": seed, **row})
            last = history[-1]
            result = {"run": run.name, "seed": seed, **config, "train_loss": last["train_loss"],
                      "train_acc": last["train_acc"], "test_loss": last["test_loss"], "test_acc": last["test_acc"],
                      "seconds": seconds}
            append_row(runs_csv, D2L_RUN_FIELDS, result)
            log(f"d2l {run.name} seed {seed}: train loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
                f"test acc {last['test_acc']:.3f} ({seconds:.0f} s)")

    summary = d2l_summary(read_rows(runs_csv), [r.name for r in chosen])
    write_rows(out / "d2l_summary.csv", list(summary[0].keys()) if summary else [], summary)
    (out / "d2l_table.md").write_text(d2l_markdown(summary, config, quick=quick, command=command))
    save_figure(plot_d2l_schedules(chosen, epochs=max(epochs, D2L_EPOCHS)), out / "d2l_schedules.png")
    save_figure(plot_d2l_curves(last_per_epoch(read_rows(history_csv)), [r.name for r in chosen]),
                out / "d2l_curves.png")
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
            stats = summary_stats([float(r[key]) for r in mine])
            entry.update({f"{key}_{k}": v for k, v in stats.items()})
        book = D2L_BOOK.get(name)
        entry.update({"book_train_loss": book[0] if book else math.nan, "book_train_acc": book[1] if book else math.nan,
                      "book_test_acc": book[2] if book else math.nan})
        out.append(entry)
    return out


def d2l_markdown(summary: list[dict], config: dict, quick: bool = False, command: str | None = None) -> str:
    descriptions = {r.name: r.description for r in d2l_runs()}
    lines = heading("### d2l \"Learning Rate Scheduling\" (PyTorch edition) on Fashion-MNIST", quick, command) + [
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
            f"| {e['run']} | {descriptions.get(e['run'], '')} | {e['seeds']} | {plus_minus(e, 'train_loss')} | "
            f"{plus_minus(e, 'train_acc')} | {plus_minus(e, 'test_acc')} | {book} |")
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


def _choose_runs(all_runs: list[D2LRun], names: Sequence[str] | None) -> list[D2LRun]:
    if names is None:
        return all_runs
    known = {r.name: r for r in all_runs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown d2l run(s) {unknown}; choose from {list(known)}")
    return [known[n] for n in names]
