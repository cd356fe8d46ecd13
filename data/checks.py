"""The argument checks every part of cyclr uses: one family, one message style.

Each check names the parameter, the values it allows and the value it got, and returns the value so a constructor can
check and assign in one line. NumPy scalars pass wherever the Python number of the same kind does (`np.float32(0.1)` is
a real number, `np.int64(3)` an int); `True` never passes for a number, as `bs=True` is always a mistake.

This module lives in `cyclr.data` because `data` is the package that stands alone: `callbacks` and `learner` import
it, it imports nothing of cyclr.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from collections.abc import Sequence

__all__ = ["real", "positive", "non_negative", "int_at_least", "in_unit_interval", "one_of", "shard_position",
           "user_stacklevel"]

# cyclr's three packages, side by side: a frame whose file lies in one of them is the library's.
_LIBRARY = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), package, "")
                 for package in ("learner", "callbacks", "data"))


def user_stacklevel() -> int:
    """The `stacklevel` that makes a `warnings.warn` in the calling function point at the user's line: the first
    frame outside cyclr's packages (a notebook cell, a script), however deep in the library the warning is raised.
    Called as `warnings.warn(message, category, stacklevel=user_stacklevel())`."""
    frame, level = sys._getframe(1), 1  # the frame calling warnings.warn: level 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY):
        frame, level = frame.f_back, level + 1
    return level


def real(name: str, value, hint: str = ""):
    """A finite real number (int, float or a NumPy scalar)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r}){hint}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}{hint}")
    return value


def positive(name: str, value, hint: str = ""):
    """A finite number > 0."""
    if real(name, value, hint) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}{hint}")
    return value


def non_negative(name: str, value, hint: str = ""):
    """A finite number >= 0."""
    if real(name, value, hint) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}{hint}")
    return value


def in_unit_interval(name: str, value, what: str = "a momentum or Adam beta", hint: str = ""):
    """A number in [0, 1): a momentum, an Adam beta, a smoothing factor."""
    if not 0 <= real(name, value, hint) < 1:
        raise ValueError(f"{name} must be in [0, 1) ({what}), got {value!r}{hint}")
    return value


def int_at_least(name: str, value, minimum: int, hint: str = "") -> int:
    """An int (or NumPy integer) >= `minimum`, returned as a Python int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} ({value!r}){hint}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}{hint}")
    return int(value)


def one_of(name: str, value, choices: Sequence, hint: str = ""):
    """One of a fixed set of values (usually strings)."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}{hint}")
    return value


def shard_position(rank: int, world_size: int) -> None:
    """A process's place among `world_size` data-parallel processes."""
    int_at_least("world_size", world_size, 1)
    int_at_least("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size - 1] = [0, {world_size - 1}], got rank={rank}")
