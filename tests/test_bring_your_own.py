"""Bring your own model, data, metrics and habits: batch formats, model outputs, the pre-flight check and sanity
validation, inference and export, epoch-level metrics, defaults that train (issue 12)."""

import functools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import quiet
from torch import nn
from torch.utils.data import Dataset

from cyclr import (
    AccumMetric,
    Callback,
    DataLoaders,
    Learner,
    accuracy,
    error_rate,
    mae,
    rmse,
    sgd,
    synthetic_classification,
    top_k_accuracy,
)


def blobs(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, 8, generator=g) * 3
    x = centres[y] + torch.randn(n, 8, generator=g)
    return x, y


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def loaders(train_items, valid_items, bs=16, **kwargs):
    return DataLoaders.from_datasets(ListDataset(train_items), ListDataset(valid_items), bs=bs, **kwargs)


# ----- batches and model calls ------------------------------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x1, x2):
        return self.a(x1) + self.b(x2)


def test_two_input_model_as_flat_and_nested_tuples_trains_identically():
    x, y = blobs()
    x1, x2 = x[:, :4], x[:, 4:]
    flat = [(x1[i], x2[i], y[i]) for i in range(96)]
    nested = [((x1[i], x2[i]), y[i]) for i in range(96)]
    runs = []
    for items in (flat, nested):
        torch.manual_seed(0)
        learn = quiet(TwoInputs(), loaders(items[:64], items[64:]), lr=0.05, metrics=accuracy)
        learn.fit(3)
        runs.append(learn)
    flat_run, nested_run = runs
    assert flat_run.recorder.losses == nested_run.recorder.losses  # the same model calls, batch for batch
    assert flat_run.recorder.losses[-1] < flat_run.recorder.losses[0]
    assert flat_run.recorder.epoch_rows[-1]["accuracy"] >= 0.9
    # The inputs reached the model as model(x1, x2): the same logits as calling it by hand.
    preds, targets = nested_run.get_preds()
    with torch.no_grad():
        assert torch.allclose(preds, nested_run.model(x1[64:], x2[64:]), atol=1e-6)
    assert torch.equal(targets, y[64:])


def test_n_inp_splits_extra_targets_and_is_checked():
    x, y = blobs()
    w = torch.ones(96)
    items = [(x[i], y[i], w[i]) for i in range(96)]

    def weighted_ce(pred, y, w):  # several targets: loss_func(pred, *yb), fastai's convention (issue 23.6)
        return (nn.functional.cross_entropy(pred, y, reduction="none") * w).mean()

    learn = quiet(nn.Linear(8, 3), loaders(items[:64], items[64:]), weighted_ce, n_inp=1, lr=0.05)
    learn.fit(1)
    xb, yb = learn.split_batch((x[:2], y[:2], w[:2]))
    assert torch.equal(xb, x[:2]) and isinstance(yb, tuple) and torch.equal(yb[1], w[:2])
    with pytest.raises(ValueError, match=r"n_inp must be an int >= 1, got 0"):
        quiet(nn.Linear(8, 3), loaders(items[:64], items[64:]), n_inp=0)


@dataclass
class Output:  # like a HuggingFace ModelOutput: attributes
    loss: torch.Tensor | None
    logits: torch.Tensor


class HFStyle(nn.Module):
    """Called as model(**batch), labels included; returns loss and logits, as HF models do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.body(input_ids * attention_mask)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return Output(loss, logits)


def dict_items(n=96, labels=True):
    x, y = blobs(n)
    return [{"input_ids": x[i], "attention_mask": torch.ones(8), **({"labels": y[i]} if labels else {})}
            for i in range(n)]


def test_dict_batch_with_a_model_returning_loss_and_logits_reports_accuracy():
    items = dict_items()
    torch.manual_seed(0)
    learn = quiet(HFStyle(), loaders(items[:64], items[64:]), loss_func=None, lr=0.05, metrics=[accuracy])
    learn.fit(3)
    row = learn.recorder.epoch_rows[-1]
    assert row["accuracy"] >= 0.9
    x, y = blobs()
    with torch.no_grad():
        logits = learn.model.body(x[64:])
    assert row["accuracy"] == pytest.approx((logits.argmax(1) == y[64:]).float().mean().item(), abs=1e-6)
    assert row["valid_loss"] == pytest.approx(nn.functional.cross_entropy(logits, y[64:]).item(), rel=1e-5)
    preds, targets = learn.get_preds()  # the output's logits
    assert torch.allclose(preds, logits, atol=1e-6) and torch.equal(targets, y[64:])


def test_lr_find_and_fit_one_cycle_on_the_dict_batch_model():
    items = dict_items()
    torch.manual_seed(0)
    learn = quiet(HFStyle(), loaders(items[:64], items[64:]), loss_func=None, metrics=[accuracy])
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    res = learn.lr_find(num_it=20)
    assert len(res.lrs) >= 2 and all(math.isfinite(s.lr) for s in res.suggestions.values())
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())  # no trace
    untrained = learn.validate()["valid_loss"]
    learn.fit_one_cycle(4, max_lr=res.suggestions["valley"].lr)
    assert learn.recorder.epoch_rows[-1]["valid_loss"] < 0.5 * untrained


def test_loss_func_none_without_a_loss_in_the_output_says_what_to_change():
    items = dict_items()
    learn = quiet(HFStyle(), loaders(items[:64], items[64:]), loss_func=None)
    learn.model.forward = lambda **batch: {"logits": learn.model.body(batch["input_ids"])}
    with pytest.raises(ValueError, match=r"output \(dict \{'logits'.*has no 'loss': pass a loss_func"):
        learn.fit(1)


class BagOfTokens(nn.Module):
    """A text model taking a list of token lists (ragged): pads them itself."""

    def __init__(self, vocab=20):
        super().__init__()
        self.embed, self.head = nn.EmbeddingBag(vocab, 8), nn.Linear(8, 2)

    def forward(self, token_lists):
        flat = torch.tensor([t for tokens in token_lists for t in tokens])
        offsets = torch.tensor([0] + [len(t) for t in token_lists[:-1]]).cumsum(0)
        return self.head(self.embed(flat, offsets))


def text_items(n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = i % 2
        length = int(torch.randint(2, 7, (1,), generator=g))
        tokens = torch.randint(0, 10, (length,), generator=g) + 10 * label  # class 1 uses tokens 10..19
        items.append((tokens.tolist(), label))
    return items


def collate_tokens(items):
    return [tokens for tokens, _ in items], torch.tensor([label for _, label in items])


def test_text_model_fed_lists_of_tokens_by_a_collate_fn():
    items = text_items()
    torch.manual_seed(0)
    learn = quiet(BagOfTokens(), loaders(items[:64], items[64:], collate_fn=collate_tokens), lr=0.05,
                  metrics=[accuracy])
    learn.fit(3)
    assert learn.recorder.epoch_rows[-1]["accuracy"] == 1.0
    preds, targets = learn.get_preds(with_input=True)[1:]
    assert preds.shape == (16, 2) and targets.tolist() == [label for _, label in items[64:]]
    inputs = learn.get_preds(with_input=True)[0]
    assert inputs == [tokens for tokens, _ in items[64:]]  # lists of tokens, joined into one list


def test_preflight_messages_never_fail_on_non_tensor_batches():
    items = text_items()
    learn = quiet(nn.Linear(8, 2), loaders(items[:64], items[64:], collate_fn=collate_tokens))
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"training batch \(list of 16 \(list of 4 ints, .*must be Tensor, not list"):
        learn.fit(1)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


class WithAux(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.aux = nn.Linear(8, 3), nn.Linear(8, 1)

    def forward(self, x):
        return self.body(x), self.aux(x).squeeze(1)


def test_model_returning_logits_and_aux_with_a_custom_loss_and_get_preds_returning_both():
    x, y = blobs()

    def loss_with_aux(out, target):
        logits, aux = out
        return nn.functional.cross_entropy(logits, target) + 0.1 * aux.pow(2).mean()

    def acc_of_logits(out, target):
        return accuracy(out[0], target)

    torch.manual_seed(0)
    learn = quiet(WithAux(), DataLoaders.from_tensors(x[:64], y[:64], x[64:], y[64:], bs=16), loss_with_aux,
                  lr=0.05, metrics=[acc_of_logits])
    learn.fit(3)
    assert learn.recorder.epoch_rows[-1]["acc_of_logits"] >= 0.9
    (logits, aux), targets = learn.get_preds()
    with torch.no_grad():
        want_logits, want_aux = learn.model(x[64:])
    assert torch.allclose(logits, want_logits, atol=1e-6) and torch.allclose(aux, want_aux, atol=1e-6)
    (probs, aux2), _ = learn.get_preds(act=lambda p: p.softmax(-1))
    assert torch.allclose(probs, want_logits.softmax(-1), atol=1e-6) and torch.equal(aux2, aux)


def test_to_device_handles_nested_tuples_lists_and_dicts():
    learn = quiet(nn.Linear(8, 3), synthetic_classification(n_train=32, n_valid=16))
    b = {"a": (torch.ones(2), [torch.zeros(1), "text"]), "b": 3}
    moved = learn.to_device(b)
    assert torch.equal(moved["a"][0], torch.ones(2)) and moved["a"][1][1] == "text" and moved["b"] == 3


def test_a_subclass_overriding_forward_and_get_loss_passes_the_preflight():
    class Scaled(Learner):
        def forward(self, xb):
            return super().forward(xb) * 2

        def get_loss(self, pred, yb):
            self.loss_calls = getattr(self, "loss_calls", 0) + 1
            return super().get_loss(pred, yb)

    dls = synthetic_classification(n_train=64, n_valid=32, bs=32)
    learn = Scaled(nn.Linear(8, 3), dls, nn.CrossEntropyLoss(), progress=False, device="cpu")
    learn.fit(1)
    # 2 pre-flight batches (training, validation) + 2 training + 1 validation batches.
    assert learn.loss_calls == 5


# ----- pre-flight and sanity validation -----------------------------------------------------------------------------
def test_resnet56_trains_on_the_librarys_own_cifar10_loader():
    pytest.importorskip("PIL")
    from cyclr import resnet56
    from cyclr.data.cifar10 import cifar10

    dls = cifar10(bs=128, n_train=512, n_valid=64, download=False)
    torch.manual_seed(0)
    learn = quiet(resnet56(), dls, metrics=[accuracy])
    learn.fit(1)  # raised "expected scalar type Byte but found Float" when the pre-flight bypassed batch_tfm
    row = learn.recorder.epoch_rows[-1]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_loss"]) and len(learn.recorder.losses) == 4


def test_a_broken_metric_fails_before_the_first_step_unless_sanity_check_is_off():
    def broken(pred, target):
        return pred[:, 10].mean()  # 3 classes: index 10 does not exist

    dls = synthetic_classification(n_train=64, n_valid=32, bs=32)
    learn = quiet(nn.Linear(8, 3), dls, metrics=[accuracy, broken])
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"metric broken failed on a validation batch.*sanity_check=False"):
        learn.fit(1)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items()) and learn.train_iter == 0
    unchecked = quiet(nn.Linear(8, 3), dls, metrics=[broken], sanity_check=False)
    with pytest.raises(IndexError):
        unchecked.fit(1)
    assert unchecked.train_iter == 2  # it only failed at validation, after the epoch's steps


def test_preflight_leaves_the_shuffling_state_alone():
    dls = synthetic_classification(n_train=64, n_valid=32, bs=16)
    state = dls.state_dict()
    quiet(nn.Linear(8, 3), dls).fit(1)
    fresh = synthetic_classification(n_train=64, n_valid=32, bs=16)
    fresh.load_state_dict(state)
    next(iter(fresh.train))  # one epoch's draw: the same as the fit's single epoch
    assert torch.equal(fresh.state_dict()["train"]["generator"], dls.state_dict()["train"]["generator"])


# ----- inference and export -------------------------------------------------------------------------------------------
def test_get_preds_on_an_unlabelled_loader_with_inputs_and_losses():
    x, y = blobs()
    dls = DataLoaders.from_tensors(x[:64], y[:64], x[64:], y[64:], bs=16)
    learn = quiet(nn.Linear(8, 3), dls)
    unlabelled = [x[64:80], x[80:]]  # batches of inputs only
    preds, targets = learn.get_preds(dl=unlabelled)
    with torch.no_grad():
        want = learn.model(x[64:])
    assert targets is None and torch.allclose(preds, want, atol=1e-6)
    inputs, preds, targets, losses = learn.get_preds(with_input=True, with_loss=True)
    assert torch.equal(inputs, x[64:]) and torch.equal(targets, y[64:])
    assert torch.allclose(losses, nn.functional.cross_entropy(want, y[64:], reduction="none"), atol=1e-6)
    items = dict_items(labels=False)
    hf = quiet(HFStyle(), loaders(items[:64], items[64:]), loss_func=None)
    preds, targets = hf.get_preds()
    assert targets is None and preds.shape == (32, 3)


def test_predict_a_single_item_a_numpy_array_and_a_batch():
    x, y = blobs()
    learn = quiet(nn.Linear(8, 3), DataLoaders.from_tensors(x[:64], y[:64], x[64:], y[64:], bs=16))
    with torch.no_grad():
        want = learn.model(x[:4])
    one = learn.predict(x[0])
    assert one.shape == (3,) and torch.allclose(one, want[0], atol=1e-6)
    assert torch.allclose(learn.predict(x[1].numpy()), want[1], atol=1e-6)
    assert torch.allclose(learn.predict(x[:4].numpy()), want, atol=1e-6)
    with pytest.raises(TypeError, match="predict expects a tensor or a numpy array"):
        learn.predict([1.0] * 8)


def test_save_model_only_is_a_plain_state_dict_and_load_model_only_reads_both(tmp_path):
    dls = synthetic_classification(n_train=64, n_valid=32, bs=32)
    learn = quiet(nn.Linear(8, 3), dls)
    learn.fit(1)
    plain, full = tmp_path / "plain.pt", tmp_path / "full.pt"
    learn.save(plain, model_only=True)
    learn.save(full)
    model = nn.Linear(8, 3)
    model.load_state_dict(torch.load(plain, weights_only=True))  # plain PyTorch
    assert torch.equal(model.weight, learn.model.weight)
    for path in (plain, full):
        other = quiet(nn.Linear(8, 3), dls)
        other.load(path, model_only=True)
        assert torch.equal(other.model.weight, learn.model.weight)
    with pytest.raises(ValueError, match="model"):
        quiet(nn.Linear(8, 4), dls).load(plain, model_only=True)


# ----- metrics -------------------------------------------------------------------------------------------------------
def test_builtin_metrics_against_closed_forms():
    pred = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    target = torch.tensor([2, 0, 0, 1])
    assert accuracy(pred, target).item() == pytest.approx(0.5)
    assert error_rate(pred, target).item() == pytest.approx(0.5)
    assert top_k_accuracy(pred, target, k=2).item() == pytest.approx(0.75)  # sample 2: 0.2 is third -> miss
    assert top_k_accuracy(pred, target, k=3).item() == pytest.approx(1.0)
    reg, truth = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.5, 2.0, 2.0])
    assert rmse(reg, truth).item() == pytest.approx(math.sqrt((0.25 + 0 + 4) / 3))
    assert mae(reg, truth).item() == pytest.approx((0.5 + 0 + 2) / 3)


def test_top_k_counts_the_third_class_as_a_miss():
    pred = torch.tensor([[0.2, 0.3, 0.5]])
    assert top_k_accuracy(pred, torch.tensor([0]), k=2).item() == 0.0


def test_metric_names_are_unique_and_readable_and_validate_uses_them():
    dls = synthetic_classification(n_train=64, n_valid=32, bs=32)
    top1, top2 = functools.partial(top_k_accuracy, k=1), functools.partial(top_k_accuracy, k=2)
    learn = quiet(nn.Linear(8, 3), dls, metrics=[accuracy, top1, top2, accuracy])
    learn.fit(1)
    columns = list(learn.recorder.to_df("epochs").columns)
    assert columns == ["fit", "epoch", "train_loss", "valid_loss", "accuracy", "top_k_accuracy",
                       "top_k_accuracy_2", "accuracy_2", "time"]
    row = learn.recorder.epoch_rows[-1]
    assert row["accuracy"] == row["top_k_accuracy"] == row["accuracy_2"]  # top-1 is accuracy
    assert row["top_k_accuracy_2"] >= row["accuracy"]
    valid = learn.validate()
    assert list(valid) == ["valid_loss", "accuracy", "top_k_accuracy", "top_k_accuracy_2", "accuracy_2"]
    assert valid["accuracy"] == pytest.approx(row["accuracy"])


def test_torchmetrics_f1_equals_its_own_value_over_the_whole_validation_set():
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.functional.classification import multiclass_f1_score

    # Unequal last batch (100 = 3 x 32 + 4): a batch average of F1 would differ from the epoch's F1.
    dls = synthetic_classification(n_train=64, n_valid=100, bs=32, valid_bs=32, spread=3.0)
    torch.manual_seed(0)
    f1 = torchmetrics.F1Score(task="multiclass", num_classes=3, average="macro")
    accum = AccumMetric(functools.partial(multiclass_f1_score, num_classes=3, average="macro"), name="f1")
    learn = quiet(nn.Linear(8, 3), dls, lr=0.01, metrics=[f1, accum, accuracy])
    learn.fit(2)
    preds, targets = learn.get_preds()
    want = multiclass_f1_score(preds, targets, num_classes=3, average="macro").item()
    row = learn.recorder.epoch_rows[-1]
    assert row["MulticlassF1Score"] == pytest.approx(want, abs=1e-6)
    assert row["f1"] == pytest.approx(want, abs=1e-6)
    per_batch = [multiclass_f1_score(p, t, num_classes=3, average="macro").item()
                 for p, t in zip(preds.split(32), targets.split(32), strict=True)]
    assert abs(np.average(per_batch, weights=[32, 32, 32, 4]) - want) > 1e-4  # why epoch-level metrics exist
    assert learn.validate()["f1"] == pytest.approx(want, abs=1e-6)  # reset between validations


def test_single_metric_and_single_callback_are_accepted():
    class Count(Callback):
        def __init__(self):
            self.n = 0

        def after_batch(self, learn):
            self.n += 1

    dls = synthetic_classification(n_train=64, n_valid=32, bs=32)
    counter = Count()
    learn = quiet(nn.Linear(8, 3), dls, metrics=accuracy, cbs=Count())
    learn.fit(1, cbs=counter)
    assert counter.n == 3 and "accuracy" in learn.recorder.epoch_rows[-1]


# ----- defaults and habits -------------------------------------------------------------------------------------------
def test_fit_without_lr_starts_at_learn_lr_after_one_cycle_and_after_load(tmp_path):
    dls = synthetic_classification(n_train=256, n_valid=32, bs=32)
    learn = quiet(nn.Linear(8, 3), dls, lr=0.02)
    learn.fit_one_cycle(1, max_lr=0.1)
    assert learn.hypers()[0]["lr"] < 0.01  # where the cycle ended
    learn.save(tmp_path / "ckpt.pt")
    learn.fit(1)
    assert learn.recorder.lrs == [0.02] * 8
    other = quiet(nn.Linear(8, 3), dls, lr=0.02)
    other.load(tmp_path / "ckpt.pt")
    assert other.hypers()[0]["lr"] < 0.01
    other.fit(1)
    assert other.recorder.lrs == [0.02] * 8


def test_weight_decay_none_keeps_the_optimizers_own_and_zero_applies_zero():
    dls = synthetic_classification(n_train=64, n_valid=32, bs=32)
    assert quiet(nn.Linear(8, 3), dls).hypers()[0]["wd"] == 0.01  # the default AdamW's own
    assert quiet(nn.Linear(8, 3), dls, wd=0).hypers()[0]["wd"] == 0.0
    assert quiet(nn.Linear(8, 3), dls, opt_func=sgd).hypers()[0]["wd"] == 0.0
    assert type(quiet(nn.Linear(8, 3), dls).create_opt()).__name__ == "AdamW"


@pytest.mark.parametrize("hook, event", [("on_epoch_end", "after_epoch"), ("on_train_batch_end", "after_batch"),
                                         ("on_batch_end", "after_batch"), ("on_train_begin", "before_fit")])
def test_other_frameworks_hook_names_are_refused_naming_the_cyclr_event(hook, event):
    ported = type("Ported", (Callback,), {hook: lambda self, *args: None})()
    dls = synthetic_classification(n_train=64, n_valid=32, bs=32)
    with pytest.raises(ValueError, match=rf"Ported defines '{hook}', another framework's hook name.*name it '{event}'"):
        quiet(nn.Linear(8, 3), dls, cbs=[ported])


def test_a_hook_with_the_wrong_signature_is_refused_when_added():
    class NoLearn(Callback):
        def after_batch(self):
            pass

    learn = quiet(nn.Linear(8, 3), synthetic_classification(n_train=64, n_valid=32, bs=32))
    with pytest.raises(ValueError, match=r"NoLearn.after_batch cannot be called as after_batch\(learn\).*\(self\)"):
        learn.fit(1, cbs=[NoLearn()])
    assert learn.train_iter == 0


def test_repr_names_model_data_optimizer_loss_and_callbacks():
    learn = quiet(nn.Linear(8, 3), synthetic_classification(n_train=64, n_valid=32, bs=32))
    text = repr(learn)
    assert "Linear (27 parameters)" in text and "train=2 batches, valid=1 batches" in text
    names = ", ".join(type(cb).__name__ for cb in learn.cbs)  # in the order they run
    assert "opt=adam" in text and "CrossEntropyLoss" in text and f"cbs=[{names}])" in text and "Recorder" in names


@pytest.mark.slow
def test_the_defaults_train_lenet_on_fashion_mnist():
    from cyclr import fashion_mnist, lenet

    torch.manual_seed(0)
    learn = Learner(lenet(), fashion_mnist(), nn.CrossEntropyLoss(), metrics=[accuracy], progress=False)
    learn.fit(1)
    assert learn.recorder.epoch_rows[-1]["accuracy"] >= 0.80
