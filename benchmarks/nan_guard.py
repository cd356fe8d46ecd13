"""What TerminateOnNaNCallback costs per batch: the default guard (loss and gradients tested, one host read per
batch), the loss-only guard (`check_grads=False`) and no guard, each `learn.fit(1)` of LeNet on Fashion-MNIST,
timed side by side in alternating rounds (overhead.py's method), with the plain loop as the reference.

    nice .venv/bin/python benchmarks/nan_guard.py [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics

import torch
from overhead import alternate_rounds, plain_epoch, print_table, same_batches

from cyclr.callbacks import TerminateOnNaNCallback
from cyclr.data import fashion_mnist
from cyclr.learner import Learner, accuracy, lenet, sgd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dls = fashion_mnist(bs=args.bs)
    loss_func = torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    initial = lenet()

    def new_learner(guard):
        learn = Learner(copy.deepcopy(initial), same_batches(dls), loss_func, opt_func=sgd, lr=0.05,
                        metrics=[accuracy], progress=False)
        learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, TerminateOnNaNCallback)])
        if guard is not None:
            learn.add_cbs([guard])
        return learn

    learners = {"guard: loss + grads": new_learner(TerminateOnNaNCallback()),
                "guard: loss only": new_learner(TerminateOnNaNCallback(check_grads=False)),
                "no guard": new_learner(None)}
    plain_model = copy.deepcopy(initial)
    plain_opt = sgd(plain_model.parameters(), lr=0.05)  # cyclr's sgd: momentum 0.9, as the learners'
    plain_dls = same_batches(dls)
    contenders = {"plain": lambda: plain_epoch(plain_model, plain_opt, loss_func, plain_dls.train, plain_dls.valid)}
    devnull = open(os.devnull, "w")  # noqa: SIM115
    for name, learn in learners.items():
        def run(learn=learn):
            with contextlib.redirect_stdout(devnull):
                learn.fit(1)
            return {"accuracy": learn.recorder.epoch_rows[-1]["accuracy"]}
        contenders[name] = run
    names = list(contenders)
    timings, last = alternate_rounds(contenders, args.rounds)
    print(f"LeNet, Fashion-MNIST, bs={args.bs}, SGD momentum 0.9, one epoch + validation, {args.rounds} rounds, "
          f"{args.threads} thread(s)")
    print_table(timings, "plain", {n: f"accuracy {last[n].get('accuracy', float('nan')):.4f}" for n in names},
                "last epoch")
    n_batches = len(dls.train)
    for name in ("guard: loss + grads", "guard: loss only"):
        per_round = [(g.cpu - b.cpu) / n_batches * 1e6 for g, b in zip(timings[name], timings["no guard"],
                                                                       strict=True)]
        print(f"{name}: {statistics.median(per_round):+.1f} us CPU per batch over no guard (median over rounds)")


if __name__ == "__main__":
    main()
