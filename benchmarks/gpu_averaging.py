"""The GPU day's averaging section (issue 25 on ResNet / CIFAR-10): what cycling buys, weight averaging and snapshot
ensembles against plain training of the same budget, as `experiments/averaging.py` measures it on LeNet, here on
ResNet-56 with batch 512, SGD momentum, data and augmentation on the device, bf16 autocast, channels_last and compile.

Four trainings (experiments.averaging.TRAININGS) run CONCURRENTLY as four processes on the one GPU, as the blog's
three do (gpu_concurrent.py), every one for the same planned number of epochs (the same optimizer steps), from the
same initial weights and batches:

- `one_cycle`: `fit_one_cycle(epochs, MAX_LR)`, with an `EMA` of its weights kept beside (`one_cycle_ema`);
- `sgdr`: SGDR with N_CYCLES cosine cycles over the fit, peak MAX_LR, with a `SnapshotEnsemble`: the final model
  (`sgdr`), the ensembles of the last 3 and 5 snapshots (`snapshot_m3`, `snapshot_m5`, one run) and the best single
  snapshot among each's members;
- `swa_constant`: a one-cycle over the first SWA_START of the steps ending at SWA_LR, then SWA_LR held (the paper's
  constant averaging rate), `SWA` averaging 4 times an epoch; `swa_constant_last`: the same run's last weights;
- `swa_cyclic`: the same head, then short cycles (half an epoch each) CYCLIC_LR[0] -> CYCLIC_LR[1], averaged at each
  cycle's minimum.

Each variant: test accuracy, test NLL, ECE (experiments.averaging's) and the training time of its run; the papers'
claims evaluated by `experiments.averaging.averaging_claims` on these rows (one seed). The length: AVERAGING_EPOCHS
(`averaging_epochs` in the sizes) if the concurrent epoch projects it, with the evaluation after it, into the time
left, else every training scaled to the same shorter length (the scale in the JSON), or skipped, saying why.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # experiments/
import gpu_concurrent as concurrent  # noqa: E402
from gpu_budget import epochs_that_fit  # noqa: E402
from gpu_sections import sync  # noqa: E402

from cyclr import EMA, SWA, Const, ParamScheduler, SnapshotEnsemble, one_cycle, sgdr, swa_cycles, swa_scheds  # noqa: E402  # noqa: E402
from experiments.averaging import TRAININGS, averaging_claims, softmax, variant_scores  # noqa: E402

SEED = 0
# ResNet-56 at batch 512: 0.4 is the usual 0.1 at batch 128 scaled linearly; the averaging rates as the SWA paper's
# CIFAR runs set them against their peak (constant at about an eighth, cycles from a quarter down to 1/80).
MAX_LR, WD, SWA_LR, CYCLIC_LR, SWA_START, EMA_DECAY = 0.4, 5e-4, 0.05, (0.1, 0.005), 0.75, 0.999
N_CYCLES = 5  # SGDR's cycles: snapshots for M = 3 and M = 5 from the one run
SWA_CYCLES_PER_EPOCH = 2  # swa_cyclic's tail: cycles of half an epoch
CALIBRATION_DIV = 25  # the calibration epochs' constant rate: MAX_LR / 25, the one-cycle's start
# get_preds passes over the test set after training (the weights, EMA, each snapshot, SWA's validation and its
# predictions). SWA's batch-norm pass over the training data comes on top (about a training epoch's forwards), and
# with compile one more compilation: it runs the model in a mode the calibration did not (no grad, float32).
EVAL_PASSES = {"one_cycle": 2, "sgdr": 1 + N_CYCLES, "swa_constant": 3, "swa_cyclic": 3}
MIN_STEPS = 3 * N_CYCLES  # fewer steps than this do not give SGDR five cycles that come down


def train(training: str, learn, epochs: int, progress) -> dict:
    """One training of `epochs` epochs; returns its averaging callbacks by name."""
    steps_per_epoch = len(learn.dls.train)
    head = one_cycle(MAX_LR, final_div=MAX_LR / SWA_LR)
    if training == "one_cycle":
        cbs = {"ema": EMA(decay=EMA_DECAY, validate=False)}  # scored once, after the fit: no validation per epoch
        learn.fit_one_cycle(epochs, MAX_LR, cbs=[*cbs.values(), progress])
        return cbs
    if training == "sgdr":
        cbs = {"ens": SnapshotEnsemble()}
        # A function of the fraction of the fit: N_CYCLES equal cycles in any length.
        scheds = {"lr": sgdr(MAX_LR, N_CYCLES, 1, cycle_mult=1)}
    elif training == "swa_constant":
        cbs = {"swa": SWA(start=SWA_START, every=max(1, steps_per_epoch // 4), swap=False)}
        scheds = swa_scheds(head, Const(SWA_LR), SWA_START)
    elif training == "swa_cyclic":
        cycles = max(1, round(SWA_CYCLES_PER_EPOCH * epochs * (1 - SWA_START)))
        cbs = {"swa": SWA(start=SWA_START, every="cycle", swap=False)}
        scheds = swa_scheds(head, swa_cycles(*CYCLIC_LR, cycles), SWA_START)
    else:
        raise ValueError(f"unknown training {training!r}; choose from {TRAININGS}")
    learn.fit(epochs, cbs=[ParamScheduler(scheds), *cbs.values(), progress])
    return cbs


def timed_predictions(learn) -> dict:
    """The seconds of one get_preds pass over the test set (the unit of the evaluation's projection)."""
    sync(learn.device)
    started = time.perf_counter()
    learn.get_preds(act=softmax)
    sync(learn.device)
    return {"predict_s": time.perf_counter() - started}


def evaluate(training: str, learn, cbs: dict) -> dict:
    """After a training: its variants' scores and how many weights its averaging callbacks kept."""
    return {"variants": variant_scores(training, learn, cbs),
            "averaged": {f"{name}_n": len(cb) if isinstance(cb, SnapshotEnsemble) else cb.n
                         for name, cb in cbs.items()}}


def worker(training: str, folder: Path) -> None:
    """One training in a process of its own (gpu_concurrent.py's steps), then its variants' scores."""
    concurrent.run_worker(folder, training, TRAININGS, "averaging_train", MAX_LR / CALIBRATION_DIV,
                          lambda learn, epochs, progress: train(training, learn, epochs, progress),
                          evaluate=lambda learn, cbs: evaluate(training, learn, cbs), measure=timed_predictions,
                          lr=MAX_LR, wd=WD)


def projection(ready: dict, size: dict) -> tuple[float, float]:
    """(seconds of a concurrent epoch with the safety margin, seconds of the slowest run's evaluation after it). The
    compilation SWA's batch-norm pass may add is bounded by what the calibration's compiling epoch took over a
    compiled one."""
    epoch_s = max(r["epoch_s"] for r in ready.values()) * size["concurrent_safety"]

    def evaluation_s(name: str, r: dict) -> float:
        if not name.startswith("swa"):
            return EVAL_PASSES[name] * r["predict_s"]
        compiled = r["compile"] is not None and r["compile_fallback"] is None
        compiling_s = max(0.0, r["compile_epoch_s"] - r["epoch_s"]) if compiled else 0.0
        return EVAL_PASSES[name] * r["predict_s"] + epoch_s + compiling_s

    return epoch_s, max(evaluation_s(name, r) for name, r in ready.items())


def run_averaging(ctx) -> None:
    """The section: start the four trainings, plan one length for all from their concurrent epoch, follow them,
    then report every variant's scores and the papers' claims under 'averaging'."""
    size, report, budget = ctx.size, ctx.report, ctx.budget
    full = size["averaging_epochs"]
    section = report.section("averaging")
    section.update({"trainings": list(TRAININGS), "concurrent_processes": len(TRAININGS), "full_epochs": full,
                    "hyperparameters": {
                        "max_lr": MAX_LR, "wd": WD, "swa_lr": SWA_LR, "cyclic_lr": list(CYCLIC_LR),
                        "swa_start": SWA_START, "ema_decay": EMA_DECAY, "sgdr_cycles": N_CYCLES, "seed": SEED},
                    "setup": f"resnet{size['resnet_depth']} / CIFAR-10 on {ctx.device}, batch {size['resnet_bs']}, "
                             "SGD momentum, bf16 autocast + channels_last + compile, data and augmentation on the "
                             "device, equal epochs for every training"})
    with concurrent.Workers(ctx, "averaging", Path(__file__), TRAININGS, seed=SEED) as workers:
        ready = workers.wait_ready()
        if ready is None:
            return
        epoch_s, eval_s = projection(ready, size)
        left = budget.left() - size["concurrent_reserve_s"]
        planned, scale = epochs_that_fit({"each": full}, epoch_s, left - eval_s)
        epochs = max(0, planned["each"])
        steps = epochs * min(r["steps_per_epoch"] for r in ready.values())
        section.update({"calibration": ready, "concurrent_epoch_s": epoch_s, "evaluation_s": eval_s,
                        "projected_full_length_s": full * epoch_s + eval_s, "left_at_plan_s": left,
                        "planned_epochs": epochs, "scale": scale})
        if steps < MIN_STEPS:
            workers.plan({name: 0 for name in TRAININGS})
            report.finish("averaging", "skipped", reason=f"a concurrent epoch takes {epoch_s:.1f} s and the "
                                                         f"evaluation {eval_s:.0f} s: {epochs} epochs ({steps} steps, "
                                                         f"{MIN_STEPS} needed for SGDR's {N_CYCLES} cycles) fit the "
                                                         f"{left:.0f} s left")
            return
        workers.plan({name: epochs for name in TRAININGS})
        report.write()
        print(f"[plan] averaging: concurrent epoch {epoch_s:.2f} s, evaluation {eval_s:.1f} s, {left:.0f} s left: "
              f"{epochs} epochs each" + ("" if scale >= 1 else f" (scaled by {scale:.3f})"), flush=True)
        results, wall_s = workers.follow()
    section["wall_s_all_four"] = wall_s
    report_results(report, results)
    workers.finish(results, scale, f"the full length ({full} epochs at {epoch_s:.1f} s a concurrent epoch, then "
                                   f"{eval_s:.0f} s of evaluation) did not fit the {left:.0f} s left: every training "
                                   f"scaled by {scale:.3f} to {epochs} epochs")


def report_results(report, results: dict) -> None:
    """One line per training, one per variant (the experiment's rows), then the papers' claims on those rows."""
    rows = []
    for training, result in results.items():
        if result is None:
            continue
        last = result["rows"][-1] if result["rows"] else {}
        report.emit("averaging", f"run_{training}", {
            "epochs": result["epochs"], "fit_s": result["fit_s"], "eval_s": result["eval_s"], **result["averaged"],
            "history": concurrent.history(result["rows"]), "last_accuracy": last.get("accuracy")})
        for variant, figures in result["variants"].items():
            rows.append({"variant": variant, "training": training, "seed": SEED, **figures,
                         "train_seconds": result["fit_s"]})
            report.emit("averaging", variant, {"training": training, **figures, "train_seconds": result["fit_s"]})
    for number, (claim, measured, holds) in enumerate(averaging_claims(rows), 1):
        report.emit("averaging", f"claim_{number}", {"claim": claim, "measured": measured, "holds": verdict(holds)})


def verdict(holds) -> str:
    """averaging_claims' verdict as a word: it gives 'yes' / 'no' / 'unclear' / 'n/a' (earlier True / False / None)."""
    if isinstance(holds, str):
        return holds
    return "n/a" if holds is None else "yes" if holds else "no"


if __name__ == "__main__":
    concurrent.worker_main(worker, TRAININGS, "one averaging training (started by gpu_check.py)")
