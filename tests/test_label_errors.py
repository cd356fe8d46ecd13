"""A label out of range in a later batch, which the pre-flight (first batch only) cannot see: the loss's own error is
re-raised, same type, chained, with a message that names the batch, the targets' range and the model's classes."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cyclr import DataLoaders, Learner

N_CLASSES, BS, N_BATCHES = 10, 16, 4


def loader(bad_batch=None, bad_label=12):
    """A torch DataLoader (no `.y`: the pre-flight sees its first batch only) of 4 batches, all labels in 0..9 but
    one sample of `bad_batch`."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BS * N_BATCHES, 8, generator=generator)
    y = torch.randint(0, N_CLASSES, (BS * N_BATCHES,), generator=generator)
    if bad_batch is not None:
        y[bad_batch * BS + 5] = bad_label
    return DataLoader(TensorDataset(x, y), batch_size=BS, shuffle=False)


def make_learner(train=None, valid=None, loss_func=None):
    torch.manual_seed(0)
    dls = DataLoaders(train if train is not None else loader(), valid if valid is not None else loader())
    return Learner(nn.Linear(8, N_CLASSES), dls, loss_func or nn.CrossEntropyLoss(), opt_func=torch.optim.SGD,
                   lr=0.1, device="cpu", progress=False)


def test_a_bad_label_in_the_third_training_batch_names_the_batch_and_the_range():
    learn = make_learner(train=loader(bad_batch=2))
    with pytest.raises(IndexError) as caught:
        learn.fit(1)
    message = str(caught.value)
    assert message.startswith("computing the loss failed on training batch 2 (of 4) in epoch 0 "
                              "(IndexError: Target 12 is out of bounds.)")
    assert f"its targets: tensor of shape ({BS},) (torch.int64), values 0..12" in message
    assert f"the model's output: tensor of shape ({BS}, {N_CLASSES}) (torch.float32)" in message
    assert "The targets range 0..12 but the model outputs 10 classes: class labels must lie in 0..9" in message
    assert "give the model's last layer 13 outputs" in message
    assert "pre-flight check before the fit ran only the first batch" in message
    assert isinstance(caught.value.__cause__, IndexError)
    assert str(caught.value.__cause__) == "Target 12 is out of bounds."
    assert learn.train_iter == 2  # the two good batches were trained on


def test_a_negative_label_is_named_too():
    learn = make_learner(train=loader(bad_batch=1, bad_label=-3))
    with pytest.raises(IndexError, match=r"training batch 1 \(of 4\) in epoch 0 .*The targets range -3\.\.8 but the "
                                         r"model outputs 10 classes: class labels must lie in 0\.\.9: fix the labels "
                                         r"in the data\. The pre-flight"):
        learn.fit(1)


def test_a_bad_label_in_the_third_validation_batch_names_the_phase():
    learn = make_learner(valid=loader(bad_batch=2))
    with pytest.raises(IndexError, match=r"^computing the loss failed on validation batch 2 \(of 4\) in epoch 0 "
                                         r"\(IndexError: Target 12 is out of bounds\.\).*values 0\.\.12") as caught:
        learn.fit(1)
    assert isinstance(caught.value.__cause__, IndexError)
    assert learn.train_iter == N_BATCHES  # the training epoch was done

    outside_fit = make_learner(valid=loader(bad_batch=3))
    with pytest.raises(IndexError, match=r"^computing the loss failed on validation batch 3 \(of 4\) \(IndexError"):
        outside_fit.validate()


def test_the_first_batch_is_still_the_pre_flights_with_every_label_of_it():
    # Sample 5 of the first batch: the pre-flight runs the model on two samples but checks the whole batch's labels.
    learn = make_learner(train=loader(bad_batch=0))
    before = copy.deepcopy(learn.model.state_dict())
    with pytest.raises(ValueError, match=r"labels range over \[0, 12\] but the model outputs 10 classes"):
        learn.fit(1)
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())


def test_a_loss_failing_in_the_pre_flight_keeps_the_pre_flights_message():
    def always_fails(pred, yb):
        raise ValueError("boom")

    learn = make_learner(loss_func=always_fails)
    with pytest.raises(ValueError, match=r"^loss_func failed on the model output of shape \(16, 10\) and targets "
                                         r"of shape \(16,\) of a training batch: boom$"):
        learn.fit(1)


class NeedsTwoArguments(Exception):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")


def test_other_loss_failures_keep_their_type_or_become_runtime_errors():
    calls = []

    def fails_on_batch(exception):
        def loss_func(pred, yb):
            calls.append(len(calls))
            if len(calls) == 4:  # pre-flight: training and validation batches; then batch 1 of the loop
                raise exception
            return nn.functional.cross_entropy(pred, yb)
        return loss_func

    learn = make_learner(loss_func=fails_on_batch(ValueError("shapes do not match")))
    with pytest.raises(ValueError, match=r"^computing the loss failed on training batch 1 \(of 4\) in epoch 0 "
                                         r"\(ValueError: shapes do not match\).*Check this batch's targets"):
        learn.fit(1)

    calls.clear()
    original = NeedsTwoArguments(7, "custom")
    learn = make_learner(loss_func=fails_on_batch(original))
    with pytest.raises(RuntimeError, match=r"training batch 1 \(of 4\) in epoch 0 \(NeedsTwoArguments: 7: custom\)"
                       ) as caught:
        learn.fit(1)
    assert caught.value.__cause__ is original


def test_a_good_run_is_unchanged():
    learn = make_learner()
    model = copy.deepcopy(learn.model)
    learn.fit(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for xb, yb in loader():
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in learn.model.state_dict().items())
