"""The hot path and the speed options: what the fit loop adds to a plain loop (nothing numerical, no host sync per
batch), `channels_last` and `compile`."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from cyclr import (
    Callback,
    DataLoaders,
    InMemoryLoader,
    Learner,
    ProgressCallback,
    TerminateOnNaNCallback,
    accuracy,
    sgd,
)
from cyclr.callbacks import training

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_overhead_module():
    spec = importlib.util.spec_from_file_location("overhead_benchmark", BENCHMARKS / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_data(n_train=32, n_valid=16, seed=0, channels=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_valid, channels, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def small_cnn(channels=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 2))


def loaders(x, y, xv, yv, bs):
    return DataLoaders(InMemoryLoader(x, y, bs, shuffle=True, seed=3), InMemoryLoader(xv, yv, bs))


def test_learner_fit_matches_the_plain_loop_of_the_overhead_benchmark():
    # The benchmark compares the same work: same batches, same steps, hence the same weights and numbers.
    overhead = load_overhead_module()
    x, y, xv, yv = image_data()
    initial = small_cnn()
    plain_model = copy.deepcopy(initial)
    opt = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    plain_dls = loaders(x, y, xv, yv, bs=8)
    learn = Learner(copy.deepcopy(initial), loaders(x, y, xv, yv, bs=8), nn.CrossEntropyLoss(), opt_func=sgd, lr=0.1,
                    metrics=[accuracy], device="cpu", progress=False)
    for _ in range(2):
        plain = overhead.plain_epoch(plain_model, opt, nn.CrossEntropyLoss(), plain_dls.train, plain_dls.valid)
        learn.fit(1)
        row = learn.recorder.epoch_rows[-1]
        assert row["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-5)
        assert row["valid_loss"] == pytest.approx(plain["valid_loss"], rel=1e-5)
        assert row["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-9)
    for p_learn, p_plain in zip(learn.model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p_learn, p_plain)


class CountHostReads:
    """Counts reads of tensor values on the host (`item`, `tolist`, `bool`, `float`, `int`) while active."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, original):
        def wrapper(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return wrapper


def host_reads_in_one_epoch(monkeypatch, n_batches: int) -> int:
    x, y, xv, yv = image_data(n_train=4 * n_batches, n_valid=8)
    learn = Learner(small_cnn(), loaders(x, y, xv, yv, bs=4), nn.CrossEntropyLoss(), opt_func=sgd, lr=0.1,
                    metrics=[accuracy],
                    device="cpu", progress=False, cbs=[ProgressCallback(show_bars=True)])
    # TerminateOnNaN reads the loss on purpose (to stop before a NaN step); everything else must not.
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, TerminateOnNaNCallback)])
    learn.fit(1)  # warm-up: first-fit checks may read values once
    with monkeypatch.context() as patch:
        counter = CountHostReads(patch)
        learn.fit(1)
    return counter.count


def test_recorder_and_progress_read_no_value_per_batch(monkeypatch, capsys):
    few, many = host_reads_in_one_epoch(monkeypatch, 3), host_reads_in_one_epoch(monkeypatch, 12)
    assert few == many  # the same host reads per epoch whatever the number of batches: none per batch
    assert few <= 8  # and only a handful in all: the epoch's losses, valid loss and metrics, the shape check


def test_channels_last_puts_weights_and_batches_in_nhwc_and_trains_the_same():
    # Three channels: with one, NCHW and NHWC are the same layout and the checks below would pass vacuously.
    x, y, xv, yv = image_data(channels=3)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    seen = []

    class Layout(Callback):
        def after_pred(self, learn):
            seen.append(learn.xb.is_contiguous(memory_format=torch.channels_last))

    plain = Learner(small_cnn(3), loaders(x, y, xv, yv, bs=8), nn.CrossEntropyLoss(), lr=0.1, device="cpu",
                    progress=False)
    fast = Learner(small_cnn(3), loaders(x, y, xv, yv, bs=8), nn.CrossEntropyLoss(), lr=0.1, device="cpu",
                   progress=False, channels_last=True, cbs=[Layout()])
    assert fast.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain.fit(1)
    fast.fit(1)
    assert seen and all(seen)
    torch.testing.assert_close(fast.recorder.losses, plain.recorder.losses, rtol=1e-5, atol=1e-6)


def test_compile_runs_the_compiled_wrapper_and_keeps_the_plain_module(monkeypatch):
    calls = []
    real_compile = torch.compile

    def recording_compile(model, **kwargs):
        calls.append(kwargs)
        return real_compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    x, y, xv, yv = image_data()
    model = small_cnn()
    keys = list(model.state_dict())
    # backend='eager' traces with dynamo but generates no code: quick, and on the CPU exactly the uncompiled numbers.
    with pytest.warns(UserWarning, match="compile=True on the CPU.*1.68x slower"):
        learn = Learner(model, loaders(x, y, xv, yv, bs=8), nn.CrossEntropyLoss(), lr=0.1, device="cpu",
                        progress=False, compile={"backend": "eager"})
    reference = Learner(small_cnn(), loaders(x, y, xv, yv, bs=8), nn.CrossEntropyLoss(), lr=0.1, device="cpu",
                        progress=False)
    learn.fit(1)
    reference.fit(1)
    assert calls == [{"backend": "eager"}]  # compiled once, with the options given
    assert learn.model is model and list(learn.model.state_dict()) == keys
    assert learn._model_to_run()._orig_mod is model
    torch.testing.assert_close(learn.recorder.losses, reference.recorder.losses, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channels_last": 1}, TypeError, "channels_last must be True or False"),
        ({"compile": "max-autotune"}, TypeError, "compile must be True, False or a dict"),
        ({"compile": {"mod": "max-autotune"}}, ValueError, r"unknown torch.compile arguments \['mod'\]"),
    ],
)
def test_bad_speed_options_are_refused_at_construction(kwargs, error, match):
    x, y, xv, yv = image_data()
    with pytest.raises(error, match=match):
        Learner(small_cnn(), loaders(x, y, xv, yv, bs=8), nn.CrossEntropyLoss(), device="cpu", **kwargs)


# ----- the NaN guard's per-step test ------------------------------------------------------------------------------
def guard_verdict(tensors) -> bool:
    """Whether TerminateOnNaNCallback's test of [loss, *grads] finds a non-finite value."""
    guard = TerminateOnNaNCallback()
    return bool(guard.non_finite(list(tensors)).item())


@pytest.mark.parametrize("where", [0, 1, 4])  # the loss, a first gradient, the last one
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_guard_finds_any_non_finite_value_and_changes_no_bit(where, bad):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.tensor(1.5)] + [torch.randn(*shape, generator=g) for shape in ((4, 3), (3,), (5, 2, 2), (1,))]
    tensors[2][1] = torch.finfo(torch.float32).tiny / 4  # a subnormal: multiplied by exactly 1.0, it stays
    before = [t.clone() for t in tensors]
    assert not guard_verdict(tensors)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before, strict=True))
    tensors[where].view(-1)[-1] = bad
    assert guard_verdict(tensors)


def test_nan_guard_tests_gradients_of_several_dtypes():
    loss, grads = torch.tensor(0.5), [torch.ones(3), torch.ones(2, dtype=torch.bfloat16), torch.ones(2, 2)]
    assert not guard_verdict([loss, *grads])
    grads[1][0] = float("nan")  # only the bfloat16 gradient
    assert guard_verdict([loss, *grads])


def test_nan_guard_falls_back_when_the_fused_test_cannot_run(monkeypatch):
    def refuses(tensors, found, inv_scale):
        raise RuntimeError("expected all tensors to be on the same device")

    monkeypatch.setattr(training, "FUSED_NON_FINITE_TEST", refuses)
    loss, grads = torch.tensor(0.5), [torch.ones(3), torch.ones(2, 2)]
    assert not guard_verdict([loss, *grads])
    grads[1][1, 1] = float("inf")
    assert guard_verdict([loss, *grads])


def test_nan_guard_reads_one_value_per_step(monkeypatch):
    x, y, xv, yv = image_data(n_train=4 * 6, n_valid=8)
    learn = Learner(small_cnn(), loaders(x, y, xv, yv, bs=4), nn.CrossEntropyLoss(), opt_func=sgd, lr=0.1,
                    device="cpu", progress=False)
    learn.fit(1)
    with monkeypatch.context() as patch:
        counter = CountHostReads(patch)
        learn.fit(1)
    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, TerminateOnNaNCallback)])
    with monkeypatch.context() as patch:
        without = CountHostReads(patch)
        learn.fit(1)
    assert counter.count - without.count == 6  # one read per step, loss and every gradient in it
