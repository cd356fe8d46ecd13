"""TorchLoader: torch's DataLoader over any Dataset, with a seeded, restorable shuffle and DistributedSampler
sharding, so that datasets that do not fit in memory get the same resume and data-parallel behaviour."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .checks import int_at_least, shard_position
from .state import check_loader_state, seeded_generator

__all__ = ["TorchLoader"]


class TorchLoader:
    """torch's `DataLoader` with a seeded generator of its own and the attributes of `InMemoryLoader`.

    Shuffling (and the base seed of worker processes) comes from `self.generator`, a CPU generator seeded with
    `seed`; `state_dict()` saves it with the epoch counter, so restoring it replays the next epoch exactly. Extra
    keyword arguments go to `DataLoader` (`collate_fn`, `pin_memory`, `persistent_workers`, ...). The underlying
    loader is `self.loader`.

    Args:
        dataset: the torch `Dataset` the batches are drawn from.
        bs: batch size (>= 1).
        shuffle: draw a new order every epoch, from `seed` and the epoch.
        drop_last: drop the final incomplete batch, so every batch has exactly `bs` samples.
        seed: seed of this loader's own CPU generator (>= 0); two loaders with the same seed shuffle identically.
        num_workers: worker processes loading batches (>= 0); 0 loads them in the training process.
        rank: this process's rank, for data-parallel training: with `world_size > 1` a `DistributedSampler` gives
            each rank its own part of every epoch.
        world_size: the number of processes, for data-parallel training; 1: no sharding.
        **kwargs (Any): passed on to torch's `DataLoader` (`collate_fn`, `pin_memory`, `persistent_workers`, ...); not
            `generator`, `batch_size`, `sampler` or `batch_sampler`, which this class sets.
    """

    def __init__(
        self,
        dataset: Dataset,
        bs: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        **kwargs,
    ):
        for owned in ("generator", "batch_size", "sampler", "batch_sampler"):
            if owned in kwargs:
                raise TypeError(
                    f"TorchLoader sets {owned!r} itself (from bs, shuffle, seed, rank/world_size); "
                    f"for a custom {owned} build torch.utils.data.DataLoader yourself and pass it to DataLoaders"
                )
        self.bs = int_at_least("bs", bs, 1)
        self.seed = int_at_least("seed", seed, 0)
        int_at_least("num_workers", num_workers, 0)
        shard_position(rank, world_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.rank, self.world_size = rank, world_size
        self.dataset, self.num_workers, self._kwargs = dataset, num_workers, kwargs
        self.generator = seeded_generator(self.seed)
        self.epoch = 0
        self._epoch_start: dict | None = None  # state_dict() as it was when the running epoch started
        self._sampler = None
        if world_size > 1:
            # DistributedSampler derives each epoch's permutation from (seed, epoch), so ranks stay in step.
            self._sampler = DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=self.shuffle, seed=self.seed, drop_last=drop_last
            )
        self.loader = DataLoader(
            dataset, batch_size=bs, shuffle=self.shuffle if self._sampler is None else False, sampler=self._sampler,
            drop_last=self.drop_last, num_workers=num_workers, generator=self.generator, **kwargs,
        )

    @property
    def device(self) -> None:
        return None  # batches come from the dataset on the CPU; the Learner moves them

    @property
    def n(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        if self._sampler is not None:
            self._sampler.set_epoch(self.epoch)
        # DataLoader draws everything random from self.generator (worker base seed when the iterator is created,
        # the sampler's seed at the first batch), so saving its state before an epoch is enough to replay it.
        self._epoch_start = self.state_dict()
        iterator = iter(self.loader)
        self.epoch += 1
        return iterator

    def one_batch(self):
        """The first batch of an epoch, leaving the shuffling state as it was."""
        state, epoch_start = self.state_dict(), self._epoch_start
        try:
            return next(iter(self))
        finally:
            self.load_state_dict(state)
            self._epoch_start = epoch_start

    def shard(self, rank: int, world_size: int) -> TorchLoader:
        """This rank's part of each epoch, through torch's `DistributedSampler` (even shards, as it makes them)."""
        sharded = TorchLoader(
            self.dataset, self.bs, shuffle=self.shuffle, drop_last=self.drop_last, seed=self.seed,
            num_workers=self.num_workers, rank=rank, world_size=world_size, **self._kwargs,
        )
        sharded.load_state_dict(self.state_dict())
        return sharded

    def state_dict(self, at_epoch_start: bool = False) -> dict:
        """Generator state and epoch counter; `at_epoch_start=True`: as they were when the running epoch started."""
        if at_epoch_start and self._epoch_start is not None:
            return self._epoch_start
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        check_loader_state(state, type(self).__name__)
        self.generator.set_state(state["generator"].cpu())
        self._epoch_start = None
        self.epoch = int(state["epoch"])

    def to(self, device) -> TorchLoader:
        return self  # nothing to move: the Learner moves each batch

    def __repr__(self) -> str:
        return (
            f"TorchLoader(n={self.n}, bs={self.bs}, batches={len(self)}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}, num_workers={self.num_workers})"
        )
