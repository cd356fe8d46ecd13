"""Walking nested values: a batch, a model output, a state dict, as tuples, lists and dicts of tensors and other
things. One walk for every place that goes through one (moving outputs to the CPU, cutting a batch to one item,
copying a snapshot's tensors, counting their bytes), so they all agree on what a container is.

Lives in `cyclr.data`, the package that imports nothing else of cyclr, so every layer can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = ["map_leaves", "tensors_in"]


def map_leaves(fn: Callable, nest):
    """`nest` with every leaf (anything but a dict, list or tuple) replaced by `fn(leaf)`; lists and tuples (named
    ones too) are rebuilt with their type, dicts as dicts with the same keys, around the new leaves."""
    if isinstance(nest, dict):
        return {k: map_leaves(fn, v) for k, v in nest.items()}
    if isinstance(nest, (list, tuple)):
        items = [map_leaves(fn, v) for v in nest]
        return type(nest)(*items) if hasattr(nest, "_fields") else type(nest)(items)  # a namedtuple takes fields
    return fn(nest)


def tensors_in(nest) -> Iterator[torch.Tensor]:
    """Every tensor in `nest` (dicts, lists and tuples of them and of other things), in order."""
    if isinstance(nest, torch.Tensor):
        yield nest
    elif isinstance(nest, (list, tuple)):
        for v in nest:
            yield from tensors_in(v)
    elif isinstance(nest, dict):
        for v in nest.values():
            yield from tensors_in(v)
