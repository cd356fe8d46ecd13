"""The Learner's optimizer (mixed into `Learner`): creating it over the splitter's parameter groups, and setting and
reading its hyperparameters through callbacks/hypers.py, the one place that knows torch's param_group keys."""

from __future__ import annotations

import torch
from torch import nn

from ..callbacks.group_rates import lrs_per_group
from ..callbacks.hypers import group_hypers, set_hyper
from .transfer import splitter_groups

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


class OptimizerSetup:
    opt: torch.optim.Optimizer | None

    def create_opt(self) -> torch.optim.Optimizer:
        params = self.model.parameters()
        if self.splitter is not None:
            params = splitter_groups(self.model, self.splitter)  # a parameter left out of every group is refused
        opt = self.opt_func(params, lr=self.lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"opt_func must return a torch.optim.Optimizer, got {type(opt).__name__}; "
                "pass e.g. torch.optim.AdamW or functools.partial(torch.optim.SGD, momentum=0.9)"
            )
        if not self.wd_bn_bias:
            NoDecayStep(opt, norm_and_bias_params(self.model))
        self.opt = opt
        self._base_lrs = [g["lr"] for g in opt.param_groups]
        if self.wd is not None:  # None keeps the optimizer's own weight decay; 0 applies 0
            self.set_hyper("wd", self.wd)
        return opt

    def set_hyper(self, name: str, value, group: int | None = None) -> None:
        """Set hyperparameter `name` ('lr', 'mom', 'wd', 'beta2' or any param_group key) in every group or one.
        A learning rate may also be a list (one per group) or `slice(lo, hi)` (spread geometrically from the first
        group to the last; `slice(hi)`: hi/10 for all but the last), as the recipes take it."""
        opt = self.opt if self.opt is not None else self.create_opt()
        if name == "lr" and group is None and isinstance(value, (slice, list, tuple)):
            for i, lr in enumerate(lrs_per_group(value, len(opt.param_groups), "lr")):
                set_hyper(opt, name, lr, i)
        else:
            set_hyper(opt, name, value, group)
        if name == "lr" and not self.in_fit:  # the user's rates, which a fit without lr starts from
            self._base_lrs = [g["lr"] for g in opt.param_groups]

    def reset_lrs(self) -> None:
        """Every group back at the rate the user gave it (`lr`, or `set_hyper('lr', ...)` outside a fit), whatever
        value a schedule or a loaded checkpoint left: what a fit without `lr` starts from. A group with torch's
        `initial_lr` is left alone: the user's own torch scheduler, built on this optimizer, has set its rate (a
        LambdaLR warm-up's first step at 0); cyclr's TorchScheduler removes it when its fit ends."""
        for i, lr in enumerate(self._base_lrs):
            if "initial_lr" not in self.opt.param_groups[i]:
                set_hyper(self.opt, "lr", lr, i)

    def hypers(self) -> list[dict]:
        """The current lr, mom and wd of every parameter group."""
        return [group_hypers(g) for g in (self.opt or self.create_opt()).param_groups]
