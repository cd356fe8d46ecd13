"""The Learner's optimizer (mixed into `Learner`): creating it over the splitter's parameter groups, and setting and
reading its hyperparameters through callbacks/hypers.py, the one place that knows torch's param_group keys."""

from __future__ import annotations

import torch

from ..callbacks.hypers import group_hypers, set_hyper


def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD with momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-5,
         weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """The default: Adam with decoupled weight decay 0.01 (AdamW), betas (0.9, 0.99) and eps 1e-5, fastai's
    defaults, which train most models at lr 1e-3 without tuning (SGD at 1e-3 barely moves a LeNet)."""
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


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
        self._base_lrs = [g["lr"] for g in opt.param_groups]
        if self.wd is not None:  # None keeps the optimizer's own weight decay; 0 applies 0
            self.set_hyper("wd", self.wd)
        return opt

    def set_hyper(self, name: str, value: float, group: int | None = None) -> None:
        """Set hyperparameter `name` ('lr', 'mom', 'wd', 'beta2' or any param_group key) in every group or one."""
        opt = self.opt if self.opt is not None else self.create_opt()
        set_hyper(opt, name, value, group)
        if name == "lr" and not self.in_fit:  # the user's rates, which a fit without lr starts from
            self._base_lrs = [g["lr"] for g in opt.param_groups]

    def reset_lrs(self) -> None:
        """Every group back at the rate the user gave it (`lr`, or `set_hyper('lr', ...)` outside a fit), whatever
        value a schedule or a loaded checkpoint left: what a fit without `lr` starts from."""
        for i, lr in enumerate(self._base_lrs):
            set_hyper(self.opt, "lr", lr, i)

    def hypers(self) -> list[dict]:
        """The current lr, mom and wd of every parameter group."""
        return [group_hypers(g) for g in (self.opt or self.create_opt()).param_groups]
