"""cyclr: see and control your learning rate. A fastai-style Learner for PyTorch with an LR finder, one-cycle,
SGDR, cyclical and classic schedules.

Everything a user needs comes from here; `cyclr.__all__` is the list the documentation's reference shows::

    from cyclr import Learner, fashion_mnist, accuracy, lenet, one_cycle, ParamScheduler, LRFinderCallback

The library's folders install as the subpackages `cyclr.learner` (the Learner, metrics, models, optimizers),
`cyclr.callbacks` (the callback protocol, the callbacks, the LR finder, and `cyclr.callbacks.schedules`) and
`cyclr.data` (DataLoaders and data sets). Importing cyclr stays light (pandas, matplotlib, the trackers load when
first used); CIFAR-10, which needs Pillow, is imported by name: `from cyclr.data.cifar10 import cifar10`.
"""

# Each subpackage's __init__ names what it offers; the names that it does not (yet) export come from their module.
from .callbacks import (
    EMA,
    EVENTS,
    PREEMPTED_EXIT_CODE,
    SWA,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    CSVLogger,
    CyclicLRCallback,
    EarlyStoppingCallback,
    FlatCosCallback,
    GradientAccumulation,
    GradientClip,
    HeadTail,
    LoggerError,
    MixedPrecision,
    MLflowCallback,
    OneCycleCallback,
    OptunaPruning,
    ParamScheduler,
    Preempted,
    PreemptionCheckpoint,
    ProgressCallback,
    Recorder,
    ReduceLROnPlateau,
    SaveModelCallback,
    SGDRCallback,
    SnapshotEnsemble,
    TensorBoardCallback,
    TerminateOnNaNCallback,
    TorchScheduler,
    compare_runs,
    stack_runs,
    swa_cycles,
    swa_scheds,
    tune_lr,
)
from .callbacks.lr_finder import LR_FIND, LRFinderCallback, LRFinderResult, LRFinderSweep, Suggestion
from .callbacks.schedules import (
    CYCLICAL,
    FLAT_COS,
    ONE_CYCLE,
    SGDR_DEFAULTS,
    Const,
    Cos,
    Exp,
    Lin,
    Poly,
    Schedule,
    combine,
    cosine,
    cyclical,
    exp_range,
    factor,
    flat_cos,
    multi_factor,
    one_cycle,
    schedule_from_state,
    sgdr,
    square_root,
    triangular,
    triangular2,
    warmup,
)
from .data import (
    FASHION_MNIST_CLASSES,
    DataLoaders,
    InMemoryLoader,
    TorchLoader,
    fashion_mnist,
    load_fashion_mnist,
    synthetic_classification,
    synthetic_regression,
    tiny_images,
)
from .data.writer_lock import WriterConflictError
from .learner import AccumMetric, Learner, Metric, accuracy, adam, error_rate, lenet, mae, rmse, sgd, top_k_accuracy
from .learner.checkpoint_format import CheckpointError
from .learner.models import lenet_bn, resnet56

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
