"""DataLoaders and a fast loader for data sets that fit in memory.

`InMemoryLoader` slices batches out of two tensors (inputs and targets) that already live on the device, so an epoch
costs one permutation and one gather per batch instead of per-sample indexing and collation. Each loader
owns a seeded CPU `torch.Generator`: its shuffling never touches the global RNG, and its `state_dict()` restores the
exact order of the next epoch (what a checkpoint or an LR finder needs).

`TorchLoader` wraps torch's `DataLoader` for everything else (image folders, augmentation in workers) with the same
attributes and the same kind of seeded, restorable generator.

`DataLoaders(train, valid)` pairs the two loaders a `Learner` needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .checks import int_at_least, shard_position

__all__ = ["InMemoryLoader", "TorchLoader", "DataLoaders"]


def _new_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()  # CPU: its state is portable and identical on every rank and machine
    generator.manual_seed(seed)
    return generator


def _numpy_view(tensor: torch.Tensor):
    """A NumPy array sharing `tensor`'s memory, or None where NumPy cannot view it (GPU, bfloat16, autograd)."""
    if tensor.device.type != "cpu" or tensor.requires_grad:
        return None
    try:
        return tensor.numpy()
    except (TypeError, RuntimeError):
        return None


def _check_loader_state(state: dict, owner: str) -> None:
    if not isinstance(state, dict) or not {"generator", "epoch"} <= state.keys():
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{owner}.load_state_dict expects the dict returned by {owner}.state_dict() "
            f"(keys 'generator' and 'epoch'), got {got}"
        )
    generator_state = state["generator"]
    if not (isinstance(generator_state, torch.Tensor) and generator_state.dtype == torch.uint8):
        raise TypeError(f"state['generator'] must be a torch.uint8 tensor (a generator state), got {generator_state!r}")


class InMemoryLoader:
    """Batches `(xb, yb)` sliced from tensors `x` and `y` whose first dimension indexes samples.

    Args:
        x, y: tensors with the same first dimension (number of samples).
        bs: batch size.
        shuffle: draw a new permutation at the start of every epoch (every call to `iter`).
        drop_last: drop the final incomplete batch, so every batch has exactly `bs` samples.
        seed: seed of this loader's own CPU generator; two loaders with the same seed shuffle identically.
        device: move `x` and `y` there once, now; `None` leaves them where they are (then `x` and `y` must share
            a device). Put them on the training device to make batches free to produce.
        rank, world_size: for data-parallel training; see `shard`.
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
        batch_tfm=None,
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
        self._generator = _new_generator(self.seed)
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
            xb = self.batch_tfm(xb, _new_generator(self.seed))  # a throwaway generator: our own stays put
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
        _check_loader_state(state, type(self).__name__)
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


class TorchLoader:
    """torch's `DataLoader` with a seeded generator of its own and the attributes of `InMemoryLoader`.

    Shuffling (and the base seed of worker processes) comes from `self.generator`, a CPU generator seeded with
    `seed`; `state_dict()` saves it with the epoch counter, so restoring it replays the next epoch exactly. Extra
    keyword arguments go to `DataLoader` (`collate_fn`, `pin_memory`, `persistent_workers`, ...). The underlying
    loader is `self.loader`.
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
        self.generator = _new_generator(self.seed)
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
        _check_loader_state(state, type(self).__name__)
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


class DataLoaders:
    """The training loader and (optionally) the validation loader a `Learner` uses.

    Any iterable of `(xb, yb)` batches with a length works as a loader; `InMemoryLoader` and `TorchLoader` also
    carry a restorable shuffling state, which `state_dict()` collects.
    """

    def __init__(self, train, valid=None, classes: list[str] | None = None):
        if train is None:
            raise ValueError("DataLoaders needs a training loader; got train=None")
        self.train, self.valid = train, valid
        self.classes = classes  # class names, when the data set has them

    @property
    def device(self) -> torch.device | None:
        """Where the training data lives (`None` for loaders that produce CPU batches from a dataset)."""
        return getattr(self.train, "device", None)

    def to(self, device) -> DataLoaders:
        for loader in (self.train, self.valid):
            if hasattr(loader, "to"):
                loader.to(device)
        return self

    def state_dict(self, mid_epoch: bool = False) -> dict:
        """The loaders' shuffling states. `mid_epoch=True` (a checkpoint inside a training epoch): the training
        loader's as it was when it drew this epoch's shuffle, so a resume draws the same epoch again; the
        validation loader, which has not run in this epoch yet, as it is."""
        state = {}
        for name in ("train", "valid"):
            loader = getattr(self, name)
            if hasattr(loader, "state_dict"):
                at_start = mid_epoch and name == "train" and isinstance(loader, (InMemoryLoader, TorchLoader))
                state[name] = loader.state_dict(at_epoch_start=True) if at_start else loader.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in ("train", "valid"):
            loader = getattr(self, name)
            if name in state:
                if not hasattr(loader, "load_state_dict"):
                    raise ValueError(
                        f"state has a {name!r} entry but dls.{name} ({type(loader).__name__}) keeps no state"
                    )
                loader.load_state_dict(state[name])

    @classmethod
    def from_tensors(
        cls,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_valid: torch.Tensor | None = None,
        y_valid: torch.Tensor | None = None,
        bs: int = 64,
        device: torch.device | str | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        valid_bs: int | None = None,
        classes: list[str] | None = None,
    ) -> DataLoaders:
        """`InMemoryLoader`s over tensors; the validation loader is never shuffled and uses `valid_bs` (2*bs)."""
        if (x_valid is None) != (y_valid is None):
            raise ValueError("give both x_valid and y_valid, or neither")
        int_at_least("bs", bs, 1)
        train = InMemoryLoader(x_train, y_train, bs, shuffle=shuffle, drop_last=drop_last, seed=seed, device=device)
        valid = None
        if x_valid is not None:
            valid_bs = 2 * bs if valid_bs is None else valid_bs
            valid = InMemoryLoader(x_valid, y_valid, valid_bs, shuffle=False, drop_last=False, seed=seed, device=device)
        return cls(train, valid, classes=classes)

    @classmethod
    def from_datasets(
        cls,
        train_ds: Dataset,
        valid_ds: Dataset | None = None,
        bs: int = 64,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        valid_bs: int | None = None,
        classes: list[str] | None = None,
        **kwargs,
    ) -> DataLoaders:
        """`TorchLoader`s (torch `DataLoader`s with seeded generators); extra kwargs go to both `DataLoader`s."""
        int_at_least("bs", bs, 1)
        train = TorchLoader(
            train_ds, bs, shuffle=shuffle, drop_last=drop_last, seed=seed, num_workers=num_workers, **kwargs
        )
        valid = None
        if valid_ds is not None:
            valid_bs = 2 * bs if valid_bs is None else valid_bs
            valid = TorchLoader(valid_ds, valid_bs, shuffle=False, seed=seed, num_workers=num_workers, **kwargs)
        return cls(train, valid, classes=classes)

    def __repr__(self) -> str:
        return f"DataLoaders(train={self.train!r}, valid={self.valid!r})"
