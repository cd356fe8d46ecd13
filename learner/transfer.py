"""Transfer learning (mixed into `Learner`): `freeze`, `unfreeze` and `freeze_to(n)` over the optimizer's parameter
groups, as fastai does it.

The groups are the splitter's. A learner created without a splitter adopts `body_head_split` the first time it
freezes, if its optimizer does not exist yet: the body is every top-level child of the model but the last, the head
the last child (with any parameter registered on the model itself). A frozen parameter has `requires_grad` False, so
it gets no gradient, and torch's optimizers pass over a parameter without one: no update, no weight decay, and its
optimizer state (momentum buffer, Adam moments) is kept as it was for when it thaws. Batch-norm layers in frozen
groups stay trainable unless `train_bn` is False (fastai's `train_bn=True`): their statistics belong to the new data.
"""

from __future__ import annotations

import warnings

from torch import nn

from ..data.checks import user_stacklevel

# The layers `train_bn` keeps trainable in frozen groups (fastai's bn_types, with the synchronised and lazy kinds).
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d,
            nn.LazyBatchNorm3d)


def body_head_split(model: nn.Module) -> list[list[nn.Parameter]]:
    """The default split: [body, head], the body every top-level child but the last, the head the last child and
    any parameter registered on the model itself."""
    children = list(model.children())
    if len(children) < 2:
        raise ValueError(
            f"the default body/head split needs a model with at least 2 top-level children, got {len(children)} "
            f"({type(model).__name__}); pass splitter=... to the Learner, returning one parameter list per group"
        )
    head = list(children[-1].parameters()) + list(model.parameters(recurse=False))
    seen = {id(p) for p in head}
    body = [p for child in children[:-1] for p in child.parameters() if id(p) not in seen]
    return [body, head]


def splitter_groups(model: nn.Module, splitter) -> list[dict]:
    """The optimizer's parameter groups from `splitter(model)`, one per list it returns. A trainable parameter left
    out of every group would never train, silently: refused, naming it (a parameter meant to stay fixed says so with
    `requires_grad=False`)."""
    groups = [{"params": list(p)} for p in splitter(model)]
    grouped = {id(p) for g in groups for p in g["params"]}
    left_out = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
    if left_out:
        shown = ", ".join(left_out[:8]) + (f" and {len(left_out) - 8} more" if len(left_out) > 8 else "")
        raise ValueError(
            f"the splitter leaves {len(left_out)} trainable parameter(s) out of every group, so they would never "
            f"train: {shown}. Return them in one of the splitter's groups, or set requires_grad=False on those meant "
            "to stay fixed"
        )
    return groups


def bn_parameters(model: nn.Module) -> set[int]:
    """The ids of the parameters of the model's batch-norm layers."""
    return {id(p) for m in model.modules() if isinstance(m, BN_TYPES) for p in m.parameters(recurse=False)}


class Transfer:
    """Freezing parameter groups for transfer learning. Writes the Learner's frozen_idx (the leading groups frozen,
    0: all trainable), train_bn (batch norm trainable in them) and, before the optimizer exists, splitter (the
    default body/head split); reads model and opt (all declared in `Learner.__init__`)."""

    def freeze_to(self, n: int, train_bn: bool | None = None) -> None:
        """Freeze the first `n` parameter groups (a negative `n` counts from the end: `freeze_to(-1)` freezes all but
        the last) and make the others trainable. `train_bn` (default `self.train_bn`, True) keeps the batch-norm
        layers of frozen groups trainable."""
        if train_bn is not None and not isinstance(train_bn, bool):
            raise TypeError(f"train_bn must be True or False, got {train_bn!r}")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int (the number of groups to freeze, negative counting from the end), "
                            f"got {type(n).__name__} ({n!r})")
        if self.opt is None and self.splitter is None:
            self.splitter = body_head_split  # before the optimizer exists, so it is created with these groups
        param_lists = [g["params"] for g in (self.opt if self.opt is not None else self.create_opt()).param_groups]
        n_groups = len(param_lists)
        if not -n_groups <= n <= n_groups:
            raise ValueError(f"n must be in [-{n_groups}, {n_groups}] (the optimizer has {n_groups} parameter "
                             f"group(s)), got {n}")
        frozen = n if n >= 0 else n_groups + n
        if n_groups == 1 and n == -1:
            warnings.warn(
                "freeze(): the optimizer has a single parameter group, so nothing is frozen; give the Learner a "
                "splitter=..., or freeze before the first fit to get the default body/head split",
                stacklevel=user_stacklevel())
        elif frozen == n_groups:
            warnings.warn(f"freeze_to({n}) freezes all {n_groups} parameter groups: only batch norm (with train_bn) "
                          "can train", stacklevel=user_stacklevel())
        train_bn = self.train_bn if train_bn is None else train_bn
        bn = bn_parameters(self.model) if train_bn else set()
        for i, params in enumerate(param_lists):
            for p in params:
                trainable = i >= frozen or id(p) in bn
                p.requires_grad_(trainable)
                if not trainable:
                    p.grad = None  # a gradient left from before would still be applied by the optimizer
        self.frozen_idx, self.train_bn = frozen, train_bn

    def freeze(self, train_bn: bool | None = None) -> None:
        """Freeze every parameter group but the last (the head)."""
        self.freeze_to(-1, train_bn)

    def unfreeze(self) -> None:
        """Make every parameter group trainable."""
        self.freeze_to(0)
