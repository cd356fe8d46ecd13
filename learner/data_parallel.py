"""The Learner's side of data-parallel training (mixed into `Learner`): where this process stands among the others,
joining them, the `distributed()` block, and the collectives callbacks use. The machinery (sharding the loaders, the
DistributedDataParallel callback, joining and leaving the process group) is learner/distributed.py."""

from __future__ import annotations

import contextlib

import torch

from .dist_timeout import is_timeout, note_ranks_not_answering
from .distributed import all_reduce_sum, join, leave, torchrun_world_size


class DataParallel:
    """The Learner's side of data-parallel training (mixed into `Learner`): where this process stands among the
    others, the `distributed()` block, and the collectives callbacks use. Joining writes the Learner's dls (this
    process's shard), rank, world_size, device (this process's GPU), cbs and _joined; all declared in
    `Learner.__init__`."""

    @property
    def is_distributed(self) -> bool:
        """True while this learner is one of several processes training together."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """True on rank 0 (and in a single process): the one that shows progress and writes plots, logs, checkpoints."""
        return self.rank == 0

    @contextlib.contextmanager
    def distributed(self, **ddp_kwargs):
        """Train data-parallel inside this block: join the default process group (initialised from torchrun's
        environment when the script did not do it), shard the loaders, wrap the model in DistributedDataParallel
        (`ddp_kwargs` go to it) during training; undone on exit. Does nothing in a single process, and nothing more
        under torchrun, where the learner joins the others for its whole life."""
        self._join_launched_group()
        if self.is_distributed:
            yield self
            return
        joined = join(self, **ddp_kwargs)
        if joined is None:
            yield self
            return
        try:
            yield self
        except BaseException as error:
            if is_timeout(error):  # outside a fit (validate, get_preds): name the rank that stopped answering
                note_ranks_not_answering(error, self.rank, self.world_size, joined.callback.group_timeout)
            leave(self, joined, destroy_group=False)  # the others may still be in a collective: just go
            raise
        leave(self, joined)

    def _join_launched_group(self) -> None:
        """Launched by torchrun, join the other processes, once: called first by every call that needs them (fit,
        lr_find, validate, get_preds, save), never by the constructor, so that a Learner is built without waiting
        for the others and they meet at the first collective."""
        if self._joined is None and not self.is_distributed and torchrun_world_size() > 1:
            self._joined = join(self, self.dist_timeout)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all processes (every process must call this at the same point); `tensor` itself
        in a single process."""
        return all_reduce_sum(tensor, self.device) if self.is_distributed else tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over all processes, e.g. a batch loss every process must act on identically (the LR
        finder's stop); `tensor` itself in a single process."""
        return self.all_reduce_sum(tensor) / self.world_size if self.is_distributed else tensor

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. after rank 0 wrote a checkpoint the others will read)."""
        if self.is_distributed:
            torch.distributed.barrier()
