"""The Learner's optimizer (mixed into `Learner`): creating it over the splitter's parameter groups, and setting and
reading its hyperparameters through callbacks/hypers.py, the one place that knows torch's param_group keys."""

from __future__ import annotations

import torch

from ..callbacks.group_rates import lrs_per_group
from ..callbacks.hypers import group_hypers, set_hyper
from .optimizer import NoDecayStep, norm_and_bias_params
from .transfer import splitter_groups


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
