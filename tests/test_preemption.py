"""Preemption (issue 24.4): SIGTERM / SIGUSR1 end a fit at the next point where a checkpoint is valid, save it where the
user asked for checkpoints, end trackers' runs as KILLED and exit with status 75; `fit(..., resume='auto')` goes on
from the newest checkpoint. The end-to-end test sends a real SIGTERM to a real process at a random step and requeues
it with the same command."""

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from cyclr import (
    PREEMPTED_EXIT_CODE,
    Callback,
    Learner,
    Preempted,
    PreemptionCheckpoint,
    SaveModelCallback,
    synthetic_classification,
)
from cyclr.callbacks.tracker import TrackerCallback
from cyclr.learner.checkpoint_files import read_checkpoint

WORKER = Path(__file__).with_name("preemption_worker.py")
STEPS_PER_EPOCH = 6


# ----- a real job: SIGTERM at a random step, requeued with the same command -----------------------------------------
def launch(folder: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), "--dir", str(folder), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_tensorboard(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()  # TensorBoard's own reader: a resumed writer's purge_step drops what the killed run logged after it
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_sigterm_at_a_random_step_then_requeue_gives_the_uninterrupted_run_bitwise(tmp_path):
    full_dir, job_dir = tmp_path / "full", tmp_path / "job"
    full_dir.mkdir(), job_dir.mkdir()
    full = launch(full_dir, tmp_path / "full.pt")  # the reference runs alongside the preempted job
    started = tmp_path / "started"
    stop_at = random.Random().randint(2, 3 * STEPS_PER_EPOCH - 2)
    job = launch(job_dir, tmp_path / "job.pt", "--started", str(started), "--step-sleep", "0.03")
    deadline = time.monotonic() + 60
    while not (started.exists() and started.read_text() and int(started.read_text()) >= stop_at):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1][-3000:]
        time.sleep(0.005)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == PREEMPTED_EXIT_CODE, f"stop_at={stop_at}\n{err[-3000:]}"
    assert "preempted by SIGTERM" in err and "resume='auto'" in err
    assert not (tmp_path / "job.pt").exists()  # it stopped before the end
    saved = read_checkpoint(max(job_dir.glob("ck_*.pt")), with_history=False)["progress"]
    assert stop_at <= saved["train_iter"] < 3 * STEPS_PER_EPOCH, (stop_at, saved)

    requeued = launch(job_dir, tmp_path / "job.pt")  # the same command
    for proc in (requeued, full):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    got, want = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("job", "full"))
    for k in want["weights"]:
        assert torch.equal(got["weights"][k], want["weights"][k]), (k, stop_at)  # bitwise, BatchNorm statistics too
    assert got["batch_rows"] == want["batch_rows"] and got["epoch_rows"] == want["epoch_rows"]
    # The logs are complete: every epoch once in the CSV (wall times aside), every step once in TensorBoard.
    rows = [[line.rsplit(",", 1)[0] for line in (d / "log.csv").read_text().splitlines()] for d in (job_dir, full_dir)]
    assert rows[0] == rows[1] and len(rows[0]) == 1 + 3
    tb_job, tb_full = read_tensorboard(job_dir / "tb"), read_tensorboard(full_dir / "tb")
    assert tb_job.keys() == tb_full.keys()
    for tag in tb_full:
        assert tb_job[tag] == tb_full[tag], tag
    assert [s for s, _ in tb_job["train/loss"]] == list(range(3 * STEPS_PER_EPOCH))


def test_under_torchrun_every_rank_stops_after_the_same_step_when_one_is_signalled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(WORKER), "--dir", str(tmp_path), "--out", str(tmp_path / "r"),
           "--signal-at", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0  # torchrun reports its workers' status 75 as a failure of the job
    ranks = [torch.load(tmp_path / f"r.rank{r}", weights_only=True) for r in range(2)]
    assert [r["train_iter"] for r in ranks] == [5, 5], proc.stderr[-3000:]  # step 4 (0-based) done on both
    assert ranks[0]["checkpoints"] == ranks[1]["checkpoints"] == [str(tmp_path / "ck.pt")]
    p = read_checkpoint(tmp_path / "ck.pt", with_history=False)["progress"]
    assert (p["at"], p["train_iter"]) == ("batch_end", 5)


# ----- in process: where the fit stops, what it leaves ----------------------------------------------------------------
def make_learner(**kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), device="cpu", progress=False, **kwargs)


class SignalAt(Callback):
    """Sends `signum` to this process at `event` of training batch `step` (0-based train_iter), or of any validation
    batch when `validation`."""

    def __init__(self, event: str, step: int | None = None, signum=signal.SIGTERM, validation: bool = False):
        self.event, self.step, self.signum, self.validation, self.sent = event, step, signum, validation, False
        setattr(self, event, self._maybe_send)

    def _maybe_send(self, learn):
        due = (not learn.training and learn.epoch == 1) if self.validation else \
            (learn.training and learn.train_iter == self.step)
        if due and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


class Events(TrackerCallback):
    """A tracker that writes nowhere: records the status its run ended with."""

    def __init__(self):
        super().__init__()
        self.statuses = []

    def _open(self, learn): pass
    def _write(self, metrics): pass
    def _write_params(self, params): pass
    def _close(self, status): self.statuses.append(status)
    def _where(self): return "nowhere"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_the_batch_in_progress_finishes_then_the_run_is_saved_and_the_tracker_run_killed(tmp_path, signum):
    learn, tracker = make_learner(), Events()
    ckpt = SaveModelCallback(tmp_path / "ck_{train_iter}.pt", every_epoch=True)
    with pytest.raises(Preempted) as info:
        learn.fit(3, cbs=[ckpt, tracker, SignalAt("before_step", step=8, signum=signum)])
    assert info.value.code == PREEMPTED_EXIT_CODE and isinstance(info.value, SystemExit)
    assert info.value.checkpoints == [str(tmp_path / "ck_9.pt")]  # step 8 (0-based) was taken: 9 steps
    assert len(learn.recorder.batch_rows) == 9 and tracker.statuses == ["KILLED"]
    p = read_checkpoint(tmp_path / "ck_9.pt", with_history=False)["progress"]
    assert (p["at"], p["epoch"], p["iter"], p["train_iter"]) == ("batch_end", 1, 3, 9)
    assert signal.getsignal(signum) is signal.SIG_DFL  # the handlers before the fit are back


def test_mlflow_run_is_killed_by_the_preemption_and_finished_by_the_requeue_every_step_once(tmp_path):
    from mlflow import MlflowClient

    from cyclr import MLflowCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, ckpt = MlflowClient(tracking_uri=uri), tmp_path / "ck_{train_iter}.pt"
    first = MLflowCallback(uri, experiment="preempted")
    with pytest.raises(Preempted):
        make_learner(cbs=[first]).fit(3, cbs=[SaveModelCallback(ckpt, every_epoch=True), SignalAt("after_step", 10)])
    assert client.get_run(first.run_id).info.status == "KILLED"
    again = MLflowCallback(uri, experiment="preempted")
    requeued = make_learner(cbs=[again])
    requeued.fit(3, cbs=[SaveModelCallback(ckpt, every_epoch=True)], resume="auto")
    assert again.run_id == first.run_id and client.get_run(first.run_id).info.status == "FINISHED"
    logged = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, "train/loss"))
    assert logged == [(i, v) for i, v in enumerate(requeued.recorder.to_df("batches")["loss"])]  # each step once


def test_a_signal_during_validation_waits_for_the_end_of_the_epoch(tmp_path):
    learn = make_learner()
    with pytest.raises(Preempted) as info:
        learn.fit(3, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True),
                          SignalAt("after_pred", validation=True)])
    assert len(learn.recorder.epoch_rows) == 2  # epoch 1's validation ran to its end
    p = read_checkpoint(info.value.checkpoints[0], with_history=False)["progress"]
    assert (p["at"], p["epoch"], p["train_iter"]) == ("epoch_end", 2, 12)


def test_a_signal_during_the_last_validation_lets_the_fit_end_and_stops_the_next_one(tmp_path):
    learn, tracker = make_learner(), Events()
    sender = SignalAt("after_pred", validation=True)
    learn.fit(2, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True), tracker, sender])
    assert sender.sent and learn.train_iter == 12 and tracker.statuses == ["FINISHED"]
    with pytest.raises(Preempted) as info:
        learn.fit(2, cbs=[tracker])
    assert info.value.train_iter == 1 and tracker.statuses == ["FINISHED", "KILLED"]


def test_resume_auto_starts_fresh_then_goes_on_from_the_newest_checkpoint(tmp_path):
    path = tmp_path / "ck_{train_iter:03d}.pt"
    reference = make_learner()
    reference.fit(3, lr=1e-2)
    learn = make_learner()
    learn.fit(3, lr=1e-2, cbs=[SaveModelCallback(path, every_epoch=True)], resume="auto")  # nothing yet: fresh
    for k, v in reference.model.state_dict().items():
        assert torch.equal(learn.model.state_dict()[k], v)
    # A preempted run at a dedicated path; its requeue finds it (newer than the epoch checkpoints of the first run).
    preempted = make_learner()
    own = PreemptionCheckpoint(tmp_path / "preempted.pt")
    with pytest.raises(Preempted):
        preempted.fit(3, lr=1e-2, cbs=[own, SignalAt("after_step", step=14)])
    requeued = make_learner()
    requeued.fit(3, lr=1e-2, cbs=[PreemptionCheckpoint(tmp_path / "preempted.pt")], resume="auto")
    assert len(requeued.recorder.batch_rows) == 18
    for k, v in reference.model.state_dict().items():
        assert torch.equal(requeued.model.state_dict()[k], v), k
    # Another run's checkpoint at the same path is refused, never trained over.
    with pytest.raises(ValueError, match="other settings"):
        make_learner().fit(3, lr=2e-2, cbs=[PreemptionCheckpoint(tmp_path / "preempted.pt")], resume="auto")


def test_resume_auto_passes_over_a_damaged_file_and_one_saved_between_fits(tmp_path):
    path = tmp_path / "ck_{train_iter:03d}.pt"
    with pytest.raises(Preempted):
        make_learner().fit(3, cbs=[SaveModelCallback(path, every_epoch=True), SignalAt("after_step", step=8)])
    (tmp_path / "ck_999.pt").write_bytes(b"not a checkpoint")  # a damaged file that would sort as the newest
    make_learner().save(tmp_path / "ck_500.pt")  # saved between fits: no place in a fit to go on from
    requeued = make_learner()
    with pytest.warns(RuntimeWarning, match=r"resume='auto' passes over .*ck_999.pt: .*is corrupt or not a torch file"):
        requeued.fit(3, cbs=[SaveModelCallback(path, every_epoch=True)], resume="auto")
    assert len(requeued.recorder.batch_rows) == 18 and requeued.recorder.batch_rows[0]["train_iter"] == 0


def test_best_epoch_checkpoints_stay_the_best_and_the_preemption_file_goes_when_the_fit_ends(tmp_path):
    best = tmp_path / "best.pt"
    learn = make_learner()
    with pytest.raises(Preempted) as info:
        learn.fit(3, cbs=[SaveModelCallback(best), SignalAt("after_step", step=9)])
    assert info.value.checkpoints == [str(tmp_path / "best.preempted.pt")]
    assert read_checkpoint(best, with_history=False)["progress"]["at"] == "epoch_end"
    requeued = make_learner()
    requeued.fit(3, cbs=[SaveModelCallback(best)], resume="auto")
    assert requeued.train_iter == 18 and not (tmp_path / "best.preempted.pt").exists()


def test_a_signal_during_an_lr_find_sweep_waits_for_the_next_fit(tmp_path):
    learn = make_learner()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    sender = SignalAt("after_step", step=3)
    learn.add_cbs([sender])
    learn.lr_find(num_it=10, show_plot=False)  # the sweep runs to its end, its weights put back
    learn.remove_cbs([sender])
    assert sender.sent
    for k, v in before.items():
        assert torch.equal(learn.model.state_dict()[k], v)
    with pytest.raises(Preempted) as info:
        learn.fit(2, cbs=[PreemptionCheckpoint(tmp_path / "p.pt")])
    assert info.value.train_iter == 1 and Path(info.value.checkpoints[0]).exists()


def test_handlers_are_restored_a_second_signal_goes_to_them_and_threads_install_none(tmp_path):
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: received.append(s))
    try:
        learn = make_learner()

        class Twice(Callback):
            def after_step(self, learn):
                if learn.train_iter == 2:
                    os.kill(os.getpid(), signal.SIGUSR1)
                    os.kill(os.getpid(), signal.SIGUSR1)  # asked twice: the previous handler has it at once

        with pytest.raises(Preempted):
            learn.fit(1, cbs=[Twice()])
        assert received == [signal.SIGUSR1]
        handler = signal.getsignal(signal.SIGUSR1)
        assert handler is not signal.SIG_DFL and handler.__name__ == "<lambda>"

        errors = []
        thread = threading.Thread(target=lambda: _fit_catching(make_learner(), errors))
        thread.start(), thread.join()
        assert errors == [] and signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _fit_catching(learn, errors):
    try:
        learn.fit(1)
    except BaseException as e:  # noqa: BLE001 - reported to the main thread
        errors.append(e)


def test_in_a_slurm_job_the_job_is_requeued_once_the_checkpoint_is_written(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "scontrol"  # records its arguments and whether the checkpoint existed by then
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" $(ls {tmp_path}/ck.pt) >> {calls}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(Preempted) as info:
        make_learner().fit(2, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True),
                                   SignalAt("after_step", step=2, signum=signal.SIGUSR1)])
    assert calls.read_text() == f"requeue 4242 {tmp_path}/ck.pt\n" and "SLURM job 4242 requeued" in str(info.value)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7"), monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    with pytest.raises(Preempted):
        make_learner().fit(2, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True),
                                   SignalAt("after_step", step=2)])
    assert calls.read_text().splitlines()[-1] == f"requeue 7_3 {tmp_path}/ck.pt"
    with pytest.raises(Preempted) as info:  # requeue=False: left to the job script
        make_learner(cbs=[PreemptionCheckpoint(tmp_path / "p.pt", requeue=False)]).fit(
            2, cbs=[SignalAt("after_step", step=2)])
    assert len(calls.read_text().splitlines()) == 2 and "requeued" not in str(info.value)


def test_signals_are_configurable_and_an_empty_tuple_turns_preemption_off():
    learn = make_learner(cbs=[PreemptionCheckpoint(signals=())])
    seen = []

    class Look(Callback):
        def after_step(self, learn):
            seen.append(signal.getsignal(signal.SIGTERM))

    learn.fit(1, cbs=[Look()])
    assert seen and all(h is signal.SIG_DFL for h in seen)
    with pytest.raises(ValueError):
        PreemptionCheckpoint(signals=[12345])


# ----- a resume holds its run's lock from its check on (issue 24.2's race, pending from D1) --------------------------
TRY_LOCK = """import sys
from cyclr import WriterConflictError
from cyclr.data.writer_lock import WriterLock
try:
    WriterLock(sys.argv[1], 'test').acquire()
except WriterConflictError:
    sys.exit(3)
"""


def test_a_resume_holds_the_runs_writer_lock_from_its_check_to_the_end_of_the_fit(tmp_path):
    ckpt = SaveModelCallback(tmp_path / "ck.pt", every_epoch=True)
    first = make_learner()
    with pytest.raises(Preempted):
        first.fit(3, cbs=[ckpt, SignalAt("after_step", step=4)])
    lock = ckpt.run_files_lock(first.recorder.run_id)
    seen = []

    class TryFromAnotherProcess(Callback):
        order = -1000  # the first before_fit of all, before SaveModelCallback takes the lock itself

        def before_fit(self, learn):
            seen.append(subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock.path)]).returncode)

    resumed = make_learner()
    resumed.fit(3, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True), TryFromAnotherProcess()],
                resume="auto")
    assert resumed.train_iter == 18 and seen == [3]  # between the check and before_fit no one else can take it
    assert not lock.held and subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock.path)]).returncode == 0
