"""Bring your own, part three (issue 23): fastai's habits (per-group rates in `fit`, no weight decay on norm layers
and biases by default), loaders whose len() is wrong, several targets."""

import functools
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cyclr import Callback, DataLoaders, Learner


def regression_loaders(n=48, n_features=5, bs=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_features, generator=g)
    y = (x @ torch.randn(n_features, 2, generator=g)).tanh()
    return DataLoaders(DataLoader(TensorDataset(x, y), batch_size=bs), DataLoader(TensorDataset(x[:12], y[:12]),
                                                                                  batch_size=bs))


def norm_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 4), nn.LayerNorm(4),
                         nn.Linear(4, 2))


def three_groups(m):
    return [m[0].parameters(), list(m[1].parameters()) + list(m[3].parameters()),
            list(m[4].parameters()) + list(m[5].parameters())]


# ----- issue 23.10: fit(lr=slice / list) ------------------------------------------------------------------------
def test_fit_takes_a_slice_or_a_list_of_rates_per_group():
    learn = Learner(norm_model(), regression_loaders(), nn.MSELoss(), splitter=three_groups, progress=False)
    learn.fit(1, lr=slice(1e-4, 1e-2))
    assert [g["lr"] for g in learn.opt.param_groups] == pytest.approx([1e-4, 1e-3, 1e-2], rel=1e-12)
    assert learn.fit_config["lr"] == "slice(0.0001, 0.01, None)"
    assert learn.recorder.to_df("batches")["lr_1"].tolist() == pytest.approx([1e-3] * 4)
    learn.fit(1, lr=slice(6e-3))  # fastai: hi/10 for every group but the last
    assert [g["lr"] for g in learn.opt.param_groups] == pytest.approx([6e-4, 6e-4, 6e-3])
    learn.fit(1, lr=[2e-3, 3e-3, 5e-3])
    assert [g["lr"] for g in learn.opt.param_groups] == [2e-3, 3e-3, 5e-3]
    assert learn.fit_config["lr"] == [2e-3, 3e-3, 5e-3]


@pytest.mark.parametrize("lr, message", [([1e-3, 1e-2], "2 values for 3 parameter groups"),
                                         ([1e-3, -1.0, 1e-2], "lr\\[1\\]"),
                                         (slice(1e-3, 1e-2, 2), "slice"), ([], "empty list")])
def test_bad_rates_per_group_are_refused_before_any_weight_changes(lr, message):
    learn = Learner(norm_model(), regression_loaders(), nn.MSELoss(), splitter=three_groups, progress=False)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises((ValueError, TypeError), match=message):
        learn.fit(1, lr=lr)
    assert all(torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


# ----- issue 23.10: wd_bn_bias ------------------------------------------------------------------------------------
def _plain_loop(model, dls, opt, n_epoch):
    """The oracle: torch's own loop over the same batches."""
    for _ in range(n_epoch):
        model.train()
        for x, y in dls.train:
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()


@pytest.mark.parametrize("opt_class", [torch.optim.AdamW, torch.optim.SGD])
def test_norm_layers_and_biases_are_not_decayed_by_default(opt_class):
    wd, lr = 0.3, 0.05
    opt_func = functools.partial(opt_class, weight_decay=wd)
    learn = Learner(norm_model(), regression_loaders(), nn.MSELoss(), opt_func=opt_func, lr=lr, wd=wd,
                    splitter=three_groups, progress=False)
    learn.fit(2)

    oracle = norm_model()
    exempt = [p for name, p in oracle.named_parameters() if name.endswith("bias") or name.split(".")[0] in "14"]
    decayed = [p for p in oracle.parameters() if all(p is not q for q in exempt)]
    assert len(exempt) == 7 and len(decayed) == 3
    opt = opt_class([{"params": decayed}, {"params": exempt, "weight_decay": 0.0}], lr=lr, weight_decay=wd)
    _plain_loop(oracle, learn.dls, opt, 2)
    for (name, mine), theirs in zip(learn.model.state_dict().items(), oracle.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name
    # the user's three groups, whole, between steps (per-group rates, freezing and checkpoints see them)
    assert [len(g["params"]) for g in learn.opt.param_groups] == [2, 4, 4]
    assert all(g["weight_decay"] == wd for g in learn.opt.param_groups)


def test_wd_bn_bias_true_decays_every_parameter_as_torch_does():
    wd, lr = 0.3, 0.05
    opt_func = functools.partial(torch.optim.AdamW, weight_decay=wd)
    learn = Learner(norm_model(), regression_loaders(), nn.MSELoss(), opt_func=opt_func, lr=lr, wd=wd,
                    wd_bn_bias=True, progress=False)
    learn.fit(1)
    oracle = norm_model()
    _plain_loop(oracle, learn.dls, torch.optim.AdamW(oracle.parameters(), lr=lr, weight_decay=wd), 1)
    for mine, theirs in zip(learn.model.state_dict().values(), oracle.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


def test_no_decay_survives_a_loaded_optimizer_state():
    # load_state_dict replaces torch's group dicts: the exemption finds the groups by position
    wd, lr = 0.2, 0.02
    learn = Learner(norm_model(), regression_loaders(), nn.MSELoss(), lr=lr, wd=wd, progress=False)
    learn.create_opt()
    learn.opt.load_state_dict(learn.opt.state_dict())
    learn.fit(1)
    oracle = norm_model()
    exempt = [p for name, p in oracle.named_parameters() if name.endswith("bias") or name.split(".")[0] in "14"]
    decayed = [p for p in oracle.parameters() if all(p is not q for q in exempt)]
    opt = torch.optim.AdamW([{"params": decayed}, {"params": exempt, "weight_decay": 0.0}], lr=lr, weight_decay=wd,
                            betas=(0.9, 0.99), eps=1e-5)  # cyclr's default adam
    _plain_loop(oracle, learn.dls, opt, 1)
    for mine, theirs in zip(learn.model.state_dict().values(), oracle.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    assert len(learn.opt.param_groups) == 1


def test_wd_bn_bias_must_be_a_bool():
    with pytest.raises(TypeError, match="wd_bn_bias must be True or False"):
        Learner(norm_model(), regression_loaders(), nn.MSELoss(), wd_bn_bias="no")


def test_a_group_added_by_the_user_stays_and_a_failed_step_is_put_back():
    learn = Learner(norm_model(), regression_loaders(), nn.MSELoss(), lr=0.01, wd=0.1, progress=False)
    opt = learn.create_opt()
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra]})
    learn.fit(1)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"][0] is extra
    assert len(opt.param_groups[0]["params"]) == 10

    def fail(*args, **kwargs):
        raise RuntimeError("the step failed")

    handle = opt.register_step_pre_hook(fail)  # after the split: the groups are split when it raises
    with pytest.raises(RuntimeError, match="the step failed"):
        opt.step()
    handle.remove()
    opt.step()  # the next step joins them first
    assert len(opt.param_groups) == 2 and len(opt.param_groups[0]["params"]) == 10


# ----- issue 23.3: a loader whose len() is wrong ------------------------------------------------------------------
class LenLies:
    """A loader that yields the batches of `dl` but says it has `claimed` of them."""

    def __init__(self, dl, claimed):
        self.dl, self.claimed = dl, claimed

    def __iter__(self):
        return iter(self.dl)

    def __len__(self):
        return self.claimed


def lying_learner(claimed, n=60, bs=12, **kwargs):
    dls = regression_loaders(n=n, bs=bs)
    return Learner(norm_model(), DataLoaders(LenLies(dls.train, claimed), dls.valid), nn.MSELoss(), progress=False,
                   **kwargs)


def test_an_epoch_shorter_than_len_warns_with_how_far_the_schedule_falls_short():
    learn = lying_learner(claimed=8)  # yields 5
    with pytest.warns(RuntimeWarning) as caught:
        learn.fit_one_cycle(3, 1e-2)
    messages = [str(w.message) for w in caught if "len() says" in str(w.message)]
    assert len(messages) == 3 and messages[0].startswith("epoch 0: the training loader yielded 5 batches where "
                                                          "its len() says 8")
    assert "3 batches short" in messages[0] and "ends at pct_train 0.62 instead of 1.00" in messages[0]
    assert "cut by 38%" in messages[0]
    assert learn.train_iter == 15 and learn.pct_train == pytest.approx(15 / 24)


def test_a_loader_yielding_more_than_len_is_refused_at_the_first_extra_batch():
    learn = lying_learner(claimed=3)  # yields 5
    seen = []

    class Positions(Callback):
        def before_batch(self, learn):
            seen.append(learn.pct_train)

    with pytest.raises(RuntimeError, match=r"more batches than the 3 its len\(\) announced \(epoch 0 reached "
                                           r"batch 4\).*planned over 2 epochs of 3 batches \(6 steps\).*train_iter 3"):
        learn.fit_one_cycle(2, 1e-2, cbs=[Positions()])
    assert learn.train_iter == 3 and max(seen) < 1  # no schedule position past the plan was fed
    assert len(learn.recorder.to_df("batches")) == 3


def test_a_loader_whose_len_is_right_says_nothing():
    learn = lying_learner(claimed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(2)
    assert learn.train_iter == 10


# ----- issue 23.6: several targets ----------------------------------------------------------------------------------
def weighted_loaders(n=40, bs=8):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 6, generator=g)
    y = torch.randn(n, 3, generator=g)
    w = torch.rand(n, 1, generator=g)
    offset = torch.randn(n, 3, generator=g)
    ds = TensorDataset(x, y, w, offset)
    return DataLoaders(DataLoader(ds, batch_size=bs), DataLoader(ds, batch_size=bs)), (x, y, w, offset)


def weighted_mse(pred, y, w, offset):  # written for fastai: loss_func(pred, *yb)
    return (((pred + offset - y) ** 2) * w).mean()


def weighted_mae(pred, y, w, offset):
    return ((pred + offset - y).abs() * w).mean()


def test_several_targets_reach_the_loss_and_metrics_as_separate_arguments():
    from cyclr import AccumMetric, Metric

    dls, (x, y, w, offset) = weighted_loaders()
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    accum = AccumMetric(weighted_mae, name="epoch_wmae")
    only_y = Metric(lambda pred, target: (pred - target).abs().mean(), target=0, name="mae_y")
    learn = Learner(model, dls, weighted_mse, n_inp=1, metrics=[weighted_mae, accum, only_y], progress=False)
    learn.fit(1, lr=1e-2)
    with torch.no_grad():
        pred = model(x)
    results = learn.validate()
    assert results["valid_loss"] == pytest.approx(float(weighted_mse(pred, y, w, offset)), rel=1e-5)
    assert results["weighted_mae"] == pytest.approx(float(weighted_mae(pred, y, w, offset)), rel=1e-5)
    assert results["epoch_wmae"] == pytest.approx(float(weighted_mae(pred, y, w, offset)), rel=1e-5)
    assert results["mae_y"] == pytest.approx(float((pred - y).abs().mean()), rel=1e-5)
    preds, targets = learn.get_preds()
    assert isinstance(targets, tuple) and len(targets) == 3
    assert all(torch.equal(a, b) for a, b in zip(targets, (y, w, offset), strict=True))


def test_a_loss_taking_one_target_is_told_what_it_got():
    dls, _ = weighted_loaders()
    learn = Learner(nn.Linear(6, 3), dls, nn.MSELoss(), n_inp=1, progress=False)
    with pytest.raises(ValueError, match=r"3 targets after their 1 input\(s\), given to the loss as separate "
                                         r"arguments, loss_func\(pred, y0, y1, y2\)"):
        learn.fit(1)


# ----- pending G.1: a torch scheduler built on learn.create_opt() keeps its first rate ----------------------------
def test_a_lambda_lr_built_on_the_learners_optimizer_keeps_its_warm_up():
    learn = Learner(norm_model(), regression_loaders(n=60, bs=12), nn.MSELoss(), lr=4e-3, progress=False)
    opt = learn.create_opt()

    def warmup(step):  # HF's linear warm-up over 3 steps, then flat
        return min(1.0, step / 3)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)

    class StepIt(Callback):
        def after_step(self, learn):
            sched.step()

    learn.fit(1, cbs=[StepIt()])
    assert learn.recorder.to_df("batches")["lr"].tolist() == pytest.approx([4e-3 * warmup(s) for s in range(5)])


# ----- pending G.5: the number of inputs learned at the first pre-flight holds for later loaders --------------------
class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x, mask):
        return self.lin(x * mask)


def test_n_inp_learned_by_the_first_fit_holds_when_the_loaders_change():
    g = torch.Generator().manual_seed(2)
    x, mask, y = torch.randn(30, 4, generator=g), (torch.rand(30, 4, generator=g) > 0.3).float(), torch.randn(30, 3)
    train = DataLoader(TensorDataset(x, mask, y), batch_size=10)
    learn = Learner(Masked(), DataLoaders(train, None), nn.MSELoss(), progress=False)
    learn.fit(1, lr=1e-2)
    assert learn.train_n_inp == 2
    # new data, unlabelled: (x, mask) only; the learner's loaders replaced too
    unlabelled = DataLoader(TensorDataset(x[:7], mask[:7]), batch_size=4)
    learn.dls = DataLoaders(unlabelled, None)
    preds, targets = learn.get_preds(dl=unlabelled)
    assert targets is None
    with torch.no_grad():
        assert torch.equal(preds, learn.model(x[:7], mask[:7]))


# ----- issue 23.12: warnings point at the user's line ---------------------------------------------------------------
def test_warnings_raised_deep_in_the_library_point_at_the_users_line():
    learn = lying_learner(claimed=7, opt_func=torch.optim.Adagrad)  # yields 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.fit_one_cycle(1, 1e-2)  # the user's line: every warning below names it
    short = [w for w in caught if "len() says" in str(w.message)]
    no_mom = [w for w in caught if "no momentum" in str(w.message)]
    assert short and no_mom
    for w in short + no_mom:
        assert (w.filename, w.lineno) == (__file__, test_warnings_raised_deep_in_the_library_point_at_the_users_line
                                          .__code__.co_firstlineno + 4)
