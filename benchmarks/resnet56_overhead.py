"""What `fit_one_cycle` costs on a bigger model: ResNet-56 on a CIFAR-10 subset, cyclr against a plain loop.

Each round times one epoch (training with the one-cycle policy, then a validation pass) of each contender, in
alternating order, in this one process; the per-round ratios to the plain loop are summarised by their median.

- plain: a hand-written loop over cyclr's in-memory CIFAR-10 batches (the same augmentation: padding-4 crop and flip
         per batch), SGD momentum 0.9, torch's `OneCycleLR` stepped per batch, validation loss and accuracy summed
         on the device and read once;
- cyclr: `learn.fit_one_cycle(1, max_lr)`, default callbacks (Recorder, progress) and `metrics=[accuracy]`.

Both start from the same ResNet-56 weights and iterate loaders over the same tensors with the same seed, so epoch k
runs the same batches with the same crops and flips. Target (issue 16): cyclr / plain <= 1.03.

    nice .venv/bin/python benchmarks/resnet56_overhead.py [--rounds 5] [--n-train 1024] [--bs 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import alternate_rounds, machine, plain_epoch, print_table  # noqa: E402

from cyclr import (  # noqa: E402  # noqa: E402
    DataLoaders,
    InMemoryLoader,
    Learner,
    accuracy,
    resnet56,  # noqa: E402
    sgd,
)
from cyclr.data.cifar10 import cifar10  # noqa: E402

PCT_START, DIV, FINAL_DIV = 0.3, 25.0, 25e4  # torch's final_div_factor is FINAL_DIV / DIV


def same_batches(dls: DataLoaders, seed: int = 0) -> DataLoaders:
    """New loaders over the same uint8 tensors, transforms and seed: epoch k yields the same augmented batches."""
    train, valid = dls.train, dls.valid
    return DataLoaders(
        InMemoryLoader(train.x, train.y, train.bs, shuffle=True, seed=seed, batch_tfm=train.batch_tfm),
        InMemoryLoader(valid.x, valid.y, valid.bs, shuffle=False, seed=seed, batch_tfm=valid.batch_tfm),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one untimed warm-up round)")
    parser.add_argument("--bs", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="max_lr of the one cycle")
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--n-valid", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads; 1 is steadier on a shared machine")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    dls = cifar10(bs=args.bs, n_train=args.n_train, n_valid=args.n_valid, device=device)
    loss_func = torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    initial = resnet56().to(device)

    plain_model = copy.deepcopy(initial)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=args.lr, momentum=0.9)
    plain_dls = same_batches(dls)

    def run_plain():
        # A fresh one cycle per epoch, as fit_one_cycle(1) builds one (momentum 0.95 -> 0.85 -> 0.95 in both).
        sched = torch.optim.lr_scheduler.OneCycleLR(plain_opt, max_lr=args.lr, total_steps=len(plain_dls.train),
                                                    pct_start=PCT_START, div_factor=DIV,
                                                    final_div_factor=FINAL_DIV / DIV)
        return plain_epoch(plain_model, plain_opt, loss_func, plain_dls.train, plain_dls.valid, sched)

    learn = Learner(copy.deepcopy(initial), same_batches(dls), loss_func, opt_func=sgd, lr=args.lr, metrics=[accuracy],
                    device=device)
    devnull = open(os.devnull, "w")  # noqa: SIM115 -- kept open for the whole run

    def run_cyclr():
        with contextlib.redirect_stdout(devnull):
            learn.fit_one_cycle(1, args.lr, div_factor=DIV, pct_start=PCT_START, final_div=FINAL_DIV)
        row = learn.recorder.epoch_rows[-1]
        return {"train_loss": row["train_loss"], "valid_loss": row["valid_loss"], "accuracy": row["accuracy"]}

    contenders = {"plain": run_plain, "cyclr": run_cyclr}
    names = list(contenders)
    timings, last = alternate_rounds(contenders, args.rounds,
                                     sync=torch.cuda.synchronize if device.type == "cuda" else None)

    print(f"ResNet-56, CIFAR-10 subset ({len(dls.train.y)} train / {len(dls.valid.y)} valid images, crop + flip), "
          f"bs={args.bs}, one cycle max_lr={args.lr} SGD momentum 0.9, one epoch + validation per timing, "
          f"{args.rounds} rounds after a warm-up round; device {device}")
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print_table(timings, "plain", {name: ", ".join(f"{k} {v:.4f}" for k, v in last[name].items()) for name in names},
                "last epoch")
    print("target: cyclr <= 1.03x plain")


if __name__ == "__main__":
    main()
