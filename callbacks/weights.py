"""Moving weights between a learner's model and a copy of it, for the averaging and ensemble callbacks
(callbacks/averaging.py, callbacks/ensembles.py): exchanging them exactly, loading a saved set for a block,
recomputing batch-norm statistics without disturbing an exact resume, and validating other weights into the epoch
table."""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..data.state import rng_state, set_rng_state
from .recorder import metric_names

__all__ = ["exchange_weights", "loaded_weights", "has_batch_norm", "recompute_batch_norm", "validate_with",
           "validation_columns", "copy_state"]

def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in itertools.chain(module.parameters(), module.buffers())]


@torch.no_grad()
def exchange_weights(a: nn.Module, b: nn.Module) -> None:
    """Swap every parameter and buffer of two modules of the same architecture, in place and bit for bit: doing it
    twice restores both."""
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        raise ValueError("cannot exchange the weights of two modules of different architectures")
    for x, y in zip(ta, tb, strict=True):
        held = x.clone()
        x.copy_(y)
        y.copy_(held)


def copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict as copies on the CPU (a snapshot later steps cannot change)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@contextlib.contextmanager
def loaded_weights(model: nn.Module, state: dict):
    """`model` holds `state` inside the block and exactly its own weights again after it, even after an error."""
    own = copy_state(model)
    try:
        with torch.no_grad():
            model.load_state_dict(state)
        yield model
    finally:
        with torch.no_grad():
            model.load_state_dict(own)


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class _LearnerForward(nn.Module):
    """`update_bn` calls `model(inputs)`; this calls the learner's own `forward` (tuple and dict inputs, the compiled
    model) on the learner's model, which it holds as a submodule so that `update_bn` finds its batch-norm layers."""

    def __init__(self, learn):
        super().__init__()
        self.inner = learn.model
        self._learn = [learn]  # in a list: not an attribute nn.Module would try to register

    def forward(self, xb):
        return self._learn[0].forward(xb)


def recompute_batch_norm(learn) -> None:
    """Batch-norm statistics of the weights now in `learn.model`, recomputed over one pass of the training data with
    torch's `update_bn` (momentum None: the plain average over the pass; momentum 0 would keep the reset values, the
    bug that once gave a peer's SWA near-zero accuracy). The pass draws a shuffle and runs dropout: the RNGs and the
    loaders' shuffling states are put back afterwards, so an exact resume is not disturbed. Data-parallel: each
    process passes over its own shard (all shards have as many batches) and the statistics are averaged over the
    processes, so every process ends with the same ones."""
    if not has_batch_norm(learn.model):
        return
    rngs = rng_state()
    loaders = learn.dls.state_dict() if hasattr(learn.dls, "state_dict") else None
    try:
        inputs = ([learn.split_batch(learn.to_device(batch))[0]] for batch in learn.dls.train)
        update_bn(inputs, _LearnerForward(learn))
    finally:
        set_rng_state(rngs)
        if loaders is not None:
            learn.dls.load_state_dict(loaders)
    if learn.is_distributed:
        with torch.no_grad():
            for m in learn.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                    m.running_mean.copy_(learn.all_reduce_mean(m.running_mean))
                    m.running_var.copy_(learn.all_reduce_mean(m.running_var))


def validate_with(learn, prefix: str) -> dict[str, float]:
    """`learn.validate()` on the weights now in the model, named `<prefix>_valid_loss`, `<prefix>_<metric>`. The
    Recorder's last validation is cleared afterwards: the epoch table's own columns never take these values."""
    event = learn.event
    results = learn.validate()
    # Called from a hook: the rest of that event's hooks (a checkpoint reads where it is) see their own event again.
    learn.event = event
    learn.recorder.last_validation = {}
    return {f"{prefix}_{name}": value for name, value in results.items()}


def validation_columns(learn, prefix: str) -> dict[str, float]:
    """The columns `validate_with` fills, as NaN: an epoch row has them from the first epoch on, so that the table's
    header never changes mid-fit."""
    names = ["valid_loss", *metric_names(learn.metrics)] if learn.dls.valid is not None else []
    return {f"{prefix}_{name}": math.nan for name in names}
