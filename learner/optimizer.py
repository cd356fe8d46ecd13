"""The Learner's optimizer (mixed into `Learner`): creating it over the splitter's parameter groups, and setting and
reading its hyperparameters through callbacks/hypers.py, the one place that knows torch's param_group keys."""

from __future__ import annotations

import torch

from ..callbacks.hypers import group_hypers, set_hyper


def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


class OptimizerSetup:
    opt: torch.optim.Optimizer | None

    def create_opt(self) -> torch.optim.Optimizer:
        params = self.model.parameters()
        if self.splitter is not None:
            params = [{"params": list(p)} for p in self.splitter(self.model)]
        opt = self.opt_func(params, lr=self.lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"opt_func must return a torch.optim.Optimizer, got {type(opt).__name__}; "
                "pass e.g. torch.optim.AdamW or functools.partial(torch.optim.SGD, momentum=0.9)"
            )
        self.opt = opt
        if self.wd:
            self.set_hyper("wd", self.wd)
        return opt

    def set_hyper(self, name: str, value: float, group: int | None = None) -> None:
        """Set hyperparameter `name` ('lr', 'mom', 'wd', 'beta2' or any param_group key) in every group or one."""
        set_hyper(self.opt if self.opt is not None else self.create_opt(), name, value, group)

    def hypers(self) -> list[dict]:
        """The current lr, mom and wd of every parameter group."""
        return [group_hypers(g) for g in (self.opt or self.create_opt()).param_groups]
