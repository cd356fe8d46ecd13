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

import torch
from torch.utils.data import Dataset, IterableDataset

from .checks import int_at_least
from .in_memory import InMemoryLoader
from .torch_loader import TorchLoader

__all__ = ["InMemoryLoader", "TorchLoader", "DataLoaders", "Targets", "loader_length"]


def loader_length(dl) -> int | None:
    """`len(dl)`, or None for a stream: an iterable without a length (a generator), or a torch DataLoader over an
    IterableDataset that has none (its `__len__` raises TypeError)."""
    try:
        return len(dl)
    except TypeError:
        return None


def is_stream(dl) -> bool:
    """Whether `dl` cannot draw again the batches it drew: no len(), or an IterableDataset underneath (which yields
    what it yields, whatever a loader's state). A checkpoint taken inside an epoch of it cannot be resumed."""
    return loader_length(dl) is None or isinstance(getattr(dl, "dataset", None), IterableDataset)


def describe_loader(dl) -> str:
    """The loader's type, and its dataset's when it has one (`DataLoader over a MyStream`), for messages."""
    dataset = getattr(dl, "dataset", None)
    return type(dl).__name__ + ("" if dataset is None else f" over a {type(dataset).__name__}")


class Targets(tuple):
    """The targets of a batch that has several: the parts after its `n_inp` inputs (`(x, y, w)` with `n_inp=1`).
    The loss and the metrics get them as separate arguments, `loss_func(pred, y, w)` and `metric(pred, y, w)`, as
    fastai calls them (`loss_func(pred, *yb)`); a single target is passed as it is. Otherwise a tuple: moved to the
    device, concatenated and returned by `get_preds` as one."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Targets{tuple.__repr__(self)}"


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
