"""cyclr's Learner: the fit loop, metrics and models."""

from .learner import Learner, sgd
from .metrics import accuracy, error_rate
from .models import lenet

__all__ = ["Learner", "sgd", "accuracy", "error_rate", "lenet"]
