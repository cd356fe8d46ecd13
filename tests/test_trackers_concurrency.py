"""Runs started together share a machine's folders (issue 24, points 6-8), attacked with real processes: several
fits started within milliseconds of each other in one folder, with TensorBoardCallback() and MLflowCallback() at
their defaults (a `runs/cyclr-<date>-<time>...` folder each; one new `./mlflow.db` for all), and two fits writing one
CSVLogger file (tests/test_csv_logger.py); and a real Ctrl-C (SIGINT) mid-epoch (issue 23.11). Each run's steps are
read back with the tools' own readers and compared with what that process's Recorder recorded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("tracker_worker.py")
STEPS = list(range(12))  # 2 epochs of 6 optimizer steps


def start_workers(folder: Path, n: int, loggers: str, *extra: str) -> tuple[list[subprocess.Popen], Path]:
    """`n` workers in `folder`, each waiting (imports done) for the go file; returns them and the go file."""
    go = folder / "go"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--loggers", loggers, "--ready", str(folder / f"ready{i}"),
                               "--go", str(go), "--out", str(folder / f"result{i}.json"), *extra],
                              cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    return procs, go


def wait_for(paths, procs, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        dead = [p for p in procs if p.poll() is not None and p.returncode != 0]
        assert not dead, dead[0].stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the workers did not get ready"
        time.sleep(0.05)


def run_together(folder: Path, n: int, loggers: str, *extra: str) -> list[dict]:
    procs, go = start_workers(folder, n, loggers, *extra)
    try:
        wait_for([folder / f"ready{i}" for i in range(n)], procs)
        go.touch()  # all n start their fits now, within milliseconds
        for p in procs:
            assert p.wait(timeout=240) == 0, p.stderr.read()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [json.loads((folder / f"result{i}.json").read_text()) for i in range(n)]


@pytest.mark.parametrize("n_runs", [2, 4])
def test_runs_started_together_each_get_their_own_tensorboard_folder_and_mlflow_run(tmp_path, n_runs):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = run_together(tmp_path, n_runs, "tensorboard,mlflow")
    for r in results:  # before: "duplicate column name: step", "Online migration expected to match one row"
        assert r["ok"], r["error"]
        assert r["steps"] == STEPS

    # TensorBoard: one folder per run (before: one folder named to the second, 2x the events), each holding its own
    # run's steps once, with its own losses.
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == n_runs == len({r["runs"]["tensorboard"] for r in results})
    for r in results:
        acc = EventAccumulator(r["runs"]["tensorboard"])
        acc.Reload()
        events = acc.Scalars("train/loss")
        assert [e.step for e in events] == STEPS
        assert [e.value for e in events] == pytest.approx(r["losses"], rel=1e-6)

    # MLflow: one store for all, created once; every step of every run read back, with that run's losses.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cyclr").experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted(r["runs"]["mlflow"] for r in results)
    assert all(run.info.status == "FINISHED" for run in runs)
    for r in results:
        history = sorted((m.step, m.value) for m in client.get_metric_history(r["runs"]["mlflow"], "train/loss"))
        assert history == list(zip(STEPS, r["losses"], strict=True))


def test_a_real_ctrl_c_mid_epoch_leaves_every_step_the_recorder_kept_in_both_trackers(tmp_path):
    """Issue 23.11, with a real SIGINT: before, the interrupted epoch's steps were in the Recorder only."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    started = tmp_path / "started"
    procs, go = start_workers(tmp_path, 1, "tensorboard,mlflow", "--epochs", "3", "--step-sleep", "0.2",
                              "--started", str(started))
    worker = procs[0]
    try:
        wait_for([tmp_path / "ready0"], procs)
        go.touch()
        deadline = time.monotonic() + 240
        while not (started.exists() and started.read_text() not in ("", *map(str, range(8)))):  # 8 steps: epoch 1
            assert worker.poll() is None, worker.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        worker.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert worker.wait(timeout=120) == 0, worker.stderr.read()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
    result = json.loads((tmp_path / "result0.json").read_text())
    assert result["ok"] and result["interrupted"]
    steps = result["steps"]
    assert steps == list(range(len(steps))) and len(steps) % 6 != 0  # stopped mid-epoch

    acc = EventAccumulator(result["runs"]["tensorboard"])
    acc.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("train/loss")] == list(
        zip(steps, result["losses"], strict=True))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = result["runs"]["mlflow"]
    assert client.get_run(run_id).info.status == "KILLED"
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert history == list(zip(steps, result["losses"], strict=True))
