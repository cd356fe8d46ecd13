"""InMemoryLoader: batches sliced from tensors that already sit on the training device, with a seeded, exactly
restorable shuffle, sharding for data-parallel training, and batch-level transforms (crop, flip) drawn from the
loader's own generator."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from .checks import int_at_least, shard_position
from .state import check_loader_state, seeded_generator

__all__ = ["InMemoryLoader"]


def _numpy_view(tensor: torch.Tensor):
    """A NumPy array sharing `tensor`'s memory, or None where NumPy cannot view it (GPU, bfloat16, autograd)."""
    if tensor.device.type != "cpu" or tensor.requires_grad:
        return None
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError):
        return None


class InMemoryLoader:
    """Batches `(xb, yb)` sliced from tensors `x` and `y` whose first dimension indexes samples.

    Args:
        x: the inputs, a tensor whose first dimension indexes samples.
        y: the targets, with the same first dimension as `x`.
        bs: batch size.
        shuffle: draw a new permutation at the start of every epoch (every call to `iter`).
        drop_last: drop the final incomplete batch, so every batch has exactly `bs` samples.
        seed: seed of this loader's own CPU generator; two loaders with the same seed shuffle identically.
        device: move `x` and `y` there once, now; `None` leaves them where they are (then `x` and `y` must share
            a device). Put them on the training device to make batches free to produce.
        rank: this process's rank, for data-parallel training; see `shard`.
        world_size: the number of processes, for data-parallel training; see `shard`.
        even_shards: see `shard`.
        batch_tfm: called as `batch_tfm(xb, generator)` on every input batch, with this loader's generator, so that
            random augmentations done on whole batches (on the device) replay exactly with the shuffling state.

    Attributes: `x`, `y`, `n` (samples in the data set), `bs`, `shuffle`, `drop_last`, `seed`, `device`, `epoch`
    (epochs started so far), `rank`, `world_size`, `n_local` (samples this rank sees per epoch).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        bs: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        even_shards: bool = True,
        batch_tfm: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(
                f"x and y must be torch.Tensors, got x: {type(x).__name__}, y: {type(y).__name__}; "
                "convert with torch.as_tensor(...) first"
            )
        if x.dim() == 0 or y.dim() == 0:
            raise ValueError(
                f"x and y need a first (sample) dimension, got shapes {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must have the same number of samples (first dim), got {x.shape[0]} and {y.shape[0]}"
            )
        if x.shape[0] == 0:
            raise ValueError("x and y are empty (0 samples); a loader needs at least one sample")
        self.bs = int_at_least("bs", bs, 1)
        self.seed = int_at_least("seed", seed, 0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        shard_position(rank, world_size)
        if world_size > x.shape[0]:
            raise ValueError(f"world_size ({world_size}) is larger than the number of samples ({x.shape[0]})")
        self.rank, self.world_size, self.even_shards = int(rank), int(world_size), bool(even_shards)
        if batch_tfm is not None and not callable(batch_tfm):
            raise TypeError(f"batch_tfm must be None or a callable (xb, generator) -> xb, got {batch_tfm!r}")
        self.batch_tfm = batch_tfm
        if device is None:
            if x.device != y.device:
                raise ValueError(
                    f"x is on {x.device} but y on {y.device}; pass device=... to move both to the same device"
                )
            self.x, self.y = x, y
        else:
            self.x, self.y = x.to(device), y.to(device)
        self.n = x.shape[0]
        self.epoch = 0
        self._generator = seeded_generator(self.seed)
        self._epoch_start: dict | None = None  # state_dict() as it was when the running epoch drew its shuffle
        if len(self) == 0:
            raise ValueError(
                f"bs={bs} with drop_last=True gives no batch: this loader has only {self.n_local} samples per epoch"
                f"{' on each rank' if world_size > 1 else ''}; lower bs or set drop_last=False"
            )

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def n_local(self) -> int:
        """Samples this rank sees per epoch (all of them when not sharded)."""
        if self.world_size == 1:
            return self.n
        if not self.even_shards:  # rank r takes positions r, r + world_size, ...
            return len(range(self.rank, self.n, self.world_size))
        # Even shards, as torch's DistributedSampler makes them: padded by wrapping around the permutation when
        # drop_last is False, truncated when it is True.
        return self.n // self.world_size if self.drop_last else math.ceil(self.n / self.world_size)

    def __len__(self) -> int:
        return self.n_local // self.bs if self.drop_last else math.ceil(self.n_local / self.bs)

    def _epoch_indices(self) -> torch.Tensor | None:
        """This rank's sample indices for a new epoch, on the data's device; `None` means all samples in order."""
        if self.shuffle:
            order = torch.randperm(self.n, generator=self._generator)
        elif self.world_size == 1:
            return None  # plain slices: no gather at all
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            if self.even_shards:
                total = self.n_local * self.world_size
                if total > self.n:
                    order = torch.cat([order, order[: total - self.n]])
                order = order[self.rank : total : self.world_size]
            else:
                order = order[self.rank :: self.world_size]
        return order.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The permutation is drawn here, when the epoch starts, not at the first `next`: the generator state then
        # moves at a predictable point, which state_dict/load_state_dict rely on.
        self._epoch_start = self.state_dict()
        indices = self._epoch_indices()
        self.epoch += 1
        return self._batches(indices)

    def _batches(self, indices: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_used = len(self) * self.bs if self.drop_last else self.n_local
        x, y, bs, batch_tfm = self.x, self.y, self.bs, self.batch_tfm
        # On the CPU, gather with NumPy's serial row copies rather than index_select, which opens a multi-threaded
        # region per batch: when other processes hold the cores, each region waits for its descheduled threads
        # (measured on a busy 2-core machine: 1.5 s per Fashion-MNIST epoch instead of 32 ms).
        x_np, y_np = _numpy_view(x), _numpy_view(y)
        serial = indices is not None and x_np is not None and y_np is not None
        indices_np = indices.numpy() if serial else None
        for start in range(0, n_used, bs):
            if indices is None:
                xb, yb = x[start : start + bs], y[start : start + bs]
            elif serial:
                rows = indices_np[start : start + bs]
                xb, yb = torch.from_numpy(x_np.take(rows, axis=0)), torch.from_numpy(y_np.take(rows, axis=0))
            else:
                batch_indices = indices[start : start + bs]
                xb, yb = x.index_select(0, batch_indices), y.index_select(0, batch_indices)
            if batch_tfm is not None:
                xb = batch_tfm(xb, self._generator)
            yield xb, yb

    def one_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `bs` samples in data-set order, without advancing the shuffling state (for shape checks)."""
        xb, yb = self.x[: self.bs], self.y[: self.bs]
        if self.batch_tfm is not None:
            xb = self.batch_tfm(xb, seeded_generator(self.seed))  # a throwaway generator: our own stays put
        return xb, yb

    def shard(self, rank: int, world_size: int, even: bool | None = None) -> InMemoryLoader:
        """A loader over the same tensors that yields only rank `rank`'s part of each epoch.

        Every rank draws the same global permutation (same seed, same generator state) and takes positions
        `rank, rank + world_size, ...` of it. With `even=True` (the default, for training) every rank gets the same
        number of samples and hence batches, as with torch's `DistributedSampler`: when `world_size` does not divide
        the data set, the permutation wraps around (a few samples are seen twice per epoch) or, with `drop_last`,
        is truncated. With `even=False` (for evaluation) each sample is seen exactly once over all ranks, and ranks
        may differ by one sample.
        """
        sharded = InMemoryLoader(
            self.x, self.y, self.bs, shuffle=self.shuffle, drop_last=self.drop_last, seed=self.seed,
            rank=rank, world_size=world_size, even_shards=self.even_shards if even is None else even,
            batch_tfm=self.batch_tfm,
        )
        sharded.load_state_dict(self.state_dict())
        return sharded

    def state_dict(self, at_epoch_start: bool = False) -> dict:
        """Generator state (uint8 tensor) and epoch counter: restoring them replays the same next epochs.

        Saved between epochs (or before a partial epoch, as an LR finder does), it replays exactly. In the middle
        of an epoch, `at_epoch_start=True` gives the state from before that epoch drew its shuffle (and its batch
        transforms' randomness), so a resume replays the whole epoch and can pass over the batches already done.
        """
        if at_epoch_start and self._epoch_start is not None:
            return self._epoch_start
        return {"generator": self._generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        check_loader_state(state, type(self).__name__)
        self._generator.set_state(state["generator"].cpu())
        self._epoch_start = None
        self.epoch = int(state["epoch"])

    def to(self, device: torch.device | str) -> InMemoryLoader:
        """Move the data to `device` (in place, like `nn.Module.to`) and return self."""
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def __repr__(self) -> str:
        shard = f", rank={self.rank}, world_size={self.world_size}" if self.world_size > 1 else ""
        return (
            f"InMemoryLoader(n={self.n}, bs={self.bs}, batches={len(self)}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}, device={self.device}{shard})"
        )
