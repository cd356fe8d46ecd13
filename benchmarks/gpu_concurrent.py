"""Runs side by side on the one GPU, each in a process of its own (a ResNet-56 leaves most of an H200 idle): the
machinery the blog and averaging sections share (gpu_blog.py, gpu_averaging.py).

How the runs fit the budget, without guessing:
1. each worker builds its learner (ResNet / CIFAR-10, data and augmentation on the device, bf16 autocast,
   channels_last, compile) and trains one epoch at a constant low rate (the epoch that compiles; a compile failure
   falls back to eager and says so), then waits for the others, so that
2. the next epoch, timed, runs with all of them on the GPU: the concurrent epoch time (`ready_*`);
3. the parent projects the runs from that epoch and writes the plan (`plan.json`: the epochs of each run);
4. each worker restores its initial weights, drops the optimizer and its calibration batches' order, and trains
   with the planned epochs, writing its progress after every epoch (so a cut-off run keeps it), then its result.

Workers talk to the parent through small JSON files in a work folder (`config.json` in; `compiled_*`, `ready_*`,
`progress_*`, `result_*` out; `plan.json` in). A worker is the section's own script run with
`--worker NAME --folder FOLDER`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_budget import atomic_write  # noqa: E402
from gpu_sections import same_batches, sync  # noqa: E402

from cyclr import Callback, Learner, MixedPrecision, accuracy, sgd  # noqa: E402  # noqa: E402
from cyclr.callbacks.core import ORDER  # noqa: E402
from cyclr.data.cifar10 import cifar10  # noqa: E402
from cyclr.learner.models import cifar_resnet  # noqa: E402

POLL_S = 0.05  # how often a worker looks for the files it waits on


class EpochProgress(Callback):
    """Writes the run's epoch rows so far after every epoch: a run cut off at the budget's end keeps them."""

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


# ---------------------------------------------------------------- in a worker


def run_worker(folder: Path, name: str, names, n_train_size: str, calibration_lr: float, train: Callable,
               evaluate: Callable | None = None, measure: Callable | None = None, **learner_kwargs) -> None:
    """One run in a process of its own, the steps above: `train(learn, epochs, progress)` trains the planned epochs
    (with the `progress` callback attached) and returns what `evaluate(learn, trained)` needs to give the run's
    figures after it (timed apart); `measure(learn)` adds figures to the ready file. The data: `size[n_train_size]`
    training images (None: all)."""
    config = json.loads((folder / "config.json").read_text())
    size, device = config["size"], torch.device(config["device"])
    if device.type == "cpu":
        torch.set_num_threads(1)  # the dry run: several workers on a small shared CPU
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cudnn pick its fastest convolutions
    dls = cifar10(bs=size["resnet_bs"], n_train=size[n_train_size], n_valid=size["cifar_valid"], device=device,
                  valid_bs=size["valid_bs"], drop_last=True, download=False)
    learn = resnet_learner(size, device, dls, config["seed"], **learner_kwargs)
    initial = copy.deepcopy(learn.model.state_dict())
    calibrate(learn, initial, calibration_lr, folder, name, names, config["wait_s"],
              measure=(lambda: measure(learn)) if measure else None)
    if not wait_for([folder / "plan.json"], config["wait_s"]):
        raise SystemExit("no plan.json from the parent in time")
    epochs = json.loads((folder / "plan.json").read_text())["epochs"][name]
    if epochs < 1:
        return
    # The initial weights back (in place: the compiled graph keeps its parameters), a fresh optimizer (no momentum
    # from the calibration epochs), the batches from the seed again.
    learn.model.load_state_dict(initial)
    learn.opt = None
    learn.dls = same_batches(dls, seed=config["seed"])
    progress = EpochProgress(folder / f"progress_{name}.json", len(learn.recorder.epoch_rows))
    started = time.perf_counter()
    trained = train(learn, epochs, progress)
    sync(device)
    result = {"epochs": epochs, "fit_s": time.perf_counter() - started,
              "rows": learn.recorder.epoch_rows[progress.first_row:]}
    if evaluate is not None:
        started = time.perf_counter()
        result.update(evaluate(learn, trained))
        sync(device)
        result["eval_s"] = time.perf_counter() - started
    atomic_write(folder / f"result_{name}.json", json.dumps(result, default=float))


def resnet_learner(size: dict, device: torch.device, dls, seed: int, **kwargs) -> Learner:
    """ResNet (`resnet_depth`) with SGD, bf16 autocast, channels_last and compile (eager where `workers_compile` is
    off); the weights drawn from `seed`, so that every run of a section starts from the same ones."""
    torch.manual_seed(seed)
    return Learner(cifar_resnet(size["resnet_depth"]), dls, torch.nn.CrossEntropyLoss(), opt_func=sgd,
                   metrics=[accuracy], device=device, cbs=[MixedPrecision(torch.bfloat16)], channels_last=True,
                   compile=size["compile"] if size["workers_compile"] else False, progress=False,
                   wd_bn_bias=True, **kwargs)  # the blog's fastai 0.7 and the averaging papers decay every parameter


def calibrate(learn: Learner, initial: dict, lr: float, folder: Path, name: str, names, wait_s: float,
              measure: Callable[[], dict] | None = None) -> None:
    """Steps 1 and 2 at the constant rate `lr`: the compiling epoch (from the `initial` weights again, eagerly, if
    the compiler fails), then, once every worker compiled, the concurrent epoch, timed; writes `ready_<name>.json`
    with both times, the compile used and what `measure()` adds."""
    started = time.perf_counter()
    compile_fallback = None
    try:
        learn.fit(1, lr=lr)
    except Exception as error:  # a compiler failure on this image: train eagerly, and say so in the JSON
        if learn.compile_options is None:
            raise
        compile_fallback = f"{type(error).__name__}: {str(error)[:400]}"
        learn.compile_options = None
        learn.model.load_state_dict(initial)
        learn.opt = None
        learn.fit(1, lr=lr)
    sync(learn.device)
    compile_epoch_s = time.perf_counter() - started
    atomic_write(folder / f"compiled_{name}.json", json.dumps({"compile_epoch_s": compile_epoch_s}))
    wait_for([folder / f"compiled_{other}.json" for other in names], wait_s)
    learn.fit(1, lr=lr)  # with the others training too: the concurrent epoch time
    ready = {"compile_epoch_s": compile_epoch_s, "epoch_s": learn.recorder.epoch_rows[-1]["time"],
             "steps_per_epoch": len(learn.dls.train),
             "compile": "eager (fallback)" if compile_fallback else learn.compile_options,
             "compile_fallback": compile_fallback, **(measure() if measure else {})}
    atomic_write(folder / f"ready_{name}.json", json.dumps(ready))


def worker_main(worker: Callable[[str, Path], None], names, description: str) -> None:
    """A section script's `__main__`: `--worker NAME --folder FOLDER` runs `worker(NAME, FOLDER)`."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--worker", required=True, choices=list(names))
    parser.add_argument("--folder", required=True, type=Path)
    args = parser.parse_args()
    worker(args.worker, args.folder)
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything it had to say is in its result file, written atomically: skip the interpreter's teardown of torch
    # (about a CPU-second a process, which the runs still training would pay for).
    os._exit(0)


# ---------------------------------------------------------------- in the parent


class Workers:
    """The section's worker processes and their folder: started together, followed, killed if still running."""

    def __init__(self, ctx, section: str, script: Path, names, seed: int = 0):
        self.ctx, self.section = ctx, section
        self.folder = folder = Path(tempfile.mkdtemp(prefix=f"gpu_{section}_"))
        (folder / "config.json").write_text(json.dumps({"size": ctx.size, "device": str(ctx.device), "seed": seed,
                                                         "wait_s": max(ctx.budget.left(), 1.0)}))
        ctx.report.section(section)["work_folder"] = str(folder)
        self.procs: dict[str, subprocess.Popen] = {}
        for name in names:
            with open(folder / f"log_{name}.txt", "w") as log:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, str(script), "--worker", name, "--folder", str(folder)],
                    stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def wait_ready(self) -> dict | None:
        """Every worker's `ready_*` figures; None (the section finished as failed or skipped, saying why) when a
        worker died first or the budget ran out."""
        report, budget = self.ctx.report, self.ctx.budget
        paths = {name: self.folder / f"ready_{name}.json" for name in self.procs}
        while not all(p.is_file() for p in paths.values()):
            dead = [n for n, proc in self.procs.items() if proc.poll() is not None and not paths[n].is_file()]
            if dead:
                report.finish(self.section, "failed", error=f"worker {dead[0]} ended before its timed epoch:\n"
                                                            + log_tail(self.folder, dead[0]))
                return None
            if budget.left() <= 0:
                report.finish(self.section, "skipped", reason=f"the budget ran out while the {len(self.procs)} runs "
                                                              f"compiled and timed their first epoch "
                                                              f"({budget.elapsed():.0f} s)")
                return None
            time.sleep(self.ctx.size["poll_s"])
        return {name: read_json(path) for name, path in paths.items()}

    def plan(self, epochs: dict[str, int]) -> None:
        atomic_write(self.folder / "plan.json", json.dumps({"epochs": epochs}))

    def follow(self) -> tuple[dict[str, dict | None], float]:
        """Until every worker ended or the budget did, the runs' progress kept in the report; then their results
        (None for a run that did not finish; its last progress stays in the report) and the wall time."""
        report, budget, section = self.ctx.report, self.ctx.budget, self.ctx.report.section(self.section)
        started = time.perf_counter()
        while any(proc.poll() is None for proc in self.procs.values()) and budget.left() > 0:
            time.sleep(self.ctx.size["poll_s"])
            changed = False
            for name in self.procs:
                progress = read_json(self.folder / f"progress_{name}.json")
                if progress is not None and progress["rows"]:
                    latest = {"epochs_done": progress["epochs_done"], **progress["rows"][-1]}
                    changed |= section.get(f"progress_{name}", {}).get("epochs_done") != latest["epochs_done"]
                    section[f"progress_{name}"] = latest
            if changed:  # a new epoch ended somewhere: keep it (the report is rewritten whole, and fsynced)
                report.write()
        results = {name: read_json(self.folder / f"result_{name}.json") for name in self.procs}
        for name, result in results.items():
            if result is not None:
                section.pop(f"progress_{name}", None)
        return results, time.perf_counter() - started

    def finish(self, results: dict, scale: float, scaled_reason: str) -> None:
        """The section's status: failed when a run has no result (its log's end said), else done at full length or
        scaled (`scaled_reason`)."""
        missing = [name for name, result in results.items() if result is None]
        if missing:
            tails = {name: log_tail(self.folder, name) for name in missing}
            self.ctx.report.finish(self.section, "failed", error=f"{missing} did not finish (budget left "
                                                                 f"{self.ctx.budget.left():.0f} s); their progress "
                                                                 f"is kept; logs: {tails}")
        elif scale >= 1:
            self.ctx.report.finish(self.section, "done")
        else:
            self.ctx.report.finish(self.section, "scaled", reason=scaled_reason)


def history(rows: list[dict]) -> list[dict]:
    """A run's epoch table, the columns every run has."""
    return [{k: r[k] for k in ("epoch", "train_loss", "valid_loss", "accuracy", "time") if k in r} for r in rows]
