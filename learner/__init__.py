"""cyclr's Learner: the fit loop, metrics and models."""

from .learner import Learner
from .metrics import accuracy, error_rate
from .models import lenet
from .optimizer import sgd

__all__ = ["Learner", "sgd", "accuracy", "error_rate", "lenet"]
