"""One process of the data-parallel averaging test (tests/test_averaging.py launches two with torchrun, CPU, gloo):
SWA (batch norm recomputed on each shard, averaged over the processes), EMA and a snapshot ensemble on a model with
batch norm; each rank writes its averaged weights, EMA weights, snapshots and ensemble probabilities to
OUT_DIR/rank{RANK}.pt.

    python -m torch.distributed.run --nproc_per_node=2 tests/averaging_ddp_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from torch import nn

from cyclr import EMA, SWA, Learner, SnapshotEnsemble, accuracy, synthetic_classification


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=256, n_valid=64, bs=16, seed=3, spread=2.0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.05, metrics=[accuracy],
                    device="cpu", progress=False)
    swa, ema, ens = SWA(start=0.5, every=3, swap=False), EMA(decay=0.9), SnapshotEnsemble()
    learn.fit_sgdr(2, 1, 0.05, cycle_mult=1, cbs=[swa, ema, ens])
    probs, _ = ens.get_preds(learn)
    torch.save({"rank": learn.rank, "world_size": learn.world_size, "swa": swa.model.state_dict(),
                "ema": ema.model.state_dict(), "snapshots": ens.snapshots, "probs": probs,
                "swa_row": {k: v for k, v in learn.recorder.epoch_rows[-1].items() if k != "time"}},
               out / f"rank{learn.rank}.pt")


if __name__ == "__main__":
    main()
