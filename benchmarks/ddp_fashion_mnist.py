"""Data-parallel training against one process: LeNet on the real Fashion-MNIST, the same global batch size.

    python benchmarks/ddp_fashion_mnist.py [--epochs 3] [--bs 256] [--max-lr 0.1] [--single-threads 2 1]

Trains `fit_one_cycle` in one process with batch `bs` (one run per `--single-threads` value), then the same training
with torchrun on 2 processes (CPU, gloo) of 1 thread each with batch `bs / 2` each, and prints the validation
accuracies and times. With the in-memory loader the two processes' k-th batches together are exactly the single
process's k-th batch, so the runs differ only by floating-point rounding (gradients averaged over 2 halves instead of
computed over the whole batch); the accuracies must agree within 1 point (the exit code says whether they did).

Times: `fit` is the training itself (timed by rank 0 in the distributed run), `wall` adds starting the processes,
importing torch and loading the data; every run is a fresh subprocess. On a machine with few cores, 2 processes of 1
thread each are no faster than one process using them all: the speed-up comes with more cores, GPUs or machines.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOLERANCE_POINTS = 1.0


def train(epochs: int, bs: int, max_lr: float, seed: int) -> dict:
    """One run (in each process under torchrun): returns the final validation accuracy and the fit's time."""
    import torch

    from cyclr import Learner, accuracy, fashion_mnist, lenet, sgd

    torch.manual_seed(seed)
    learn = Learner(lenet(), fashion_mnist(bs=bs, seed=seed), torch.nn.CrossEntropyLoss(), opt_func=sgd,
                    metrics=[accuracy],
                    device="cpu", progress=False)
    start = time.perf_counter()
    learn.fit_one_cycle(epochs, max_lr=max_lr)
    seconds = time.perf_counter() - start
    return {"accuracy": learn.recorder.epoch_rows[-1]["accuracy"], "fit_seconds": seconds,
            "world_size": learn.world_size, "batches_per_epoch": len(learn.dls.train),
            "threads": torch.get_num_threads(), "is_main_process": learn.is_main_process}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, n_proc: int, threads: int) -> dict:
    """Run this script's worker in `n_proc` processes of `threads` threads each (torchrun when n_proc > 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        launcher = [sys.executable]
        if n_proc > 1:
            launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={n_proc}", "--master_addr=127.0.0.1",
                         f"--master_port={_free_port()}"]
        cmd = launcher + [__file__, "--worker", "--epochs", str(args.epochs), "--bs", str(args.bs // n_proc),
                          "--max-lr", str(args.max_lr), "--seed", str(args.seed), "--result", str(result_path)]
        # Threads set explicitly: on a busy machine more threads than free cores make torch's CPU kernels crawl.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        wall = time.perf_counter() - start
        result = json.loads(result_path.read_text())
    result["wall_seconds"] = wall
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bs", type=int, default=256, help="global batch size (split over the processes)")
    parser.add_argument("--max-lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single-threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                        help="threads of the single-process run(s), one run per value (default: all cores)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # one of the torchrun processes
        result = train(args.epochs, args.bs, args.max_lr, args.seed)
        if result["is_main_process"]:
            Path(args.result).write_text(json.dumps(result))
        return 0

    n_proc = 2
    if args.bs % n_proc:
        parser.error(f"--bs must be divisible by the {n_proc} processes, got {args.bs}")
    runs = [(f"1 process, {t} thread{'s' if t > 1 else ''}", launch(args, 1, t), args.bs) for t in args.single_threads]
    ddp = launch(args, n_proc, 1)
    runs.append((f"{n_proc} processes (torchrun), 1 thread each", ddp, args.bs // n_proc))

    print(f"\nLeNet, Fashion-MNIST (60000 train / 10000 valid), fit_one_cycle({args.epochs}, max_lr={args.max_lr}), "
          f"global batch {args.bs}, {os.cpu_count()} CPU cores")
    print(f"{'run':<40}{'batch/process':>14}{'steps/epoch':>12}{'accuracy':>10}{'fit s':>8}{'wall s':>8}")
    for name, r, bs in runs:
        print(f"{name:<40}{bs:>14}{r['batches_per_epoch']:>12}{r['accuracy']:>10.4f}{r['fit_seconds']:>8.1f}"
              f"{r['wall_seconds']:>8.1f}")
    single = runs[0][1]
    diff = 100 * (ddp["accuracy"] - single["accuracy"])
    ok = abs(diff) <= TOLERANCE_POINTS
    print(f"accuracy difference: {diff:+.2f} points ({'within' if ok else 'NOT within'} {TOLERANCE_POINTS:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
