"""Fixed training runs, every argument explicit, used to show that a refactor changes no number.

`fixed_run` (SGD with momentum; lr_find, fit_one_cycle, fit_sgdr, a triangular ParamScheduler) was recorded before
the redesign into the `cyclr.` namespace (tests/reference/fixed_run.pt). `fixed_run_adamw` (AdamW over two
parameter groups; lr_find, then every recipe: fit_one_cycle, fit_flat_cos, fit_sgdr, cyclical rates with cycled
momentum, and a weight-decay schedule) was recorded before the hot-path rework of the scheduler layer
(tests/reference/fixed_run_adamw.pt). `test_fixed_run.py` runs both again and compares the Recorder's history and
the final weights with them.
"""

import functools

import torch
from torch import nn

from cyclr import CyclicLRCallback, Learner, Lin, ParamScheduler, synthetic_classification, triangular


def _history(learn, finder) -> dict:
    batches = learn.recorder.to_df("batches")
    epochs = learn.recorder.to_df("epochs")
    out = {
        "finder_lrs": torch.tensor(finder.lrs, dtype=torch.float64),
        "finder_losses": torch.tensor(finder.losses, dtype=torch.float64),
        "valid_losses": torch.tensor(epochs["valid_loss"].to_numpy(dtype="float64")),
        "weights": {k: v.detach().clone() for k, v in learn.model.state_dict().items()},
    }
    for column in ("lr", "mom", "loss", "lr_0", "mom_0"):
        if column in batches:
            key = {"lr": "lrs", "mom": "moms", "loss": "losses"}.get(column, column)
            out[key] = torch.tensor(batches[column].to_numpy(dtype="float64"))
    return out


def fixed_run() -> dict:
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=192, n_valid=64, n_features=6, n_classes=3, bs=32, seed=0, spread=1.5)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt_func = functools.partial(torch.optim.SGD, momentum=0.9, weight_decay=0.0)
    learn = Learner(model, dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=0.01, wd=0.0, device="cpu",
                    progress=False, train_metrics=False)
    finder = learn.lr_find(start_lr=1e-5, end_lr=1.0, num_it=12, step_mode="exp", stop_div=True, show_plot=False)
    learn.fit_one_cycle(2, max_lr=0.05, moms=(0.95, 0.85), div_factor=25.0, pct_start=0.3, final_div=1e4, wd=0.0)
    learn.fit_sgdr(2, 1, max_lr=0.03, cycle_mult=2, eta_min=0.0, wd=0.0)
    learn.fit(2, lr=0.02, wd=0.0, cbs=[ParamScheduler({"lr": triangular(0.001, 0.04, 3)}, unit="batch")])
    out = _history(learn, finder)
    assert "lr_0" not in out  # one group: no per-group columns
    return out


def fixed_run_adamw() -> dict:
    torch.manual_seed(1)
    dls = synthetic_classification(n_train=160, n_valid=64, n_features=6, n_classes=3, bs=32, seed=1, spread=1.5)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt_func = functools.partial(torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    # wd_bn_bias=True: the golden figures were recorded with every parameter decayed, before fastai's default
    learn = Learner(model, dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=3e-3, wd=0.01, device="cpu",
                    progress=False, train_metrics=False, wd_bn_bias=True,
                    splitter=lambda m: [m[0].parameters(), m[2].parameters()])
    finder = learn.lr_find(start_lr=1e-6, end_lr=1.0, num_it=10, step_mode="exp", stop_div=True, show_plot=False)
    learn.fit_one_cycle(2, max_lr=slice(1e-3, 1e-2), moms=(0.95, 0.85, 0.9), div_factor=20.0, pct_start=0.25,
                        final_div=1e3, wd=0.01)
    learn.fit_one_cycle(1, max_lr=5e-3, moms=(0.95, 0.85), anneal_strategy="linear", three_phase=True, wd=0.0)
    learn.fit_flat_cos(2, lr=[2e-3, 4e-3], pct_start=0.6, div_final=1e4, wd=0.02)
    learn.fit_sgdr(2, 1, max_lr=4e-3, cycle_mult=2, eta_min=1e-5, wd=0.01)
    learn.fit(2, wd=0.01, cbs=[CyclicLRCallback(1e-4, [2e-3, 6e-3], step_size=3, mode="triangular2",
                                                base_momentum=0.85, max_momentum=0.95)])
    learn.fit(2, lr=1e-3, cbs=[ParamScheduler({"wd": Lin(0.05, 0.0), "beta2": Lin(0.99, 0.999)})])
    out = _history(learn, finder)
    # The whole per-batch table, every column in its order (pct, smoothed loss, each group's lr and momentum...).
    batches = learn.recorder.to_df("batches")
    out["batch_table"] = {f"{i:02d}_{name}": torch.tensor(batches[name].to_numpy(dtype="float64"))
                          for i, name in enumerate(batches.columns)}
    return out
