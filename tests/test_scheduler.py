"""ParamScheduler and the one-cycle / SGDR / cyclical callbacks in real (tiny) fits: what the optimizer used at each
batch, read in before_step, against the schedules' closed forms and torch's schedulers."""

import io
import logging
import warnings

import pytest
import torch
from helpers import UsedHypers, approx, torch_rates
from torch import nn

from cyclr import (
    Const,
    CyclicLRCallback,
    Learner,
    Lin,
    OneCycleCallback,
    ParamScheduler,
    SGDRCallback,
    multi_factor,
    one_cycle,
    sgd,
    sgdr,
    square_root,
    synthetic_classification,
    triangular,
)
from cyclr.callbacks.group_rates import lrs_per_group

N_FEATURES, N_CLASSES = 4, 3


def make_learner(n_train=64, bs=16, n_valid=16, model=None, **kwargs):
    """n_train/bs training batches per epoch (4 by default) on Gaussian blobs, a linear model."""
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=n_train, n_valid=n_valid, n_features=N_FEATURES, n_classes=N_CLASSES,
                                   bs=bs, seed=0)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("lr", 0.01)
    model = model if model is not None else nn.Linear(N_FEATURES, N_CLASSES)
    kwargs.setdefault("opt_func", sgd)  # the SGD these trajectories were derived for
    return Learner(model, dls, nn.CrossEntropyLoss(), device="cpu", **kwargs)


def two_layer_splitter(model):
    return [list(model[0].parameters()), list(model[2].parameters())]


def three_layer_splitter(model):
    return [list(model[0].parameters()), list(model[2].parameters()), list(model[4].parameters())]


# ----- ParamScheduler in a fit --------------------------------------------------------------------------------------
def test_used_lr_and_mom_equal_the_schedule_at_i_over_n():
    learn, used = make_learner(), UsedHypers()
    oc = one_cycle(0.1, div_factor=25, pct_start=0.25, moms=(0.95, 0.85))
    learn.fit(3, cbs=[ParamScheduler(oc.scheds()), used])
    n = 3 * 4
    assert [r["train_iter"] for r in used.rows] == list(range(n))
    assert used.column("lr") == [approx(oc.lr(i / n)) for i in range(n)]
    assert used.column("mom") == [approx(oc.mom(i / n)) for i in range(n)]
    # Closed forms: batch 0 at max_lr/div_factor, batch 3 of 12 (pct 0.25) at max_lr and the lowest momentum.
    assert used.column("lr")[0] == approx(0.004) and used.column("lr")[3] == approx(0.1)
    assert used.column("mom")[3] == approx(0.85)


def test_plain_functions_and_any_param_group_key_can_be_scheduled():
    learn, used = make_learner(), UsedHypers()

    def wd_ramp(pct):
        return 1e-2 * pct

    learn.fit(2, cbs=[ParamScheduler({"lr": Const(0.05), "weight_decay": wd_ramp}), used])
    assert used.column("lr") == [0.05] * 8
    assert used.column("wd") == [approx(1e-2 * i / 8) for i in range(8)]


def test_preview_plot_equals_what_the_recorder_records():
    learn = make_learner()
    learn.fit_one_cycle(3, max_lr=0.1, pct_start=0.25)
    n = 3 * 4
    preview = OneCycleCallback(0.1, pct_start=0.25).plot(n=n)
    ax_lr, ax_mom = preview.axes
    assert list(ax_lr.get_lines()[0].get_ydata()) == learn.recorder.lrs
    assert list(ax_mom.get_lines()[0].get_ydata()) == learn.recorder.moms
    # The Recorder's own plot shows the same curve.
    recorded = learn.recorder.plot_sched()
    assert list(recorded.axes[0].get_lines()[0].get_ydata()) == list(ax_lr.get_lines()[0].get_ydata())


def test_epoch_unit_is_constant_within_an_epoch():
    learn, used = make_learner(), UsedHypers()
    learn.fit(3, cbs=[ParamScheduler({"lr": multi_factor(0.1, [1, 2], 0.5)}, unit="epoch"), used])
    assert used.column("lr") == [0.1] * 4 + [0.05] * 4 + [0.025] * 4
    assert [r["epoch"] for r in used.rows] == [0] * 4 + [1] * 4 + [2] * 4


def test_batch_unit_counts_batches_across_epochs():
    learn, used = make_learner(), UsedHypers()
    learn.fit(2, cbs=[ParamScheduler({"lr": square_root(0.1)}, unit="batch"), used])
    assert used.column("lr") == [approx(0.1 * (i + 1) ** -0.5) for i in range(8)]


def test_validation_batches_do_not_move_the_schedule():
    learn = make_learner()
    learn.fit(2, cbs=[ParamScheduler({"lr": Lin(0.1, 0.2)})])
    # After the fit, the lr is the one of the last training batch (7 of 8), not advanced by validation.
    assert learn.opt.param_groups[0]["lr"] == approx(0.1 + 0.1 * 7 / 8)


# ----- the blog's three calls, verbatim, on a tiny data set (one batch per epoch) ------------------------------------
def blog_learner():
    return make_learner(n_train=16, bs=16, n_valid=16)


def test_blog_experiment_1_runs_verbatim():
    learn, used = blog_learner(), UsedHypers()
    learn.add_cbs([used])
    cyc_len = 95
    learn.fit_one_cycle(cyc_len=cyc_len, max_lr=0.08, div_factor=10, pct_start=0.1368, moms=(0.95, 0.85), wd=1e-4)
    lrs = used.column("lr")
    oc = one_cycle(0.08, div_factor=10, pct_start=0.1368, moms=(0.95, 0.85))
    assert len(lrs) == 95 and lrs == [approx(oc.lr(i / 95)) for i in range(95)]
    # The lr rises from 0.008 to 0.08 (the blog's text says "0.08 to 0.8", which the call does not do), then falls.
    assert lrs[0] == approx(0.008) and max(lrs) <= 0.08 and max(lrs) == approx(0.08, rel=1e-3)
    assert lrs[-1] < 1e-4  # "finally drops to a very low learning rate": 3e-5 at batch 94 of 95
    assert used.column("wd") == [1e-4] * 95
    assert len(learn.recorder.to_df("epochs")) == 95


def test_blog_experiment_2_runs_verbatim():
    learn, used = blog_learner(), UsedHypers()
    learn.add_cbs([used])
    learn.fit_one_cycle(cyc_len=50, max_lr=0.8, div_factor=10, pct_start=0.5, moms=(0.95, 0.85), wd=1e-4)
    lrs, moms = used.column("lr"), used.column("mom")
    assert len(lrs) == 50 and lrs[0] == approx(0.08)
    assert lrs[25] == approx(0.8) and max(lrs) == lrs[25] and moms[25] == approx(0.85)


def test_blog_experiment_3_runs_verbatim():
    learn, used = blog_learner(), UsedHypers()
    learn.add_cbs([used])
    cyc_len = 95
    learn.fit_one_cycle(cyc_len=cyc_len, max_lr=0.08, div_factor=10, pct_start=0.1368, moms=(0.9, 0.9), wd=1e-4)
    assert used.column("mom") == [approx(0.9)] * 95
    assert used.column("lr")[0] == approx(0.008)


# ----- SGDR and cyclical in a fit, against torch ---------------------------------------------------------------------
def test_fit_sgdr_equals_torch_warm_restarts_batch_by_batch(caplog):
    caplog.set_level(logging.INFO, logger="cyclr")
    learn, used = make_learner(), UsedHypers()
    learn.add_cbs([used])
    learn.fit_sgdr(n_cycles=3, cycle_len=1, max_lr=0.1, cycle_mult=2, eta_min=1e-4)
    assert "= 7 epochs" in caplog.text
    n_batches = 4
    expected, _ = torch_rates(lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=1 * n_batches, T_mult=2, eta_min=1e-4), 7 * n_batches, lr=0.1)
    assert used.column("lr") == [pytest.approx(e, rel=1e-9) for e in expected]


def test_sgdr_callback_warns_when_the_fit_length_differs():
    learn = make_learner()
    with pytest.warns(UserWarning, match="SGDR cycles assume 7 epochs but this fit has 2"):
        learn.fit(2, cbs=[SGDRCallback(0.1, n_cycles=3, cycle_len=1)])


@pytest.mark.parametrize("mode, gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.95)])
def test_cyclic_callback_equals_torch_cycliclr_in_a_fit(mode, gamma):
    learn, used = make_learner(), UsedHypers()
    learn.fit(4, cbs=[CyclicLRCallback(1e-3, 6e-3, step_size=3, mode=mode, gamma=gamma), used])
    lrs, moms = torch_rates(lambda opt: torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=1e-3, max_lr=6e-3, step_size_up=3, mode=mode, gamma=gamma, cycle_momentum=True,
        base_momentum=0.8, max_momentum=0.9), 16, lr=0.1)
    assert used.column("lr") == [pytest.approx(v, rel=1e-9) for v in lrs]
    assert used.column("mom") == [pytest.approx(v, rel=1e-9) for v in moms]


# ----- per-group (discriminative) learning rates ---------------------------------------------------------------------
def test_slice_spreads_max_lr_geometrically_over_groups():
    assert lrs_per_group(slice(1e-3, 1e-1), 3) == [approx(1e-3), approx(1e-2), approx(1e-1)]
    assert lrs_per_group(slice(1e-2), 3) == [approx(1e-3), approx(1e-3), 1e-2]
    assert lrs_per_group(0.1, 2) == [0.1, 0.1] and lrs_per_group(slice(1e-3, 1e-1), 1) == [1e-1]


def test_fit_one_cycle_with_a_slice_gives_each_group_its_own_cycle():
    model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, N_CLASSES))
    learn, used = make_learner(model=model, splitter=three_layer_splitter), UsedHypers()
    learn.add_cbs([used])
    learn.fit_one_cycle(2, max_lr=slice(1e-3, 1e-1), pct_start=0.25)
    n = 8
    for group, peak in enumerate((1e-3, 1e-2, 1e-1)):
        oc = one_cycle(peak, pct_start=0.25)
        assert used.column("lr", group) == [approx(oc.lr(i / n)) for i in range(n)]
        assert used.column("mom", group) == [approx(oc.mom(i / n)) for i in range(n)]
    assert learn.recorder.group_values("lr")[0][2] == approx(1e-3)  # the Recorder sees every group


def test_list_of_schedules_one_per_group():
    model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU(), nn.Linear(8, N_CLASSES))
    learn, used = make_learner(model=model, splitter=two_layer_splitter), UsedHypers()
    learn.fit(1, cbs=[ParamScheduler({"lr": [Const(0.01), Lin(0.1, 0.2)]}), used])
    assert used.column("lr", 0) == [0.01] * 4
    assert used.column("lr", 1) == [approx(0.1 + 0.1 * i / 4) for i in range(4)]


def test_wrong_number_of_group_schedules_is_refused_before_training():
    model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU(), nn.Linear(8, N_CLASSES))
    learn = make_learner(model=model, splitter=two_layer_splitter)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="3 schedules for 'lr' but the optimizer has 2 parameter groups"):
        learn.fit(1, cbs=[ParamScheduler({"lr": [Const(0.1)] * 3})])
    with pytest.raises(ValueError, match="max_lr has 3 values for 2 parameter groups"):
        learn.fit_one_cycle(1, max_lr=[1e-3, 1e-2, 1e-1])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ----- optimizers without momentum, Adam's betas -----------------------------------------------------------------
def test_optimizer_without_momentum_warns_once_and_trains():
    learn, used = make_learner(opt_func=torch.optim.Adagrad), UsedHypers()
    learn.add_cbs([used])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit_one_cycle(2, max_lr=0.1)
    messages = [str(w.message) for w in caught if "momentum" in str(w.message)]
    assert messages == ["Adagrad has no momentum or betas: the 'mom' schedule is ignored in this fit"]
    oc = one_cycle(0.1)
    assert used.column("lr") == [approx(oc.lr(i / 8)) for i in range(8)]
    assert learn.recorder.to_df("epochs")["train_loss"].notna().all()


def test_mom_sets_adam_beta1():
    learn, used = make_learner(opt_func=torch.optim.Adam), UsedHypers()
    learn.add_cbs([used])
    learn.fit_one_cycle(1, max_lr=0.01, moms=(0.95, 0.85))
    oc = one_cycle(0.01)
    assert used.column("mom") == [approx(oc.mom(i / 4)) for i in range(4)]
    assert learn.opt.param_groups[0]["betas"][1] == 0.999


# ----- refusing bad schedules before training --------------------------------------------------------------------
def test_non_finite_schedule_is_refused_before_any_step():
    learn = make_learner()
    before = learn.model.weight.clone()

    def blows_up(pct):
        return float("inf") if pct >= 0.5 else 0.1

    with pytest.raises(ValueError, match=r"schedule for 'lr' \(.*blows_up\) returned inf at position 0.5"):
        learn.fit(2, cbs=[ParamScheduler({"lr": blows_up})])
    assert torch.equal(before, learn.model.weight) and learn.recorder.batch_rows == []


def optimizer_hypers(learn):
    return [(g["lr"], g["weight_decay"], g.get("momentum"), g.get("betas")) for g in learn.opt.param_groups]


@pytest.mark.parametrize("name, sched, unit", [
    ("lr", Lin(0.1, -0.01), "pct"),  # 0.1 - 0.11 * pct < 0 from pct 0.909: step 37 of 40
    ("wd", lambda pct: 1e-2 if pct < 0.9 else -1e-3, "pct"),  # a user's function: no known extremes
    ("mom", lambda t: 0.9 if t < 36 else 1.0, "batch"),
])
def test_a_schedule_leaving_its_range_late_in_the_fit_is_refused_before_any_weight_changes(name, sched, unit):
    learn = make_learner(n_train=160, bs=16)  # 10 batches an epoch, 4 epochs: 40 steps
    learn.fit(1)  # momentum buffers and rates a fit left behind
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt_state, hypers, n_rows = learn.opt.state_dict(), optimizer_hypers(learn), len(learn.recorder.batch_rows)
    with pytest.raises(ValueError, match=rf"schedule for '{name}' .* at position \S+ \(step 3\d of 40 in this fit\)"):
        learn.fit(4, lr=0.05, wd=1e-3, cbs=[ParamScheduler({name: sched}, unit=unit)])  # lr, wd given: put back
    for key, value in learn.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert optimizer_hypers(learn) == hypers  # bitwise: the fit's lr and wd were put back
    after = learn.opt.state_dict()["state"]
    assert all(torch.equal(after[i]["momentum_buffer"], b["momentum_buffer"]) for i, b in opt_state["state"].items())
    assert len(learn.recorder.batch_rows) == n_rows
    assert not any(isinstance(cb, ParamScheduler) for cb in learn.cbs)  # the fit's callbacks are gone


def test_every_position_the_loop_feeds_is_checked_and_no_other():
    seen = []

    def spy(pct):
        seen.append(pct)
        return 0.01

    learn = make_learner()
    learn.fit(2, cbs=[ParamScheduler({"lr": spy})])
    n = 8
    assert seen[:n] == [i / n for i in range(n)]  # before_fit: the whole fit, at exactly the pcts the loop feeds
    assert seen[n:] == [i / n for i in range(n)]  # then once per batch, the same positions
    epochs = []
    learn.fit(3, cbs=[ParamScheduler({"lr": lambda e: epochs.append(e) or 0.01}, unit="epoch")])
    assert epochs[:3] == [0, 1, 2]


def test_schedule_values_are_written_as_floats_into_every_group():
    learn = make_learner(model=nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU(), nn.Linear(8, N_CLASSES)),
                         splitter=two_layer_splitter, opt_func=torch.optim.AdamW)
    import numpy as np

    learn.fit(1, cbs=[ParamScheduler({"lr": lambda pct: np.float32(0.25), "mom": [Const(0.8), Const(0.7)]})])
    assert [type(g["lr"]) for g in learn.opt.param_groups] == [float, float]
    assert [g["lr"] for g in learn.opt.param_groups] == [float(np.float32(0.25))] * 2
    assert [g["betas"] for g in learn.opt.param_groups] == [(0.8, 0.999), (0.7, 0.999)]


def test_schedule_returning_a_non_number_is_refused():
    learn = make_learner()
    expected = r"must return a float, got Tensor .* at position 0.0 \(step 0 of 4 in this fit\); checked before any"
    with pytest.raises(TypeError, match=expected):
        learn.fit(1, cbs=[ParamScheduler({"lr": lambda pct: torch.tensor(0.1)})])


def test_construction_errors_name_what_to_change():
    with pytest.raises(ValueError, match="unit must be one of"):
        ParamScheduler({"lr": Const(0.1)}, unit="iteration")
    with pytest.raises(ValueError, match="use unit='batch' or unit='epoch'"):
        ParamScheduler({"lr": square_root(0.1)})
    with pytest.raises(ValueError, match="use unit='pct'"):
        ParamScheduler({"lr": sgdr(0.1, 2, 1)}, unit="epoch")
    with pytest.raises(TypeError, match="pass ParamScheduler\\(one_cycle\\(...\\).scheds\\(\\)\\)"):
        ParamScheduler({"lr": one_cycle(0.1)})
    with pytest.raises(TypeError, match="must be callable"):
        ParamScheduler({"lr": 0.1})
    with pytest.raises(ValueError, match=r"pct_start must be in \(0, 1\)"):
        make_learner().fit_one_cycle(1, max_lr=0.1, pct_start=1.3)
    with pytest.raises(ValueError, match="step_size must be an int >= 1"):
        CyclicLRCallback(1e-3, 6e-3, step_size=0)
    with pytest.raises(ValueError, match="max_lr slice start must be > 0"):
        OneCycleCallback(slice(0, 1e-2))


def test_unknown_hyperparameter_is_refused_before_training():
    learn = make_learner()
    with pytest.raises(ValueError, match="cannot schedule 'dampening_x': SGD has no 'dampening_x'"):
        learn.fit(1, cbs=[ParamScheduler({"dampening_x": Const(0.1)})])


# ----- checkpoints -------------------------------------------------------------------------------------------------
def _weights_only_round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trips_schedule_objects():
    cb = ParamScheduler({"lr": [Const(0.01), one_cycle(0.1).lr], "mom": one_cycle(0.1).mom}, unit="pct")
    fresh = ParamScheduler({"lr": Const(1.0)})
    fresh.load_state_dict(_weights_only_round_trip(cb.state_dict()))
    assert fresh.unit == "pct" and fresh.scheds == cb.scheds


def test_state_dict_of_a_plain_callable_needs_the_same_callable_to_resume():
    def my_lr(pct):
        return 0.1 * (1 - pct)

    cb = ParamScheduler({"lr": my_lr})
    state = _weights_only_round_trip(cb.state_dict())
    assert state["scheds"]["lr"]["kind"] == "callable" and "my_lr" in state["scheds"]["lr"]["repr"]
    with pytest.raises(ValueError, match="create the ParamScheduler with that same callable"):
        ParamScheduler({"lr": Const(0.1)}).load_state_dict(state)
    same = ParamScheduler({"lr": my_lr})
    same.load_state_dict(state)
    assert same.scheds["lr"] is my_lr


def test_schedule_triangular_preview_equals_used_values_with_batch_unit():
    learn, used = make_learner(), UsedHypers()
    sched = triangular(1e-3, 6e-3, step_size=5)
    learn.fit(3, cbs=[ParamScheduler({"lr": sched}, unit="batch"), used])
    (line,) = sched.plot(n=12).axes[0].get_lines()
    assert list(line.get_ydata()) == used.column("lr")


def test_a_resumed_fit_checks_its_schedule_from_the_checkpoint_on(tmp_path):
    from cyclr import SaveModelCallback

    path = tmp_path / "ckpt_{epoch}.pt"
    learn = make_learner()  # 4 steps an epoch
    learn.fit(2, cbs=[ParamScheduler({"lr": Const(0.01)}), SaveModelCallback(str(path), every_epoch=True)])
    after_first_epoch = tmp_path / "ckpt_0.pt"

    def negative_early(pct):  # out of range in the first epoch only, which the resumed fit does not run again
        return -1.0 if pct < 0.5 else 0.01

    def negative_late(pct):
        return 0.01 if pct < 0.75 else -1.0

    resumed = make_learner()
    weights = [p.detach().clone() for p in resumed.model.parameters()]
    with pytest.raises(ValueError, match=r"'lr' .*negative_late.* returned -1.0 at position 0.75 \(step 6 of 8"):
        resumed.fit(2, cbs=[ParamScheduler({"lr": negative_late})], resume=after_first_epoch, allow_config_change=True)
    resumed = make_learner()
    resumed.fit(2, cbs=[ParamScheduler({"lr": negative_early})], resume=after_first_epoch, allow_config_change=True)
    assert resumed.recorder.to_df("batches")["lr"].tolist()[-4:] == [0.01] * 4
    assert not all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), weights, strict=True))
