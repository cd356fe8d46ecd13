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
import numbers
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

from .checks import user_stacklevel

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; files are then never judged abandoned
    fcntl = None

__all__ = ["TEMP_SUFFIX", "NOFOLLOW", "atomic_write", "check_file_path", "open_for_write", "create_owned_file",
           "try_lock", "still_names", "remove_stale_temp_files", "remove_unowned_files", "umask_mode",
           "mode_for_new_content", "atomic_torch_save", "rng_state", "set_rng_state", "seeded_generator",
           "check_loader_state", "plain", "digest"]

# Our temporary files are `.<final name>.<pid>.<random>.cyclr-tmp` beside the final file: recognisable, so the next
# write of that file removes what a process killed mid-write left behind. Only files no process holds locked: another
# live process (in this container or another, on this host or another) may be writing the same file. The pid in the
# name is for people reading the folder; it decides nothing.
TEMP_SUFFIX = ".cyclr-tmp"


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then put it in place so that `path` holds either its old
    content or the complete new one, whatever happens: flush and fsync the file, rename it over `path` (atomic on
    POSIX and Windows), then fsync the directory so the rename itself survives a power cut.

    The file gets the mode a plain `open(path, 'w')` would give it: an existing regular file's mode is kept, anything
    else (a new file, a symbolic link, which is replaced, never written through) honours the umask. The temporary
    file is locked while in use (`create_owned_file`), so no other process removes it as stale."""
    path = Path(check_file_path(path))
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    mode = mode_for_new_content(path)
    fd, tmp = create_owned_file(directory, f".{path.name}.{os.getpid()}.", TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            _fchmod(f.fileno(), tmp, mode)  # mkstemp creates 0600 whatever the umask
            if fcntl is not None:  # kept open (so locked) until renamed: closed, it would look abandoned
                os.replace(tmp, path)  # replaces a symbolic link at `path` itself, never its target
        if fcntl is None:  # Windows: no such locks, and an open file cannot be renamed
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


def check_file_path(path, example: str = "model.pt") -> str:
    """`path` as a str, if it can name a file to write; else a ValueError saying what to pass instead."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"path is empty ({text!r}): pass a file name, e.g. {example!r}")
    if text.endswith((os.sep, "/")) or os.path.isdir(text):
        raise ValueError(f"path {text!r} is a folder: pass a file path in it, e.g. "
                         f"{os.path.join(text, example)!r}")
    return text


def _fchmod(fd: int, path: str, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows
        os.chmod(path, mode)


def _out_of_space(error: BaseException) -> bool:
    # torch.save reports a failed write to a file object as "unexpected pos", losing the OSError behind it.
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    return isinstance(error, RuntimeError) and "unexpected pos" in str(error)


def umask_mode() -> int:
    """The mode `open(path, 'w')` gives a new file: 0o666 less the umask."""
    umask = os.umask(0)  # the only way to read the umask is to set it: put it back at once
    os.umask(umask)
    return 0o666 & ~umask


def mode_for_new_content(path: Path) -> int:
    """The mode of the regular file at `path` (never of what a symbolic link there points to), else the umask's."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return umask_mode()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else umask_mode()


# ----- opening files on shared machines ------------------------------------------------------------------------------
_OPEN_FLAGS = {"w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
               "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC, "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # Windows has none; its symbolic links need privileges to create


def open_for_write(path, mode: str = "w", **kwargs):
    """`open(path, mode)` for writing ('w', 'a', 'w+', 'a+', each with 'b' or not; `kwargs` go to `open`, e.g.
    newline=''), except that it never writes through a symbolic link at `path`, nor into anything but a regular
    file: in a shared folder another user may plant a link there to make this process overwrite their target.
    A new file's mode comes from the umask; an existing regular file keeps its own."""
    base = mode.replace("b", "")
    if base not in _OPEN_FLAGS:
        raise ValueError(f"mode must be one of 'w', 'a', 'w+', 'a+' (with or without 'b'), got {mode!r}")
    # O_NONBLOCK: a FIFO planted at `path` would otherwise block the open until someone reads it.
    flags = _OPEN_FLAGS[base] | NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        _explain_refused_open(path, e)
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _explain_refused_open(path, None)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def _explain_refused_open(path, error: OSError | None) -> None:
    """Raise the reason `open_for_write` refused `path` when it is a link or not a regular file."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    where = os.fspath(path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, f"{where} is a symbolic link: cyclr does not write through one (in a shared folder "
                                   "another user may have planted it there to make your run overwrite its target); "
                                   "remove the link or choose another path") from error
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{where} is not a regular file (a FIFO, device, socket or folder): cyclr writes "
                                    "only regular files; choose another path") from error


# ----- files owned by a live process: decided by a lock it holds, never by its pid -----------------------------------
# A pid says nothing about a process in another pid namespace (a container sharing /tmp or a volume) or on another
# host sharing the file system. An advisory lock (flock; POSIX record locks over NFS) is held by whoever has the file
# open, wherever they run, and goes away when they exit, however they exit.
_LOCKS_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def try_lock(fd: int) -> bool | None:
    """Take an exclusive advisory lock on the open file `fd` without waiting: True when taken, False when another
    open file (another process, or another open of this process) holds it, None when the file system has no locks."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _LOCKS_UNSUPPORTED:
            return None
        raise
    return True


def still_names(fd: int, path) -> bool:
    """Whether `path` still names the open file `fd` (not removed, nor replaced by another file)."""
    try:
        linked = os.lstat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino)


def create_owned_file(directory, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file `<directory>/<prefix><random><suffix>` (mode 0600, never through a symbolic link), open and locked:
    `(fd, path)`. The lock marks it in use until the descriptor is closed (or the process dies), so
    `remove_unowned_files` leaves it alone."""
    for _ in range(100):
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)  # O_EXCL: never follows a link
        # Between mkstemp and the lock, a cleaner may have locked and removed it: then make another.
        if try_lock(fd) is not False and still_names(fd, path):
            return fd, path
        os.close(fd)
    raise OSError(errno.EAGAIN, f"could not create a file in {directory} that stays there: each one was removed as "
                                "soon as it was made (something else cleans this folder)")


def remove_stale_temp_files(path) -> list[Path]:
    """Remove the temporary files of `path` that no process holds any longer; returns them."""
    path = Path(path)
    return remove_unowned_files(path.parent, f".{path.name}.", TEMP_SUFFIX)


def remove_unowned_files(directory, prefix: str, suffix: str) -> list[Path]:
    """Remove the files `<prefix><pid>.*<suffix>` in `directory` that no process holds locked (`create_owned_file`):
    those a process left behind when it was killed, on this host or any other; returns them. A file whose lock cannot
    be taken, or cannot be tested (a file system without locks), or that is another user's, is kept."""
    removed = []
    for candidate in Path(directory).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        if not candidate.name[len(prefix):].split(".", 1)[0].isdigit():
            continue  # not named the way cyclr names its files
        try:
            fd = os.open(candidate, os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue  # gone already, a link, or not ours to read
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and try_lock(fd) and still_names(fd, candidate):
                os.unlink(candidate)  # we hold its lock: nobody owns it, and nobody can take it up now
                removed.append(candidate)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


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
            warnings.warn("the saved CUDA RNG states are for another set of GPUs: they are not restored",
                stacklevel=user_stacklevel())
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


def plain(value, where: str, hint: str = "", keep: tuple[type, ...] = (), config: bool = False):
    """`value` as plain values, the form a checkpoint holds: dicts (plain keys), lists and tuples of bool, int,
    float, str and None, with NumPy numbers made Python's and objects of the `keep` types (e.g. tensors) as they
    are. `config=True` asks for the form of a fit's config or a schedule's state, which are compared with the ones a
    checkpoint kept: string keys, and tuples made lists. Anything else raises a TypeError naming where it is
    (`where['lr'][1]`) and its type, followed by `hint` (what to do instead)."""
    if isinstance(value, keep):  # first: a torch.Size is a tuple, kept as it is
        return value
    if isinstance(value, dict):
        named = next((k for k in value if not isinstance(k, str)), None) if config else None
        if named is not None:
            raise TypeError(f"{where} key {named!r} is not a string (a config names its entries){hint}")
        return {plain(k, f"{where} key {k!r}", hint, keep): plain(v, f"{where}[{k!r}]", hint, keep, config)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]", hint, keep, config) for i, v in enumerate(value)]
        return items if config or isinstance(value, list) else tuple(items)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, not a plain value (bool, int, "
                    f"float, str, None, or a list, tuple or dict of them){hint}")


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
