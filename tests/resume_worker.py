"""One training run for tests/test_checkpoint.py, in a process of its own: uninterrupted, killed with SIGKILL right
after a chosen optimizer step, or resumed from a checkpoint. Writes the final weights, the Recorder's history (wall
times left out) and the CSV log to --out.

The run exercises every piece of state a resume must restore: one-cycle schedule (lr and momentum), AdamW moments,
BatchNorm statistics, Dropout (torch's global RNG), an augmentation drawing from python's `random` and numpy, the
loader's shuffle, ReduceLROnPlateau, GradientClip and CSVLogger.

    python tests/resume_worker.py --ckpt C --out O [--every-n-batches N] [--kill-at-step S] [--resume]
"""

import argparse
import csv
import os
import random
import signal
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from cyclr import (  # noqa: E402
    Callback,  # noqa: E402
    CSVLogger,  # noqa: E402
    GradientClip,  # noqa: E402
    Learner,
    ReduceLROnPlateau,  # noqa: E402
    SaveModelCallback,  # noqa: E402
    accuracy,
    synthetic_classification,  # noqa: E402
)

N_EPOCH, STEPS_PER_EPOCH = 5, 6  # 96 training samples in batches of 16


class Augment(Callback):
    """Shifts each training batch by amounts drawn from python's and numpy's global generators."""

    def before_batch(self, learn):
        if learn.training:
            learn.xb = learn.xb + 0.1 * random.random() - 0.1 * float(np.random.rand())


class KillAfterStep(Callback):
    """SIGKILL (no cleanup, no flush: as a crash or an OOM killer) right after optimizer step `step` (1-based)."""

    order = 100  # after SaveModelCallback (90): a checkpoint due at this step is written first

    def __init__(self, step: int):
        self.step = step

    def after_batch(self, learn):
        if learn.training and learn.stepped and learn.train_iter + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--every-n-batches", type=int, default=None)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the same reduction order in every process
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.AdamW, metrics=[accuracy],
                    device="cpu", progress=False)
    csv_path = Path(args.ckpt).with_suffix(".csv")
    cbs = [ReduceLROnPlateau(factor=0.5, patience=1), GradientClip(0.5), CSVLogger(csv_path), Augment(),
           SaveModelCallback(args.ckpt, every_epoch=True, every_n_batches=args.every_n_batches)]
    if args.kill_at_step is not None:
        cbs.append(KillAfterStep(args.kill_at_step))
    learn.fit_one_cycle(N_EPOCH, 0.05, cbs=cbs, resume=args.ckpt if args.resume else None)

    with open(csv_path, newline="") as f:
        csv_rows = [row[:-1] for row in csv.reader(f)]  # the last column is the wall time
    torch.save({
        "weights": learn.model.state_dict(),
        "batch_rows": list(learn.recorder.batch_rows),
        "epoch_rows": [{k: v for k, v in r.items() if k != "time"} for r in learn.recorder.epoch_rows],
        "csv": csv_rows,
    }, args.out)


if __name__ == "__main__":
    main()
