"""A logger that cannot write must not cost the epoch's checkpoint (issue 24.5), attacked with real full file systems:
a small tmpfs under TensorBoard's folder, MLflow's SQLite store or the CSV file, filled by another "process" (a
ballast file) during the fit, while the checkpoints' own disk stays healthy. The fit fails only once the epoch's
checkpoint is written, with a short message saying what failed and where; the MLflow run ends FAILED (not RUNNING)
though its disk is full; a fit resumed from that checkpoint, once space is freed, leaves the run complete.
Needs root (mount); skipped, saying so, where mounting is not allowed."""

import contextlib
import os
import subprocess
import uuid

import pytest
import torch
from torch import nn

from cyclr import (
    Callback,
    CSVLogger,
    Learner,
    LoggerError,
    MLflowCallback,
    SaveModelCallback,
    TensorBoardCallback,
    synthetic_classification,
)
from cyclr.learner.checkpoint_files import read_checkpoint

STEPS_PER_EPOCH = 40  # an epoch's events fill more than the page a file system may still have allocated


@pytest.fixture
def small_fs(tmp_path):
    """A mounted tmpfs (4 MiB) and a function that fills it to the last byte."""
    mount_point = tmp_path / "small_fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")

    def fill():
        fd = os.open(mount_point / f"ballast-{uuid.uuid4().hex}", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
        os.close(fd)

    def free():
        for f in mount_point.glob("ballast-*"):
            f.unlink()

    yield mount_point, fill, free
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


class FillAt(Callback):
    """Fills the small file system at the end of epoch `epoch`, before the loggers write (another process would)."""

    order = 40

    def __init__(self, epoch, fill):
        self.epoch, self.fill = epoch, fill

    def after_epoch(self, learn):
        if learn.epoch == self.epoch:
            self.fill()


def make_learner(cbs=()):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=16 * STEPS_PER_EPOCH, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), lr=1e-2, device="cpu", progress=False, cbs=list(cbs))


def fit_until_the_disk_fills(tmp_path, logger, fill, epoch=1):
    """3 epochs, the logger's disk full from the end of `epoch`: the error, and the checkpoints written."""
    learn = make_learner(cbs=[logger])
    saver = SaveModelCallback(tmp_path / "ckpt_{epoch}.pt", every_epoch=True)
    with pytest.raises(LoggerError) as raised:
        learn.fit(3, cbs=[saver, FillAt(epoch, fill)])
    return raised.value, learn


# TensorBoard's writer thread raises the same ENOSPC in its own thread too (and hands it to the writer's next call).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_tensorboard_on_a_full_disk_keeps_the_epochs_checkpoint_and_a_resume_completes_the_run(tmp_path, small_fs):
    mount_point, fill, free = small_fs
    log_dir = mount_point / "tb"
    error, learn = fit_until_the_disk_fills(tmp_path, TensorBoardCallback(log_dir), fill)
    # Before: the fit died in after_epoch of epoch 1, before SaveModelCallback: no ckpt_1.pt.
    assert (tmp_path / "ckpt_1.pt").exists() and not (tmp_path / "ckpt_2.pt").exists()
    assert len(learn.recorder.epoch_rows) == 2  # epoch 2 never started
    assert str(log_dir) in str(error) and "No space left on device" in str(error) and len(str(error)) < 1000
    assert isinstance(error.__cause__, OSError)
    state = read_checkpoint(tmp_path / "ckpt_1.pt")["callbacks"]["TensorBoardCallback_0"]
    assert state["logged_until"] == STEPS_PER_EPOCH  # what the checkpoint says was logged: epoch 0 only

    free()
    resumed = make_learner(cbs=[TensorBoardCallback(tmp_path / "elsewhere")])  # the checkpoint names the run
    resumed.fit(3, resume=tmp_path / "ckpt_1.pt")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(3 * STEPS_PER_EPOCH))  # every step once
    assert [e.value for e in events] == pytest.approx(resumed.recorder.to_df("batches")["loss"].tolist(), rel=1e-6)


def test_mlflow_on_a_full_sqlite_disk_says_so_briefly_and_ends_the_run_failed(tmp_path, small_fs, capfd):
    from mlflow import MlflowClient

    mount_point, fill, free = small_fs
    uri = f"sqlite:///{mount_point / 'mlflow.db'}"
    logger = MLflowCallback(uri)
    error, learn = fit_until_the_disk_fills(tmp_path, logger, fill)
    assert (tmp_path / "ckpt_1.pt").exists() and not (tmp_path / "ckpt_2.pt").exists()
    message = str(error)
    # What failed, where, in a few lines (before: pages of SQL from SQLAlchemy, and the run left RUNNING).
    assert "MLflowCallback could not log epoch 1" in message and str(mount_point / "mlflow.db") in message
    assert "database or disk is full" in message and "[SQL" not in message and len(message) < 1000
    assert "[SQL" not in capfd.readouterr().err  # nor MLflow's log of the failed statement
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"  # ended though the disk is still full
    logged = sorted(m.step for m in client.get_metric_history(logger.run_id, "train/loss"))
    assert logged == list(range(STEPS_PER_EPOCH))  # epoch 0; epoch 1's write failed as a whole


def test_csv_on_a_full_disk_keeps_the_epochs_checkpoint_and_no_half_row(tmp_path, small_fs):
    mount_point, fill, free = small_fs
    path = mount_point / "history.csv"
    # Full before the first row (a row is far smaller than the page an existing file may still have allocated).
    error, learn = fit_until_the_disk_fills(tmp_path, CSVLogger(path), fill, epoch=0)
    assert (tmp_path / "ckpt_0.pt").exists() and not (tmp_path / "ckpt_1.pt").exists()
    assert f"CSVLogger could not write epoch 0 to {path}" in str(error) and "No space left" in str(error)
    assert path.read_bytes() == b""  # no half row
    assert read_checkpoint(tmp_path / "ckpt_0.pt")["callbacks"]["CSVLogger_0"]["rows_written"] == 0


def test_a_csv_on_a_read_only_file_system_is_refused_before_the_first_step(tmp_path, small_fs):
    mount_point, _, _ = small_fs
    path = mount_point / "history.csv"
    path.write_text("fit,epoch\n")
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
    learn = make_learner(cbs=[CSVLogger(path, append=True)])
    # Before: accepted (an appending fit only read the file at its start), then the fit died in after_epoch.
    with pytest.raises(OSError, match="Read-only file system"):
        learn.fit(1, cbs=[SaveModelCallback(tmp_path / "ckpt.pt", every_epoch=True)])
    assert len(learn.recorder.batch_rows) == 0
