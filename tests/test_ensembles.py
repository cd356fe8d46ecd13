"""SnapshotEnsemble (callbacks/ensembles.py): snapshots exactly at the cycle ends the schedule has (SGDR with
cycle_mult 2, a triangular schedule, one-cycles in a row), the ensemble's probabilities the mean of the snapshots'
softmax, memory and disk storage, refusals."""

import os

import pytest
import torch
from helpers import WeightsAfterEachStep
from torch import nn

from cyclr import (
    Const,
    CyclicLRCallback,
    Learner,
    ParamScheduler,
    SnapshotEnsemble,
    accuracy,
    combine,
    one_cycle,
    synthetic_classification,
)
from cyclr.callbacks.ensembles import cycle_ends
from cyclr.callbacks.weights import exchange_weights

STEPS_PER_EPOCH = 6  # 96 samples in batches of 16


def learner():
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=48, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.05, metrics=[accuracy],
                   device="cpu", progress=False)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----- where the cycles end -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("lrs", "ends"), [
    ([3, 2, 1, 3, 2, 1], [2, 5]),  # restarts, and the last step coming down
    ([1, 2, 3, 2, 1, 2, 3, 2, 1], [4, 8]),  # triangular: the minima
    ([3, 2, 1, 1, 1, 3, 2], [4, 6]),  # a flat stretch at the bottom: its last step
    ([1, 1, 2, 3, 3], []),  # flat then up (a warm-up): no cycle has ended
    ([1, 2, 3, 3, 3], []),  # up then flat: never came down
    ([5, 4, 3], [2]),  # one decay: the fit's end
])
def test_cycle_ends_are_where_the_rate_rises_again_after_coming_down(lrs, ends):
    assert cycle_ends(lrs) == ends


def test_snapshots_at_the_ends_of_sgdr_cycles_with_cycle_mult_2():
    learn = learner()
    ens, probe = SnapshotEnsemble(), WeightsAfterEachStep()
    learn.fit_sgdr(3, 1, 0.05, cycle_mult=2, cbs=[ens, probe])  # cycles of 1, 2 and 4 epochs
    assert ens.taken == [6, 18, 42]
    lrs = learn.recorder.lrs
    for start, steps in zip([0, *ens.taken[:-2]], ens.taken[:-1], strict=True):
        assert lrs[steps] == pytest.approx(0.05)  # the next step restarts at max_lr
        assert lrs[steps - 1] == min(lrs[start:steps])  # the snapshot's own step ran at the cycle's lowest rate
    for steps, state in zip(ens.taken, ens.snapshots, strict=True):
        assert_same_state(state, probe.steps[steps - 1])


def test_snapshots_at_the_minima_of_a_triangular_schedule():
    learn = learner()
    ens = SnapshotEnsemble()
    learn.fit(6, cbs=[CyclicLRCallback(0.001, 0.05, step_size=4, cycle_momentum=False), ens])  # 36 steps
    # torch's CyclicLR: base_lr at steps t = 0, 8, 16, 24, 32; a snapshot after each of those but the first. The
    # fit's last steps (33-35) go up again: no snapshot at its end.
    assert ens.taken == [9, 17, 25, 33]
    lrs = learn.recorder.lrs
    assert [lrs[s - 1] for s in ens.taken] == [pytest.approx(0.001)] * 4


def test_one_snapshot_per_one_cycle_of_several_in_a_row():
    learn = learner()
    ens = SnapshotEnsemble()
    cycle = one_cycle(0.05).lr
    sched = ParamScheduler({"lr": combine([0.25, 0.25, 0.5], [cycle, cycle, cycle])})
    learn.fit(8, cbs=[sched, ens])  # 48 steps: cycles of 12, 12 and 24
    assert ens.taken == [12, 24, 48]


# ----- the ensemble ---------------------------------------------------------------------------------------------------
def test_ensemble_probabilities_are_the_mean_of_the_snapshots_softmax():
    learn = learner()
    ens = SnapshotEnsemble(keep=2)
    learn.fit_sgdr(3, 1, 0.05, cycle_mult=1)  # a fit before: snapshots are of the fit they are attached to
    learn.fit_sgdr(3, 1, 0.05, cycle_mult=1, cbs=[ens])
    assert ens.taken == [12, 18]  # keep=2: the two most recent of 6, 12, 18
    trained = {k: v.clone() for k, v in learn.model.state_dict().items()}
    x, y = learn.dls.valid.x, learn.dls.valid.y
    expected = []
    for state in ens.snapshots:
        model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        model.load_state_dict(state)
        with torch.no_grad():
            expected.append(model.eval()(x).softmax(-1))
    probs, targets = ens.get_preds(learn)
    torch.testing.assert_close(probs, torch.stack(expected).mean(0))
    assert torch.equal(targets, y)
    torch.testing.assert_close(ens.predict(learn, x[3]), torch.stack(expected).mean(0)[3])
    via_learner, learner_targets = learn.get_preds(ensemble=ens)  # the learner's front door gives the same
    torch.testing.assert_close(via_learner, probs, rtol=0, atol=0)
    assert torch.equal(learner_targets, y)
    torch.testing.assert_close(learn.predict(x[3], ensemble=ens), ens.predict(learn, x[3]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="with_input"):
        learn.get_preds(ensemble=ens, with_input=True)
    assert_same_state(learn.model.state_dict(), trained)  # the learner's weights are its own again
    assert (probs.argmax(1) == y).float().mean() > 0.9


def test_snapshots_on_disk_are_named_in_the_state_and_pruned_at_the_end(tmp_path):
    learn = learner()
    ens = SnapshotEnsemble(keep=2, path=tmp_path / "snaps")
    learn.fit_sgdr(4, 1, 0.05, cycle_mult=1, cbs=[ens])
    assert ens.taken == [18, 24]
    assert sorted(os.listdir(tmp_path / "snaps")) == ["snapshot-00000018.pt", "snapshot-00000024.pt"]
    state = ens.state_dict()
    assert state["snapshots"] == [] and [os.path.basename(f) for f in state["files"]] == sorted(
        os.listdir(tmp_path / "snaps"))
    memory = SnapshotEnsemble(keep=2)
    learner().fit_sgdr(4, 1, 0.05, cycle_mult=1, cbs=[memory])
    for k in range(2):
        assert_same_state(ens.snapshot(k), memory.snapshot(k))
    torch.testing.assert_close(ens.get_preds(learn)[0], memory.get_preds(learn)[0], rtol=0, atol=0)


# ----- refusals -------------------------------------------------------------------------------------------------------
def test_an_ensemble_without_snapshots_is_refused():
    with pytest.raises(ValueError, match="no snapshot yet"):
        SnapshotEnsemble().get_preds(learner())


def test_a_fit_without_cycles_is_refused_before_any_step():
    learn = learner()
    with pytest.raises(ValueError, match="no lr schedule"):
        learn.fit(1, cbs=[SnapshotEnsemble()])
    with pytest.raises(ValueError, match="never comes down to a cycle end"):
        learn.fit(1, cbs=[ParamScheduler({"lr": Const(0.01)}), SnapshotEnsemble()])
    assert learn.train_iter == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="keep"):
        SnapshotEnsemble(keep=0)
    with pytest.raises(TypeError, match="path must be a folder"):
        SnapshotEnsemble(path=3)


def test_a_checkpoint_naming_lost_snapshot_files_is_refused_on_resume(tmp_path):
    from cyclr import SaveModelCallback

    learn = learner()
    ckpt = tmp_path / "ckpt_{epoch}.pt"
    ens = SnapshotEnsemble(path=tmp_path / "snaps")
    learn.fit_sgdr(3, 1, 0.05, cycle_mult=1, cbs=[ens, SaveModelCallback(ckpt, every_epoch=True)])
    os.unlink(ens.files[0])
    learn2 = learner()
    with pytest.raises(FileNotFoundError, match="snapshot files that are gone"):
        learn2.fit_sgdr(3, 1, 0.05, cycle_mult=1, cbs=[SnapshotEnsemble(path=tmp_path / "snaps")],
                        resume=tmp_path / "ckpt_1.pt")


# ----- the weight helpers the ensembles and the averages use (callbacks/weights.py) ----------------------------------
def test_exchange_weights_twice_is_the_identity_and_refuses_other_architectures():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    wa, wb = {k: v.clone() for k, v in a.state_dict().items()}, {k: v.clone() for k, v in b.state_dict().items()}
    exchange_weights(a, b)
    assert torch.equal(a.weight, wb["weight"]) and torch.equal(b.weight, wa["weight"])
    exchange_weights(a, b)
    assert torch.equal(a.weight, wa["weight"]) and torch.equal(b.weight, wb["weight"])
    with pytest.raises(ValueError, match="different architectures"):
        exchange_weights(a, nn.Linear(3, 4))
