"""The Optuna integration (callbacks/tuning.py) on real Optuna studies: a pruned trial stops cleanly (the weights of
its last epoch, complete checkpoint files and nothing more, an MLflow run ended KILLED, a TensorBoard writer closed),
a kept trial ends FINISHED, bad arguments are refused before anything trains, and `tune_lr`'s study lives in a
SQLite database that a second call goes on with."""

import importlib.util
import math
import subprocess
import sys

import optuna
import pytest
import torch
from torch import nn

from cyclr import (
    Learner,
    MLflowCallback,
    OptunaPruning,
    SaveModelCallback,
    TensorBoardCallback,
    accuracy,
    sgd,
    synthetic_classification,
    tune_lr,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
BATCHES = 6  # 96 samples in batches of 16


def make_learner(cbs=(), opt_func=sgd):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0, spread=2.0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), opt_func=opt_func, lr=0.05, metrics=[accuracy], device="cpu",
                   progress=False, cbs=list(cbs))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    # One store for the module's MLflow runs: creating a store (its schema migrations) is the slow part.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def prune_from_epoch_1() -> optuna.pruners.BasePruner:
    # A valid loss is always above 0: this pruner stops every trial at its first step past the warm-up.
    return optuna.pruners.ThresholdPruner(upper=0.0, n_warmup_steps=1)


def test_pruned_trial_stops_cleanly(tmp_path, mlflow_uri):
    ckpt_dir, tb_dir = tmp_path / "ckpt", tmp_path / "tb"
    mlflow_cb = MLflowCallback(tracking_uri=mlflow_uri, experiment="pruned")
    tb_cb = TensorBoardCallback(tb_dir)
    saver = SaveModelCallback(ckpt_dir / "ckpt_{epoch}.pt", every_epoch=True)
    learners = []

    def objective(trial):
        learn = make_learner(cbs=[mlflow_cb, tb_cb, saver])
        learners.append(learn)
        learn.fit_one_cycle(4, max_lr=0.05, cbs=[OptunaPruning(trial)])
        return learn.recorder.epoch_rows[-1]["valid_loss"]

    study = optuna.create_study(pruner=prune_from_epoch_1())
    study.optimize(objective, n_trials=1)
    trial, learn = study.trials[0], learners[0]

    assert trial.state == optuna.trial.TrialState.PRUNED
    valid = [row["valid_loss"] for row in learn.recorder.epoch_rows]
    assert len(valid) == 2 and trial.intermediate_values == {0: valid[0], 1: valid[1]}
    # Stopped right after epoch 1: no step of epoch 2 was taken, and the loop is out of its fit.
    assert learn.train_iter == 2 * BATCHES and not learn.in_fit
    assert not any(isinstance(cb, OptunaPruning) for cb in learn.cbs)
    # The pruned epoch was checkpointed whole before the fit stopped; no later file, no temporary file left.
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.suffix == ".pt") == ["ckpt_0.pt", "ckpt_1.pt"]
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".cyclr-tmp")]
    saved = torch.load(ckpt_dir / "ckpt_1.pt", weights_only=True)["model"]
    for name, tensor in learn.model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    # The MLflow run of the pruned trial: KILLED, tagged, with both epochs logged; TensorBoard's writer closed.
    run = mlflow_cb.client.get_run(mlflow_cb.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["optuna.pruned_epoch"] == "1" and run.data.tags["optuna.trial"] == "0"
    history = mlflow_cb.client.get_metric_history(mlflow_cb.run_id, "epoch/valid_loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(valid)
    assert tb_cb.writer is None


def test_pruned_trial_stays_pruned_when_its_run_cannot_be_marked(mlflow_uri, monkeypatch):
    from mlflow import MlflowClient

    def refuse(*args, **kwargs):
        raise OSError("the store is read-only")

    monkeypatch.setattr(MlflowClient, "set_tag", refuse)
    mlflow_cb = MLflowCallback(tracking_uri=mlflow_uri, experiment="unmarked")

    def objective(trial):
        make_learner(cbs=[mlflow_cb]).fit_one_cycle(3, max_lr=0.05, cbs=[OptunaPruning(trial)])
        return 0.0

    study = optuna.create_study(pruner=prune_from_epoch_1())
    with pytest.warns(RuntimeWarning, match="could not mark the MLflow run .* as KILLED .*read-only.*stays FINISHED"):
        study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert mlflow_cb.client.get_run(mlflow_cb.run_id).info.status == "FINISHED"


def test_kept_trial_finishes(mlflow_uri):
    mlflow_cb = MLflowCallback(tracking_uri=mlflow_uri, experiment="kept")
    learners = []

    def objective(trial):
        learn = make_learner(cbs=[mlflow_cb])
        learners.append(learn)
        learn.fit_one_cycle(3, max_lr=0.05, cbs=[OptunaPruning(trial, monitor="accuracy")])
        return learn.recorder.epoch_rows[-1]["accuracy"]

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=1)
    trial, learn = study.trials[0], learners[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.intermediate_values == {i: row["accuracy"] for i, row in enumerate(learn.recorder.epoch_rows)}
    assert len(trial.intermediate_values) == 3 and learn.train_iter == 3 * BATCHES
    assert mlflow_cb.client.get_run(mlflow_cb.run_id).info.status == "FINISHED"


def test_bad_monitor_refused_before_training():
    study = optuna.create_study()
    trial = study.ask()
    learn = make_learner()
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"monitor='val_loss' is not recorded; choose one of \['train_loss', "
                       r"'valid_loss', 'accuracy'\]"):
        learn.fit_one_cycle(2, cbs=[OptunaPruning(trial, monitor="val_loss")])
    assert learn.train_iter == 0 and study.trials[0].intermediate_values == {}
    for name, tensor in learn.model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_bad_arguments_refused_when_made():
    with pytest.raises(TypeError, match="must be an optuna Trial"):
        OptunaPruning(object())
    with pytest.raises(ValueError, match="direction='maximize'.*create the study with direction='minimize'"):
        OptunaPruning(optuna.create_study(direction="maximize").ask(), monitor="valid_loss")
    with pytest.raises(ValueError, match="multi-objective"):
        OptunaPruning(optuna.create_study(directions=["minimize", "minimize"]).ask())
    # mode='min' for a metric whose name does not say it falls as training improves
    OptunaPruning(optuna.create_study().ask(), monitor="perplexity", mode="min")


def test_sits_out_an_lr_find_sweep():
    trial = optuna.create_study(pruner=prune_from_epoch_1()).ask()
    learn = make_learner(cbs=[OptunaPruning(trial)])
    learn.lr_find(num_it=2 * BATCHES + 3)  # three epochs of sweep: nothing reported, nothing pruned
    assert trial.study.trials[0].intermediate_values == {}


def test_optuna_imported_only_when_used(monkeypatch):
    code = "import sys, cyclr.callbacks; assert 'optuna' not in sys.modules, 'optuna imported by cyclr.callbacks'"
    subprocess.run([sys.executable, "-c", code], check=True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else
                        real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'cyclr\[tune\]'"):
        OptunaPruning(None)


# ----- tune_lr ------------------------------------------------------------------------------------------------------
def test_tune_lr_resumes_from_its_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search = {"max_lr": (1e-3, 0.5), "pct_start": (0.1, 0.5)}
    first = tune_lr(make_learner, n_trials=3, epochs=2, storage=url, study_name="resume", search=search, seed=0)
    first_params = [t.params for t in first.trials]
    assert len(first_params) == 3

    second = tune_lr(make_learner, n_trials=2, epochs=2, storage=url, study_name="resume", search=search, seed=0)
    stored = optuna.load_study(study_name="resume", storage=url)  # read back from the file, as a new process would
    assert len(second.trials) == len(stored.trials) == 5
    assert [t.params for t in stored.trials[:3]] == first_params
    for t in stored.trials:
        assert t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        assert 1e-3 <= t.params["max_lr"] <= 0.5 and 0.1 <= t.params["pct_start"] <= 0.5
        assert t.user_attrs["seconds"] > 0 and t.user_attrs["diverged"] in (False, None)
        expected = 2.0 if t.state == optuna.trial.TrialState.COMPLETE else t.last_step + 1
        assert t.user_attrs["epochs_trained"] == expected
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == t.intermediate_values[1]  # the final epoch's valid loss


def test_tune_lr_scores_a_diverged_fit_as_the_worst(tmp_path):
    with pytest.warns(RuntimeWarning, match="the training loss is (nan|inf)"):
        study = tune_lr(make_learner, n_trials=1, epochs=2, storage=f"sqlite:///{tmp_path / 's.db'}",
                        search={"max_lr": (1e4, 1e5)}, monitor="accuracy")
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == -math.inf and trial.user_attrs["diverged"] is True
    assert trial.user_attrs["epochs_trained"] < 2


def test_tune_lr_seeded_from_lr_find(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = tune_lr(make_learner, n_trials=2, epochs=1, storage=url, study_name="seeded", seed_from_lr_find=True,
                    lr_find_span=4.0, seed=0)
    valley, seconds = study.user_attrs["lr_find_valley"], study.user_attrs["lr_find_seconds"]
    # the valley of the same learner's own sweep; the first trial trains at it, the others within the span
    assert valley == pytest.approx(make_learner().lr_find().suggestions["valley"].lr, rel=1e-12)
    assert study.trials[0].params["max_lr"] == pytest.approx(valley, rel=1e-12)
    again = tune_lr(make_learner, n_trials=2, epochs=1, storage=url, study_name="seeded", seed_from_lr_find=True,
                    lr_find_span=4.0, seed=0)
    assert again.user_attrs["lr_find_seconds"] == seconds  # the sweep ran once for the study
    assert len(again.trials) == 4
    for t in again.trials:
        assert valley / 4 <= t.params["max_lr"] <= valley * 4


@pytest.mark.parametrize("kwargs, error, match", [
    ({"search": {"lr": (1e-3, 1e-1)}}, ValueError, "search has 'lr'"),
    ({"search": {"max_lr": (1e-1, 1e-3)}}, ValueError, "lo < hi"),
    ({"search": {"wd": (0, 1e-1)}}, ValueError, "must be > 0"),
    ({"search": {"pct_start": (0.1, 1.0)}}, ValueError, r"in \(0, 1\)"),
    ({"search": {"max_lr": (1e-3, 1e-1)}, "seed_from_lr_find": True}, ValueError, "leave max_lr out"),
    ({"monitor": "f1"}, ValueError, "monitor='f1' is not recorded"),
    ({"n_trials": 0}, ValueError, "n_trials"),
])
def test_tune_lr_refuses_bad_arguments_before_creating_the_study(tmp_path, kwargs, error, match):
    db = tmp_path / "study.db"
    with pytest.raises(error, match=match):
        tune_lr(make_learner, **{"n_trials": 1, "epochs": 1, "storage": f"sqlite:///{db}", **kwargs})
    assert not db.exists()
