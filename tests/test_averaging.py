"""SWA and EMA (callbacks/averaging.py): the averages against hand-computed ones, batch-norm statistics recomputed
for the SWA mean (against a fresh pass) without disturbing the RNGs or the loader, exact swaps, bad arguments
refused before training, the LR finder leaving them untouched, and SIGKILL mid-averaging then resume bitwise equal to
the uninterrupted run."""

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import WeightsAfterEachStep, state_copy
from torch import nn

from cyclr import (
    EMA,
    SWA,
    Callback,
    Const,
    Cos,
    DataLoaders,
    Learner,
    Lin,
    ParamScheduler,
    SnapshotEnsemble,
    accuracy,
    combine,
    synthetic_classification,
)
from cyclr.callbacks.averaging import ema_decay
from cyclr.callbacks.weights import recompute_batch_norm
from cyclr.data.state import rng_state

STEPS_PER_EPOCH = 6  # 96 samples in batches of 16


def learner(bn=False, dtype=torch.float32, **kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=48, bs=16, seed=0)
    if dtype != torch.float32:
        dls = DataLoaders.from_tensors(dls.train.x.to(dtype), dls.train.y, dls.valid.x.to(dtype), dls.valid.y, bs=16)
    layers = [nn.Linear(8, 16), *([nn.BatchNorm1d(16)] if bn else []), nn.ReLU(), nn.Linear(16, 3)]
    model = nn.Sequential(*layers).to(dtype)
    kwargs.setdefault("progress", False)
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.05, metrics=[accuracy],
                   device="cpu", **kwargs)


def mean_of(states, key):
    return torch.stack([s[key] for s in states]).mean(0)


# ----- SWA: the mean, its points, batch norm --------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "every", "points"), [
    (0.5, 4, [28, 32, 36, 40, 44, 48]),  # 8 epochs of 6 steps: after step 24, every 4 steps
    (5, "epoch", [36, 42, 48]),  # from epoch 5 on: the ends of epochs 5, 6 and 7
    (0.75, "epoch", [42, 48]),  # the last quarter: the ends of epochs 6 and 7
])
def test_swa_is_the_mean_of_the_weights_at_the_averaging_points(start, every, points):
    learn = learner(dtype=torch.float64)
    probe, swa = WeightsAfterEachStep(), SWA(start=start, every=every, swap=False)
    learn.fit(8, cbs=[swa, probe])
    at_points = [probe.steps[p - 1] for p in points]
    assert swa.n == len(points)
    for name, value in swa.model.named_parameters():
        # float64: the running mean torch keeps equals the plain mean to rounding
        torch.testing.assert_close(value.detach(), mean_of(at_points, name), rtol=0, atol=1e-12)
    assert torch.equal(learn.model.state_dict()["0.weight"], probe.steps[-1]["0.weight"])  # swap=False
    assert [r["swa_n"] for r in learn.recorder.epoch_rows] == [sum(p <= 6 * (e + 1) for p in points)
                                                               for e in range(8)]


def test_swa_every_cycle_averages_at_the_minima_of_a_cyclical_tail():
    # 8 epochs of 6 steps: cosine down over the first 24 steps, then 4 cycles of 6 steps from 0.05 down to 0.005.
    tail = [Lin(0.05, 0.005)] * 4
    sched = ParamScheduler({"lr": combine([0.5, *[0.125] * 4], [Cos(0.1, 0.05), *tail])})
    learn = learner(dtype=torch.float64)
    probe, swa = WeightsAfterEachStep(), SWA(start=0.5, every="cycle", swap=False)
    learn.fit(8, cbs=[sched, swa, probe])
    assert sorted(swa.points) == [30, 36, 42, 48]
    lrs = learn.recorder.lrs
    assert [lrs[p - 1] for p in sorted(swa.points)] == pytest.approx([0.005 + 0.045 / 6] * 4)  # each cycle's lowest
    for name, value in swa.model.named_parameters():
        torch.testing.assert_close(value.detach(), mean_of([probe.steps[p - 1] for p in (30, 36, 42, 48)], name),
                                   rtol=0, atol=1e-12)


def test_swa_swaps_the_mean_in_and_reports_its_validation_in_the_last_row():
    learn = learner()
    swa = SWA(start=0.5)
    learn.fit(4, cbs=[swa])
    for name, value in swa.model.state_dict().items():
        assert torch.equal(learn.model.state_dict()[name], value)
    rows = learn.recorder.epoch_rows
    assert all(math.isnan(r["swa_valid_loss"]) for r in rows[:-1])
    assert rows[-1]["swa_valid_loss"] == pytest.approx(learn.validate()["valid_loss"], rel=1e-6)
    assert rows[-1]["swa_accuracy"] == learn.validate()["accuracy"]
    assert rows[-1]["valid_loss"] != rows[-1]["swa_valid_loss"]  # the epoch's own column: the last trained weights


def test_batch_norm_is_recomputed_for_the_mean_and_it_validates_well_above_chance():
    learn = learner(bn=True)
    swa = SWA(start=0.5, every=2)
    learn.fit(6, cbs=[swa])
    # recompute_batch_norm put the loader back, so the next pass draws the batches update_bn saw.
    batches = list(learn.dls.train)
    lin, bn = learn.model[0], learn.model[1]
    with torch.no_grad():
        h = [lin(x) for x, _ in batches]
    # momentum None: the plain average over batches of each batch's mean and unbiased variance
    torch.testing.assert_close(bn.running_mean, torch.stack([b.mean(0) for b in h]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([b.var(0) for b in h]).mean(0))
    assert bn.momentum == 0.1  # put back after update_bn
    assert learn.validate()["accuracy"] > 0.9  # 3 classes: chance is 1/3


def test_recomputing_batch_norm_leaves_the_rngs_and_the_loaders_as_they_were():
    learn = learner(bn=True)
    learn.fit(1)
    rngs, loaders = rng_state(), copy.deepcopy(learn.dls.state_dict())
    recompute_batch_norm(learn)
    assert torch.equal(rng_state()["torch"], rngs["torch"])
    assert rng_state()["random"] == rngs["random"]
    assert repr(learn.dls.state_dict()) == repr(loaders)


# ----- EMA ------------------------------------------------------------------------------------------------------------
def test_ema_decay_warms_up_as_timm():
    assert ema_decay(0, 0.999) == 0.0  # the first update copies
    assert ema_decay(1, 0.999) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_decay(10 ** 6, 0.999) == 0.999
    assert ema_decay(5, 0.9, warmup=False) == 0.9


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_equals_the_hand_computed_average_of_weights_and_buffers(warmup):
    learn = learner(bn=True, dtype=torch.float64)
    probe, ema = WeightsAfterEachStep(), EMA(decay=0.8, warmup=warmup, validate=False)
    learn.fit(2, cbs=[ema, probe])
    expected = dict(probe.steps[0])
    for t, state in enumerate(probe.steps[1:], start=1):
        d = min(0.8, 1 - (1 + t) ** (-2 / 3)) if warmup else 0.8
        expected = {k: d * expected[k] + (1 - d) * v if v.is_floating_point() else v for k, v in state.items()}
    assert ema.n == len(probe.steps) == 12
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():  # weights and batch-norm statistics averaged
            torch.testing.assert_close(v, expected[k], rtol=0, atol=1e-12)
        else:  # num_batches_tracked copied
            assert torch.equal(v, probe.steps[-1][k])


def test_ema_validation_each_epoch_leaves_the_weights_exactly_as_trained():
    class AfterValidation(Callback):
        order = 80

        def after_train(self, learn):
            self.trained = state_copy(learn.model)

        def after_epoch(self, learn):
            for k, v in learn.model.state_dict().items():
                assert torch.equal(v, self.trained[k]), k

    learn = learner(bn=True)
    ema = EMA(decay=0.9)
    learn.fit(2, cbs=[ema, AfterValidation()])
    rows = learn.recorder.epoch_rows
    assert [r["ema_n"] for r in rows] == [6, 12]
    trained = state_copy(learn.model)
    with ema.applied(learn):  # outside the fit: the EMA weights for this block only
        inside = learn.validate()
    assert inside["valid_loss"] == pytest.approx(rows[-1]["ema_valid_loss"], rel=1e-6)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, trained[k])
    assert learn.validate()["valid_loss"] == pytest.approx(rows[-1]["valid_loss"], rel=1e-6)


def test_a_failing_block_still_puts_the_weights_back():
    learn = learner()
    ema = EMA(decay=0.9, validate=False)
    learn.fit(1, cbs=[ema])
    before = state_copy(learn.model)
    with pytest.raises(RuntimeError, match="boom"), ema.applied(learn):
        raise RuntimeError("boom")
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k])


# ----- bad arguments, before training ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "match"), [
    (lambda: SWA(start=1.5), r"start must be a fraction of the fit in \(0, 1\)"),
    (lambda: SWA(start=0.0), r"start must be a fraction"),
    (lambda: SWA(start=-1), "start"),
    (lambda: SWA(every=0), "every"),
    (lambda: EMA(decay=1.0), r"decay must be in \(0, 1\)"),
    (lambda: EMA(decay=0), r"decay must be in \(0, 1\)"),
    (lambda: EMA(decay=1.5), r"decay must be in \(0, 1\)"),
    (lambda: EMA(every=0), "every"),
])
def test_bad_arguments_are_refused_when_the_callback_is_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(("cb", "match"), [
    (SWA(start=3), "after the end of this fit of 3 epochs"),
    (SWA(start=0.9, every=10), "no averaging point"),
])
def test_a_start_after_the_end_is_refused_before_any_step(cb, match):
    learn = learner()
    before = state_copy(learn.model)
    with pytest.raises(ValueError, match=match):
        learn.fit(3, cbs=[cb])
    assert learn.train_iter == 0
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, before[k])


def test_the_averages_come_back_from_a_checkpoint_saved_after_the_fit(tmp_path):
    learn = learner(bn=True)
    ema = EMA(decay=0.9)
    learn.fit(2, cbs=[ema])
    learn.add_cbs([ema])
    learn.save(tmp_path / "done.pt")
    with ema.applied(learn):
        expected = learn.validate()
    again, ema_again = learner(bn=True), EMA(decay=0.9)
    again.add_cbs([ema_again])
    again.load(tmp_path / "done.pt")
    with ema_again.applied(again):
        assert again.validate() == expected
    for k, v in ema.model.state_dict().items():
        assert torch.equal(ema_again.model.state_dict()[k], v)


def test_applied_before_any_fit_is_refused():
    with pytest.raises(RuntimeError, match="no averaged weights yet"), EMA().applied(learner()):
        pass


# ----- the LR finder --------------------------------------------------------------------------------------------------
class CountedEMA(EMA):
    steps_seen = 0

    def after_step(self, learn):
        self.steps_seen += 1
        super().after_step(learn)


def test_lr_find_leaves_the_averages_and_snapshots_untouched():
    learn = learner(bn=True)
    swa, ema, ens = SWA(start=0.5, swap=False), CountedEMA(decay=0.9), SnapshotEnsemble()
    learn.add_cbs([swa, ema, ens])
    learn.fit_sgdr(2, 1, 0.05, cycle_mult=1)
    states = [copy.deepcopy(cb.state_dict()) for cb in (swa, ema, ens)]
    learn.lr_find(num_it=10)
    assert ema.steps_seen == 12  # the fit's steps only: it sat the sweep out
    for cb, state in zip((swa, ema, ens), states, strict=True):
        assert cb in learn.cbs
        assert repr(cb.state_dict()) == repr(state)  # tensors printed in full: equal values
        for (k, v), w in zip(cb.state_dict().items(), state.values(), strict=True):
            if isinstance(v, dict):
                assert all(torch.equal(v[n], w[n]) for n in v), k


# ----- SIGKILL mid-averaging, then resume -----------------------------------------------------------------------------
WORKER = Path(__file__).with_name("averaging_worker.py")


def run_worker(tmp: Path, name: str, *args: str) -> dict | None:
    out = tmp / f"{name}.pt"
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(out), "--snapshots", str(tmp / f"{name}-snaps"),
                           *args], capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, -9):
        raise AssertionError(f"worker {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return torch.load(out, weights_only=True) if proc.returncode == 0 else None


def test_sigkill_mid_averaging_then_resume_is_bitwise_equal_to_the_uninterrupted_run(tmp_path):
    full = run_worker(tmp_path, "full", "--ckpt", str(tmp_path / "full.ckpt"))
    ckpt = str(tmp_path / "ckpt.pt")
    # Killed after step 31: SWA has averaged after steps 24, 27 and 30, the ensemble holds the snapshots after
    # steps 6 and 18; the last checkpoint is after step 28 (every 4 steps).
    assert run_worker(tmp_path, "run", "--ckpt", ckpt, "--kill-at-step", "31") is None
    resumed = run_worker(tmp_path, "run", "--ckpt", ckpt, "--resume")
    assert full["taken"] == resumed["taken"] == [18, 42]
    assert full["files"] == resumed["files"] == ["snapshot-00000018.pt", "snapshot-00000042.pt"]
    assert full["swa_n"] == resumed["swa_n"] == 7 and full["ema_n"] == resumed["ema_n"] == 42
    for part in ("weights", "swa", "ema"):
        for k, v in full[part].items():
            assert torch.equal(resumed[part][k], v), (part, k)
    for a, b in zip(full["snapshots"], resumed["snapshots"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert repr(resumed["epoch_rows"]) == repr(full["epoch_rows"])  # repr: NaN columns compare equal


# ----- the reproduction, quick ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_averaging_reproduction_quick_writes_every_variant_and_the_claims(tmp_path):
    from experiments.averaging import TRAININGS, VARIANTS, main

    assert main(["--quick", "--seeds", "0", "--out", str(tmp_path), "--threads", "1"]) == 0
    table = (tmp_path / "averaging_table.md").read_text()
    for variant in VARIANTS:
        assert f"| {variant} |" in table
    assert "QUICK SMOKE RUN" in table and "beats its best single snapshot" in table
    assert (tmp_path / "averaging_accuracy.png").stat().st_size > 0
    assert (tmp_path / "averaging_schedules.png").stat().st_size > 0
    rows = (tmp_path / "averaging_runs.csv").read_text().splitlines()
    assert len(rows) == 1 + len(VARIANTS) and {r.split(",")[1] for r in rows[1:]} == set(TRAININGS)
    # a second call trains nothing again: every (training, seed) is in the CSV already
    assert main(["--quick", "--seeds", "0", "--out", str(tmp_path)]) == 0
    assert len((tmp_path / "averaging_runs.csv").read_text().splitlines()) == 1 + len(VARIANTS)


def test_expected_calibration_error_by_hand():
    from experiments.averaging import expected_calibration_error

    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    targets = torch.tensor([0, 1, 1, 1])
    # bins of width 1/15: 0.9 -> bin 13 (1 right), 0.8 -> bin 12 (wrong), 0.7 -> bin 10 (right), 0.55 -> bin 8 (right)
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.55)) / 4
    assert expected_calibration_error(probs, targets) == pytest.approx(expected)


def test_swa_scheds_run_the_head_then_the_averaging_tail():
    from cyclr import one_cycle, swa_cycles, swa_scheds

    head = one_cycle(0.1, final_div=10)
    scheds = swa_scheds(head, swa_cycles(0.02, 0.002, 2), start=0.5)
    learn = learner()
    swa = SWA(start=0.5, every="cycle", swap=False)
    learn.fit(4, cbs=[ParamScheduler(scheds), swa])  # 24 steps: head over 12, then two cycles of 6
    lrs, moms = learn.recorder.lrs, learn.recorder.moms
    assert lrs[:12] == pytest.approx([head.lr(i / 12) for i in range(12)])
    assert lrs[12:] == pytest.approx([0.02 - 0.018 * k / 6 for k in range(6)] * 2)
    assert moms[:12] == pytest.approx([head.mom(i / 12) for i in range(12)]) and moms[12:] == [0.95] * 12
    assert sorted(swa.points) == [18, 24]
    with pytest.raises(ValueError, match="start must be a fraction"):
        swa_scheds(head, Const(0.01), start=1.0)


# ----- data-parallel: the same averages on every process --------------------------------------------------------------
def test_under_torchrun_the_averages_batch_norm_and_snapshots_agree_on_every_process(tmp_path):
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", str(Path(__file__).with_name("averaging_ddp_worker.py")), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for part in ("swa", "ema"):
        for k, v in ranks[0][part].items():
            assert torch.equal(v, ranks[1][part][k]), (part, k)
    assert len(ranks[0]["snapshots"]) == 2
    for a, b in zip(ranks[0]["snapshots"], ranks[1]["snapshots"], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(ranks[0]["probs"]) + len(ranks[1]["probs"]) == 64  # each process predicts on its validation shard
    assert repr(ranks[0]["swa_row"]) == repr(ranks[1]["swa_row"])
    assert ranks[0]["swa"]["1.running_var"].ne(1).all()  # recomputed, not the reset values


def test_a_claim_holds_only_when_it_wins_in_every_seed():
    from experiments.averaging import averaging_claims

    def rows(swa, one_cycle):
        return [{"variant": v, "seed": str(s), "test_acc": str(a)} for v, accs in
                (("swa_constant", swa), ("one_cycle", one_cycle)) for s, a in enumerate(accs)]

    verdict = {claim: holds for claim, _, holds in averaging_claims(rows([0.9, 0.9, 0.9], [0.8, 0.8, 0.8]))}
    assert verdict["SWA beats conventional training of the same budget (Izmailov et al.)"] == "yes"
    assert verdict["the EMA of the weights beats the final weights of one-cycle"] == "n/a"
    verdict = {c: h for c, _, h in averaging_claims(rows([0.95, 0.85, 0.85], [0.9, 0.9, 0.8]))}
    assert verdict["SWA beats conventional training of the same budget (Izmailov et al.)"] == "unclear"
    verdict = {c: h for c, _, h in averaging_claims(rows([0.8, 0.8, 0.8], [0.9, 0.8, 0.8]))}
    assert verdict["SWA beats conventional training of the same budget (Izmailov et al.)"] == "no"
