"""One training run with SWA, EMA and a snapshot ensemble on disk, for tests/test_averaging.py, in a process of its
own: uninterrupted, killed with SIGKILL right after a chosen optimizer step, or resumed from a checkpoint. Writes the
final weights, the averaged and EMA weights, the snapshots and the epoch table (wall times left out) to --out.

The model has batch norm (recomputed for the SWA mean at the end, over a pass of the shuffled training data) and
dropout (torch's RNG), so the resumed run matches only if every piece of state, the RNGs and the loader's shuffle
included, came back exactly.

    python tests/averaging_worker.py --ckpt C --snapshots DIR --out O [--kill-at-step S] [--resume]
"""

import argparse
import os

import torch
from resume_worker import KillAfterStep  # tests/ is this script's folder, first on sys.path
from torch import nn

from cyclr import EMA, SWA, Learner, SaveModelCallback, SnapshotEnsemble, accuracy, synthetic_classification

# SGDR, 3 cycles of 1, 2 and 4 epochs (cycle_mult 2): 7 epochs of 6 steps; the cycles end after steps 6, 18, 42.
N_CYCLES, CYCLE_LEN, STEPS_PER_EPOCH = 3, 1, 6
SWA_START, SWA_EVERY = 0.5, 3  # averaging points after steps 24, 27, ..., 42


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--snapshots", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the same reduction order in every process
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.05, metrics=[accuracy],
                    device="cpu", progress=False)
    swa, ema = SWA(start=SWA_START, every=SWA_EVERY), EMA(decay=0.9)
    ens = SnapshotEnsemble(keep=2, path=args.snapshots)
    cbs = [swa, ema, ens, SaveModelCallback(args.ckpt, every_epoch=True, every_n_batches=4)]
    if args.kill_at_step is not None:
        cbs.append(KillAfterStep(args.kill_at_step))
    learn.fit_sgdr(N_CYCLES, CYCLE_LEN, cbs=cbs, resume=args.ckpt if args.resume else None)

    torch.save({
        "weights": learn.model.state_dict(),
        "swa": swa.model.state_dict(),
        "swa_n": swa.n,
        "ema": ema.model.state_dict(),
        "ema_n": ema.n,
        "taken": list(ens.taken),
        "snapshots": [ens.snapshot(k) for k in range(len(ens))],
        "files": sorted(os.listdir(args.snapshots)),
        "epoch_rows": [{k: v for k, v in r.items() if k != "time"} for r in learn.recorder.epoch_rows],
    }, args.out)


if __name__ == "__main__":
    main()
