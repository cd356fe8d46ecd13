"""Streams, part two (issue 23.5 and 23.2): checkpoints and resume on a loader without a len(), the number of
inputs training learned kept in checkpoints, lr_find and the len()-reading callbacks on streams."""

import pytest
import torch
from test_checkpoint import Interrupt  # KeyboardInterrupt right after a given step, as the resume tests use
from test_preemption import SignalAt  # sends this process a signal at a given step, caught by the fit's handler
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from cyclr import CheckpointError, DataLoaders, Learner, OneCycleCallback, Preempted, SaveModelCallback
from cyclr.learner.checkpoint_files import checksum, read_checkpoint


class Waves(IterableDataset):
    """`n` samples x (6 features) -> y (3 outputs), the same ones on each pass (a seeded generator restarted by
    every iteration), so two runs over it see the same batches."""

    def __init__(self, n: int, seed: int = 0, length: bool = False):
        self.n, self.seed, self.length = n, seed, length

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(6, 3, generator=g)
        for _ in range(self.n):
            x = torch.randn(6, generator=g)
            yield x, torch.sin(x) @ w


class WavesWithLen(Waves):
    """The same stream with a `__len__`: torch's DataLoader then has a len(), but still cannot replay it."""

    def __len__(self):
        return self.n


def waves_learner(dataset=None, **kwargs):
    torch.manual_seed(3)
    dataset = Waves(40) if dataset is None else dataset
    dls = DataLoaders(DataLoader(dataset, batch_size=8), DataLoader(Waves(16, seed=9), batch_size=8))
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    return Learner(model, dls, nn.MSELoss(), lr=2e-2, progress=False, **kwargs)


def weights(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----- checkpoints and resume on a stream -----------------------------------------------------------------------------
def test_a_checkpoint_on_a_stream_records_steps_per_epoch_as_the_epoch_length(tmp_path):
    learn = waves_learner()
    save = SaveModelCallback(tmp_path / "w.pt", every_epoch=True)
    learn.fit(2, steps_per_epoch=4, cbs=[OneCycleCallback(5e-2), save])
    progress = read_checkpoint(tmp_path / "w.pt")["progress"]
    assert (progress["at"], progress["epoch"], progress["train_iter"]) == ("epoch_end", 2, 8)
    assert (progress["batches_per_epoch"], progress["n_train_iters"]) == (4, 8)


def test_a_constant_rate_fit_on_a_stream_without_steps_per_epoch_checkpoints_an_unplanned_length(tmp_path):
    learn = waves_learner(Waves(24))  # 3 batches an epoch, run to the stream's end
    learn.fit(2, cbs=[SaveModelCallback(tmp_path / "w.pt", every_epoch=True)])
    progress = read_checkpoint(tmp_path / "w.pt")["progress"]
    assert (progress["train_iter"], progress["batches_per_epoch"], progress["n_train_iters"]) == (6, 0, 0)


@pytest.mark.parametrize(("fit_args", "cbs"), [
    ({"steps_per_epoch": 5}, lambda: [OneCycleCallback(5e-2)]),  # a schedule over 5 batches an epoch
    ({}, list),  # a constant rate, each epoch run to the stream's end (5 batches of 8): no planned length
], ids=["one_cycle_steps_per_epoch", "constant_rate_unplanned"])
def test_resuming_a_stream_from_an_epoch_end_checkpoint_equals_the_uninterrupted_run(tmp_path, fit_args, cbs):
    def run(more, resume=None):
        learn = waves_learner(Waves(40))
        learn.fit(3, cbs=[*cbs(), *more], resume=resume, **fit_args)
        return learn

    full = run([])
    ckpt = tmp_path / "e.pt"
    with pytest.raises(KeyboardInterrupt):
        run([SaveModelCallback(ckpt, every_epoch=True), Interrupt(8)])  # epoch 1, batch 3; saved after epoch 0
    assert read_checkpoint(ckpt)["progress"]["train_iter"] == 5
    resumed = run([SaveModelCallback(ckpt, every_epoch=True)], resume=ckpt)
    assert resumed.train_iter == 15 and same(weights(resumed), weights(full))
    assert resumed.recorder.batch_rows == full.recorder.batch_rows  # loss, lr, mom of every step


@pytest.mark.parametrize("dataset", [Waves(40), WavesWithLen(40)], ids=["no_len", "iterable_dataset_with_len"])
def test_resuming_a_stream_mid_epoch_is_refused_before_any_step(tmp_path, dataset):
    ckpt = tmp_path / "b.pt"
    fit_args = {} if isinstance(dataset, WavesWithLen) else {"steps_per_epoch": 5}  # 5 batches an epoch
    with pytest.raises(KeyboardInterrupt):
        waves_learner(dataset).fit(2, cbs=[SaveModelCallback(ckpt, every_epoch=True, every_n_batches=2),
                                           Interrupt(7)], **fit_args)
    progress = read_checkpoint(ckpt)["progress"]
    assert (progress["at"], progress["epoch"], progress["iter"]) == ("batch_end", 1, 1)

    learn = waves_learner(dataset)
    before = weights(learn)
    with pytest.raises(CheckpointError, match=r"stream \(DataLoader over a Waves(WithLen)?\): a stream cannot be "
                                              r"replayed to the checkpoint's batch.*epoch-end checkpoint "
                                              r"\(SaveModelCallback\(every_epoch=True\).*len\(\) and a restorable "
                                              r"order"):
        learn.fit(2, resume=ckpt, cbs=[SaveModelCallback(ckpt, every_epoch=True, every_n_batches=2)], **fit_args)
    assert learn.train_iter == 0 and same(weights(learn), before)
    assert learn.opt is None or all(not s for s in learn.opt.state.values())  # no optimizer step either


# ----- the number of inputs training learned travels in the checkpoint ------------------------------------------------
class Masked(nn.Linear):
    """forward(x, mask): a linear map of the unmasked features."""

    def __init__(self):
        super().__init__(7, 2)

    def forward(self, x, mask):
        return super().forward(x * mask)


def masked_data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, mask = torch.randn(n, 7, generator=g), (torch.rand(n, 7, generator=g) > 0.3).float()
    return x, mask, (x * mask)[:, :2] * 2


def trained_masked(tmp_path):
    x, mask, y = masked_data()
    torch.manual_seed(0)
    learn = Learner(Masked(), DataLoaders(DataLoader(TensorDataset(x, mask, y), batch_size=10)), nn.MSELoss(),
                    progress=False)
    learn.fit(1)
    assert learn.train_n_inp == 2
    learn.save(tmp_path / "m.pt")
    return learn


def inference_learner(x, mask, **kwargs):
    """A fresh Learner for inference, its only loader unlabelled (x, mask) pairs: nothing to learn the split from."""
    dl = DataLoader(TensorDataset(x, mask), batch_size=8)
    return Learner(Masked(), DataLoaders(dl), nn.MSELoss(), progress=False, **kwargs), dl


def test_a_fresh_learner_loading_a_checkpoint_splits_unlabelled_batches_as_training_did(tmp_path):
    trained = trained_masked(tmp_path)
    assert read_checkpoint(tmp_path / "m.pt")["progress"]["train_n_inp"] == 2
    x, mask, _ = masked_data(12, seed=5)
    learn, dl = inference_learner(x, mask)
    learn.load(tmp_path / "m.pt")
    assert learn.train_n_inp == 2
    preds, targets = learn.get_preds(dl=dl)
    assert targets is None  # the mask is an input, not a target
    with torch.no_grad():
        assert torch.allclose(preds, trained.model(x, mask))


def test_a_checkpoint_written_before_train_n_inp_was_kept_still_loads(tmp_path):
    trained = trained_masked(tmp_path)
    old = torch.load(tmp_path / "m.pt", weights_only=True)
    del old["progress"]["train_n_inp"]
    old["checksum"] = checksum(old)
    torch.save(old, tmp_path / "old.pt")
    x, mask, _ = masked_data(12, seed=5)
    learn, dl = inference_learner(x, mask)
    learn.load(tmp_path / "old.pt")
    assert learn.train_n_inp is None and same(weights(learn), weights(trained))
    # Without the count, this learner's only loader says 1 input: refused, not split wrongly...
    with pytest.raises(ValueError, match="got a batch of 2 parts, but the model takes 1 inputs"):
        learn.get_preds(dl=dl, with_targets=False)
    # ... and declared, the old checkpoint predicts as the trained learner did.
    learn, dl = inference_learner(x, mask, n_inp=2)
    learn.load(tmp_path / "old.pt")
    preds, targets = learn.get_preds(dl=dl)
    with torch.no_grad():
        assert targets is None and torch.allclose(preds, trained.model(x, mask))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_checkpoint_with_a_malformed_train_n_inp_is_refused_and_changes_nothing(tmp_path, bad):
    trained_masked(tmp_path)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["progress"]["train_n_inp"] = bad
    ckpt["checksum"] = checksum(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    x, mask, _ = masked_data(12, seed=5)
    learn, _ = inference_learner(x, mask)
    before = weights(learn)
    with pytest.raises(CheckpointError, match=r"train_n_inp .* must be None or an int >= 1, got"):
        learn.load(tmp_path / "bad.pt")
    assert learn.train_n_inp is None and same(weights(learn), before)


# ----- lr_find, GradientAccumulation and the trackers' params on a stream ---------------------------------------------
def full_state(learn):
    """Weights, the optimizer's state and hyperparameters, the loop counters: what a sweep must leave as it was."""
    opt = learn.opt.state_dict()
    return (weights(learn), {i: {k: v.clone() for k, v in s.items()} for i, s in opt["state"].items()},
            opt["param_groups"], (learn.epoch, learn.train_iter, learn.n_train_iters, learn.steps_per_epoch))


def same_state(a, b) -> bool:
    return (same(a[0], b[0]) and a[1].keys() == b[1].keys() and all(same(a[1][i], b[1][i]) for i in a[1])
            and a[2] == b[2] and a[3] == b[3])


def test_lr_find_on_an_iterable_dataset_sweeps_num_it_batches_and_restores_everything():
    learn = waves_learner(Waves(10_000))  # far longer than the sweep: it must stop at num_it, not at the end
    learn.fit(1, lr=1e-2, steps_per_epoch=3)  # an optimizer with state to restore
    before = full_state(learn)
    result = learn.lr_find(start_lr=1e-4, end_lr=1.0, num_it=15, stop_div=False)
    assert len(result.lrs) == 15 and result.stop_reason == "completed 15 iterations"
    assert result.lrs[0] == pytest.approx(1e-4) and result.lrs[-1] == pytest.approx(1.0)
    assert same_state(full_state(learn), before)  # bitwise, steps_per_epoch of the last fit included


def test_lr_find_on_a_one_shot_generator_draws_exactly_num_it_batches():
    g = torch.Generator().manual_seed(11)
    batches = [(torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)) for _ in range(30)]
    drawn = []
    one_shot = (drawn.append(b) or b for b in batches)  # a generator that counts the batches drawn from it
    torch.manual_seed(1)
    learn = Learner(nn.Linear(6, 3), DataLoaders(one_shot, None), nn.MSELoss(), progress=False)
    learn.create_opt()
    before = full_state(learn)
    result = learn.lr_find(num_it=9, stop_div=False)
    assert len(result.lrs) == 9 and len(drawn) == 9  # the pre-flight's batch is the sweep's first, not lost
    assert same_state(full_state(learn), before)


def accumulation_learner(train_dl):
    torch.manual_seed(5)
    return Learner(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)), DataLoaders(train_dl), nn.MSELoss(),
                   lr=3e-2, progress=False)


def test_gradient_accumulation_on_a_stream_steps_as_on_the_same_batches_with_a_len():
    from cyclr import GradientAccumulation

    stream = DataLoader(Waves(56, seed=4), batch_size=8)  # 7 batches a pass, no len()
    xs, ys = map(torch.stack, zip(*Waves(56, seed=4), strict=True))
    sized = DataLoader(TensorDataset(xs, ys), batch_size=8)  # the same 7 batches, with a len()
    on_stream, on_sized = accumulation_learner(stream), accumulation_learner(sized)
    on_stream.fit(2, cbs=[GradientAccumulation(3)], steps_per_epoch=7)
    on_sized.fit(2, cbs=[GradientAccumulation(3)])
    # groups of 3, 3 and 1 batches an epoch: 3 steps, the last group's own
    assert (on_stream.train_iter, on_stream.n_train_iters) == (on_sized.train_iter, on_sized.n_train_iters) == (6, 6)
    assert same(weights(on_stream), weights(on_sized))
    assert on_stream.recorder.batch_rows == on_sized.recorder.batch_rows


def test_gradient_accumulation_on_a_stream_without_steps_per_epoch_is_refused_before_any_step():
    from cyclr import GradientAccumulation

    learn = accumulation_learner(DataLoader(Waves(40), batch_size=8))
    before = weights(learn)
    with pytest.raises(ValueError, match=r"GradientAccumulation\(2\) on a training loader without a len\(\).*"
                                         r"steps_per_epoch=N"):
        learn.fit(1, cbs=[GradientAccumulation(2)])
    assert learn.train_iter == 0 and same(weights(learn), before)


@pytest.mark.parametrize(("dataset", "fit_args", "expected"), [
    (Waves(10_000), {"steps_per_epoch": 4}, 4),
    (Waves(24), {}, "None"),  # run to the stream's end: no planned length
    (WavesWithLen(24), {}, 3),  # an IterableDataset with __len__: the loader's len()
], ids=["steps_per_epoch", "unplanned", "len"])
def test_the_trackers_log_a_streams_batches_per_epoch(dataset, fit_args, expected):
    from cyclr.callbacks.tracker import fit_hyperparameters

    learn = waves_learner(dataset)
    learn.fit(1, **fit_args)
    assert fit_hyperparameters(learn)["batches_per_epoch"] == expected


def test_the_training_snapshot_puts_back_the_last_fits_steps_per_epoch():
    from cyclr.callbacks.snapshot import TrainingSnapshot

    learn = waves_learner(Waves(10_000))
    learn.fit(1, lr=1e-2, steps_per_epoch=3)
    snapshot = TrainingSnapshot(learn)
    learn.fit(1, lr=1e-2, steps_per_epoch=7)  # a fit in between (the LR finder's sweep) sets its own
    assert learn.steps_per_epoch == 7
    snapshot.restore(learn)
    snapshot.discard()
    assert (learn.steps_per_epoch, learn.train_iter, learn.n_train_iters) == (3, 3, 3)


# ----- the recipes on a stream ----------------------------------------------------------------------------------------
def sized_waves_learner(n: int = 40):
    """`waves_learner` over the same training batches as `Waves(n)`, from a TensorDataset: a loader with a len()."""
    xs, ys = map(torch.stack, zip(*Waves(n), strict=True))
    return waves_learner(TensorDataset(xs, ys))


def test_fit_one_cycle_on_a_stream_with_steps_per_epoch_follows_the_one_cycle_schedule():
    from cyclr import one_cycle

    # Each epoch draws the first 5 of the stream's 1250 batches (every pass restarts it): the sized loader's 5.
    on_stream, on_sized = waves_learner(Waves(10_000)), sized_waves_learner()
    on_stream.fit_one_cycle(2, 5e-2, steps_per_epoch=5)
    on_sized.fit_one_cycle(2, 5e-2)
    assert (on_stream.train_iter, on_stream.n_train_iters) == (10, 10)
    oc = one_cycle(5e-2)
    assert on_stream.recorder.lrs == [oc.lr(i / 10) for i in range(10)]
    assert on_stream.recorder.moms == [oc.mom(i / 10) for i in range(10)]
    assert same(weights(on_stream), weights(on_sized))
    assert on_stream.recorder.batch_rows == on_sized.recorder.batch_rows


@pytest.mark.parametrize("recipe", [
    lambda learn, **kw: learn.fit_flat_cos(2, 3e-2, **kw),
    lambda learn, **kw: learn.fit_sgdr(2, 1, 3e-2, cycle_mult=2, **kw),
    lambda learn, **kw: learn.fine_tune(1, 3e-2, **kw),
], ids=["fit_flat_cos", "fit_sgdr", "fine_tune"])
def test_the_other_recipes_on_a_stream_with_steps_per_epoch_equal_them_on_a_loader_with_a_len(recipe):
    on_stream, on_sized = waves_learner(Waves(40)), sized_waves_learner()
    recipe(on_stream, steps_per_epoch=5)
    recipe(on_sized)
    assert on_stream.train_iter == on_sized.train_iter > 0
    assert same(weights(on_stream), weights(on_sized))
    assert on_stream.recorder.batch_rows == on_sized.recorder.batch_rows


@pytest.mark.parametrize(("recipe", "scheduler"), [
    (lambda learn: learn.fit_one_cycle(2, 5e-2), "OneCycleCallback"),
    (lambda learn: learn.fit_flat_cos(2, 5e-2), "FlatCosCallback"),
    (lambda learn: learn.fit_sgdr(2, 1, 5e-2), "SGDRCallback"),
    (lambda learn: learn.fine_tune(1, 5e-2), "OneCycleCallback"),
], ids=["fit_one_cycle", "fit_flat_cos", "fit_sgdr", "fine_tune"])
def test_a_recipe_on_a_stream_without_steps_per_epoch_is_refused_before_any_step(recipe, scheduler):
    learn = waves_learner(Waves(40))
    before = weights(learn)
    requires_grad = [p.requires_grad for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=rf"no len\(\) \(a stream: DataLoader\).*{scheduler} cannot place its steps.*"
                                         r"pass steps_per_epoch=N to fit or to the recipe"):
        recipe(learn)
    assert learn.train_iter == 0 and same(weights(learn), before)
    assert [p.requires_grad for p in learn.model.parameters()] == requires_grad  # fine_tune froze nothing


def test_a_recipe_given_steps_per_epoch_on_a_loader_with_a_len_is_refused():
    learn = sized_waves_learner()
    with pytest.raises(ValueError, match=r"steps_per_epoch=4 is for a training loader without a len\(\).*has len\(\) "
                                         r"5: leave steps_per_epoch out"):
        learn.fit_one_cycle(1, 5e-2, steps_per_epoch=4)
    assert learn.train_iter == 0


# ----- preemption on a stream: the checkpoint waits for the epoch's end -----------------------------------------------
@pytest.mark.parametrize("dataset", [Waves(40), WavesWithLen(40)], ids=["no_len", "iterable_dataset_with_len"])
def test_a_signal_on_a_stream_saves_at_the_epochs_end_and_the_resume_equals_the_uninterrupted_run(
        tmp_path, caplog, dataset):
    fit_args = {} if isinstance(dataset, WavesWithLen) else {"steps_per_epoch": 5}  # 5 batches an epoch

    def run(more, resume=None):
        learn = waves_learner(dataset)
        learn.fit_one_cycle(3, 5e-2, cbs=more, resume=resume, **fit_args)
        return learn

    full = run([])
    ckpt = tmp_path / "ck_{train_iter}.pt"
    with caplog.at_level("WARNING", logger="cyclr"), pytest.raises(Preempted) as info:
        run([SaveModelCallback(ckpt, every_epoch=True), SignalAt("before_step", step=6)])  # epoch 1, batch 1
    said = [r.getMessage() for r in caplog.records if "waits for the epoch's end" in r.getMessage()]
    assert len(said) == 1 and "SIGTERM received at epoch 1, batch 1 of a stream (DataLoader over a Waves" in said[0]
    assert "on a stream the checkpoint waits for the epoch's end: a stream cannot be replayed to a batch" in said[0]
    assert info.value.train_iter == 10 and info.value.checkpoints == [str(tmp_path / "ck_10.pt")]
    p = read_checkpoint(tmp_path / "ck_10.pt", with_history=False)["progress"]
    assert (p["at"], p["epoch"], p["iter"], p["train_iter"]) == ("epoch_end", 2, 0, 10)  # epoch 1 validated too

    resumed = run([SaveModelCallback(ckpt, every_epoch=True)], resume="auto")  # picks ck_10.pt, not refused
    assert resumed.train_iter == 15 and same(weights(resumed), weights(full))
    assert resumed.recorder.batch_rows == full.recorder.batch_rows
    untimed = [[{k: v for k, v in row.items() if k != "time"} for row in learn.recorder.epoch_rows]
               for learn in (resumed, full)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3  # each epoch's losses, the preempted one's included


def test_a_signal_on_a_loader_with_a_len_still_stops_after_the_batch_in_progress(tmp_path, caplog):
    learn = sized_waves_learner()
    with caplog.at_level("WARNING", logger="cyclr"), pytest.raises(Preempted) as info:
        learn.fit(3, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True), SignalAt("before_step", step=6)])
    assert info.value.train_iter == 7 and not [r for r in caplog.records if "stream" in r.getMessage()]
    p = read_checkpoint(tmp_path / "ck.pt", with_history=False)["progress"]
    assert (p["at"], p["epoch"], p["iter"], p["train_iter"]) == ("batch_end", 1, 2, 7)


def test_a_signal_in_a_streams_last_epoch_lets_the_fit_end_and_stops_the_next_one_at_its_first_epochs_end(tmp_path):
    learn, full = waves_learner(), waves_learner()
    full.fit_one_cycle(2, 5e-2, steps_per_epoch=5)
    learn.fit_one_cycle(2, 5e-2, steps_per_epoch=5, cbs=[SignalAt("before_step", step=7)])  # epoch 1 of 2
    assert learn.train_iter == 10 and same(weights(learn), weights(full))  # the fit ran to its end, untouched
    with pytest.raises(Preempted) as info:
        learn.fit(3, steps_per_epoch=5, cbs=[SaveModelCallback(tmp_path / "ck.pt", every_epoch=True)])
    assert info.value.train_iter == 5
    assert read_checkpoint(tmp_path / "ck.pt", with_history=False)["progress"]["at"] == "epoch_end"
