"""Schedules: closed forms at every phase boundary, torch's schedulers as oracles, round trips, refused parameters."""

import io
import math
import pickle

import matplotlib
import pytest
import torch
from helpers import approx, node_id

from cyclr import (
    Const,
    Cos,
    Exp,
    Lin,
    Poly,
    Schedule,
    combine,
    cosine,
    exp_range,
    factor,
    flat_cos,
    multi_factor,
    one_cycle,
    schedule_from_state,
    sgdr,
    square_root,
    triangular,
    triangular2,
    warmup,
)
from cyclr.callbacks.schedules.base import Combine
from cyclr.callbacks.schedules.cycles import SGDR, Cyclical, OneCycle
from cyclr.callbacks.schedules.decay import CosineDecay

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _dummy_opt(lr=0.1, momentum=0.9):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=momentum)


# ----- building blocks ----------------------------------------------------------------------------------------------
def test_building_blocks_closed_forms():
    assert [Lin(2, 4)(p) for p in (0, 0.25, 1)] == [2, 2.5, 4]
    assert Cos(1, 3)(0) == 1 and Cos(1, 3)(0.5) == approx(2) and Cos(1, 3)(1) == approx(3)
    assert Cos(1, 3)(1 / 3) == approx(1 + 2 * (1 - math.cos(math.pi / 3)) / 2)
    assert Exp(1e-3, 1.0)(0) == approx(1e-3) and Exp(1e-3, 1.0)(0.5) == approx(1e-3**0.5)
    assert Exp(1e-3, 1.0)(1) == approx(1.0)
    assert Poly(1, 0, 2)(0.5) == 0.75 and Poly(1, 0, 2)(1) == 0
    assert Const(0.3)(0) == Const(0.3)(1) == Const(0.3)(1000) == 0.3


def test_combine_gives_each_phase_its_local_pct():
    s = combine([0.25, 0.75], [Lin(0, 1), Lin(10, 20)])
    assert s(0) == 0 and s(0.125) == approx(0.5)
    assert s(0.25) == 10  # a boundary belongs to the phase starting there
    assert s(0.25 + 0.75 / 2) == approx(15)
    assert s(1) == 20  # pct == 1 is the end of the last phase


def test_combine_boundaries_survive_float_rounding():
    # 0.1 + 0.2 == 0.30000000000000004: position 0.3 must still start the third phase.
    s = combine([0.1, 0.2, 0.7], [Const(1), Const(2), Const(3)])
    assert [s(p) for p in (0, 0.1, 0.29999, 0.3, 1)] == [1, 2, 2, 3, 3]


def test_combine_sum_checked_with_tolerance():
    combine([0.3, 0.7 + 5e-7], [Lin(0, 1), Lin(1, 0)])
    with pytest.raises(ValueError, match="pcts must sum to 1"):
        combine([0.3, 0.6], [Lin(0, 1), Lin(1, 0)])
    with pytest.raises(ValueError, match="same, non-zero length"):
        combine([1.0], [Lin(0, 1), Lin(1, 0)])
    with pytest.raises(TypeError, match=r"scheds\[0\] must be a schedule"):
        combine([1.0], [lambda p: p])


# ----- one-cycle ----------------------------------------------------------------------------------------------------
def test_one_cycle_closed_forms_at_phase_boundaries():
    lr, mom = one_cycle(0.08, div_factor=10, pct_start=0.1368, moms=(0.95, 0.85))
    assert lr(0) == approx(0.008) and mom(0) == approx(0.95)
    assert lr(0.1368) == approx(0.08) and mom(0.1368) == approx(0.85)
    assert lr(1) == approx(0.08 / 1e5) and mom(1) == approx(0.95)  # final_div defaults to div_factor * 1e4
    # Halfway through each phase the cosine is halfway between its ends.
    assert lr(0.1368 / 2) == approx((0.008 + 0.08) / 2)
    assert lr(0.1368 + 0.8632 / 2) == approx((0.08 + 8e-7) / 2)
    assert mom(0.1368 / 2) == approx(0.9)


def test_one_cycle_batch_i_of_n_sees_i_over_n():
    n = 100
    oc = one_cycle(1.0, div_factor=25, pct_start=0.3, final_div=1e3, moms=(0.95, 0.85, 0.9))
    values = [oc.lr(i / n) for i in range(n)]
    assert values[0] == approx(0.04)
    assert max(values) == values[30] == approx(1.0)  # batch 30 of 100 sits exactly at pct_start
    assert values[15] == approx((0.04 + 1.0) / 2)
    assert oc.mom(30 / n) == approx(0.85) and oc.mom(1) == approx(0.9)  # 3-tuple moms: (start, mid, end)
    assert oc.lr(1) == approx(1e-3)


def test_one_cycle_matches_torch_onecyclelr_on_torch_step_grid():
    """torch's OneCycleLR maps step i to phase positions i/(pct_start*N - 1) and (i - s1)/(N - 1 - s1): batch N-1
    reaches the final lr. On that grid the two policies are the same function."""
    n, max_lr, div, final_div, pct_start = 50, 0.4, 25.0, 1e4, 0.3
    oc = one_cycle(max_lr, div_factor=div, pct_start=pct_start, final_div=div * final_div, moms=(0.95, 0.85))
    opt = _dummy_opt()
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=n, pct_start=pct_start, div_factor=div, final_div_factor=final_div,
        base_momentum=0.85, max_momentum=0.95, three_phase=False, anneal_strategy="cos",
    )
    end1 = pct_start * n - 1
    for i in range(n):
        if i <= end1:
            pos = pct_start * i / end1
        else:
            pos = pct_start + (1 - pct_start) * (i - end1) / (n - 1 - end1)
        assert opt.param_groups[0]["lr"] == approx(oc.lr(pos), rel=1e-9), i
        assert opt.param_groups[0]["momentum"] == approx(oc.mom(pos), rel=1e-9), i
        opt.step()
        sched.step()


def test_one_cycle_known_off_by_one_against_torch():
    """Documented difference: we give batch i of N the position i/N (fastai v2), so the peak is at batch
    pct_start*N and the last batch stops one step short of the final lr; torch peaks one batch earlier and ends on
    the final lr."""
    n, max_lr = 10, 1.0
    oc = one_cycle(max_lr, pct_start=0.3)
    opt = _dummy_opt()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=n, pct_start=0.3)
    torch_lrs = []
    for _ in range(n):
        torch_lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [oc.lr(i / n) for i in range(n)]
    assert torch_lrs[0] == approx(ours[0])  # same start
    assert torch_lrs[2] == approx(max_lr) and ours[2] < max_lr and ours[3] == approx(max_lr)
    assert torch_lrs[-1] == approx(max_lr / 25 / 1e4) and ours[-1] > torch_lrs[-1]
    assert oc.lr(1) == approx(torch_lrs[-1])


def test_one_cycle_repr_and_unpacking():
    oc = one_cycle(0.08, div_factor=10, pct_start=0.1368, moms=(0.95, 0.85))
    assert repr(oc) == "OneCycle(max_lr=0.08, div_factor=10, pct_start=0.1368, final_div=100000.0, moms=(0.95, 0.85))"
    lr, mom = oc
    assert lr is oc.lr and mom is oc.mom and oc.scheds() == {"lr": lr, "mom": mom}
    assert one_cycle(0.1, moms=None).scheds().keys() == {"lr"}


# ----- SGDR ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_cycles, cycle_len, cycle_mult, eta_min, n_batches",
    [(3, 1, 2, 0.0, 5), (3, 2, 2, 1e-4, 3), (4, 1, 1, 0.0, 7), (2, 3, 3, 0.01, 4), (5, 1, 3, 0.0, 1)],
)
def test_sgdr_equals_torch_cosine_annealing_warm_restarts_per_batch(n_cycles, cycle_len, cycle_mult, eta_min,
                                                                     n_batches):
    max_lr = 0.1
    s = sgdr(max_lr, n_cycles, cycle_len, cycle_mult, eta_min)
    total_batches = s.total_epochs * n_batches
    opt = _dummy_opt(lr=max_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=cycle_len * n_batches, T_mult=cycle_mult, eta_min=eta_min)
    for i in range(total_batches):
        assert s(i / total_batches) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=0), i
        opt.step()
        sched.step()


def test_sgdr_total_epochs_and_restarts():
    s = sgdr(0.1, n_cycles=3, cycle_len=2, cycle_mult=2)
    assert s.total_epochs == 2 + 4 + 8
    # Restarts at epochs 2 and 6 of 14: back to max_lr exactly there, at eta_min at the very end.
    assert s(0) == s(2 / 14) == s(6 / 14) == approx(0.1)
    assert s(1 / 14) == approx(0.05) and s(4 / 14) == approx(0.05) and s(10 / 14) == approx(0.05)
    assert s(1) == approx(0.0)
    assert sgdr(0.1, 4, 1, cycle_mult=1).total_epochs == 4  # cycle_mult=1: equal cycles, no division by zero


# ----- cyclical -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.97)])
def test_cyclical_equals_torch_cycliclr_lr_and_momentum(mode, gamma):
    base_lr, max_lr, step_size = 1e-3, 6e-3, 4
    if mode == "exp_range":
        lr = exp_range(base_lr, max_lr, step_size, gamma)
    else:
        lr = {"triangular": triangular, "triangular2": triangular2}[mode](base_lr, max_lr, step_size)
    mom = lr.momentum(base_momentum=0.8, max_momentum=0.9)
    opt = _dummy_opt()
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=base_lr, max_lr=max_lr, step_size_up=step_size, mode=mode, gamma=gamma,
        cycle_momentum=True, base_momentum=0.8, max_momentum=0.9)
    for t in range(6 * step_size + 3):
        assert lr(t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), t
        assert mom(t) == pytest.approx(opt.param_groups[0]["momentum"], rel=1e-9), t
        opt.step()
        sched.step()


def test_triangular_closed_forms():
    lr = triangular2(1.0, 3.0, step_size=2)
    assert [lr(t) for t in range(9)] == [1, 2, 3, 2, 1, 1.5, 2, 1.5, 1]  # amplitude halves in the second cycle


# ----- the d2l trackers ---------------------------------------------------------------------------------------------
def test_multi_factor_equals_torch_multisteplr():
    for steps, gamma in (([5, 30], 0.5), ([1, 2, 3, 7], 0.1)):
        s = multi_factor(0.5, steps, gamma)
        opt = _dummy_opt(lr=0.5)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=gamma)
        for epoch in range(40):
            assert s(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
            opt.step()
            sched.step()


def test_square_root_and_factor_closed_forms():
    s = square_root(0.1)
    assert [s(t) for t in (0, 3, 99)] == [approx(0.1), approx(0.05), approx(0.01)]
    f = factor(2.0, 0.9, stop=1e-2)
    assert f(0) == 2.0 and f(3) == approx(2 * 0.9**3) and f(100) == 1e-2
    # d2l's FactorScheduler keeps the running product and multiplies before returning: call k returns f(k + 1).
    running = 2.0
    for t in range(60):
        running = max(1e-2, running * 0.9)
        assert f(t + 1) == approx(running, rel=1e-9)


def _d2l_cosine(t, base, final, max_update, warmup_steps=0, warmup_begin=0.0):
    """d2l's CosineScheduler (PyTorch edition) as written in the book, for pinned t > max_update."""
    if t < warmup_steps:
        return warmup_begin + (base - warmup_begin) * t / warmup_steps
    t = min(t, max_update)
    return final + (base - final) * (1 + math.cos(math.pi * (t - warmup_steps) / (max_update - warmup_steps))) / 2


def test_cosine_matches_d2l_and_is_pinned_after_max_update():
    s = cosine(0.5, 0.01, max_update=20)
    assert s(0) == 0.5 and s(10) == approx(0.255) and s(20) == approx(0.01) and s(35) == 0.01
    w = cosine(0.5, 0.01, max_update=20, warmup_steps=5, warmup_begin=0.0)
    assert w(0) == 0.0 and w(5) == approx(0.5) and w(20) == approx(0.01) and w(21) == 0.01
    for t in range(30):
        assert s(t) == approx(_d2l_cosine(t, 0.5, 0.01, 20))
        assert w(t) == approx(_d2l_cosine(t, 0.5, 0.01, 20, 5, 0.0))


def test_warmup_shifts_the_wrapped_schedule_like_djl():
    # The seed's example: warmup of 5 around a cosine over 15 updates equals d2l's cosine(20, warmup 5).
    composed = warmup(cosine(0.5, 0.01, max_update=15), steps=5)
    direct = cosine(0.5, 0.01, max_update=20, warmup_steps=5)
    assert [composed(t) for t in range(30)] == pytest.approx([direct(t) for t in range(30)], rel=1e-12)
    w = warmup(square_root(0.1), steps=4, begin=0.02)
    assert w(0) == 0.02 and w(2) == approx(0.06) and w(4) == approx(0.1) and w(7) == approx(0.05)


# ----- round trips, equality, repr ------------------------------------------------------------------------------
ALL_SCHEDULES = [
    Lin(0.1, 0.3), Cos(1.0, 0.0), Exp(1e-7, 10.0), Poly(1.0, 0.0, 2.0), Const(0.5),
    combine([0.3, 0.7], [Cos(0.004, 0.1), Cos(0.1, 4e-7)]),
    one_cycle(0.08, div_factor=10, pct_start=0.1368, moms=(0.95, 0.85)),
    one_cycle(0.1, moms=(0.95, 0.85, 0.9)), one_cycle(0.1, moms=None),
    sgdr(0.1, 3, 1, 2, 1e-4), sgdr(0.1, 2, 3, 1),
    triangular(1e-3, 6e-3, 2000), triangular2(1e-3, 6e-3, 10), exp_range(1e-3, 6e-3, 10, 0.999),
    triangular(1e-3, 6e-3, 10).momentum(0.85, 0.95),
    square_root(0.1), factor(2.0, 0.9, 1e-2), multi_factor(0.5, [5, 30], 0.5),
    cosine(0.5, 0.01, 20), cosine(0.5, 0.01, 20, 5, 0.001),
    warmup(multi_factor(0.5, [5, 30], 0.5), 3, 0.1), warmup(Const(0.2), 2),
]


def _values(s):
    if isinstance(s, OneCycle):
        return [s.lr(p) for p in (0, 0.2, 0.5, 1)] + ([s.mom(p) for p in (0, 0.2, 0.5, 1)] if s.mom else [])
    positions = (0, 0.2, 0.5, 1) if s.domain == "pct" else (0, 1, 4, 17, 60)
    return [s(p) for p in positions]


def _is_plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


@pytest.mark.parametrize("s", ALL_SCHEDULES, ids=lambda s: node_id(repr(s)))
def test_pickle_and_weights_only_round_trip(s):
    copy = pickle.loads(pickle.dumps(s))
    assert copy == s and repr(copy) == repr(s) and _values(copy) == _values(s)

    state = s.state_dict()
    assert _is_plain(state) and state["kind"] == type(s).__name__
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    rebuilt = schedule_from_state(torch.load(buffer, weights_only=True))
    assert type(rebuilt) is type(s) and rebuilt == s and _values(rebuilt) == _values(s)


def test_state_dict_nests_schedules_as_dicts():
    state = warmup(cosine(0.5, 0.01, 15), 5).state_dict()
    assert state == {"kind": "Warmup", "steps": 5, "begin": 0.0,
                     "sched": {"kind": "CosineDecay", "base": 0.5, "final": 0.01, "max_update": 15,
                               "warmup_steps": 0, "warmup_begin": 0.0}}


def test_schedule_from_state_only_knows_its_own_kinds():
    with pytest.raises(ValueError, match="unknown schedule kind 'os.system'"):
        schedule_from_state({"kind": "os.system", "start": 0})
    with pytest.raises(TypeError, match="'kind' key"):
        schedule_from_state({"start": 0})


def test_equality_by_configuration():
    assert Lin(0, 1) == Lin(0, 1) and Lin(0, 1) != Lin(0, 2) and Lin(0, 1) != Cos(0, 1)
    assert len({Lin(0, 1), Lin(0, 1), Cos(0, 1)}) == 2
    assert one_cycle(0.1) == OneCycle(0.1, 25.0, 0.3, 250000.0, (0.95, 0.85))
    assert repr(sgdr(0.1, 3, 1)) == "SGDR(max_lr=0.1, n_cycles=3, cycle_len=1, cycle_mult=2, eta_min=0.0)"


# ----- plots --------------------------------------------------------------------------------------------------------
def test_plot_samples_the_natural_domain():
    s = sgdr(0.1, 3, 1)
    fig = s.plot(n=14)
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [i / 14 for i in range(14)]
    assert list(line.get_ydata()) == [s(i / 14) for i in range(14)]

    d = multi_factor(0.5, [2, 4], 0.5)
    (line,) = d.plot(n=6).axes[0].get_lines()
    assert list(line.get_xdata()) == [0, 1, 2, 3, 4, 5]
    assert list(line.get_ydata()) == [0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


def test_one_cycle_plots_lr_and_momentum_side_by_side():
    oc = one_cycle(0.1, moms=(0.95, 0.85))
    fig = oc.plot(n=10)
    ax_lr, ax_mom = fig.axes
    assert list(ax_lr.get_lines()[0].get_ydata()) == [oc.lr(i / 10) for i in range(10)]
    assert list(ax_mom.get_lines()[0].get_ydata()) == [oc.mom(i / 10) for i in range(10)]
    fig2, axes = plt.subplots(1, 2)
    assert oc.plot(5, ax=axes) is fig2


# ----- refusing bad parameters ----------------------------------------------------------------------------------
BAD = [
    (lambda: one_cycle(0.1, pct_start=0), ValueError, r"pct_start must be in \(0, 1\)"),
    (lambda: one_cycle(0.1, pct_start=1.0), ValueError, r"pct_start must be in \(0, 1\)"),
    (lambda: one_cycle(0.1, div_factor=0), ValueError, "div_factor must be > 0"),
    (lambda: one_cycle(0.1, div_factor=-2), ValueError, "div_factor must be > 0"),
    (lambda: one_cycle(0), ValueError, "max_lr must be > 0"),
    (lambda: one_cycle(float("inf")), ValueError, "max_lr must be finite"),
    (lambda: one_cycle(float("nan")), ValueError, "max_lr must be finite"),
    (lambda: one_cycle("0.1"), TypeError, "max_lr must be a real number"),
    (lambda: one_cycle(0.1, final_div=0), ValueError, "final_div must be > 0"),
    (lambda: one_cycle(0.1, moms=(1.0, 0.85)), ValueError, r"moms\[0\] must be in \[0, 1\)"),
    (lambda: one_cycle(0.1, moms=(0.95, -0.1)), ValueError, r"moms\[1\] must be in \[0, 1\)"),
    (lambda: one_cycle(0.1, moms=(0.95,)), ValueError, "moms must be a 2-tuple"),
    (lambda: sgdr(0.1, 3, 1, cycle_mult=0), ValueError, "cycle_mult must be an int >= 1"),
    (lambda: sgdr(0.1, 3, 1, cycle_mult=1.5), TypeError, "cycle_mult must be an int >= 1"),
    (lambda: sgdr(0.1, 0, 1), ValueError, "n_cycles must be an int >= 1"),
    (lambda: sgdr(0.1, 3, 0), ValueError, "cycle_len must be an int >= 1"),
    (lambda: sgdr(-0.1, 3, 1), ValueError, "max_lr must be > 0"),
    (lambda: sgdr(0.1, 3, 1, eta_min=0.2), ValueError, "eta_min must be <= max_lr"),
    (lambda: triangular(1e-3, 6e-3, 0), ValueError, "step_size must be an int >= 1"),
    (lambda: triangular(1e-3, 0, 10), ValueError, "max_lr must be > 0"),
    (lambda: triangular(-1e-3, 6e-3, 10), ValueError, "base_lr must be >= 0"),
    (lambda: exp_range(1e-3, 6e-3, 10, gamma=0), ValueError, r"gamma must be in \(0, 1\]"),
    (lambda: triangular(1e-3, 6e-3, 10).momentum(base_momentum=1.2), ValueError, r"base_momentum must be in \[0, 1\)"),
    (lambda: Cyclical(0, 1, 10, mode="sine"), ValueError, "mode must be one of"),
    (lambda: multi_factor(0.5, [30, 5], 0.5), ValueError, "steps must be strictly increasing"),
    (lambda: multi_factor(0.5, [0, 5], 0.5), ValueError, r"steps\[0\] must be an int >= 1"),
    (lambda: factor(0.5, 1.5), ValueError, r"factor must be in \(0, 1\]"),
    (lambda: square_root(0), ValueError, "lr0 must be > 0"),
    (lambda: cosine(0.5, 0.01, 20, warmup_steps=20), ValueError, "warmup_steps must be < max_update"),
    (lambda: cosine(0.5, 0.01, 0), ValueError, "max_update must be an int >= 1"),
    (lambda: warmup(Lin(0, 1), 5), ValueError, "is a function of pct"),
    (lambda: warmup(square_root(0.1), 0), ValueError, "steps must be an int >= 1"),
    (lambda: Exp(0, 1), ValueError, "start must be > 0"),
    # issue 24.11: bounds the wrong way round, and one rule for every decay factor
    (lambda: triangular(0.1, 0.01, 10), ValueError, r"base_lr must be <= max_lr .* got base_lr=0.1 > max_lr=0.01"),
    (lambda: exp_range(0.1, 0.01, 10, 0.9), ValueError, "base_lr must be <= max_lr"),
    (lambda: cosine(0.1, 0.2, 10), ValueError, r"final must be <= base .*use Cos\(0.1, 0.2\)"),
    (lambda: multi_factor(0.1, [5], 2), ValueError, r"factor must be in \(0, 1\] \(the decay at each of steps\)"),
    # issue 24.13: rates torch cannot hold, and divisors that would put the cycle's ends above its peak
    (lambda: one_cycle(1e300), ValueError, r"max_lr must be at most 3.4e\+38 \(float32's largest"),
    (lambda: one_cycle(0.1, div_factor=1e-300), ValueError, r"div_factor must be >= 1 \(the start rate"),
    (lambda: one_cycle(0.1, final_div=0.5), ValueError, r"final_div must be >= 1 \(the final rate"),
    (lambda: sgdr(1e300, 3, 1), ValueError, "max_lr must be at most 3.4e"),
    (lambda: flat_cos(1e300), ValueError, "lr must be at most 3.4e"),
    (lambda: flat_cos(0.1, div_final=0.1), ValueError, "div_final must be >= 1"),
    (lambda: triangular(0, 1e300, 10), ValueError, "max_lr must be at most 3.4e"),
    (lambda: factor(1e300, 0.5), ValueError, "base must be at most 3.4e"),
    (lambda: square_root(1e300), ValueError, "lr0 must be at most 3.4e"),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=[node_id(m) for _, _, m in BAD])
def test_bad_parameters_are_refused_with_the_parameter_named(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_positions_outside_the_domain_are_refused():
    with pytest.raises(ValueError, match=r"fraction of training, in \[0, 1\]"):
        Lin(0, 1)(1.5)
    with pytest.raises(ValueError, match="update count t >= 0"):
        square_root(0.1)(-1)


def test_every_schedule_is_a_schedule_or_one_cycle():
    for s in ALL_SCHEDULES:
        assert isinstance(s, (Schedule, OneCycle))
    assert isinstance(one_cycle(0.1).lr, Combine) and isinstance(sgdr(0.1, 1, 1), SGDR)
    assert isinstance(cosine(0.1, 0, 3), CosineDecay)
