"""How long `learn.lr_find()` (100 iterations) takes beside one training epoch, for LeNet on Fashion-MNIST.

The sweep trains up to 100 batches (fewer when the loss diverges first; an epoch at bs=128 has 469) and also pays
for the snapshot and its restore (weights, optimizer, RNGs, loaders) and one host sync per batch (the divergence
test reads each loss). Each figure is the median of `--repeats` runs, after a warm-up run of each.

    python benchmarks/lr_find_time.py [--bs 128] [--repeats 3] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

from cyclr import Callback, CancelValidException, Learner, accuracy, fashion_mnist, lenet, sgd


class SkipValidation(Callback):
    def before_validate(self, learn):
        raise CancelValidException()


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dls = fashion_mnist(bs=args.bs, seed=0, device=args.device)
    learn = Learner(lenet(), dls, nn.CrossEntropyLoss(), opt_func=sgd,
                    metrics=[accuracy], device=args.device, progress=False)
    n_batches = len(dls.train)

    swept = []

    def sweep():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a warm-up curve may look flat; only the time matters here
            swept.append(len(learn.lr_find(num_it=100).lrs))  # fewer than 100 when the loss diverged first

    def epoch():
        learn.fit(1, lr=0.05)

    def train_only_epoch():
        # The training phase alone: the same work per batch as the sweep, without validation.
        learn.fit(1, lr=0.05, cbs=[SkipValidation()])

    sweep(), epoch()  # warm-up: first-call costs (imports, allocator) out of the figures
    lr_find_s = statistics.median(_timed(sweep) for _ in range(args.repeats))
    epoch_s = statistics.median(_timed(epoch) for _ in range(args.repeats))
    train_s = statistics.median(_timed(train_only_epoch) for _ in range(args.repeats))

    per_batch = train_s / n_batches
    n_swept = statistics.median(swept[1:])
    print(f"LeNet / Fashion-MNIST, bs={args.bs}, device={learn.device}, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"lr_find(num_it=100)            {lr_find_s:7.2f} s  ({lr_find_s / epoch_s:.2f} x one epoch; "
          f"{n_swept:g} iterations before it stopped)")
    print(f"one epoch (train + validation) {epoch_s:7.2f} s  ({n_batches} training batches)")
    print(f"one epoch, training only       {train_s:7.2f} s  ({1e3 * per_batch:.1f} ms per batch)")
    print(f"lr_find beyond its {n_swept:g} training batches: {lr_find_s - n_swept * per_batch:+.2f} s "
          "(snapshot, restore, a host sync per batch)")


if __name__ == "__main__":
    main()
