"""One process of the data-parallel tests (tests/test_distributed.py launches it with torchrun on CPU, gloo).

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py train OUT_DIR
    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py fail OUT_DIR

`train` writes what each rank saw and ended with to OUT_DIR/rank{RANK}.pt, then runs the LR finder and writes its
curve and suggestions to OUT_DIR/lr_find{RANK}.pt; `fail` raises on rank 1 in the middle of training, while rank 0
waits for it in the gradient all-reduce; `hang` stops rank 1 there with SIGSTOP (tests/test_distributed.py starts
that one without torchrun).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from cyclr import Callback, DataLoaders, Learner, SaveModelCallback, accuracy, synthetic_classification

# Shared with the test, which rebuilds the same data and models as single-process oracles.
N_TRAIN, N_VALID, N_FEATURES, N_CLASSES = 256, 101, 6, 3
BS, VALID_BS = 16, 10  # per process: 8 training batches each; validation shards of 51 and 50 samples (6 and 5 batches)
EPOCHS, MAX_LR = 2, 0.2
FAILING_RANK, FAILING_ITER = 1, 3
FAILURE_MESSAGE = "rank 1 fails on purpose at training batch 3"


def data(bs: int = BS) -> DataLoaders:
    return synthetic_classification(N_TRAIN, N_VALID, N_FEATURES, N_CLASSES, bs=bs, valid_bs=VALID_BS, seed=3,
                                    spread=2.0)


def mlp(seed: int, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    hidden = [nn.Linear(N_FEATURES, 16)] + ([nn.BatchNorm1d(16)] if batchnorm else []) + [nn.ReLU()]
    return nn.Sequential(*hidden, nn.Linear(16, N_CLASSES))


class SeenInputs(Callback):
    """The first feature of every training sample, per epoch: enough to tell the samples apart."""

    def __init__(self):
        self.per_epoch: list[list[float]] = []

    def before_train(self, learn):
        self.per_epoch.append([])

    def after_batch(self, learn):
        if learn.training:
            self.per_epoch[-1].extend(learn.xb[:, 0].tolist())


class ModelTypes(Callback):
    """The type of `learn.model` seen by callbacks, per phase and event (after the DistributedCallback's hooks)."""

    def __init__(self):
        self.seen: dict[str, set] = {}

    def _note(self, learn, event):
        key = f"{'train' if learn.training else 'valid'} {event}"
        self.seen.setdefault(key, set()).add(type(learn.model).__name__)

    def before_batch(self, learn):
        self._note(learn, "before_batch")

    def after_pred(self, learn):
        self._note(learn, "after_pred")

    def after_batch(self, learn):
        self._note(learn, "after_batch")


class KeepCheckpoint(Callback):
    """Copies the checkpoint SaveModelCallback wrote after training batch `at` (rank 0 only: one file system)."""

    order = 95  # after SaveModelCallback (90)

    def __init__(self, src: Path, dst: Path, at: int):
        self.src, self.dst, self.at = src, dst, at

    def after_batch(self, learn):
        if learn.training and learn.train_iter == self.at and learn.is_main_process:
            shutil.copy(self.src, self.dst)


class FailOnOneRank(Callback):
    def before_step(self, learn):
        if learn.rank == FAILING_RANK and learn.train_iter == FAILING_ITER:
            raise ValueError(FAILURE_MESSAGE)


def train(out: Path) -> None:
    rank = int(os.environ["RANK"])
    # A different initialisation on each rank: only DistributedDataParallel's broadcast makes them start alike.
    learn = Learner(mlp(seed=rank), data(), nn.CrossEntropyLoss(), lr=MAX_LR, metrics=[accuracy], device="cpu")
    # Built, not yet joined: no process group, the whole data, a repr (the first fit joins, below).
    before_join = {"world_size": learn.world_size, "rank": learn.rank, "group": dist.is_initialized(),
                   "n_train_batches": len(learn.dls.train), "repr": repr(learn),
                   "callbacks": [type(cb).__name__ for cb in learn.cbs]}
    seen, model_types = SeenInputs(), ModelTypes()
    learn.fit_one_cycle(EPOCHS, max_lr=MAX_LR, cbs=[seen, model_types])
    result = {
        "before_join": before_join,
        "rank": learn.rank, "world_size": learn.world_size, "is_main_process": learn.is_main_process,
        "callbacks": [type(cb).__name__ for cb in learn.cbs],
        "n_train_batches": len(learn.dls.train),
        "model_types": {phase: sorted(names) for phase, names in model_types.seen.items()},
        "model_type_after_fit": type(learn.model).__name__,
        "batches": learn.recorder.to_df("batches")[["train_iter", "pct", "lr", "mom", "loss"]].to_dict("list"),
        "epochs": learn.recorder.to_df("epochs").drop(columns=["time"]).to_dict("list"),
        "seen": seen.per_epoch,
        "weights": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "validate": learn.validate(),
    }
    # validate and get_preds join too, on a learner that never fitted: each then sees its own validation shard.
    joins = {}
    for call in ("validate", "get_preds"):
        fresh = Learner(mlp(seed=0), data(), nn.CrossEntropyLoss(), device="cpu", progress=False)
        world_before = fresh.world_size
        got = fresh.validate() if call == "validate" else fresh.get_preds()
        joins[call] = {"world_size_before": world_before, "world_size": fresh.world_size,
                       "n_valid": sum(len(yb) for _, yb in fresh.dls.valid), "result": got}
    result["joins"] = joins

    # torch's DataLoader path (DistributedSampler for training, a Subset per rank for validation) and batch norm,
    # whose running statistics each rank updates on its own shard until rank 0's are broadcast.
    d = data()
    dls = DataLoaders.from_datasets(
        torch.utils.data.TensorDataset(d.train.x, d.train.y), torch.utils.data.TensorDataset(d.valid.x, d.valid.y),
        bs=BS, valid_bs=VALID_BS, seed=1,
    )
    learn_bn = Learner(mlp(seed=10 + rank, batchnorm=True), dls, nn.CrossEntropyLoss(), lr=0.05, metrics=[accuracy],
                       device="cpu", progress=False)
    learn_bn.fit(1)
    result["bn"] = {
        "weights": {k: v.clone() for k, v in learn_bn.model.state_dict().items()},
        "epochs": learn_bn.recorder.to_df("epochs").drop(columns=["time"]).to_dict("list"),
        "n_train_batches": len(learn_bn.dls.train),
    }

    # Resuming under DDP: every rank reads the checkpoint, taken at the end of epoch 0 or mid-epoch (after training
    # batch 10 of 16), and goes on to the same weights as the uninterrupted fit.
    learn_a = Learner(mlp(seed=30), data(), nn.CrossEntropyLoss(), metrics=[accuracy], device="cpu", progress=False)
    savers = [SaveModelCallback(out / "epoch_{epoch}.pt", every_epoch=True),
              SaveModelCallback(out / "latest.pt", every_epoch=True, every_n_batches=11),
              KeepCheckpoint(out / "latest.pt", out / "mid.pt", at=10)]
    learn_a.fit_one_cycle(EPOCHS, max_lr=MAX_LR, cbs=savers)
    result["resume"] = {"uninterrupted": learn_a}
    for name, path in (("epoch_end", out / "epoch_0.pt"), ("mid_epoch", out / "mid.pt")):
        learn_b = Learner(mlp(seed=31), data(), nn.CrossEntropyLoss(), metrics=[accuracy], device="cpu",
                          progress=False)
        learn_b.fit_one_cycle(EPOCHS, max_lr=MAX_LR, resume=path)
        result["resume"][name] = learn_b
    result["resume"] = {
        name: {"weights": {k: v.clone() for k, v in lrn.model.state_dict().items()},
               "epochs": lrn.recorder.to_df("epochs").drop(columns=["time"]).to_dict("list"),
               "losses": lrn.recorder.losses}
        for name, lrn in result["resume"].items()
    }

    # `with learn.distributed():` joins a process group the script made itself (the environment no longer says
    # torchrun, so the learner does not join at creation) and leaves it at the end of the block.
    launched = {name: os.environ.pop(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    learn_ctx = Learner(mlp(seed=20 + rank), data(), nn.CrossEntropyLoss(), lr=0.05, device="cpu")
    original_dls = learn_ctx.dls
    with learn_ctx.distributed():
        inside = {"world_size": learn_ctx.world_size, "n_train_batches": len(learn_ctx.dls.train),
                  "callbacks": [type(cb).__name__ for cb in learn_ctx.cbs]}
        learn_ctx.fit(1)
    result["context"] = {
        "inside": inside, "world_size_after": learn_ctx.world_size,
        "callbacks_after": [type(cb).__name__ for cb in learn_ctx.cbs],
        "dls_restored": learn_ctx.dls is original_dls, "train_epoch_after": original_dls.train.epoch,
        "weights": {k: v.clone() for k, v in learn_ctx.model.state_dict().items()},
    }
    torch.save(result, out / f"rank{rank}.pt")
    os.environ.update(launched)  # torchrun's again: the LR finder's learner joins the group at lr_find
    lr_find(out, rank)  # last, so that the results above are saved even if it fails


def lr_find(out: Path, rank: int) -> None:
    learn = Learner(mlp(seed=0), data(), nn.CrossEntropyLoss(), device="cpu", progress=False)
    world_before = learn.world_size
    found = learn.lr_find(start_lr=1e-4, end_lr=100.0, num_it=40)
    result = {"world_sizes": [world_before, learn.world_size], "lrs": list(found.lrs), "losses": list(found.losses),
              "suggestions": {name: float(s) for name, s in found.suggestions.items()}}
    torch.save(result, out / f"lr_find{rank}.pt")


def fail(out: Path) -> None:
    learn = Learner(mlp(seed=0), data(), nn.CrossEntropyLoss(), lr=MAX_LR, device="cpu", progress=False)
    learn.fit(EPOCHS, cbs=[FailOnOneRank()])
    (out / f"finished{learn.rank}").touch()  # never reached: the job must end with the error


class StopOneRank(Callback):
    """SIGSTOP rank FAILING_RANK at training batch FAILING_ITER: alive, holding its sockets, answering nothing (as a
    process on a dead NFS mount)."""

    def before_batch(self, learn):
        if learn.training and learn.rank == FAILING_RANK and learn.iter == FAILING_ITER:
            print(f"rank {learn.rank} stops", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)


def hang(out: Path) -> None:
    learn = Learner(mlp(seed=0), data(), nn.CrossEntropyLoss(), lr=MAX_LR, device="cpu", progress=False)
    learn.fit(EPOCHS, cbs=[StopOneRank()])
    (out / f"finished{learn.rank}").touch()  # never reached


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    {"train": train, "fail": fail, "hang": hang}[mode](out_dir)
