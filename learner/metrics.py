"""Metrics: functions of (model output, target) returning a scalar tensor (kept on the device)."""

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (pred.argmax(dim=-1) == target).float().mean()


def error_rate(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - accuracy(pred, target)
