"""State that must survive: one atomic write for every file cyclr keeps, and one capture / restore of the random
number generators (torch CPU and CUDA, NumPy, Python's `random`), in a form `torch.load(weights_only=True)` reads.

Used by checkpoints, the LR finder's snapshot and the data caches. Lives in `cyclr.data`, the package that imports
nothing else of cyclr, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import random
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["TEMP_SUFFIX", "atomic_write", "remove_stale_temp_files", "remove_files_of_dead_processes",
           "atomic_torch_save", "rng_state", "set_rng_state", "seeded_generator", "check_loader_state", "digest"]

# Our temporary files are `.<final name>.<pid>.<random>.cyclr-tmp` beside the final file: recognisable, so the next
# write of that file removes what a process killed mid-write left behind (only files of processes no longer alive:
# another live process may be writing the same file).
TEMP_SUFFIX = ".cyclr-tmp"


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then put it in place so that `path` holds either its old
    content or the complete new one, whatever happens: flush and fsync the file, rename it over `path` (atomic on
    POSIX and Windows), then fsync the directory so the rename itself survives a power cut.

    The file gets the mode a plain `open(path, 'w')` would give it: an existing file's mode is kept, a new file
    honours the umask."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600 whatever the umask
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _out_of_space(e):
            free = shutil.disk_usage(directory).free
            raise OSError(errno.ENOSPC, f"no space left at {directory} to write {path.name} ({free:,} bytes free); "
                                        f"the previous {path.name}, if any, is intact: free some space and save "
                                        "again") from e
        raise
    fsync_directory(directory)
    return path


def _out_of_space(error: BaseException) -> bool:
    # torch.save reports a failed write to a file object as "unexpected pos", losing the OSError behind it.
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, RuntimeError) and "unexpected pos" in str(error)


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only way to read the umask is to set it: put it back at once
        os.umask(umask)
        return 0o666 & ~umask


def remove_stale_temp_files(path) -> list[Path]:
    """Remove the temporary files of `path` that processes no longer running left behind; returns them."""
    path = Path(path)
    return remove_files_of_dead_processes(path.parent, f".{path.name}.", TEMP_SUFFIX)


def remove_files_of_dead_processes(directory, prefix: str, suffix: str, *, own_in_use: bool = False) -> list[Path]:
    """Remove the files `<prefix><pid>.<anything><suffix>` in `directory` whose process `pid` is no longer running;
    returns them. Files of this process count as stale too, unless `own_in_use` (it may still be using them)."""
    removed = []
    for tmp in Path(directory).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not (own_in_use and int(pid) == os.getpid()) and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: an exception between write and rename was cleaned up already
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def atomic_torch_save(obj, path) -> Path:
    """`torch.save(obj)` to `path` through `atomic_write`."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its rename is durable without this
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Every RNG's state, as tensors and plain values (NumPy's Mersenne Twister key as an int64 tensor)."""
    state = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:  # numpy is optional: nothing to save then
        return state
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state["numpy"] = {"key": torch.from_numpy(key.astype("int64")), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)}
    return state


def set_rng_state(state: dict) -> None:
    """Put back what `rng_state` captured. CUDA states of another set of GPUs are skipped with a warning."""
    torch.set_rng_state(state["torch"])
    saved_random = state["random"]
    # After torch.load the tuple's inner state is a list: random.setstate wants tuples.
    random.setstate((saved_random[0], tuple(saved_random[1]), saved_random[2]))
    if "cuda" in state:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn("the saved CUDA RNG states are for another set of GPUs: they are not restored", stacklevel=3)
    if "numpy" in state:
        import numpy as np

        saved = state["numpy"]
        np.random.set_state(("MT19937", saved["key"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                             saved["cached_gaussian"]))


def seeded_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()  # CPU: its state is portable and identical on every rank and machine
    generator.manual_seed(seed)
    return generator


def check_loader_state(state: dict, owner: str) -> None:
    """A loader's state_dict as InMemoryLoader and TorchLoader write it: a generator state and an epoch counter."""
    if not isinstance(state, dict) or not {"generator", "epoch"} <= state.keys():
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{owner}.load_state_dict expects the dict returned by {owner}.state_dict() "
            f"(keys 'generator' and 'epoch'), got {got}"
        )
    generator_state = state["generator"]
    if not (isinstance(generator_state, torch.Tensor) and generator_state.dtype == torch.uint8):
        raise TypeError(f"state['generator'] must be a torch.uint8 tensor (a generator state), got {generator_state!r}")


def digest(obj) -> str:
    """SHA-256 over a nest of dicts, lists and tuples of tensors and plain values: each tensor's dtype, shape and
    bytes, each plain value's repr, dict keys in sorted order. One flipped bit anywhere changes it."""
    sha = hashlib.sha256()

    def feed(item) -> None:
        if isinstance(item, torch.Tensor):
            tensor = item.detach().cpu().contiguous()
            sha.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            if tensor.numel():  # an empty tensor has no bytes (and may have a stride torch cannot view as bytes)
                sha.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(item, dict):
            sha.update(f"D{len(item)}".encode())
            for key in sorted(item, key=repr):
                feed(key)
                feed(item[key])
        elif isinstance(item, (list, tuple)):
            sha.update(f"L{len(item)}".encode())
            for element in item:
                feed(element)
        else:
            sha.update(f"V{item!r};".encode())

    feed(obj)
    return sha.hexdigest()
