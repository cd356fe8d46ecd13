"""The LR finder: the sweep's rates and losses against closed forms and a replay, suggestions on curves whose answer
is known (synthetic shapes, and linear regression, where SGD diverges above 2 / lambda_max), and the promise that
`lr_find` leaves no trace: `lr_find(); fit()` is bitwise `fit()` alone, also after an exception or Ctrl-C."""

import copy
import math
import os
import random
import tempfile

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

from cyclr import (  # noqa: E402
    Callback,  # noqa: E402
    DataLoaders,  # noqa: E402
    Learner,
    LRFinderCallback,
    LRFinderResult,
    LRFinderSweep,
    accuracy,
    synthetic_classification,  # noqa: E402
)
from cyclr.callbacks.lr_suggest import (
    centred_smooth,
    suggest,
    suggest_minimum,
    suggest_slide,
    suggest_steep,
    suggest_valley,
)
from cyclr.callbacks.recorder import SmoothedValue  # noqa: E402


# ----- helpers ------------------------------------------------------------------------------------------------------
class BatchCounter(Callback):
    """State that changes every batch, saved by state_dict: the finder must put it back."""

    def __init__(self):
        self.n = 0

    def after_batch(self, learn):
        self.n += 1

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


class RandomDraws(Callback):
    """Draws from python's and numpy's global RNGs every batch: their states must come back too."""

    def __init__(self):
        self.draws = []

    def before_batch(self, learn):
        self.draws.append((random.random(), float(np.random.random())))

    def state_dict(self):
        return {"draws": list(self.draws)}

    def load_state_dict(self, state):
        self.draws = list(state["draws"])


class RaiseMidSweep(Callback):
    """Raises `exc` after the optimizer step of sweep iteration `at` (weights, momentum and BN stats have moved)."""

    order = 30

    def __init__(self, exc, at=7):
        self.exc, self.at, self.raised = exc, at, False

    def after_step(self, learn):
        sweeping = any(isinstance(cb, LRFinderCallback) for cb in learn.cbs)
        if sweeping and learn.train_iter == self.at:
            self.raised = True
            raise self.exc("raised mid-sweep")


class Capture(Callback):
    """What the optimizer really uses at each training step, read just before the step."""

    order = 40

    def __init__(self):
        self.lrs, self.wds, self.epochs, self.valid_batches = [], [], 0, 0

    def before_epoch(self, learn):
        self.epochs += 1

    def before_step(self, learn):
        self.lrs.append([g["lr"] for g in learn.opt.param_groups])
        self.wds.append([g["weight_decay"] for g in learn.opt.param_groups])

    def after_batch(self, learn):
        if not learn.training:
            self.valid_batches += 1


def classification_learner(opt="sgd", extra_cbs=()):
    """BatchNorm (buffers), Dropout (global torch RNG), shuffled data (loader generator), momentum or Adam state."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)  # 6 training batches per epoch
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt_func = {"sgd": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
                "adam": lambda p, lr: torch.optim.Adam(p, lr=lr)}[opt]
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=0.05 if opt == "sgd" else 3e-3,
                   metrics=[accuracy], cbs=list(extra_cbs), device="cpu", progress=False)


def state_of(learn):
    """Everything `lr_find` promises to leave alone, as comparable values (the epochs' wall time left out)."""
    return {
        "model": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in learn.model.parameters()],
        "training": [m.training for m in learn.model.modules()],
        "opt": None if learn.opt is None else copy.deepcopy(learn.opt.state_dict()),
        "batches": [dict(r) for r in learn.recorder.batch_rows],
        "epochs": [{k: v for k, v in r.items() if k != "time"} for r in learn.recorder.epoch_rows],
        "n_fits": learn.recorder.n_fits,
        "dls": copy.deepcopy(learn.dls.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state(),
        # The Recorder's state is its history, compared above without the wall times.
        "cbs": [(type(cb).__name__, copy.deepcopy(cb.state_dict())) for cb in learn.cbs if cb is not learn.recorder],
        "counters": (learn.epoch, learn.n_epoch, learn.iter, learn.train_iter, learn.n_train_iters, learn.training),
    }


def assert_identical(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def regression_dls(bs=64, n=64, shuffle=False):
    """y = X w + 0.3 + noise, features of different scales (so the Hessian has distinct eigenvalues)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.5])
    y = x @ torch.randn(4, 1, generator=g) + 0.3 + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoaders.from_tensors(x, y, bs=bs, shuffle=shuffle), x


def plain_sgd(params, lr):
    return torch.optim.SGD(params, lr=lr)


def regression_learner(bs=64, shuffle=False):
    dls, x = regression_dls(bs, shuffle=shuffle)
    torch.manual_seed(0)
    learn = Learner(nn.Linear(4, 1), dls, nn.MSELoss(), opt_func=plain_sgd, device="cpu", progress=False)
    return learn, x


def divergence_threshold(x):
    """Full-batch gradient descent on the mean squared error diverges above 2 / lambda_max of its Hessian."""
    a = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    return 2 / torch.linalg.eigvalsh(2 / len(x) * a.T @ a).max().item()


# ----- the finder leaves no trace -------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_lr_find_then_fit_is_bitwise_fit_alone(opt):
    ref = classification_learner(opt, [BatchCounter(), RandomDraws()])
    ref.fit(1)  # momentum buffers / Adam moments and BN statistics exist before the sweep
    before = state_of(ref)
    ref.fit(2)

    learn = classification_learner(opt, [BatchCounter(), RandomDraws()])
    learn.fit(1)
    result = learn.lr_find(num_it=20)
    assert len(result.lrs) >= 10  # the sweep really trained (20 iterations unless it diverged)
    assert_identical(state_of(learn), before)
    learn.fit(2)
    assert_identical(state_of(learn), state_of(ref))


def test_lr_find_before_the_first_fit_leaves_no_optimizer():
    ref = classification_learner()
    ref.fit(2)
    learn = classification_learner()
    learn.lr_find(num_it=20)
    assert learn.opt is None
    learn.fit(2)
    assert_identical(state_of(learn), state_of(ref))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_state_restored_after_an_exception_mid_sweep(exc):
    ref = classification_learner(extra_cbs=[BatchCounter(), RandomDraws()])
    ref.fit(1)
    before = state_of(ref)
    ref.fit(2)

    learn = classification_learner(extra_cbs=[BatchCounter(), RandomDraws()])
    learn.fit(1)
    raiser = RaiseMidSweep(exc)
    learn.add_cbs([raiser])
    with pytest.raises(exc, match="raised mid-sweep"):
        learn.lr_find(num_it=20)
    assert raiser.raised
    learn.remove_cbs([raiser])
    assert_identical(state_of(learn), before)
    learn.fit(2)
    assert_identical(state_of(learn), state_of(ref))


def test_weight_decay_sweep_restores_between_curves_and_after():
    ref = classification_learner()
    ref.fit(1)
    before = state_of(ref)
    capture = Capture()
    learn = classification_learner()
    learn.fit(1)
    learn.add_cbs([capture])
    sweep = learn.lr_find(num_it=12, end_lr=1.0, wds=[1e-1, 1e-3, 0.0])
    learn.remove_cbs([capture])
    assert isinstance(sweep, LRFinderSweep)
    assert sweep.wds == [1e-1, 1e-3, 0.0]
    assert all(isinstance(r, LRFinderResult) and r.wd == wd for wd, r in sweep.curves.items())
    # Each curve starts from the same weights and the same first batch, so their first losses agree exactly, and
    # the weight decay changes every later one.
    firsts = {r.losses[0] for r in sweep.curves.values()}
    assert len(firsts) == 1
    assert sweep[1e-1].losses[3] != sweep[0.0].losses[3]
    # What the optimizer used during each sweep: 12 steps at each wd (the last iteration takes no step).
    assert [w[0] for w in capture.wds] == [1e-1] * 11 + [1e-3] * 11 + [0.0] * 11
    assert sweep.best_wd in sweep.wds
    assert set(sweep.suggestions) == set(sweep.wds)
    assert_identical(state_of(learn), before)


def test_snapshot_goes_to_a_temporary_file_above_the_limit_and_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    class LookInTmp(Callback):
        def before_fit(self, learn):
            seen.append(sorted(os.listdir(tmp_path)))

    in_memory = classification_learner()
    in_memory.fit(1)
    expected = in_memory.lr_find(num_it=15)
    before = state_of(in_memory)

    learn = classification_learner(extra_cbs=[])
    learn.fit(1)
    looker = LookInTmp()
    learn.add_cbs([looker])
    on_disk = learn.lr_find(num_it=15, snapshot_memory_limit=0)
    learn.remove_cbs([looker])
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].startswith("cyclr-lr-find-")
    assert os.listdir(tmp_path) == []
    assert on_disk.losses == expected.losses and on_disk.lrs == expected.lrs
    assert_identical(state_of(learn), before)

    raiser = RaiseMidSweep(RuntimeError, at=3)
    learn.add_cbs([raiser])
    with pytest.raises(RuntimeError):
        learn.lr_find(num_it=15, snapshot_memory_limit=0)
    assert os.listdir(tmp_path) == []


# ----- the sweep ------------------------------------------------------------------------------------------------------
def test_losses_recorded_are_those_of_the_lrs_recorded():
    """Replay the sweep by hand: the loss of batch i, computed before the step at lrs[i], must be losses[i]."""
    learn, _ = regression_learner(bs=16, shuffle=True)  # 4 batches per epoch: the sweep spans 3 epochs
    start_weights = copy.deepcopy(learn.model)
    result = learn.lr_find(start_lr=1e-3, end_lr=0.2, num_it=10, stop_div=False)
    assert result.lrs == pytest.approx([1e-3 * 200 ** (i / 9) for i in range(10)], rel=1e-12)

    model = start_weights
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    # The loader's shuffling state was restored, so iterating it again gives the batches the sweep saw.
    batches = [b for _ in range(3) for b in learn.dls.train][:10]
    replayed = []
    for (xb, yb), lr in zip(batches, result.lrs, strict=True):
        loss = nn.functional.mse_loss(model(xb), yb)
        replayed.append(loss.item())
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert result.losses == pytest.approx(replayed, rel=1e-6)
    # Recording a loss with its neighbour's rate would be a different curve.
    assert result.losses[1:] != pytest.approx(replayed[:-1], rel=1e-3)


def test_gradient_accumulation_counts_optimizer_steps_not_micro_batches():
    """Under GradientAccumulation(2) each point of the curve is one optimizer step: its rate, and the mean loss of
    its two micro-batches (computed at that same rate, since the rate only moves between steps)."""
    from cyclr import GradientAccumulation

    class MicroLosses(Callback):
        order = 100

        def __init__(self):
            self.losses, self.lrs = [], []

        def after_loss(self, learn):
            if learn.training:
                self.losses.append(learn.loss.item())
                self.lrs.append(learn.opt.param_groups[0]["lr"])

    micro = MicroLosses()
    learn = classification_learner(extra_cbs=[GradientAccumulation(2), micro])  # 6 micro-batches: 3 steps/epoch
    result = learn.lr_find(start_lr=1e-4, end_lr=1e-2, num_it=5, stop_div=False)
    assert result.lrs == pytest.approx([1e-4 * 100 ** (i / 4) for i in range(5)], rel=1e-12)
    assert micro.lrs[:10] == pytest.approx([lr for lr in result.lrs for _ in range(2)], rel=1e-12)
    pairs = [(micro.losses[2 * i] + micro.losses[2 * i + 1]) / 2 for i in range(5)]
    assert result.losses == pytest.approx(pairs, rel=1e-6)


def test_linear_step_mode():
    learn, _ = regression_learner()
    result = learn.lr_find(start_lr=1e-3, end_lr=0.1, num_it=12, step_mode="linear", stop_div=False)
    assert result.lrs == pytest.approx([1e-3 + (0.1 - 1e-3) * i / 11 for i in range(12)], rel=1e-12)
    assert result.step_mode == "linear"
    assert result.plot_lr().axes[0].get_yscale() == "linear"


def test_multi_epoch_sweep_trains_only_and_spans_epochs():
    learn = classification_learner()
    capture = Capture()
    epoch_before = learn.dls.train.epoch
    result = learn.lr_find(start_lr=1e-4, end_lr=1e-2, num_it=20, stop_div=False, suggest_funcs=("valley",))
    assert len(result.lrs) == 20

    learn2 = classification_learner(extra_cbs=[capture])
    learn2.lr_find(start_lr=1e-4, end_lr=1e-2, num_it=20, stop_div=False)
    assert capture.epochs == 4  # 6 batches per epoch: 20 iterations need 4 epochs, the fit stops inside the 4th
    assert len(capture.lrs) == 19  # the 20th loss is recorded, its step skipped
    assert capture.valid_batches == 0
    assert learn.dls.train.epoch == epoch_before
    assert list(result.suggestions) == ["valley"]


def test_stop_div_stops_when_the_smoothed_loss_passes_4x_its_minimum():
    learn, x = regression_learner()
    threshold = divergence_threshold(x)
    end = 20 * threshold  # far enough above the threshold for the loss to blow up, finite within 60 steps
    stopped = learn.lr_find(start_lr=1e-3, end_lr=end, num_it=60, stop_div=True)
    assert len(stopped.lrs) < 60
    assert "diverged" in stopped.stop_reason
    assert stopped.smooth_losses[-1] > 4 * min(stopped.smooth_losses[:-1])
    assert all(s <= 4 * min(stopped.smooth_losses[:i + 1]) for i, s in enumerate(stopped.smooth_losses[:-1]))
    assert stopped.lrs[-1] > threshold

    full = learn.lr_find(start_lr=1e-3, end_lr=end, num_it=60, stop_div=False)
    assert len(full.lrs) == 60 and full.stop_reason == "completed 60 iterations"
    assert full.losses[:len(stopped.losses)] == stopped.losses  # same start, same sweep until the stop


def test_a_non_finite_loss_always_stops_the_sweep():
    learn, _ = regression_learner()
    result = learn.lr_find(start_lr=1e-3, end_lr=1e12, num_it=100, stop_div=False)
    assert len(result.lrs) < 100
    assert "non-finite" in result.stop_reason
    assert all(math.isfinite(v) for v in result.losses)
    assert all(math.isfinite(s.lr) and s.lr > 0 for s in result.suggestions.values())


def test_a_non_finite_first_loss_is_an_error_and_changes_nothing():
    x = torch.randn(32, 4)
    x[0, 0] = float("nan")
    dls = DataLoaders.from_tensors(x, torch.randn(32, 1), bs=32, shuffle=False)
    learn = Learner(nn.Linear(4, 1), dls, nn.MSELoss(), device="cpu", progress=False)
    weights = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match="first batch, before any step"):
        learn.lr_find(num_it=5)
    assert learn.opt is None
    assert_identical({k: v.clone() for k, v in learn.model.state_dict().items()}, weights)


def test_per_group_rates_keep_their_ratio():
    dls, _ = regression_dls(bs=16)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    learn = Learner(model, dls, nn.MSELoss(), opt_func=plain_sgd, device="cpu", progress=False,
                    splitter=lambda m: [list(m[0].parameters()), list(m[2].parameters())])
    learn.create_opt()
    learn.set_hyper("lr", 4e-3, group=0)  # the first group has the larger rate: it is the reference
    learn.set_hyper("lr", 1e-3, group=1)
    capture = Capture()
    learn.add_cbs([capture])
    result = learn.lr_find(start_lr=1e-5, end_lr=1e-1, num_it=15, stop_div=False)
    learn.remove_cbs([capture])
    assert result.reference_group == 0 and result.group_ratios == [1.0, 0.25]
    used = capture.lrs
    assert [g[0] for g in used] == result.lrs[:len(used)]
    assert [g[1] / g[0] for g in used] == pytest.approx([0.25] * len(used), rel=1e-12)
    assert [g[0] for g in used] == pytest.approx([1e-5 * 1e4 ** (i / 14) for i in range(len(used))], rel=1e-12)
    for s in result.suggestions.values():
        assert s.group_lrs == pytest.approx((s.lr, s.lr * 0.25))
    assert "ratios are [1, 0.25]" in result.group_note()
    assert [g["lr"] for g in learn.opt.param_groups] == [4e-3, 1e-3]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"start_lr": 1.0, "end_lr": 1.0}, ValueError, "start_lr must be smaller than end_lr"),
    ({"start_lr": 1e-2, "end_lr": 1e-3}, ValueError, "start_lr must be smaller than end_lr"),
    ({"start_lr": 0.0}, ValueError, "start_lr must be > 0"),
    ({"start_lr": -1e-3}, ValueError, "start_lr must be > 0"),
    ({"end_lr": float("inf")}, ValueError, "end_lr must be finite"),
    ({"start_lr": "1e-7"}, TypeError, "start_lr must be a real number"),
    ({"num_it": 1}, ValueError, "num_it must be an int >= 2"),
    ({"num_it": 10.0}, TypeError, "num_it must be an int >= 2"),
    ({"step_mode": "log"}, ValueError, "step_mode must be one of"),
    ({"suggest_funcs": ("valley", "steepest")}, ValueError, "unknown suggestion 'steepest'"),
    ({"suggest_funcs": ()}, ValueError, "suggest_funcs is empty"),
    ({"wds": []}, ValueError, "wds is empty"),
    ({"wds": [1e-2, -1e-3]}, ValueError, r"wds\[1\] must be a finite number >= 0"),
    ({"wds": 1e-2}, TypeError, "wds must be a list"),
    ({"stop_div": "yes"}, TypeError, "stop_div must be True or False"),
])
def test_bad_parameters_are_refused_before_anything_changes(kwargs, error, message):
    learn = classification_learner()
    before = state_of(learn)
    with pytest.raises(error, match=message):
        learn.lr_find(**kwargs)
    assert learn.opt is None
    assert learn.recorder.lr_find_result is None
    assert_identical(state_of(learn), before)


# ----- suggestions ----------------------------------------------------------------------------------------------------
def cosine_valley(n=100, noise=0.0, seed=0):
    """Flat at 2.3 up to lr 1e-5, a cosine fall to 0.3 at lr 1e-1 (the known best rate), then a quadratic rise
    (divergence). The steepest point of the fall is at lr 1e-3; it is 10% down at 10**-4.18, 90% down at
    10**-1.82."""
    x = np.linspace(-7, 1, n)
    fall = 0.3 + (1 + np.cos(np.pi * np.clip((x + 5) / 4, 0, 1)))
    y = np.where(x <= -1, fall, 0.3 + 2.0 * (x + 1) ** 2)
    y = y + noise * np.random.default_rng(seed).standard_normal(n)
    return list(10.0 ** x), list(y)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_suggestions_on_a_curve_with_a_known_answer(noise):
    lrs, losses = cosine_valley(noise=noise)
    out = suggest(lrs, losses)
    assert list(out) == ["valley", "steep", "minimum", "slide"]
    for s in out.values():
        assert 1e-5 <= s.lr <= 1e-1, s  # inside the descending part
        assert lrs[s.index] == pytest.approx(s.lr * (10 if s.name == "minimum" else 1))
        assert s.reason and "\n" not in s.reason
    # The closed-form positions (a grid step is 0.08 decade; the noisy curve gets a little more room).
    tol = 0.2 if noise == 0 else 0.35
    assert abs(math.log10(out["steep"].lr) - (-3.0)) < tol
    assert abs(math.log10(out["valley"].lr) - (-3.0)) < tol  # the middle of -4.18 .. -1.82
    assert abs(math.log10(out["slide"].lr) - (-1.82)) < tol
    assert abs(math.log10(out["minimum"].lr) - (-2.0)) < tol
    assert out["valley"].lr < out["slide"].lr


def test_each_suggestion_function_matches_suggest():
    lrs, losses = cosine_valley(noise=0.02)
    out = suggest(lrs, losses)
    for name, func in [("valley", suggest_valley), ("steep", suggest_steep), ("minimum", suggest_minimum),
                       ("slide", suggest_slide)]:
        single = func(lrs, losses)
        assert (single.lr, single.index, single.reason) == (out[name].lr, out[name].index, out[name].reason)


@pytest.mark.parametrize("shape", ["rising", "flat"])
def test_no_clear_descent_warns_and_still_suggests_a_rate(shape):
    lrs = list(np.logspace(-7, 1, 60))
    rng = np.random.default_rng(0)
    if shape == "rising":
        losses = list(1 + 0.1 * np.arange(60) + 0.01 * rng.standard_normal(60))
    else:
        losses = list(1 + 0.005 * rng.standard_normal(60))
    with pytest.warns(UserWarning, match="no clear descent"):
        out = suggest(lrs, losses)
    for s in out.values():
        assert math.isfinite(s.lr) and s.lr > 0
        assert "no clear descent" in s.reason and "minimum / 10" in s.reason
        assert s.lr == pytest.approx(lrs[s.index] / 10)


def test_a_curve_of_one_or_two_points_still_gives_finite_suggestions():
    for lrs, losses in [([1e-3], [1.0]), ([1e-3, 1e-2], [1.0, 0.5])]:
        with pytest.warns(UserWarning, match=f"only {len(lrs)} points? recorded"):
            out = suggest(lrs, losses)
        for s in out.values():
            assert s.lr == lrs[s.index] / 10 and s.lr > 0 and "fell back" in s.reason


def test_a_learner_with_nothing_to_learn_in_range_warns():
    learn, _ = regression_learner()
    with pytest.warns(UserWarning, match="no clear descent"):
        result = learn.lr_find(start_lr=1e-9, end_lr=1e-8, num_it=30)
    assert all(math.isfinite(s.lr) and s.lr > 0 for s in result.suggestions.values())


def test_centred_smoothing_has_no_lag_where_the_ema_does():
    # A step down at index 50: the centred curve is halfway at the step, the EMA is still far above it.
    losses = [1.0] * 50 + [0.0] * 50
    centred = centred_smooth(losses, half_width=3)
    assert centred[:44] == [1.0] * 44 and centred[56:] == [0.0] * 44
    assert centred[49] > 0.5 > centred[50]
    ema = SmoothedValue()  # the finder's own smoothing (`smooth_losses`)
    assert [ema.add(v) for v in losses][60] > 0.5


def test_suggestions_are_below_the_analytic_divergence_threshold():
    """Full-batch SGD on linear regression: stable iff lr < 2 / lambda_max. Below it each step lowers the loss;
    the sweep must diverge past it; every suggestion must lie below it, in the descending part."""
    learn, x = regression_learner()
    threshold = divergence_threshold(x)
    result = learn.lr_find()  # 1 batch per epoch: 100 epochs
    assert "diverged" in result.stop_reason and result.lrs[-1] > threshold
    for i in range(len(result.losses) - 1):
        if result.lrs[i] < threshold:
            assert result.losses[i + 1] <= result.losses[i] * (1 + 1e-6), i
    for s in result.suggestions.values():
        assert threshold / 100 < s.lr < threshold, s
    # And the valley rate trains: the loss falls at every step.
    learn.fit(30, lr=result.suggestions["valley"].lr)
    losses = learn.recorder.losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0] / 2


def test_a_callback_that_sits_out_the_sweep_sees_none_of_it_and_is_put_back():
    class SeesEveryEvent(Callback):
        sits_out_lr_find = True

        def __init__(self):
            self.events = []

        def before_fit(self, learn):
            self.events.append("before_fit")

        def before_batch(self, learn):
            self.events.append("before_batch")

        def after_fit(self, learn):
            self.events.append("after_fit")

    sitting_out, counter = SeesEveryEvent(), BatchCounter()
    learn = classification_learner(extra_cbs=[sitting_out, counter])
    assert not Callback.sits_out_lr_find and not Callback.writes_files  # declared, off, on the base
    learn.lr_find(num_it=15)
    assert sitting_out.events == [] and sitting_out in learn.cbs
    learn.fit(1)
    n_batches = len(learn.dls.train) + len(learn.dls.valid)
    assert sitting_out.events == ["before_fit", *["before_batch"] * n_batches, "after_fit"]
    assert counter.n == n_batches  # it saw the sweep's 15 batches, which were then put back (it does not sit out)


# ----- plots ----------------------------------------------------------------------------------------------------------
def test_plots_log_axis_suggestions_and_the_fastai_07_names():
    learn = classification_learner()
    with pytest.raises(RuntimeError, match="run learn.lr_find"):
        learn.recorder.plot_lr_find()
    with pytest.raises(RuntimeError, match="run learn.lr_find"):
        learn.sched.plot()
    result = learn.lr_find(num_it=30, show_plot=True)
    assert learn.recorder.lr_find_result is result and learn.sched is result
    for fig in (result.plot(), learn.recorder.plot_lr_find(), learn.sched.plot()):
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        for name, s in result.suggestions.items():
            assert f"{name}: {s.lr:.2e}" in labels
    ax = learn.sched.plot_lr().axes[0]
    assert list(ax.lines[0].get_ydata()) == result.lrs
    assert ax.get_yscale() == "log"


def test_weight_decay_sweep_plot_has_one_curve_per_value():
    learn = classification_learner()
    sweep = learn.lr_find(num_it=12, wds=[1e-2, 0.0])
    ax = learn.recorder.plot_lr_find().axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "wd=0.01" in labels and "wd=0" in labels
    assert ax.get_xscale() == "log"
    assert learn.sched is sweep and learn.sched.plot().axes[0].get_legend() is not None
    assert "wd=0.01" in repr(sweep)


# ----- real data ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lenet_fashion_mnist_valley_one_cycle_reaches_087():
    from cyclr import fashion_mnist, lenet

    torch.manual_seed(0)
    dls = fashion_mnist(bs=128, seed=0)
    learn = Learner(lenet(), dls, nn.CrossEntropyLoss(), metrics=[accuracy], device="cpu", progress=False)
    result = learn.lr_find()
    valley = result.suggestions["valley"].lr
    assert "no clear descent" not in result.suggestions["valley"].reason
    learn.fit_one_cycle(3, valley)
    acc = learn.recorder.epoch_rows[-1]["accuracy"]
    print(f"LeNet / Fashion-MNIST: valley lr {valley:.4g}, test accuracy after fit_one_cycle(3) {acc:.4f}")
    assert acc >= 0.87


@pytest.mark.slow
@pytest.mark.parametrize("max_lr", [None, 0.05])
def test_demo_finds_the_rate_then_trains_one_cycle_and_writes_everything(tmp_path, capsys, max_lr):
    import pandas as pd

    from cyclr.learner.cli import main

    argv = ["demo", "--epochs", "1", "--n-train", "1024", "--n-valid", "256", "--num-it", "30", "--out", str(tmp_path)]
    assert main(argv + ([] if max_lr is None else ["--max-lr", str(max_lr)])) == 0
    written = set(os.listdir(tmp_path))
    assert {"lr_find.png", "lr_find.csv", "history_batches.csv", "history_epochs.csv", "loss.png", "schedule.png",
            "metrics.png"} <= written
    curve = pd.read_csv(tmp_path / "lr_find.csv")
    assert len(curve) <= 30 and list(curve.columns[:4]) == ["lr", "loss", "smooth_loss", "centred_loss"]
    valley = curve.loc[curve["suggestion"].fillna("").str.contains("valley"), "lr"].item()
    expected = valley if max_lr is None else max_lr
    # The one cycle peaks at max_lr (its warm-up ends between two batches, so a batch gets close, not exact).
    peak = pd.read_csv(tmp_path / "history_batches.csv")["lr"].max()
    assert 0.8 * expected < peak <= expected * (1 + 1e-9)
    out = capsys.readouterr().out
    assert f"max_lr={expected:.4g}" in out
    assert ("--max-lr" if max_lr is not None else "the valley suggestion") in out
