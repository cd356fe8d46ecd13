"""cyclr's callbacks: events, cancellation, the Recorder, progress bars, schedules and the LR finder."""

from .averaging import EMA, SWA, swa_cycles, swa_scheds
from .checkpoint import SaveModelCallback
from .compare import compare_runs, stack_runs
from .core import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
)
from .csv_logger import CSVLogger
from .ensembles import SnapshotEnsemble
from .held_failure import LoggerError
from .loggers import MLflowCallback, TensorBoardCallback
from .mixed_precision import MixedPrecision
from .monitors import EarlyStoppingCallback, ReduceLROnPlateau
from .preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCheckpoint
from .progress import ProgressCallback
from .recorder import Recorder
from .schedule_tail import HeadTail
from .scheduler import CyclicLRCallback, FlatCosCallback, OneCycleCallback, ParamScheduler, SGDRCallback
from .torch_scheduler import TorchScheduler
from .training import GradientAccumulation, GradientClip, TerminateOnNaNCallback
from .tuning import OptunaPruning, tune_lr

__all__ = [
    "EVENTS", "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException",
    "CancelTrainException", "CancelValidException", "ProgressCallback", "Recorder",
    "ParamScheduler", "OneCycleCallback", "SGDRCallback", "CyclicLRCallback", "FlatCosCallback", "compare_runs",
    "stack_runs", "TorchScheduler",
    "SaveModelCallback", "EarlyStoppingCallback", "ReduceLROnPlateau", "TerminateOnNaNCallback", "GradientClip",
    "GradientAccumulation", "CSVLogger", "MixedPrecision", "TensorBoardCallback", "MLflowCallback", "LoggerError",
    "OptunaPruning", "tune_lr", "SWA", "EMA", "SnapshotEnsemble", "swa_scheds", "swa_cycles",
    "HeadTail", "PreemptionCheckpoint", "Preempted", "PREEMPTED_EXIT_CODE",
]
