"""One writer at a time for a run's files, across processes, containers and hosts sharing a folder.

A `WriterLock` is an advisory lock (flock; NFS clients turn it into a POSIX record lock the server keeps) on a small
file, `<name>.lock`, that says who holds it: `pid 4242 on host node7 since 2026-12-04T07:30:00`. The kernel drops
the lock when its holder exits, however it exits, so a killed writer never blocks the next one. Where the file system
refuses locks (ENOLCK: an NFS mount without a lock daemon), the lock file is created exclusively instead and removed
on release: writers still exclude each other, and one killed while holding it leaves the file behind, to be removed
by hand (the message says where).

The lock is reentrant within a process (SaveModelCallback holds it for the fit, each save takes it again).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
import warnings
from pathlib import Path

from .checks import user_stacklevel
from .state import NOFOLLOW, still_names, try_lock

__all__ = ["WriterConflictError", "WriterLock"]


class WriterConflictError(RuntimeError):
    """Another process is writing the files this one was about to write."""


class WriterLock:
    """An exclusive lock on `path` (a lock file, created when needed) for `what` (said in messages), held from
    `acquire()` to `release()`."""

    # lock file (absolute) -> [descriptor, times acquired], for this process
    _held: dict[str, list] = {}

    def __init__(self, path, what: str):
        self.path, self.what = Path(path), what
        self.key = os.path.abspath(path)

    @property
    def held(self) -> bool:
        return self.key in self._held

    def acquire(self) -> None:
        """Take the lock now or raise `WriterConflictError` naming the process that holds it; never waits."""
        if self.key in self._held:
            self._held[self.key][1] += 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd, created = self._open()
            try:
                locked = try_lock(fd)
                no_locks = locked is None
                if no_locks:
                    locked = self._exclusive_create_fallback(created)
                if not locked:
                    raise WriterConflictError(self._conflict_message(fd, no_locks))
                # A holder releasing it unlinks the file before closing it: the lock we got may be on that old file.
                if still_names(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        with contextlib.suppress(OSError):  # on a full disk the lock holds all the same, its owner just unnamed
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        self._held[self.key] = [fd, 1]

    def release(self) -> None:
        entry = self._held.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self.key]
            fd = entry[0]
            if still_names(fd, self.path):
                with contextlib.suppress(OSError):
                    os.unlink(self.path)  # while still locked: the next writer finds no file, or a new one
            os.close(fd)

    def _open(self) -> tuple[int, bool]:
        """The lock file, open, and whether this call created it."""
        flags = os.O_RDWR | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        while True:
            try:
                return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                pass
            try:
                return os.open(self.path, flags), False
            except FileNotFoundError:
                continue  # released in between
            except OSError as e:
                if os.path.islink(self.path):
                    raise OSError(errno.ELOOP, f"{self.path} is a symbolic link: cyclr does not write through one; "
                                               "remove it") from e
                raise

    def _exclusive_create_fallback(self, created: bool) -> bool:
        warnings.warn(
            f"the file system at {self.path.parent} refuses advisory locks (ENOLCK): {self.what} is guarded by the "
            f"exclusive creation of {self.path.name} instead; a process killed while writing leaves that file behind, "
            "and it must then be removed by hand", stacklevel=user_stacklevel())
        return created

    def _conflict_message(self, fd: int, no_locks: bool) -> str:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = (os.read(fd, 512).decode(errors="replace").strip()
                 or "its name not written yet, or not at all on a full disk")
        fallback = (f" (this file system has no locks: if that process is not running any more, remove {self.path})"
                    if no_locks else "")
        return (f"{self.what} is being written by another process ({owner}), which holds {self.path}{fallback}. "
                "Two processes writing one run's files would corrupt them: wait for that one to finish, stop it, or "
                "write this run's files elsewhere (another checkpoint path)")

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
