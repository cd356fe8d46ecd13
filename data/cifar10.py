"""CIFAR-10 (Krizhevsky, 2009): 32x32 colour images in 10 classes, 50,000 train and 10,000 test.

Sources, in order: `root`, the `CYCLR_DATA` directory, the project's shared copy `../shared/data/cifar10-jpg.tar.gz`
(next to the repository), then torchvision's downloader. A source may be
- an image-folder tarball (`train/<class>/NNNN.jpg`, `test/<class>/NNNN.jpg`), read without extracting it;
- such an image folder already extracted;
- torchvision's `cifar-10-batches-py` folder (the original pickled release).
The shared tarball is a JPEG re-encoding of CIFAR-10: accuracies can differ slightly from the pickled original.

Images are decoded once into uint8 tensors, cached in the process and on disk (`$XDG_CACHE_HOME/cyclr/cifar10.pt`),
and kept as uint8 in the loaders (a quarter of the memory of float32): each batch is converted to normalised
float32, and for training augmented with the standard padding-4 random crop and horizontal flip, as whole-batch
tensor operations that run wherever the data lives, GPU included.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path

import torch
import torch.nn.functional as F

from .checks import int_at_least
from .core import DataLoaders
from .images import decode_images
from .in_memory import InMemoryLoader
from .sources import guarded_download, locate_data, read_disk_cache, write_disk_cache

# The module (the package re-exports its function `fashion_mnist` under the same name).

__all__ = [
    "CIFAR10_CLASSES", "cifar10", "load_cifar10", "load_image_folder", "ImageBatchTransform", "random_crop",
    "random_flip",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHARED_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"
TARBALL_NAME = "cifar10-jpg.tar.gz"
# SHA-256 of the JPEG edition in ../shared/data (recorded 2026-12-01): a damaged or replaced copy is refused.
TARBALL_SHA256 = "58c58e3af3ec7ed2054f439f35ad3c83dc1ab019f4af6037f60612ea098c8fa1"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_memory_cache: dict[str, dict[str, torch.Tensor]] = {}


# ---------------------------------------------------------------- batch augmentation (any device)


def random_crop(xb: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image of `xb` (B, C, H, W) by `padding` and cut a random H x W window from it, per image."""
    batch, channels, height, width = xb.shape
    padded = F.pad(xb, (padding, padding, padding, padding))
    padded_width = width + 2 * padding
    # Offsets drawn on the CPU generator (restorable, identical on every device), then moved: B*2 numbers.
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(xb.device)
    rows = offsets[0, :, None] + torch.arange(height, device=xb.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=xb.device)  # (B, W)
    # One gather over the flattened padded images: ~20x faster on a CPU than advanced indexing with a (B, H, W) grid.
    flat_index = (rows[:, :, None] * padded_width + cols[:, None, :]).reshape(batch, 1, height * width)
    window = padded.reshape(batch, channels, -1).gather(2, flat_index.expand(batch, channels, height * width))
    return window.reshape(batch, channels, height, width)


def random_flip(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of `xb` (B, C, H, W) left-right with probability 1/2."""
    flip = (torch.rand(xb.shape[0], generator=generator) < 0.5).to(xb.device)
    return torch.where(flip[:, None, None, None], xb.flip(3), xb)


class ImageBatchTransform:
    """uint8 image batches -> float32 `(xb / 255 - mean) / std`, after optional random crop and flip.

    Used as an `InMemoryLoader` `batch_tfm`: its randomness comes from the loader's generator.
    """

    def __init__(self, mean, std, crop_padding: int = 0, flip: bool = False):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.crop_padding = int_at_least("crop_padding", crop_padding, 0)
        self.flip = bool(flip)

    def __call__(self, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            xb = random_crop(xb, self.crop_padding, generator)
        if self.flip:
            xb = random_flip(xb, generator)
        if self.mean.device != xb.device:  # once per device, not per batch
            self.mean, self.std = self.mean.to(xb.device), self.std.to(xb.device)
        return xb.float().div_(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"ImageBatchTransform(crop_padding={self.crop_padding}, flip={self.flip})"


# ---------------------------------------------------------------- reading sources


def _decode_images(items: list[tuple[str, str, str, str, bytes]], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """items: (split, class name, file name, where it was read, encoded bytes). Returns uint8 images (N, 3, 32, 32)
    and int64 labels; a file that is not a whole 32x32 image is named (data/images.py)."""
    chosen = sorted((cls, name, where, payload) for item_split, cls, name, where, payload in items
                    if item_split == split)
    if not chosen:
        raise ValueError(f"no {split}/<class>/<image> files found")
    unknown = sorted({cls for cls, _, _, _ in chosen} - set(CIFAR10_CLASSES))
    if unknown:
        raise ValueError(f"{split}/ has folders {unknown} that are not CIFAR-10 classes {list(CIFAR10_CLASSES)}")
    images = decode_images([payload for *_, payload in chosen], [where for _, _, where, _ in chosen], size=(32, 32))
    labels = torch.tensor([CIFAR10_CLASSES.index(cls) for cls, _, _, _ in chosen])
    return images, labels


def _split_image_path(path: str) -> tuple[str, str, str] | None:
    """'.../train/cat/0001.jpg' -> ('train', 'cat', '0001.jpg'); None for anything else."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-3] in ("train", "test") and parts[-1].lower().endswith(_IMAGE_SUFFIXES):
        return parts[-3], parts[-2], parts[-1]
    return None


def load_image_folder(source) -> dict[str, torch.Tensor]:
    """Decode `train/<class>/*` and `test/<class>/*` from a directory or a tarball (read without extracting)."""
    source = Path(source)
    items = []
    if source.is_dir():
        for split, cls, name, path, _ in _image_files(source):
            with open(path, "rb") as f:
                items.append((split, cls, name, path, f.read()))
    else:
        if source.name == TARBALL_NAME:
            _check_tarball(source)
        with tarfile.open(source) as archive:
            for member in archive:  # streamed in archive order: one pass over the compressed file
                where = _split_image_path(member.name)
                if where is not None and member.isfile():
                    items.append((*where, f"{source}:{member.name}", archive.extractfile(member).read()))
    x_train, y_train = _decode_images(items, "train")
    x_test, y_test = _decode_images(items, "test")
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _image_files(folder: Path) -> list[tuple[str, str, str, str, os.stat_result]]:
    """(split, class, file name, path, stat) of every `.../train|test/<class>/<image>` regular file under `folder`,
    in sorted order (os.walk: 7x faster than pathlib's rglob over CIFAR-10's 60,000 files)."""
    found = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories.sort()
        parts = os.path.relpath(directory, folder).split(os.sep)
        if len(parts) < 2 or parts[-2] not in ("train", "test"):
            continue
        for name in sorted(names):
            path = os.path.join(directory, name)
            if name.lower().endswith(_IMAGE_SUFFIXES) and stat.S_ISREG((st := os.stat(path)).st_mode):
                found.append((parts[-2], parts[-1], name, path, st))
    return found


def _check_tarball(path: Path) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != TARBALL_SHA256:
        raise ValueError(f"{path}: its SHA-256 is {digest.hexdigest()}, but the CIFAR-10 JPEG edition has "
                         f"{TARBALL_SHA256}: the file is damaged or another archive; copy it again, or rename an "
                         "archive of your own")


def _load_torchvision_batches(directory: Path) -> dict[str, torch.Tensor]:
    from torchvision.datasets import CIFAR10

    tensors = {}
    for split, train in (("train", True), ("test", False)):
        dataset = CIFAR10(str(directory), train=train, download=False)
        tensors[f"x_{split}"] = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        tensors[f"y_{split}"] = torch.tensor(dataset.targets)
    return tensors


def _find_source(directory_or_file: Path) -> tuple[str, Path] | None:
    """('tar' | 'folder' | 'torchvision', path) for the first CIFAR-10 source found at this location."""
    if directory_or_file.is_file():
        return "tar", directory_or_file
    if not directory_or_file.is_dir():
        return None
    if (directory_or_file / "cifar-10-batches-py" / "batches.meta").is_file():
        return "torchvision", directory_or_file
    if (directory_or_file / TARBALL_NAME).is_file():
        return "tar", directory_or_file / TARBALL_NAME
    if (directory_or_file / "train").is_dir() and (directory_or_file / "test").is_dir():
        return "folder", directory_or_file
    return None


def _download_with_torchvision(download_root: Path) -> Path:
    from torchvision.datasets import CIFAR10

    guarded_download(CIFAR10, CIFAR10.url, download_root, train=True)
    return download_root


def _locate(root, download: bool) -> tuple[str, Path]:
    return locate_data(
        "CIFAR-10", root, download, ("the project's shared copy", SHARED_TARBALL), _find_source,
        _download_with_torchvision,
        "pass root=<dir or tarball> or set CYCLR_DATA to an image folder (train/<class>/*.jpg, test/<class>/*.jpg), "
        "a directory holding cifar10-jpg.tar.gz, or torchvision's cifar-10-batches-py; or run once with internet "
        "access so torchvision can download it.",
    )


def _cache_key(kind: str, path: Path) -> str:
    """What the decoded tensors depend on: each source file's size and modification time (an image rewritten in
    place changes its own, not its folder's), hashed."""
    if kind == "folder":
        files = [(file_path, st) for *_, file_path, st in _image_files(path)]
    elif kind == "torchvision":
        files = [(str(p), p.stat()) for p in sorted((path / "cifar-10-batches-py").iterdir())]
    else:
        files = [(str(path), path.stat())]
    listing = hashlib.sha256()
    for file_path, st in files:
        listing.update(f"{file_path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return repr((kind, str(path.resolve()), listing.hexdigest()))


def _load(root=None, download: bool = True) -> dict[str, torch.Tensor]:
    """The decoded uint8 tensors, shared with the in-process cache: callers must not modify them in place."""
    kind, path = _locate(root, download)
    key = _cache_key(kind, path)
    tensors = _memory_cache.get(key)
    if tensors is None:
        tensors = read_disk_cache(key, name="cifar10")
        if tensors is None:
            tensors = _load_torchvision_batches(path) if kind == "torchvision" else load_image_folder(path)
            write_disk_cache(key, tensors, name="cifar10")
        _memory_cache[key] = tensors
    return tensors


def load_cifar10(root=None, download: bool = True):
    """`(x_train, y_train, x_test, y_test)`: uint8 images `(N, 3, 32, 32)` and int64 labels in 0..9 (copies)."""
    tensors = _load(root, download)
    return tuple(tensors[key].clone() for key in ("x_train", "y_train", "x_test", "y_test"))


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-channel mean and std of uint8 images scaled to [0, 1], from a 256-bin histogram per channel
    (no float copy of the data set)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).cpu().double()
        mean = (counts * values).sum() / counts.sum()
        means.append(mean)
        stds.append(((counts * (values - mean).square()).sum() / counts.sum()).sqrt())
    return torch.stack(means).float(), torch.stack(stds).float()


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, name: str):
    """A fixed random subset (the files are sorted by class, so the first n would be one class)."""
    if n is None:
        return x, y
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(y):
        raise ValueError(f"{name} must be None or an int in [1, {len(y)}], got {n!r}")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return x[keep], y[keep]


def cifar10(
    bs: int = 512,
    root=None,
    augment: bool = True,
    device: torch.device | str | None = None,
    valid_bs: int | None = None,
    n_train: int | None = None,
    n_valid: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    download: bool = True,
) -> DataLoaders:
    """DataLoaders over CIFAR-10 with the test set as `valid`; batches are float32 `(B, 3, 32, 32)`, normalised per
    channel with the training images' mean and std, and int64 labels.

    The images stay uint8 on `device` (moved once); `augment=True` applies a padding-4 random crop and a horizontal
    flip to each training batch. `n_train` / `n_valid` take a fixed random subset for quick runs.
    """
    tensors = _load(root, download)
    x_train, y_train = _subset(tensors["x_train"], tensors["y_train"], n_train, "n_train")
    x_valid, y_valid = _subset(tensors["x_test"], tensors["y_test"], n_valid, "n_valid")
    mean, std = _channel_stats(x_train)
    train_tfm = ImageBatchTransform(mean, std, crop_padding=4 if augment else 0, flip=augment)
    valid_tfm = ImageBatchTransform(mean, std)
    train = InMemoryLoader(
        x_train, y_train, bs, shuffle=shuffle, drop_last=drop_last, seed=seed, device=device, batch_tfm=train_tfm
    )
    valid = InMemoryLoader(
        x_valid, y_valid, 2 * bs if valid_bs is None else valid_bs, seed=seed, device=device, batch_tfm=valid_tfm
    )
    return DataLoaders(train, valid, classes=list(CIFAR10_CLASSES))
