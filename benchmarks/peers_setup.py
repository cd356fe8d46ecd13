"""What every contender of benchmarks/peers.py shares: the data, the initial weights and the optimizer of the chosen
model (`Setup`), and how fastai's and Lightning's learners are built on them (also for their LR finders)."""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from functools import partial

import torch
from overhead import same_batches
from torch.utils.data import DataLoader, TensorDataset

from cyclr import fashion_mnist, lenet, synthetic_classification

PCT_START, DIV, FINAL_DIV = 0.3, 25.0, 25e4  # torch's final_div_factor is FINAL_DIV / DIV


def quiet():
    """Silence what the frameworks print and warn about, for the duration of a timed call."""
    stack = contextlib.ExitStack()
    devnull = stack.enter_context(open(os.devnull, "w"))  # noqa: SIM115
    stack.enter_context(contextlib.redirect_stdout(devnull))
    stack.enter_context(contextlib.redirect_stderr(devnull))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def torch_loaders(dls, bs: int, seed: int = 0):
    train = DataLoader(TensorDataset(dls.train.x, dls.train.y), batch_size=bs, shuffle=True, num_workers=0,
                       generator=torch.Generator().manual_seed(seed))
    valid = DataLoader(TensorDataset(dls.valid.x, dls.valid.y), batch_size=dls.valid.bs, shuffle=False, num_workers=0)
    return train, valid


# The MLP's data and optimizer: a tabular model at a new user's settings (issue 21).
MLP_FEATURES, MLP_STEPS, MLP_BS = 16, 3000, 64
ADAMW = {"betas": (0.9, 0.99), "eps": 1e-5, "weight_decay": 0.01}


class Setup:
    """What every contender shares: data, initial weights, the optimizer (a torch class and its arguments), max_lr."""

    def __init__(self, args):
        self.args = args
        torch.manual_seed(0)
        if args.model == "mlp":
            self.dls = synthetic_classification(n_train=MLP_STEPS * MLP_BS, n_valid=50 * MLP_BS,
                                                n_features=MLP_FEATURES, n_classes=2, bs=MLP_BS, spread=2.0)
            self.initial = torch.nn.Sequential(torch.nn.Linear(MLP_FEATURES, 32), torch.nn.ReLU(),
                                               torch.nn.Linear(32, 2))
            self.opt_class, self.opt_kwargs = torch.optim.AdamW, ADAMW
        else:
            # Standardised pixels: without, a one-cycle epoch at this lr now and then stays on the loss plateau of
            # 2.30 for the whole warm-up, and accuracies would compare luck rather than training.
            self.dls = fashion_mnist(bs=args.bs, n_train=args.n_train, normalize=True)
            self.initial = lenet()
            self.opt_class, self.opt_kwargs = torch.optim.SGD, {"momentum": 0.9}
        self.loss_func = torch.nn.CrossEntropyLoss()
        self.tmp = tempfile.mkdtemp(prefix="cyclr-peers-")

    def model(self):
        return copy.deepcopy(self.initial)

    def opt(self, params, lr):
        return self.opt_class(params, lr=lr, **self.opt_kwargs)

    def describe(self) -> str:
        train, valid = len(self.dls.train.y), len(self.dls.valid.y)
        if self.args.model == "mlp":
            return (f"MLP {MLP_FEATURES}-32-2, synthetic data ({train} train / {valid} valid rows), "
                    f"bs={MLP_BS}, {len(self.dls.train)} steps, one-cycle max_lr={self.args.lr}, AdamW {ADAMW}")
        return (f"LeNet, Fashion-MNIST ({train} train / {valid} valid images), bs={self.args.bs}, "
                f"one-cycle max_lr={self.args.lr}, SGD momentum 0.95-0.85")




def fastai_learner(s: Setup, own_loader: bool):
    from fastai.data.core import DataLoaders as FastaiDataLoaders
    from fastai.data.load import DataLoader as FastaiDataLoader
    from fastai.learner import Learner as FastaiLearner
    from fastai.metrics import accuracy as fastai_accuracy
    from fastai.optimizer import OptimWrapper

    if own_loader:
        train = FastaiDataLoader(TensorDataset(s.dls.train.x, s.dls.train.y), bs=s.args.bs, shuffle=True,
                                 num_workers=0)
        valid = FastaiDataLoader(TensorDataset(s.dls.valid.x, s.dls.valid.y), bs=s.dls.valid.bs, num_workers=0)
        fastai_dls = FastaiDataLoaders(train, valid)
    else:
        d = same_batches(s.dls)
        fastai_dls = FastaiDataLoaders(d.train, d.valid)
    return FastaiLearner(fastai_dls, s.model(), loss_func=s.loss_func, metrics=fastai_accuracy, path=s.tmp,
                         opt_func=partial(OptimWrapper, opt=s.opt_class, **s.opt_kwargs), lr=s.args.lr)




def lightning_module(s: Setup, total_steps: int):
    import lightning.pytorch as pl

    class LitLeNet(pl.LightningModule):
        def __init__(self, model, lr):
            super().__init__()
            self.model, self.lr, self.loss_func = model, lr, s.loss_func

        def training_step(self, batch, batch_idx):
            xb, yb = batch
            loss = self.loss_func(self.model(xb), yb)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            xb, yb = batch
            pred = self.model(xb)
            self.log("valid_loss", self.loss_func(pred, yb), prog_bar=True)
            self.log("accuracy", (pred.argmax(dim=1) == yb).float().mean(), prog_bar=True)

        def configure_optimizers(self):
            opt = s.opt(self.parameters(), self.lr)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=total_steps,
                                                        pct_start=PCT_START, div_factor=DIV,
                                                        final_div_factor=FINAL_DIV / DIV)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return LitLeNet(s.model(), s.args.lr)


def lightning_trainer(s: Setup, **kwargs):
    import lightning.pytorch as pl

    return pl.Trainer(accelerator="cpu", devices=1, enable_checkpointing=False, enable_model_summary=False,
                      default_root_dir=s.tmp, **kwargs)
