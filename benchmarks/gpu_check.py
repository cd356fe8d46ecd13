"""The one command for a GPU day, planned to fit the device lease: sections run most valuable first, each only if it
fits the seconds left, and the JSON plus a text summary are rewritten after every section.

    python benchmarks/gpu_check.py [--budget-s 360] [--out $OUT/gpu_check.json] [--skip-done PREVIOUS.json]
    python benchmarks/gpu_check.py --dry-run --budget-s 45               # tiny sizes on the CPU (the tests)

Sections, most valuable first (each under its name in the JSON's `sections`, with a `status`, gpu_budget.py):

1. `blog` (gpu_blog.py): the blog's three `fit_one_cycle` calls verbatim on ResNet-56 / CIFAR-10 (95, 50, 95 epochs,
   batch 512, SGD), concurrently as three processes on the one GPU, data and augmentation on the device, bf16 +
   channels_last + compile. Full length if the concurrent epoch projects it into the time left, else scaled.
2. `epochs`: cyclr `fit_one_cycle(1)` against a plain loop over the same device-resident batches, a small MLP and
   ResNet-56 on CIFAR-10. Target: <= 1.10x.
3. `speed_options`: bf16, channels_last, compile, each alone and all three, against eager float32. Target: >= 1.5x.
4. `fp16`: float16 autocast with the GradScaler: epoch time, skipped steps, time per step taken.
5. `ddp`: torchrun over every GPU present (nccl), the MLP on CIFAR-10; skipped, saying so, on a one-GPU machine.
6. `averaging` (gpu_averaging.py): one-cycle (+ EMA), SGDR + snapshot ensembles (M = 3, 5), SWA with a constant
   and a cyclical averaging rate on ResNet-56 / CIFAR-10, equal epochs, concurrently as four processes as the blog's;
   test accuracy, NLL, ECE and time of every variant, and the papers' claims measured on them.

Before a section starts the planner asks for its floor (the seconds it needs to measure its first epoch, `floors`
below); inside, the section times its first epoch after compilation and runs only the rounds (or the blog's epochs)
that fit. `--skip-done` carries over what an earlier run finished and runs the rest. The data: CIFAR-10 from
$CYCLR_DATA (the packed tarball, benchmarks/gpu_pack.py), never downloaded. The dry run swaps the sizes (a few
dozen images, a few hundred for averaging, ResNet-8, blog epochs x 0.03, averaging 3 epochs, compile with
`backend='eager'`): its figures mean nothing.

Batches have fixed shapes, so that compile traces each mode once: the training loaders drop the last partial batch
(as fastai's training loaders do: 97 batches of 512 an epoch), the test set goes in batches of 1000.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # experiments/
from gpu_averaging import run_averaging  # noqa: E402
from gpu_blog import run_blog  # noqa: E402
from gpu_budget import Budget, Report, load_previous  # noqa: E402
from gpu_sections import (  # noqa: E402
    SkipSection,
    check_ddp,
    check_epochs,
    check_fp16,
    check_speed_options,
    ddp_worker,
)
from overhead import machine  # noqa: E402

from cyclr.data.cifar10 import cifar10, load_cifar10  # noqa: E402

DEFAULT_BUDGET_S = 360.0  # after the machine's start (1-2 min), a rerun still fits 15 minutes of device time
FULL = {"rounds": 3, "cifar_train": None, "cifar_valid": None, "fp16_train": None, "averaging_train": None,
        "resnet_depth": 56, "resnet_bs": 512, "valid_bs": 1000, "compile": {}, "workers_compile": True,
        "ddp_procs": None, "blog_length_scale": 1.0, "averaging_epochs": 50, "concurrent_safety": 1.05,
        "concurrent_reserve_s": 10.0, "section_reserve_s": 5.0, "poll_s": 2.0,
        # Seconds a section needs to measure its first epoch (start, data, compilation): it starts only with these.
        # averaging: four processes compile at once, where the blog's three do.
        "floors": {"blog": 120.0, "epochs": 30.0, "speed_options": 120.0, "fp16": 30.0, "ddp": 45.0,
                   "averaging": 150.0}}
# CPU autocast is slow (bf16 ~10x, fp16 ~50x slower than float32 convolutions here): the dry run keeps those few.
# Its concurrent workers (blog, averaging) train eagerly (three dynamo traces at once take ~20 s on 2 cores;
# speed_options dry-runs compile). Its ddp and averaging floors are above the tests' first budget on purpose: the
# planner's skip is exercised, and the tests' second run (--skip-done) runs them. Averaging: 6 batches an epoch, 3
# epochs: the 15 steps its SGDR's 5 cycles need, and 3 more.
DRY = {"rounds": 1, "cifar_train": 64, "cifar_valid": 32, "fp16_train": 32, "averaging_train": 192,
       "resnet_depth": 8, "resnet_bs": 32, "valid_bs": None, "compile": {"backend": "eager"},
       "workers_compile": False, "ddp_procs": 2, "blog_length_scale": 0.03, "averaging_epochs": 3,
       "concurrent_safety": 1.05, "concurrent_reserve_s": 1.0, "section_reserve_s": 0.5, "poll_s": 0.2,
       "floors": {"blog": 5.0, "epochs": 2.0, "speed_options": 4.0, "fp16": 2.0, "ddp": 100.0, "averaging": 60.0}}
SECTIONS = (("blog", run_blog), ("epochs", check_epochs), ("speed_options", check_speed_options),
            ("fp16", check_fp16), ("ddp", check_ddp), ("averaging", run_averaging))


@dataclass
class Context:
    """What every section gets: its sizes, the device, the clock it must fit, the report it writes to."""

    size: dict
    device: torch.device
    budget: Budget
    report: Report
    dry_run: bool

    def cifar(self, n_train: int | None = None, n_valid: int | None = None):
        return cifar10(bs=self.size["resnet_bs"], n_train=n_train or self.size["cifar_train"],
                       n_valid=n_valid or self.size["cifar_valid"], valid_bs=self.size["valid_bs"], drop_last=True,
                       device=self.device, download=False)


def nvidia_smi() -> dict:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = [f.strip() for f in done.stdout.splitlines()[0].split(",")] if done.stdout.strip() else []
    return dict(zip(("gpu", "driver", "memory"), fields, strict=False))


def environment(device: torch.device) -> dict:
    """Device, driver, CUDA, cuDNN, library versions and the float32 precision settings the figures ran under."""
    import torchvision

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch deprecates allow_tf32 in favour of fp32_precision
        precision = {"float32_matmul_precision": torch.get_float32_matmul_precision(),
                     "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "cudnn_benchmark": torch.backends.cudnn.benchmark}
        for name, backend in (("cuda_matmul", torch.backends.cuda.matmul), ("cudnn", torch.backends.cudnn)):
            if hasattr(backend, "fp32_precision"):
                precision[f"{name}_fp32_precision"] = backend.fp32_precision
    found = {"machine": machine(), "versions": versions, "precision": precision, "device_name": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                     memory_gib=round(props.total_memory / 2**30, 1), nvidia_smi=nvidia_smi())
        versions["driver"] = found["nvidia_smi"].get("driver")
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        versions["triton"] = None
    import cyclr.learner

    found["cyclr_from"] = str(Path(cyclr.learner.__file__).parent)
    return found


def default_out() -> Path:
    """$OUT/gpu_check.json on the device machine (what comes back), else results/gpu/gpu_check.json."""
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("results/gpu/gpu_check.json")


def run_sections(ctx: Context, previous_path) -> None:
    for name, run in SECTIONS:
        if name in ctx.report.carried:
            print(f"[plan] {name}: finished in {previous_path}, not run again", flush=True)
            continue
        floor, left = ctx.size["floors"][name], ctx.budget.left()
        if left < floor:
            ctx.report.finish(name, "skipped", reason=f"needs at least {floor:.0f} s to measure its first epoch; "
                                                      f"{max(left, 0):.0f} s of the budget left")
            continue
        print(f"[plan] {name}: starting with {left:.0f} s left", flush=True)
        started = time.perf_counter()
        try:
            run(ctx)
        except SkipSection as reason:
            ctx.report.finish(name, "skipped", reason=str(reason))
        except Exception:
            ctx.report.finish(name, "failed", error=traceback.format_exc()[-3000:])
        section = ctx.report.section(name)
        section["section_s"] = time.perf_counter() - started
        if section["status"] == "running":
            ctx.report.finish(name, "done")
        ctx.report.data["meta"]["elapsed_s"] = ctx.budget.elapsed()
        ctx.report.write()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the plumbing")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole check must end within (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--skip-done", metavar="PREVIOUS.json",
                        help="carry over the sections an earlier run finished; run only the others")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (a .txt summary beside it); default $OUT/gpu_check.json, else results/gpu/")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds asked per section (default 3; dry 1)")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = dict(DRY if args.dry_run else FULL)
    if args.ddp_worker:
        ddp_worker(size, Path(args.ddp_out))
        return {}
    budget = Budget(args.budget_s)  # refuses a bad budget before anything runs
    previous = load_previous(args.skip_done) if args.skip_done else None
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
        size["rounds"] = args.rounds
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cudnn pick its fastest convolutions
    else:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU plumbing check")

    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry_run": args.dry_run, "budget_s": args.budget_s,
            "sizes": size, "command": " ".join(sys.argv), **environment(device)}
    report = Report(args.out or default_out(), meta, previous)
    print(f"gpu_check on {meta['device_name']} ({meta['machine']}), budget {args.budget_s:.0f} s"
          + (", DRY RUN (figures mean nothing)" if args.dry_run else ""), flush=True)
    started = time.perf_counter()
    load_cifar10(download=False)  # decoded once here (and cached on disk) before the blog's workers read it
    meta["data_load_s"] = time.perf_counter() - started
    report.write()
    run_sections(Context(size, device, budget, report, args.dry_run), args.skip_done)
    meta["elapsed_s"] = budget.elapsed()
    report.write()
    print(report.summary(), end="")
    print(f"written to {report.out} and {report.summary_path}")
    return report.data


if __name__ == "__main__":
    main()
