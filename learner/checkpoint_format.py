"""What a checkpoint is: its format name and versions, the places in a fit it can mark, its parts, and the one error
that a checkpoint which cannot be read, or does not fit, raises."""

from __future__ import annotations

# Version 2 adds `checksum`, a SHA-256 over every tensor and value of the other parts, checked when read. Version 3
# keeps the Recorder's batch history by column, inline or in a side file (callbacks/history.py). Versions 1 and 2
# (no checksum; history as a list of row dicts) are still read.
FORMAT, VERSION, READABLE_VERSIONS = "cyclr-checkpoint", 3, (1, 2, 3)
POSITIONS = ("epoch_end", "batch_end", "outside_fit")
PARTS = ("model", "optimizer", "progress", "callbacks", "data", "rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit this learner; raised before the learner is changed."""


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
