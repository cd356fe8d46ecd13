"""A logger's failure held until the epoch's checkpoint is written.

The loggers (CSVLogger at order 57, TensorBoard and MLflow at 58) write the epoch's row before SaveModelCallback (90)
saves, on purpose: the checkpoint records how far they wrote. A logger that cannot write (a full disk under its
folder, a store that refuses a write) must not cost that checkpoint, whose own disk may be healthy. So it keeps its
first failure, writes nothing more, and raises it at the next event, once the checkpoint is written: `before_epoch`
of the next epoch, or `after_fit` after the last one. The checkpoint holds the logger's state as of its last complete
write, so a fit resumed from it writes the rest again.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LoggerError", "HeldFailure"]


class LoggerError(RuntimeError):
    """A logger could not write; raised once the epoch's checkpoint was written (the original error is its cause)."""


class HeldFailure:
    """The first failure of a logger's writes, kept until `raise_if_held()`."""

    def __init__(self):
        self.error: LoggerError | None = None

    def attempt(self, write: Callable[[], None], describe: Callable[[Exception], str]) -> None:
        """Call `write()`, unless a failure is held already (nothing more is written after one); an exception it
        raises is held as a LoggerError saying `describe(exception)`."""
        if self.error is not None:
            return
        try:
            write()
        except Exception as e:  # noqa: BLE001 - any failure of a logger must wait for the checkpoint
            self.error = LoggerError(describe(e))
            self.error.__cause__ = e

    def raise_if_held(self) -> None:
        if self.error is not None:
            raise self.error


def after_checkpoint(what_failed: str, logged: str) -> str:
    """The end of a held failure's message: what happened to the fit, and what to do."""
    return (f"{what_failed}. Training itself went on until this error was raised, once the epoch's checkpoint (if "
            f"any) was written; that checkpoint records {logged}, so a fit resumed from it writes the rest again. "
            "Free space or fix the location, then resume; or remove the logger to train without it")
