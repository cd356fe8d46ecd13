"""One fixed training run, every argument explicit, used to show that a refactor changes no number.

The reference values in tests/reference/fixed_run.pt were recorded before the redesign into the `cyclr.` namespace;
`test_fixed_run.py` runs this again and compares the Recorder's history and the final weights with them.
"""

import functools

import torch
from torch import nn

from cyclr.callbacks.scheduler import ParamScheduler
from cyclr.callbacks.schedules import triangular
from cyclr.data.synthetic import synthetic_classification
from cyclr.learner import Learner


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
    batches = learn.recorder.to_df("batches")
    epochs = learn.recorder.to_df("epochs")
    return {
        "finder_lrs": torch.tensor(finder.lrs, dtype=torch.float64),
        "finder_losses": torch.tensor(finder.losses, dtype=torch.float64),
        "lrs": torch.tensor(batches["lr"].to_numpy(dtype="float64")),
        "moms": torch.tensor(batches["mom"].to_numpy(dtype="float64")),
        "losses": torch.tensor(batches["loss"].to_numpy(dtype="float64")),
        "valid_losses": torch.tensor(epochs["valid_loss"].to_numpy(dtype="float64")),
        "weights": {k: v.detach().clone() for k, v in learn.model.state_dict().items()},
    }
