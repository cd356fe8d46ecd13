"""Do we still need a schedule? LeNet on Fashion-MNIST, 30 epochs, batch 256, beside the d2l table: SGD one-cycle,
SGD cosine (the d2l chapter's cosine run), AdamW one-cycle, Schedule-Free AdamW (constant lr with warm-up) and
Prodigy with cosine.

Where each learning rate comes from (`OPTIMIZER_RUNS[...].lr_source`):
- the two one-cycle runs: `lr_find()`'s `valley` suggestion, found per seed on the run's fresh learner, as peak lr;
- SGD cosine: the d2l chapter's own run (0.3 -> 0.01 over 20 epochs, SGD without momentum), as `experiments.d2l`;
- Schedule-Free AdamW: the package's default lr 0.0025 and its authors' advice to warm up (`warmup_steps`, here the
  first 5% of the steps), the rate held constant otherwise;
- Prodigy: lr 1.0 (its authors: "we recommend using lr=1"; d is estimated) with cosine annealing of that nominal lr
  to 0 over the fit, as they recommend, and `safeguard_warmup=False`, `use_bias_correction=False` (the defaults).

`python -m experiments.optimizers --out results/optimizers [--quick] [--seeds 0 1 2] [--shard 0/2]` (see `main`):
with `--shard k/n` a process trains every n-th (seed, run) pair, into its own CSV files, so that two processes
share the work; a last call with `--summarize` writes the table and the plots from every shard's rows.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cyclr import Learner, ParamScheduler, accuracy, adam, cosine, lenet, sgd

from .common import (
    append_row,
    check_positive_int,
    check_seeds,
    heading,
    plus_minus,
    read_rows,
    same_config,
    save_figure,
    summary_stats,
    thinned,
    write_rows,
)
from .d2l import D2L_BATCH_SIZE, D2L_EPOCHS, d2l_runs

__all__ = ["OptimizerRun", "OPTIMIZER_RUNS", "SF_WARMUP_PCT", "run_optimizers", "optimizers_summary",
           "optimizers_markdown", "plot_optimizer_curves", "plot_effective_lrs", "main"]

SF_WARMUP_PCT = 0.05  # Schedule-Free AdamW's warm-up: the first 5% of the optimizer steps


@dataclass(frozen=True)
class OptimizerRun:
    name: str
    description: str
    lr_source: str


OPTIMIZER_RUNS = {r.name: r for r in [
    OptimizerRun("sgd_one_cycle", "SGD momentum 0.9, fit_one_cycle", "lr_find valley suggestion (per seed)"),
    OptimizerRun("sgd_cosine", "SGD no momentum, cosine 0.3 -> 0.01 over 20 epochs (the d2l run)",
                 "the d2l chapter's 0.3"),
    OptimizerRun("adamw_one_cycle", "AdamW (fastai's betas 0.9/0.99, wd 0.01), fit_one_cycle",
                 "lr_find valley suggestion (per seed)"),
    OptimizerRun("schedule_free_adamw", "Schedule-Free AdamW, constant lr, linear warm-up over 5% of steps",
                 "schedulefree's default lr 0.0025 (authors)"),
    OptimizerRun("prodigy_cosine", "Prodigy, nominal lr 1 annealed by cosine to 0",
                 "lr 1.0 (authors' recommendation)"),
]}

RUN_FIELDS = ["run", "seed", "epochs", "n_train", "n_valid", "lr", "train_loss", "test_loss", "test_acc",
              "final_eff_lr", "seconds"]
HISTORY_FIELDS = ["run", "seed", "epoch", "train_loss", "test_loss", "test_acc"]
BATCH_FIELDS = ["run", "seed", "train_iter", "lr", "eff_lr", "loss", "smooth_loss"]


def _sgd_without_momentum(params, lr):
    return torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)


def _train(name: str, dls, seed: int, epochs: int, device) -> tuple[Learner, float]:
    """Train one run; return the learner and the (nominal, peak) lr it used."""
    import prodigyopt
    import schedulefree

    torch.manual_seed(seed)  # the weights: PyTorch's default initialisation, drawn from this seed
    steps = epochs * len(dls.train)

    # wd_bn_bias=False as fastai's recipe, which the AdamW run follows (wd 0.01): LeNet's biases are not decayed (it
    # has no batch norm). The other runs have no weight decay, so it changes nothing for them.
    def learner(opt_func, lr, cbs=()):
        return Learner(lenet(), dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=lr, metrics=[accuracy],
                       cbs=list(cbs), device=device, progress=False, wd_bn_bias=False)

    if name in ("sgd_one_cycle", "adamw_one_cycle"):
        learn = learner(sgd if name == "sgd_one_cycle" else adam, 1e-3)
        lr = learn.lr_find().suggestions["valley"].lr  # leaves weights, optimizer and RNGs as they were
        learn.fit_one_cycle(epochs, lr)
    elif name == "sgd_cosine":
        run = next(r for r in d2l_runs() if r.name == "cosine")
        lr = run.initial_lr
        learn = learner(_sgd_without_momentum, lr, [ParamScheduler({"lr": run.sched}, unit="epoch")])
        learn.fit(epochs)
    elif name == "schedule_free_adamw":
        lr = 0.0025
        warmup = max(1, round(SF_WARMUP_PCT * steps))

        def opt_func(params, lr):
            return schedulefree.AdamWScheduleFree(params, lr=lr, warmup_steps=warmup)

        learn = learner(opt_func, lr)
        learn.fit(epochs)
    elif name == "prodigy_cosine":
        lr = 1.0
        learn = learner(prodigyopt.Prodigy, lr, [ParamScheduler({"lr": cosine(lr, 0.0, steps)}, unit="batch")])
        learn.fit(epochs)
    else:
        raise ValueError(f"unknown run {name!r}; choose from {list(OPTIMIZER_RUNS)}")
    return learn, lr


def run_optimizers(out: str | Path, seeds: Sequence[int] = (0, 1, 2), epochs: int = D2L_EPOCHS, quick: bool = False,
                   runs: Sequence[str] | None = None, shard: tuple[int, int] = (0, 1), summarize: bool = True,
                   device=None, log: Callable[[str], None] = print, command: str | None = None) -> dict:
    """Train every run of `OPTIMIZER_RUNS` (or those in `runs`) once per seed, seed by seed, and write to `out`:
    optimizers_runs*.csv (one row per finished run, appended at once), optimizers_history*.csv (per epoch),
    optimizers_batches*.csv (nominal and effective lr and loss, thinned to ~400 points per run); then, with
    `summarize`, optimizers_summary.csv, optimizers_table.md, optimizers_curves.png and optimizers_lrs.png.

    `shard=(k, n)`: this process trains only every n-th (seed, run) pair from the k-th, into files suffixed
    `_shard<k>`. `quick`: 1024 training / 512 test images, 2 epochs: a smoke test, not a result."""
    names = list(OPTIMIZER_RUNS) if runs is None else list(runs)
    unknown = [n for n in names if n not in OPTIMIZER_RUNS]
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; choose from {list(OPTIMIZER_RUNS)}")
    seeds = check_seeds(seeds)
    k, n = shard
    if not (isinstance(n, int) and isinstance(k, int) and n >= 1 and 0 <= k < n):
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}; e.g. --shard 0/2 and --shard 1/2")
    n_train, n_valid = (1024, 512) if quick else (None, None)
    if quick:
        epochs = 2
    check_positive_int("epochs", epochs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_shard{k}" if n > 1 else ""
    runs_csv = out / f"optimizers_runs{suffix}.csv"
    config = {"epochs": epochs, "n_train": n_train or 60000, "n_valid": n_valid or 10000}
    done = {(r["run"], int(r["seed"])) for r in _all_rows(out, "runs", config)}

    from cyclr import fashion_mnist

    pairs = [(seed, name) for seed in seeds for name in names]  # every run once before the next seed
    for i, (seed, name) in enumerate(pairs):
        if i % n != k or (name, seed) in done:
            continue
        # Pixels in [0, 1], as the d2l runs (experiments/d2l.py) load them.
        dls = fashion_mnist(bs=D2L_BATCH_SIZE, normalize=False, n_train=n_train, n_valid=n_valid, seed=seed,
                            device=device)
        start = time.perf_counter()
        learn, lr = _train(name, dls, seed, epochs, device)
        seconds = time.perf_counter() - start
        rec = learn.recorder
        for row in rec.epoch_rows:
            if row["fit"] == rec.n_fits - 1:
                append_row(out / f"optimizers_history{suffix}.csv", HISTORY_FIELDS,
                           {"run": name, "seed": seed, "epoch": row["epoch"], "train_loss": row["train_loss"],
                            "test_loss": row["valid_loss"], "test_acc": row["accuracy"]})
        batches = rec.last_fit_rows()
        for row in thinned(batches, 400):
            append_row(out / f"optimizers_batches{suffix}.csv", BATCH_FIELDS,
                       {"run": name, "seed": seed, "train_iter": row["train_iter"], "lr": row["lr"],
                        "eff_lr": row.get("eff_lr", row["lr"]), "loss": row["loss"],
                        "smooth_loss": row["smooth_loss"]})
        last = rec.epoch_rows[-1]
        result = {"run": name, "seed": seed, **config, "lr": lr, "train_loss": last["train_loss"],
                  "test_loss": last["valid_loss"], "test_acc": last["accuracy"],
                  "final_eff_lr": batches[-1].get("eff_lr", batches[-1]["lr"]), "seconds": seconds}
        append_row(runs_csv, RUN_FIELDS, result)
        log(f"{name} seed {seed}: lr {lr:.4g}, train loss {last['train_loss']:.4f}, test acc {last['accuracy']:.4f} "
            f"({seconds:.0f} s)")
    if not summarize:
        return {"summary": None, "out": out}
    return write_summary(out, names, config, quick=quick, command=command)


def _all_rows(out: Path, kind: str, config: dict | None = None) -> list[dict]:
    """The rows of every shard's `optimizers_<kind>*.csv` in `out` (checked against `config` when given)."""
    rows = []
    for path in sorted(out.glob(f"optimizers_{kind}*.csv")):
        mine = read_rows(path)
        if config is not None and any(not same_config(r, config) for r in mine):
            raise ValueError(f"{path} holds results of another configuration (this run: {config}); give another "
                             "output folder (--out) or remove that one")
        rows += mine
    return rows


def write_summary(out: Path, names: Sequence[str], config: dict, quick: bool = False,
                  command: str | None = None) -> dict:
    summary = optimizers_summary(_all_rows(out, "runs", config), names)
    shards = sorted(p.name for p in out.glob("optimizers_runs_shard*.csv"))
    # The command that summarized is not the one that trained: say how the rows were made.
    note = (f"Trained by {len(shards)} processes (`--shard k/{len(shards)}`, rows in {', '.join(shards)}), "
            "then summarized." if shards else "")
    write_rows(out / "optimizers_summary.csv", list(summary[0].keys()) if summary else ["run"], summary)
    table = optimizers_markdown(summary, config, quick=quick, command=command, note=note)
    (out / "optimizers_table.md").write_text(table)
    save_figure(plot_optimizer_curves(_all_rows(out, "history"), names), out / "optimizers_curves.png")
    save_figure(plot_effective_lrs(_all_rows(out, "batches"), names), out / "optimizers_lrs.png")
    return {"summary": summary, "out": out}


def optimizers_summary(rows: list[dict], order: Sequence[str]) -> list[dict]:
    """Mean, sample standard deviation and range over seeds of the final figures and the lr, per run."""
    out = []
    for name in order:
        mine = sorted((r for r in rows if r["run"] == name), key=lambda r: int(r["seed"]))
        if not mine:
            continue
        entry = {"run": name, "seeds": " ".join(str(int(r["seed"])) for r in mine), "n": len(mine)}
        for key in ("test_acc", "train_loss", "test_loss", "lr", "final_eff_lr", "seconds"):
            stats = summary_stats([float(r[key]) for r in mine])
            entry.update({f"{key}_{k}": v for k, v in stats.items()})
        out.append(entry)
    return out


def optimizers_markdown(summary: list[dict], config: dict, quick: bool = False, command: str | None = None,
                        note: str = "") -> str:
    lines = heading("### Schedules against schedule-free and lr-free optimizers, LeNet on Fashion-MNIST", quick,
                    command) + ([note] if note else []) + [
        f"LeNet, batch {D2L_BATCH_SIZE}, {config['epochs']} epochs, {config['n_train']} training / "
        f"{config['n_valid']} test images, pixels in [0, 1]. Figures after the last epoch: mean +- sample standard "
        "deviation over the seeds; train loss is the mean over the last epoch's batches.",
        "",
        "| run | optimizer and schedule | lr (where it comes from) | seeds | test acc | train loss | test loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        run = OPTIMIZER_RUNS[e["run"]]
        lr = f"{e['lr_mean']:.3g}" if math.isnan(e["lr_sd"]) or e["lr_sd"] == 0 else (
            f"{e['lr_mean']:.3g} +- {e['lr_sd']:.2g}")
        if e["run"] == "prodigy_cosine":
            lr += f" (final d * lr {e['final_eff_lr_mean']:.3g})"
        lines.append(f"| {e['run']} | {run.description} | {lr} ({run.lr_source}) | {e['seeds']} | "
                     f"{plus_minus(e, 'test_acc')} | {plus_minus(e, 'train_loss')} | {plus_minus(e, 'test_loss')} |")
    return "\n".join(lines + [""])


def plot_optimizer_curves(history: list[dict], order: Sequence[str]):
    """Test accuracy and train loss per epoch, averaged over the seeds, one line per run."""
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(12, 4))
    for name in order:
        mine = [r for r in history if r["run"] == name]
        if not mine:
            continue
        epochs = sorted({int(r["epoch"]) for r in mine})
        acc = [statistics.fmean(float(r["test_acc"]) for r in mine if int(r["epoch"]) == e) for e in epochs]
        loss = [statistics.fmean(float(r["train_loss"]) for r in mine if int(r["epoch"]) == e) for e in epochs]
        ax_acc.plot([e + 1 for e in epochs], acc, label=name)
        ax_loss.plot([e + 1 for e in epochs], loss, label=name)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (mean over seeds)")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="train loss, mean over the epoch", yscale="log")
    ax_acc.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_effective_lrs(batches: list[dict], order: Sequence[str], seed: int | None = None):
    """The learning rate each run's steps used (Prodigy: nominal lr dashed and d * lr solid), first seed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in order:
        mine = [r for r in batches if r["run"] == name]
        if not mine:
            continue
        first = min(int(r["seed"]) for r in mine) if seed is None else seed
        mine = [r for r in mine if int(r["seed"]) == first]
        its = [int(r["train_iter"]) for r in mine]
        line, = ax.plot(its, [float(r["eff_lr"]) for r in mine], label=f"{name} (seed {first})")
        if any(float(r["eff_lr"]) != float(r["lr"]) for r in mine):
            ax.plot(its, [float(r["lr"]) for r in mine], "--", color=line.get_color(), alpha=0.6,
                    label=f"{name}: nominal lr")
    ax.set(xlabel="optimizer step", ylabel="learning rate", yscale="log",
           title="effective learning rate per step (Schedule-Free: nominal, its warm-up is internal)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.optimizers", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/optimizers")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=D2L_EPOCHS)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", nargs="+", default=None, choices=list(OPTIMIZER_RUNS))
    p.add_argument("--shard", default="0/1", help="k/n: train every n-th (seed, run) pair from the k-th")
    p.add_argument("--summarize", action="store_true", help="only write the table and plots from the CSVs")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python -m experiments.optimizers " + " ".join(sys.argv[1:] if argv is None else argv)
    k, n = (int(v) for v in args.shard.split("/"))
    names = args.runs or list(OPTIMIZER_RUNS)
    if args.summarize:
        epochs = 2 if args.quick else args.epochs
        config = {"epochs": epochs, "n_train": 1024 if args.quick else 60000, "n_valid": 512 if args.quick else 10000}
        result = write_summary(Path(args.out), names, config, quick=args.quick, command=command)
    else:
        result = run_optimizers(args.out, seeds=args.seeds, epochs=args.epochs, quick=args.quick, runs=args.runs,
                                shard=(k, n), summarize=n == 1, command=command)
    table = Path(args.out) / "optimizers_table.md"
    if table.exists():
        print(table.read_text())
    print(f"written to {result['out'].resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
