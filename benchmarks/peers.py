"""cyclr against the loop you would write yourself, fastai and Lightning: LeNet on real Fashion-MNIST (SGD), or with
`--model mlp` a small tabular MLP (16 -> 32 -> 2, synthetic data, batch 64, 3,000 steps, AdamW), where the framework's
Python per batch is what you pay for. One epoch each.

Part 1, one-cycle training. Every contender trains a fresh LeNet (the same initial weights) on standardised images
for one epoch with the one-cycle policy (max_lr, div 25, 30% warm-up, final lr max_lr/25e4, momentum 0.95 -> 0.85 ->
0.95, SGD, wd 0), then makes one validation pass (loss and accuracy). With `--model mlp` the model is the MLP, the
optimizer AdamW (betas (0.9, 0.99), eps 1e-5, wd 0.01) through every contender, the momentum schedule runs on beta1
and max_lr defaults to 0.01. The tables add each contender's CPU microseconds a step over the reference's.

- plain:            a hand-written loop over cyclr's in-memory batches, torch's OneCycleLR stepped per batch;
- plain-DataLoader: the same loop over torch's `DataLoader(TensorDataset)` (num_workers=0);
- plain-no-decay:   the plain loop with biases and norm layers in a second parameter group with weight decay 0, the
                    way a torch user writes what cyclr's default (`wd_bn_bias=False`, fastai's) does; with wd 0
                    (LeNet's SGD) it is the plain loop;
- cyclr:            `Learner(...).fit_one_cycle(1, max_lr)` with the default callbacks (Recorder, progress);
- cyclr-decay-all:  the same with `wd_bn_bias=True` (every parameter decayed, as in the one-group plain loop): with
                    weight decay (the MLP's AdamW), cyclr against plain compares the same arithmetic here, and cyclr
                    against plain-no-decay there;
- fastai:           fastai 2.8 `fit_one_cycle(1, ...)`, default callbacks, torch's SGD through `OptimWrapper`, fed the
                    same in-memory batches as cyclr (so the difference is the framework alone);
- fastai-own-dl:    the same on fastai's own `DataLoader` over the same tensors (num_workers=0);
- lightning:        a LightningModule (training_step logs the loss to the progress bar, validation_step loss and
                    accuracy) with torch's OneCycleLR stepped per batch, default Trainer (progress bar, logger,
                    sanity check) but no checkpoint file, fed the same in-memory batches;
- lightning-DataLoader: the same over `DataLoader(TensorDataset)`.

One round runs every contender once, in an order that alternates between rounds; a first, untimed round warms every
contender up, so each timed run is at least its second epoch in this process. Each run is timed around the call that
trains (the plain loop, `fit_one_cycle`, `trainer.fit`); building the model, learner or trainer is not timed. The table
gives the median time, the median over rounds of (time / plain's time in the same round), and the median accuracy.
What the frameworks print goes to /dev/null.

Part 2, the LR finder: 100 iterations from 1e-7 to `--lr-find-end`, without early stopping so every tool does the
same work (the iterations each really ran are printed): cyclr `learn.lr_find`, fastai `learn.lr_find`, Lightning's
`Tuner.lr_find` (given the validation loader too, as a `datamodule` would), torch-lr-finder's `range_test`; the time
of the call, and whether the model's weights and the optimizer's state are as before afterwards; on the chosen model
(`--model mlp`: the LR finder on the MLP).

The peers live in their own environment: `make bench-peers` builds `.venv-peers` and runs this script there.

    make bench-peers                              # or: nice .venv-peers/bin/python benchmarks/peers.py
    nice .venv-peers/bin/python benchmarks/peers.py --rounds 10 --threads 1 --contenders plain cyclr fastai
    nice -n -5 .venv/bin/python benchmarks/peers.py --model mlp --threads 1 --contenders plain cyclr
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import logging
import os
import statistics
import sys
import time
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import Timer, machine, plain_epoch, print_table, same_batches  # noqa: E402
from peers_setup import (  # noqa: E402
    DIV,
    FINAL_DIV,
    MLP_BS,
    PCT_START,
    Setup,
    fastai_learner,
    lightning_module,
    lightning_trainer,
    quiet,
    torch_loaders,
)

from cyclr import Learner, accuracy  # noqa: E402
from cyclr.learner.optimizer import norm_and_bias_params  # noqa: E402

CONTENDERS = ("plain", "plain-DataLoader", "plain-no-decay", "cyclr", "cyclr-decay-all", "fastai", "fastai-own-dl",
              "lightning", "lightning-DataLoader")


# ----- part 1: one epoch of one-cycle training ---------------------------------------------------------------------
def prepare_plain(s: Setup, use_torch_loader: bool, no_decay_group: bool = False):
    train, valid = torch_loaders(s.dls, s.args.bs) if use_torch_loader else (lambda d: (d.train, d.valid))(
        same_batches(s.dls))
    model = s.model()
    params = model.parameters()
    if no_decay_group:
        exempt = norm_and_bias_params(model)
        params = [{"params": [p for p in model.parameters() if id(p) not in exempt]},
                  {"params": [p for p in model.parameters() if id(p) in exempt], "weight_decay": 0.0}]
    opt = s.opt(params, s.args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.args.lr, total_steps=len(train), pct_start=PCT_START,
                                                div_factor=DIV, final_div_factor=FINAL_DIV / DIV)
    return lambda: plain_epoch(model, opt, s.loss_func, train, valid, sched)["accuracy"]


def prepare_cyclr(s: Setup, wd_bn_bias: bool = False):
    learn = Learner(s.model(), same_batches(s.dls), s.loss_func, opt_func=s.opt, lr=s.args.lr, metrics=[accuracy],
                    device="cpu", wd_bn_bias=wd_bn_bias)

    def run():
        learn.fit_one_cycle(1, s.args.lr, div_factor=DIV, pct_start=PCT_START, final_div=FINAL_DIV)
        return learn.recorder.epoch_rows[-1]["accuracy"]

    return run


def prepare_fastai(s: Setup, own_loader: bool):
    import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle and lr_find to Learner)

    learn = fastai_learner(s, own_loader)

    def run():
        learn.fit_one_cycle(1, s.args.lr, div=DIV, div_final=FINAL_DIV, pct_start=PCT_START)
        return float(learn.recorder.values[-1][2])

    return run


def prepare_lightning(s: Setup, use_torch_loader: bool):
    train, valid = torch_loaders(s.dls, s.args.bs) if use_torch_loader else (lambda d: (d.train, d.valid))(
        same_batches(s.dls))
    with quiet():
        module = lightning_module(s, len(train))
        trainer = lightning_trainer(s, max_epochs=1)

    def run():
        trainer.fit(module, train, valid)
        return float(trainer.callback_metrics["accuracy"])

    return run


PREPARE = {
    "plain": partial(prepare_plain, use_torch_loader=False),
    "plain-DataLoader": partial(prepare_plain, use_torch_loader=True),
    "plain-no-decay": partial(prepare_plain, use_torch_loader=False, no_decay_group=True),
    "cyclr": prepare_cyclr,
    "cyclr-decay-all": partial(prepare_cyclr, wd_bn_bias=True),
    "fastai": partial(prepare_fastai, own_loader=False),
    "fastai-own-dl": partial(prepare_fastai, own_loader=True),
    "lightning": partial(prepare_lightning, use_torch_loader=False),
    "lightning-DataLoader": partial(prepare_lightning, use_torch_loader=True),
}


def bench_training(s: Setup, names: list[str], rounds: int) -> None:
    timings = {n: [] for n in names}
    accuracies = {n: [] for n in names}
    for round_index in range(rounds + 1):
        for name in names if round_index % 2 == 0 else names[::-1]:
            run = PREPARE[name](s)
            with quiet(), Timer() as timer:
                acc = run()
            if round_index > 0:  # round 0 warms every contender up
                timings[name].append(timer)
                accuracies[name].append(acc)
        if round_index > 0:
            done = ", ".join(f"{n} {timings[n][-1].wall:.2f}s" for n in names)
            print(f"  round {round_index}/{rounds}: {done}", flush=True)

    print(f"\nOne epoch of one-cycle training + validation, medians of {rounds} rounds (after a warm-up round):")
    notes = {n: f"{statistics.median(accuracies[n]):.4f}" for n in names}
    print_table(timings, "plain" if "plain" in names else names[0], notes, "accuracy", n_steps=len(s.dls.train))


# ----- part 2: the LR finder ---------------------------------------------------------------------------------------
def same_state(a, b) -> bool:
    """Equal nested state dicts: tensors element for element, everything else by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def snapshot(model, opt) -> tuple:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()) if opt is not None else None


def restored(before: tuple, model, opt) -> str:
    weights = "yes" if same_state(before[0], model.state_dict()) else "NO"
    if opt is None:
        return f"weights {weights}"
    return f"weights {weights}, optimizer {'yes' if same_state(before[1], opt.state_dict()) else 'NO'}"


def warm_optimizer(model, opt, loss_func, loader, n: int = 3) -> None:
    """A few steps so the optimizer has momentum buffers: restoring them is part of leaving no trace."""
    for i, (xb, yb) in enumerate(loader):
        if i == n:
            break
        loss_func(model(xb), yb).backward()
        opt.step()
        opt.zero_grad()


def find_cyclr(s: Setup, num_it: int, end_lr: float):
    learn = Learner(s.model(), same_batches(s.dls), s.loss_func, opt_func=s.opt, lr=s.args.lr, metrics=[accuracy],
                    device="cpu")
    learn.create_opt()
    warm_optimizer(learn.model, learn.opt, s.loss_func, same_batches(s.dls).train)

    def run():
        before = snapshot(learn.model, learn.opt)
        result = learn.lr_find(num_it=num_it, end_lr=end_lr, stop_div=False)
        valley = result.suggestions["valley"].lr
        return len(result.lrs), restored(before, learn.model, learn.opt), f"valley {valley:.2e}"

    return run


def find_fastai(s: Setup, num_it: int, end_lr: float):
    import fastai.callback.schedule  # noqa: F401

    learn = fastai_learner(s, own_loader=False)
    learn.create_opt()
    warm_optimizer(learn.model, learn.opt, s.loss_func, same_batches(s.dls).train)

    def run():
        before = snapshot(learn.model, learn.opt)
        found = learn.lr_find(num_it=num_it, end_lr=end_lr, stop_div=False, show_plot=False)
        return len(learn.recorder.lrs), restored(before, learn.model, learn.opt), f"valley {found.valley:.2e}"

    return run


def find_lightning(s: Setup, num_it: int, end_lr: float):
    from lightning.pytorch.tuner import Tuner

    d = same_batches(s.dls)
    with quiet():
        module = lightning_module(s, len(d.train))
        trainer = lightning_trainer(s)  # no max_epochs: the sweep may need more than one epoch of a small data set

    def run():
        before = snapshot(module, None)
        lr_before = module.lr
        finder = Tuner(trainer).lr_find(module, d.train, d.valid, min_lr=1e-7, max_lr=end_lr, num_training=num_it,
                                        early_stop_threshold=None)
        lr_note = "lr kept" if module.lr == lr_before else f"module.lr set to {module.lr:.2e}"
        module.lr = lr_before
        state = restored(before, module, None) + " (its optimizer is made anew by each fit)"
        return len(finder.results["lr"]), state, lr_note

    return run


def find_torch_lr_finder(s: Setup, num_it: int, end_lr: float):
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    model = s.model()
    opt = s.opt(model.parameters(), 1e-7)
    warm_optimizer(model, opt, s.loss_func, same_batches(s.dls).train)

    def run():
        before = snapshot(model, opt)
        finder = LRFinder(model, opt, s.loss_func, device="cpu")
        finder.range_test(TrainDataLoaderIter(same_batches(s.dls).train), end_lr=end_lr, num_iter=num_it,
                          diverge_th=float("inf"))
        state = restored(before, model, opt)
        finder.reset()
        return len(finder.history["lr"]), state + f"; after reset(): {restored(before, model, opt)}", ""

    return run


FINDERS = {"cyclr": find_cyclr, "fastai": find_fastai, "lightning": find_lightning,
           "torch-lr-finder": find_torch_lr_finder}


def bench_lr_find(s: Setup, names: list[str], rounds: int, num_it: int, end_lr: float) -> None:
    timings = {n: [] for n in names}
    notes = {}
    for round_index in range(rounds + 1):
        for name in names if round_index % 2 == 0 else names[::-1]:
            run = FINDERS[name](s, num_it, end_lr)
            with quiet(), Timer() as timer:
                its, state, note = run()
            notes[name] = f"{its:>3} its; restored: {state}{'; ' + note if note else ''}"
            if round_index > 0:
                timings[name].append(timer)
    print(f"\nLR finder, {num_it} iterations from 1e-7 to {end_lr:g}, no early stop, medians of {rounds} rounds:")
    print_table(timings, "cyclr" if "cyclr" in names else names[0], notes, "iterations run, state afterwards",
                n_steps=num_it)


def available(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("lenet", "mlp"), default="lenet",
                        help="LeNet on Fashion-MNIST with SGD, or the 16-32-2 MLP on synthetic data with AdamW")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of part 1 (after a warm-up round)")
    parser.add_argument("--lr-find-rounds", type=int, default=5, help="timed rounds of part 2 (0 skips it)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="max_lr of the one cycle (LeNet 0.1, MLP 0.01)")
    parser.add_argument("--lr-find-end", type=float, default=1.0, help="last lr of the LR-finder sweeps")
    parser.add_argument("--n-train", type=int, default=None, help="first N training images (default: all 60000)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 is steadier on a machine shared with others")
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 0.01 if args.model == "mlp" else 0.1
    if args.model == "mlp":
        args.bs = MLP_BS
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    missing = {"fastai": "fastai", "lightning": "lightning", "torch-lr-finder": "torch_lr_finder"}
    absent = {name for name, module in missing.items() if not available(module)}
    # After importing lightning, which sets its loggers' levels (its handlers write to the real stderr).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in sorted(absent):
        print(f"{name} is not installed here: skipped (make bench-peers builds .venv-peers with every peer)")
    names = [n for n in args.contenders if n.split("-")[0] not in absent]

    s = Setup(args)
    versions = [f"torch {torch.__version__}"]
    for name in missing:
        if name not in absent:
            versions.append(f"{name} {importlib.metadata.version(name)}")
    print(f"{s.describe()}; {', '.join(versions)}")
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    bench_training(s, names, args.rounds)
    if args.lr_find_rounds > 0:
        finders = [n for n in FINDERS if n not in absent]
        bench_lr_find(s, finders, args.lr_find_rounds, 100, args.lr_find_end)


if __name__ == "__main__":
    main()
