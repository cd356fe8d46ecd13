"""cyclr: see and control your learning rate. A fastai-style Learner for PyTorch with an LR finder, one-cycle,
SGDR, cyclical and classic schedules.

Everything a user needs comes from here; `cyclr.__all__` is the list the documentation's reference shows::

    from cyclr import Learner, fashion_mnist, accuracy, lenet, one_cycle, ParamScheduler, LRFinderCallback

The library's folders install as the subpackages `cyclr.learner` (the Learner, metrics, models, optimizers),
`cyclr.callbacks` (the callback protocol, the callbacks, the LR finder, and `cyclr.callbacks.schedules`) and
`cyclr.data` (DataLoaders and data sets). Importing cyclr stays light (pandas, matplotlib, the trackers load when
first used); CIFAR-10, which needs Pillow, is imported by name: `from cyclr.data.cifar10 import cifar10`.
"""

# Each name is imported from the module that defines it. The subpackages' __init__ files import nothing, so every
# public name has one import path: this one.
from .callbacks.averaging import EMA, SWA, swa_cycles, swa_scheds
from .callbacks.checkpoint import SaveModelCallback
from .callbacks.compare import compare_runs, stack_runs
from .callbacks.core import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
)
from .callbacks.csv_logger import CSVLogger
from .callbacks.ensembles import SnapshotEnsemble
from .callbacks.held_failure import LoggerError
from .callbacks.loggers import MLflowCallback, TensorBoardCallback
from .callbacks.lr_finder import LR_FIND, LRFinderCallback
from .callbacks.lr_result import LRFinderResult, LRFinderSweep
from .callbacks.lr_suggest import Suggestion
from .callbacks.mixed_precision import MixedPrecision
from .callbacks.monitors import EarlyStoppingCallback, ReduceLROnPlateau
from .callbacks.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCheckpoint
from .callbacks.progress import ProgressCallback
from .callbacks.recorder import Recorder
from .callbacks.schedule_tail import HeadTail
from .callbacks.scheduler import CyclicLRCallback, FlatCosCallback, OneCycleCallback, ParamScheduler, SGDRCallback
from .callbacks.schedules.base import Const, Cos, Exp, Lin, Poly, Schedule, combine, schedule_from_state
from .callbacks.schedules.cycles import (
    CYCLICAL,
    FLAT_COS,
    ONE_CYCLE,
    SGDR_DEFAULTS,
    cyclical,
    exp_range,
    flat_cos,
    one_cycle,
    sgdr,
    triangular,
    triangular2,
)
from .callbacks.schedules.decay import cosine, factor, multi_factor, square_root, warmup
from .callbacks.torch_scheduler import TorchScheduler
from .callbacks.training import GradientAccumulation, GradientClip, TerminateOnNaNCallback
from .callbacks.tuning import OptunaPruning, tune_lr
from .data.core import DataLoaders
from .data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist, load_fashion_mnist
from .data.in_memory import InMemoryLoader
from .data.synthetic import synthetic_classification, synthetic_regression, tiny_images
from .data.torch_loader import TorchLoader
from .data.writer_lock import WriterConflictError
from .learner.checkpoint_format import CheckpointError
from .learner.learner import Learner
from .learner.metrics import AccumMetric, Metric, accuracy, error_rate, mae, rmse, top_k_accuracy
from .learner.models import lenet, lenet_bn, resnet56
from .learner.optimizer import adam, sgd

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

# The list the documentation shows (docs/reference/index.md), grouped as it is there.
__all__ = [
    # the Learner, its optimizers, metrics and models
    "Learner", "adam", "sgd", "accuracy", "error_rate", "top_k_accuracy", "rmse", "mae", "AccumMetric", "Metric",
    "lenet", "lenet_bn", "resnet56", "CheckpointError", "WriterConflictError",
    # data
    "DataLoaders", "InMemoryLoader", "TorchLoader", "fashion_mnist", "load_fashion_mnist", "FASHION_MNIST_CLASSES",
    "synthetic_classification", "synthetic_regression", "tiny_images",
    # the callback protocol
    "Callback", "EVENTS", "CancelBatchException", "CancelTrainException", "CancelValidException",
    "CancelEpochException", "CancelFitException",
    # callbacks
    "Recorder", "ProgressCallback", "ParamScheduler", "OneCycleCallback", "FlatCosCallback", "SGDRCallback",
    "CyclicLRCallback", "SaveModelCallback", "EarlyStoppingCallback", "ReduceLROnPlateau", "TerminateOnNaNCallback",
    "GradientClip", "GradientAccumulation", "CSVLogger", "MixedPrecision", "TensorBoardCallback", "MLflowCallback",
    "TorchScheduler", "compare_runs", "stack_runs", "LoggerError",
    # preemption: save at the signal, exit 75, resume='auto' on the requeue
    "PreemptionCheckpoint", "Preempted", "PREEMPTED_EXIT_CODE",
    # weight averaging and ensembles
    "SWA", "EMA", "swa_scheds", "swa_cycles", "HeadTail", "SnapshotEnsemble",
    # tuning
    "tune_lr", "OptunaPruning",
    # the LR finder
    "LRFinderCallback", "LRFinderResult", "LRFinderSweep", "Suggestion", "LR_FIND",
    # schedules
    "Schedule", "Lin", "Cos", "Exp", "Poly", "Const", "combine", "one_cycle", "flat_cos", "sgdr", "cyclical",
    "triangular", "triangular2", "exp_range", "square_root", "factor", "multi_factor", "cosine", "warmup",
    "schedule_from_state", "ONE_CYCLE", "FLAT_COS", "SGDR_DEFAULTS", "CYCLICAL",
]
