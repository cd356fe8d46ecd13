"""The LR finder's snapshot file (`TrainingSnapshot` above its memory limit) survives a SIGKILL of its process: the
snapshot holds a lock on it while in use, and the next snapshot written to a file removes the ones nobody holds, never
those of a live process (tests/test_shared_machine.py: one in another pid namespace)."""

import os
import signal
import subprocess
import sys
import tempfile

import pytest
from helpers import linear_learner

from cyclr import Callback
from cyclr.callbacks.snapshot import TrainingSnapshot
from cyclr.data.state import create_owned_file

SNAPSHOT_THEN_SLEEP = """
import time
from torch import nn
from cyclr.callbacks.snapshot import TrainingSnapshot
from cyclr.data.state import create_owned_file
from cyclr import synthetic_classification
from cyclr import Learner

dls = synthetic_classification(n_train=32, n_valid=16, n_features=4, n_classes=3, bs=16, seed=0)
learn = Learner(nn.Linear(4, 3), dls, nn.CrossEntropyLoss(), device="cpu", progress=False)
snapshot = TrainingSnapshot(learn, memory_limit=0)
print(snapshot.path, flush=True)
time.sleep(600)  # killed long before
"""


def start_snapshot_owner(tmp_path) -> tuple[subprocess.Popen, str]:
    """A process holding a snapshot file in `tmp_path`, and that file's path."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child = subprocess.Popen([sys.executable, "-c", SNAPSHOT_THEN_SLEEP], env=env, stdout=subprocess.PIPE, text=True)
    path = child.stdout.readline().strip()
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith(f"cyclr-lr-find-{child.pid}.") and path.endswith(".pt")
    assert os.path.getsize(path) > 0
    return child, path


def stop(child: subprocess.Popen) -> None:
    child.kill()  # SIGKILL: no finally, no atexit, no discard() runs in the child
    child.wait(timeout=60)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def snapshot_of_a_killed_process(tmp_path) -> str:
    """The path of the snapshot file a process wrote before it was SIGKILLed (so it could not remove it)."""
    child, path = start_snapshot_owner(tmp_path)
    stop(child)
    return path


def test_the_next_snapshot_removes_the_file_of_a_killed_process_and_keeps_live_ones(tmp_path, monkeypatch):
    stale = snapshot_of_a_killed_process(tmp_path)
    assert os.path.exists(stale)  # the kill left it behind

    # Files in use: one this process holds open (another snapshot of ours) and a running child's snapshot.
    live_child, theirs = start_snapshot_owner(tmp_path)
    try:
        fd, ours = create_owned_file(tmp_path, f"cyclr-lr-find-{os.getpid()}.", ".pt")
        os.write(fd, b"in use")
        # Not named the way cyclr names its files (a pid, then a dot): never touched.
        unrelated = [tmp_path / "cyclr-lr-find-notapid.pt", tmp_path / "other-9.pt"]
        for path in unrelated:
            path.write_bytes(b"someone's")

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        snapshot = TrainingSnapshot(linear_learner(), memory_limit=0)
        assert not os.path.exists(stale)
        assert os.path.basename(snapshot.path).startswith(f"cyclr-lr-find-{os.getpid()}.")
        kept = sorted(p.name for p in tmp_path.iterdir())
        assert kept == sorted(os.path.basename(p) for p in [snapshot.path, ours, theirs, *unrelated])
        os.close(fd)
    finally:
        stop(live_child)
    snapshot.discard()
    assert not os.path.exists(snapshot.path or "") and snapshot.path is None
    TrainingSnapshot(linear_learner(), memory_limit=0).discard()  # nobody holds them any more
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in unrelated)


def test_an_in_memory_snapshot_touches_no_file(tmp_path, monkeypatch):
    stale = snapshot_of_a_killed_process(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    snapshot = TrainingSnapshot(linear_learner())  # far below the default limit: kept in memory
    assert snapshot.path is None
    assert os.listdir(tmp_path) == [os.path.basename(stale)]  # cleaned up by the next snapshot that uses a file


def snapshot_files(directory) -> list[str]:
    # Only ours: torch's first import of torch._dynamo (first optimizer step) makes its cache folder there.
    return sorted(name for name in os.listdir(directory) if name.startswith("cyclr-lr-find-"))


@pytest.mark.filterwarnings("ignore:the LR-finder curve shows no clear descent")  # 6 steps: no curve to speak of
def test_lr_find_with_a_tiny_memory_limit_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    during = []

    class LookInTmp(Callback):
        def after_batch(self, learn):
            during.append(snapshot_files(tmp_path))

    learn = linear_learner()
    looker = LookInTmp()
    learn.add_cbs([looker])
    learn.lr_find(num_it=6, snapshot_memory_limit=1)
    learn.remove_cbs([looker])
    assert len(during) == 5  # the 6th iteration records its loss and stops the sweep before after_batch
    assert all(len(names) == 1 and names[0].startswith(f"cyclr-lr-find-{os.getpid()}.") for names in during)
    assert snapshot_files(tmp_path) == []
