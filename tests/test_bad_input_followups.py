"""Issue 24 point 11 and 13's refusals wired into the Learner: a splitter that leaves trainable parameters out of
every group, and a rate above float32's largest number, each refused before any weight changes."""

import pytest
import torch
from torch import nn

from cyclr import Learner, synthetic_classification


def dls():
    return synthetic_classification(n_train=48, n_valid=16, n_features=3, n_classes=2, bs=16, seed=0)


def test_a_splitter_that_leaves_a_layer_out_is_refused_naming_its_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"leaves 2 trainable parameter\(s\) out of every group.*2\.weight, 2\.bias"):
        Learner(model, dls(), nn.CrossEntropyLoss(), splitter=lambda m: [m[0].parameters()], progress=False).fit(1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_splitter_covering_every_trainable_parameter_trains_both_groups():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    learn = Learner(model, dls(), nn.CrossEntropyLoss(), progress=False,
                    splitter=lambda m: [m[0].parameters(), m[2].parameters()])
    learn.fit(1, lr=0.1)
    assert len(learn.opt.param_groups) == 2 and learn.train_iter == 3


@pytest.mark.parametrize("where", ["learner", "fit"])
def test_a_rate_above_float32s_largest_is_refused_before_any_step(where):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match=r"lr must be at most 3.4\d*e\+38"):
        if where == "learner":
            Learner(model, dls(), nn.CrossEntropyLoss(), lr=1e300, progress=False)
        else:
            Learner(model, dls(), nn.CrossEntropyLoss(), progress=False).fit(1, lr=1e300)
    assert torch.equal(model.weight, before)
