"""What cycling buys: weight averaging and ensembles against plain training of the same budget, LeNet with batch
norm on Fashion-MNIST (`cyclr reproduce averaging`).

Four trainings per seed, each of the same number of epochs (the same optimizer steps), SGD momentum, batch 256:

- `one_cycle`: `fit_one_cycle(epochs, MAX_LR)`, with an `EMA` of its weights kept beside (`one_cycle_ema`);
- `sgdr`: SGDR, one cycle per epoch, peak MAX_LR, with a `SnapshotEnsemble`: the final model (`sgdr`), the ensembles
  of the last 3 and 5 snapshots (`snapshot_m3`, `snapshot_m5`) and the best single snapshot among those members;
- `swa_constant`: a one-cycle compressed into the first 75% of the steps, ending at SWA_LR, then SWA_LR held (the
  paper's constant averaging rate), `SWA(start=0.75)` averaging 4 times an epoch; `swa_constant_last` is the same
  run's last weights, not averaged;
- `swa_cyclic`: the same head, then short cycles (about half an epoch each) from CYCLIC_LR[0] down to CYCLIC_LR[1]
  (the paper's cyclical rate), `SWA(start=0.75, every='cycle')` averaging at each cycle's minimum.

Each variant: test accuracy, test loss (NLL of the probabilities), expected calibration error (15 bins) and the
training time of its run. The papers' claims are checked as criteria, measured (`averaging_table.md`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from cyclr import (
    EMA,
    SWA,
    Const,
    Learner,
    ParamScheduler,
    SnapshotEnsemble,
    accuracy,
    lenet_bn,
    one_cycle,
    sgd,
    swa_cycles,
    swa_scheds,
)
from cyclr.callbacks.weights import loaded_weights

from .common import (
    append_row,
    check_positive_int,
    check_seeds,
    heading,
    plus_minus,
    rows_of_config,
    save_figure,
    summary_stats,
    write_rows,
)

__all__ = ["run", "EPOCHS", "TRAININGS", "VARIANTS", "expected_calibration_error", "scores", "softmax",
           "variant_probs", "variant_scores", "averaging_summary", "averaging_claims", "main"]

BATCH, EPOCHS, QUICK_EPOCHS = 256, 10, 6
MAX_LR, SWA_LR, CYCLIC_LR, SWA_START, EMA_DECAY = 0.1, 0.01, (0.02, 0.002), 0.75, 0.999
ECE_BINS = 15
TRAININGS = ("one_cycle", "sgdr", "swa_constant", "swa_cyclic")
VARIANTS = ("one_cycle", "one_cycle_ema", "sgdr", "snapshot_best_single_m3", "snapshot_m3", "snapshot_best_single_m5",
            "snapshot_m5", "swa_constant_last", "swa_constant", "swa_cyclic_last", "swa_cyclic")
RUN_FIELDS = ["variant", "training", "seed", "epochs", "n_train", "n_valid", "test_acc", "test_loss", "ece",
              "train_seconds"]


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE: the sample-weighted mean over `n_bins` equal-width confidence bins of |accuracy - mean confidence|."""
    conf, pred = probs.max(1)
    correct = (pred == targets).double()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.double().mean().item() * abs(correct[mask].mean().item() - conf[mask].double().mean().item())
    return ece


def scores(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """Test accuracy, test loss as the NLL of the probabilities, and the expected calibration error (ECE_BINS)."""
    nll = -probs.gather(1, targets[:, None]).clamp_min(1e-12).log().mean().item()
    acc = (probs.argmax(1) == targets).double().mean().item()
    return {"test_acc": acc, "test_loss": nll, "ece": expected_calibration_error(probs, targets)}


def softmax(out: torch.Tensor) -> torch.Tensor:
    return out.softmax(-1)


def _swa_schedules(tail_cycles: int | None) -> dict:
    """The one-cycle head over the first SWA_START of the steps down to SWA_LR, then the tail: SWA_LR held
    (tail_cycles None) or `tail_cycles` linear cycles CYCLIC_LR[0] -> CYCLIC_LR[1]."""
    tail = Const(SWA_LR) if tail_cycles is None else swa_cycles(*CYCLIC_LR, tail_cycles)
    return swa_scheds(one_cycle(MAX_LR, final_div=MAX_LR / SWA_LR), tail, SWA_START)


def _train(training: str, dls, seed: int, epochs: int, device) -> tuple[Learner, dict]:
    """One training; returns the learner and its averaging callbacks by name."""
    torch.manual_seed(seed)
    # wd_bn_bias=True: the papers' SGD decays every parameter, and so did the committed results/averaging/ run.
    learn = Learner(lenet_bn(), dls, nn.CrossEntropyLoss(), opt_func=sgd, lr=MAX_LR, metrics=[accuracy],
                    device=device, progress=False, wd_bn_bias=True)
    steps_per_epoch = len(dls.train)
    cbs: dict = {}
    if training == "one_cycle":
        cbs["ema"] = EMA(decay=EMA_DECAY)
        learn.fit_one_cycle(epochs, MAX_LR, cbs=list(cbs.values()))
    elif training == "sgdr":
        cbs["ens"] = SnapshotEnsemble()
        learn.fit_sgdr(epochs, 1, MAX_LR, cycle_mult=1, cbs=list(cbs.values()))
    elif training == "swa_constant":
        cbs["swa"] = SWA(start=SWA_START, every=max(1, steps_per_epoch // 4), swap=False)
        learn.fit(epochs, cbs=[ParamScheduler(_swa_schedules(None)), *cbs.values()])
    elif training == "swa_cyclic":
        cycles = max(1, round(2 * epochs * (1 - SWA_START)))  # about half an epoch each
        cbs["swa"] = SWA(start=SWA_START, every="cycle", swap=False)
        learn.fit(epochs, cbs=[ParamScheduler(_swa_schedules(cycles)), *cbs.values()])
    else:
        raise ValueError(f"unknown training {training!r}; choose from {TRAININGS}")
    return learn, cbs


def variant_probs(training: str, learn: Learner, cbs: dict) -> dict[str, torch.Tensor | list]:
    """The test probabilities of every variant one training gives (the SGDR run's single snapshots as a list under
    'snapshots'), and the targets under 'targets'. `cbs`: the training's averaging callbacks by name ('ema', 'ens'
    or 'swa')."""
    probs, targets = learn.get_preds(act=softmax)
    if training == "one_cycle":
        with cbs["ema"].applied(learn):
            return {"one_cycle": probs, "one_cycle_ema": learn.get_preds(act=softmax)[0], "targets": targets}
    if training == "sgdr":
        singles = []
        for k in range(len(cbs["ens"])):
            with loaded_weights(learn.model, cbs["ens"].snapshot(k)):
                singles.append(learn.get_preds(act=softmax)[0])
        return {"sgdr": probs, "snapshots": singles, "targets": targets}
    with cbs["swa"].applied(learn):
        return {f"{training}_last": probs, training: learn.get_preds(act=softmax)[0], "targets": targets}


def variant_scores(training: str, learn: Learner, cbs: dict) -> dict[str, dict]:
    """Each variant's scores; the snapshot ensembles of the last 3 and 5 snapshots beside their best member."""
    probs = variant_probs(training, learn, cbs)
    targets, singles = probs.pop("targets"), probs.pop("snapshots", None)
    out = {name: scores(p, targets) for name, p in probs.items()}
    for m in (3, 5) if singles else ():
        members = singles[-m:]
        out[f"snapshot_best_single_m{m}"] = max((scores(p, targets) for p in members), key=lambda s: s["test_acc"])
        out[f"snapshot_m{m}"] = {**scores(torch.stack(members).mean(0), targets), "members": len(members)}
    return out


def run(out: str | Path = "results/averaging", seeds: Sequence[int] = (0, 1, 2), epochs: int = EPOCHS,
        quick: bool = False, n_train: int | None = None, device=None, log: Callable[[str], None] = print,
        command: str | None = None) -> dict:
    """Train the four runs per seed (skipping those already in `out`), append one row per variant to
    averaging_runs.csv as each training finishes, then write averaging_summary.csv, averaging_table.md and the
    plots. `n_train`: the first n training images (default all 60000; the test set is always whole). `quick`: 1024
    training / 512 test images, 6 epochs: a smoke test, not a result."""
    seeds = check_seeds(seeds)
    if quick:
        epochs = QUICK_EPOCHS
    check_positive_int("epochs", epochs)
    if epochs < 5:
        raise ValueError(f"epochs must be >= 5 (SGDR needs 5 cycles for the 5-snapshot ensemble), got {epochs}")
    n_train, n_valid = (1024, 512) if quick else (n_train, None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"epochs": epochs, "n_train": n_train or 60000, "n_valid": n_valid or 10000}
    runs_csv = out / "averaging_runs.csv"
    done = {(r["training"], int(r["seed"])) for r in rows_of_config(runs_csv, config)}
    from cyclr import fashion_mnist

    lrs = {}
    for seed in seeds:
        for training in TRAININGS:
            if (training, seed) in done:
                continue
            dls = fashion_mnist(bs=BATCH, n_train=n_train, n_valid=n_valid, seed=seed, device=device)
            start = time.perf_counter()
            learn, cbs = _train(training, dls, seed, epochs, device)
            seconds = time.perf_counter() - start
            if seed == seeds[0]:
                lrs[training] = learn.recorder.lrs
            for variant, figures in variant_scores(training, learn, cbs).items():
                append_row(runs_csv, RUN_FIELDS, {"variant": variant, "training": training, "seed": seed, **config,
                                                  **figures, "train_seconds": seconds})
                log(f"seed {seed} {variant}: test acc {figures['test_acc']:.4f}, loss {figures['test_loss']:.4f}, "
                    f"ECE {figures['ece']:.4f} ({seconds:.0f} s training)")
    rows = rows_of_config(runs_csv, config)
    summary = averaging_summary(rows)
    write_rows(out / "averaging_summary.csv", list(summary[0]) if summary else ["variant"], summary)
    (out / "averaging_table.md").write_text(averaging_markdown(summary, rows, config, quick, command))
    save_figure(plot_accuracy(summary), out / "averaging_accuracy.png")
    if lrs:
        save_figure(plot_schedules(lrs), out / "averaging_schedules.png")
    return {"summary": summary, "out": out}


def averaging_summary(rows: list[dict]) -> list[dict]:
    """Mean, sample standard deviation and range over seeds of each variant's figures, in VARIANTS order."""
    out = []
    for variant in VARIANTS:
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: int(r["seed"]))
        if not mine:
            continue
        entry = {"variant": variant, "training": mine[0]["training"], "n": len(mine),
                 "seeds": " ".join(r["seed"] for r in mine)}
        for key in ("test_acc", "test_loss", "ece", "train_seconds"):
            entry.update({f"{key}_{k}": v for k, v in summary_stats([float(r[key]) for r in mine]).items()})
        out.append(entry)
    return out


def _by_seed(rows: list[dict], variant: str) -> dict[int, float]:
    return {int(r["seed"]): float(r["test_acc"]) for r in rows if r["variant"] == variant}


def averaging_claims(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(claim, what was measured, verdict): 'yes' when the claimed winner has the higher test accuracy in every
    seed, 'no' when its mean over the seeds is not higher, 'unclear' when it is higher on the mean but not in every
    seed (within the seed-to-seed spread), 'n/a' when not measured."""
    claims = []

    def compare(claim: str, better: str, worse: str) -> None:
        a, b = _by_seed(rows, better), _by_seed(rows, worse)
        seeds = sorted(set(a) & set(b))
        if not seeds:
            claims.append((claim, "not measured", "n/a"))
            return
        diff = statistics.fmean(a[s] - b[s] for s in seeds)
        wins = sum(a[s] > b[s] for s in seeds)
        verdict = "no" if diff <= 0 else "yes" if wins == len(seeds) else "unclear"
        claims.append((claim, f"{better} - {worse}: {diff:+.4f} test acc (mean), higher in {wins}/{len(seeds)} seeds",
                       verdict))

    compare("SWA beats conventional training of the same budget (Izmailov et al.)", "swa_constant", "one_cycle")
    compare("SWA with a cyclical averaging lr beats conventional training", "swa_cyclic", "one_cycle")
    compare("SWA beats the last weights of its own run", "swa_constant", "swa_constant_last")
    compare("SWA (cyclical) beats the last weights of its own run", "swa_cyclic", "swa_cyclic_last")
    for m in (3, 5):
        compare(f"the snapshot ensemble (M={m}) beats its best single snapshot (Huang et al.)", f"snapshot_m{m}",
                f"snapshot_best_single_m{m}")
    compare("the snapshot ensemble (M=5) beats SGDR's final model, same training", "snapshot_m5", "sgdr")
    compare("the EMA of the weights beats the final weights of one-cycle", "one_cycle_ema", "one_cycle")
    return claims


def averaging_markdown(summary: list[dict], rows: list[dict], config: dict, quick: bool, command: str | None) -> str:
    lines = heading("### Weight averaging and snapshot ensembles, LeNet-BN on Fashion-MNIST", quick, command) + [
        f"LeNet with batch norm, SGD momentum, batch {BATCH}, {config['epochs']} epochs for every training, "
        f"{config['n_train']} training / {config['n_valid']} test images; peak lr {MAX_LR}, SWA from "
        f"{SWA_START:.0%} of the steps at {SWA_LR} (constant) or cycles {CYCLIC_LR[0]} -> {CYCLIC_LR[1]}, EMA decay "
        f"{EMA_DECAY}. Mean +- sample sd over the seeds; test loss is the NLL of the probabilities; ECE over "
        f"{ECE_BINS} bins. Variants of one training share its time, which on this shared machine measures the "
        "other jobs' load more than the method (see the cost benchmark below).",
        "",
        "| variant | training | seeds | test acc | test loss | ECE | training time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        lines.append(f"| {e['variant']} | {e['training']} | {e['seeds']} | {plus_minus(e, 'test_acc', 4)} | "
                     f"{plus_minus(e, 'test_loss')} | {plus_minus(e, 'ece', 4)} | "
                     f"{plus_minus(e, 'train_seconds', 0)} |")
    lines += ["", "The papers' claims, measured here:", "", "| claim | measured | holds |", "|---|---|---|"]
    for claim, measured, holds in averaging_claims(rows):
        lines.append(f"| {claim} | {measured} | {holds} |")
    lines += ["", "Per-step cost of the averaging callbacks, side by side with the same fit without them: "
              "`benchmarks/averaging_cost.py` (its output in averaging_cost.txt beside this table)."]
    return "\n".join(lines + [""])


def plot_accuracy(summary: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    names = [e["variant"] for e in summary]
    means = [e["test_acc_mean"] for e in summary]
    sds = [0 if math.isnan(e["test_acc_sd"]) else e["test_acc_sd"] for e in summary]
    ax.errorbar(range(len(names)), means, yerr=sds, fmt="o", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy", title="test accuracy, mean +- sd over seeds (equal training budgets)")
    fig.tight_layout()
    return fig


def plot_schedules(lrs: dict[str, list[float]]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, values in lrs.items():
        ax.plot(range(len(values)), values, label=name, lw=1)
    ax.set(xlabel="optimizer step", ylabel="learning rate", yscale="log", title="the four trainings' learning rates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.averaging", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/averaging")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--n-train", type=int, default=None, help="the first N training images (default: all)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python -m experiments.averaging " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run(args.out, seeds=args.seeds, epochs=args.epochs, quick=args.quick, n_train=args.n_train,
                 command=command)
    print((Path(args.out) / "averaging_table.md").read_text())
    print(f"written to {result['out'].resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
