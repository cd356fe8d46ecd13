"""cyclr: see and control your learning rate. A fastai-style Learner for PyTorch with an LR finder, one-cycle,
SGDR, cyclical and classic schedules.

Everything a user needs comes from here, each name from the one module that defines it::

    from cyclr import Learner, fashion_mnist, accuracy, lenet, one_cycle, ParamScheduler, LRFinderCallback

The library's folders install as the subpackages `cyclr.learner` (the Learner, metrics, models, optimizers),
`cyclr.callbacks` (the callback protocol, the callbacks, the LR finder, and `cyclr.callbacks.schedules`) and
`cyclr.data` (DataLoaders and data sets). Importing cyclr stays light (pandas, matplotlib, the trackers load when
first used); CIFAR-10, which needs Pillow, is imported by name: `from cyclr.data.cifar10 import cifar10`.
"""

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
from .callbacks.loggers import MLflowCallback, TensorBoardCallback
from .callbacks.lr_finder import LR_FIND, LRFinderCallback
from .callbacks.lr_result import LRFinderResult, LRFinderSweep
from .callbacks.lr_suggest import Suggestion
from .callbacks.mixed_precision import MixedPrecision
from .callbacks.monitors import EarlyStoppingCallback, ReduceLROnPlateau
from .callbacks.progress import ProgressCallback
from .callbacks.recorder import Recorder
from .callbacks.scheduler import CyclicLRCallback, FlatCosCallback, OneCycleCallback, ParamScheduler, SGDRCallback
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
from .callbacks.training import GradientAccumulation, GradientClip, TerminateOnNaNCallback
from .data.core import DataLoaders, InMemoryLoader, TorchLoader
from .data.fashion_mnist import FASHION_MNIST_CLASSES, fashion_mnist, load_fashion_mnist
from .data.synthetic import synthetic_classification, synthetic_regression, tiny_images
from .learner.checkpoint_format import CheckpointError
from .learner.learner import Learner
from .learner.metrics import AccumMetric, accuracy, error_rate, mae, rmse, top_k_accuracy
from .learner.models import lenet, lenet_bn, resnet56
from .learner.optimizer import adam, sgd

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

# The list the documentation shows (docs/reference/index.md), grouped as it is there.
__all__ = [
    # the Learner, its optimizers, metrics and models
    "Learner", "adam", "sgd", "accuracy", "error_rate", "top_k_accuracy", "rmse", "mae", "AccumMetric",
    "lenet", "lenet_bn", "resnet56", "CheckpointError",
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
    "compare_runs", "stack_runs",
    # the LR finder
    "LRFinderCallback", "LRFinderResult", "LRFinderSweep", "Suggestion", "LR_FIND",
    # schedules
    "Schedule", "Lin", "Cos", "Exp", "Poly", "Const", "combine", "one_cycle", "flat_cos", "sgdr", "cyclical",
    "triangular", "triangular2", "exp_range", "square_root", "factor", "multi_factor", "cosine", "warmup",
    "schedule_from_state", "ONE_CYCLE", "FLAT_COS", "SGDR_DEFAULTS", "CYCLICAL",
]
