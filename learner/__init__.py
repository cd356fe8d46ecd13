"""cyclr's Learner: the fit loop, metrics and models."""

from .learner import Learner
from .metrics import AccumMetric, Metric, accuracy, error_rate, mae, rmse, top_k_accuracy
from .models import lenet
from .optimizer import adam, sgd

__all__ = ["Learner", "adam", "sgd", "accuracy", "error_rate", "top_k_accuracy", "rmse", "mae", "AccumMetric",
           "Metric", "lenet"]
