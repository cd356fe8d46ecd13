"""Schedule-free (Schedule-Free AdamW) and learning-rate-free (Prodigy) optimizers in the fit loop: the optimizer's
mode at every event, in checkpoints, get_preds, predict and after lr_find; a bitwise resume; Prodigy's d * lr in the
Recorder (callbacks/optimizer_modes.py)."""

import pytest
import torch
from torch import nn

from cyclr import Callback, Learner, ParamScheduler, SaveModelCallback, accuracy, cosine, synthetic_classification
from cyclr.callbacks.optimizer_modes import OptimizerModes, effective_lrs, evaluating, has_modes
from cyclr.learner.checkpoint_files import read_checkpoint

schedulefree = pytest.importorskip("schedulefree")
prodigyopt = pytest.importorskip("prodigyopt")

EVALUATING = ("before_validate", "after_validate", "after_fit", "cleanup_fit")


def make_learner(opt_func=None, lr=1e-2, **kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt_func = opt_func or (lambda params, lr: schedulefree.AdamWScheduleFree(params, lr=lr, warmup_steps=4))
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=lr, metrics=[accuracy], device="cpu",
                   progress=False, **kwargs)


def train_mode(opt) -> bool:
    flags = {g["train_mode"] for g in opt.param_groups}
    assert len(flags) == 1
    return flags.pop()


class ModeProbe(Callback):
    """The optimizer's mode at every event, and at every forward pass of the model (with the phase it ran in)."""

    order = 0

    def __init__(self):
        self.events, self.forwards = [], []

    def before_fit(self, learn):
        self.handle = learn.model.register_forward_hook(
            lambda *_: self.forwards.append((learn.training and learn.in_fit, train_mode(learn.opt))))

    def cleanup_fit(self, learn):
        self.events.append((learn.event, learn.training, train_mode(learn.opt)))
        self.handle.remove()


for _event in ("before_train", "before_batch", "after_pred", "after_loss", "before_backward", "before_step",
               "after_step", "after_batch", "after_train", "before_validate", "after_validate", "after_epoch",
               "after_fit"):
    setattr(ModeProbe, _event, lambda self, learn: self.events.append((learn.event, learn.training,
                                                                       train_mode(learn.opt))))


def test_schedule_free_train_mode_at_every_step_and_eval_mode_in_every_evaluating_event():
    probe = ModeProbe()
    learn = make_learner(cbs=[probe])
    learn.fit(2)  # fails at the first step without OptimizerModes: "Optimizer was not in train mode"
    assert learn.opt.state  # it stepped
    for event, training, in_train in probe.events:
        if event in EVALUATING or not training:  # validation's batches and events, the end of the fit
            assert not in_train, event
        elif event not in ("after_train", "after_epoch"):
            assert in_train, event
    steps = [e for e in probe.events if e[0] in ("before_step", "after_step")]
    assert len(steps) == 2 * 2 * 6 and all(in_train for _, _, in_train in steps)
    assert [e[0] for e in probe.events[-2:]] == ["after_fit", "cleanup_fit"]
    # Every forward pass: the training weights in training, the evaluation weights in validation.
    assert probe.forwards and all(training == in_train for training, in_train in probe.forwards)
    assert not train_mode(learn.opt)


def test_eval_mode_is_detected_by_methods_and_switched_once_per_phase_not_per_batch():
    calls = []

    class CountingSGD(torch.optim.SGD):  # no schedule-free in its name: told by its train() and eval()
        def train(self):
            calls.append("train")

        def eval(self):
            calls.append("eval")

    learn = make_learner(opt_func=lambda params, lr: CountingSGD(params, lr=lr))
    assert has_modes(CountingSGD([nn.Parameter(torch.ones(1))], lr=0.1))
    assert not has_modes(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1))
    learn.fit(3)  # 6 batches per epoch: still one switch per phase
    assert calls == ["train", "eval"] * 3 + ["eval", "eval"]  # after_fit, then cleanup_fit
    assert any(isinstance(cb, OptimizerModes) for cb in learn.cbs)


def test_an_exception_mid_fit_leaves_the_optimizer_in_eval_mode():
    class Boom(Callback):
        def after_step(self, learn):
            if learn.train_iter == 3:
                raise RuntimeError("boom")

    learn = make_learner()
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(2, cbs=[Boom()])
    assert not train_mode(learn.opt)


def evaluation_weights(learn) -> list[torch.Tensor]:
    """What eval() gives, computed on copies: x = y + (1 - 1/beta1) (z - y), with the optimizer's own lerp."""
    out = []
    for group in learn.opt.param_groups:
        beta1 = group["betas"][0]
        for p in group["params"]:
            out.append(p.detach().clone().lerp_(learn.opt.state[p]["z"], 1 - 1 / beta1))
    return out


def test_checkpoint_get_preds_and_predict_mid_training_see_the_evaluation_weights(tmp_path):
    seen = {}

    class Probe(Callback):
        order = 60

        def after_batch(self, learn):
            if learn.training and learn.train_iter == 7:
                assert train_mode(learn.opt)
                seen["x"] = evaluation_weights(learn)
                seen["y"] = [p.detach().clone() for p in learn.model.parameters()]
                learn.save(tmp_path / "mid.pt")
                seen["x_again"] = evaluation_weights(learn)  # from the weights the round trip eval -> train left
                learn.save(tmp_path / "mid_model.pt", model_only=True)
                assert train_mode(learn.opt)  # back to training once written
                xb = learn.dls.valid.x[:5]
                seen["preds"], _ = learn.get_preds()
                seen["predict"] = learn.predict(xb)
                assert train_mode(learn.opt)
                with torch.no_grad(), evaluating(learn):
                    seen["expected"] = learn.model.eval()(learn.dls.valid.x)
                learn.model.train()

    learn = make_learner()
    learn.fit(2, cbs=[Probe()])
    ckpt = read_checkpoint(tmp_path / "mid.pt")
    assert not any(g["train_mode"] for g in ckpt["optimizer"]["state"]["param_groups"])
    model_only = torch.load(tmp_path / "mid_model.pt", weights_only=True)
    for saved, x, y in zip(ckpt["model"].values(), seen["x"], seen["y"], strict=True):
        assert torch.equal(saved, x)
        assert not torch.equal(saved, y)  # the two sets of weights differ: the test can fail
    assert all(torch.equal(a, b) for a, b in zip(model_only.values(), seen["x_again"], strict=True))
    assert torch.equal(seen["preds"], seen["expected"])
    assert torch.equal(seen["predict"], seen["expected"][:5])


def test_lr_find_ends_in_eval_mode_with_the_learner_unchanged():
    learn = make_learner()
    learn.fit(1)
    before = [p.detach().clone() for p in learn.model.parameters()]
    result = learn.lr_find(num_it=10)
    assert len(result.lrs) == 10
    assert not train_mode(learn.opt)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))
    learn.fit(1)  # and it trains on from there


class Interrupt(Callback):
    order = 100

    def after_batch(self, learn):
        if learn.training and learn.stepped and learn.train_iter + 1 == 10:
            raise KeyboardInterrupt


def state(learn):
    opt = learn.opt.state_dict()
    tensors = [t for s in opt["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    return list(learn.model.state_dict().values()) + tensors, opt["param_groups"], learn.recorder.batch_rows


def assert_bitwise_equal(a, b):
    (ta, ga, ra), (tb, gb, rb) = state(a), state(b)
    assert len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb, strict=True))
    strip = [{k: v for k, v in g.items() if k != "params"} for g in ga]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in gb]
    assert ra == rb


@pytest.mark.parametrize("every_n_batches", [None, 4])
def test_schedule_free_resume_mid_fit_is_bitwise_the_uninterrupted_run(tmp_path, every_n_batches):
    path = tmp_path / "ckpt.pt"

    def saver():
        return SaveModelCallback(path, every_epoch=True, every_n_batches=every_n_batches)

    # The reference saves as the interrupted run does: a mid-epoch save goes eval -> train, whose round trip the
    # resumed run repeats from the saved weights. At epoch ends (already in eval mode) it is a run without saves.
    ref = make_learner()
    ref.fit(3, cbs=[saver()] if every_n_batches else [])
    killed = make_learner()
    with pytest.raises(KeyboardInterrupt):
        killed.fit(3, cbs=[saver(), Interrupt()])
    progress = read_checkpoint(path)["progress"]
    assert progress["at"] == ("batch_end" if every_n_batches else "epoch_end")
    resumed = make_learner()
    resumed.fit(3, cbs=[saver()], resume=path)
    assert_bitwise_equal(resumed, ref)
    assert not train_mode(resumed.opt)


def test_prodigy_effective_lr_in_the_recorder_is_d_times_lr_at_each_step():
    read = []

    class ReadD(Callback):
        order = 60  # after every scheduler, as the Recorder (50): the d and lr the coming step multiplies

        def before_step(self, learn):
            read.append([g["d"] * g["lr"] for g in learn.opt.param_groups])

    n_steps = 3 * 6
    learn = make_learner(opt_func=prodigyopt.Prodigy, lr=1.0,
                         splitter=lambda m: [list(m[0].parameters()), list(m[3].parameters())],
                         cbs=[ParamScheduler({"lr": cosine(1.0, 0.0, n_steps)}, unit="batch"), ReadD()])
    learn.fit(3)
    rows = learn.recorder.batch_rows
    assert len(rows) == len(read) == n_steps
    assert [[r["eff_lr_0"], r["eff_lr_1"]] for r in rows] == read
    assert [r["eff_lr"] for r in rows] == [v[-1] for v in read]
    assert learn.opt.param_groups[0]["d"] > 100 * 1e-6  # d grew from d0 = 1e-6: the two rates really differ
    assert max(v[0] for v in read) > 10 * read[0][0]
    assert [r["lr"] for r in rows] == [cosine(1.0, 0.0, n_steps)(i) for i in range(n_steps)]
    assert learn.recorder.group_values("eff_lr") == [[v[0] for v in read], [v[1] for v in read]]
    fig = learn.recorder.plot_sched()
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["nominal lr (group 0)", "nominal lr (group 1)", "effective d * lr (group 0)",
                      "effective d * lr (group 1)"]
    assert "eff_lr" in learn.recorder.to_df("batches").columns


def test_optimizers_without_d_record_no_effective_lr():
    learn = make_learner(opt_func=torch.optim.SGD)
    learn.fit(1)
    assert "eff_lr" not in learn.recorder.batch_rows[0]
    assert effective_lrs(learn.opt.param_groups) is None
    assert learn.recorder.group_values("eff_lr") == []
    assert [line.get_label() for line in learn.recorder.plot_sched().axes[0].lines] == ["_child0"]


def test_the_reproduction_in_two_shards_writes_every_run_once_then_the_table_and_plots(tmp_path):
    import math

    from experiments.optimizers import run_optimizers, write_summary

    runs = ["schedule_free_adamw", "prodigy_cosine"]
    for k in (0, 1):  # quick: 1024 training images, 2 epochs: the pipeline, not a result
        run_optimizers(tmp_path, seeds=[0], quick=True, runs=runs, shard=(k, 2), summarize=False, log=lambda _: None)
    assert sorted(p.name for p in tmp_path.glob("optimizers_runs_shard*.csv")) == [
        "optimizers_runs_shard0.csv", "optimizers_runs_shard1.csv"]
    result = write_summary(tmp_path, runs, {"epochs": 2, "n_train": 1024, "n_valid": 512}, quick=True)
    assert [e["run"] for e in result["summary"]] == runs and all(e["n"] == 1 for e in result["summary"])
    prodigy = result["summary"][1]
    assert prodigy["lr_mean"] == 1.0 and 0 < prodigy["final_eff_lr_mean"] < 1.0  # d * (cosine near 0)
    assert math.isclose(result["summary"][0]["lr_mean"], 0.0025)
    table = (tmp_path / "optimizers_table.md").read_text()
    assert "QUICK SMOKE RUN" in table and "| schedule_free_adamw |" in table and "| prodigy_cosine |" in table
    assert (tmp_path / "optimizers_curves.png").stat().st_size > 0 and (tmp_path / "optimizers_lrs.png").exists()
    with pytest.raises(ValueError, match="shard must be"):
        run_optimizers(tmp_path, seeds=[0], quick=True, shard=(2, 2))
