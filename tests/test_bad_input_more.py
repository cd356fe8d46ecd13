"""Bad input that used to be accepted silently or refused deep inside torch (issue 24.11 and 24.13): each refused
before any training, with a message naming the parameter and what to pass, the learner left as it was."""

import pytest
import torch
from torch import nn

from cyclr import Learner, synthetic_classification
from cyclr.callbacks.schedules.base import MAX_RATE, check_rate, check_rate_slice
from cyclr.learner.transfer import splitter_groups


def make_learner(**kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=32, n_valid=16, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), device="cpu", progress=False, **kwargs)


# ----- 24.11: a splitter that leaves trainable parameters out of every group ------------------------------------------
def test_a_splitter_leaving_trainable_parameters_out_is_refused_naming_them():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"leaves 2 trainable parameter\(s\) out of every group, so they would never "
                                         r"train: 2.weight, 2.bias\. Return them .* requires_grad=False"):
        splitter_groups(model, lambda m: [m[0].parameters()])


def test_a_splitter_may_leave_out_parameters_that_do_not_train_and_keeps_its_groups():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    model[2].requires_grad_(False)  # meant to stay fixed, and saying so
    groups = splitter_groups(model, lambda m: [m[0].parameters()])
    assert [[id(p) for p in g["params"]] for g in groups] == [[id(model[0].weight), id(model[0].bias)]]
    many = nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)])
    with pytest.raises(ValueError, match=r"leaves 10 .*: 1.weight, 1.bias, .*, 4.bias and 2 more\."):
        splitter_groups(many, lambda m: [m[0].parameters()])


# ----- 24.11: max_lr=slice(0.1, 0.01), reversed ----------------------------------------------------------------------
def test_a_reversed_slice_of_rates_is_refused_saying_what_it_would_mean():
    with pytest.raises(ValueError, match=r"max_lr=slice\(0.1, 0.01\) is reversed: .* the body would train faster than "
                                         r"the head\. Pass slice\(0.01, 0.1\), or a list"):
        check_rate_slice("max_lr", 0.1, 0.01)
    for lo, hi in ((0.01, 0.1), (0.1, 0.1), (None, 0.1)):
        check_rate_slice("max_lr", lo, hi)  # rising, flat, or slice(hi): fastai's meanings


# ----- 24.13: rates torch cannot hold --------------------------------------------------------------------------------
def test_a_rate_above_float32s_largest_is_refused_with_a_cyclr_message():
    assert check_rate("lr", MAX_RATE) == MAX_RATE and check_rate("lr", 0, allow_zero=True) == 0
    with pytest.raises(ValueError, match=r"lr must be at most 3.4e\+38 .* got 1e\+300; learning rates are usually"):
        check_rate("lr", 1e300)
    with pytest.raises(ValueError, match="lr must be > 0"):
        check_rate("lr", 0)


@pytest.mark.parametrize("call", [
    lambda learn: learn.fit_one_cycle(1, 1e300),
    lambda learn: learn.fit_one_cycle(1, 1e-3, div_factor=1e-300),
    lambda learn: learn.fit_sgdr(1, 1, 1e300),
    lambda learn: learn.fit_flat_cos(1, 1e300),
], ids=["max_lr=1e300", "div_factor=1e-300", "sgdr_1e300", "flat_cos_1e300"])
def test_recipes_refuse_overflowing_rates_before_anything_changes(call):
    learn = make_learner()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"must be (at most 3.4e\+38|>= 1)"):
        call(learn)
    assert learn.train_iter == 0 and len(learn.recorder.batch_rows) == 0
    for k, v in before.items():
        assert torch.equal(learn.model.state_dict()[k], v)
