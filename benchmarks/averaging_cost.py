"""What the averaging callbacks cost per training step: `fit_one_cycle(1)` with and without each of them, side by
side in one process (alternating rounds, medians of the per-round ratios), on

- `--model mlp`: the small MLP of `peers.py --model mlp` (16 -> 32 -> 2, ~600 parameters, batch 64, synthetic data),
  where the framework's Python is what a step costs: the worst case for a per-step callback;
- `--model lenet`: LeNet on real Fashion-MNIST (first `--n-train` images, batch 256), a model of the reproduction.

Contenders: `base` (the default callbacks and the one-cycle scheduler); `+EMA` (updated every step, validated each
epoch: `validate=False` times the update alone with `+EMA no-valid`); `+SWA every step` (the worst case: averaging
after every step from the start, then at the end one extra validation of the mean, and a batch-norm pass where there
is batch norm); `+SWA every epoch` (the paper's); `+SnapshotEnsemble` (memory; one snapshot at the cycle's end).

    nice .venv/bin/python benchmarks/averaging_cost.py [--model mlp|lenet] [--rounds 7] [--threads 1]
    .venv/bin/python benchmarks/averaging_cost.py --model lenet --n-train 60000 --device cuda     # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time

import torch
from overhead import alternate_rounds, machine, print_table, same_batches
from torch import nn

from cyclr import EMA, SWA, Learner, SnapshotEnsemble, accuracy, fashion_mnist, lenet, sgd, synthetic_classification

CONTENDERS = {
    "base": lambda: [],
    "+EMA": lambda: [EMA(decay=0.999)],
    "+EMA no-valid": lambda: [EMA(decay=0.999, validate=False)],
    "+SWA every step": lambda: [SWA(start=0, every=1, swap=False)],
    "+SWA every epoch": lambda: [SWA(start=0, swap=False)],
    "+SnapshotEnsemble": lambda: [SnapshotEnsemble()],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("mlp", "lenet"), default="mlp")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after one untimed warm-up round)")
    parser.add_argument("--n-train", type=int, default=12000, help="lenet: first N Fashion-MNIST training images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the data, the models and the averages live")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    if args.model == "mlp":
        dls = synthetic_classification(n_train=64 * 200, n_valid=64 * 10, n_features=16, n_classes=2, bs=64,
                                       device=device)
        initial = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
        lr = 0.01
    else:
        dls = fashion_mnist(bs=256, n_train=args.n_train, n_valid=2000, device=device)
        initial = lenet()
        lr = 0.05
    devnull = open(os.devnull, "w")  # noqa: SIM115 -- kept open for the whole run

    def contender(make_cbs):
        learn = Learner(copy.deepcopy(initial), same_batches(dls), nn.CrossEntropyLoss(), opt_func=sgd, lr=lr,
                        metrics=[accuracy], device=device, progress=False)

        def one_fit():
            with contextlib.redirect_stdout(devnull):
                learn.fit_one_cycle(1, lr, cbs=make_cbs())
            return {"valid_loss": learn.recorder.epoch_rows[-1]["valid_loss"]}

        return one_fit

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    timings, last = alternate_rounds({name: contender(make) for name, make in CONTENDERS.items()}, args.rounds,
                                     sync=sync)
    n_steps = len(dls.train)
    n_params = sum(p.numel() for p in initial.parameters())
    print(f"{args.model} ({n_params} parameters), {len(dls.train.y)} train / {len(dls.valid.y)} valid samples, "
          f"{n_steps} steps per fit_one_cycle(1), {args.rounds} rounds after a warm-up round, device {device}")
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print_table(timings, "base", {name: f"valid_loss {v['valid_loss']:.4f}" for name, v in last.items()},
                "last fit", n_steps=n_steps)


if __name__ == "__main__":
    main()
