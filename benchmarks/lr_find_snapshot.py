"""What the LR finder's "no trace" guarantee costs on a 25M-parameter model: snapshot + restore against the sweep.

torchvision's resnet50 (`weights=None`, 10 classes, 23.5M parameters) on small images (a CIFAR-10 subset, 32x32, the
in-memory loader), SGD with momentum, after one short epoch so that gradients and momentum buffers exist (the
snapshot then holds weights, buffers, gradients and optimizer state: the worst case). Each round, in this process:

- the parts of `learn.lr_find` timed one by one: `TrainingSnapshot(learn)` (what `lr_find` takes first), the sweep
  itself (a `fit` with `LRFinderCallback`, `--num-it` steps, no early stop) and `snapshot.restore(learn)`; each with
  its peak resident memory above the memory before it (a thread samples the RSS every 2 ms); once with the snapshot
  in memory and once through a temporary file (`snapshot_memory_limit=0`, what models above 1 GiB get);
- `learn.lr_find(num_it, stop_div=False)` whole, checked to leave the weights and the optimizer state bitwise as they
  were;
- fastai's `learn.lr_find(num_it, stop_div=False)` on the same model, weights and batches, when fastai is importable
  (run the script with `.venv-peers/bin/python`; `make bench-peers` builds it).

Target (issue 16): snapshot + restore under 5% of the sweep.

    nice .venv/bin/python benchmarks/lr_find_snapshot.py [--rounds 3] [--num-it 100] [--bs 16] [--threads 1]
    nice .venv-peers/bin/python benchmarks/lr_find_snapshot.py --threads 1      # with fastai beside it
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import Timer, machine  # noqa: E402
from resnet56_overhead import same_batches  # noqa: E402

from cyclr import (  # noqa: E402
    Learner,
    LRFinderCallback,  # noqa: E402
    sgd,
)
from cyclr.callbacks.snapshot import TrainingSnapshot  # noqa: E402
from cyclr.data.cifar10 import cifar10  # noqa: E402

START_LR, END_LR = 1e-7, 1.0


def rss_bytes() -> int:
    """This process's resident set size, from Linux's /proc (no dependency, so it runs in .venv-peers too)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The largest resident set size of this process during a block, above the RSS when the block began."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.mib = (self.peak - self.start) / 2**20


@contextlib.contextmanager
def quiet():
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def measured(fn):
    with PeakRSS() as memory, Timer() as timer:
        result = fn()
    return result, timer.wall, memory.mib


def fingerprint(learn):
    """Copies of the weights and the optimizer state, to check that a finder put them back."""
    return copy.deepcopy(learn.model.state_dict()), copy.deepcopy(learn.opt.state_dict()["state"])


def same_state(a, b) -> bool:
    weights_a, opt_a = a
    weights_b, opt_b = b
    return all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a) and all(
        torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])


def cyclr_parts(learn, num_it: int, memory_limit: int) -> dict[str, float]:
    snapshot, snap_s, snap_mib = measured(lambda: TrainingSnapshot(learn, memory_limit))
    n_epoch = -(-num_it // len(learn.dls.train))
    finder = LRFinderCallback(START_LR, END_LR, num_it, "exp", False)
    with quiet():
        _, sweep_s, sweep_mib = measured(lambda: learn.fit(n_epoch, cbs=[finder]))
    _, restore_s, restore_mib = measured(lambda: snapshot.restore(learn))
    snapshot.discard()
    return {"snapshot_s": snap_s, "sweep_s": sweep_s, "restore_s": restore_s, "snapshot_mib": snap_mib,
            "sweep_mib": sweep_mib, "restore_mib": restore_mib, "snapshot_bytes": snapshot.nbytes,
            "iterations": len(finder.lrs)}


def fastai_learner(model, dls, loss_func, lr: float, path: str):
    import fastai.callback.schedule  # noqa: F401  (adds lr_find to Learner)
    from fastai.data.core import DataLoaders as FastaiDataLoaders
    from fastai.learner import Learner as FastaiLearner
    from fastai.optimizer import OptimWrapper

    d = same_batches(dls)
    return FastaiLearner(FastaiDataLoaders(d.train, d.valid), model, loss_func=loss_func, path=path,
                         opt_func=partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9), lr=lr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-it", type=int, default=100)
    parser.add_argument("--bs", type=int, default=16)
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from torchvision.models import resnet50

    try:
        import fastai  # noqa: F401
        with_fastai = True
    except ImportError:
        with_fastai = False

    dls = cifar10(bs=args.bs, n_train=args.n_train, n_valid=args.bs, device="cpu")
    loss_func = torch.nn.CrossEntropyLoss()
    torch.manual_seed(0)
    initial = resnet50(weights=None, num_classes=10)
    n_params = sum(p.numel() for p in initial.parameters())
    learn = Learner(copy.deepcopy(initial), same_batches(dls), loss_func, opt_func=sgd,
                    lr=0.01, device="cpu", progress=False)
    with quiet():
        learn.fit(1)  # gradients and momentum buffers exist: the snapshot holds everything it can hold
    fastai_learn = None
    if with_fastai:
        fastai_learn = fastai_learner(copy.deepcopy(learn.model), dls, loss_func, 0.01, tempfile.mkdtemp())
        with quiet():
            fastai_learn.fit(1)

    rows = {"in memory": [], "through a file": []}
    whole, fastai_whole, restored = [], [], []
    for round_index in range(args.rounds):
        rows["in memory"].append(cyclr_parts(learn, args.num_it, memory_limit=1 << 40))
        rows["through a file"].append(cyclr_parts(learn, args.num_it, memory_limit=0))
        before = fingerprint(learn)
        with quiet():
            _, seconds, mib = measured(lambda: learn.lr_find(num_it=args.num_it, end_lr=END_LR, stop_div=False))
        whole.append((seconds, mib))
        restored.append(same_state(before, fingerprint(learn)))
        if fastai_learn is not None:
            fastai_before = fingerprint(fastai_learn)
            with quiet():
                _, seconds, mib = measured(lambda: fastai_learn.lr_find(num_it=args.num_it, end_lr=END_LR,
                                                                        stop_div=False, show_plot=False))
            fastai_whole.append((seconds, mib))
            restored.append(same_state(fastai_before, fingerprint(fastai_learn)))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    print(f"torchvision resnet50(weights=None, num_classes=10): {n_params / 1e6:.1f}M parameters; CIFAR-10 32x32, "
          f"bs {args.bs}, SGD momentum 0.9, {args.num_it} iterations {START_LR:g} -> {END_LR:g} without early stop; "
          f"medians of {args.rounds} rounds")
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}")
    for where, runs in rows.items():
        med = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        share = statistics.median((r["snapshot_s"] + r["restore_s"]) / r["sweep_s"] for r in runs)
        print(f"snapshot {where} ({med['snapshot_bytes'] / 2**20:.0f} MiB of tensors): "
              f"snapshot {med['snapshot_s']:.3f} s (+{med['snapshot_mib']:.0f} MiB peak), "
              f"sweep {med['sweep_s']:.2f} s (+{med['sweep_mib']:.0f} MiB), "
              f"restore {med['restore_s']:.3f} s (+{med['restore_mib']:.0f} MiB); "
              f"snapshot + restore = {100 * share:.2f}% of the sweep (target < 5%)")
    print(f"cyclr lr_find whole: {statistics.median(s for s, _ in whole):.2f} s, "
          f"peak +{statistics.median(m for _, m in whole):.0f} MiB")
    if fastai_whole:
        ratio = statistics.median(f / c for (f, _), (c, _) in zip(fastai_whole, whole, strict=True))
        print(f"fastai lr_find whole: {statistics.median(s for s, _ in fastai_whole):.2f} s "
              f"({ratio:.3f}x cyclr, same round), peak +{statistics.median(m for _, m in fastai_whole):.0f} MiB")
    else:
        print("fastai: not importable here (run with .venv-peers/bin/python, built by `make bench-peers`)")
    print(f"weights and optimizer state bitwise restored after every lr_find: {all(restored)}")


if __name__ == "__main__":
    main()
