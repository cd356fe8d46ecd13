"""Checkpoints: exact resume after SIGKILL (at an epoch's end and mid-epoch), save/load round trips, refusal of
truncated, malicious and mismatched files with the learner left unchanged, atomic writes."""

import copy
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cyclr import (
    Callback,
    CheckpointError,
    EarlyStoppingCallback,
    GradientAccumulation,
    Learner,
    MixedPrecision,
    ParamScheduler,
    ReduceLROnPlateau,
    SaveModelCallback,
    accuracy,
    synthetic_classification,
    triangular,
)
from cyclr.learner.checkpoint_files import read_checkpoint

WORKER = Path(__file__).with_name("resume_worker.py")
STEPS_PER_EPOCH = 6


# ----- SIGKILL and resume, each run in its own process --------------------------------------------------------------
def run_worker(tmp: Path, name: str, *args: str) -> int:
    out = tmp / f"{name}.pt"
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(out), *args], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode not in (0, -9):
        raise AssertionError(f"worker {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def load_result(tmp: Path, name: str) -> dict:
    return torch.load(tmp / f"{name}.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    assert run_worker(tmp, "full", "--ckpt", str(tmp / "full_ckpt.pt")) == 0
    return load_result(tmp, "full")


def assert_same_run(resumed: dict, full: dict) -> None:
    assert resumed["weights"].keys() == full["weights"].keys()
    for k in full["weights"]:
        assert torch.equal(resumed["weights"][k], full["weights"][k]), k  # bitwise, BatchNorm statistics included
    assert resumed["batch_rows"] == full["batch_rows"]  # loss, smooth_loss, lr, mom, pct of every step
    assert resumed["epoch_rows"] == full["epoch_rows"]
    assert resumed["csv"] == full["csv"]


@pytest.mark.parametrize(("every_n_batches", "kill_at_step", "expected_position"), [
    # Killed mid-way through epoch 2; the last checkpoint is the end of epoch 1 (12 steps).
    (None, 15, {"at": "epoch_end", "epoch": 2, "iter": 0, "train_iter": 12}),
    # Killed after step 23 (epoch 3, batch 4); the last checkpoint is after step 20 (epoch 3, batch 1).
    (4, 23, {"at": "batch_end", "epoch": 3, "iter": 2, "train_iter": 20}),
])
def test_sigkill_then_resume_is_bitwise_equal_to_the_uninterrupted_run(tmp_path, uninterrupted, every_n_batches,
                                                                       kill_at_step, expected_position):
    ckpt = tmp_path / "ckpt.pt"
    every = [] if every_n_batches is None else ["--every-n-batches", str(every_n_batches)]
    assert run_worker(tmp_path, "killed", "--ckpt", str(ckpt), "--kill-at-step", str(kill_at_step), *every) == -9
    assert not (tmp_path / "killed.pt").exists()  # it really died before the end
    progress = read_checkpoint(ckpt)["progress"]
    assert {k: progress[k] for k in expected_position} == expected_position
    assert run_worker(tmp_path, "resumed", "--ckpt", str(ckpt), "--resume", *every) == 0
    assert_same_run(load_result(tmp_path, "resumed"), uninterrupted)


# ----- the same in one process, for the other fit methods ------------------------------------------------------------
def make_learner(opt_func=torch.optim.AdamW, **kwargs):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    kwargs.setdefault("progress", False)
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=1e-2, metrics=[accuracy], device="cpu",
                   **kwargs)


class Interrupt(Callback):
    """KeyboardInterrupt right after optimizer step `step` (1-based), after any checkpoint due then."""

    order = 100

    def __init__(self, step):
        self.step = step

    def after_batch(self, learn):
        if learn.training and learn.stepped and learn.train_iter + 1 == self.step:
            raise KeyboardInterrupt


def history(learn):
    return learn.recorder.batch_rows, [{k: v for k, v in r.items() if k != "time"} for r in learn.recorder.epoch_rows]


def assert_same_learners(a, b):
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    assert history(a) == history(b)


# Each: 3 epochs of 6 steps (GradientAccumulation(2): 3 steps), the unit of schedule it exercises.
FITS = {
    "fit_sgdr": lambda learn, cbs, resume=None: learn.fit_sgdr(2, 1, 0.05, cbs=cbs, resume=resume),
    "param_scheduler_per_batch": lambda learn, cbs, resume=None: learn.fit(
        3, cbs=[ParamScheduler({"lr": triangular(0.001, 0.05, 4)}, unit="batch"), *cbs], resume=resume),
    "accumulation_fp16": lambda learn, cbs, resume=None: learn.fit_one_cycle(
        3, 0.05, cbs=[GradientAccumulation(2), MixedPrecision(torch.float16, init_scale=2.0**8), *cbs],
        resume=resume),
}
# (every_n_batches, interrupted after this step, where the last checkpoint before it was taken)
KILLS = {
    ("fit_sgdr", "epoch"): (None, 10, ("epoch_end", 1, 0)),
    ("fit_sgdr", "batch"): (4, 10, ("batch_end", 1, 2)),
    ("param_scheduler_per_batch", "epoch"): (None, 10, ("epoch_end", 1, 0)),
    ("param_scheduler_per_batch", "batch"): (4, 10, ("batch_end", 1, 2)),
    ("accumulation_fp16", "epoch"): (None, 8, ("epoch_end", 2, 0)),
    ("accumulation_fp16", "batch"): (2, 9, ("batch_end", 2, 4)),
}


@pytest.mark.parametrize(("fit_name", "where"), list(KILLS))
def test_interrupted_and_resumed_in_process_equals_uninterrupted(tmp_path, fit_name, where):
    fit = FITS[fit_name]
    every_n_batches, kill_step, position = KILLS[fit_name, where]
    ref = make_learner()
    fit(ref, [EarlyStoppingCallback(patience=5)])

    path = tmp_path / "ckpt.pt"
    saver = SaveModelCallback(path, every_epoch=True, every_n_batches=every_n_batches)
    killed = make_learner()
    with pytest.raises(KeyboardInterrupt):
        fit(killed, [EarlyStoppingCallback(patience=5), saver, Interrupt(kill_step)])
    progress = read_checkpoint(path)["progress"]
    assert (progress["at"], progress["epoch"], progress["iter"]) == position
    resumed = make_learner()
    fit(resumed, [EarlyStoppingCallback(patience=5), saver], resume=path)
    assert_same_learners(resumed, ref)


# ----- save / load round trip -----------------------------------------------------------------------------------------
def test_save_then_load_restores_everything(tmp_path):
    plateau = ReduceLROnPlateau(patience=1)
    learn = make_learner(cbs=[plateau])
    learn.fit_one_cycle(2, 0.05)
    random.random()
    np.random.rand()
    path = learn.save(tmp_path / "a.pt")
    expected = {
        "model": copy.deepcopy(learn.model.state_dict()), "opt": copy.deepcopy(learn.opt.state_dict()),
        "recorder": copy.deepcopy(learn.recorder.state_dict()), "dls": copy.deepcopy(learn.dls.state_dict()),
        "torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()[1].copy(),
        "plateau": plateau.state_dict(),
    }
    draws = (torch.rand(3), random.random(), np.random.rand())

    other_plateau = ReduceLROnPlateau(patience=1)
    other = make_learner(cbs=[other_plateau])
    assert other.opt is None
    other.load(path)
    assert all(torch.equal(v, other.model.state_dict()[k]) for k, v in expected["model"].items())
    assert_nested_equal(other.opt.state_dict(), expected["opt"])
    assert_nested_equal(other.recorder.state_dict(), expected["recorder"])
    assert_nested_equal(other.dls.state_dict(), expected["dls"])
    assert other_plateau.state_dict() == expected["plateau"]
    assert (other.epoch, other.train_iter, other.n_epoch, other.n_train_iters) == (1, 12, 2, 12)
    # The generators go on from where they were when saved.
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1] and np.random.rand() == draws[2]


def assert_nested_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_nested_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_nested_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path  # NaN equals NaN here


def test_recorder_state_round_trips_exactly_mid_epoch():
    """Taken mid-epoch, the Recorder's state carries its smoother, pending losses and the epoch's sums; a copy
    loaded from it finishes the epoch with the same rows as the original."""

    class Snapshot(Callback):
        order = 60

        def after_batch(self, learn):
            if learn.training and learn.epoch == 1 and learn.iter == 2:
                self.state = copy.deepcopy(learn.recorder.state_dict())

    snap = Snapshot()
    learn = make_learner()
    learn.fit(2, cbs=[snap])
    state = snap.state
    assert state["smoother"]["count"] == STEPS_PER_EPOCH  # epoch 0's rows went through the smoother
    assert state["pending_losses"].shape == (3,) and state["train_sums"]["count"] == 48

    from cyclr import Recorder

    copy_ = Recorder()
    copy_.load_state_dict(copy.deepcopy(state))
    assert_nested_equal(copy_.state_dict(), state)
    assert copy_.smoother.avg == state["smoother"]["avg"] and copy_.smoother.count == STEPS_PER_EPOCH


def test_model_only_load_changes_only_the_weights(tmp_path):
    learn = make_learner()
    learn.fit(1)
    learn.save(tmp_path / "a.pt")
    other = make_learner()
    rows = list(other.recorder.batch_rows)
    other.load(tmp_path / "a.pt", model_only=True)
    assert all(torch.equal(a, b) for a, b in zip(learn.model.parameters(), other.model.parameters(), strict=True))
    assert other.opt is None and other.recorder.batch_rows == rows and other.train_iter == 0


# ----- refused files leave the learner as it was ----------------------------------------------------------------------
def learner_state(learn):
    return {"model": copy.deepcopy(learn.model.state_dict()),
            "opt": None if learn.opt is None else copy.deepcopy(learn.opt.state_dict()),
            "recorder": copy.deepcopy(learn.recorder.state_dict()), "dls": copy.deepcopy(learn.dls.state_dict()),
            "counters": (learn.epoch, learn.train_iter, learn.n_epoch, learn.n_train_iters),
            "torch_rng": torch.get_rng_state()}


@pytest.fixture
def saved(tmp_path):
    learn = make_learner()
    learn.fit(1)
    return learn.save(tmp_path / "good.pt")


@pytest.mark.parametrize("fresh", [True, False], ids=["before_any_fit", "after_a_fit"])
def test_truncated_checkpoint_is_refused_and_nothing_changes(tmp_path, saved, fresh):
    data = saved.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    learn = make_learner()
    if not fresh:
        learn.fit(1, lr=0.02)
    before = learner_state(learn)
    with pytest.raises(CheckpointError, match="truncated.pt cannot be read: truncated or corrupt"):
        learn.load(bad)
    with pytest.raises(CheckpointError, match="cannot be read"):
        learn.fit(1, resume=bad)
    assert_nested_equal(learner_state(learn), before)


class Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do (run any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, container):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    content = {"format": "cyclr-checkpoint", "version": 1, "model": Payload(marker)}
    if container == "torch_zip":
        torch.save(content, bad)
    else:
        bad.write_bytes(pickle.dumps(content, protocol=2))  # torch.load's own protocol
    learn = make_learner()
    before = learner_state(learn)
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors and plain values \(it would call "
                                              r"io.open\); it was refused"):
        learn.load(bad)
    with pytest.raises(CheckpointError, match="refused without running"):
        learn.fit(1, resume=bad)
    assert not marker.exists()
    assert_nested_equal(learner_state(learn), before)
    # Control: an unrestricted unpickler does run the payload, so the refusal above is what kept it from running.
    if container == "torch_zip":
        torch.load(bad, weights_only=False)
    else:
        pickle.loads(bad.read_bytes())
    assert marker.exists()


def test_other_architecture_is_refused_naming_the_mismatch(saved):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Dropout(0.2), nn.Linear(20, 3),
                          nn.Softmax(dim=1), nn.Linear(3, 3))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.AdamW, device="cpu", progress=False)
    before = learner_state(learn)
    with pytest.raises(CheckpointError, match=r"model: .*missing 6\.weight, 6\.bias.*other shapes: "
                                              r"0\.weight \(16, 8\) in the checkpoint vs \(20, 8\) in the model"):
        learn.load(saved)
    assert_nested_equal(learner_state(learn), before)
    assert learn.opt is None  # created for the check, dropped again


def test_other_optimizer_is_refused_naming_both(saved):
    learn = make_learner(opt_func=torch.optim.SGD)
    learn.fit(1)
    before = learner_state(learn)
    with pytest.raises(CheckpointError, match="optimizer: the checkpoint holds the state of AdamW but this learner's "
                                              "optimizer is SGD"):
        learn.load(saved)
    assert_nested_equal(learner_state(learn), before)
    learn.load(saved, with_opt=False)  # everything else fits
    assert learn.train_iter == STEPS_PER_EPOCH


def test_a_callback_state_that_does_not_fit_is_refused_before_anything_changes(tmp_path):
    learn = make_learner(cbs=[MixedPrecision(torch.float16)])
    learn.fit(1)
    path = learn.save(tmp_path / "fp16.pt")
    other = make_learner(cbs=[MixedPrecision(torch.bfloat16)])
    before = learner_state(other)
    with pytest.raises(CheckpointError, match=r"callback MixedPrecision_0: .*MixedPrecision\(float16\)"):
        other.load(path)
    assert_nested_equal(learner_state(other), before)


def test_a_plain_state_dict_is_not_a_checkpoint(tmp_path):
    learn = make_learner()
    torch.save(learn.model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="is not a cyclr checkpoint.*learn.model.load_state_dict"):
        learn.load(tmp_path / "weights.pt")


# ----- atomic writes --------------------------------------------------------------------------------------------------
def test_a_crash_between_write_and_rename_leaves_the_old_file_intact(tmp_path, monkeypatch):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "ckpt.pt")
    old_bytes = path.read_bytes()
    learn.fit(1)

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        learn.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left behind
    assert read_checkpoint(path)["progress"]["train_iter"] == STEPS_PER_EPOCH
    learn.save(path)  # and a save that completes replaces it
    assert read_checkpoint(path)["progress"]["train_iter"] == STEPS_PER_EPOCH


def test_a_callback_state_torch_cannot_load_safely_is_refused_when_saving(tmp_path):
    class NumpyState(Callback):
        def state_dict(self):
            return {"weights": np.zeros(3)}

    learn = make_learner(cbs=[NumpyState()])
    with pytest.raises(TypeError, match=r"NumpyState_0.state_dict\(\)\['weights'\] is a numpy.ndarray.*"
                                        r"torch.as_tensor"):
        learn.save(tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# ----- resume rules ---------------------------------------------------------------------------------------------------
def epoch_checkpoint(tmp_path, n_epoch=3, stop_after_step=STEPS_PER_EPOCH + 1):
    path = tmp_path / "ckpt.pt"
    learn = make_learner()
    with pytest.raises(KeyboardInterrupt):
        learn.fit_one_cycle(n_epoch, 0.05, cbs=[SaveModelCallback(path, every_epoch=True),
                                                Interrupt(stop_after_step)])
    return path


def test_resuming_with_another_length_is_refused_naming_both(tmp_path):
    path = epoch_checkpoint(tmp_path)
    learn = make_learner()
    before = learner_state(learn)
    with pytest.raises(ValueError, match=r"planned for 3 epochs of 6 batches \(18 batches\), but this fit plans 4 "
                                         r"epochs of 6 batches \(24\).*allow_length_change=True"):
        learn.fit_one_cycle(4, 0.05, resume=path)
    assert_nested_equal(learner_state(learn), before)
    learn.fit_one_cycle(4, 0.05, resume=path, allow_length_change=True)
    assert learn.train_iter == 24 and learn.recorder.batch_rows[-1]["train_iter"] == 23
    # Steps 6.. follow the new plan: pct = train_iter / 24.
    assert [r["pct"] for r in learn.recorder.batch_rows[6:]] == [i / 24 for i in range(6, 24)]


def test_a_checkpoint_taken_between_fits_is_not_resumable(tmp_path):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "between.pt")
    with pytest.raises(CheckpointError, match="saved between fits, so it marks no place in one to resume from"):
        make_learner().fit(1, resume=path)


def test_a_finished_fit_has_nothing_to_resume(tmp_path):
    path = tmp_path / "ckpt.pt"
    learn = make_learner()
    learn.fit(2, cbs=[SaveModelCallback(path, every_epoch=True)])
    with pytest.raises(ValueError, match="at epoch 2 .* nothing is left to train in a fit of 2 epochs"):
        make_learner().fit(2, resume=path)


def test_resuming_without_the_callbacks_of_the_checkpoint_warns(tmp_path):
    path = epoch_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match=r"holds the state of \['OneCycleCallback_0'\], which this fit does not "
                                         r"have.*fit_one_cycle"):
        make_learner().fit(3, resume=path)


def test_save_inside_a_fit_reads_where_it_is_from_the_running_event(tmp_path):
    """learn.save(path) from after_epoch and from a training batch's after_batch records that place without `at`;
    the resumed fits end bitwise where the uninterrupted one does."""

    class SaveAt(Callback):
        def __init__(self, event, when):
            self.event, self.when = event, when

        def after_batch(self, learn):
            if self.event == "after_batch" and learn.training and learn.train_iter == self.when:
                learn.save(tmp_path / "batch.pt")

        def after_epoch(self, learn):
            if self.event == "after_epoch" and learn.epoch == self.when:
                learn.save(tmp_path / "epoch.pt")

    torch.manual_seed(0)
    full = make_learner()
    full.fit(3)
    for event, when, name, at in (("after_epoch", 0, "epoch.pt", "epoch_end"), ("after_batch", 5, "batch.pt",
                                                                                 "batch_end")):
        torch.manual_seed(0)
        make_learner().fit(3, cbs=[SaveAt(event, when)])
        assert read_checkpoint(tmp_path / name)["progress"]["at"] == at
        resumed = make_learner()
        resumed.fit(3, resume=tmp_path / name)
        for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("event", ["before_batch", "after_train", "after_validate"])
def test_save_inside_a_fit_refuses_a_place_it_cannot_resume_from(tmp_path, event):
    def save(learn):
        learn.save(tmp_path / "x.pt")

    cb = Callback()
    setattr(cb, event, save)
    with pytest.raises(ValueError, match=f"learn.save was called from {event}.*could not be resumed"):
        make_learner().fit(1, cbs=[cb])
    assert not (tmp_path / "x.pt").exists()


def test_save_inside_a_fit_refuses_an_at_that_does_not_match(tmp_path):
    class SaveWrongly(Callback):
        def after_epoch(self, learn):
            learn.save(tmp_path / "x.pt", at="batch_end")

    with pytest.raises(ValueError, match="at='batch_end' does not match where the fit is: after_epoch is 'epoch_end'"):
        make_learner().fit(1, cbs=[SaveWrongly()])


@pytest.mark.parametrize(("call", "match"), [
    (lambda learn, d: learn.save(""), r"path is empty \(''\): pass a file name, e.g. 'model.pt'"),
    (lambda learn, d: learn.save("", model_only=True), r"path is empty"),
    (lambda learn, d: learn.save(d), r"path '.*' is a folder: pass a file path in it, e.g. '.*/model.pt'"),
    (lambda learn, d: learn.save(f"{d}/new/"), r"is a folder: pass a file path in it"),
    (lambda learn, d: SaveModelCallback(""), r"path is empty \(''\): pass a file name, e.g. 'model_\{epoch\}.pt'"),
    (lambda learn, d: SaveModelCallback(d), r"is a folder"),
])
def test_an_empty_path_or_a_folder_is_refused_before_anything_is_written(tmp_path, call, match):
    learn = make_learner()
    with pytest.raises(ValueError, match=match):
        call(learn, str(tmp_path))
    assert list(tmp_path.iterdir()) == []
