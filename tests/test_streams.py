"""Streams: training and inference on loaders without a len() (issue 23.5)."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from cyclr import DataLoaders, Learner


class Stream(IterableDataset):
    """Endless (or `n_batches`-long) pairs x (5 features) -> y (2 outputs), drawn from a seeded generator."""

    def __init__(self, seed=0, n=None):
        self.seed, self.n = seed, n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(5, 2, generator=g)
        i = 0
        while self.n is None or i < self.n:
            x = torch.randn(5, generator=g)
            yield x, x @ w
            i += 1


def stream_learner(train_n=None, valid_n=24, **kwargs):
    torch.manual_seed(0)
    dls = DataLoaders(DataLoader(Stream(1, train_n), batch_size=6), DataLoader(Stream(2, valid_n), batch_size=6))
    return Learner(nn.Linear(5, 2), dls, nn.MSELoss(), progress=False, **kwargs)


def test_repr_validate_and_get_preds_on_streams():
    learn = stream_learner(train_n=30)
    assert "data=(train=? batches, valid=? batches)" in repr(learn)
    assert set(learn.validate()) == {"valid_loss"}
    preds, targets = learn.get_preds()
    assert preds.shape == (24, 2) and targets.shape == (24, 2)


def test_a_constant_rate_fit_runs_each_epoch_to_the_end_of_a_finite_stream():
    learn = stream_learner(train_n=30)  # 5 batches of 6
    learn.fit(2, lr=1e-2)
    assert learn.train_iter == 10 and learn.n_train_iters == 0
    assert len(learn.recorder.to_df("epochs")) == 2


def test_a_scheduled_fit_on_a_stream_needs_steps_per_epoch():
    learn = stream_learner()  # endless
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"no len\(\) \(a stream: DataLoader\).*OneCycleCallback.*steps_per_epoch=N"):
        learn.fit_one_cycle(2, 1e-2)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


def test_steps_per_epoch_draws_that_many_batches_of_an_endless_stream_and_completes_the_schedule():
    from cyclr import OneCycleCallback

    learn = stream_learner()
    learn.fit(3, cbs=[OneCycleCallback(2e-2)], steps_per_epoch=4)
    assert learn.train_iter == 12 and learn.n_train_iters == 12
    batches = learn.recorder.to_df("batches")
    assert batches["pct"].tolist() == pytest.approx([i / 12 for i in range(12)])  # the whole schedule, to its end
    lrs = batches["lr"].tolist()
    assert max(lrs) == pytest.approx(2e-2, rel=0.01) and lrs[-1] < 2e-2 / 25


def test_the_pre_flight_does_not_swallow_the_first_batch_of_a_one_shot_stream():
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(3, 5, generator=g), torch.randn(3, 2, generator=g)) for _ in range(7)]
    seen = []

    def one_shot():
        for b in batches:
            seen.append(b)
            yield b

    torch.manual_seed(0)
    learn = Learner(nn.Linear(5, 2), DataLoaders(one_shot(), None), nn.MSELoss(), progress=False)
    learn.fit(1, lr=1e-2)
    assert learn.train_iter == 7 and len(seen) == 7  # all seven trained on, the first one included


def test_steps_per_epoch_is_for_streams_only():
    learn = stream_learner()
    learn.dls.train = DataLoader(list(zip(torch.randn(12, 5), torch.randn(12, 2), strict=True)), batch_size=4)
    with pytest.raises(ValueError, match=r"steps_per_epoch=2 is for a training loader without a len\(\).*len\(\) 3"):
        learn.fit(1, steps_per_epoch=2)


def test_progress_bars_on_a_stream(capsys):
    from cyclr import ProgressCallback

    learn = stream_learner(train_n=12, cbs=[ProgressCallback(show_bars=True)])  # as in a terminal or a notebook
    learn.fit(1, lr=1e-2)  # no length: the table only
    learn.dls.train.dataset.n = None
    learn.fit(1, lr=1e-2, steps_per_epoch=3)  # a bar of 3
    assert learn.train_iter == 3 and "valid_loss" in capsys.readouterr().out


def test_get_preds_on_a_one_shot_stream_keeps_the_batch_drawn_to_learn_its_shapes():
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(4, 5, generator=g), torch.randn(4, 2, generator=g)) for _ in range(3)]
    stream = iter(batches)
    learn = Learner(nn.Linear(5, 2), DataLoaders(stream, None), nn.MSELoss(), progress=False)
    preds, targets = learn.get_preds(dl=stream)  # the shapes come from the training loader: this same stream
    assert preds.shape == (12, 2) and torch.equal(targets, torch.cat([y for _, y in batches]))
