"""SWA composed with the recipes (callbacks/schedule_tail.py): `SWA(start, lr=...)` supplies the averaging rate as the
tail of the fit's one lr schedule. The rates step by step against the plain recipe's (head) and the closed form
(tail), the mean at the averaging points, refusals before any step (two tails, no scheduler of the rate, a tail out
of range, a tail inside an epoch of an epoch-unit scheduler), and a resume mid-tail equal to the uninterrupted fit."""

import pytest
import torch
from helpers import WeightsAfterEachStep, state_copy
from test_averaging import learner, mean_of
from test_checkpoint import Interrupt  # KeyboardInterrupt right after a given step

from cyclr import SWA, HeadTail, Lin, ParamScheduler, SaveModelCallback, sgdr, swa_cycles

N_STEPS = 48  # 8 epochs of 6 steps


def plain_one_cycle():
    ref = learner(dtype=torch.float64)
    ref.fit_one_cycle(8, 0.1)
    return ref.recorder


def assert_mean_at(swa, probe, points):
    assert sorted(swa.points or points) == points and swa.n == len(points)
    for name, value in swa.model.named_parameters():
        torch.testing.assert_close(value.detach(), mean_of([probe.steps[p - 1] for p in points], name), rtol=0,
                                   atol=1e-12)


def test_a_constant_tail_truncates_the_one_cycle_and_swa_averages_under_it():
    plain = plain_one_cycle()
    learn = learner(dtype=torch.float64)
    probe, swa = WeightsAfterEachStep(), SWA(start=0.75, lr=0.01, every=2, swap=False)
    learn.fit_one_cycle(8, 0.1, cbs=[swa, probe])
    lrs = learn.recorder.lrs
    assert lrs[:36] == plain.lrs[:36]  # the head: exactly the plain one-cycle's rates, not squeezed
    assert lrs[36:] == [0.01] * 12  # from step 36 (0.75 of 48) on: the averaging rate
    assert learn.recorder.moms == plain.moms  # momentum keeps its own schedule
    assert_mean_at(swa, probe, [38, 40, 42, 44, 46, 48])
    assert swa.fit_config()["lr"] == "Const(value=0.01)"


def test_a_cyclical_tail_and_averaging_at_its_minima():
    plain = plain_one_cycle()
    learn = learner(dtype=torch.float64)
    probe = WeightsAfterEachStep()
    swa = SWA(start=0.5, lr=swa_cycles(0.05, 0.005, 4), every="cycle", swap=False)
    learn.fit_one_cycle(8, 0.1, cbs=[swa, probe])
    lrs = learn.recorder.lrs
    assert lrs[:24] == plain.lrs[:24]
    # 4 cycles of 6 steps, each linear from 0.05 down towards 0.005: step k of a cycle at 0.05 - 0.045 * k / 6
    assert lrs[24:] == pytest.approx([0.05 - 0.045 * k / 6 for k in range(6)] * 4, rel=1e-12)
    assert_mean_at(swa, probe, [30, 36, 42, 48])  # each cycle's lowest rate, read from the one schedule


def test_the_tail_of_an_sgdr_recipe_and_of_a_batch_unit_scheduler():
    learn = learner()
    learn.fit_sgdr(2, 2, 0.1, cycle_mult=1, cbs=[SWA(start=2, lr=0.02)])  # 4 epochs: the tail is the second cycle
    head = sgdr(0.1, 2, 2, 1)
    assert learn.recorder.lrs[:12] == [head.value(i / 24) for i in range(12)] and learn.recorder.lrs[12:] == [0.02] * 12
    learn = learner()
    learn.fit(4, cbs=[ParamScheduler({"lr": lambda t: 0.1 / (1 + t)}, unit="batch"), SWA(start=0.5, lr=0.02)])
    assert learn.recorder.lrs == [0.1 / (1 + t) for t in range(12)] + [0.02] * 12


def test_discriminative_rates_each_run_their_own_head_then_the_one_tail():
    def two_groups(model):
        return [list(model[0].parameters()), list(model[2].parameters())]

    plain = learner(splitter=two_groups)
    plain.fit_one_cycle(4, slice(0.01, 0.1))
    learn = learner(splitter=two_groups)
    learn.fit_one_cycle(4, slice(0.01, 0.1), cbs=[SWA(start=0.5, lr=0.02)])
    heads, both = plain.recorder.group_values("lr"), learn.recorder.group_values("lr")
    assert len(both) == 2 and heads[0][0] < heads[1][0]  # two groups at their own rates
    for head, lrs in zip(heads, both, strict=True):
        assert lrs[:12] == head[:12] and lrs[12:] == [0.02] * 12


def test_an_epoch_unit_scheduler_takes_a_tail_from_an_epoch_boundary_only():
    learn = learner()
    learn.fit(8, cbs=[ParamScheduler({"lr": lambda e: 0.1 / (1 + e)}, unit="epoch"), SWA(start=6, lr=0.01)])
    assert learn.recorder.lrs == [0.1 / (1 + e) for e in range(6) for _ in range(6)] + [0.01] * 12
    learn = learner()
    with pytest.raises(ValueError, match=r"starts inside epoch 5.*unit='epoch'"):
        learn.fit(8, cbs=[ParamScheduler({"lr": lambda e: 0.1}, unit="epoch"), SWA(start=0.7, lr=0.01)])


@pytest.mark.parametrize(("cbs", "error", "match"), [
    (lambda: [SWA(start=0.5, lr=0.01), SWA(start=0.75, lr=0.02)], ValueError,
     r"SWA and SWA both supply the tail of the 'lr' schedule"),
    (lambda: [SWA(start=0.5, lr=Lin(0.01, -0.01))], ValueError,
     r"the schedule for 'lr' \(HeadTail\(.*\)\) returned -.* at position .*checked before any step"),
])
def test_two_tails_or_a_tail_out_of_range_are_refused_before_any_step(cbs, error, match):
    learn = learner()
    before = state_copy(learn.model)
    with pytest.raises(error, match=match):
        learn.fit_one_cycle(4, 0.1, cbs=cbs())
    assert learn.train_iter == 0 and all(torch.equal(v, before[k]) for k, v in state_copy(learn.model).items())


def test_a_tail_without_a_scheduler_of_the_rate_and_bad_rates_are_refused():
    learn = learner()
    with pytest.raises(ValueError, match=r"no ParamScheduler schedules the rate in this fit: use a recipe"):
        learn.fit(4, cbs=[SWA(lr=0.01)])
    assert learn.train_iter == 0
    with pytest.raises(ValueError, match="lr"):
        SWA(lr=-0.01)
    with pytest.raises(ValueError, match="counts steps"):
        from cyclr import triangular

        SWA(lr=triangular(0.01, 0.1, 4))
    with pytest.raises(TypeError, match="lr must be a schedule"):
        SWA(lr="0.01")
    tail = HeadTail(Lin(1.0, 0.0), Lin(0.5, 0.1), at=0.5, end=1.0)
    assert [tail(p) for p in (0.0, 0.25, 0.5, 0.75)] == [1.0, 0.75, 0.5, pytest.approx(0.3)]


def test_a_resume_mid_tail_goes_on_exactly(tmp_path):
    whole, swa = learner(), SWA(start=0.5, lr=0.02, every=2, swap=False)
    whole.fit_one_cycle(4, 0.1, cbs=[swa])
    path = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        learner().fit_one_cycle(4, 0.1, cbs=[SWA(start=0.5, lr=0.02, every=2, swap=False),
                                              SaveModelCallback(path, every_epoch=True, every_n_batches=1),
                                              Interrupt(16)])
    resumed, again = learner(), SWA(start=0.5, lr=0.02, every=2, swap=False)
    resumed.fit_one_cycle(4, 0.1, cbs=[again], resume=path)
    assert resumed.recorder.lrs == whole.recorder.lrs and resumed.recorder.lrs[12:] == [0.02] * 12
    assert again.n == swa.n == 6
    assert all(torch.equal(v, state_copy(swa.model)[k]) for k, v in state_copy(again.model).items())
    assert all(torch.equal(v, state_copy(whole.model)[k]) for k, v in state_copy(resumed.model).items())
