"""The standard training callbacks against hand-computed expectations: early stopping, ReduceLROnPlateau (with a
constant schedule, no schedule and one-cycle), TerminateOnNaN, GradientClip, GradientAccumulation, CSVLogger,
SaveModelCallback, MixedPrecision; and a KeyboardInterrupt during fit or lr_find leaves a usable learner."""

import copy
import csv
import logging
import math

import pytest
import torch
from helpers import UsedHypers
from torch import nn

from cyclr import (
    Callback,
    Const,
    CSVLogger,
    DataLoaders,
    EarlyStoppingCallback,
    GradientAccumulation,
    GradientClip,
    Learner,
    LRFinderCallback,
    MixedPrecision,
    OneCycleCallback,
    ParamScheduler,
    ProgressCallback,
    ReduceLROnPlateau,
    SaveModelCallback,
    TerminateOnNaNCallback,
    accuracy,
    sgd,
    synthetic_classification,
)
from cyclr.learner.checkpoint_files import read_checkpoint

BATCHES = 6  # training batches per epoch of make_learner's data


def make_learner(cbs=(), bs=8, **kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=48, n_valid=16, bs=bs, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    kwargs.setdefault("progress", False)
    kwargs.setdefault("opt_func", sgd)
    return Learner(model, dls, nn.CrossEntropyLoss(), lr=0.1, metrics=[accuracy], cbs=list(cbs), device="cpu",
                   **kwargs)


class Script(Callback):
    """Replaces the recorded value of `name` at each epoch's end with a scripted one (after the Recorder's row is
    written, before the monitors read it)."""

    order = 52

    def __init__(self, values, column="valid_loss"):
        self.values, self.column = values, column

    def after_epoch(self, learn):
        learn.recorder.epoch_rows[-1][self.column] = self.values[learn.epoch]


class WeightsAfterEachStep(Callback):
    order = 95

    def __init__(self):
        self.weights = []

    def after_step(self, learn):
        self.weights.append([p.detach().clone() for p in learn.model.parameters()])


def weights(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ----- EarlyStoppingCallback ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("values", "kwargs", "epochs_run", "best_epoch"), [
    # patience 2: 0.85 and 0.9 do not beat 0.8 -> stop after epoch 3
    ([1.0, 0.8, 0.85, 0.9, 0.7, 0.6], {"patience": 2}, 4, 1),
    # min_delta 0.15: 0.9 is not better than 1.0 - 0.15, 0.8 is; then 0.75 and 0.7 are not better than 0.65
    ([1.0, 0.9, 0.8, 0.75, 0.7, 0.1], {"patience": 2, "min_delta": 0.15}, 5, 2),
    # a metric improves upwards ('auto' mode for a name without 'loss' or 'error')
    ([0.5, 0.6, 0.55, 0.58, 0.9, 0.9], {"patience": 2, "monitor": "accuracy"}, 4, 1),
    # never two epochs in a row without improvement: runs to the end
    ([1.0, 1.1, 0.9, 1.0, 0.8, 0.85], {"patience": 2}, 6, 4),
])
def test_early_stopping(values, kwargs, epochs_run, best_epoch, caplog):
    stop = EarlyStoppingCallback(**kwargs)
    learn = make_learner()
    with caplog.at_level(logging.INFO, logger="cyclr"):
        learn.fit(6, cbs=[Script(values, kwargs.get("monitor", "valid_loss")), stop])
    assert len(learn.recorder.epoch_rows) == epochs_run
    assert learn.train_iter == epochs_run * BATCHES
    assert stop.best_epoch == best_epoch
    assert stop.stopped_epoch == (epochs_run - 1 if epochs_run < 6 else None)
    if epochs_run < 6:
        assert f"stopping after epoch {epochs_run - 1}" in caplog.text


def test_a_monitor_that_is_not_recorded_is_refused_before_any_step():
    learn = make_learner()
    before = weights(learn)
    with pytest.raises(ValueError, match=r"monitor='acc' is not recorded; choose one of \['train_loss', 'valid_loss',"
                                         r" 'accuracy'\]"):
        learn.fit(2, cbs=[EarlyStoppingCallback(monitor="acc")])
    assert same(before, weights(learn))


# ----- ReduceLROnPlateau ----------------------------------------------------------------------------------------------
VALID = [1.0, 1.1, 1.2, 0.5, 0.6, 0.4]
# factor 0.5, patience 1: no improvement at the end of epochs 1, 2 and 4 -> scale per epoch:
SCALES = [1.0, 1.0, 0.5, 0.25, 0.25, 0.125]


@pytest.mark.parametrize("schedule", ["constant", "none"])
@pytest.mark.parametrize("min_lr", [0.0, 0.03])
def test_reduce_lr_on_plateau_with_a_constant_rate(schedule, min_lr):
    log = UsedHypers()
    plateau = ReduceLROnPlateau(factor=0.5, patience=1, min_lr=min_lr)
    cbs = [Script(VALID), plateau, log] + ([ParamScheduler({"lr": Const(0.1)})] if schedule == "constant" else [])
    learn = make_learner()
    learn.fit(6, cbs=cbs)
    expected = [max(0.1 * scale, min_lr) for scale in SCALES for _ in range(BATCHES)]
    assert log.column("lr") == expected
    assert learn.recorder.lrs == expected
    assert plateau.scale == 0.125  # reduced after the last epoch too
    assert learn.opt.param_groups[0]["lr"] == 0.1  # the scheduled rate is put back after every batch


def test_reduce_lr_on_plateau_scales_one_cycle_without_changing_its_shape():
    log = UsedHypers()
    learn = make_learner()
    learn.fit_one_cycle(6, 0.1, cbs=[Script(VALID), ReduceLROnPlateau(factor=0.5, patience=1), log])
    cycle = OneCycleCallback(0.1).one_cycle
    n = 6 * BATCHES
    assert log.column("lr") == [cycle.lr(i / n) * SCALES[i // BATCHES] for i in range(n)]
    assert log.column("mom") == [cycle.mom(i / n) for i in range(n)]


# ----- TerminateOnNaNCallback ---------------------------------------------------------------------------------------
class PoisonLoss(Callback):
    """Makes the loss of optimizer step `step` non-finite (before TerminateOnNaNCallback, order 2, tests it)."""

    order = 1

    def __init__(self, step, value):
        self.step, self.value = step, value

    def after_loss(self, learn):
        if learn.training and learn.train_iter == self.step:
            learn.loss = learn.loss * self.value


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("step", [0, 8])
def test_a_non_finite_loss_stops_the_fit_at_that_batch_with_the_last_good_weights(step, value):
    learn = make_learner()  # TerminateOnNaNCallback is one of the default callbacks
    assert any(isinstance(cb, TerminateOnNaNCallback) for cb in learn.cbs)
    initial = weights(learn)
    after_step = WeightsAfterEachStep()
    epoch, batch = divmod(step, BATCHES)
    with pytest.warns(RuntimeWarning, match=rf"the training loss is {value} at epoch {epoch}, batch {batch} "
                                            rf"\(optimizer step {step}\): the fit stopped before this batch's step"):
        learn.fit(3, cbs=[PoisonLoss(step, value), after_step])
    assert learn.train_iter == step and len(after_step.weights) == step
    assert same(weights(learn), after_step.weights[-1] if step else initial)
    assert [r["train_iter"] for r in learn.recorder.batch_rows] == list(range(step))  # rows up to the last good one
    assert all(math.isfinite(p.abs().sum().item()) for p in learn.model.parameters())
    learn.fit(1)  # still usable
    assert learn.train_iter == BATCHES


class PoisonMicroBatch(Callback):
    order = 1

    def __init__(self, batch):
        self.batch = batch

    def after_loss(self, learn):
        if learn.training and learn.epoch == 0 and learn.iter == self.batch:
            learn.loss = learn.loss * math.nan


@pytest.mark.parametrize("other", ["accumulation", "float16"])
def test_a_nan_is_caught_before_accumulation_or_the_loss_scaler_can_hide_it(other):
    # Batch 4 is the first micro-batch of step 2 with GradientAccumulation(2); with float16 the scaler would take
    # its NaN gradients for an overflow and skip the step.
    cb = GradientAccumulation(2) if other == "accumulation" else MixedPrecision(torch.float16)
    after_step, nan_stop = WeightsAfterEachStep(), TerminateOnNaNCallback()
    learn = make_learner(cbs=[cb])
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, TerminateOnNaNCallback)])
    learn.add_cbs([nan_stop])
    with pytest.warns(RuntimeWarning, match="at epoch 0, batch 4"):
        learn.fit(2, cbs=[PoisonMicroBatch(4), after_step])
    step = 2 if other == "accumulation" else 4
    assert nan_stop.stopped_at == (0, 4, step) and learn.train_iter == step
    assert same(weights(learn), after_step.weights[-1]) and len(after_step.weights) == step
    if other == "float16":
        assert cb.skipped_steps == 0


# ----- GradientClip --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("max_norm", "expected"), [(1.0, [0.6, 0.8]), (20.0, [6.0, 8.0])])
def test_gradient_clip_by_hand(max_norm, expected):
    # loss = (w.x - y)^2 with w = 0, x = (3, 4), y = 1: gradient 2 (w.x - y) x = (-6, -8), norm 10. One SGD step of
    # lr 1 moves w by the clipped gradient: to 0.1 * (6, 8) when clipped to norm 1, to (6, 8) when not clipped.
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    dls = DataLoaders.from_tensors(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0]]), bs=1)
    clip = GradientClip(max_norm)
    learn = Learner(model, dls, nn.MSELoss(), opt_func=sgd, lr=1.0, device="cpu", progress=False, cbs=[clip])
    learn.fit(1)
    assert clip.last_norm.item() == 10.0
    assert model.weight.detach().flatten().tolist() == pytest.approx(expected, rel=1e-6)  # torch adds 1e-6 to norm


# ----- GradientAccumulation -----------------------------------------------------------------------------------------
def accumulation_pair(n_batches, big_bs):
    """A learner on micro-batches of 4 accumulating `n_batches`, and one on batches of `big_bs`, same data/order."""
    torch.manual_seed(0)
    x, y = torch.randn(24, 5), torch.arange(24) % 3
    learners = []
    for bs, cbs in ((4, [GradientAccumulation(n_batches)]), (big_bs, [])):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        learners.append(Learner(model, DataLoaders.from_tensors(x, y, bs=bs, shuffle=False), nn.CrossEntropyLoss(),
                                opt_func=sgd, lr=0.1, cbs=cbs, device="cpu", progress=False))
    return learners


@pytest.mark.parametrize(("n_batches", "big_bs"), [(3, 12), (4, 16)])  # groups of 3+3, and of 4+2 micro-batches
def test_accumulated_steps_equal_steps_on_the_whole_group(n_batches, big_bs):
    micro, big = accumulation_pair(n_batches, big_bs)
    micro.fit(2)
    big.fit(2)
    for a, b in zip(micro.model.parameters(), big.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert micro.train_iter == big.train_iter == 4 and micro.n_train_iters == 4


class MicroLosses(Callback):
    order = 40

    def __init__(self):
        self.losses = []

    def after_loss(self, learn):
        if learn.training:
            self.losses.append(learn.loss.detach().clone())


def test_schedules_and_the_recorder_count_accumulated_steps_not_micro_batches():
    micro, _ = accumulation_pair(3, 12)
    log, losses = UsedHypers(), MicroLosses()
    micro.fit_one_cycle(2, 0.1, cbs=[log, losses])
    cycle = OneCycleCallback(0.1).one_cycle
    rows = micro.recorder.batch_rows
    assert [r["train_iter"] for r in rows] == [0, 1, 2, 3] and [r["pct"] for r in rows] == [0, 0.25, 0.5, 0.75]
    assert log.column("lr") == [cycle.lr(i / 4) for i in range(4)]
    # Each step's recorded loss is the mean of its 3 micro-batches' losses.
    groups = [torch.stack(losses.losses[3 * k:3 * k + 3]).mean().item() for k in range(4)]
    assert [r["loss"] for r in rows] == groups
    # The epoch's train_loss averages all micro-batches (equal sizes: the plain mean).
    assert micro.recorder.epoch_rows[0]["train_loss"] == pytest.approx(torch.stack(losses.losses[:6]).mean().item())


# ----- CSVLogger ------------------------------------------------------------------------------------------------------
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_logger_writes_the_epoch_table(tmp_path):
    path = tmp_path / "log.csv"
    learn = make_learner(cbs=[CSVLogger(path)])
    learn.fit(2)
    header, *rows = read_csv(path)
    assert header == list(learn.recorder.epoch_rows[0])
    assert [[float(v) for v in row] for row in rows] == [list(r.values()) for r in learn.recorder.epoch_rows]
    learn.fit(1)  # a new fit starts a new file
    assert len(read_csv(path)) == 2
    appending = make_learner(cbs=[CSVLogger(path, append=True)])
    appending.fit(2)
    assert len(read_csv(path)) == 4 and read_csv(path)[0] == header


# ----- SaveModelCallback ----------------------------------------------------------------------------------------------
class WeightsAtEpochEnd(Callback):
    order = 95

    def __init__(self):
        self.weights = []

    def after_epoch(self, learn):
        self.weights.append(copy.deepcopy(learn.model.state_dict()))


@pytest.mark.parametrize("load_best_at_end", [False, True])
def test_save_model_keeps_the_best_epoch(tmp_path, load_best_at_end):
    path = tmp_path / "best.pt"
    snapshots = WeightsAtEpochEnd()
    saver = SaveModelCallback(path, load_best_at_end=load_best_at_end)
    learn = make_learner()
    learn.fit(5, cbs=[Script([1.0, 0.7, 0.9, 0.6, 0.8]), saver, snapshots])
    assert saver.best_epoch == 3 and saver.best == 0.6
    ckpt = read_checkpoint(path)
    assert ckpt["progress"]["epoch"] == 4 and ckpt["progress"]["at"] == "epoch_end"  # taken after epoch 3
    assert all(torch.equal(v, snapshots.weights[3][k]) for k, v in ckpt["model"].items())
    final = learn.model.state_dict()
    assert all(torch.equal(v, snapshots.weights[3 if load_best_at_end else 4][k]) for k, v in final.items())


def test_save_model_every_epoch_keeps_one_file_per_epoch(tmp_path):
    snapshots = WeightsAtEpochEnd()
    learn = make_learner()
    learn.fit(3, cbs=[SaveModelCallback(tmp_path / "ckpt_{epoch}.pt", every_epoch=True), snapshots])
    history_file = f"cyclr-history-{learn.recorder.run_id}.bin"  # the batch history all three share
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_0.pt", "ckpt_1.pt", "ckpt_2.pt", history_file]
    per_epoch = len(learn.dls.train)
    for epoch in range(3):
        ckpt = read_checkpoint(tmp_path / f"ckpt_{epoch}.pt")
        assert all(torch.equal(v, snapshots.weights[epoch][k]) for k, v in ckpt["model"].items())
        assert len(ckpt["callbacks"]["Recorder_0"]["batch_history"]) == (epoch + 1) * per_epoch


def test_save_model_every_n_batches_saves_after_every_nth_step(tmp_path):
    path, saved = tmp_path / "c.pt", []

    class Watch(Callback):
        order = 99  # after SaveModelCallback (90)

        def after_batch(self, learn):
            self._take(learn)

        def after_epoch(self, learn):
            self._take(learn)

        def _take(self, learn):
            if path.exists():
                progress = read_checkpoint(path)["progress"]
                saved.append((progress["at"], progress["train_iter"]))
                path.unlink()

    make_learner().fit(2, cbs=[SaveModelCallback(path, every_epoch=True, every_n_batches=4), Watch()])
    # train_iter: optimizer steps done when it was taken; 6 steps per epoch
    assert saved == [("batch_end", 4), ("epoch_end", 6), ("batch_end", 8), ("batch_end", 12), ("epoch_end", 12)]


# ----- MixedPrecision -------------------------------------------------------------------------------------------------
class Dtypes(Callback):
    order = 80

    def __init__(self):
        self.pred, self.loss, self.autocast_at_step = set(), set(), set()

    def after_pred(self, learn):
        self.pred.add(learn.pred.dtype)

    def after_loss(self, learn):
        self.loss.add(learn.loss.dtype)

    def before_step(self, learn):
        self.autocast_at_step.add(torch.is_autocast_enabled("cpu"))


def test_bfloat16_autocast_on_the_cpu():
    dtypes = Dtypes()
    learn = make_learner(cbs=[MixedPrecision(torch.bfloat16)])
    learn.fit(2, cbs=[dtypes])
    assert dtypes.pred == {torch.bfloat16}  # forward (training and validation) under autocast
    assert dtypes.loss == {torch.float32}  # cross-entropy autocasts to float32
    assert dtypes.autocast_at_step == {False}  # backward and step outside autocast
    assert not torch.is_autocast_enabled("cpu")
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    rows = learn.recorder.epoch_rows
    assert rows[-1]["valid_loss"] < rows[0]["train_loss"] and rows[-1]["accuracy"] > 0.8  # it does learn


class InfGradient(Callback):
    """Puts an inf in a gradient at optimizer step `step`, before MixedPrecision (order 5) checks them."""

    order = 4

    def __init__(self, step):
        self.step, self.done = step, False

    def before_step(self, learn):
        if learn.train_iter == self.step and not self.done:
            self.done = True
            next(learn.model.parameters()).grad[0, 0] = math.inf


class WeightsAfterEachBatch(Callback):
    order = 95

    def __init__(self):
        self.weights = []

    def after_batch(self, learn):
        if learn.training:
            self.weights.append(weights(learn))


def test_float16_step_skipped_by_the_scaler_is_not_a_step():
    mp = MixedPrecision(torch.float16, init_scale=2.0**10)
    after_batch, log = WeightsAfterEachBatch(), UsedHypers()
    learn = make_learner(cbs=[mp])
    learn.fit_one_cycle(2, 0.1, cbs=[InfGradient(3), after_batch, log])
    assert mp.skipped_steps == 1 and mp.scaler.get_scale() == 2.0**9  # halved once
    assert same(after_batch.weights[3], after_batch.weights[2])  # batch 3 changed nothing
    assert not same(after_batch.weights[4], after_batch.weights[3])
    n = 2 * BATCHES
    assert learn.train_iter == n - 1 and [r["train_iter"] for r in log.rows] == list(range(n - 1))
    assert [r["train_iter"] for r in learn.recorder.batch_rows] == list(range(n - 1))  # not recorded
    cycle = OneCycleCallback(0.1).one_cycle
    assert log.column("lr") == [cycle.lr(i / n) for i in range(n - 1)]  # the schedule did not move at the skipped batch


# ----- KeyboardInterrupt ----------------------------------------------------------------------------------------------
class InterruptAt(Callback):
    order = 70

    def __init__(self, step, event="before_step"):
        self.step = step
        setattr(self, event, self._maybe_interrupt)

    def _maybe_interrupt(self, learn):
        if learn.training and learn.train_iter == self.step:
            raise KeyboardInterrupt


class GradsAtFirstBatch(Callback):
    def before_batch(self, learn):
        if learn.train_iter == 0 and not hasattr(self, "grads"):
            self.grads = [p.grad for p in learn.model.parameters()]


def assert_usable(learn, n_cbs):
    bar = learn.progress
    assert bar.master is None and bar.child is None  # progress bars closed
    assert len(learn.cbs) == n_cbs and not learn.training and not learn.in_fit
    assert not torch.is_autocast_enabled("cpu")
    assert all(p.device == learn.device for p in learn.model.parameters())
    assert learn.opt.param_groups[0]["lr"] == 0.1  # ReduceLROnPlateau's scaling undone
    probe = GradsAtFirstBatch()
    learn.fit(1, cbs=[probe])
    assert probe.grads == [None] * len(probe.grads)  # no gradient of the interrupted batch leaks into this fit
    assert learn.train_iter == BATCHES and len(learn.cbs) == n_cbs
    assert learn.recorder.lrs == [0.05] * BATCHES  # the halving still applies, once


class Halved(ReduceLROnPlateau):
    """As after one reduction: the rate is scaled by 0.5 during each batch."""

    def before_fit(self, learn):
        super().before_fit(learn)
        self.scale = 0.5


def interruptible_learner():
    return make_learner(cbs=[ProgressCallback(show_bars=True), MixedPrecision(torch.bfloat16), Halved()])


def test_keyboard_interrupt_during_fit_leaves_a_usable_learner():
    learn = interruptible_learner()
    n_cbs = len(learn.cbs)
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3, cbs=[InterruptAt(8), EarlyStoppingCallback()])
    assert any(p.grad is not None for p in learn.model.parameters())  # interrupted between backward and step
    assert_usable(learn, n_cbs)


def test_keyboard_interrupt_during_lr_find_leaves_a_usable_learner():
    learn = interruptible_learner()
    learn.fit(1)
    n_cbs = len(learn.cbs)
    before = weights(learn)

    class InterruptSweep(Callback):
        order = 70

        def after_loss(self, learn):
            if any(isinstance(cb, LRFinderCallback) for cb in learn.cbs) and learn.train_iter == 5:
                raise KeyboardInterrupt

    interrupt = InterruptSweep()
    learn.add_cbs([interrupt])
    with pytest.raises(KeyboardInterrupt):
        learn.lr_find(num_it=20)
    learn.remove_cbs([interrupt])
    assert not any(isinstance(cb, LRFinderCallback) for cb in learn.cbs)
    assert same(weights(learn), before)  # the finder puts the weights back
    assert_usable(learn, n_cbs)


# ----- bf16 on real data ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bfloat16_lenet_on_fashion_mnist_within_one_point_of_float32():
    from cyclr import fashion_mnist, lenet

    accuracies = {}
    for name, cbs in (("float32", []), ("bfloat16", [MixedPrecision(torch.bfloat16)])):
        torch.manual_seed(0)
        dls = fashion_mnist(bs=64, n_train=12_000, n_valid=10_000, seed=0, normalize=True)
        learn = Learner(lenet(), dls, nn.CrossEntropyLoss(), opt_func=torch.optim.AdamW, metrics=[accuracy],
                        device="cpu", progress=False, cbs=cbs)
        learn.fit_one_cycle(1, 3e-3)
        accuracies[name] = learn.recorder.epoch_rows[-1]["accuracy"]
    print(f"LeNet, 1 epoch on 12k Fashion-MNIST images, accuracy on the 10k test images: {accuracies}")
    assert accuracies["float32"] > 0.75  # it trained
    assert abs(accuracies["bfloat16"] - accuracies["float32"]) <= 0.01
