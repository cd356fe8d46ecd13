"""Fashion-MNIST (Xiao et al., 2017): 28x28 grey images of clothes in 10 classes, 60,000 train and 10,000 test.

The files are looked for, in order, in `root`, in the directory named by the `CYCLR_DATA` environment variable and in
the Debian package's `/usr/share/datasets/fashion-mnist` (`apt-get install dataset-fashion-mnist`), each either
directly (gzipped or not) or in torchvision's layout `<dir>/FashionMNIST/raw/`. Only when none has them does
torchvision's downloader run, with short timeouts so it fails fast on a machine without internet.

The IDX files are decoded once per process and cached on disk (`$XDG_CACHE_HOME/cyclr/fashion_mnist.pt`, by default
under `~/.cache`), keyed on the source files' paths, sizes and modification times.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import warnings
import zlib
from pathlib import Path

import torch

from .checks import user_stacklevel
from .core import DataLoaders
from .sources import disk_cache_path, guarded_download, locate_data, read_disk_cache, write_disk_cache

__all__ = ["FASHION_MNIST_CLASSES", "fashion_mnist", "load_fashion_mnist", "clear_memory_cache"]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# key -> file stem; the shapes the files must have.
_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_SHAPES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}
# The published MD5 sums of the uncompressed files (zalandoresearch/fashion-mnist): whatever the source (Debian's
# package, torchvision's download, an uncompressed copy), the content must be these bytes.
_MD5 = {
    "x_train": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "y_train": "9018921c3c673c538a1fc5bad174d6f9",
    "x_test": "8181f5470baa50b63fa0f6fddb340f0a",
    "y_test": "15d484375f8d13e6eb1aabb0c3f46965",
}
_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes

_memory_cache: dict[str, dict[str, torch.Tensor]] = {}


def clear_memory_cache() -> None:
    """Forget the decoded tensors kept in this process (the disk cache stays)."""
    _memory_cache.clear()


def _find_files(directory: Path) -> dict[str, Path] | None:
    """The four files in `directory` or in torchvision's `<directory>/FashionMNIST/raw`, gzipped or not."""
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        paths = {}
        for key, stem in _FILES.items():
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    paths[key] = folder / name
                    break
        if len(paths) == len(_FILES):
            return paths
    return None


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it ends in .gz; a corrupt archive is reported with its path."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}): the file is damaged; delete it and "
                         "install or download it again") from e


def _parse_idx(data: bytes, path: Path) -> torch.Tensor:
    """Decode IDX bytes of unsigned bytes (the MNIST format: 2 zero bytes, type code, ndim, big-endian dims)."""
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != _IDX_UBYTE:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for size in shape:
        count *= size
    if len(data) != header + count:
        raise ValueError(f"{path}: header says shape {shape} ({count} bytes) but the file has {len(data) - header}")
    # bytearray: torch.frombuffer wants a writable buffer, and the tensor then owns a copy.
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header, count=count).reshape(shape)


def _read_idx(path: Path) -> torch.Tensor:
    return _parse_idx(_read_bytes(path), path)


def _decode(paths: dict[str, Path]) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, path in paths.items():
        data = _read_bytes(path)
        digest = hashlib.md5(data).hexdigest()
        if digest != _MD5[key]:
            raise ValueError(
                f"{path}: its content's MD5 is {digest}, but Fashion-MNIST's {_FILES[key]} has {_MD5[key]}: the "
                "file is damaged or holds other data; delete it and install (apt-get install --reinstall "
                "dataset-fashion-mnist) or download it again"
            )
        tensors[key] = _parse_idx(data, path)
    return _checked(tensors, where=lambda key: str(paths[key]))


def _checked(tensors: dict[str, torch.Tensor], where) -> dict[str, torch.Tensor]:
    """Shapes, dtypes and label range of the four tensors, whether fresh from the files or from the disk cache."""
    if set(tensors) != set(_SHAPES):
        raise ValueError(f"{where(None)}: expected the tensors {sorted(_SHAPES)}, got {sorted(tensors)}")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != _SHAPES[key]:
            raise ValueError(f"{where(key)}: expected shape {_SHAPES[key]} for Fashion-MNIST, got "
                             f"{tuple(tensor.shape)}")
        if key.startswith("y"):
            if tensor.dtype == torch.uint8:
                tensor = tensors[key] = tensor.long()
            if tensor.dtype != torch.int64 or int(tensor.min()) < 0 or int(tensor.max()) > 9:
                raise ValueError(f"{where(key)}: labels must be int64 in 0..9, found {tensor.dtype} in "
                                 f"[{int(tensor.min())}, {int(tensor.max())}]")
        elif tensor.dtype != torch.uint8:
            raise ValueError(f"{where(key)}: images must be uint8, got {tensor.dtype}")
    return tensors


def _cache_key(paths: dict[str, Path]) -> str:
    stats = {}
    for key, path in sorted(paths.items()):
        st = path.stat()
        stats[key] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
    return json.dumps(stats, sort_keys=True)


def _download_with_torchvision(download_root: Path) -> Path:
    """Download with torchvision into `download_root/FashionMNIST/raw`; return that folder."""
    from torchvision.datasets import FashionMNIST

    guarded_download(FashionMNIST, FashionMNIST.mirrors[0], download_root, train=True)
    return download_root / "FashionMNIST" / "raw"


def _locate(root, download: bool) -> dict[str, Path]:
    return locate_data(
        "Fashion-MNIST (train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), "
        "t10k-labels-idx1-ubyte(.gz))",
        root, download, ("the Debian package dataset-fashion-mnist", DEBIAN_DIR), _find_files,
        _download_with_torchvision,
        "install the Debian package (`sudo apt-get install dataset-fashion-mnist`), or pass root=<dir> or set the "
        "CYCLR_DATA environment variable to a directory holding those files (or torchvision's "
        "<dir>/FashionMNIST/raw/), or run once on a machine with internet access so torchvision can download them.",
    )


def _load(root=None, download: bool = True) -> dict[str, torch.Tensor]:
    """The decoded tensors, shared with the in-process cache: callers must not modify them in place."""
    paths = _locate(root, download)
    key = _cache_key(paths)
    tensors = _memory_cache.get(key)
    if tensors is None:
        tensors = read_disk_cache(key, "fashion_mnist")
        if tensors is not None:
            try:  # checked as a fresh decode is: a cache written by another version or edited by hand
                tensors = _checked(tensors, where=lambda _: f"the cache {disk_cache_path('fashion_mnist')}")
            except ValueError as e:
                warnings.warn(f"{e}: decoding the source files again", stacklevel=user_stacklevel())
                tensors = None
        if tensors is None:
            tensors = _decode(paths)
            write_disk_cache(key, tensors, "fashion_mnist")
        _memory_cache[key] = tensors
    return tensors


def load_fashion_mnist(root=None, download: bool = True):
    """`(x_train, y_train, x_test, y_test)`: images uint8 `(N, 28, 28)`, labels int64 in 0..9 (N = 60000, 10000).

    The tensors are fresh copies, safe to modify.
    """
    tensors = _load(root, download)
    return tuple(tensors[key].clone() for key in ("x_train", "y_train", "x_test", "y_test"))


def _subset_size(name: str, value, total: int) -> int:
    if value is None:
        return total
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= total:
        raise ValueError(f"{name} must be None or an int in [1, {total}], got {value!r}")
    return value


def fashion_mnist(
    bs: int = 256,
    root=None,
    device: torch.device | str | None = None,
    normalize: bool = False,
    valid_bs: int | None = None,
    n_train: int | None = None,
    n_valid: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    download: bool = True,
) -> DataLoaders:
    """DataLoaders over Fashion-MNIST: float32 images `(N, 1, 28, 28)` and int64 labels; the test set is `valid`.

    Pixels are in [0, 1], or standardised with the mean and standard deviation of the training images used when
    `normalize=True`. `n_train` / `n_valid` keep the first samples of each split (the files are already in random
    order) for quick runs. `device` puts the data there once, so batches cost nothing to produce.

    Args:
        bs: the training batch size.
        root (str | os.PathLike | None): a directory to look in first for the four IDX files (see the module
            docstring); None: `$CYCLR_DATA`, then the Debian package's directory.
        device: where the images and labels go once, now (e.g. 'cuda'); None: they stay on the CPU.
        normalize: standardise the pixels with the training images' mean and standard deviation; False: pixels in
            [0, 1].
        valid_bs: the validation batch size; None: `2 * bs`.
        n_train: keep only the first `n_train` training images; None: all 60,000.
        n_valid: keep only the first `n_valid` test images; None: all 10,000.
        seed: the seed of the training loader's shuffling.
        shuffle: shuffle the training set every epoch (the validation set never is).
        drop_last: drop the last incomplete training batch.
        download: let torchvision's downloader fetch the files when no directory has them; False: fail with a
            message saying where to put them.
    """
    tensors = _load(root, download)
    n_train = _subset_size("n_train", n_train, _SHAPES["x_train"][0])
    n_valid = _subset_size("n_valid", n_valid, _SHAPES["x_test"][0])

    def images(raw: torch.Tensor) -> torch.Tensor:
        # Move the bytes first, then convert: a quarter of the traffic when device is a GPU.
        raw = raw if device is None else raw.to(device)
        return raw.unsqueeze(1).float().div_(255)

    x_train, x_valid = images(tensors["x_train"][:n_train]), images(tensors["x_test"][:n_valid])
    y_train, y_valid = tensors["y_train"][:n_train].clone(), tensors["y_test"][:n_valid].clone()
    if normalize:
        mean, std = x_train.mean(), x_train.std()
        x_train.sub_(mean).div_(std)
        x_valid.sub_(mean).div_(std)
    return DataLoaders.from_tensors(
        x_train, y_train, x_valid, y_valid, bs=bs, device=device, shuffle=shuffle, drop_last=drop_last,
        seed=seed, valid_bs=valid_bs, classes=list(FASHION_MNIST_CLASSES),
    )
