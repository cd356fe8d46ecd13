"""What TerminateOnNaNCallback costs per batch, two ways.

1. Whole epochs: the default guard (loss and gradients tested, one host read per batch), the loss-only guard
   (`check_grads=False`) and no guard, each `learn.fit(1)` of LeNet on Fashion-MNIST, timed side by side in
   alternating rounds (overhead.py's method), with the plain loop as the reference. On a busy 2-core machine the
   difference is below the noise of an epoch.
2. Per batch, measured directly: the guard's own per-batch work (its `after_loss` and `before_step` hooks, called
   `--reps` times in a row on a LeNet whose gradients come from a real backward pass on a Fashion-MNIST batch), the
   median over `--blocks` blocks, in microseconds per batch; next to the median time of one whole training batch
   (forward, backward, step, zero_grad) of the same model and batch size, and their ratio.

    nice .venv/bin/python benchmarks/nan_guard.py [--rounds 7] [--threads 1]     # both
    nice .venv/bin/python benchmarks/nan_guard.py --per-batch-only [--reps 2000] [--blocks 7]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time

import torch
from overhead import Timer, alternate_rounds, machine, plain_epoch, print_table, same_batches

from cyclr import Learner, TerminateOnNaNCallback, accuracy, fashion_mnist, lenet, sgd


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-batch-only", action="store_true", help="only the direct per-batch measurement (fast)")
    parser.add_argument("--reps", type=int, default=2000, help="guard calls per timed block")
    parser.add_argument("--blocks", type=int, default=7, help="timed blocks (after one untimed warm-up block)")
    parser.add_argument("--batches", type=int, default=100, help="training batches per timed block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dls = fashion_mnist(bs=args.bs)
    loss_func = torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    initial = lenet()
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    if not args.per_batch_only:
        epoch_rounds(args, dls, loss_func, initial)
    per_batch(args, dls, loss_func, initial)


def epoch_rounds(args, dls, loss_func, initial) -> None:
    """Whole epochs with each guard and without, side by side, and the plain loop."""
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
    print()


def per_batch(args, dls, loss_func, initial) -> None:
    """The guard's hooks timed on their own, against one whole training batch of the same model and batch."""
    learn = Learner(copy.deepcopy(initial), same_batches(dls), loss_func, opt_func=sgd, lr=0.05, device="cpu",
                    progress=False)
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, TerminateOnNaNCallback)])
    learn.create_opt()
    xb, yb = next(iter(learn.dls.train))

    def train_batch():
        learn.loss = loss_func(learn.model(xb), yb)
        learn.loss.backward()
        learn.opt.step()
        learn.opt.zero_grad(set_to_none=True)

    batch = median_per_call(train_batch, args.batches, args.blocks)
    learn.model.train()
    learn.training = True
    learn.set_counters(epoch=0, iter=0, train_iter=0)
    learn.loss = loss_func(learn.model(xb), yb)
    learn.loss.backward()  # real gradients, left in place for the guard's test
    n_params = sum(p.numel() for p in learn.model.parameters())
    print(f"TerminateOnNaNCallback per batch, measured directly: LeNet ({n_params:,} parameters, CPU), one "
          f"Fashion-MNIST batch of {len(yb)}, {args.threads} thread(s); median over {args.blocks} blocks of "
          f"{args.reps} guard calls / {args.batches} training batches")
    print(f"{'':<36} {'wall us':>9} {'min..max over blocks':>22} {'cpu us':>9} {'% of a batch: wall':>19} "
          f"{'cpu':>7}")
    print(f"{'one training batch (fwd+bwd+step)':<36} {batch.wall:9.1f} {batch.spread:>22} {batch.cpu:9.1f}")
    for name, guard in (("guard: loss + grads (default)", TerminateOnNaNCallback()),
                        ("guard: loss only (check_grads=False)", TerminateOnNaNCallback(check_grads=False))):
        guard.before_fit(learn)

        def hooks(guard=guard):  # what the guard runs on each training batch
            guard.after_loss(learn)
            guard.before_step(learn)

        cost = median_per_call(hooks, args.reps, args.blocks)
        print(f"{name:<36} {cost.wall:9.2f} {cost.spread:>22} {cost.cpu:9.2f} {100 * cost.wall / batch.wall:18.3f}% "
              f"{100 * cost.cpu / batch.cpu:6.3f}%")
    print("% of a batch: the guard's median time per batch / one training batch's median time")


def median_per_call(body, calls: int, blocks: int) -> Timer:
    """Microseconds per call of `body()` (wall and CPU), each the median over `blocks` timed blocks of `calls`
    calls, after one untimed warm-up block; `spread` the wall range over the blocks."""
    walls, cpus = [], []
    for block in range(blocks + 1):
        with Timer() as timer:
            for _ in range(calls):
                body()
        if block > 0:
            walls.append(timer.wall / calls * 1e6)
            cpus.append(timer.cpu / calls * 1e6)
    result = Timer()
    result.wall, result.cpu = statistics.median(walls), statistics.median(cpus)
    result.spread = f"{min(walls):.4g}..{max(walls):.4g}"  # how noisy the machine was
    return result


if __name__ == "__main__":
    main()
