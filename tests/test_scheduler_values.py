"""ParamScheduler reads the values its whole-fit check computed for schedule objects, instead of evaluating them
again per batch: the values written must be exactly those a per-batch evaluation gives, from the resume point on,
on every unit; a user's own callable is still called as each batch runs; a fit longer than the cache evaluates."""

import pytest
import torch
from torch import nn

from cyclr import Callback, Learner, ParamScheduler, cosine, one_cycle, synthetic_regression, triangular
from cyclr.callbacks import scheduler as scheduler_module


class Written(Callback):
    """Every group's lr and momentum as the step sees them."""

    order = 100

    def __init__(self):
        self.rows = []

    def before_step(self, learn):
        self.rows.append([(g["lr"], g["betas"][0]) for g in learn.opt.param_groups])


def learner(cbs=(), seed=3):
    torch.manual_seed(seed)
    dls = synthetic_regression(n_train=7 * 12, n_valid=12, n_features=5, bs=12)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 1))
    splitter = lambda m: [list(m[0].parameters()), list(m[2].parameters())]  # noqa: E731
    return Learner(model, dls, nn.MSELoss(), splitter=splitter, progress=False, cbs=list(cbs))


def live(sched):
    """The same schedule behind a plain function: evaluated per batch."""
    return lambda pos: sched(pos)


@pytest.mark.parametrize("unit, scheds", [
    ("pct", one_cycle(0.02).scheds()),
    ("batch", {"lr": [triangular(1e-4, 3e-3, 5), cosine(0.01, 1e-4, 20)]}),
    ("epoch", {"lr": cosine(0.05, 0.001, 3)}),
])
def test_the_values_written_are_bitwise_those_a_per_batch_evaluation_gives(unit, scheds):
    def run(wrap):
        rec = Written()
        as_given = {name: [wrap(s) for s in v] if isinstance(v, list) else wrap(v) for name, v in scheds.items()}
        learn = learner([rec])
        learn.fit(3, cbs=[ParamScheduler(as_given, unit=unit)])
        return rec.rows, [p.detach().clone() for p in learn.model.parameters()]

    cached_rows, cached_weights = run(lambda s: s)
    live_rows, live_weights = run(live)
    assert len(cached_rows) == 21
    assert cached_rows == live_rows  # floats compared exactly
    assert all(torch.equal(a, b) for a, b in zip(cached_weights, live_weights, strict=True))
    assert len({row[0][0] for row in cached_rows}) > 2  # the rate did move


def test_a_resumed_fit_reads_from_the_checkpoints_position(tmp_path):
    rec_whole, rec_resumed = Written(), Written()
    learner([rec_whole]).fit_sgdr(2, 1, 0.03, cycle_mult=2)
    interrupted = learner()

    class StopAfter(Callback):
        order = 99

        def after_batch(self, learn):
            if learn.train_iter == 9:
                learn.save(tmp_path / "mid.pth")
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted.fit_sgdr(2, 1, 0.03, cycle_mult=2, cbs=[StopAfter()])
    learner([rec_resumed]).fit_sgdr(2, 1, 0.03, cycle_mult=2, resume=tmp_path / "mid.pth")
    assert len(rec_whole.rows) == 21 and rec_resumed.rows == rec_whole.rows[10:]


def test_a_users_callable_is_called_as_each_batch_runs():
    # A callable may read state that changes during the fit (here a value another callback sets): it is never
    # replaced by the values the check computed before the first step.
    box = {"lr": 0.01}

    class Halve(Callback):
        order = 99

        def after_batch(self, learn):
            box["lr"] /= 2

    rec = Written()
    learner([rec, Halve()]).fit(1, cbs=[ParamScheduler({"lr": lambda pos: box["lr"]})])
    assert [row[0][0] for row in rec.rows] == [0.01 / 2 ** i for i in range(7)]


def test_a_fit_longer_than_the_cache_evaluates_per_batch_with_the_same_values(monkeypatch):
    rec_cached, rec_long = Written(), Written()
    learner([rec_cached]).fit_one_cycle(2, 0.02)
    monkeypatch.setattr(scheduler_module, "CACHED_POSITIONS", 5)
    learn = learner([rec_long])
    learn.fit_one_cycle(2, 0.02)
    assert rec_long.rows == rec_cached.rows and len(rec_long.rows) == 14
