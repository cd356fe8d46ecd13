"""Several runs, users and containers sharing a machine (issue 24, points 1-3), each attacked for real: planted
symbolic links, two processes resuming one checkpoint, a process in another pid namespace holding a snapshot and a
checkpoint's temporary file, SIGKILLed owners."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import linear_learner
from tmpfs import fill, full_tmpfs  # noqa: F401 -- a fixture

from cyclr import SaveModelCallback, WriterConflictError
from cyclr.callbacks.history import history_file_name
from cyclr.callbacks.snapshot import TrainingSnapshot
from cyclr.data.state import TEMP_SUFFIX, atomic_torch_save, open_for_write
from cyclr.data.writer_lock import WriterLock
from cyclr.learner.checkpoint_files import read_checkpoint

REPO = Path(__file__).resolve().parents[1]


class umask:  # noqa: N801 -- used like a function: `with umask(0o077):`
    def __init__(self, mask: int):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


# ----- 1. planted symbolic links -------------------------------------------------------------------------------------
def victim_file(tmp_path) -> Path:
    """A private file of another user's (here: of the test), world-readable, that a planted link points to."""
    victim = tmp_path / "victim" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("the victim's own 32 bytes of data")
    os.chmod(victim, 0o644)
    return victim


def test_a_link_planted_at_a_checkpoint_path_is_replaced_and_its_targets_mode_is_not_copied(tmp_path):
    victim = victim_file(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    path = shared / "model.pt"
    path.symlink_to(victim)
    with umask(0o077):
        linear_learner().save(path)
    assert victim.read_text() == "the victim's own 32 bytes of data" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not path.is_symlink() and stat.S_IMODE(path.lstat().st_mode) == 0o600  # the umask's, not the target's
    read_checkpoint(path)


def test_a_link_planted_at_the_history_side_file_is_refused_and_its_target_untouched(tmp_path):
    victim = victim_file(tmp_path)
    learn = linear_learner()
    (tmp_path / history_file_name(learn.recorder.run_id)).symlink_to(victim)
    with pytest.raises(OSError, match=r"cyclr-history-.*\.bin is a symbolic link: cyclr does not write through one"):
        learn.fit(1, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True)])
    assert victim.read_text() == "the victim's own 32 bytes of data"
    assert not (tmp_path / "ck.pt").exists()


def test_open_for_write_refuses_links_and_fifos_keeps_a_regular_files_mode_and_honours_the_umask(tmp_path):
    victim = victim_file(tmp_path)
    (tmp_path / "log.csv").symlink_to(victim)
    for mode in ("w", "a", "a+b"):
        with pytest.raises(OSError, match="log.csv is a symbolic link"):
            open_for_write(tmp_path / "log.csv", mode)
    assert victim.read_text() == "the victim's own 32 bytes of data"
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(OSError, match="is a symbolic link"):
        open_for_write(tmp_path / "dangling.csv", "w")
    assert not (tmp_path / "created-through-the-link").exists()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="fifo is not a regular file"):
        open_for_write(tmp_path / "fifo", "a")  # refused at once: it does not wait for a reader
    with umask(0o027):
        with open_for_write(tmp_path / "new.csv", "w", newline="") as f:
            f.write("epoch\n")
        assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o640
        os.chmod(tmp_path / "new.csv", 0o604)
        with open_for_write(tmp_path / "new.csv", "a") as f:
            f.write("0\n")
    assert (tmp_path / "new.csv").read_text() == "epoch\n0\n"
    assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o604


# ----- 2. two writers of one run's files -----------------------------------------------------------------------------
RESUME_WORKER = """
import sys, time
from pathlib import Path
import torch
from torch import nn
from cyclr import Callback, SaveModelCallback
from cyclr import synthetic_classification
from cyclr import Learner

folder, resume_from, signal_file, go_file = map(Path, sys.argv[1:5])

class Steps(Callback):
    def before_fit(self, learn):
        print("before_fit", flush=True)

    def after_batch(self, learn):
        if learn.training:
            print("step", learn.train_iter, flush=True)
            signal_file.touch()
            while not go_file.exists():  # hold the fit open until the test has started the other process
                time.sleep(0.02)

torch.manual_seed(0)
dls = synthetic_classification(n_train=64, n_valid=32, n_features=4, n_classes=3, bs=16, seed=0)
learn = Learner(nn.Linear(4, 3), dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.1, device="cpu",
                progress=False)
learn.fit(4, cbs=[SaveModelCallback(folder / "ck_{train_iter:05d}.pt", every_epoch=True, every_n_batches=2),
                  Steps()], resume=resume_from)
print("finished", flush=True)
"""


def run_with_checkpoints(folder: Path) -> None:
    linear_learner().fit(4, cbs=[SaveModelCallback(folder / "ck_{train_iter:05d}.pt", every_epoch=True,
                                                   every_n_batches=2)])


def test_two_processes_resuming_one_checkpoint_the_second_is_refused_before_any_step_naming_the_first(tmp_path):
    run_with_checkpoints(tmp_path)
    resume_from = tmp_path / "ck_00006.pt"
    first = subprocess.Popen([sys.executable, "-c", RESUME_WORKER, str(tmp_path), str(resume_from),
                              str(tmp_path / "first-stepping"), str(tmp_path / "go")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "first-stepping").exists():  # the first one is inside its fit
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-c", RESUME_WORKER, str(tmp_path), str(resume_from),
                                 str(tmp_path / "second-stepping"), str(tmp_path / "unused")],
                                capture_output=True, text=True, timeout=120)
    finally:
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 1
    # Refused before any callback's before_fit (where a CSV log would be truncated), so before any step.
    assert "before_fit" not in second.stdout and not (tmp_path / "second-stepping").exists()
    assert (f"WriterConflictError: the batch history {tmp_path}/cyclr-history-" in second.stderr
            and f"is being written by another process (pid {first.pid} on host {socket.gethostname()} since "
            in second.stderr), second.stderr
    assert out.split().count("step") == 10  # 16 steps, 6 done before the checkpoint
    for ckpt in sorted(tmp_path.glob("ck_*.pt")):
        read_checkpoint(ckpt)  # every checkpoint, the first run's and the resumed one's, reads with its history
    assert not list(tmp_path.glob("*.lock"))  # released when the fit ended


def test_the_writer_lock_dies_with_its_holder(tmp_path):
    lock_path = tmp_path / "cyclr-history-x.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cyclr.data.writer_lock import WriterLock\n"
                               "WriterLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(600)",
                               str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(WriterConflictError, match=f"pid {holder.pid} on host"):
            WriterLock(lock_path, "x").acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
        holder.stdout.close()
    with WriterLock(lock_path, "x"):  # SIGKILL left the file, not the lock
        assert lock_path.read_text().startswith(f"pid {os.getpid()} on host ")
    assert not lock_path.exists()


NO_LOCKS_HOLDER = """
import errno, fcntl, sys, time
def no_locks(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
fcntl.flock = no_locks  # as an NFS mount without a lock daemon answers
from cyclr.data.writer_lock import WriterLock
WriterLock(sys.argv[1], "x").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_where_the_file_system_refuses_locks_writers_still_exclude_each_other(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    lock_path = tmp_path / "cyclr-history-x.lock"
    holder = subprocess.Popen([sys.executable, "-W", "ignore", "-c", NO_LOCKS_HOLDER, str(lock_path)],
                              stdout=subprocess.PIPE, text=True)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.warns(UserWarning, match="refuses advisory locks"), \
                pytest.raises(WriterConflictError, match=f"pid {holder.pid} on host .*this file system has no locks: "
                                                         f"if that process is not running any more, remove"):
            WriterLock(lock_path, "x").acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
        holder.stdout.close()
    with pytest.warns(UserWarning), pytest.raises(WriterConflictError):
        WriterLock(lock_path, "x").acquire()  # without locks a dead holder cannot be told from a live one: kept
    lock_path.unlink()  # as the message says
    with pytest.warns(UserWarning), WriterLock(lock_path, "x"):
        assert lock_path.exists()
    assert not lock_path.exists()


def test_on_a_full_disk_the_writer_lock_still_excludes(full_tmpfs):  # noqa: F811
    fill(full_tmpfs)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cyclr.data.writer_lock import WriterLock\n"
                               "WriterLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(600)",
                               str(full_tmpfs / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(WriterConflictError, match="its name not written yet, or not at all on a full disk"):
            WriterLock(full_tmpfs / "run.lock", "x").acquire()
    finally:
        holder.kill()
        holder.wait(timeout=60)
        holder.stdout.close()


# ----- 3. liveness by a lock the owner holds, not by its pid ---------------------------------------------------------
NAMESPACED_OWNER = """
import os, subprocess, sys
# pid 1 of a new pid namespace: the next process it starts gets the pid chosen here, one no process has on the host.
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(int(sys.argv[1]) - 1))
sys.exit(subprocess.call([sys.executable, "-c", sys.argv[2], *sys.argv[3:]]))
"""

SNAPSHOT_AND_TEMP_FILE_OWNER = """
import os, sys
import torch
from torch import nn
from cyclr.callbacks.snapshot import TrainingSnapshot
from cyclr.data.state import atomic_write
from cyclr import synthetic_classification
from cyclr import Learner

checkpoint = sys.argv[1]
torch.manual_seed(0)
dls = synthetic_classification(n_train=32, n_valid=16, n_features=4, n_classes=3, bs=16, seed=0)
learn = Learner(nn.Linear(4, 3), dls, nn.CrossEntropyLoss(), device="cpu", progress=False)
snapshot = TrainingSnapshot(learn, memory_limit=0)
before = [p.detach().clone() for p in learn.model.parameters()]
with torch.no_grad():
    for p in learn.model.parameters():
        p.add_(1e5)  # what a sweep does to the weights

def write(f):
    f.write(b"the namespaced writer's checkpoint")
    print(os.getpid(), snapshot.path, flush=True)
    sys.stdin.readline()  # the test cleans the folder meanwhile

atomic_write(checkpoint, write)
snapshot.restore(learn)
snapshot.discard()
print("restored", max(float((p - b).abs().max()) for p, b in zip(learn.model.parameters(), before)), flush=True)
sys.stdin.readline()
"""


def wait_until_unlocked(path, timeout_s: float = 30) -> None:
    import fcntl

    deadline = time.monotonic() + timeout_s
    with open(path, "rb") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # released when the file closes
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{path} still locked after {timeout_s} s"
                time.sleep(0.05)


def start_in_own_pid_namespace(tmp_path) -> tuple[subprocess.Popen, int, Path]:
    """SNAPSHOT_AND_TEMP_FILE_OWNER in a new pid namespace, as a pid no process has on this host, writing
    `tmp_path/model.pt` with its temporary files in `tmp_path`: (the launcher, that pid, the checkpoint's path)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to start a process in a pid namespace of its own")
    pid, checkpoint = pid_free_on_this_host(), tmp_path / "model.pt"
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", NAMESPACED_OWNER, str(pid),
         SNAPSHOT_AND_TEMP_FILE_OWNER, str(checkpoint)],
        env={**os.environ, "TMPDIR": str(tmp_path)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True), pid, checkpoint


def kill_namespace(owner: subprocess.Popen) -> None:
    os.killpg(owner.pid, signal.SIGKILL)  # its launcher and every process in the namespace
    owner.wait(timeout=60)
    owner.stdin.close()
    owner.stdout.close()


def pid_free_on_this_host() -> int:
    for pid in range(30000, 1000, -7):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid found")


def test_a_process_in_another_pid_namespace_keeps_its_snapshot_and_temp_file_until_it_dies(tmp_path, monkeypatch):
    owner, pid, checkpoint = start_in_own_pid_namespace(tmp_path)
    try:
        seen_pid, snapshot_path = owner.stdout.readline().split()
        assert int(seen_pid) == pid and Path(snapshot_path).name.startswith(f"cyclr-lr-find-{pid}.")
        (temp_file,) = tmp_path.glob(f".model.pt.{pid}.*{TEMP_SUFFIX}")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # by its pid, the owner looks dead from here

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        TrainingSnapshot(linear_learner(), memory_limit=0).discard()  # cleans the folder of abandoned snapshots
        atomic_torch_save({"ours": 1}, checkpoint)  # cleans the abandoned temp files of model.pt
        assert Path(snapshot_path).exists() and temp_file.exists()  # both in use: kept

        owner.stdin.write("go on\n")
        owner.stdin.flush()
        assert owner.stdout.readline() == "restored 0.0\n"  # its snapshot was there to restore the weights from
        assert checkpoint.read_bytes() == b"the namespaced writer's checkpoint"  # its rename found its temp file
    finally:
        kill_namespace(owner)


def test_files_of_a_killed_owner_in_another_pid_namespace_are_removed(tmp_path, monkeypatch):
    owner, pid, checkpoint = start_in_own_pid_namespace(tmp_path)
    try:
        _, snapshot_path = owner.stdout.readline().split()
    finally:
        kill_namespace(owner)  # no cleanup runs
    (temp_file,) = tmp_path.glob(f".model.pt.{pid}.*{TEMP_SUFFIX}")
    assert Path(snapshot_path).exists()
    wait_until_unlocked(snapshot_path)  # the namespace's processes exit a moment after its launcher
    wait_until_unlocked(temp_file)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    TrainingSnapshot(linear_learner(), memory_limit=0).discard()
    atomic_torch_save({"ours": 1}, checkpoint)
    assert not Path(snapshot_path).exists() and not temp_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

