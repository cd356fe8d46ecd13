"""What `Learner.fit` costs on top of the loop you would write yourself: LeNet, real Fashion-MNIST, one epoch.

Each round times one epoch (training plus a validation pass) of every contender, in alternating order, in this one
process, so that a busy machine slows them all alike; the per-round ratios to the plain loop are summarised by their
median. Contenders:

- plain:           `for xb, yb in train: loss_func(model(xb), yb).backward(); opt.step(); opt.zero_grad()`, then a
                   validation pass summing loss and correct predictions on the device, read once at the end;
- learner:         `learn.fit(1)` with the default callbacks (Recorder, ProgressCallback) and `metrics=[accuracy]`;
                   when stdout is not a terminal the progress callback prints only the epoch table;
- learner+bars:    the same with `ProgressCallback(show_bars=True)`, so fastprogress redraws its bars as it does in a
                   terminal (what it writes goes to /dev/null here, as the table does in every contender).

Every contender has its own LeNet (same initial weights), its own SGD (momentum 0.9, same lr) and its own
`InMemoryLoader`s over the same tensors with the same seed, so epoch k of each runs the same batches.
Target (issue 2): learner / plain <= 1.05.

    nice .venv/bin/python benchmarks/overhead.py [--rounds 7] [--bs 256] [--n-train 60000] [--threads 1]
    .venv/bin/python benchmarks/overhead.py --device cuda [--channels-last] [--compile]     # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import time

import torch

from cyclr import DataLoaders, InMemoryLoader, Learner, ProgressCallback, accuracy, fashion_mnist, lenet, sgd


def same_batches(dls: DataLoaders, seed: int = 0) -> DataLoaders:
    """New loaders over the same tensors and seed: epoch k yields the same batches as every other copy's epoch k."""
    train, valid = dls.train, dls.valid
    return DataLoaders(
        InMemoryLoader(train.x, train.y, train.bs, shuffle=True, seed=seed),
        InMemoryLoader(valid.x, valid.y, valid.bs, shuffle=False, seed=seed),
    )


def plain_epoch(model, opt, loss_func, train, valid, scheduler=None, channels_last=False) -> dict[str, float]:
    """One epoch as a careful user writes it: no host sync per batch, one at the end of the epoch."""
    device = next(model.parameters()).device
    model.train()
    train_loss, n_train = torch.zeros((), device=device), 0
    for xb, yb in train:
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = loss_func(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()
        train_loss += loss.detach() * len(yb)
        n_train += len(yb)
    model.eval()
    valid_loss, correct, n_valid = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device), 0
    with torch.no_grad():
        for xb, yb in valid:
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            pred = model(xb)
            valid_loss += loss_func(pred, yb) * len(yb)
            correct += (pred.argmax(dim=1) == yb).sum()
            n_valid += len(yb)
    return {"train_loss": train_loss.item() / n_train, "valid_loss": valid_loss.item() / n_valid,
            "accuracy": correct.item() / n_valid}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (after one untimed warm-up round)")
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--n-train", type=int, default=None, help="first N training images (default: all 60000)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 is steadier on a machine shared with others")
    parser.add_argument("--device", default="cpu", help="where the data, the models and the training live")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and batches, in every contender")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model, in every contender")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    dls = fashion_mnist(bs=args.bs, n_train=args.n_train, device=device)  # data resident on the device
    loss_func = torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    initial = lenet().to(device)

    plain_model = copy.deepcopy(initial)
    if args.channels_last:
        plain_model = plain_model.to(memory_format=torch.channels_last)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=args.lr, momentum=0.9)
    plain_forward = torch.compile(plain_model) if args.compile else plain_model
    plain_dls = same_batches(dls)

    def new_learner(**kwargs):
        return Learner(copy.deepcopy(initial), same_batches(dls), loss_func, opt_func=sgd,
                       lr=args.lr, metrics=[accuracy],
                       device=device, channels_last=args.channels_last, compile=args.compile, **kwargs)

    learn = new_learner()
    learn_bars = new_learner(progress=False, cbs=[ProgressCallback(show_bars=True)])
    devnull = open(os.devnull, "w")  # noqa: SIM115 -- kept open for the whole run

    def run_learner(lrn):
        with contextlib.redirect_stdout(devnull):
            lrn.fit(1)
        row = lrn.recorder.epoch_rows[-1]
        return {"valid_loss": row["valid_loss"], "accuracy": row["accuracy"]}

    contenders = {
        "plain": lambda: plain_epoch(plain_forward, plain_opt, loss_func, plain_dls.train, plain_dls.valid,
                                     channels_last=args.channels_last),
        "learner": lambda: run_learner(learn),
        "learner+bars": lambda: run_learner(learn_bars),
    }
    names = list(contenders)
    timings, last = alternate_rounds(contenders, args.rounds)

    n_train = len(dls.train.y)
    options = "".join(f", {o}" for o in ("channels_last", "compile") if getattr(args, o))
    print(f"LeNet, Fashion-MNIST ({n_train} train / {len(dls.valid.y)} valid images), bs={args.bs}, SGD lr={args.lr} "
          f"momentum 0.9, one epoch + validation per timing, {args.rounds} rounds after a warm-up round; "
          f"device {device}{options}")
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print_table(timings, "plain", {name: ", ".join(f"{k} {v:.4f}" for k, v in last[name].items()) for name in names},
                "last epoch")
    print("target: learner <= 1.05x plain")


def alternate_rounds(contenders: dict, rounds: int, sync=None) -> tuple[dict[str, list], dict]:
    """Each contender once per round, in alternating order (so a load that changes over time slows all alike),
    after one untimed warm-up round; `sync()` inside the timing for asynchronous devices. Returns each contender's
    Timers and its last result."""
    names = list(contenders)
    timings, last = {name: [] for name in names}, {}
    for round_index in range(rounds + 1):
        for name in names if round_index % 2 == 0 else names[::-1]:
            with Timer() as timer:
                last[name] = contenders[name]()
                if sync is not None:
                    sync()
            if round_index > 0:
                timings[name].append(timer)
    return timings, last


class Timer:
    """Wall time and CPU time (of this process, all its threads) of a block. On a machine shared with other jobs
    the wall time swings with their load; the CPU time much less, so both are reported."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def print_table(timings: dict[str, list[Timer]], base: str, notes: dict[str, str], notes_title: str,
                n_steps: int | None = None) -> None:
    """Medians of wall and CPU seconds, and the median over rounds of (time / base's time in the same round); with
    `n_steps`, also the median over rounds of the CPU microseconds a step over base's in the same round."""
    per_step = f" {'us/step':>8}" if n_steps else ""
    print(f"{'':<22} {'wall s':>8} {'min':>7} {'max':>7} {'x ' + base:>9} {'cpu s':>8} {'x ' + base:>9}{per_step}"
          f"  {notes_title}")
    for name, runs in timings.items():
        wall, cpu = [t.wall for t in runs], [t.cpu for t in runs]
        pairs = list(zip(runs, timings[base], strict=True))
        wall_ratio = statistics.median(t.wall / b.wall for t, b in pairs)
        cpu_ratio = statistics.median(t.cpu / b.cpu for t, b in pairs)
        extra = f" {statistics.median((t.cpu - b.cpu) / n_steps * 1e6 for t, b in pairs):+8.1f}" if n_steps else ""
        print(f"{name:<22} {statistics.median(wall):8.3f} {min(wall):7.3f} {max(wall):7.3f} {wall_ratio:8.3f}x "
              f"{statistics.median(cpu):8.3f} {cpu_ratio:8.3f}x{extra}  {notes[name]}")
    print(f"x {base}: median over rounds of (time / {base}'s time in the same round), wall-clock and CPU time"
          + (f"; us/step: CPU microseconds a step over {base}'s, {n_steps} steps" if n_steps else ""))


if __name__ == "__main__":
    main()
