"""The GPU day's sections after the blog: cyclr's epoch against a plain loop, the speed options, fp16 with the
scaler, torchrun.

Timings are medians over alternating rounds (the order reversed every other round), ratios per round. Each section
runs an untimed warm-up round (compilation, allocator, cudnn autotuning), then its first timed round, and projects
from that round how many more of the rounds asked for fit the time left: it runs only those, and says so.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_budget import rounds_that_fit  # noqa: E402
from overhead import Timer, plain_epoch  # noqa: E402

from cyclr import (  # noqa: E402  # noqa: E402
    DataLoaders,
    InMemoryLoader,
    Learner,
    MixedPrecision,  # noqa: E402
    accuracy,
    sgd,
)
from cyclr.data.cifar10 import cifar10  # noqa: E402
from cyclr.learner.models import cifar_resnet  # noqa: E402

PCT_START, DIV, FINAL_DIV = 0.3, 25.0, 25e4  # torch's final_div_factor is FINAL_DIV / DIV


def cifar_mlp() -> nn.Sequential:
    """A small model (about 99k parameters) on CIFAR-10: the per-batch cost is mostly the framework's Python."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))


def same_batches(dls: DataLoaders, seed: int = 0) -> DataLoaders:
    """New loaders over the same device-resident uint8 tensors and transforms from the same seed, so that every
    contender sees the same batches; the training loader's `drop_last` is kept (fixed shapes: one trace a mode)."""
    train, valid = dls.train, dls.valid
    return DataLoaders(
        InMemoryLoader(train.x, train.y, train.bs, shuffle=True, drop_last=train.drop_last, seed=seed,
                       batch_tfm=train.batch_tfm),
        InMemoryLoader(valid.x, valid.y, valid.bs, seed=seed, batch_tfm=valid.batch_tfm),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dry run's compile-on-CPU warning, a flat curve, ...
        yield


class SkipSection(Exception):
    """The section cannot give a figure here (its first timed round would not fit the time left, or the machine
    lacks what it measures); the message says why."""


def alternate(contenders: dict, ctx) -> tuple[dict, dict, dict]:
    """Warm-up round, first timed round, then as many more rounds (up to `rounds`) as the first one projects into the
    time left. Returns the wall times, the last result of each contender and how the rounds were planned."""
    names = list(contenders)
    times = {name: [] for name in names}
    last = {}

    def one_round(order) -> float:
        started = time.perf_counter()
        for name in order:
            sync(ctx.device)
            with Timer() as timer:
                last[name] = contenders[name]()
                sync(ctx.device)
            times[name].append(timer.wall)
        return time.perf_counter() - started

    warmup_s = one_round(names)
    times = {name: [] for name in names}
    if ctx.budget.left() < warmup_s:  # the compiling round bounds a timed one from above
        raise SkipSection(f"its warm-up round took {warmup_s:.1f} s (compilation included) and "
                             f"{ctx.budget.left():.0f} s are left: not even one timed round fits")
    round_s = one_round(names[::-1])
    more = rounds_that_fit(ctx.size["rounds"] - 1, round_s, ctx.budget.left() - ctx.size["section_reserve_s"])
    for index in range(more):
        one_round(names if index % 2 == 0 else names[::-1])
    plan = {"warmup_round_s": warmup_s, "first_round_s": round_s, "rounds": 1 + more,
            "rounds_asked": ctx.size["rounds"]}
    return times, last, plan


def ratio(times: dict, name: str, base: str) -> float:
    return statistics.median(t / b for t, b in zip(times[name], times[base], strict=True))


def plain_runner(model, dls, lr: float, channels_last: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_func = nn.CrossEntropyLoss()

    def run():
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(dls.train), pct_start=PCT_START,
                                                    div_factor=DIV, final_div_factor=FINAL_DIV / DIV)
        return plain_epoch(model, opt, loss_func, dls.train, dls.valid, sched, channels_last)["accuracy"]

    return run


def cyclr_runner(learn, lr: float):
    def run():
        with quiet():
            learn.fit_one_cycle(1, lr, div_factor=DIV, pct_start=PCT_START, final_div=FINAL_DIV)
        return learn.recorder.epoch_rows[-1]["accuracy"]

    return run


def new_learner(initial, dls, device, cbs=(), **options):
    return Learner(copy.deepcopy(initial), same_batches(dls), nn.CrossEntropyLoss(), opt_func=sgd, lr=0.1,
                   metrics=[accuracy], device=device, cbs=list(cbs), **options)


def plan_fields(plan: dict) -> dict:
    return {"rounds": plan["rounds"], "rounds_asked": plan["rounds_asked"], "first_round_s": plan["first_round_s"]}


def check_epochs(ctx) -> None:
    """cyclr's `fit_one_cycle(1)` against a plain loop over the same device-resident, device-augmented batches."""
    torch.manual_seed(0)
    models = {"mlp_cifar10": (cifar_mlp(), 0.1), f"resnet{ctx.size['resnet_depth']}_cifar10":
              (cifar_resnet(ctx.size["resnet_depth"]), 0.4)}
    for name, (initial, lr) in models.items():
        dls = ctx.cifar()
        plain = plain_runner(copy.deepcopy(initial).to(ctx.device), same_batches(dls), lr)
        cyclr = cyclr_runner(new_learner(initial, dls, ctx.device), lr)
        times, last, plan = alternate({"plain": plain, "cyclr": cyclr}, ctx)
        ctx.report.emit("epochs", name, {"plain_s": statistics.median(times["plain"]),
                                         "cyclr_s": statistics.median(times["cyclr"]),
                                         "cyclr_x_plain": ratio(times, "cyclr", "plain"),
                                         "plain_accuracy": last["plain"], "cyclr_accuracy": last["cyclr"],
                                         "target": "<= 1.10", **plan_fields(plan)})


def check_speed_options(ctx) -> None:
    """bf16 autocast, channels_last and compile, each alone and all three, against the eager float32 plain loop."""
    torch.manual_seed(0)
    initial, dls, compile_options = cifar_resnet(ctx.size["resnet_depth"]), ctx.cifar(), ctx.size["compile"]
    options = {
        "cyclr_fp32": {}, "bf16": {"cbs": [MixedPrecision(torch.bfloat16)]}, "channels_last": {"channels_last": True},
        "compile": {"compile": compile_options},
        "all_three": {"cbs": [MixedPrecision(torch.bfloat16)], "channels_last": True, "compile": compile_options},
    }
    contenders = {"plain_fp32": plain_runner(copy.deepcopy(initial).to(ctx.device), same_batches(dls), 0.4)}
    learners = {}
    for name, kwargs in options.items():
        with quiet():
            learners[name] = new_learner(initial, dls, ctx.device, **kwargs)
        contenders[name] = cyclr_runner(learners[name], 0.4)
    try:
        times, last, plan = alternate(contenders, ctx)
    except SkipSection:
        raise
    except Exception as error:  # a compiler failure on this image: time the compiled contenders eagerly instead
        for name in ("compile", "all_three"):
            learners[name].compile_options = None
        ctx.report.section("speed_options")["compile_fallback"] = f"{type(error).__name__}: {str(error)[:400]}"
        print(f"[speed_options] compile failed, timed eagerly instead: {type(error).__name__}", flush=True)
        times, last, plan = alternate(contenders, ctx)
    for name in contenders:
        ctx.report.emit("speed_options", name, {"epoch_s": statistics.median(times[name]),
                                                "speedup_vs_plain_fp32": 1 / ratio(times, name, "plain_fp32"),
                                                "accuracy": last[name]})
    ctx.report.section("speed_options").update({"target": "all_three speedup >= 1.5",
                                                "compile_options": compile_options, **plan_fields(plan)})


def check_fp16(ctx) -> None:
    """float16 autocast with the GradScaler: epoch time, steps skipped by the scaler, time per step taken."""
    torch.manual_seed(0)
    initial = cifar_resnet(ctx.size["resnet_depth"])
    dls = ctx.cifar(n_train=ctx.size["fp16_train"], n_valid=ctx.size["fp16_train"])
    scaler_cb = MixedPrecision(torch.float16)
    learn = new_learner(initial, dls, ctx.device, cbs=[scaler_cb])
    plain = plain_runner(copy.deepcopy(initial).to(ctx.device), same_batches(dls), 0.4)
    times, last, plan = alternate({"plain_fp32": plain, "fp16": cyclr_runner(learn, 0.4)}, ctx)
    steps_taken = learn.train_iter  # of the last fit: skipped steps do not advance it
    epoch_s = statistics.median(times["fp16"])
    ctx.report.emit("fp16", "resnet_cifar10", {
        "epoch_s": epoch_s, "speedup_vs_plain_fp32": 1 / ratio(times, "fp16", "plain_fp32"),
        "batches_per_epoch": len(dls.train), "steps_taken_last_epoch": steps_taken,
        "skipped_steps_all_epochs": scaler_cb.skipped_steps, "epochs_run": 1 + plan["rounds"],
        "s_per_step_taken": epoch_s / max(steps_taken, 1), "final_scale": float(scaler_cb.scaler.get_scale()),
        "accuracy": last["fp16"], **plan_fields(plan)})


def ddp_worker(size: dict, out: Path) -> None:
    """One torchrun process: the MLP on CIFAR-10, `fit_one_cycle(1)`; rank 0 writes what it saw."""
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    dls = cifar10(bs=size["resnet_bs"], n_train=size["cifar_train"], n_valid=size["cifar_valid"],
                  valid_bs=size["valid_bs"], drop_last=True, download=False)
    torch.manual_seed(0)
    learn = Learner(cifar_mlp(), dls, nn.CrossEntropyLoss(), opt_func=sgd, lr=0.1, metrics=[accuracy],
                    progress=False)
    with Timer() as timer:
        learn.fit_one_cycle(1, 0.1)
    if learn.is_main_process:
        import torch.distributed as dist

        figures = {"backend": dist.get_backend(), "world_size": learn.world_size, "fit_s": timer.wall,
                   "accuracy": learn.recorder.epoch_rows[-1]["accuracy"], "device": str(learn.device)}
        out.write_text(json.dumps(figures))


def check_ddp(ctx) -> None:
    """torchrun over every GPU present (nccl); the dry run starts 2 CPU processes (gloo)."""
    n_procs = ctx.size["ddp_procs"] or torch.cuda.device_count()
    if n_procs < 2:  # nccl refuses two ranks on one GPU, and one rank forms no process group
        raise SkipSection(f"{n_procs} GPU: torchrun over one process forms no process group; needs 2 or more GPUs")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        # --tee=3: each rank's own output in torchrun's, so a failing rank's error is in the report
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_procs}",
                   "--tee=3", str(HERE / "gpu_check.py"), "--ddp-worker", "--ddp-out", str(out)]
        command += ["--dry-run"] if ctx.dry_run else []
        with Timer() as timer:
            done = subprocess.run(command, capture_output=True, text=True, timeout=max(ctx.budget.left(), 1.0))
        if done.returncode != 0 or not out.is_file():
            ctx.report.emit("ddp", "mlp_cifar10", {"ok": False, "returncode": done.returncode})
            raise RuntimeError(f"torchrun failed ({done.returncode}): {done.stderr[-2000:]}")
        figures = json.loads(out.read_text())
    ctx.report.emit("ddp", "mlp_cifar10", {"ok": True, **figures, "wall_with_start_s": timer.wall})

