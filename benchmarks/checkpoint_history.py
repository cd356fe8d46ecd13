"""What the training history costs a checkpoint: file size, save and load time at 10k, 100k and 1M recorded steps,
and the Recorder's memory per recorded step.

Each size is a real fit (a 2->2 linear model, one sample per batch, so a step costs little more than the loop's own
work) of that many optimizer steps, then `learn.save` / `learn.load` timed (median of 3). The Recorder's memory per
step is measured with tracemalloc over a 10k-step fit: the bytes it still holds afterwards, divided by the steps.
Target (issue 14): a checkpoint's size and save time do not grow with the run's length; <= 64 bytes per step.

    nice .venv/bin/python benchmarks/checkpoint_history.py [--steps 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch import nn

from cyclr.data import DataLoaders
from cyclr.learner import Learner


def learner(n_steps: int) -> Learner:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n_steps, 2, generator=generator)
    y = (x[:, 0] > 0).long()
    dls = DataLoaders.from_tensors(x, y, x[:64], y[:64], bs=1, valid_bs=64, seed=0)
    return Learner(nn.Linear(2, 2), dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.01, progress=False)


def timed(fn, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recorder_bytes_per_step(n_steps: int) -> float:
    learn = learner(n_steps)
    gc.collect()
    tracemalloc.start()
    learn.fit(1)
    gc.collect()
    # What the recorder holds: measured as the memory freed when its history is dropped.
    before_drop = tracemalloc.get_traced_memory()[0]
    learn.recorder.load_state_dict(learner(1).recorder.state_dict())
    gc.collect()
    after_drop = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (before_drop - after_drop) / n_steps


def measure(n_steps: int, folder: Path) -> dict:
    learn = learner(n_steps)
    start = time.perf_counter()
    learn.fit(1)
    fit_s = time.perf_counter() - start
    path = folder / f"ckpt_{n_steps}.pt"
    save_s = timed(lambda: learn.save(path))
    load_s = timed(lambda: learner(1).load(path))
    return {"steps": n_steps, "fit_s": round(fit_s, 2), "checkpoint_bytes": path.stat().st_size,
            "save_s": round(save_s, 4), "load_s": round(load_s, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.steps:
            rows.append(measure(n, Path(folder)))
            print(json.dumps(rows[-1]), flush=True)
    per_step = recorder_bytes_per_step(10_000)
    print(f"Recorder memory per recorded step (10k-step fit): {per_step:.0f} bytes")
    print(f"{'steps':>9} {'checkpoint':>12} {'save s':>8} {'load s':>8}")
    for r in rows:
        print(f"{r['steps']:>9} {r['checkpoint_bytes']:>12,} {r['save_s']:>8.3f} {r['load_s']:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "recorder_bytes_per_step": per_step}, indent=1))


if __name__ == "__main__":
    main()
