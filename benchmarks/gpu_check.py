"""The one command for a GPU day: every CUDA path of cyclr run and timed, every figure to a JSON file and to stdout.

    python benchmarks/gpu_check.py [--out results/gpu_check.json] [--blog]      # on a CUDA machine (~8 min on H100)
    python benchmarks/gpu_check.py --dry-run [--blog]                           # tiny sizes on the CPU (the tests)

Sections (each in the JSON under its name; timings are medians over alternating rounds, ratios per round):

1. `epochs`: LeNet / Fashion-MNIST and ResNet-56 / CIFAR-10 with the data resident on the device (augmentation on
   the device too), cyclr `fit_one_cycle(1)` against a plain loop over the same batches. Target: <= 1.10x.
2. `speed_options`: ResNet-56 / CIFAR-10 under bf16 autocast (`MixedPrecision(torch.bfloat16)`), `channels_last`,
   `compile`, each alone and all together, against the eager float32 plain loop. Target: together >= 1.5x faster.
3. `fp16`: float16 autocast with the GradScaler: epoch time, steps skipped by the scaler and the time per step
   actually taken (a skipped step does not advance `learn.train_iter`, so it is not counted).
4. `ddp`: `torchrun` over every GPU present (nccl), LeNet / Fashion-MNIST `fit_one_cycle(1)`: backend, world size,
   time and accuracy. The dry run starts 2 CPU processes (gloo).
5. `blog` (with `--blog`): the blog's three `fit_one_cycle` calls verbatim on ResNet-56 / CIFAR-10 at full length
   (95, 50 and 95 epochs, batch 512, SGD, flips and padding-4 crops), one seed, bf16 + channels_last + compile, with
   each run's final test accuracy and time. Aim: all three inside 10 minutes on one H200.

The dry run swaps the sizes (a few hundred images, ResNet-8 for ResNet-56, one round, one epoch per blog call) and
compiles with `backend='eager'` (the compile path without a C++ build), so that it checks the plumbing in under a
minute on the CPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # experiments/
from overhead import Timer, machine, plain_epoch  # noqa: E402
from resnet56_overhead import same_batches  # noqa: E402

from cyclr.callbacks import MixedPrecision  # noqa: E402
from cyclr.data import fashion_mnist  # noqa: E402
from cyclr.data.cifar10 import cifar10  # noqa: E402
from cyclr.learner import Learner, accuracy, lenet, sgd  # noqa: E402
from cyclr.learner.models import cifar_resnet  # noqa: E402

PCT_START, DIV, FINAL_DIV = 0.3, 25.0, 25e4  # torch's final_div_factor is FINAL_DIV / DIV
FULL = {"rounds": 3, "warmup": 1, "fmnist_train": None, "cifar_train": None, "cifar_valid": None,
        "fp16_train": None, "resnet_depth": 56, "lenet_bs": 256, "resnet_bs": 512, "compile": {}, "blog_epochs": None,
        "ddp_procs": None}
# CPU autocast is slow (bf16 ~10x, fp16 ~50x slower than float32 convolutions here): the dry run keeps those few.
DRY = {"rounds": 1, "warmup": 0, "fmnist_train": 256, "cifar_train": 64, "cifar_valid": 32, "fp16_train": 32,
       "resnet_depth": 8, "lenet_bs": 128, "resnet_bs": 32, "compile": {"backend": "eager"}, "blog_epochs": 1,
       "ddp_procs": 2}


def emit(section: str, name: str, figures: dict, report: dict) -> None:
    """Keep a figure in the report and print it as it comes (a GPU day may end early)."""
    report.setdefault(section, {})[name] = figures
    print(f"[{section}] {name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in figures.items()), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(contenders: dict, size: dict, device: torch.device) -> tuple[dict, dict]:
    """Run each contender once per round, the order reversed every other round, after `size['warmup']` untimed
    rounds (compile, allocator, cudnn autotuning); the wall times and the last result of each."""
    times = {name: [] for name in contenders}
    last = {}
    names = list(contenders)
    for round_index in range(size["warmup"] + size["rounds"]):
        for name in names if round_index % 2 == 0 else names[::-1]:
            sync(device)
            with Timer() as timer:
                last[name] = contenders[name]()
                sync(device)
            if round_index >= size["warmup"]:
                times[name].append(timer.wall)
    return times, last


def ratio(times: dict, name: str, base: str) -> float:
    return statistics.median(t / b for t, b in zip(times[name], times[base], strict=True))


@contextlib.contextmanager
def quiet():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dry run's compile-on-CPU warning, a flat curve, ...
        yield


def plain_runner(model, dls, lr: float, channels_last: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_func = torch.nn.CrossEntropyLoss()

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
    return Learner(copy.deepcopy(initial), same_batches(dls), torch.nn.CrossEntropyLoss(), opt_func=sgd, lr=0.1,
                   metrics=[accuracy], device=device, cbs=list(cbs), **options)


def check_epochs(size: dict, device, data: dict, report: dict) -> None:
    for name, (initial, dls, lr) in data.items():
        plain = plain_runner(copy.deepcopy(initial).to(device), same_batches(dls), lr)
        cyclr = cyclr_runner(new_learner(initial, dls, device), lr)
        times, last = alternate({"plain": plain, "cyclr": cyclr}, size, device)
        emit("epochs", name, {"plain_s": statistics.median(times["plain"]),
                              "cyclr_s": statistics.median(times["cyclr"]), "cyclr_x_plain": ratio(times, "cyclr",
                                                                                                    "plain"),
                              "plain_accuracy": last["plain"], "cyclr_accuracy": last["cyclr"], "target": "<= 1.10"},
             report)


def check_speed_options(size: dict, device, initial, dls, lr: float, report: dict) -> None:
    bf16 = {"cbs": [MixedPrecision(torch.bfloat16)]}
    options = {
        "cyclr_fp32": {}, "bf16": bf16, "channels_last": {"channels_last": True},
        "compile": {"compile": size["compile"]},
        "all_three": {"cbs": [MixedPrecision(torch.bfloat16)], "channels_last": True, "compile": size["compile"]},
    }
    contenders = {"plain_fp32": plain_runner(copy.deepcopy(initial).to(device), same_batches(dls), lr)}
    for name, kwargs in options.items():
        with quiet():
            contenders[name] = cyclr_runner(new_learner(initial, dls, device, **kwargs), lr)
    times, last = alternate(contenders, size, device)
    for name in contenders:
        emit("speed_options", name, {"epoch_s": statistics.median(times[name]),
                                     "speedup_vs_plain_fp32": 1 / ratio(times, name, "plain_fp32"),
                                     "accuracy": last[name]}, report)
    report["speed_options"]["target"] = "all_three speedup >= 1.5"
    report["speed_options"]["compile_options"] = size["compile"]


def check_fp16(size: dict, device, initial, dls, lr: float, report: dict) -> None:
    scaler_cb = MixedPrecision(torch.float16)
    learn = new_learner(initial, dls, device, cbs=[scaler_cb])
    plain = plain_runner(copy.deepcopy(initial).to(device), same_batches(dls), lr)
    times, last = alternate({"plain_fp32": plain, "fp16": cyclr_runner(learn, lr)}, size, device)
    n_batches = len(dls.train)
    epochs_run = size["warmup"] + size["rounds"]
    steps_taken = learn.train_iter  # of the last fit: skipped steps do not advance it
    skipped_total = scaler_cb.skipped_steps
    epoch_s = statistics.median(times["fp16"])
    emit("fp16", "resnet_cifar10", {
        "epoch_s": epoch_s, "speedup_vs_plain_fp32": 1 / ratio(times, "fp16", "plain_fp32"),
        "batches_per_epoch": n_batches, "steps_taken_last_epoch": steps_taken,
        "skipped_steps_all_epochs": skipped_total, "epochs_run": epochs_run,
        "s_per_step_taken": epoch_s / max(steps_taken, 1), "final_scale": float(scaler_cb.scaler.get_scale()),
        "accuracy": last["fp16"]}, report)


def ddp_worker(args) -> None:
    """One torchrun process: LeNet / Fashion-MNIST fit_one_cycle(1); rank 0 writes what it saw."""
    size = DRY if args.dry_run else FULL
    if args.dry_run:
        torch.set_num_threads(1)
    dls = fashion_mnist(bs=size["lenet_bs"], n_train=size["fmnist_train"], normalize=True)
    torch.manual_seed(0)
    learn = Learner(lenet(), dls, torch.nn.CrossEntropyLoss(), opt_func=sgd, lr=0.1, metrics=[accuracy], progress=False)
    with Timer() as timer:
        learn.fit_one_cycle(1, 0.1)
    if learn.is_main_process:
        import torch.distributed as dist

        figures = {"backend": dist.get_backend(), "world_size": learn.world_size, "fit_s": timer.wall,
                   "accuracy": learn.recorder.epoch_rows[-1]["accuracy"], "device": str(learn.device)}
        Path(args.ddp_out).write_text(json.dumps(figures))


def check_ddp(size: dict, device, dry_run: bool, report: dict) -> None:
    n_procs = size["ddp_procs"] or max(torch.cuda.device_count(), 1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_procs}",
                   __file__, "--ddp-worker", "--ddp-out", str(out)] + (["--dry-run"] if dry_run else [])
        with Timer() as timer:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not out.is_file():
            emit("ddp", "lenet_fashion_mnist", {"ok": False, "returncode": done.returncode,
                                                "stderr_tail": done.stderr[-2000:]}, report)
            return
        figures = json.loads(out.read_text())
    emit("ddp", "lenet_fashion_mnist", {"ok": True, **figures, "wall_with_start_s": timer.wall}, report)


def check_blog(size: dict, device, dls, report: dict) -> None:
    from experiments.blog import BLOG_CALLS

    for call in BLOG_CALLS:
        torch.manual_seed(0)
        with quiet():
            learn = Learner(cifar_resnet(size["resnet_depth"]), same_batches(dls), torch.nn.CrossEntropyLoss(),
                            opt_func=sgd, metrics=[accuracy], device=device, cbs=[MixedPrecision(torch.bfloat16)],
                            channels_last=True, compile=size["compile"], progress=False)
        with quiet(), Timer() as timer:
            learn.fit_one_cycle(**call.fit_kwargs(size["blog_epochs"]))
            sync(device)
        row = learn.recorder.epoch_rows[-1]
        emit("blog", call.name, {"epochs": len(learn.recorder.epoch_rows), "fit_s": timer.wall,
                                 "test_accuracy": row["accuracy"], "valid_loss": row["valid_loss"],
                                 "train_loss": row["train_loss"], "study_result": call.source_result}, report)
    report["blog"]["total_s"] = sum(v["fit_s"] for v in report["blog"].values())
    report["blog"]["aim"] = "total under 600 s on one H200"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the plumbing")
    parser.add_argument("--blog", action="store_true", help="also the blog's three calls at full length")
    parser.add_argument("--out", default="results/gpu_check.json", help="where the JSON goes")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per section (default 3; dry run 1)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return {}
    size = dict(DRY if args.dry_run else FULL)
    if args.rounds is not None:
        size["rounds"] = args.rounds
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cudnn pick its fastest convolutions
    else:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU plumbing check")

    started = time.perf_counter()
    report = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "device": str(device),
                       "dry_run": args.dry_run, "sizes": size, "command": " ".join(sys.argv)}}
    print(f"gpu_check on {report['meta']['machine']}, {'DRY RUN (figures mean nothing)' if args.dry_run else ''}")
    fmnist = fashion_mnist(bs=size["lenet_bs"], n_train=size["fmnist_train"], normalize=True, device=device)
    cifar = cifar10(bs=size["resnet_bs"], n_train=size["cifar_train"], n_valid=size["cifar_valid"], device=device)
    torch.manual_seed(0)
    lenet_initial, resnet_initial = lenet(), cifar_resnet(size["resnet_depth"])
    resnet_name = f"resnet{size['resnet_depth']}_cifar10"
    check_epochs(size, device, {"lenet_fashion_mnist": (lenet_initial, fmnist, 0.1),
                                resnet_name: (resnet_initial, cifar, 0.4)}, report)
    check_speed_options(size, device, resnet_initial, cifar, 0.4, report)
    fp16_data = cifar if size["fp16_train"] is None else cifar10(
        bs=size["resnet_bs"], n_train=size["fp16_train"], n_valid=size["fp16_train"], device=device)
    check_fp16(size, device, resnet_initial, fp16_data, 0.4, report)
    check_ddp(size, device, args.dry_run, report)
    if args.blog:
        check_blog(size, device, cifar, report)
    report["meta"]["total_s"] = time.perf_counter() - started

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
