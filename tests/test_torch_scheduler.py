"""A user's own torch scheduler (issue 23 point 4): TorchScheduler builds it on the fit's optimizer and steps it
after each optimizer step or epoch; the rates recorded are torch's own, step by step; fp16's skipped steps do not
count; a second writer of the rate is refused before training; resume is exact; lr_find leaves it alone."""

import functools

import pytest
import torch
from helpers import torch_rates
from test_checkpoint import Interrupt  # KeyboardInterrupt right after a given step, as the resume tests use
from torch import nn
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from cyclr import Learner, MixedPrecision, ParamScheduler, SaveModelCallback, TorchScheduler, synthetic_classification
from cyclr import ReduceLROnPlateau as CyclrPlateau
from cyclr.callbacks.torch_scheduler import refuse_torch_scheduler
from cyclr.learner.checkpoint_files import read_checkpoint

STEPS_PER_EPOCH = 5  # 60 samples in batches of 12
SGD = functools.partial(torch.optim.SGD, momentum=0.9)


def make_learner(lr=0.05, opt_func=SGD, cbs=(), **kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=60, n_valid=24, n_features=6, n_classes=4, bs=12, seed=2)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=lr, device="cpu", progress=False,
                   cbs=cbs, **kwargs)


def warmup(step):
    return min(1.0, step / 4)


STEP_SCHEDULERS = {
    "one_cycle": functools.partial(OneCycleLR, max_lr=0.2),  # total_steps filled in by the fit
    "cosine": lambda opt: CosineAnnealingLR(opt, T_max=7, eta_min=0.001),
    "lambda_warmup": lambda opt: LambdaLR(opt, warmup),
    "sequential": lambda opt: SequentialLR(opt, [LinearLR(opt, start_factor=0.2, total_iters=4),
                                                 ExponentialLR(opt, gamma=0.9)], milestones=[4]),
}


@pytest.mark.parametrize("name", list(STEP_SCHEDULERS))
def test_step_schedulers_set_torchs_own_rates_step_by_step(name):
    factory = STEP_SCHEDULERS[name]
    learn = make_learner()
    learn.fit(3, cbs=[TorchScheduler(factory)])
    n = 3 * STEPS_PER_EPOCH
    want_lrs, want_moms = torch_rates(functools.partial(factory, total_steps=n) if name == "one_cycle" else factory,
                                      n)
    assert learn.recorder.lrs == want_lrs  # exactly torch's values, in the Recorder
    assert learn.recorder.moms == want_moms  # OneCycleLR cycles the momentum too
    if name == "lambda_warmup":
        assert want_lrs[:5] == pytest.approx([0.0, 0.0125, 0.025, 0.0375, 0.05])  # the warm-up's first step is kept


def test_a_later_fit_builds_its_scheduler_at_that_fits_rate():
    ts = TorchScheduler(lambda opt: LambdaLR(opt, warmup))
    learn = make_learner(cbs=[ts])
    learn.fit(1)
    first = ts.scheduler
    learn.fit(1, lr=0.02)  # the first scheduler's initial_lr (0.05) must not become this one's base
    assert ts.scheduler is not first
    assert learn.recorder.lrs == torch_rates(lambda opt: LambdaLR(opt, warmup), STEPS_PER_EPOCH, lr=0.02)[0]


def test_each_parameter_group_gets_torchs_rate_from_its_own_base():
    learn = make_learner(splitter=lambda m: [m[0].parameters(), m[2].parameters()])
    learn.set_hyper("lr", 0.01, group=0)  # discriminative rates: 0.01 and 0.05
    learn.fit(2, cbs=[TorchScheduler(lambda opt: LambdaLR(opt, [warmup, lambda s: 0.9**s]))])
    opt = SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.01}, {"params": [nn.Parameter(torch.zeros(1))]}],
              lr=0.05)
    scheduler = LambdaLR(opt, [warmup, lambda s: 0.9**s])
    want = [[], []]
    for _ in range(2 * STEPS_PER_EPOCH):
        for i, g in enumerate(opt.param_groups):
            want[i].append(g["lr"])
        opt.step()
        scheduler.step()
    assert learn.recorder.group_values("lr") == want


def test_a_later_fit_without_lr_starts_again_at_the_learners_rate():
    ts = TorchScheduler(lambda opt: CosineAnnealingLR(opt, T_max=3))
    learn = make_learner(cbs=[ts])
    learn.fit(1)
    assert "initial_lr" not in learn.opt.param_groups[0]  # nothing left that reads as a scheduler still attached
    learn.fit(1)
    assert learn.recorder.lrs == torch_rates(lambda opt: CosineAnnealingLR(opt, T_max=3), STEPS_PER_EPOCH)[0]


def test_epoch_interval_steps_after_validation_and_a_plateau_scheduler_reads_its_monitor():
    learn = make_learner()
    learn.fit(4, cbs=[TorchScheduler(lambda opt: StepLR(opt, step_size=1, gamma=0.5), interval="epoch")])
    assert learn.recorder.lrs == torch_rates(lambda opt: StepLR(opt, step_size=1, gamma=0.5), 4 * STEPS_PER_EPOCH,
                                             steps_per_epoch=STEPS_PER_EPOCH)[0]

    def plateau(opt):  # a threshold no epoch meets: the rate halves after every second epoch without improvement
        return ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1, threshold=10.0)

    learn = make_learner()
    learn.fit(5, cbs=[TorchScheduler(plateau, interval="epoch", monitor="valid_loss")])
    watched = [row["valid_loss"] for row in learn.recorder.epoch_rows]
    want = torch_rates(plateau, 5 * STEPS_PER_EPOCH, epoch_values=watched, steps_per_epoch=STEPS_PER_EPOCH)[0]
    assert learn.recorder.lrs == want
    assert sorted(set(want), reverse=True) == [0.05, 0.025, 0.0125]  # it did reduce, twice


def test_steps_skipped_by_float16_do_not_count():
    # A scale so large that the first scaled gradients overflow: the scaler skips those steps and halves the scale.
    mp = MixedPrecision(torch.float16, init_scale=2.0**126)
    ts = TorchScheduler(lambda opt: CosineAnnealingLR(opt, T_max=9))
    learn = make_learner(cbs=[mp])
    learn.fit(2, cbs=[ts])
    assert mp.skipped_steps > 0 and learn.train_iter == 2 * STEPS_PER_EPOCH - mp.skipped_steps
    assert ts.scheduler.last_epoch == learn.train_iter
    assert learn.recorder.lrs == torch_rates(lambda opt: CosineAnnealingLR(opt, T_max=9), learn.train_iter)[0]


# ----- refusals ---------------------------------------------------------------------------------------------------
def weights(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


def one_cycle(max_lr=0.2):
    return TorchScheduler(functools.partial(OneCycleLR, max_lr=max_lr))


@pytest.mark.parametrize("other", ["one_cycle", "param_scheduler", "cyclr_plateau", "second_torch_scheduler"])
def test_a_second_writer_of_the_rate_is_refused_before_any_step(other):
    learn = make_learner(cbs=[TorchScheduler(lambda opt: CosineAnnealingLR(opt, T_max=5))])
    before = weights(learn)
    with pytest.raises(ValueError, match="two writers of one hyperparameter"):
        if other == "one_cycle":
            learn.fit_one_cycle(1, 0.1)
        else:
            cb = {"param_scheduler": lambda: ParamScheduler({"lr": lambda pct: 0.01}),
                  "cyclr_plateau": lambda: CyclrPlateau(),
                  "second_torch_scheduler": lambda: TorchScheduler(lambda opt: StepLR(opt, 2))}[other]()
            learn.fit(1, cbs=[cb])
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True)) and learn.train_iter == 0
    assert learn.opt.param_groups[0]["lr"] == 0.05 and "initial_lr" not in learn.opt.param_groups[0]


def test_a_cyclr_schedule_of_another_hyperparameter_runs_beside_it_and_momentum_is_one_cycles_own():
    learn = make_learner()
    learn.fit(1, cbs=[TorchScheduler(lambda opt: CosineAnnealingLR(opt, T_max=5)),
                      ParamScheduler({"mom": lambda pct: 0.9 - 0.1 * pct, "wd": lambda pct: 1e-3})])
    assert learn.recorder.lrs == torch_rates(lambda opt: CosineAnnealingLR(opt, T_max=5), STEPS_PER_EPOCH)[0]
    assert learn.recorder.moms == pytest.approx([0.9 - 0.1 * i / STEPS_PER_EPOCH for i in range(STEPS_PER_EPOCH)])
    with pytest.raises(ValueError, match="sets the momentum in this fit as well"):
        learn.fit(1, cbs=[one_cycle(), ParamScheduler({"mom": lambda pct: 0.9})])
    assert learn.opt.param_groups[0]["momentum"] == 0.9 - 0.1 * 4 / 5 and "initial_lr" not in learn.opt.param_groups[0]


def test_bad_factories_and_settings_are_refused_before_training_saying_what_to_change():
    learn = make_learner()
    opt = torch.optim.SGD(learn.model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"torch scheduler \(StepLR\).*TorchScheduler\(lambda opt: StepLR\(opt"):
        TorchScheduler(StepLR(opt, 2))
    with pytest.raises(ValueError, match="interval='epoch'"):
        TorchScheduler(lambda opt: ReduceLROnPlateau(opt), monitor="valid_loss")
    cases = [
        (TorchScheduler(lambda o: StepLR(opt, 2)), "another optimizer"),
        (TorchScheduler(lambda o: ReduceLROnPlateau(o), interval="epoch"), "monitor="),
        (TorchScheduler(lambda o: ReduceLROnPlateau(o), interval="epoch", monitor="val_loss"), "not recorded"),
        (TorchScheduler(lambda o: OneCycleLR(o, max_lr=0.1, total_steps=6)), r"total_steps=6.*steps it 10 times"),
        (TorchScheduler(lambda o: 3), "must return a scheduler"),
    ]
    before = weights(learn)
    for ts, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            learn.fit(2, cbs=[ts])
        assert learn.opt.param_groups[0]["lr"] == 0.05 and learn.opt.param_groups[0]["momentum"] == 0.9
        assert sorted(learn.opt.param_groups[0]) == sorted([*learn.opt.defaults, "params"])
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True)) and learn.train_iter == 0


def test_a_bare_scheduler_where_a_callback_or_schedule_goes_is_named():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match=r"cbs=\[TorchScheduler\(lambda opt: CosineAnnealingLR\(opt, \.\.\.\)\)\]"):
        refuse_torch_scheduler(CosineAnnealingLR(opt, T_max=3), "a callback")
    refuse_torch_scheduler(lambda pct: 0.1, "a schedule")  # not a scheduler: nothing to say
    # Where users put one: in a fit's callbacks, as a ParamScheduler's schedule; refused before any step.
    learn = make_learner()
    before = weights(learn)
    bare = CosineAnnealingLR(opt, T_max=3)
    with pytest.raises(TypeError, match=r"a callback in cbs is a torch scheduler \(CosineAnnealingLR\).*"
                                        r"TorchScheduler\(lambda opt: CosineAnnealingLR"):
        learn.fit(1, cbs=[bare])
    with pytest.raises(TypeError, match=r"the schedule for 'lr' is a torch scheduler \(CosineAnnealingLR\).*"
                                        r"TorchScheduler\(lambda opt"):
        ParamScheduler({"lr": bare})
    with pytest.raises(TypeError, match=r"the schedule for 'lr' is a torch scheduler"):
        ParamScheduler({"lr": [lambda pct: 0.1, bare]})
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True)) and learn.train_iter == 0


# ----- checkpoints, resume, lr_find -------------------------------------------------------------------------------
def interrupted_run(tmp_path, make_ts, name="ckpt.pt"):
    path = tmp_path / name
    learn = make_learner()
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3, cbs=[make_ts(), SaveModelCallback(path, every_epoch=True, every_n_batches=1),
                          Interrupt(7)])
    return path


@pytest.mark.parametrize("make_ts", [one_cycle, lambda: TorchScheduler(
    lambda opt: ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=10.0), interval="epoch",
    monitor="valid_loss")], ids=["one_cycle_mid_epoch", "plateau"])
def test_resume_goes_on_exactly(tmp_path, make_ts):
    whole = make_learner()
    whole.fit(3, cbs=[make_ts()])
    path = interrupted_run(tmp_path, make_ts)
    assert read_checkpoint(path)["progress"]["train_iter"] == 7  # mid-epoch: the 2nd step of epoch 1
    resumed = make_learner()
    ts = make_ts()
    resumed.fit(3, cbs=[ts], resume=path)
    assert resumed.recorder.lrs == whole.recorder.lrs
    assert resumed.recorder.moms == whole.recorder.moms
    assert all(torch.equal(a, b) for a, b in zip(weights(whole), weights(resumed), strict=True))


def test_resuming_with_another_scheduler_is_refused_and_allowed_changes_go_on_from_the_checkpoint(tmp_path):
    path = interrupted_run(tmp_path, one_cycle)
    with pytest.raises(ValueError, match=r"TorchScheduler factory: OneCycleLR\(max_lr=0.2\) in the checkpoint, "
                                         r"OneCycleLR\(max_lr=0.3\) now"):
        make_learner().fit(3, cbs=[one_cycle(0.3)], resume=path)
    # A lambda names no settings: the scheduler it builds is compared with the checkpoint's when the fit starts.
    def cosine(t_max):
        return TorchScheduler(lambda opt: CosineAnnealingLR(opt, T_max=t_max))

    lambda_path = interrupted_run(tmp_path, lambda: cosine(15), "cosine.pt")
    with pytest.raises(ValueError, match=r"T_max: 15 in the checkpoint, 30 now"):
        make_learner().fit(3, cbs=[cosine(30)], resume=lambda_path)
    # Allowed: the new scheduler, stepped to the checkpoint's place, from there on.
    resumed = make_learner()
    resumed.fit(3, cbs=[one_cycle(0.3)], resume=path, allow_config_change=["factory"])
    want = torch_rates(functools.partial(OneCycleLR, max_lr=0.3, total_steps=15), 15)[0]
    want_old = torch_rates(functools.partial(OneCycleLR, max_lr=0.2, total_steps=15), 15)[0]
    assert resumed.recorder.lrs[:7] == want_old[:7] and resumed.recorder.lrs[7:] == want[7:]
    # The same for a scheduler that computes each rate from the last one (CosineAnnealingLR's recursive form).
    cos_path = interrupted_run(tmp_path, lambda: TorchScheduler(functools.partial(CosineAnnealingLR, T_max=15)),
                               "cos.pt")
    resumed = make_learner()
    resumed.fit(3, cbs=[TorchScheduler(functools.partial(CosineAnnealingLR, T_max=30))], resume=cos_path,
                allow_config_change=True)
    want = torch_rates(functools.partial(CosineAnnealingLR, T_max=30), 15)[0]
    assert resumed.recorder.lrs[7:] == pytest.approx(want[7:], rel=1e-12)


def test_lr_find_leaves_it_untouched():
    ts = TorchScheduler(lambda opt: LambdaLR(opt, warmup))
    learn = make_learner(cbs=[ts])
    learn.fit(1)
    state, scheduler = ts.state_dict(), ts.scheduler
    result = learn.lr_find(num_it=8, show_plot=False)
    assert len(result.lrs) == 8 and result.lrs[0] < result.lrs[-1]  # the sweep set its own rates
    assert ts.scheduler is scheduler and ts.state_dict() == state
    learn.fit(1)
    assert learn.recorder.lrs == torch_rates(lambda opt: LambdaLR(opt, warmup), STEPS_PER_EPOCH)[0]
