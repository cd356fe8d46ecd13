"""Inference on what users bring (issue 23): unlabelled loaders keep the number of inputs learned from training
(point 2), outputs with 0-d parts (point 7), `predict` on one structured item (point 9)."""

import numpy as np
import pytest
import torch
from helpers import quiet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cyclr import DataLoaders, Learner


def gated_data(n=40, seed=1):
    """Three parts per sample: a sequence (6 values), its per-position gates (6 values) and a label of 4 classes."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(n, 6, generator=g)
    gate = (torch.rand(n, 6, generator=g) > 0.3).float()
    y = torch.randint(0, 4, (n,), generator=g)
    return seq, gate, y


class Gated(nn.Module):
    """forward(seq, gate): two inputs of the same shape, so that a wrong split cannot be caught by a shape error."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, seq, gate=None):
        return self.lin(seq if gate is None else seq * gate + 0.5 * gate)


def gated_learner(**kwargs):
    seq, gate, y = gated_data()
    train = DataLoader(TensorDataset(seq[:32], gate[:32], y[:32]), batch_size=8)
    valid = DataLoader(TensorDataset(seq[32:], gate[32:], y[32:]), batch_size=8)
    return quiet(Gated(), DataLoaders(train, valid), **kwargs), (seq, gate, y)


# ----- point 2: unlabelled loaders keep the inputs ------------------------------------------------------------------
@pytest.mark.parametrize("n_inp", [None, 2])
def test_an_unlabelled_loader_of_all_inputs_is_never_re_split(n_inp):
    learn, (seq, gate, y) = gated_learner(n_inp=n_inp, lr=0.01)
    learn.fit(1)
    with torch.no_grad():
        want = learn.model(seq, gate)
    unlabelled = DataLoader(TensorDataset(seq, gate), batch_size=16)
    preds, targets = learn.get_preds(dl=unlabelled)  # used to call model(seq) and return the gates as targets
    assert targets is None and torch.allclose(preds, want, atol=1e-6)
    preds, targets = learn.get_preds(dl=unlabelled, with_targets=False)
    assert targets is None and torch.allclose(preds, want, atol=1e-6)
    inputs, preds, _ = learn.get_preds(dl=unlabelled, with_input=True)
    assert torch.equal(inputs[0], seq) and torch.equal(inputs[1], gate)
    # The labelled loader still splits as in training.
    preds, targets = learn.get_preds(dl=DataLoader(TensorDataset(seq, gate, y), batch_size=16))
    assert torch.allclose(preds, want, atol=1e-6) and torch.equal(targets, y)


def test_the_number_of_inputs_is_known_before_any_fit_and_a_short_batch_is_refused():
    learn, (seq, gate, y) = gated_learner()  # never fitted: the count comes from the training data
    with torch.no_grad():
        want = learn.model(seq, gate)
    preds, targets = learn.get_preds(dl=DataLoader(TensorDataset(seq, gate), batch_size=10))
    assert targets is None and torch.allclose(preds, want, atol=1e-6)
    with pytest.raises(ValueError, match=r"1 part.*2 inputs.*n_inp"):
        learn.get_preds(dl=DataLoader(TensorDataset(seq), batch_size=10))
    with pytest.raises(ValueError, match=r"with_targets=True.*2 parts.*2 inputs"):
        learn.get_preds(dl=DataLoader(TensorDataset(seq, gate), batch_size=10), with_targets=True)
    with pytest.raises(ValueError, match=r"with_targets=False.*3 parts.*2 inputs"):
        learn.get_preds(dl=DataLoader(TensorDataset(seq, gate, y), batch_size=10), with_targets=False)
    with pytest.raises(ValueError, match=r"with_loss=True\) needs targets"):
        learn.get_preds(dl=DataLoader(TensorDataset(seq, gate), batch_size=10), with_loss=True)


def test_a_single_input_unlabelled_loader_works():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 5, generator=g), torch.randint(0, 2, (30,), generator=g)
    learn = quiet(nn.Linear(5, 2), DataLoaders.from_tensors(x[:20], y[:20], x[20:], y[20:], bs=5))
    preds, targets = learn.get_preds(dl=DataLoader(TensorDataset(x), batch_size=7))  # batches of [x]
    with torch.no_grad():
        want = learn.model(x)
    assert targets is None and torch.allclose(preds, want, atol=1e-6)


def test_a_loader_mixing_labelled_and_unlabelled_batches_is_refused():
    learn, (seq, gate, y) = gated_learner()
    with pytest.raises(ValueError, match="some batches have targets and others not"):
        learn.get_preds(dl=[(seq[:5], gate[:5], y[:5]), (seq[5:9], gate[5:9])])


def test_a_split_batch_of_ones_own_decides_alone():
    class Reversed(Learner):
        def split_batch(self, batch):  # (y, gate, seq) batches
            if len(batch) == 2:
                return (batch[1], batch[0]), None
            return (batch[2], batch[1]), batch[0]

    seq, gate, y = gated_data()
    dls = DataLoaders(DataLoader(TensorDataset(y, gate, seq), batch_size=8))
    learn = Reversed(Gated(), dls, nn.CrossEntropyLoss(), progress=False, device="cpu")
    preds, targets = learn.get_preds(dl=DataLoader(TensorDataset(gate, seq), batch_size=8))
    with torch.no_grad():
        assert targets is None and torch.allclose(preds, learn.model(seq, gate), atol=1e-6)


# ----- point 7: outputs with 0-d parts --------------------------------------------------------------------------------
class WithPenalty(nn.Module):
    """Scores of 5 classes and a 0-d penalty per batch; `as_dict` returns them as a dict (without `logits`, which
    get_preds would give alone)."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.lin, self.as_dict = nn.Linear(7, 5), as_dict

    def forward(self, x):
        logits = self.lin(x)
        penalty = logits.pow(2).mean()
        return {"scores": logits, "penalty": penalty} if self.as_dict else (logits, penalty)


@pytest.mark.parametrize("as_dict", [False, True])
def test_zero_dimensional_output_parts_are_stacked_one_value_per_batch(as_dict):
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(26, 7, generator=g), torch.randint(0, 5, (26,), generator=g)

    def loss(out, target):
        logits, penalty = (out["scores"], out["penalty"]) if as_dict else out
        return nn.functional.cross_entropy(logits, target) + 0.01 * penalty

    learn = quiet(WithPenalty(as_dict), DataLoaders.from_tensors(x[:16], y[:16], x[16:], y[16:], bs=4, valid_bs=4),
                  loss_func=loss, lr=0.01)
    learn.fit(1)
    preds, _ = learn.get_preds()  # 3 validation batches: 4, 4 and 2 samples
    with torch.no_grad():
        parts = [learn.model(x[i:i + 4]) for i in (16, 20, 24)]
    if as_dict:
        logits, penalty = preds["scores"], preds["penalty"]
        want = torch.stack([p["penalty"] for p in parts])
    else:
        logits, penalty = preds
        want = torch.stack([p[1] for p in parts])
    assert logits.shape == (10, 5) and penalty.shape == (3,)
    assert torch.allclose(penalty, want, atol=1e-6)
    one = learn.predict(x[0])  # one item: the 0-d part as it is
    one_logits, one_penalty = (one["scores"], one["penalty"]) if as_dict else one
    assert one_logits.shape == (5,) and one_penalty.ndim == 0


# ----- point 9: predict on one structured item --------------------------------------------------------------------
class Tabular(nn.Module):
    """forward(cats, conts): 3 categorical columns (embedded) and 4 continuous ones."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 2)
        self.lin = nn.Linear(3 * 2 + 4, 3)

    def forward(self, cats, conts):
        return self.lin(torch.cat([self.emb(cats).flatten(1), conts], dim=1))


def tabular_learner():
    g = torch.Generator().manual_seed(7)
    cats, conts = torch.randint(0, 10, (24, 3), generator=g), torch.randn(24, 4, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    items = [((cats[i], conts[i]), y[i]) for i in range(24)]
    dls = DataLoaders.from_datasets(items[:16], items[16:], bs=4)
    return quiet(Tabular(), dls), cats, conts


def test_predict_one_tuple_item_and_a_tuple_batch_with_numpy_of_other_dtypes():
    learn, cats, conts = tabular_learner()
    with torch.no_grad():
        want = learn.model(cats[:3], conts[:3])
    one = learn.predict((cats[1], conts[1]))
    assert one.shape == (3,) and torch.allclose(one, want[1], atol=1e-6)
    # numpy: int64 categories stay integers, float64 continuous values become the model's float32
    one = learn.predict((cats[2].numpy(), conts[2].numpy().astype(np.float64)))
    assert torch.allclose(one, want[2], atol=1e-6)
    batch = learn.predict((cats[:3].numpy().astype(np.int32), conts[:3].double()))
    assert batch.shape == (3, 3) and torch.allclose(batch, want, atol=1e-6)
    with pytest.raises(ValueError, match=r"3 inputs.*takes 2"):
        learn.predict((cats[0], conts[0], conts[0]))


def test_predict_a_numpy_row_of_another_dtype_on_a_plain_model():
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(20, 11, generator=g), torch.randint(0, 2, (20,), generator=g)
    learn = quiet(nn.Linear(11, 2), DataLoaders.from_tensors(x[:12], y[:12], x[12:], y[12:], bs=4))
    with torch.no_grad():
        want = learn.model(x[:2])
    assert torch.allclose(learn.predict(x[0].numpy().astype(np.float64)), want[0], atol=1e-6)
    assert torch.allclose(learn.predict(x[:2].numpy().astype(np.float16)), want, atol=1e-2)


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lin = nn.Embedding(20, 3), nn.Linear(3, 4)

    def forward(self, token_ids, weights, labels=None):
        pooled = (self.emb(token_ids) * weights.unsqueeze(-1)).sum(1)
        return {"logits": self.lin(pooled)}


def test_predict_one_dict_item_and_a_dict_batch():
    g = torch.Generator().manual_seed(11)
    ids, w = torch.randint(0, 20, (20, 9), generator=g), torch.rand(20, 9, generator=g)
    y = torch.randint(0, 4, (20,), generator=g)
    items = [{"token_ids": ids[i], "weights": w[i], "labels": y[i]} for i in range(20)]
    dls = DataLoaders.from_datasets(items[:12], items[12:], bs=4)
    learn = quiet(DictModel(), dls, loss_func=lambda out, t: nn.functional.cross_entropy(out["logits"], t))
    with torch.no_grad():
        want = learn.model(ids[:3], w[:3])["logits"]
    one = learn.predict({"token_ids": ids[1].numpy(), "weights": w[1].numpy().astype(np.float64)})
    assert one.shape == (4,) and torch.allclose(one, want[1], atol=1e-6)
    batch = learn.predict({"token_ids": ids[:3], "weights": w[:3]})
    assert batch.shape == (3, 4) and torch.allclose(batch, want, atol=1e-6)
    with pytest.raises(ValueError, match="token_ids"):
        learn.predict({"token_ids": ids[0, :2][None, None], "weights": w[0]})
