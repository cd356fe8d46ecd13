"""The fit loop: event order, cancellation, cleanup, callbacks, Recorder, data coverage and bad input."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from cyclr import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    DataLoaders,
    Learner,
    accuracy,
    synthetic_classification,
)

N_TRAIN, N_VALID, BS = 12, 6, 4  # 3 training batches, 1 validation batch (valid_bs defaults to 2*bs)


def make_dls(n_train=N_TRAIN, n_valid=N_VALID, bs=BS, shuffle=True, valid=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_valid, 3, generator=g)
    y = (x[:, 0] > 0).long()
    if not valid:
        return DataLoaders.from_tensors(x[:n_train], y[:n_train], bs=bs, shuffle=shuffle)
    return DataLoaders.from_tensors(x[:n_train], y[:n_train], x[n_train:], y[n_train:], bs=bs, shuffle=shuffle)


def make_learner(dls=None, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("progress", False)
    return Learner(nn.Linear(3, 2), dls or make_dls(), nn.CrossEntropyLoss(), lr=0.1, device="cpu", **kwargs)


class Trace(Callback):
    """Records every event it sees, with the phase it happened in."""

    def __init__(self):
        self.events = []

    def _log(name):  # noqa: N805 - builds the hook methods below
        def hook(self, learn):
            self.events.append(name)

        return hook

    before_fit, before_epoch, before_train, before_batch = map(_log, ["before_fit", "before_epoch", "before_train",
                                                                      "before_batch"])
    after_pred, after_loss, before_backward, before_step = map(_log, ["after_pred", "after_loss", "before_backward",
                                                                      "before_step"])
    after_step, after_batch, after_train, before_validate = map(_log, ["after_step", "after_batch", "after_train",
                                                                       "before_validate"])
    after_validate, after_epoch, after_fit, cleanup_fit = map(_log, ["after_validate", "after_epoch", "after_fit",
                                                                     "cleanup_fit"])


TRAIN_BATCH = ["before_batch", "after_pred", "after_loss", "before_backward", "before_step", "after_step",
               "after_batch"]
VALID_BATCH = ["before_batch", "after_pred", "after_loss", "after_batch"]
EPOCH = (["before_epoch", "before_train"] + TRAIN_BATCH * 3 + ["after_train", "before_validate"] + VALID_BATCH
         + ["after_validate", "after_epoch"])


def test_event_order_of_a_fit():
    trace = Trace()
    make_learner().fit(2, cbs=[trace])
    assert trace.events == ["before_fit"] + EPOCH * 2 + ["after_fit", "cleanup_fit"]


class Raise(Callback):
    """Raises `exc` at `event` the first `times` times it is reached."""

    def __init__(self, event, exc, times=1):
        self.event, self.exc, self.left = event, exc, times
        setattr(self, event, self._maybe_raise)

    def _maybe_raise(self, learn):
        if self.left > 0:
            self.left -= 1
            raise self.exc()


def traced_fit(event, exc, n_epoch=1, times=1):
    trace = Trace()
    learn = make_learner()
    # A callback's hooks are looked up on the instance, so Raise can attach its hook to any event name.
    learn.fit(n_epoch, cbs=[trace, Raise(event, exc, times)])
    return trace.events, learn


@pytest.mark.parametrize("event", ["before_batch", "after_pred", "after_loss", "before_backward", "before_step"])
def test_cancel_batch_skips_the_rest_of_the_batch(event):
    events, _ = traced_fit(event, CancelBatchException)
    first = events[events.index("before_train") + 1:]
    cut = TRAIN_BATCH.index(event) + 1
    assert first[:cut + 1] == TRAIN_BATCH[:cut] + ["after_batch"]
    assert first[cut + 1:cut + 1 + len(TRAIN_BATCH)] == TRAIN_BATCH  # the next batch runs in full


def test_cancel_batch_before_step_leaves_weights_untouched():
    learn = make_learner()
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, cbs=[Raise("before_step", CancelBatchException, times=100)])
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))


def test_cancel_from_an_after_hook_ends_that_hook_chain_only():
    # Trace runs before Raise (same order, inserted first), so it still logs the event that raised.
    for event, exc in [("after_batch", CancelBatchException), ("after_train", CancelTrainException),
                       ("after_validate", CancelValidException), ("after_epoch", CancelEpochException),
                       ("after_fit", CancelFitException)]:
        events, _ = traced_fit(event, exc)
        assert events == ["before_fit"] + EPOCH + ["after_fit", "cleanup_fit"], event


@pytest.mark.parametrize("event", ["before_train", "before_batch", "after_step", "after_batch"])
def test_cancel_train_goes_to_after_train_then_validates(event):
    events, learn = traced_fit(event, CancelTrainException)
    i = events.index(event) if event != "after_batch" else events.index("after_batch")
    assert events[i + 1] == "after_train"
    assert events[i + 2:i + 3] == ["before_validate"]
    assert learn.train_iter <= 1


@pytest.mark.parametrize("event", ["before_validate", "before_batch", "after_loss"])
def test_cancel_valid_goes_to_after_validate(event):
    trace = Trace()
    learn = make_learner()

    class CancelInValidation(Callback):
        def __init__(self):
            setattr(self, event, self._hook)

        def _hook(self, learn):
            if not learn.training:
                raise CancelValidException()

    learn.fit(1, cbs=[trace, CancelInValidation()])
    i = trace.events.index("before_validate")
    expected = {"before_validate": ["before_validate", "after_validate"],
                "before_batch": ["before_validate", "before_batch", "after_validate"],
                "after_loss": ["before_validate", "before_batch", "after_pred", "after_loss", "after_validate"]}
    assert trace.events[i:i + len(expected[event])] == expected[event]
    assert trace.events[i + len(expected[event])] == "after_epoch"


@pytest.mark.parametrize("event", ["before_epoch", "before_train", "after_train", "before_validate"])
def test_cancel_epoch_goes_to_after_epoch_and_next_epoch_runs(event):
    events, _ = traced_fit(event, CancelEpochException, n_epoch=2)
    i = events.index(event)
    assert events[i + 1] == "after_epoch"
    assert events[i + 2:] == EPOCH + ["after_fit", "cleanup_fit"]


@pytest.mark.parametrize("event", ["before_fit", "before_epoch", "after_batch", "after_epoch"])
def test_cancel_fit_goes_to_after_fit(event):
    events, _ = traced_fit(event, CancelFitException, n_epoch=3)
    i = events.index(event)
    assert events[i + 1:] == ["after_fit", "cleanup_fit"]


def test_cleanup_fit_runs_after_an_exception_and_fit_callbacks_are_removed():
    trace = Trace()
    learn = make_learner()
    boom = Raise("after_loss", lambda: RuntimeError("boom"))
    n_before = len(learn.cbs)
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[trace, boom])
    assert trace.events[-1] == "cleanup_fit"
    assert "after_fit" not in trace.events
    assert len(learn.cbs) == n_before and trace not in learn.cbs and boom not in learn.cbs
    learn.fit(1)  # the learner is still usable


def test_callbacks_passed_to_fit_are_removed_and_constructor_callbacks_stay():
    keep, temporary = Trace(), Trace()
    learn = make_learner(cbs=[keep])
    learn.fit(1, cbs=[temporary])
    assert keep in learn.cbs and temporary not in learn.cbs
    learn.fit(1)
    assert keep.events.count("before_fit") == 2 and temporary.events.count("before_fit") == 1


def test_callbacks_run_in_order_ties_in_insertion_order():
    calls = []

    def make(name, order):
        cb = Callback()
        cb.order = order
        cb.before_fit = lambda learn: calls.append(name)
        return cb

    learn = make_learner()
    learn.fit(1, cbs=[make("late", 90), make("first", -5), make("tie_a", 10), make("tie_b", 10)])
    assert calls == ["first", "tie_a", "tie_b", "late"]


def test_misspelled_hook_is_rejected():
    class Typo(Callback):
        def after_batc(self, learn):
            pass

    with pytest.raises(ValueError, match="after_batc.*Did you mean 'after_batch'"):
        make_learner(cbs=[Typo()])
    with pytest.raises(ValueError, match="not an event"):
        make_learner().fit(1, cbs=[Typo()])


def test_a_callback_class_instead_of_an_instance_is_rejected():
    with pytest.raises(TypeError, match="instance"):
        make_learner(cbs=[Trace])


class GroundTruth(Callback):
    """Reads the loss and lr the optimizer sees, independently of the Recorder."""

    order = 100

    def __init__(self):
        self.losses, self.lrs, self.pcts = [], [], []

    def before_step(self, learn):
        self.losses.append(learn.loss.item())
        self.lrs.append(learn.opt.param_groups[0]["lr"])
        self.pcts.append(learn.pct_train)


def test_recorder_values_and_dataframes():
    truth = GroundTruth()

    class HalveLR(Callback):
        def before_batch(self, learn):
            if learn.training:
                learn.set_hyper("lr", 0.1 / 2 ** learn.train_iter)

    learn = make_learner(metrics=[accuracy])
    learn.fit(2, cbs=[truth, HalveLR()])
    rec = learn.recorder
    assert rec.losses == truth.losses
    assert rec.lrs == truth.lrs == [0.1 / 2**i for i in range(6)]
    assert rec.moms == [0.9] * 6
    assert [r["pct"] for r in rec.batch_rows] == truth.pcts == [i / 6 for i in range(6)]

    batches = rec.to_df("batches")
    assert list(batches.columns) == ["fit", "epoch", "train_iter", "pct", "lr", "mom", "loss", "smooth_loss"]
    assert batches["train_iter"].tolist() == list(range(6))
    assert batches["epoch"].tolist() == [0, 0, 0, 1, 1, 1]
    beta, avg = 0.98, 0.0
    for i, loss in enumerate(truth.losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        assert batches["smooth_loss"][i - 1] == pytest.approx(avg / (1 - beta**i))

    epochs = rec.to_df("epochs")
    assert list(epochs.columns) == ["fit", "epoch", "train_loss", "valid_loss", "accuracy", "time"]
    # Train loss is the sample-weighted mean of the epoch's batch losses (equal batches: the plain mean).
    assert epochs["train_loss"][0] == pytest.approx(sum(truth.losses[:3]) / 3)
    valid = learn.validate()
    assert valid["valid_loss"] == pytest.approx(epochs["valid_loss"][1])
    assert valid["accuracy"] == pytest.approx(epochs["accuracy"][1])


def test_validation_loss_and_metrics_are_sample_weighted():
    # 7 validation samples with valid_bs=4: batches of 4 and 3 must be weighted 4:3, not averaged per batch.
    dls = make_dls(n_valid=7)
    learn = make_learner(dls=dls, metrics=[accuracy])
    result = learn.validate()
    preds, targets = learn.get_preds()
    assert result["valid_loss"] == pytest.approx(nn.functional.cross_entropy(preds, targets).item(), rel=1e-6)
    assert result["accuracy"] == pytest.approx((preds.argmax(1) == targets).float().mean().item())


def test_history_is_kept_across_fits_with_a_fit_index():
    learn = make_learner()
    learn.fit(1)
    learn.fit(2)
    df = learn.recorder.to_df("batches")
    assert df["fit"].tolist() == [0] * 3 + [1] * 6
    assert learn.recorder.to_df("epochs")["fit"].tolist() == [0, 1, 1]
    assert len(learn.recorder.lrs) == 6  # the last fit's


def test_discriminative_groups_are_recorded_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    learn = Learner(model, make_dls(), nn.CrossEntropyLoss(), lr=0.1, device="cpu", progress=False,
                    splitter=lambda m: [m[0].parameters(), m[1].parameters()])
    learn.set_hyper("lr", 0.01, group=0)
    learn.fit(1)
    df = learn.recorder.to_df("batches")
    assert df["lr_0"].tolist() == [0.01] * 3 and df["lr_1"].tolist() == [0.1] * 3
    assert learn.recorder.group_values("lr") == [[0.01] * 3, [0.1] * 3]
    assert [h["lr"] for h in learn.hypers()] == [0.01, 0.1]


def test_every_training_sample_seen_exactly_once_per_epoch():
    n = 10
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    dls = DataLoaders.from_tensors(x, torch.zeros(n, dtype=torch.long), bs=3, shuffle=True)

    class Seen(Callback):
        def __init__(self):
            self.per_epoch = {}

        def before_batch(self, learn):
            if learn.training:
                self.per_epoch.setdefault(learn.epoch, []).extend(learn.xb[:, 0].long().tolist())

    seen = Seen()
    learn = Learner(nn.Linear(1, 2), dls, nn.CrossEntropyLoss(), device="cpu", progress=False)
    learn.fit(3, cbs=[seen])
    orders = [seen.per_epoch[e] for e in range(3)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled each epoch


def test_set_hyper_maps_mom_and_wd_for_sgd_and_adam():
    learn = make_learner()
    learn.set_hyper("mom", 0.8)
    learn.set_hyper("wd", 1e-3)
    assert learn.hypers() == [{"lr": 0.1, "mom": 0.8, "wd": 1e-3}]
    adam = make_learner(opt_func=torch.optim.AdamW)
    adam.set_hyper("mom", 0.85)
    adam.set_hyper("beta2", 0.99)
    assert adam.opt.param_groups[0]["betas"] == (0.85, 0.99)
    with pytest.raises(KeyError, match="no hyperparameter 'nesterovv'"):
        learn.set_hyper("nesterovv", True)


def test_show_loop_lists_callbacks_at_each_event(capsys):
    make_learner(cbs=[Trace()]).show_loop()
    out = capsys.readouterr().out
    assert "      before_batch: Trace" in out
    # Trace has order 0, the Recorder 50, PreemptionCheckpoint (a default callback: issue 24.4) after them
    assert "  after_epoch: Trace, Recorder, PreemptionCheckpoint\n" in out


def test_no_bar_removes_progress_for_the_block_only():
    learn = make_learner(progress=True)
    assert learn.progress is not None
    with learn.no_bar():
        assert learn.progress is None
        learn.fit(1)
    assert learn.progress is not None


def test_progress_prints_the_epoch_table(capsys):
    learn = make_learner(progress=True, metrics=[accuracy])
    learn.fit(2)
    out = capsys.readouterr().out
    assert "epoch" in out and "train_loss" in out and "valid_loss" in out and "accuracy" in out
    first = learn.recorder.epoch_rows[0]
    assert f"{first['train_loss']:.6f}" in out


def test_get_preds_and_predict_restore_training_mode():
    learn = make_learner()
    learn.model.train()
    preds, targets = learn.get_preds()
    assert preds.shape == (N_VALID, 2) and targets.shape == (N_VALID,)
    assert torch.allclose(learn.predict(learn.dls.valid.x), preds)
    assert learn.model.training


# ----- bad input is refused before any weight changes --------------------------------------------------------------
def weights(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


# A wrong value is a ValueError, a wrong type a TypeError, as everywhere in cyclr's argument checks.
@pytest.mark.parametrize("n_epoch, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), ("3", TypeError),
                                            (True, TypeError)])
def test_bad_n_epoch(n_epoch, error):
    learn = make_learner()
    before = weights(learn)
    with pytest.raises(error, match="n_epoch must be an int >= 1"):
        learn.fit(n_epoch)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True))


@pytest.mark.parametrize("lr", [0, -0.1, math.inf, math.nan])
def test_bad_lr(lr):
    learn = make_learner()
    with pytest.raises(ValueError, match=r"lr must be (finite|> 0), got"):
        learn.fit(1, lr=lr)
    with pytest.raises(ValueError, match=r"lr must be (finite|> 0), got"):
        Learner(nn.Linear(3, 2), make_dls(), nn.CrossEntropyLoss(), lr=lr)
    with pytest.raises(TypeError, match="lr must be a real number"):
        learn.fit(1, lr="0.1")
    assert learn.recorder.batch_rows == []


def test_loss_func_not_callable():
    with pytest.raises(TypeError, match="loss_func must be callable"):
        Learner(nn.Linear(3, 2), make_dls(), "cross_entropy")


def test_no_valid_loader_when_validating():
    learn = make_learner(dls=make_dls(valid=False))
    with pytest.raises(ValueError, match="no validation loader"):
        learn.validate()
    learn.fit(1)  # training without a valid set is fine
    assert math.isnan(learn.recorder.epoch_rows[-1]["valid_loss"])


def test_labels_out_of_range_for_the_model_output():
    x, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 3, 0, 1, 2, 5])
    learn = Learner(nn.Linear(3, 4), DataLoaders.from_tensors(x, y, bs=4), nn.CrossEntropyLoss(), progress=False)
    before = weights(learn)
    with pytest.raises(ValueError, match=r"labels range over \[0, 5\] but the model outputs 4 classes"):
        learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(learn), strict=True))


def test_loss_that_is_not_a_scalar():
    learn = Learner(nn.Linear(3, 2), make_dls(), nn.CrossEntropyLoss(reduction="none"), progress=False)
    with pytest.raises(ValueError, match="loss_func must return a scalar tensor.*reduction='mean'"):
        learn.fit(1)


def test_model_that_does_not_fit_the_data():
    learn = Learner(nn.Linear(5, 2), make_dls(), nn.CrossEntropyLoss(), progress=False)
    with pytest.raises(ValueError, match="model failed on a training batch of shape"):
        learn.fit(1)


def test_epoch_rows_are_plain_floats_for_dataframes():
    learn = make_learner(metrics=[accuracy])
    learn.fit(1)
    row = learn.recorder.epoch_rows[0]
    assert all(type(v) in (int, float) for v in row.values())
    assert isinstance(learn.recorder.to_df("epochs"), pd.DataFrame)
    with pytest.raises(ValueError, match="'batches' or 'epochs'"):
        learn.recorder.to_df("steps")


def test_to_device_returns_a_batch_already_on_the_device_as_it_is():
    learn = Learner(nn.Linear(2, 2), synthetic_classification(n_train=8, n_valid=4, n_features=2, n_classes=2, bs=4),
                    nn.CrossEntropyLoss(), device="cpu", progress=False)
    x, y = torch.ones(4, 2), torch.zeros(4, dtype=torch.long)
    batch = (x, y)
    assert learn.to_device(batch) is batch  # no new tuple, no call into torch
    nested = {"inputs": [x, x], "labels": y}
    moved = learn.to_device(nested)
    assert moved["inputs"] is nested["inputs"] and moved["labels"] is y
    listed = [x, y]
    assert learn.to_device(listed) is listed


def test_every_callback_of_cyclr_takes_its_order_from_the_one_table():
    import dataclasses

    import cyclr  # noqa: F401  (imports every callback module)
    from cyclr.callbacks.core import ORDER

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    table = {f.name: getattr(ORDER, f.name) for f in dataclasses.fields(ORDER)}
    ours = {c for c in subclasses(Callback) if c.__module__.startswith("cyclr.") and "order" in vars(c)}
    assert len(ours) >= 10
    missing = {c.__qualname__: c.order for c in ours if c.order not in table.values()}
    assert not missing, f"give these callbacks' orders a row in callbacks.core.ORDER: {missing}"


# ----- the state contract (learner.py's __init__) -------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:the LR-finder curve shows no clear descent")
def test_every_shared_attribute_is_created_by_the_constructor(tmp_path):
    """Fitting, the LR finder, freezing, inference, saving, loading and resuming create no attribute the
    constructor did not: the Learner's state is the list in `Learner.__init__`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # a body and a head, for freeze_to
    learn = Learner(model, make_dls(), nn.CrossEntropyLoss(), lr=0.1, metrics=[accuracy], device="cpu",
                    progress=False)
    declared = set(vars(learn))
    learn.lr_find(num_it=5, show_plot=False)
    learn.freeze_to(0)
    learn.set_hyper("lr", 0.05)
    learn.fit(2, cbs=[SaveEveryEpoch(tmp_path / "e{epoch}.pt")])
    learn.validate()
    learn.get_preds(with_input=True, with_loss=True)
    learn.predict(torch.zeros(3))
    learn.save(tmp_path / "between.pt")
    learn.load(tmp_path / "between.pt")
    learn.fit(2, resume=tmp_path / "e0.pt")
    assert set(vars(learn)) == declared


class SaveEveryEpoch(Callback):
    def __init__(self, pattern):
        self.pattern = str(pattern)

    def after_epoch(self, learn):
        learn.save(self.pattern.format(epoch=learn.epoch))


def test_the_counters_change_through_set_counters_only(tmp_path, monkeypatch):
    """The loop, `load` and a resumed fit all set the counters through `set_counters`, which refuses a name that
    is not a counter."""
    learn = make_learner()
    learn.fit(2, cbs=[SaveEveryEpoch(tmp_path / "e{epoch}.pt")])
    set_names, original = [], Learner.set_counters

    def recording(self, **counters):
        set_names.append(sorted(counters))
        original(self, **counters)

    monkeypatch.setattr(Learner, "set_counters", recording)
    fresh = make_learner()
    fresh.load(tmp_path / "e1.pt")  # load: where the checkpoint's fit stood
    assert set_names == [["epoch", "n_epoch", "n_train_iters", "train_iter"]]
    assert (fresh.epoch, fresh.train_iter, fresh.n_epoch, fresh.n_train_iters) == (2, 6, 2, 6)
    set_names.clear()
    resumed = make_learner()
    resumed.fit(2, resume=tmp_path / "e0.pt")  # the resume's counters, then the loop's
    assert set_names[:2] == [["epoch", "n_epoch", "n_train_iters", "train_iter"],  # restoring the checkpoint
                             ["n_epoch", "n_train_iters", "skip_batches", "start_epoch", "train_iter"]]
    assert ["epoch"] in set_names and ["iter"] in set_names and ["train_iter"] in set_names
    assert (resumed.epoch, resumed.train_iter) == (1, 6)
    with pytest.raises(AttributeError, match=r"'pct_train' is not one of the loop's counters"):
        learn.set_counters(pct_train=0.5)


def test_resuming_is_private_to_fit():
    assert not hasattr(Learner, "resume_from") and callable(Learner._resume_from)
