"""Helpers several test files share, imported as `from helpers import ...` (pytest puts tests/ first on sys.path, as
for fixed_run.py and tmpfs.py). Fixtures live in conftest.py."""

import functools
import re

import pytest
import torch
from torch import nn

from cyclr import Callback, Learner, synthetic_classification

CE = nn.CrossEntropyLoss()


def node_id(text: str) -> str:
    """`text` as part of a pytest node id a shell passes back unquoted: letters, digits and `_.=+/-` only
    (`monitor='f1' is not recorded` -> `monitor_f1_is_not_recorded`, `<lambda>` -> `lambda`)."""
    return re.sub(r"[^A-Za-z0-9_.=+/-]+", "_", text).strip("_") or "empty"


def approx(x, rel=1e-12):
    """pytest.approx for schedule values: relative `rel` (1e-12 for closed forms evaluated the same way), with an
    absolute floor of 1e-15 so values that should be 0 compare."""
    return pytest.approx(x, rel=rel, abs=1e-15)


class UsedHypers(Callback):
    """What the optimizer is about to use, per group, read just before each step (after every scheduler and the LR
    finder): one row per step with the counters and each group's lr, momentum (SGD's momentum or Adam's beta1; None
    for neither) and weight decay."""

    order = 100

    def __init__(self):
        self.rows = []

    def before_step(self, learn):
        groups = learn.opt.param_groups
        self.rows.append({
            "epoch": learn.epoch, "train_iter": learn.train_iter, "pct": learn.pct_train,
            "lr": [g["lr"] for g in groups],
            "mom": [g["momentum"] if "momentum" in g else g["betas"][0] if "betas" in g else None for g in groups],
            "wd": [g["weight_decay"] for g in groups],
        })

    def column(self, name, group=-1):
        return [r[name][group] for r in self.rows]


def state_copy(module):
    """A copy of `module`'s state dict, detached: what it holds now, unchanged by later steps."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class WeightsAfterEachStep(Callback):
    """The model's state (`state_copy`) after every optimizer step (`steps`) and at the end of every training epoch
    (`epoch_ends`), after the averaging and ensemble callbacks have seen the step."""

    order = 80

    def __init__(self):
        self.steps, self.epoch_ends = [], []

    def after_step(self, learn):
        self.steps.append(state_copy(learn.model))

    def after_train(self, learn):
        self.epoch_ends.append(state_copy(learn.model))


def quiet(model, dls, loss_func=CE, **kwargs):
    """A Learner on the CPU without a progress bar; cross-entropy unless `loss_func` says otherwise (None: the
    model's output carries its loss)."""
    kwargs.setdefault("progress", False)
    kwargs.setdefault("device", "cpu")
    return Learner(model, dls, loss_func, **kwargs)


def linear_learner(**kwargs):
    """A linear model on 64 training and 32 validation Gaussian blobs (4 features, 3 classes, batches of 16), plain
    SGD at lr 0.1, CPU, no progress bar: the smallest Learner that trains."""
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=64, n_valid=32, n_features=4, n_classes=3, bs=16, seed=0)
    return Learner(nn.Linear(4, 3), dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.1, device="cpu",
                   progress=False, **kwargs)


SGD_MOMENTUM = functools.partial(torch.optim.SGD, momentum=0.9)


def torch_rates(make_scheduler, n_steps, lr=0.05, opt_func=SGD_MOMENTUM, epoch_values=None, steps_per_epoch=None):
    """(lr, momentum) before each of `n_steps` optimizer steps of a plain torch loop with the torch scheduler
    `make_scheduler(opt)` returns: the oracle. With `steps_per_epoch`, the scheduler steps once per epoch (with the
    epoch's value from `epoch_values`, for a plateau scheduler)."""
    opt = opt_func([nn.Parameter(torch.zeros(2))], lr=lr)
    scheduler = make_scheduler(opt)
    lrs, moms = [], []
    for i in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["momentum"])
        opt.step()
        if steps_per_epoch is None:
            scheduler.step()
        elif (i + 1) % steps_per_epoch == 0:
            epoch = (i + 1) // steps_per_epoch - 1
            scheduler.step() if epoch_values is None else scheduler.step(epoch_values[epoch])
    return lrs, moms
