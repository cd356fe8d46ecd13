"""One training job for tests/test_preemption.py, in a process of its own, written as a job script would be: the same
command runs the first launch and every requeue (`fit(..., resume='auto')`). A SIGTERM ends it with status 75
(`PREEMPTED_EXIT_CODE`) after saving; run again, it goes on from its newest checkpoint.

    python tests/preemption_worker.py --dir D --out O [--started FILE] [--step-sleep S]
    python -m torch.distributed.run --nproc_per_node=2 tests/preemption_worker.py --dir D --out O --signal-at S

`--signal-at S` (data-parallel): rank 1 alone sends itself SIGTERM during optimizer step S (0-based); each rank
writes to O.rank<R> the step its fit stopped after and the checkpoints it names.

The run: one-cycle (lr and momentum), AdamW, BatchNorm, Dropout (torch's RNG), a shuffled loader, a CSVLogger and
TensorBoard in D. `--started FILE` holds the number of optimizer steps taken. Once the fit finishes, O holds the
final weights and the Recorder's rows (wall times left out).
"""

import argparse
import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

from cyclr import (
    Callback,
    CSVLogger,
    Learner,
    Preempted,
    SaveModelCallback,
    TensorBoardCallback,
    accuracy,
    synthetic_classification,
)

N_EPOCH = 3  # of 6 training batches and 2 validation batches


class Pace(Callback):
    """Sleeps after each batch (so a signal sent from outside lands mid-run, in training or in validation) and writes
    the number of optimizer steps taken to `started`."""

    def __init__(self, sleep: float, started: str | None):
        self.sleep, self.started = sleep, started

    def after_batch(self, learn):
        if learn.training and self.started:
            Path(self.started).write_text(str(learn.train_iter + int(learn.stepped)))
        time.sleep(self.sleep)


class SignalOnRank1(Callback):
    def __init__(self, step: int):
        self.step = step

    def before_step(self, learn):
        if learn.rank == 1 and learn.train_iter == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def data_parallel(folder: Path, out: str, step: int) -> None:
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=8, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), device="cpu", progress=False)
    try:
        learn.fit(3, cbs=[SaveModelCallback(folder / "ck.pt", every_epoch=True), SignalOnRank1(step)])
    except Preempted as e:
        torch.save({"train_iter": e.train_iter, "checkpoints": e.checkpoints}, f"{out}.rank{learn.rank}")
        raise


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--started", default=None)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--signal-at", type=int, default=None)
    args = parser.parse_args()
    folder = Path(args.dir)
    if args.signal_at is not None:
        return data_parallel(folder, args.out, args.signal_at)

    torch.set_num_threads(1)  # the same reduction order in every process
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.AdamW, metrics=[accuracy],
                    device="cpu", progress=False)
    cbs = [SaveModelCallback(folder / "ck_{train_iter:03d}.pt", every_epoch=True), CSVLogger(folder / "log.csv"),
           TensorBoardCallback(folder / "tb"), Pace(args.step_sleep, args.started)]
    learn.fit_one_cycle(N_EPOCH, 0.05, cbs=cbs, resume="auto")

    torch.save({
        "weights": learn.model.state_dict(),
        "batch_rows": list(learn.recorder.batch_rows),
        "epoch_rows": [{k: v for k, v in r.items() if k != "time"} for r in learn.recorder.epoch_rows],
        "pid": os.getpid(),
    }, args.out)


if __name__ == "__main__":
    main()
