"""Issue 24's small refusals in the Learner's own files: device='meta', cbs=None, get_preds(dl=[]) and act by name,
a last training batch of one sample through batch norm."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cyclr import DataLoaders, Learner


def tabular(n=25, bs=8, drop_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoaders(DataLoader(TensorDataset(x, y), batch_size=bs, drop_last=drop_last),
                       DataLoader(TensorDataset(x, y), batch_size=bs))


def bn_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_device_meta_is_refused_before_the_model_moves():
    model = bn_mlp()
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        Learner(model, tabular(), nn.CrossEntropyLoss(), device="meta")
    assert model[0].weight.device.type == "cpu" and torch.equal(model[0].weight, before)


def test_fit_takes_cbs_none_and_refuses_a_string():
    learn = Learner(bn_mlp(), tabular(n=24), nn.CrossEntropyLoss(), progress=False)
    learn.fit(1, cbs=None)
    assert learn.train_iter == 3
    with pytest.raises(TypeError, match="cbs must be a Callback, a list of them or None, got str"):
        learn.fit(1, cbs="ShowGraph")


def test_get_preds_on_an_empty_loader_and_activations_by_name():
    learn = Learner(bn_mlp(), tabular(n=24), nn.CrossEntropyLoss(), progress=False)
    with pytest.raises(ValueError, match="yielded no batch"):
        learn.get_preds(dl=[])
    probs, _ = learn.get_preds(act="softmax")
    assert probs.shape == (24, 3) and torch.allclose(probs.sum(-1), torch.ones(24))
    logits, _ = learn.get_preds()
    assert torch.equal(learn.get_preds(act="sigmoid")[0], torch.sigmoid(logits))
    with pytest.raises(ValueError, match=r"act='relu'.*one of \['sigmoid', 'softmax'\]"):
        learn.get_preds(act="relu")
    with pytest.raises(TypeError, match="must be callable"):
        learn.get_preds(act=3)


def test_a_last_batch_of_one_through_batch_norm_1d_is_refused_before_training():
    learn = Learner(bn_mlp(), tabular(n=25, bs=8), nn.CrossEntropyLoss(), progress=False)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"last batch \(batch 3 of each epoch: 25 samples in batches of 8\) holds "
                                         r"one sample, and 1 \(BatchNorm1d\).*drop_last=True"):
        learn.fit(1)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())
    learn = Learner(bn_mlp(), tabular(n=25, bs=8, drop_last=True), nn.CrossEntropyLoss(), progress=False)
    learn.fit(1)
    assert learn.train_iter == 3


def test_batch_norm_over_images_trains_on_a_last_batch_of_one():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(9, 2, 5, 5, generator=g), torch.randint(0, 2, (9,), generator=g)
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=4), None)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(27, 2))
    learn = Learner(model, dls, nn.CrossEntropyLoss(), progress=False)
    learn.fit(1)  # 9 = 4 + 4 + 1: nine values per channel in the last batch, which batch norm can use
    assert learn.train_iter == 3


def test_dist_timeout_is_checked_and_reaches_the_process_group(monkeypatch):
    from datetime import timedelta

    from cyclr.learner import data_parallel

    with pytest.raises(ValueError, match=r"must be a number of seconds > 0 \(or a timedelta\), got -5"):
        Learner(bn_mlp(), tabular(n=24), nn.CrossEntropyLoss(), dist_timeout=-5)
    assert Learner(bn_mlp(), tabular(n=24), nn.CrossEntropyLoss(), dist_timeout=45).dist_timeout == timedelta(
        seconds=45)
    joined = []
    monkeypatch.setattr(data_parallel, "torchrun_world_size", lambda: 2)  # as launched by torchrun
    monkeypatch.setattr(data_parallel, "join", lambda learn, timeout=None: joined.append(timeout) or "joined")
    learn = Learner(bn_mlp(), tabular(n=24), nn.CrossEntropyLoss(), dist_timeout=90, progress=False)
    assert joined == []  # the constructor joins nothing: the first call that needs the group does
    learn.validate()
    learn.validate()
    assert joined == [timedelta(seconds=90)]  # once, with the Learner's timeout


@pytest.mark.parametrize("value", ["fast", "0.5", None])
def test_a_metric_returning_a_non_number_is_refused_before_any_step(value):
    def label_metric(pred, y):
        return value

    learn = Learner(bn_mlp(), tabular(n=24), nn.CrossEntropyLoss(), metrics=[label_metric], progress=False)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match="the metric label_metric failed on a validation batch"):
        learn.fit(1)
    assert learn.train_iter == 0
    assert all(torch.equal(v, before[k]) for k, v in learn.model.state_dict().items())
