"""Optimizers: cyclr's `adam` (the default) and `sgd`, and how norm layers and biases are kept out of weight decay
(`wd_bn_bias=False`, fastai's default) while the optimizer keeps the user's parameter groups."""

from __future__ import annotations

import torch
from torch import nn

# The layers whose parameters fastai keeps out of weight decay by default (`wd_bn_bias=False`), biases aside.
NORM_LAYERS = tuple(getattr(nn, name) for name in (
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d",
    "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "GroupNorm", "RMSNorm")
    if hasattr(nn, name))


def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-5,
         weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """The default: Adam with decoupled weight decay 0.01 (AdamW), betas (0.9, 0.99) and eps 1e-5, fastai's
    defaults, which train most models at lr 1e-3 without tuning (SGD at 1e-3 barely moves a LeNet).

    Args:
        params (Iterable): the parameters, or a list of parameter-group dicts, as torch optimizers take them.
        lr: the learning rate.
        betas: the decay rates of the gradient's running average and of its square's (the first is what `mom`
            schedules).
        eps: added to the denominator for numerical stability.
        weight_decay: the decoupled weight decay (AdamW's).
    """
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def norm_and_bias_params(model: nn.Module) -> set[int]:
    """The ids of the parameters of `model`'s normalisation layers and of every module's `bias`."""
    ids = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or isinstance(module, NORM_LAYERS):
                ids.add(id(p))
    return ids


class NoDecayStep:
    """Keeps some parameters out of weight decay (`wd_bn_bias=False`) while the optimizer keeps one parameter group
    per splitter group: per-group rates, freezing, the Recorder's columns and checkpoints all see the user's groups.

    For the length of each `step()` (torch's step hooks), the exempt parameters of every group whose weight decay
    is not 0 move to a copy of that group with `weight_decay=0`, so any torch optimizer updates them as its own
    zero-decay group would; the groups are put back as they were when the step returns. Parameter groups are found
    by position, since `load_state_dict` replaces the group dicts."""

    def __init__(self, opt: torch.optim.Optimizer, exempt_ids: set[int]):
        # (group index, all its params, those decayed, those exempt), for the groups that have exempt ones
        self.splits = []
        for i, g in enumerate(opt.param_groups):
            exempt = [p for p in g["params"] if id(p) in exempt_ids]
            if exempt:
                self.splits.append((i, list(g["params"]), [p for p in g["params"] if id(p) not in exempt_ids],
                                    exempt))
        self.twins: list[dict] = []  # the zero-decay groups added for the step under way
        if self.splits:
            opt.register_step_pre_hook(self.split)
            opt.register_step_post_hook(self.join)

    def split(self, opt, args=None, kwargs=None) -> None:
        self.join(opt)  # a step that raised left its groups split
        for i, _, decayed, exempt in self.splits:
            group = opt.param_groups[i]
            if group.get("weight_decay"):  # 0 (or an optimizer without the key): nothing to keep out
                group["params"] = decayed
                self.twins.append({**group, "params": exempt, "weight_decay": 0.0})
        opt.param_groups.extend(self.twins)

    def join(self, opt, args=None, kwargs=None) -> None:
        if self.twins:  # only those: a group the user added with add_param_group stays
            opt.param_groups[:] = [g for g in opt.param_groups if all(g is not t for t in self.twins)]
            self.twins = []
        for i, params, _, _ in self.splits:
            opt.param_groups[i]["params"] = params
