"""cyclr's callbacks: events, cancellation, the Recorder, progress bars, schedules and the LR finder."""

from .core import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
)
from .progress import ProgressCallback
from .recorder import Recorder
from .scheduler import CyclicLRCallback, OneCycleCallback, ParamScheduler, SGDRCallback

__all__ = [
    "EVENTS", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException",
    "CancelTrainException", "CancelValidException", "ProgressCallback", "Recorder",
    "ParamScheduler", "OneCycleCallback", "SGDRCallback", "CyclicLRCallback",
]
