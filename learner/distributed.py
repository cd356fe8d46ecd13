"""Data-parallel training with torch.distributed: the same Learner on several processes and machines.

Launched by `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK in the environment, more than one process), a `Learner`
joins the process group at the first call that needs the others (`fit`, `lr_find`, `validate`, `get_preds`, `save`),
before its pre-flight checks and epoch lengths, which see this process's shard; it stays joined for its whole life.
Until then it is a plain single-process learner (rank 0 of 1), whose repr and attributes can be read. Inside
`with learn.distributed():` it joins a process group for the block only: one the script initialised itself (e.g.
under `mp.spawn`), or one it initialises from torchrun's environment. In a single process `learn.distributed()`
does nothing, so one script runs either way.

While distributed:
- every process trains on its own shard of the training data (`InMemoryLoader.shard`, torch's `DistributedSampler`
  for `TorchLoader`). All shards have the same number of batches and every process draws the same permutation each
  epoch, so all take the same optimizer steps: the schedules, the Recorder and the LR finder see the same global
  step everywhere. With the in-memory loader, the union of the ranks' k-th batches is exactly the k-th batch a
  single process with the global batch size (`bs * world_size`) would take.
- the forward pass of each training batch runs through `DistributedDataParallel`, whose backward averages the
  gradients; `learn.model` is that wrapper only from `before_batch` to `after_pred` of a training batch, and the
  plain module everywhere else (gradient clipping, checkpoints, validation, `after_fit`, inference).
- validation shards give every sample to exactly one process (the last ones may get one sample fewer); the Recorder
  adds up the sample-weighted sums of loss and metrics over all processes (`learn.all_reduce_sum`), so every process
  reports the same average over all samples, each counted once.
- progress bars and the epoch table show on the main process (rank 0) only; plots, CSV files and checkpoints are
  written where `learn.is_main_process` is true.

Every process must make the same calls (fit, validate, lr_find) in the same order: each one meets the others in
collective operations, and a process that skips one leaves the others waiting.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from ..callbacks.core import ORDER, Callback
from ..callbacks.progress import ProgressCallback
from ..data.core import DataLoaders
from ..data.in_memory import InMemoryLoader
from ..data.torch_loader import TorchLoader
from .dist_timeout import dist_timeout, is_timeout, note_ranks_not_answering

__all__ = ["torchrun_world_size", "shard_dataloaders", "DistributedCallback", "join", "leave", "all_reduce_sum"]


def torchrun_world_size() -> int:
    """The number of processes torchrun started (1 when it did not start this one)."""
    if not all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return 1
    return int(os.environ["WORLD_SIZE"])


# ----- data -----------------------------------------------------------------------------------------------------------
def _shard_train(loader, rank: int, world_size: int):
    if isinstance(loader, InMemoryLoader):
        # even=True: every rank gets the same number of batches, whatever the user set for evaluation shards.
        return loader.shard(rank, world_size, even=True)
    if isinstance(loader, TorchLoader):
        return loader.shard(rank, world_size)  # torch's DistributedSampler: even shards, reshuffled by set_epoch
    raise TypeError(
        f"distributed training needs dls.train to be a cyclr.InMemoryLoader or cyclr.TorchLoader, which can be sharded "
        f"over processes; got {type(loader).__name__}. Build the loaders with DataLoaders.from_tensors(...) or "
        "DataLoaders.from_datasets(...)"
    )


def _shard_valid(loader, rank: int, world_size: int):
    # Evaluation shards take positions rank, rank + world_size, ...: every sample exactly once over all ranks, so the
    # all-reduced sums count nothing twice (DistributedSampler would pad with repeated samples instead).
    if isinstance(loader, InMemoryLoader):
        return loader.shard(rank, world_size, even=False)
    if isinstance(loader, TorchLoader):
        indices = range(rank, len(loader.dataset), world_size)
        # `_kwargs` are the extra DataLoader arguments (collate_fn, pin_memory...) the loader was built with.
        return TorchLoader(
            Subset(loader.dataset, indices), loader.bs, shuffle=loader.shuffle, drop_last=loader.drop_last,
            seed=loader.seed, num_workers=loader.num_workers, **loader._kwargs,
        )
    raise TypeError(
        f"distributed training needs dls.valid to be a cyclr.InMemoryLoader or cyclr.TorchLoader (or None), got "
        f"{type(loader).__name__}. Build the loaders with DataLoaders.from_tensors(...) or "
        "DataLoaders.from_datasets(...)"
    )


def _is_sharded(loader, world_size: int) -> bool:
    return getattr(loader, "world_size", 1) == world_size


def shard_dataloaders(dls: DataLoaders, rank: int, world_size: int, device: torch.device | None = None):
    """A copy of `dls` whose loaders yield only rank `rank`'s part of each epoch (loaders already sharded over
    `world_size` processes are kept as they are). In-memory data on another GPU than `device` is copied there."""
    sharded = copy.copy(dls)  # keeps `classes` and whatever else the DataLoaders carries
    if not _is_sharded(dls.train, world_size):
        sharded.train = _to_own_gpu(_shard_train(dls.train, rank, world_size), device)
    if dls.valid is not None and not _is_sharded(dls.valid, world_size):
        sharded.valid = _to_own_gpu(_shard_valid(dls.valid, rank, world_size), device)
    return sharded


def _to_own_gpu(shard, device: torch.device | None):
    # A shard shares its tensors with the loader it came from; without this every process on a machine would slice
    # its batches out of the first GPU's copy. `to` replaces the shard's tensors only, not the original loader's.
    shard_device = getattr(shard, "device", None)
    if device is not None and device.type == "cuda" and shard_device is not None and shard_device != device:
        shard.to(device)
    return shard


# ----- the fit loop ---------------------------------------------------------------------------------------------------
class DistributedCallback(Callback):
    """Runs the forward pass of every training batch through `DistributedDataParallel`, whose backward averages the
    gradients over the processes.

    The wrapper is made in `before_fit`, which broadcasts rank 0's parameters and buffers: every process starts the
    fit from the same weights. It is `learn.model` only from `before_batch` to `after_pred` of a training batch, so
    that `forward` (and a subclass's own) calls it; everywhere else, `after_pred` to `after_batch` included (gradient
    clipping, mid-epoch checkpoints), `learn.model` is the plain module. Leaving the training phase, rank 0's buffers
    (batch-norm running statistics, which each process updated on its own shard) are broadcast too, so validation,
    checkpoints and the final model are the same on every process.
    """

    order = ORDER.distributed  # first: the wrapper is in place before anyone's before_batch, gone after after_pred

    def __init__(self, group_timeout: timedelta | None = None, **ddp_kwargs):
        self.ddp_kwargs = ddp_kwargs  # passed to DistributedDataParallel, e.g. find_unused_parameters=True
        self.group_timeout = group_timeout  # the process group's, when cyclr created it (said in a timeout's note)
        self.ddp: DistributedDataParallel | None = None
        self._buffers_to_sync = False

    def before_fit(self, learn):
        if not _is_sharded(learn.dls.train, learn.world_size):
            raise ValueError(
                f"learn.dls.train is not sharded over the {learn.world_size} processes (learn.dls was replaced after "
                "the learner joined them): assign learn.dls = shard_dataloaders(dls, learn.rank, learn.world_size, "
                "learn.device) (from cyclr.learner.distributed) instead"
            )
        if isinstance(learn.model, DistributedDataParallel):
            return  # wrapped by the user: leave it to them
        device_ids = [learn.device.index] if learn.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(learn.model, device_ids=device_ids, **self.ddp_kwargs)

    def before_batch(self, learn):
        if learn.training and self.ddp is not None:
            learn.model = self.ddp
            self._buffers_to_sync = True

    def after_pred(self, learn):
        self._unwrap(learn)

    def after_batch(self, learn):
        self._unwrap(learn)  # in case a cancelled batch skipped after_pred

    def after_train(self, learn):
        self._leave_training_phase(learn)

    def before_validate(self, learn):
        self._leave_training_phase(learn)

    def after_fit(self, learn):
        # A CancelFitException (the LR finder's stop) skips after_train, so the buffers may not be in sync yet.
        self._leave_training_phase(learn)

    def cleanup_fit(self, learn):
        # After an exception too: no collective call here, the other processes may be anywhere.
        self._unwrap(learn)
        self.ddp, self._buffers_to_sync = None, False  # frees the gradient buckets between fits
        error = sys.exc_info()[1]  # the exception ending the fit, if any (cleanup_fit runs from its `finally`)
        if is_timeout(error):
            note_ranks_not_answering(error, learn.rank, learn.world_size, self.group_timeout)

    def _unwrap(self, learn):
        if self.ddp is not None and learn.model is self.ddp:
            learn.model = self.ddp.module

    def _leave_training_phase(self, learn):
        self._unwrap(learn)
        if self._buffers_to_sync:  # the same on every process: all ran the same training batches
            for buffer in learn.model.buffers():
                dist.broadcast(buffer, src=0)
            self._buffers_to_sync = False


# ----- joining and leaving --------------------------------------------------------------------------------------------
@dataclass
class Joined:
    """What joining changed on the learner, to undo when leaving."""

    original_dls: DataLoaders
    sharded_dls: DataLoaders
    hidden_cbs: list
    callback: DistributedCallback
    created_group: bool


def _pick_device(learn) -> None:
    """With a GPU named without an index (the default 'cuda'), take this process's own: LOCAL_RANK's."""
    if learn.device.type != "cuda":
        return
    if learn.device.index is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"this process has LOCAL_RANK={local_rank} but the machine has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node) or pass device='cpu'"
            )
        learn.device = torch.device("cuda", local_rank)
        learn.model.to(learn.device)
    torch.cuda.set_device(learn.device)


def join(learn, timeout: float | timedelta | None = None, **ddp_kwargs) -> Joined | None:
    """Make `learn` one of the processes of the default process group, initialising it from torchrun's environment
    when needed (gloo on CPU, nccl on CUDA) with `timeout` for its collectives (seconds; default $CYCLR_DIST_TIMEOUT,
    else 10 minutes: learner/dist_timeout.py). Returns what to undo, or None when there is a single process."""
    if not dist.is_initialized() and torchrun_world_size() == 1:
        return None
    group_timeout = dist_timeout(timeout)  # checked even for a group the script made: a bad value is refused
    _pick_device(learn)
    created = False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError(
                "RANK and WORLD_SIZE are set but MASTER_ADDR or MASTER_PORT is not: launch with torchrun, or call "
                "torch.distributed.init_process_group(...) yourself before learn.distributed()"
            )
        backend = "nccl" if learn.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=learn.device if learn.device.type == "cuda" else None,
                                timeout=group_timeout)
        created = True
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if world_size == 1:
        if created:
            dist.destroy_process_group()
        return None

    original_dls = learn.dls
    learn.dls = shard_dataloaders(original_dls, rank, world_size, learn.device)
    learn.rank, learn.world_size = rank, world_size
    # One progress display per job: the others would draw the same bars over each other in the same terminal.
    hidden = [cb for cb in learn.cbs if isinstance(cb, ProgressCallback)] if rank != 0 else []
    learn.remove_cbs(hidden)
    callback = DistributedCallback(group_timeout if created else None, **ddp_kwargs)
    learn.add_cbs([callback])
    return Joined(original_dls, learn.dls, hidden, callback, created)


def leave(learn, joined: Joined, destroy_group: bool = True) -> None:
    """Undo `join`: the learner is a single process again, with its own loaders and callbacks."""
    learn.remove_cbs([joined.callback])
    if learn.dls is joined.sharded_dls:
        # Carry the shuffling state (epoch counter, generator) on, so the next epoch does not replay an old order.
        train = joined.original_dls.train
        if hasattr(train, "load_state_dict") and joined.sharded_dls.train is not train:
            train.load_state_dict(joined.sharded_dls.train.state_dict())
        learn.dls = joined.original_dls
    learn.add_cbs(joined.hidden_cbs)
    learn.rank, learn.world_size = 0, 1
    if joined.created_group and destroy_group:
        dist.destroy_process_group()


# ----- collectives ----------------------------------------------------------------------------------------------------
def _comm_device(device: torch.device) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo is used for CPU training.
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum of `tensor` over all processes, as a new tensor on `tensor`'s device (the input is left alone)."""
    total = tensor.detach().to(_comm_device(device), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)
