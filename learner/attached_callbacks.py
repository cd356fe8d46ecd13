"""The callbacks attached to a Learner (mixed into `Learner`): adding and removing them, the per-event hook lists
the loop dispatches to, and views of them (`show_loop`, `progress`, `no_bar`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from ..callbacks.core import EVENTS, Callback, check_hook_names
from ..callbacks.progress import ProgressCallback

# How deep each event sits in the loop, for show_loop.
_DEPTH = {"before_fit": 0, "before_epoch": 1, "before_train": 2, "before_batch": 3, "after_pred": 4, "after_loss": 4,
          "before_backward": 4, "before_step": 4, "after_step": 4, "after_batch": 3, "after_train": 2,
          "before_validate": 2, "after_validate": 2, "after_epoch": 1, "after_fit": 0, "cleanup_fit": 0}


class AttachedCallbacks:
    """Writes the Learner's cbs (sorted by order) and _hooks (each event's bound hooks, which the dispatch runs),
    both declared in `Learner.__init__`."""

    def add_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            check_hook_names(cb)
            if cb in self.cbs:
                raise ValueError(f"{cb.name} is already attached to this learner")
            self.cbs.append(cb)
        self._rebuild_hooks()

    def remove_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)
        self._rebuild_hooks()

    def _rebuild_hooks(self) -> None:
        # Sorted once here, never per event: the loop's per-batch dispatch is a plain loop over bound methods.
        self.cbs.sort(key=lambda cb: cb.order)  # stable: ties keep insertion order
        self._hooks = {e: [getattr(cb, e) for cb in self.cbs if hasattr(cb, e)] for e in EVENTS}

    def show_loop(self) -> None:
        """Print each event of the fit loop, indented by nesting, with the callbacks that run at it, in order."""
        for event in EVENTS:
            names = ", ".join(type(hook.__self__).__name__ for hook in self._hooks[event])
            print(f"{'  ' * _DEPTH[event]}{event}: {names or '-'}")

    @property
    def progress(self) -> ProgressCallback | None:
        return next((cb for cb in self.cbs if isinstance(cb, ProgressCallback)), None)

    @contextlib.contextmanager
    def no_bar(self):
        """Train without progress bars and table inside this block."""
        bar = self.progress
        if bar is not None:
            self.remove_cbs([bar])
        try:
            yield self
        finally:
            if bar is not None:
                self.add_cbs([bar])
