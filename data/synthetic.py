"""Tiny deterministic data sets for tests and examples.

Each is a function of its arguments alone: the values come from a `torch.Generator` seeded with `seed`, never from
the global RNG, so the same call gives the same tensors anywhere and leaves other code's randomness alone.
"""

from __future__ import annotations

import torch

from .checks import int_at_least
from .core import DataLoaders

__all__ = ["synthetic_classification", "synthetic_regression", "tiny_images"]


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(int_at_least("seed", seed, 0))
    return generator


def synthetic_classification(
    n_train: int = 256,
    n_valid: int = 128,
    n_features: int = 8,
    n_classes: int = 3,
    bs: int = 32,
    seed: int = 0,
    device: torch.device | str | None = None,
    spread: float = 1.0,
    valid_bs: int | None = None,
) -> DataLoaders:
    """Gaussian blobs: class `c` is `N(center_c, spread^2 I)` with centres 4 apart on average; float32 `x`
    `(n, n_features)` and int64 labels in `0..n_classes-1`, classes balanced (sample `i` has label `i % n_classes`).

    With the default `spread=1.0` a linear model separates the classes almost perfectly.

    Args:
        n_train: training samples (>= 1).
        n_valid: validation samples (>= 1).
        n_features: the dimension of each sample (>= 1).
        n_classes: the number of classes (>= 2).
        bs: the training batch size.
        seed: seeds the values (a generator of its own) and the training loader's shuffling (>= 0).
        device: where the tensors go once, now; None: they stay on the CPU.
        spread: the standard deviation of each blob around its centre (> 0); larger blobs overlap more.
        valid_bs: the validation batch size; None: `2 * bs`.
    """
    for name, value, minimum in (("n_train", n_train, 1), ("n_valid", n_valid, 1), ("n_features", n_features, 1),
                                 ("n_classes", n_classes, 2)):
        int_at_least(name, value, minimum)
    if not spread > 0:
        raise ValueError(f"spread must be > 0, got {spread!r}")
    generator = _generator(seed)
    centers = torch.randn(n_classes, n_features, generator=generator) * (4.0 / 2**0.5)

    def blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % n_classes
        x = centers[y] + spread * torch.randn(n, n_features, generator=generator)
        return x, y

    x_train, y_train = blobs(n_train)
    x_valid, y_valid = blobs(n_valid)
    return DataLoaders.from_tensors(
        x_train, y_train, x_valid, y_valid, bs=bs, device=device, seed=seed, valid_bs=valid_bs,
        classes=[str(c) for c in range(n_classes)],
    )


def synthetic_regression(
    n_train: int = 256,
    n_valid: int = 64,
    n_features: int = 4,
    noise: float = 0.1,
    bs: int = 32,
    seed: int = 0,
    device: torch.device | str | None = None,
    valid_bs: int | None = None,
) -> DataLoaders:
    """`y = x @ w + b + noise * eps` with `x, w, eps ~ N(0, 1)` and `b ~ N(0, 1)`; float32 `x` `(n, n_features)`
    and `y` `(n, 1)`. The true coefficients are in `dls.coefs` as `(w, b)`; the best achievable MSE is `noise**2`.

    Args:
        n_train: training samples (>= 1).
        n_valid: validation samples (>= 1).
        n_features: the dimension of each sample (>= 1).
        noise: the standard deviation of the noise added to each target (>= 0).
        bs: the training batch size.
        seed: seeds the values (a generator of its own) and the training loader's shuffling (>= 0).
        device: where the tensors go once, now; None: they stay on the CPU.
        valid_bs: the validation batch size; None: `2 * bs`.
    """
    for name, value, minimum in (("n_train", n_train, 1), ("n_valid", n_valid, 1), ("n_features", n_features, 1)):
        int_at_least(name, value, minimum)
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    generator = _generator(seed)
    weight = torch.randn(n_features, 1, generator=generator)
    bias = torch.randn(1, generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, n_features, generator=generator)
        return x, x @ weight + bias + noise * torch.randn(n, 1, generator=generator)

    x_train, y_train = sample(n_train)
    x_valid, y_valid = sample(n_valid)
    dls = DataLoaders.from_tensors(
        x_train, y_train, x_valid, y_valid, bs=bs, device=device, seed=seed, valid_bs=valid_bs
    )
    dls.coefs = (weight, bias)
    return dls


def tiny_images(
    n_train: int = 512,
    n_valid: int = 256,
    n_classes: int = 10,
    bs: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
    noise: float = 0.3,
    valid_bs: int | None = None,
) -> DataLoaders:
    """Images shaped like Fashion-MNIST: float32 `(n, 1, 28, 28)` in [0, 1], int64 labels in `0..n_classes-1`.

    Each class is a fixed random pattern of bright 4x4 squares; a sample is its class pattern, randomly shifted by
    up to 2 pixels, plus uniform noise. A LeNet (SGD, lr 0.1, momentum 0.9) is well above chance after 3 epochs,
    which suits smoke tests of the training loop without the real data.

    Args:
        n_train: training images (>= 1).
        n_valid: validation images (>= 1).
        n_classes: the number of classes, each its own pattern (>= 2).
        bs: the training batch size.
        seed: seeds the values (a generator of its own) and the training loader's shuffling (>= 0).
        device: where the tensors go once, now; None: they stay on the CPU.
        noise: the weight of the uniform noise in each pixel, in [0, 1]: `(1 - noise) * pattern + noise * U(0, 1)`.
        valid_bs: the validation batch size; None: `2 * bs`.
    """
    for name, value, minimum in (("n_train", n_train, 1), ("n_valid", n_valid, 1), ("n_classes", n_classes, 2)):
        int_at_least(name, value, minimum)
    if not 0 <= noise <= 1:
        raise ValueError(f"noise must be in [0, 1], got {noise!r}")
    generator = _generator(seed)
    # A 7x7 grid of on/off cells, scaled up to 28x28: coarse enough to survive the shifts below.
    cells = torch.rand(n_classes, 1, 7, 7, generator=generator) < 0.35
    patterns = cells.float().repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % n_classes
        x = patterns[y].clone()
        shifts = torch.randint(-2, 3, (n, 2), generator=generator)
        for dy in range(-2, 3):  # 25 shift groups, whatever n is
            for dx in range(-2, 3):
                group = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                x[group] = torch.roll(x[group], shifts=(dy, dx), dims=(2, 3))
        x = (1 - noise) * x + noise * torch.rand(x.shape, generator=generator)
        return x, y

    x_train, y_train = sample(n_train)
    x_valid, y_valid = sample(n_valid)
    return DataLoaders.from_tensors(
        x_train, y_train, x_valid, y_valid, bs=bs, device=device, seed=seed, valid_bs=valid_bs,
        classes=[str(c) for c in range(n_classes)],
    )
