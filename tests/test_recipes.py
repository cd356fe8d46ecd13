"""The recipes users reach for: freeze / unfreeze / fine_tune (fastai's formulas), fit_flat_cos, torch's one-cycle
(anneal_strategy, three_phase) and cyclic (step_size_down, per-group momentum) options against torch's schedulers,
lr_find on a frozen model and over momentums, plots that compose on one figure, and runs compared side by side."""

import functools
import logging
import math

import matplotlib
import pytest
import torch
from helpers import UsedHypers, approx
from torch import nn

from cyclr import (
    Callback,
    CyclicLRCallback,
    DataLoaders,
    Exp,
    Learner,
    LRFinderResult,
    OneCycleCallback,
    compare_runs,
    one_cycle,
    stack_runs,
    synthetic_classification,
    tiny_images,
)
from cyclr.callbacks.lr_result import focus_y
from cyclr.callbacks.lr_suggest import centred_smooth, suggest
from cyclr.learner.transfer import body_head_split

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

N_FEATURES, N_CLASSES = 4, 3
SGD = functools.partial(torch.optim.SGD, momentum=0.9)


def mlp(bn=True):
    """Body (linear, batch norm) and head (linear): three top-level children, so the default split is 2 + 1."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8) if bn else nn.Identity(), nn.Linear(8, N_CLASSES))


def make_learner(model=None, n_train=64, bs=16, **kwargs):
    """n_train / bs training batches per epoch (4 by default) on Gaussian blobs."""
    dls = synthetic_classification(n_train=n_train, n_valid=16, n_features=N_FEATURES, n_classes=N_CLASSES, bs=bs,
                                   seed=0)
    kwargs.setdefault("opt_func", SGD)
    kwargs.setdefault("lr", 0.01)
    return Learner(model if model is not None else mlp(), dls, nn.CrossEntropyLoss(), device="cpu", progress=False,
                   **kwargs)


def clone_params(params):
    return [p.detach().clone() for p in params]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def torch_steps(make_sched, groups, n, momentum=0.9):
    """lr and momentum of every group at each of n steps of a torch scheduler on a dummy optimizer."""
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in groups], momentum=momentum)
    sched = make_sched(opt)
    lrs, moms = [], []
    for _ in range(n):
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append([g["momentum"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs, moms


# ----- one-cycle: torch's anneal_strategy and three_phase -----------------------------------------------------------
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal_strategy", ["cos", "linear"])
def test_one_cycle_options_equal_torch_onecyclelr_on_its_grid(anneal_strategy, three_phase):
    """torch's OneCycleLR ends phase k at step e_k (pct_start*N - 1, then 2*pct_start*N - 2 with three phases, then
    N - 1) and maps step i of phase k to its own fraction; on that grid ours is the same function."""
    n, max_lr, div, final_div, pct = 50, 0.4, 25.0, 1e4, 0.3
    oc = one_cycle(max_lr, div_factor=div, pct_start=pct, final_div=div * final_div, moms=(0.95, 0.85),
                   anneal_strategy=anneal_strategy, three_phase=three_phase)
    lrs, moms = torch_steps(lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=n, pct_start=pct, div_factor=div, final_div_factor=final_div,
        base_momentum=0.85, max_momentum=0.95, three_phase=three_phase, anneal_strategy=anneal_strategy), [0.1], n)
    ends = [pct * n - 1, 2 * pct * n - 2, n - 1] if three_phase else [pct * n - 1, n - 1]
    phase_pcts = [pct, pct, 1 - 2 * pct] if three_phase else [pct, 1 - pct]
    for i in range(n):
        k = next(k for k, end in enumerate(ends) if i <= end)
        start = 0 if k == 0 else ends[k - 1]
        pos = sum(phase_pcts[:k]) + phase_pcts[k] * (i - start) / (ends[k] - start)
        assert lrs[i][0] == approx(oc.lr(pos)), i
        assert moms[i][0] == approx(oc.mom(pos)), i


def test_fit_one_cycle_three_phase_linear_uses_the_schedule_at_i_over_n():
    learn, used = make_learner(), UsedHypers()
    learn.fit_one_cycle(2, max_lr=0.1, pct_start=0.25, anneal_strategy="linear", three_phase=True, cbs=[used])
    oc = one_cycle(0.1, pct_start=0.25, anneal_strategy="linear", three_phase=True)
    n, low = 8, 0.1 / 25
    assert used.column("lr") == [approx(oc.lr(i / n)) for i in range(n)]
    # Closed form: up 0.004 -> 0.1 over batches 0-2, back down over 2-4, then towards 0.1 / 25e4.
    assert used.column("lr")[:5] == [approx(v) for v in (low, low + (0.1 - low) / 2, 0.1, low + (0.1 - low) / 2, low)]
    assert used.column("mom")[2] == approx(0.85) and used.column("mom")[4:] == [approx(0.95)] * 4


# ----- cyclical: step_size_down and per-group momentum lists, against torch's CyclicLR ------------------------------
@pytest.mark.parametrize("mode, gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.97)])
def test_asymmetric_cyclic_with_per_group_momentum_equals_torch_cycliclr(mode, gamma):
    model = mlp(bn=False)
    learn = make_learner(model, splitter=lambda m: [list(m[0].parameters()), list(m[2].parameters())])
    used = UsedHypers()
    base_lr, max_lr, base_mom, max_mom = [1e-3, 2e-3], [6e-3, 1e-2], [0.8, 0.7], [0.9, 0.95]
    learn.fit(5, cbs=[CyclicLRCallback(base_lr, max_lr, step_size=2, step_size_down=5, mode=mode, gamma=gamma,
                                       base_momentum=base_mom, max_momentum=max_mom), used])
    lrs, moms = torch_steps(lambda opt: torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=base_lr, max_lr=max_lr, step_size_up=2, step_size_down=5, mode=mode, gamma=gamma,
        cycle_momentum=True, base_momentum=base_mom, max_momentum=max_mom), [0.1, 0.1], 20)
    for group in (0, 1):
        assert used.column("lr", group) == [approx(r[group]) for r in lrs]
        assert used.column("mom", group) == [approx(r[group]) for r in moms]
    if mode == "triangular":  # up in 2 steps, down in 5
        assert used.column("lr", 1)[2] == approx(1e-2) and used.column("lr", 1)[7] == approx(2e-3)


# ----- fit_flat_cos: fastai's formula -------------------------------------------------------------------------------
def test_fit_flat_cos_is_flat_then_half_a_cosine_per_group():
    model = mlp(bn=False)
    learn = make_learner(model, splitter=lambda m: [list(m[0].parameters()), list(m[2].parameters())])
    used = UsedHypers()
    learn.fit_flat_cos(2, lr=slice(1e-3, 1e-1), pct_start=0.5, cbs=[used])
    n = 8
    for group, lr in enumerate((1e-3, 1e-1)):
        # fastai: combined_cos(pct_start, lr, lr, lr / div_final), with
        # SchedCos(a, b)(p) = a + (1 + cos(pi (1 - p))) (b - a) / 2
        end = lr / 1e5
        expected = [lr if i / n < 0.5 else lr + (1 + math.cos(math.pi * (1 - (i / n - 0.5) / 0.5))) * (end - lr) / 2
                    for i in range(n)]
        assert used.column("lr", group) == [approx(v) for v in expected]
    assert learn.recorder.group_values("lr")[0][:4] == [approx(1e-3)] * 4


# ----- freeze / unfreeze / freeze_to --------------------------------------------------------------------------------
def test_default_split_is_body_then_head_and_freeze_keeps_batch_norm_trainable():
    learn = make_learner()
    learn.freeze()
    model = learn.model
    assert [len(g["params"]) for g in learn.opt.param_groups] == [4, 2]  # Linear + BatchNorm, then the head
    assert [p.requires_grad for p in model[0].parameters()] == [False, False]
    assert all(p.requires_grad for p in model[1].parameters()) and all(p.requires_grad for p in model[2].parameters())
    learn.freeze(train_bn=False)
    assert not any(p.requires_grad for p in model[1].parameters())
    learn.unfreeze()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"at least 2 top-level children, got 0 \(Linear\); pass splitter="):
        body_head_split(nn.Linear(3, 2))


def test_frozen_params_get_no_gradient_no_update_and_keep_their_optimizer_state():
    learn = make_learner()
    learn.unfreeze()  # before the first fit: the optimizer is created with the default body/head groups
    learn.fit(1)  # unfrozen: every parameter gets a momentum buffer
    linear = list(learn.model[0].parameters())
    buffers = [learn.opt.state[p]["momentum_buffer"].clone() for p in linear]
    weights, bn = clone_params(linear), clone_params(learn.model[1].parameters())
    learn.freeze_to(1)
    learn.fit(1)
    assert same(weights, linear) and all(p.grad is None for p in linear)
    assert same(buffers, [learn.opt.state[p]["momentum_buffer"] for p in linear])  # kept as it was
    assert not same(bn, learn.model[1].parameters())  # train_bn: batch norm in the frozen group trained
    learn.unfreeze()
    learn.fit(1)
    assert not same(weights, linear) and not same(buffers, [learn.opt.state[p]["momentum_buffer"] for p in linear])


def test_freeze_without_train_bn_leaves_the_whole_body_unchanged():
    learn = make_learner()
    learn.freeze(train_bn=False)
    body = clone_params(learn.opt.param_groups[0]["params"])
    head = clone_params(learn.model[2].parameters())
    learn.fit(1)
    assert same(body, learn.opt.param_groups[0]["params"]) and not same(head, learn.model[2].parameters())


def test_freeze_to_counts_groups_and_refuses_a_bad_n():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = make_learner(model, splitter=lambda m: [list(m[0].parameters()), list(m[2].parameters()),
                                                    list(m[4].parameters())])
    learn.freeze_to(2)
    assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 2
    learn.freeze_to(-2)
    assert [p.requires_grad for p in model.parameters()] == [False] * 2 + [True] * 4
    with pytest.raises(ValueError, match=r"n must be in \[-3, 3\] \(the optimizer has 3 parameter group\(s\)\), got 4"):
        learn.freeze_to(4)
    with pytest.raises(TypeError, match=r"n must be an int .*got float \(1.5\)"):
        learn.freeze_to(1.5)
    assert [p.requires_grad for p in model.parameters()] == [False] * 2 + [True] * 4  # unchanged by the refusals


def test_freeze_on_a_single_group_warns_that_nothing_is_frozen():
    learn = make_learner()
    learn.create_opt()  # one group: the optimizer exists before any split
    with pytest.warns(UserWarning, match="single parameter group, so nothing is frozen"):
        learn.freeze()
    assert all(p.requires_grad for p in learn.model.parameters())


# ----- fine_tune: fastai's formula, both fits in the Recorder -------------------------------------------------------
class ParamsPerFit(Callback):
    order = 100

    def __init__(self, params):
        self.params, self.before, self.after = list(params), [], []

    def before_fit(self, learn):
        self.before.append(clone_params(self.params))

    def after_fit(self, learn):
        self.after.append(clone_params(self.params))


def test_fine_tune_follows_fastai_two_one_cycles_with_every_group_at_its_rate():
    learn = make_learner()
    body = ParamsPerFit(learn.model[0].parameters())
    learn.fine_tune(2, base_lr=1e-2, freeze_epochs=1, cbs=[body])
    df = learn.recorder.to_df("batches")
    frozen, thawed = df[df.fit == 0], df[df.fit == 1]
    # fastai: fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99), then base_lr /= 2 and
    # fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=0.3, div=5).
    for group, peak in enumerate((1e-3, 1e-2)):
        oc = one_cycle(peak, pct_start=0.99)
        assert list(frozen[f"lr_{group}"]) == [approx(oc.lr(i / 4)) for i in range(4)]
    for group, peak in enumerate((5e-5, 5e-3)):
        oc = one_cycle(peak, div_factor=5.0, pct_start=0.3)
        assert list(thawed[f"lr_{group}"]) == [approx(oc.lr(i / 8)) for i in range(8)]
    assert same(body.before[0], body.after[0]) and not same(body.before[1], body.after[1])
    assert learn.frozen_idx == 0 and all(p.requires_grad for p in learn.model.parameters())


def test_fine_tune_refuses_bad_arguments_before_freezing():
    learn = make_learner()
    for kwargs, error, message in [({"epochs": 0}, ValueError, "n_epoch must be an int >= 1, got 0"),
                                   ({"epochs": 1, "base_lr": -1}, ValueError, "base_lr must be > 0, got -1"),
                                   ({"epochs": 1, "pct_start": 1.5}, ValueError, "pct_start must be in"),
                                   ({"epochs": 1, "freeze_epochs": -1}, ValueError,
                                    "freeze_epochs must be an int >= 0")]:
        with pytest.raises(error, match=message):
            learn.fine_tune(**kwargs)
    assert learn.opt is None and all(p.requires_grad for p in learn.model.parameters())


def _rgb(dls_kwargs):
    """tiny_images as 3-channel images, for a torchvision ResNet."""
    dls = tiny_images(**dls_kwargs)
    x, y = dls.train.x.repeat(1, 3, 1, 1), dls.train.y
    xv, yv = dls.valid.x.repeat(1, 3, 1, 1), dls.valid.y
    return DataLoaders.from_tensors(x, y, xv, yv, bs=16, seed=0)


def test_resnet18_body_trained_on_one_task_then_fine_tuned_on_another():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4)
    task_a = _rgb({"n_train": 32, "n_valid": 16, "n_classes": 4, "seed": 0})
    pretrain = Learner(model, task_a, nn.CrossEntropyLoss(), opt_func=SGD, lr=0.05, device="cpu", progress=False)
    initial = clone_params(model.conv1.parameters())
    pretrain.fit(1)
    assert not same(initial, model.conv1.parameters())  # the body was really trained on task A

    model.fc = nn.Linear(model.fc.in_features, 3)  # a new head for task B, the trained body kept
    task_b = _rgb({"n_train": 32, "n_valid": 16, "n_classes": 3, "seed": 1})
    learn = Learner(model, task_b, nn.CrossEntropyLoss(), opt_func=SGD, device="cpu", progress=False)
    bn_types = (nn.BatchNorm2d,)
    convs = [p for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()]
    bns = [p for m in model.modules() if isinstance(m, bn_types) for p in m.parameters()]
    watch_convs, watch_bns = ParamsPerFit(convs), ParamsPerFit(bns)
    learn.fine_tune(1, base_lr=1e-2, cbs=[watch_convs, watch_bns])
    assert [len(g["params"]) for g in learn.opt.param_groups] == [len(list(model.parameters())) - 2, 2]
    assert same(watch_convs.before[0], watch_convs.after[0])  # frozen phase: the body's convolutions unchanged
    assert not same(watch_bns.before[0], watch_bns.after[0])  # ... but its batch norm trained (train_bn)
    assert not same(watch_convs.before[1], watch_convs.after[1])  # unfrozen: the body trains
    thawed = learn.recorder.to_df("batches").query("fit == 1")
    for group, peak in enumerate((1e-2 / 2 / 100, 1e-2 / 2)):
        oc = one_cycle(peak, div_factor=5.0)
        assert list(thawed[f"lr_{group}"]) == [approx(oc.lr(i / 2)) for i in range(2)]


# ----- lr_find: frozen groups, momentums, both ----------------------------------------------------------------------
def test_lr_find_on_a_frozen_model_sweeps_only_the_trainable_groups_keeping_ratios():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    learn = make_learner(model, splitter=lambda m: [list(m[0].parameters()), list(m[2].parameters()),
                                                    list(m[4].parameters())])
    learn.freeze_to(1)
    for group, lr in enumerate((0.5, 0.01, 0.04)):
        learn.set_hyper("lr", lr, group)
    used = UsedHypers()
    learn.add_cbs([used])
    res = learn.lr_find(num_it=10, stop_div=False)
    sweep = Exp(1e-7, 10.0)
    # The finder skips the step at its last rate, before this callback sees it: 9 steps of the 10 recorded rates.
    assert res.lrs == [approx(sweep(i / 9)) for i in range(10)]
    assert used.column("lr", 0) == [0.5] * 9  # frozen: left alone
    assert used.column("lr", 2) == [approx(sweep(i / 9)) for i in range(9)]  # the largest trainable rate
    assert used.column("lr", 1) == [approx(sweep(i / 9) / 4) for i in range(9)]  # its ratio kept
    assert res.swept_groups == [1, 2] and res.reference_group == 2
    assert [g["lr"] for g in learn.opt.param_groups] == [0.5, 0.01, 0.04]


def test_lr_find_over_momentums_and_pairs_gives_one_table_and_one_plot():
    learn = make_learner(n_train=128)
    used = UsedHypers()
    learn.add_cbs([used])
    sweep = learn.lr_find(moms=[0.9, 0.5], num_it=8, stop_div=False)
    assert sweep.names == ("mom",) and sweep.moms == [0.9, 0.5]
    assert used.column("mom") == [0.9] * 7 + [0.5] * 7  # one sweep per momentum (its last step skipped)
    assert learn.opt is None  # the finder leaves no trace

    used.rows.clear()
    both = learn.lr_find(wds=[1e-2, 0.0], moms=[0.9, 0.5], num_it=8, stop_div=False)
    assert list(both.curves) == [(1e-2, 0.9), (1e-2, 0.5), (0.0, 0.9), (0.0, 0.5)]
    assert used.column("mom") == [0.9] * 7 + [0.5] * 7 + [0.9] * 7 + [0.5] * 7
    first_losses = {r.losses[0] for r in both.curves.values()}
    assert len(first_losses) == 1  # every sweep starts from the same state (the first loss is before any step)
    df = both.to_df()
    assert list(df.columns[:4]) == ["wd", "mom", "min_loss", "lr_at_min"] and len(df) == 4
    best_row = df.loc[df.min_loss.idxmin()]
    assert both.best_pair == (best_row.wd, best_row.mom) and df.best.sum() == 1 and bool(best_row.best)
    assert best_row.min_loss == min(min(r.centred_losses) for r in both.curves.values())
    fig = both.plot()
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert {"wd=0.01, mom=0.9", "wd=0.01, mom=0.5", "wd=0, mom=0.9", "wd=0, mom=0.5"} <= set(labels)
    assert f"lowest loss: wd={best_row.wd:g}, mom={best_row.mom:g}" in labels


def test_lr_find_refuses_bad_momentums_before_anything_changes():
    learn = make_learner()
    with pytest.raises(TypeError, match=r"moms must be a list of momentums like \[0.95, 0.9, 0.85\], got the number"):
        learn.lr_find(moms=0.9)
    with pytest.raises(ValueError, match=r"moms\[1\] must be in \[0, 1\)"):
        learn.lr_find(moms=[0.9, 1.2])
    adagrad = make_learner(opt_func=torch.optim.Adagrad)
    with pytest.raises(KeyError, match="Adagrad has no momentum"):
        adagrad.lr_find(moms=[0.9], num_it=4)
    assert learn.opt is None and adagrad.opt is None


# ----- the finder's plot: the blow-up drawn, skip_start / skip_end --------------------------------------------------
def blow_up_result():
    lrs = [1e-5 * 10 ** (6 * i / 99) for i in range(100)]
    losses = [2.3 - 2.0 * i / 69 for i in range(70)] + [0.3 * 1.2 ** k for k in range(1, 31)]
    return LRFinderResult(lrs, losses, losses, suggest(lrs, losses), "completed")


def test_finder_plot_draws_the_blow_up_with_a_y_range_that_keeps_the_descent_readable():
    res = blow_up_result()
    fig = res.plot()
    ax = fig.axes[0]
    line = next(ln for ln in ax.lines if ln.get_label() == "loss (smoothed, no lag)")
    drawn = list(line.get_ydata())
    assert drawn == pytest.approx(centred_smooth(res.losses, cap=False))
    assert max(drawn) > 2.3 * 10  # the blow-up is drawn, not capped at the pre-minimum level
    assert max(res.centred_losses) <= 2.3 + 1e-9  # the suggestions still read the capped curve
    lo, hi = ax.get_ylim()
    low, descent = min(drawn), max(drawn[:drawn.index(min(drawn)) + 1])
    span = descent - low
    assert lo == pytest.approx(low - 0.1 * span) and hi == pytest.approx(descent + 0.55 * span)


def test_finder_plot_skip_start_and_skip_end_leave_points_out():
    res = blow_up_result()
    ax = res.plot(skip_start=10, skip_end=5, raw=False).axes[0]
    line = next(ln for ln in ax.lines if ln.get_label() == "loss (smoothed, no lag)")
    assert list(line.get_xdata()) == res.lrs[10:95]
    assert list(line.get_ydata()) == pytest.approx(centred_smooth(res.losses, cap=False)[10:95])
    with pytest.raises(ValueError, match="skip_start must be an int >= 0"):
        res.plot(skip_start=-1)
    with pytest.raises(ValueError, match="must leave at least 2 of the curve's 100 points"):
        res.plot(skip_start=60, skip_end=40)


def test_focus_y_falls_back_to_the_top_of_a_small_blow_up():
    _, ax = plt.subplots()
    curve = [3.0, 2.0, 1.0, 1.2]  # descent 2.0, the blow-up only 0.2 above the minimum
    assert focus_y(ax, [curve]) == pytest.approx((1.0 - 0.2, 3.0 + 0.2 + 0.1))


# ----- plots that compose; runs side by side ------------------------------------------------------------------------
def three_runs():
    runs = {}
    for label, max_lr in (("lr 0.01", 0.01), ("lr 0.1", 0.1), ("lr 0.3", 0.3)):
        learn = make_learner(mlp(bn=False))
        learn.fit_one_cycle(2, max_lr=max_lr)
        runs[label] = learn
    return runs


def test_three_runs_and_the_finder_on_one_figure_with_ax():
    runs = three_runs()
    learn = runs["lr 0.1"]
    learn.lr_find(num_it=8, stop_div=False)
    fig, axs = plt.subplots(2, 4, figsize=(16, 7))
    recorders = {label: r.recorder for label, r in runs.items()}
    assert compare_runs(recorders, axs=axs[0]) is fig
    assert learn.recorder.plot_lr_find(ax=axs[1, 0], skip_end=1) is fig
    assert learn.recorder.plot_sched(axs=axs[1, 1:3]) is fig
    assert learn.recorder.plot_loss(ax=axs[1, 3]) is fig
    assert OneCycleCallback(0.1).plot(ax=[axs[1, 3], axs[1, 3]]) is fig
    assert learn.recorder.plot_metrics(axs=[axs[1, 3]]) is fig
    assert len(fig.axes) == 8  # everything drew on the given axes, none added
    assert [ax.get_title() for ax in axs[0, :3]] == ["loss", "learning rate", "momentum"]
    assert [line.get_label() for line in axs[0, 1].lines] == list(recorders)  # three runs, one lr panel
    assert "loss (smoothed, no lag)" in [line.get_label() for line in axs[1, 0].lines]  # the finder beside them


def test_compare_runs_shares_axes_and_stacks_with_a_run_column():
    runs = three_runs()
    recorders = {label: r.recorder for label, r in runs.items()}
    fig = compare_runs(recorders)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "learning rate", "momentum"]
    lr_ax = fig.axes[1]
    assert [line.get_label() for line in lr_ax.lines] == list(recorders)
    for line, rec in zip(lr_ax.lines, recorders.values(), strict=True):
        batches = rec.to_df("batches")
        assert list(line.get_ydata()) == list(batches.lr)
        assert list(line.get_xdata()) == pytest.approx([2 * p for p in batches.pct])  # epochs: pct x 2 epochs
    epochs = stack_runs(recorders)
    assert list(epochs.columns[:3]) == ["run", "fit", "epoch"] and len(epochs) == 6
    assert list(epochs.run) == [label for label in recorders for _ in range(2)]
    batches = stack_runs(list(recorders.values()), labels=["a", "b", "c"], kind="batches")
    assert batches.groupby("run").size().to_dict() == {"a": 8, "b": 8, "c": 8}
    # DataFrames work as well as Recorders, and a two-fit recorder counts its epochs across fits.
    two_fits = runs["lr 0.1"]
    two_fits.fit(1)
    fig = compare_runs([two_fits.recorder.to_df("epochs"), two_fits.recorder], labels=["table", "recorder"])
    loss_ax = fig.axes[0]
    assert list(loss_ax.lines[0].get_xdata()) == [1, 2, 3]
    with pytest.raises(ValueError, match="labels has 1 names for 2 runs"):
        compare_runs([two_fits.recorder, two_fits.recorder], labels=["x"])


def test_fit_sgdr_logs_its_length_at_info(caplog):
    learn = make_learner(mlp(bn=False))
    with caplog.at_level(logging.INFO, logger="cyclr"):
        learn.fit_sgdr(n_cycles=2, cycle_len=1, max_lr=0.1)
    assert [r.getMessage() for r in caplog.records if r.name == "cyclr"] == [
        "fit_sgdr: 2 cycles of 1*2**k epochs = 3 epochs"]


def test_new_options_are_refused_with_what_to_change():
    with pytest.raises(ValueError, match=r"pct_start must be in \(0, 0.5\) with three_phase=True"):
        one_cycle(0.1, pct_start=0.5, three_phase=True)
    with pytest.raises(ValueError, match="anneal_strategy must be one of 'cos', 'linear', got 'exp'"):
        OneCycleCallback(0.1, anneal_strategy="exp")
    with pytest.raises(ValueError, match="step_size_down must be an int >= 1, got 0"):
        CyclicLRCallback(1e-3, 1e-2, step_size=2, step_size_down=0)
    with pytest.raises(ValueError, match=r"max_momentum\[1\] must be in \[0, 1\)"):
        CyclicLRCallback(1e-3, 1e-2, step_size=2, max_momentum=[0.9, 1.0])


def test_fit_one_cycle_builds_its_one_cycle_once(monkeypatch):
    from cyclr.callbacks.schedules.cycles import OneCycle

    built = []
    original = OneCycle.__init__

    def counting(self, *args, **kwargs):
        built.append(args[0] if args else kwargs["max_lr"])
        original(self, *args, **kwargs)

    monkeypatch.setattr(OneCycle, "__init__", counting)
    dls = synthetic_classification(n_train=32, n_valid=16, n_features=4, n_classes=2, bs=16)
    learn = Learner(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), dls, nn.CrossEntropyLoss(),
                    device="cpu", progress=False, splitter=lambda m: [m[0].parameters(), m[2].parameters()])
    learn.fit_one_cycle(2, max_lr=0.01)
    assert built == [0.01]  # at construction; the fit runs that one
    built.clear()
    learn.fit_one_cycle(1, max_lr=slice(1e-3, 1e-2))
    assert built == pytest.approx([1e-2, 1e-3, 1e-2])  # the last group's at construction, then one per group
