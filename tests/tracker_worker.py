"""One small fit in a process of its own, for tests/test_trackers_concurrency.py: several of these start together
(each waits for the same wall-clock instant, `--start-at`) in one folder, with a tracker or a CSVLogger at its
default or given location, to attack what runs started at once share.

    python tests/tracker_worker.py --logger {tensorboard,mlflow,csv} --start-at T --out RESULT.json
        [--path P] [--epochs N] [--step-sleep S] [--ready FILE]

Prints nothing; writes RESULT.json: {"ok": true, "steps": [...], "losses": [...], "run": <run id / folder>} or
{"ok": false, "error": "<type>: <message>"}. `--ready FILE` is created once the fit is past its first step.
"""

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from cyclr.callbacks import Callback
from cyclr.data.synthetic import synthetic_classification
from cyclr.learner import Learner


class Pace(Callback):
    """Sleeps after each step (so runs overlap), and says when the fit is past its first step."""

    def __init__(self, sleep: float, ready: str | None):
        self.sleep, self.ready = sleep, ready

    def after_batch(self, learn):
        if learn.training and self.ready and not os.path.exists(self.ready):
            Path(self.ready).touch()
        time.sleep(self.sleep)


def make_logger(kind: str, path: str | None):
    if kind == "tensorboard":
        from cyclr.callbacks.loggers import TensorBoardCallback

        return TensorBoardCallback(path)
    if kind == "mlflow":
        from cyclr.callbacks.loggers import MLflowCallback

        return MLflowCallback(path)
    from cyclr.callbacks.csv_logger import CSVLogger

    return CSVLogger(path or "history.csv", append=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logger", required=True, choices=["tensorboard", "mlflow", "csv"])
    parser.add_argument("--start-at", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--ready", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(os.getpid())
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    logger = make_logger(args.logger, args.path)
    learn = Learner(model, dls, nn.CrossEntropyLoss(), lr=1e-2, device="cpu", progress=False, cbs=[logger])
    time.sleep(max(0.0, args.start_at - time.time()))
    try:
        learn.fit(args.epochs, cbs=[Pace(args.step_sleep, args.ready)])
    except Exception as e:  # noqa: BLE001 - the test reads what failed
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    else:
        batches = learn.recorder.to_df("batches")
        result = {"ok": True, "steps": [int(s) for s in batches["train_iter"]],
                  "losses": [float(v) for v in batches["loss"]],
                  "run": getattr(logger, "run_id", None) or getattr(logger, "log_dir", None)}
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
