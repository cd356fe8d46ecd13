"""Resuming with other settings than the checkpoint's fit started with (issue 14, defect 7): refused, naming each
difference, with the learner unchanged; allowed explicitly, this fit's settings apply from the checkpoint's position
for every kind of scheduler, and its next checkpoints record them; a checkpoint without a recorded config (an older
cyclr's) still resumes, with a warning that only the length was compared."""

import pytest
import torch
from test_checkpoint import Interrupt  # KeyboardInterrupt right after a given step, as the resume tests use
from torch import nn

from cyclr import (
    CheckpointError,
    CyclicLRCallback,
    GradientAccumulation,
    Learner,
    Lin,
    ParamScheduler,
    SaveModelCallback,
    flat_cos,
    one_cycle,
    sgdr,
    synthetic_classification,
)
from cyclr.learner.checkpoint_files import checksum, read_checkpoint

STEPS_PER_EPOCH, N_EPOCH = 6, 3  # 96 samples in batches of 16
N_STEPS = STEPS_PER_EPOCH * N_EPOCH


def make_learner(bs=16, n_train=96, valid_bs=32, lr=0.01, wd=None):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=n_train, n_valid=32, bs=bs, valid_bs=valid_bs, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=lr, wd=wd, device="cpu",
                   progress=False)


def interrupted(tmp_path, fit, learn=None):
    """The checkpoint at the end of the first epoch (6 of 18 steps) of `fit(learn, cbs)`, interrupted in the second."""
    path = tmp_path / "ckpt.pt"
    learn = make_learner() if learn is None else learn
    with pytest.raises(KeyboardInterrupt):
        fit(learn, [SaveModelCallback(path, every_epoch=True), Interrupt(STEPS_PER_EPOCH + 1)])
    assert read_checkpoint(path)["progress"]["train_iter"] == STEPS_PER_EPOCH
    return path


def weights(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def assert_untouched(learn, before):
    """The refused resume changed nothing: weights, optimizer (none yet), counters."""
    assert all(torch.equal(v, learn.model.state_dict()[k]) for k, v in before.items())
    assert learn.opt is None
    assert (learn.epoch, learn.train_iter, learn.n_epoch) == (0, 0, 0)


def one_cycle_fit(max_lr):
    return lambda learn, cbs, **kw: learn.fit_one_cycle(N_EPOCH, max_lr, cbs=cbs, **kw)


def scheduler_fit(sched):
    return lambda learn, cbs, **kw: learn.fit(N_EPOCH, cbs=[ParamScheduler({"lr": sched}), *cbs], **kw)


# ----- what a checkpoint records -----------------------------------------------------------------------------------
def test_the_checkpoint_records_what_the_fit_started_with(tmp_path):
    path = interrupted(tmp_path, lambda learn, cbs: learn.fit_one_cycle(N_EPOCH, 0.05, wd=0.1, cbs=cbs))
    config = read_checkpoint(path)["progress"]["config"]
    # The values it started with, not the mid-schedule ones; tuples as lists.
    assert config == {
        "lr": 0.01, "wd": 0.1, "optimizer": "SGD", "train_batch_size": 16, "train_samples": 96,
        "valid_batch_size": 32,
        "callbacks": {"OneCycleCallback_0": {"max_lr": 0.05, "div_factor": 25.0, "pct_start": 0.3, "final_div": None,
                                             "moms": [0.95, 0.85], "anneal_strategy": "cos", "three_phase": False}},
    }


def test_a_param_scheduler_is_recorded_by_its_schedules(tmp_path):
    path = interrupted(tmp_path, scheduler_fit([Lin(0.05, 0.001)]))
    callbacks = read_checkpoint(path)["progress"]["config"]["callbacks"]
    assert callbacks == {"ParamScheduler_0": {"unit": "pct", "lr": ["Lin(start=0.05, end=0.001)"]}}


# ----- refused, naming each difference, with nothing changed -------------------------------------------------------
RECIPES = {  # each: the checkpoint's fit, the same fit with another rate, what the refusal names
    "fit_one_cycle": (one_cycle_fit(0.05), one_cycle_fit(0.1),
                      r"OneCycleCallback max_lr: 0\.05 in the checkpoint, 0\.1 now", "OneCycleCallback.max_lr"),
    "fit_flat_cos": (lambda learn, cbs, **kw: learn.fit_flat_cos(N_EPOCH, 0.05, cbs=cbs, **kw),
                     lambda learn, cbs, **kw: learn.fit_flat_cos(N_EPOCH, 0.05, pct_start=0.5, cbs=cbs, **kw),
                     r"FlatCosCallback pct_start: 0\.75 in the checkpoint, 0\.5 now", "FlatCosCallback.pct_start"),
    "fit_sgdr": (lambda learn, cbs, **kw: learn.fit_sgdr(1, N_EPOCH, 0.05, cbs=cbs, **kw),
                 lambda learn, cbs, **kw: learn.fit_sgdr(1, N_EPOCH, 0.05, eta_min=0.01, cbs=cbs, **kw),
                 r"SGDRCallback eta_min: 0\.0 in the checkpoint, 0\.01 now", "SGDRCallback.eta_min"),
    "cyclic_lr": (lambda learn, cbs, **kw: learn.fit(N_EPOCH, cbs=[CyclicLRCallback(0.001, 0.05, 4), *cbs], **kw),
                  lambda learn, cbs, **kw: learn.fit(N_EPOCH, cbs=[CyclicLRCallback(0.001, 0.05, 5), *cbs], **kw),
                  r"CyclicLRCallback step_size: 4 in the checkpoint, 5 now", "CyclicLRCallback.step_size"),
    "param_scheduler": (scheduler_fit(Lin(0.05, 0.001)), scheduler_fit(Lin(0.1, 0.001)),
                        r"ParamScheduler lr: Lin\(start=0\.05, end=0\.001\) in the checkpoint, "
                        r"Lin\(start=0\.1, end=0\.001\) now", "ParamScheduler.lr"),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_another_scheduler_setting_is_refused_naming_it_and_nothing_changes(tmp_path, recipe):
    saved_fit, other_fit, names, allow_name = RECIPES[recipe]
    path = interrupted(tmp_path, saved_fit)
    learn = make_learner()
    before = weights(learn)
    with pytest.raises(ValueError, match=rf"saved by a fit started with other settings than this one: {names}\. .*"
                                         rf"allow_config_change=\['{allow_name}'\]"):
        other_fit(learn, [], resume=path)
    assert_untouched(learn, before)


def test_a_refused_param_scheduler_keeps_its_own_schedules(tmp_path):
    path = interrupted(tmp_path, scheduler_fit(Lin(0.05, 0.001)))
    learn, cb = make_learner(), ParamScheduler({"lr": Lin(0.1, 0.001)})
    with pytest.raises(ValueError, match="ParamScheduler lr"):
        learn.fit(N_EPOCH, cbs=[cb], resume=path)
    assert cb.scheds == {"lr": Lin(0.1, 0.001)} and cb not in learn.cbs


def test_another_batch_size_with_the_same_number_of_batches_is_refused(tmp_path):
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    learn = make_learner(bs=17)  # 96 samples: 6 batches again
    assert len(learn.dls.train) == STEPS_PER_EPOCH
    before = weights(learn)
    with pytest.raises(ValueError, match=r"batch size of the training data: 16 in the checkpoint, 17 now\. .*"
                                         r"allow_config_change=\['train_batch_size'\]"):
        learn.fit_one_cycle(N_EPOCH, 0.05, resume=path)
    assert_untouched(learn, before)


def test_another_gradient_accumulation_is_refused_naming_it(tmp_path):
    def accumulated(n):
        return lambda learn, cbs, **kw: learn.fit(N_EPOCH, cbs=[GradientAccumulation(n), *cbs], **kw)

    path = interrupted(tmp_path, accumulated(1))
    learn = make_learner()
    before = weights(learn)
    with pytest.raises(ValueError, match=r"GradientAccumulation n_batches: 1 in the checkpoint, 2 now"):
        accumulated(2)(learn, [], resume=path)  # steps of twice the batch: not the run that was saved
    assert_untouched(learn, before)


def test_another_data_size_is_refused_naming_both_sizes(tmp_path):
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    learn = make_learner(n_train=90)  # 6 batches again
    assert len(learn.dls.train) == STEPS_PER_EPOCH
    before = weights(learn)
    with pytest.raises(ValueError, match=r"number of training samples: 96 in the checkpoint, 90 now\."):
        learn.fit_one_cycle(N_EPOCH, 0.05, resume=path)
    assert_untouched(learn, before)


def test_every_difference_is_named_and_allowing_some_still_refuses_the_others(tmp_path):
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    learn = make_learner(bs=17, valid_bs=64)
    with pytest.raises(ValueError, match=r"other settings than this one: batch size of the training data: 16 in "
                                         r"the checkpoint, 17 now; batch size of the validation data: 32 in the "
                                         r"checkpoint, 64 now\. .*allow_config_change=\['train_batch_size', "
                                         r"'valid_batch_size', 'OneCycleCallback.max_lr'\]"):
        learn.fit_one_cycle(N_EPOCH, 0.1, resume=path, allow_config_change=["max_lr"])


def test_a_scheduler_the_checkpoints_fit_did_not_have_is_refused(tmp_path):
    path = interrupted(tmp_path, lambda learn, cbs: learn.fit(N_EPOCH, cbs=cbs))
    learn = make_learner()
    with pytest.raises(ValueError, match=r"ParamScheduler: absent in the checkpoint, present now\. .*"
                                         r"allow_config_change=\['ParamScheduler'\]"):
        scheduler_fit(Lin(0.05, 0.001))(learn, [], resume=path)


def test_allowing_another_length_still_compares_the_settings(tmp_path):
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    learn = make_learner()
    before = weights(learn)
    with pytest.raises(ValueError, match=r"OneCycleCallback max_lr: 0\.05 in the checkpoint, 0\.1 now"):
        learn.fit_one_cycle(N_EPOCH + 1, 0.1, resume=path, allow_length_change=True)
    assert_untouched(learn, before)


@pytest.mark.parametrize(("learner_kwargs", "fit_kwargs", "names"), [
    ({}, {"lr": 0.02}, r"the fit's lr: 0\.05 in the checkpoint, 0\.02 now"),
    ({"wd": 0.1}, {"lr": 0.05}, r"the fit's wd: None in the checkpoint, 0\.1 now"),
])
def test_another_fit_lr_or_wd_is_refused(tmp_path, learner_kwargs, fit_kwargs, names):
    path = interrupted(tmp_path, lambda learn, cbs: learn.fit(N_EPOCH, lr=0.05, cbs=cbs))
    learn = make_learner(**learner_kwargs)
    with pytest.raises(ValueError, match=names):
        learn.fit(N_EPOCH, resume=path, **fit_kwargs)


@pytest.mark.parametrize("allow", ["max_lr", 1, [1]])
def test_allow_config_change_must_be_a_bool_or_a_list_of_names(tmp_path, allow):
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    with pytest.raises(TypeError, match=r"allow_config_change must "):
        make_learner().fit_one_cycle(N_EPOCH, 0.05, resume=path, allow_config_change=allow)


# ----- allowed: this fit's settings from the resume point on, for every kind of scheduler ---------------------------
@pytest.mark.parametrize(("saved_fit", "new_fit", "old", "new", "allow"), [
    (one_cycle_fit(0.05), one_cycle_fit(0.1), one_cycle(0.05).lr, one_cycle(0.1).lr, ["max_lr"]),
    (one_cycle_fit(0.05), one_cycle_fit(0.1), one_cycle(0.05).lr, one_cycle(0.1).lr, True),
    (scheduler_fit(Lin(0.05, 0.001)), scheduler_fit(Lin(0.1, 0.001)), Lin(0.05, 0.001), Lin(0.1, 0.001),
     ["ParamScheduler.lr"]),
    (scheduler_fit(Lin(0.05, 0.001)), scheduler_fit(Lin(0.1, 0.001)), Lin(0.05, 0.001), Lin(0.1, 0.001), True),
    (lambda learn, cbs, **kw: learn.fit_sgdr(1, N_EPOCH, 0.05, cbs=cbs, **kw),
     lambda learn, cbs, **kw: learn.fit_sgdr(1, N_EPOCH, 0.05, eta_min=0.01, cbs=cbs, **kw),
     sgdr(0.05, 1, N_EPOCH), sgdr(0.05, 1, N_EPOCH, eta_min=0.01), ["eta_min"]),
    (lambda learn, cbs, **kw: learn.fit_flat_cos(N_EPOCH, 0.05, cbs=cbs, **kw),
     lambda learn, cbs, **kw: learn.fit_flat_cos(N_EPOCH, 0.05, pct_start=0.5, cbs=cbs, **kw),
     flat_cos(0.05), flat_cos(0.05, pct_start=0.5), True),
], ids=["one_cycle_named", "one_cycle_true", "param_scheduler_named", "param_scheduler_true", "sgdr", "flat_cos"])
def test_an_allowed_change_uses_the_new_schedule_from_the_resume_point(tmp_path, saved_fit, new_fit, old, new,
                                                                       allow):
    path = interrupted(tmp_path, saved_fit)
    learn = make_learner()
    again = tmp_path / "again.pt"
    new_fit(learn, [SaveModelCallback(again, every_epoch=True)], resume=path, allow_config_change=allow)
    assert learn.train_iter == N_STEPS
    lrs = learn.recorder.lrs
    assert lrs[:STEPS_PER_EPOCH] == [old(i / N_STEPS) for i in range(STEPS_PER_EPOCH)]  # the checkpoint's steps
    assert lrs[STEPS_PER_EPOCH:] == [new(i / N_STEPS) for i in range(STEPS_PER_EPOCH, N_STEPS)]
    # Its checkpoints record the settings it went on with: resuming from one with them needs no allowance.
    assert read_checkpoint(again)["progress"]["config"] == learn.fit_config
    assert learn.fit_config != read_checkpoint(path)["progress"]["config"]


def test_an_allowed_change_of_the_learners_lr_applies_from_the_resume_point(tmp_path):
    path = interrupted(tmp_path, lambda learn, cbs: learn.fit(N_EPOCH, cbs=cbs))  # at the Learner's lr, 0.01
    learn = make_learner(lr=0.02)
    learn.fit(N_EPOCH, resume=path, allow_config_change=["lr"])
    assert learn.recorder.lrs == [0.01] * STEPS_PER_EPOCH + [0.02] * (N_STEPS - STEPS_PER_EPOCH)


def test_an_allowed_change_of_the_learners_wd_applies_over_the_restored_optimizer(tmp_path):
    path = interrupted(tmp_path, lambda learn, cbs: learn.fit(N_EPOCH, cbs=cbs))  # SGD's own weight decay, 0
    learn = make_learner(wd=0.1)
    learn.fit(N_EPOCH, resume=path, allow_config_change=["wd"])
    assert learn.opt.param_groups[0]["weight_decay"] == 0.1


def test_resuming_from_the_resumed_fits_checkpoint_needs_no_allowance(tmp_path):
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    learn = make_learner()
    later = tmp_path / "later.pt"
    with pytest.raises(KeyboardInterrupt):
        learn.fit_one_cycle(N_EPOCH, 0.1, cbs=[SaveModelCallback(later, every_epoch=True), Interrupt(13)],
                            resume=path, allow_config_change=True)
    assert read_checkpoint(later)["progress"]["train_iter"] == 2 * STEPS_PER_EPOCH
    resumed = make_learner()
    resumed.fit_one_cycle(N_EPOCH, 0.1, resume=later)
    assert resumed.recorder.lrs[2 * STEPS_PER_EPOCH:] == [one_cycle(0.1).lr(i / N_STEPS)
                                                          for i in range(2 * STEPS_PER_EPOCH, N_STEPS)]


# ----- older checkpoints ----------------------------------------------------------------------------------------------
def test_a_checkpoint_without_a_config_still_resumes_comparing_only_the_length(tmp_path):
    ref = make_learner()
    one_cycle_fit(0.05)(ref, [])
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    ckpt = torch.load(path, weights_only=True)
    del ckpt["progress"]["config"]  # as an older cyclr wrote it
    ckpt["checksum"] = checksum(ckpt)
    torch.save(ckpt, path)

    resumed = make_learner()
    with pytest.warns(UserWarning, match="does not record the settings its fit started with.*only the fit's length"):
        one_cycle_fit(0.05)(resumed, [], resume=path)
    assert all(torch.equal(a, b) for a, b in zip(ref.model.parameters(), resumed.model.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"planned for 3 epochs of 6 batches"):  # the length is still compared
        make_learner().fit_one_cycle(N_EPOCH + 1, 0.05, resume=path)


@pytest.mark.parametrize("config", [["not", "a", "dict"], {"lr": 0.1}, {"callbacks": {"ParamScheduler_0": 3}},
                                    {"callbacks": {}, "lr": {"nested": object.__name__, 1: 2}}])
def test_a_malformed_config_is_refused_before_anything_changes(tmp_path, config):
    path = interrupted(tmp_path, one_cycle_fit(0.05))
    ckpt = torch.load(path, weights_only=True)
    ckpt["progress"]["config"] = config
    ckpt["checksum"] = checksum(ckpt)
    torch.save(ckpt, path)
    learn = make_learner()
    before = weights(learn)
    with pytest.raises(CheckpointError, match=r"progress: the checkpoint's config\b"):
        learn.fit_one_cycle(N_EPOCH, 0.05, resume=path)
    assert_untouched(learn, before)
