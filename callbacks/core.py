"""Events, cancellation exceptions and the Callback base class.

A callback is a small class with an ``order`` and methods named exactly like the events it handles. Each hook
receives the learner explicitly: ``def after_batch(self, learn): ...``.
"""

from __future__ import annotations

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "before_backward", "before_step", "after_step", "after_batch", "after_train",
    "before_validate", "after_validate", "after_epoch", "after_fit", "cleanup_fit",
)


class CancelBatchException(Exception):
    """Skip the rest of this batch and go to `after_batch`."""


class CancelTrainException(Exception):
    """Skip the rest of the training phase of this epoch and go to `after_train`."""


class CancelValidException(Exception):
    """Skip the rest of the validation phase of this epoch and go to `after_validate`."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch and go to `after_epoch`."""


class CancelFitException(Exception):
    """Stop training now and go to `after_fit`."""


_HOOK_PREFIXES = ("before_", "after_", "cleanup_")


class Callback:
    """Base class for callbacks. Lower `order` runs first; ties keep insertion order."""

    order = 0

    @property
    def name(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict:
        """Plain values and tensors only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"{self.name}(order={self.order})"


def check_hook_names(cb: Callback) -> None:
    """Refuse a callback whose method names look like hooks but are not events (e.g. ``after_batc``)."""
    if not isinstance(cb, Callback):
        raise TypeError(
            f"callbacks must be instances of callbacks.Callback, got {type(cb).__name__}; "
            "subclass Callback and pass an instance (did you pass the class instead of `MyCallback()`?)"
        )
    for attr in dir(type(cb)):
        if attr.startswith(_HOOK_PREFIXES) and attr not in EVENTS and callable(getattr(cb, attr, None)):
            close = [e for e in EVENTS if _similar(attr, e)]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{cb.name} defines {attr!r}, which is not an event.{hint} Events are: {', '.join(EVENTS)}."
            )


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.8
