"""What the training history costs a checkpoint: file size, save and load time at 10k, 100k and 1M recorded steps,
and the Recorder's memory per recorded step.

Each size is a real fit (a 2->2 linear model, one sample per batch, so a step costs little more than the loop's own
work) of that many optimizer steps, with `SaveModelCallback(every_n_batches=1000, every_epoch=True)`: the
checkpoints a long run writes as it goes, at the same interval whatever the run's length (`--every`). Measured:
the size of the last checkpoint taken during the fit (and of the history side file beside it, when there is one),
the median time of the last three saves taken inside the fit (timed by callbacks just before and after
SaveModelCallback), and the time to load that last checkpoint (median of 3). Then, for comparison, a checkpoint
taken between fits (`learn.save(path)`): size, save and load time. The Recorder's memory per step is measured with
tracemalloc over a 10k-step fit: the bytes it still holds afterwards (freed when its history is dropped), divided
by the steps.
Target (issue 14): a checkpoint's size and save time do not grow with the run's length; <= 64 bytes per step.

    nice .venv/bin/python benchmarks/checkpoint_history.py [--steps 10000 100000 1000000]

It only uses APIs older than the side file, so the same script measures an older cyclr for the "before" figures.
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

from cyclr import Callback, DataLoaders, Learner, SaveModelCallback


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


class SaveTimer:
    """Two callbacks around SaveModelCallback (order 90): the time its after_batch takes, at each step it saves."""

    def __init__(self, every: int):
        timer = self

        class Start(Callback):
            order = 89

            def after_batch(self, learn):
                timer.start = time.perf_counter()

        class Stop(Callback):
            order = 91

            def after_batch(self, learn):
                if learn.training and (learn.train_iter + 1) % every == 0:
                    timer.times.append(time.perf_counter() - timer.start)

        self.start, self.times, self.cbs = 0.0, [], [Start(), Stop()]


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


def measure(n_steps: int, every: int, folder: Path) -> dict:
    run = folder / f"run_{n_steps}"
    learn = learner(n_steps)
    timer = SaveTimer(every)
    start = time.perf_counter()
    learn.fit(1, cbs=[SaveModelCallback(run / "last.pt", every_epoch=True, every_n_batches=every), *timer.cbs])
    fit_s = time.perf_counter() - start
    # last.pt now holds the fit's last checkpoint, taken in after_epoch (still inside the fit).
    side = sum(p.stat().st_size for p in run.glob("cyclr-history-*.bin"))
    in_fit = {"in_fit_bytes": (run / "last.pt").stat().st_size, "side_file_bytes": side,
              "in_fit_save_s": round(statistics.median(timer.times[-3:]), 4),
              "in_fit_load_s": round(timed(lambda: learner(1).load(run / "last.pt")), 4)}
    between = folder / f"between_{n_steps}.pt"
    save_s = timed(lambda: learn.save(between))
    load_s = timed(lambda: learner(1).load(between))
    return {"steps": n_steps, "fit_s": round(fit_s, 2), **in_fit, "between_fits_bytes": between.stat().st_size,
            "between_fits_save_s": round(save_s, 4), "between_fits_load_s": round(load_s, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--every", type=int, default=1000, help="steps between the checkpoints taken in the fit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.steps:
            rows.append(measure(n, args.every, Path(folder)))
            print(json.dumps(rows[-1]), flush=True)
    per_step = recorder_bytes_per_step(10_000)
    print(f"Recorder memory per recorded step (10k-step fit): {per_step:.0f} bytes")
    print(f"{'':>9} {'during the fit (SaveModelCallback)':^46} {'between fits (learn.save)':^32}")
    print(f"{'steps':>9} {'checkpoint':>11} {'side file':>11} {'save s':>8} {'load s':>8}   "
          f"{'checkpoint':>12} {'save s':>8} {'load s':>8}")
    for r in rows:
        print(f"{r['steps']:>9} {r['in_fit_bytes']:>11,} {r['side_file_bytes']:>11,} {r['in_fit_save_s']:>8.4f} "
              f"{r['in_fit_load_s']:>8.3f}   {r['between_fits_bytes']:>12,} {r['between_fits_save_s']:>8.3f} "
              f"{r['between_fits_load_s']:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "recorder_bytes_per_step": per_step}, indent=1))


if __name__ == "__main__":
    main()
