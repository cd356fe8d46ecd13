"""One small fit in a process of its own, for tests/test_trackers_concurrency.py: several of these start together
in one folder, with trackers or a CSVLogger at their default or given location, to attack what runs started at
once share. Each creates `--ready FILE` once imported, then waits for `--go FILE` before it creates its loggers
and fits, so that all start within milliseconds.

    python tests/tracker_worker.py --loggers tensorboard,mlflow,csv --ready R --go G --out RESULT.json
        [--path P] [--epochs N] [--step-sleep S] [--started FILE]

Writes RESULT.json: {"ok": true, "steps": [...], "losses": [...], "runs": {logger: run id / folder},
"interrupted": bool} (Ctrl-C / SIGINT ends the fit, the result is still written) or {"ok": false, "error": "<type>:
<message>"}. `--started FILE` holds the number of optimizer steps taken, from the first one on.
"""

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from cyclr import Callback, Learner, synthetic_classification


class Pace(Callback):
    """Sleeps after each step (so runs overlap), and writes the number of steps taken to `started`."""

    def __init__(self, sleep: float, started: str | None):
        self.sleep, self.started = sleep, started

    def after_batch(self, learn):
        if learn.training and self.started:
            Path(self.started).write_text(str(learn.train_iter + 1))
        time.sleep(self.sleep)


def make_logger(kind: str, path: str | None):
    if kind == "tensorboard":
        from cyclr import TensorBoardCallback

        return TensorBoardCallback(path)
    if kind == "mlflow":
        from cyclr import MLflowCallback

        return MLflowCallback(path)
    from cyclr import CSVLogger

    return CSVLogger(path or "history.csv", append=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loggers", required=True, help="comma-separated: tensorboard, mlflow, csv")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--started", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(os.getpid())
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), lr=1e-2, device="cpu", progress=False)
    if "mlflow" in args.loggers:
        import mlflow  # noqa: F401 - imported before the start: seconds, which would spread the starts out
    if "tensorboard" in args.loggers:
        from torch.utils import tensorboard  # noqa: F401
    Path(args.ready).touch()
    while not os.path.exists(args.go):
        time.sleep(0.01)
    interrupted = False
    try:
        loggers = {kind: make_logger(kind, args.path) for kind in args.loggers.split(",")}
        learn.fit(args.epochs, cbs=[*loggers.values(), Pace(args.step_sleep, args.started)])
    except KeyboardInterrupt:
        interrupted = True
    except Exception as e:  # noqa: BLE001 - the test reads what failed
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        Path(args.out).write_text(json.dumps(result))
        return
    batches = learn.recorder.to_df("batches")
    result = {"ok": True, "steps": [int(s) for s in batches["train_iter"]],
              "losses": [float(v) for v in batches["loss"]], "interrupted": interrupted,
              "runs": {kind: getattr(cb, "run_id", None) or getattr(cb, "log_dir", None)
                       for kind, cb in loggers.items()}}
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
