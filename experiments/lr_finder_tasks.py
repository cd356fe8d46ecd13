"""The tasks of the LR-finder study (experiments/lr_finder_study.py): three kinds of model that train on a CPU, each
on data the project ships, a package provides or the code generates, never downloaded.

- `fmnist_lenet`: LeNet on Fashion-MNIST (Debian's dataset-fashion-mnist), a subset of the training images.
- `digits_mlp`: a two-layer MLP on scikit-learn's bundled 8x8 digits (1,797 images, a fixed 80/20 split).
- `motif_gru`: a GRU classifying token sequences by the motif planted in them, generated from a seed.

Each task says its default epochs and batch size, the budgets and batch sizes its variation runs at (the study varies
them on one task), and where its grid of max_lr starts for each optimizer (the study extends it where the optimum
sits near an edge).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cyclr import DataLoaders, Learner, accuracy, adam, lenet, sgd

__all__ = ["Task", "TASKS", "OPTIMIZERS", "make_learner", "motif_sequences", "digits_split", "GRU_VOCAB"]

# The two optimizers: SGD with momentum 0.9 and cyclr's default AdamW; each with the library's default weight decay.
OPTIMIZERS = {"sgd": sgd, "adamw": adam}


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    n_classes: int
    epochs: int
    bs: int
    # Where the log grid of max_lr starts, per optimizer: (lowest, highest) rate, half a decade apart.
    grid: dict
    make_dls: Callable[[int, int, bool], DataLoaders]  # (seed, bs, quick) -> DataLoaders
    make_model: Callable[[], nn.Module]
    # (epochs, bs) of the budget and batch-size variation, run on the task the study names.
    variations: tuple = ()

    @property
    def chance(self) -> float:
        return 1.0 / self.n_classes


def make_learner(task: Task, opt: str, seed: int, bs: int | None = None, quick: bool = False) -> Learner:
    """A fresh learner for `task` with optimizer `opt`: the model initialised and the data shuffled from `seed`."""
    torch.manual_seed(seed)
    dls = task.make_dls(seed, bs or task.bs, quick)
    torch.manual_seed(seed)  # the same initial weights whatever the data set-up drew
    return Learner(task.make_model(), dls, nn.CrossEntropyLoss(), opt_func=OPTIMIZERS[opt], metrics=[accuracy],
                   device="cpu", progress=False)


# ----- Fashion-MNIST / LeNet ----------------------------------------------------------------------------------------
FMNIST_TRAIN, FMNIST_VALID = 10_000, 2_000


def _fmnist(seed: int, bs: int, quick: bool) -> DataLoaders:
    from cyclr import fashion_mnist

    n_train, n_valid = (512, 256) if quick else (FMNIST_TRAIN, FMNIST_VALID)
    return fashion_mnist(bs=bs, normalize=True, n_train=n_train, n_valid=n_valid, seed=seed, download=False)


# ----- scikit-learn's digits / MLP ----------------------------------------------------------------------------------
def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits, pixels scaled to [0, 1], split 1,437 / 360 by a permutation of seed 0 (the same
    split for every seed of the study: the seeds vary the weights and the shuffling)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, valid = order[:1437], order[1437:]
    return x[train], y[train], x[valid], y[valid]


def _digits(seed: int, bs: int, quick: bool) -> DataLoaders:
    x_train, y_train, x_valid, y_valid = digits_split()
    if quick:
        x_train, y_train, x_valid, y_valid = x_train[:256], y_train[:256], x_valid[:128], y_valid[:128]
    return DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, bs=bs, seed=seed)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


# ----- generated sequences / GRU ------------------------------------------------------------------------------------
GRU_VOCAB, MOTIF_CLASSES, SEQ_LEN, MOTIF_LEN = 32, 4, 24, 3


def motif_sequences(n: int, seed: int, data_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` token sequences of length 24 over 32 tokens: class c has its own 3-token motif planted at a random
    place, and a decoy (the first two tokens of another class's motif) elsewhere, so the model must read the order
    of tokens, not only which ones occur. The motifs come from `data_seed`, the sequences from `seed`."""
    motifs = torch.randperm(GRU_VOCAB, generator=torch.Generator().manual_seed(data_seed))[:MOTIF_CLASSES * MOTIF_LEN]
    motifs = motifs.view(MOTIF_CLASSES, MOTIF_LEN)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(GRU_VOCAB, (n, SEQ_LEN), generator=g)
    y = torch.arange(n) % MOTIF_CLASSES
    decoy = (y + torch.randint(1, MOTIF_CLASSES, (n,), generator=g)) % MOTIF_CLASSES
    half = SEQ_LEN // 2
    at = torch.randint(half - MOTIF_LEN + 1, (n,), generator=g)
    decoy_at = half + torch.randint(half - MOTIF_LEN + 1, (n,), generator=g)
    swap = torch.rand(n, generator=g) < 0.5  # the motif in either half, the decoy in the other
    at, decoy_at = torch.where(swap, decoy_at, at), torch.where(swap, at, decoy_at)
    rows = torch.arange(n)
    for k in range(MOTIF_LEN):
        x[rows, at + k] = motifs[y, k]
    for k in range(MOTIF_LEN - 1):
        x[rows, decoy_at + k] = motifs[decoy, k]
    return x, y


def _motifs(seed: int, bs: int, quick: bool) -> DataLoaders:
    n_train, n_valid = (256, 128) if quick else (4000, 1000)
    x_train, y_train = motif_sequences(n_train, seed=1)
    x_valid, y_valid = motif_sequences(n_valid, seed=2)
    return DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, bs=bs, seed=seed)


class MotifGRU(nn.Module):
    """Embedding, a one-layer GRU, and a linear layer on its last hidden state."""

    def __init__(self, vocab: int = GRU_VOCAB, dim: int = 16, hidden: int = 32, n_classes: int = MOTIF_CLASSES):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        _, last = self.gru(self.embed(x))
        return self.head(last[-1])


# The grids start a decade or more past where these models train best with one-cycle, half a decade apart.
TASKS = {
    "fmnist_lenet": Task("fmnist_lenet", f"LeNet on Fashion-MNIST ({FMNIST_TRAIN} training images)", 10, 3, 128,
                         {"sgd": (1e-3, 10.0), "adamw": (1e-5, 1.0)}, _fmnist, lenet),
    "digits_mlp": Task("digits_mlp", "MLP on scikit-learn's digits", 10, 10, 64,
                       {"sgd": (1e-3, 10.0), "adamw": (1e-5, 1.0)}, _digits, _mlp,
                       variations=((40, 64), (10, 16), (40, 16))),
    "motif_gru": Task("motif_gru", "GRU on generated motif sequences", MOTIF_CLASSES, 6, 64,
                      {"sgd": (1e-3, 10.0), "adamw": (1e-5, 1.0)}, _motifs, MotifGRU),
}
