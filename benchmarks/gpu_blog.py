"""The GPU day's first section: the blog's three `fit_one_cycle` calls verbatim (ResNet-56 / CIFAR-10, 95, 50 and 95
epochs, batch 512, SGD, flips and padding-4 crops), run CONCURRENTLY as three processes on the one GPU (a ResNet-56
leaves most of an H200 idle), with the data and its augmentation resident on the device, bf16 autocast,
channels_last and torch.compile.

How the three runs fit the budget, without guessing:
1. each worker builds its learner and trains one epoch at a constant low rate (the epoch that compiles; a compile
   failure falls back to eager and says so), then waits for the other two, so that
2. the next epoch, timed, runs with all three on the GPU: the concurrent epoch time;
3. the parent projects the longest run (95 epochs) from that epoch and writes the plan: the full lengths if they fit
   the time left, else all three scaled by the same factor (same one-cycle shape, fewer epochs; said in the JSON);
4. each worker restores its initial weights, drops the optimizer and its calibration batches' order, and runs the
   blog's call with the planned epochs, writing its progress after every epoch (so a cut-off run keeps it).

Workers talk to the parent through small JSON files in a work folder (`config.json` in; `compiled_*`, `ready_*`,
`progress_*`, `result_*` out; `plan.json` in).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # experiments/
from gpu_budget import atomic_write, epochs_that_fit  # noqa: E402
from gpu_sections import same_batches, sync  # noqa: E402

from cyclr.callbacks import Callback, MixedPrecision  # noqa: E402
from cyclr.callbacks.core import ORDER  # noqa: E402
from cyclr.data.cifar10 import cifar10  # noqa: E402
from cyclr.learner import Learner, accuracy, sgd  # noqa: E402
from cyclr.learner.models import cifar_resnet  # noqa: E402
from experiments.blog import BLOG_CALLS, scaled_epochs  # noqa: E402

POLL_S = 0.05  # how often a worker looks for the files it waits on


class EpochProgress(Callback):
    """Writes the blog run's epoch rows so far after every epoch: a run cut off at the budget's end keeps them."""

    order = ORDER.progress  # reads the row once the Recorder (and everything before the progress bar) filled it

    def __init__(self, path: Path, first_row: int):
        self.path, self.first_row = path, first_row

    def after_epoch(self, learn) -> None:
        rows = learn.recorder.epoch_rows[self.first_row:]
        atomic_write(self.path, json.dumps({"epochs_done": len(rows), "rows": rows}, default=float))


def wait_for(paths: list[Path], timeout_s: float) -> bool:
    deadline = time.perf_counter() + timeout_s
    while not all(p.is_file() for p in paths):
        if time.perf_counter() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def worker(call_name: str, folder: Path) -> None:
    """One blog run in a process of its own (see the module's docstring for the steps)."""
    config = json.loads((folder / "config.json").read_text())
    size, device = config["size"], torch.device(config["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)  # the dry run: three workers on a small shared CPU
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cudnn pick its fastest convolutions
    call = next(c for c in BLOG_CALLS if c.name == call_name)
    dls = cifar10(bs=size["resnet_bs"], n_train=size["cifar_train"], n_valid=size["cifar_valid"], device=device,
                  valid_bs=size["valid_bs"], drop_last=True, download=False)
    torch.manual_seed(config["seed"])
    learn = Learner(cifar_resnet(size["resnet_depth"]), dls, torch.nn.CrossEntropyLoss(), opt_func=sgd,
                    metrics=[accuracy], device=device, cbs=[MixedPrecision(torch.bfloat16)], channels_last=True,
                    compile=size["compile"] if size["blog_compile"] else False, progress=False)
    initial = copy.deepcopy(learn.model.state_dict())
    calibration_lr = call.max_lr / call.div_factor
    started = time.perf_counter()
    compile_fallback = None
    try:
        learn.fit(1, lr=calibration_lr)
    except Exception as error:  # a compiler failure on this image: train eagerly, and say so in the JSON
        if learn.compile_options is None:
            raise
        compile_fallback = f"{type(error).__name__}: {str(error)[:400]}"
        learn.compile_options = None
        learn.model.load_state_dict(initial)
        learn.opt = None
        learn.fit(1, lr=calibration_lr)
    sync(device)
    compile_epoch_s = time.perf_counter() - started
    atomic_write(folder / f"compiled_{call_name}.json", json.dumps({"compile_epoch_s": compile_epoch_s}))
    wait_for([folder / f"compiled_{c.name}.json" for c in BLOG_CALLS], config["wait_s"])
    learn.fit(1, lr=calibration_lr)  # with the other two training too: the concurrent epoch time
    atomic_write(folder / f"ready_{call_name}.json", json.dumps({
        "compile_epoch_s": compile_epoch_s, "epoch_s": learn.recorder.epoch_rows[-1]["time"],
        "compile": "eager (fallback)" if compile_fallback else learn.compile_options,
        "compile_fallback": compile_fallback}))

    if not wait_for([folder / "plan.json"], config["wait_s"]):
        raise SystemExit("no plan.json from the parent in time")
    epochs = json.loads((folder / "plan.json").read_text())["epochs"][call_name]
    if epochs < 1:
        return
    learn.model.load_state_dict(initial)  # in place: the compiled graph keeps its parameters
    learn.opt = None  # a fresh optimizer, no momentum from the calibration epochs
    learn.dls = same_batches(dls, seed=config["seed"])
    first_row = len(learn.recorder.epoch_rows)
    started = time.perf_counter()
    learn.fit_one_cycle(**call.fit_kwargs(epochs), cbs=[EpochProgress(folder / f"progress_{call_name}.json",
                                                                      first_row)])
    sync(device)
    fit_s = time.perf_counter() - started
    rows = learn.recorder.epoch_rows[first_row:]
    atomic_write(folder / f"result_{call_name}.json", json.dumps({"epochs": len(rows), "fit_s": fit_s,
                                                                   "rows": rows}, default=float))


def full_lengths(size: dict) -> dict[str, int]:
    """The blog's epochs (95, 50, 95), or on the dry run the same scaled down (`blog_length_scale`)."""
    return {c.name: scaled_epochs(c.cyc_len, size["blog_length_scale"]) for c in BLOG_CALLS}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_tail(folder: Path, name: str) -> str:
    try:
        return (folder / f"log_{name}.txt").read_text()[-1500:]
    except OSError:
        return ""


def run_blog(ctx) -> None:
    """The section: start the workers, plan from their concurrent epoch, follow them until they end or the budget
    does; every figure goes to `ctx.report` under 'blog'."""
    size, report, budget = ctx.size, ctx.report, ctx.budget
    full = full_lengths(size)
    folder = Path(tempfile.mkdtemp(prefix="gpu_blog_"))
    (folder / "config.json").write_text(json.dumps({"size": size, "device": str(ctx.device), "seed": 0,
                                                     "wait_s": max(budget.left(), 1.0)}))
    section = report.section("blog")
    section.update({"concurrent_processes": len(BLOG_CALLS), "full_epochs": full, "work_folder": str(folder),
                    "setup": f"resnet{size['resnet_depth']} / CIFAR-10 on {ctx.device}, batch {size['resnet_bs']}, "
                             "SGD, bf16 autocast + channels_last + compile, data and augmentation on the device"})
    procs = {}
    for call in BLOG_CALLS:
        log = open(folder / f"log_{call.name}.txt", "w")
        procs[call.name] = subprocess.Popen([sys.executable, __file__, "--worker", call.name, "--folder", str(folder)],
                                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        log.close()
    try:
        follow(ctx, folder, procs, full)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def follow(ctx, folder: Path, procs: dict, full: dict[str, int]) -> None:
    size, report, budget = ctx.size, ctx.report, ctx.budget
    section = report.section("blog")
    ready_paths = {name: folder / f"ready_{name}.json" for name in procs}
    while not all(p.is_file() for p in ready_paths.values()):
        dead = [name for name, proc in procs.items() if proc.poll() is not None and not ready_paths[name].is_file()]
        if dead:
            report.finish("blog", "failed", error=f"worker {dead[0]} ended before its timed epoch:\n"
                                                  + log_tail(folder, dead[0]))
            return
        if budget.left() <= 0:
            report.finish("blog", "skipped", reason="the budget ran out while the three runs compiled and timed their "
                                                    f"first epoch ({budget.elapsed():.0f} s)")
            return
        time.sleep(size["poll_s"])
    ready = {name: read_json(path) for name, path in ready_paths.items()}
    epoch_s = max(r["epoch_s"] for r in ready.values())
    left = budget.left() - size["blog_reserve_s"]
    epochs, scale = epochs_that_fit(full, epoch_s * size["blog_safety"], left)
    projected_full_s = max(full.values()) * epoch_s * size["blog_safety"]
    section.update({"calibration": ready, "concurrent_epoch_s": epoch_s, "projected_full_length_s": projected_full_s,
                    "left_at_plan_s": left, "planned_epochs": epochs, "scale": scale})
    atomic_write(folder / "plan.json", json.dumps({"epochs": epochs}))
    if min(epochs.values()) < 1:
        report.finish("blog", "skipped", reason=f"a concurrent epoch takes {epoch_s:.1f} s: the full length needs "
                                                f"{projected_full_s:.0f} s and not even one epoch of each run fits "
                                                f"the {left:.0f} s left")
        return
    report.write()
    print(f"[plan] blog: concurrent epoch {epoch_s:.2f} s, full length {projected_full_s:.0f} s, {left:.0f} s left: "
          f"epochs {epochs}" + ("" if scale >= 1 else f" (scaled by {scale:.3f})"), flush=True)
    started = time.perf_counter()
    while any(proc.poll() is None for proc in procs.values()) and budget.left() > 0:
        time.sleep(size["poll_s"])
        for name in procs:
            progress = read_json(folder / f"progress_{name}.json")
            if progress is not None:
                section[f"progress_{name}"] = {"epochs_done": progress["epochs_done"], **progress["rows"][-1]}
        report.write()
    wall_s = time.perf_counter() - started
    results = {name: read_json(folder / f"result_{name}.json") for name in procs}
    unfinished = [name for name, result in results.items() if result is None]
    for name, result in results.items():
        if result is None:
            continue
        section.pop(f"progress_{name}", None)
        call = next(c for c in BLOG_CALLS if c.name == name)
        last = result["rows"][-1]
        report.emit("blog", name, {"epochs": result["epochs"], "fit_s": result["fit_s"],
                                   "test_accuracy": last["accuracy"], "valid_loss": last["valid_loss"],
                                   "train_loss": last["train_loss"], "study_result": call.source_result,
                                   "history": [{k: r[k] for k in ("epoch", "train_loss", "valid_loss", "accuracy",
                                                                   "time") if k in r} for r in result["rows"]]})
    section["wall_s_all_three"] = wall_s
    if unfinished:
        tails = {name: log_tail(folder, name) for name in unfinished}
        report.finish("blog", "failed", error=f"{unfinished} did not finish (budget left {budget.left():.0f} s); "
                                              f"their progress is kept; logs: {tails}")
    elif scale >= 1:
        report.finish("blog", "done")
    else:
        report.finish("blog", "scaled", reason=f"the full length (95 epochs at {epoch_s:.1f} s a concurrent epoch, "
                                               f"{projected_full_s:.0f} s) did not fit the {left:.0f} s left: every "
                                               f"run scaled by {scale:.3f}, the one-cycle shape kept")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="one blog worker (started by gpu_check.py)")
    parser.add_argument("--worker", required=True, choices=[c.name for c in BLOG_CALLS])
    parser.add_argument("--folder", required=True, type=Path)
    args = parser.parse_args()
    worker(args.worker, args.folder)
