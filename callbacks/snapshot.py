"""`TrainingSnapshot`: everything a sweep of training steps changes, saved and put back, so the LR finder leaves no
trace (weights, buffers, gradients, optimizer state and hyperparameters, RNG states, loader shuffling states,
callback states, loop counters)."""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile

import torch

from ..data.nested import map_leaves, tensors_in
from ..data.state import create_owned_file, remove_unowned_files, rng_state, set_rng_state

# Above this many bytes of weights, buffers, gradients and optimizer state, the snapshot goes to a temporary file.
SNAPSHOT_MEMORY_LIMIT = 1 << 30
# Its name is `cyclr-lr-find-<pid>.<random>.pt` in the temporary directory. The snapshot keeps it open and locked
# until discarded: a process killed mid-sweep (SIGKILL, out of memory) cannot remove its file, but its lock dies with
# it, so the next snapshot written to a file removes the files nobody holds. A live process's snapshot is left alone,
# whatever its pid looks like from here (another container, another host sharing the folder).
_FILE_PREFIX, _FILE_SUFFIX = "cyclr-lr-find-", ".pt"
# The learner's loop attributes a sweep changes: its counters (put back through `learn.set_counters`, the one place
# they change), then what the loop is doing, and the last fit's batches an epoch from a stream (the sweep's own fit
# sets it).
_COUNTERS = ("epoch", "n_epoch", "iter", "train_iter", "n_train_iters")
_LOOP_STATE = (*_COUNTERS, "training", "dl", "xb", "yb", "pred", "loss", "steps_per_epoch")


def _tensor_bytes(obj) -> int:
    return sum(t.numel() * t.element_size() for t in tensors_in(obj))


def _clone_tensors(obj):
    """A copy whose tensors share no memory with the original (so later in-place updates cannot reach it)."""
    return map_leaves(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v), obj)


class TrainingSnapshot:
    """Everything a sweep of training steps changes, saved now and put back by `restore()`, any number of times.

    Saved: the model's parameters, buffers, gradients and train/eval flags; the optimizer (the object, its state
    and every group's hyperparameters, or its absence); the RNG states (torch CPU and CUDA, numpy, python
    `random`); the loaders' shuffling state (`dls.state_dict()`); the attached callbacks and their `state_dict()`;
    the learner's loop counters. Tensors are copied in memory, or, when weights + gradients + optimizer state exceed
    `memory_limit` bytes, written to a temporary file that `discard()` removes (or, if this process is killed
    first, the next snapshot written to a file by any process).
    """

    def __init__(self, learn, memory_limit: int = SNAPSHOT_MEMORY_LIMIT):
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit < 0:
            raise ValueError(f"memory_limit must be an int >= 0 (bytes), got {memory_limit!r}")
        self.model = learn.model
        self.opt = learn.opt
        self.params = list(self.model.parameters())
        self.module_modes = [m.training for m in self.model.modules()]
        tensors = {
            "model": self.model.state_dict(),
            "grads": [None if p.grad is None else p.grad.detach() for p in self.params],
            "opt": None if self.opt is None else self.opt.state_dict(),
        }
        self.nbytes = _tensor_bytes(tensors)
        self.path: str | None = None
        self._file = None  # the open, locked snapshot file, when the tensors are kept in one
        if self.nbytes > memory_limit:
            remove_unowned_files(tempfile.gettempdir(), _FILE_PREFIX, _FILE_SUFFIX)
            fd, self.path = create_owned_file(tempfile.gettempdir(), f"{_FILE_PREFIX}{os.getpid()}.", _FILE_SUFFIX)
            self._file = os.fdopen(fd, "w+b")
            try:
                torch.save(tensors, self._file)
                self._file.flush()
            except BaseException:
                self.discard()
                raise
            self._tensors = None
        else:
            self._tensors = _clone_tensors(tensors)

        self.rng = rng_state()
        self.dls_state = copy.deepcopy(learn.dls.state_dict()) if hasattr(learn.dls, "state_dict") else None
        self.cbs = list(learn.cbs)
        self.cb_states = [copy.deepcopy(cb.state_dict()) for cb in self.cbs]
        self.loop_state = {name: getattr(learn, name) for name in _LOOP_STATE if hasattr(learn, name)}

    def _load_tensors(self) -> dict:
        if self._tensors is not None:
            # Copies again: optimizer.load_state_dict keeps the tensors it is given, and the next sweep updates them
            # in place.
            return _clone_tensors(self._tensors)
        self._file.seek(0)  # read through the descriptor this snapshot holds, whatever happened to the name
        return torch.load(self._file, weights_only=True)

    def restore(self, learn) -> None:
        tensors = self._load_tensors()
        learn.model = self.model
        with torch.no_grad():
            self.model.load_state_dict(tensors["model"])
        for p, g in zip(self.params, tensors["grads"], strict=True):
            p.grad = g
        for m, mode in zip(self.model.modules(), self.module_modes, strict=True):
            m.training = mode
        learn.opt = self.opt
        if self.opt is not None:
            self.opt.load_state_dict(tensors["opt"])
        set_rng_state(self.rng)
        if self.dls_state is not None:
            learn.dls.load_state_dict(copy.deepcopy(self.dls_state))
        set_counters = getattr(learn, "set_counters", None)  # a learner of one's own may not have it
        for name, value in self.loop_state.items():
            if name in _COUNTERS and set_counters is not None:
                set_counters(**{name: value})
            else:
                setattr(learn, name, value)
        if learn.cbs != self.cbs:  # a callback added or removed callbacks during the sweep
            learn.remove_cbs(list(learn.cbs))
            learn.add_cbs(self.cbs)
        for cb, state in zip(self.cbs, self.cb_states, strict=True):
            cb.load_state_dict(copy.deepcopy(state))

    def discard(self) -> None:
        """Remove the temporary file, if any (unlinked while still locked: no other process can take it up)."""
        if self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self._file.close()
        self._file, self.path = None, None

