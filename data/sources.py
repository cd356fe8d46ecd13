"""Where data sets come from and where their decoded tensors are kept: one search order for the source files (the
caller's `root`, $CYCLR_DATA, a default such as a Debian package, then torchvision's downloader with short timeouts),
and one on-disk cache of decoded tensors (`$XDG_CACHE_HOME/cyclr/<name>.pt`), written atomically."""

from __future__ import annotations

import os
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch

from .checks import user_stacklevel
from .state import atomic_torch_save, digest

__all__ = ["DOWNLOAD_TIMEOUT_S", "cache_dir", "disk_cache_path", "tensors_digest", "read_disk_cache",
           "write_disk_cache",
           "check_reachable", "guarded_download", "locate_data"]

DOWNLOAD_TIMEOUT_S = 15.0  # per socket operation; DNS lookups get their own bound in check_reachable


def cache_dir() -> Path:
    """cyclr's cache folder: `$XDG_CACHE_HOME/cyclr`, by default `~/.cache/cyclr`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "cyclr"


def disk_cache_path(name: str) -> Path:
    return cache_dir() / f"{name}.pt"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """What a cache stores beside its tensors to recognise damage (`cyclr.data.state.digest`)."""
    return digest(tensors)


def read_disk_cache(key: str, name: str) -> dict[str, torch.Tensor] | None:
    """The tensors saved under `name` if they were saved with the same `key` and are intact (else None: decode
    again). A file whose tensors do not match the checksum stored with them is reported and ignored."""
    path = disk_cache_path(name)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # a truncated or foreign file: decode again and overwrite it
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    tensors = {field: value for field, value in saved.items() if field not in ("key", "sha256")}
    if "sha256" not in saved:
        return None  # written before caches carried a checksum: decode again and rewrite it
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()) or saved["sha256"] != tensors_digest(tensors):
        warnings.warn(f"the cache {path} is damaged (its tensors do not match their checksum): decoding the source "
                      "files again", stacklevel=user_stacklevel())
        return None
    return tensors


def write_disk_cache(key: str, tensors: dict[str, torch.Tensor], name: str) -> None:
    path = disk_cache_path(name)
    try:
        # Written atomically: a reader never sees half a file.
        atomic_torch_save({"key": key, "sha256": tensors_digest(tensors), **tensors}, path)
    except OSError:
        pass  # a read-only home is no reason to fail: the data were decoded, only the next load is slower


def check_reachable(url: str, timeout: float) -> None:
    """Fail within `timeout` when the host cannot be resolved or reached (DNS ignores socket timeouts)."""
    host = urlparse(url).hostname
    port = urlparse(url).port or (443 if url.startswith("https") else 80)
    outcome: list = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except Exception as error:  # handed to the caller; a thread must not die with it
            outcome.append(error)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"no answer from {host} within {timeout:.0f} s")
    if outcome[0] is not None:
        raise outcome[0]


def guarded_download(dataset_class, probe_url: str, download_root: Path, **kwargs) -> None:
    """Run a torchvision data set's downloader, failing within seconds when `probe_url`'s host is unreachable."""
    check_reachable(probe_url, DOWNLOAD_TIMEOUT_S)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib, which torchvision uses, would otherwise wait forever
    try:
        dataset_class(str(download_root), download=True, **kwargs)
    finally:
        socket.setdefaulttimeout(previous)


def locate_data(name: str, root, download: bool, default: tuple[str, Path], find, downloader, options: str):
    """Find a data set in, in order, `root`, $CYCLR_DATA and `default` (a label and a location), then, when
    `download`, in what torchvision's downloader (`downloader(download_root)`) leaves. `find(location)` returns
    what it found there or None. When nothing works: a FileNotFoundError naming every place tried and `options`."""
    candidates = []
    if root is not None:
        candidates.append(("root", Path(root)))
    env_dir = os.environ.get("CYCLR_DATA")
    if env_dir:
        candidates.append(("$CYCLR_DATA", Path(env_dir)))
    candidates.append(default)
    for _, location in candidates:
        found = find(location)
        if found is not None:
            return found

    tried = "; ".join(f"{label} ({location})" for label, location in candidates)
    download_note = "download=False, so torchvision's downloader was not tried"
    if download:
        download_root = Path(root) if root is not None else Path(env_dir) if env_dir else cache_dir()
        try:
            found = find(downloader(download_root))
            if found is not None:
                return found
            download_note = f"torchvision's downloader left no usable files in {download_root}"
        except Exception as error:  # any failure here ends in the one clear error below
            download_note = f"torchvision's downloader failed: {type(error).__name__}: {error}"
    raise FileNotFoundError(f"{name} not found in: {tried}; {download_note}.\nOptions: {options}")
