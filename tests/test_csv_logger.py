"""CSVLogger on a shared machine (issue 24, points 1 and 8): a symbolic link planted at its path is never written
through; a new file takes its mode from the umask; a second fit on a file that a live run is writing (another
process, or another fit of this one) is refused before its first step, and allowed once that run has ended, even
killed (liveness by the lock it held, never by its pid)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cyclr import CSVLogger, Learner, WriterConflictError, synthetic_classification

WORKER = Path(__file__).with_name("tracker_worker.py")


def make_learner(cbs=()):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), lr=1e-2, device="cpu", progress=False, cbs=list(cbs))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_a_symlink_planted_at_the_path_is_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("another user's private file, 52 bytes of content.\n")
    link = tmp_path / "history.csv"
    link.symlink_to(victim)
    for append in (False, True):
        learn = make_learner(cbs=[CSVLogger(link, append=append)])
        with pytest.raises(OSError, match="is a symbolic link: cyclr does not write through one"):
            learn.fit(1)
        assert victim.read_text() == "another user's private file, 52 bytes of content.\n"  # before: truncated
        assert len(learn.recorder.batch_rows) == 0  # refused before any step
        assert not (tmp_path / "history.csv.lock").exists()  # the refused fit leaves no lock behind


@pytest.mark.parametrize("umask", [0o077, 0o022])
def test_a_new_file_takes_its_mode_from_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        make_learner(cbs=[CSVLogger(tmp_path / "log.csv")]).fit(1)
    finally:
        os.umask(old)
    assert (tmp_path / "log.csv").stat().st_mode & 0o777 == 0o666 & ~umask


def test_two_fits_of_one_process_on_one_file_the_second_is_refused(tmp_path):
    path = tmp_path / "log.csv"
    first = make_learner()
    second = make_learner(cbs=[CSVLogger(path, append=True)])

    class SecondFitInside(CSVLogger):
        def after_epoch(self, learn):
            super().after_epoch(learn)
            with pytest.raises(WriterConflictError, match="another fit in this process"):
                second.fit(1)

    first.fit(1, cbs=[SecondFitInside(path)])
    assert len(second.recorder.batch_rows) == 0
    second.fit(1)  # the first has ended: appending is allowed
    rows = read_csv(path)
    assert [r[1] for r in rows] == ["epoch", "0", "0"] and rows[1][2:] != rows[2][2:]  # one row of each fit


def test_a_file_another_live_process_writes_is_refused_and_allowed_once_that_process_is_killed(tmp_path):
    path = tmp_path / "shared.csv"
    started = tmp_path / "started"
    writer = subprocess.Popen(
        [sys.executable, str(WORKER), "--loggers", "csv", "--path", str(path), "--ready", str(tmp_path / "ready"),
         "--go", str(tmp_path / "ready"), "--out", str(tmp_path / "result.json"), "--epochs", "50",
         "--step-sleep", "0.05", "--started", str(started)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (started.exists() and path.exists() and path.stat().st_size > 0):  # past its first epoch
            assert writer.poll() is None, writer.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        learn = make_learner(cbs=[CSVLogger(path, append=True)])
        with pytest.raises(WriterConflictError, match=rf"another process \(pid {writer.pid} on host "):
            learn.fit(1)  # before: both appended, their rows interleaved
        assert len(learn.recorder.batch_rows) == 0  # refused before any step
        assert all(r[1] == str(i) for i, r in enumerate(read_csv(path)[1:]))  # only the writer's epochs, in order

        writer.send_signal(signal.SIGKILL)  # no cleanup: the kernel drops its lock
        writer.wait(timeout=60)
        rows_before = len(read_csv(path))
        learn.fit(1)
        assert len(read_csv(path)) == rows_before + 1
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
