"""TensorBoardCallback and MLflowCallback, read back with the tools' own readers (tensorboard's EventAccumulator, an
MlflowClient on a real SQLite store) and compared step by step with the Recorder's DataFrames; an MLflow run ends
FAILED / KILLED when its fit raises / is interrupted; a fit resumed from a checkpoint leaves one continuous series."""

import importlib.util
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from cyclr import Callback, Learner, MLflowCallback, TensorBoardCallback, accuracy, synthetic_classification

STEPS_PER_EPOCH = 6


def make_learner(cbs=()):
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    dls = synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(model, dls, nn.CrossEntropyLoss(), lr=1e-2, metrics=[accuracy], device="cpu", progress=False,
                   cbs=list(cbs))


class SaveAt(Callback):
    """learn.save(path) in after_batch of optimizer step `step` (1-based)."""

    order = 90

    def __init__(self, path, step):
        self.path, self.step = path, step

    def after_batch(self, learn):
        if learn.training and learn.stepped and learn.train_iter + 1 == self.step:
            learn.save(self.path)


class Raise(Callback):
    """`error` right after optimizer step `step` (1-based)."""

    order = 100

    def __init__(self, step, error):
        self.step, self.error = step, error

    def after_batch(self, learn):
        if learn.training and learn.stepped and learn.train_iter + 1 == self.step:
            raise self.error


def expected_series(learn) -> dict[str, list[tuple[int, float]]]:
    """Every series the trackers write, built from the Recorder's DataFrames: (step, value) per key."""
    batches, epochs = learn.recorder.to_df("batches"), learn.recorder.to_df("epochs")
    series = {f"train/{k}": list(zip(batches["train_iter"], batches[k], strict=True))
              for k in ("loss", "smooth_loss", "lr", "mom")}
    # An epoch's values sit at the step of its last optimizer step.
    epoch_steps = [(e + 1) * STEPS_PER_EPOCH - 1 for e in epochs["epoch"]]
    for k in ("train_loss", "valid_loss", "accuracy"):
        series[f"epoch/{k}"] = list(zip(epoch_steps, epochs[k], strict=True))
    return series


def assert_series_equal(read: dict, expected: dict, rel: float) -> None:
    for key, points in expected.items():
        got = read[key]
        assert [s for s, _ in got] == [int(s) for s, _ in points], key  # every step once, in order
        assert [v for _, v in got] == pytest.approx([float(v) for _, v in points], rel=rel), key


# ----- TensorBoard ---------------------------------------------------------------------------------------------------
def read_tensorboard(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def test_tensorboard_writes_the_recorders_history_step_by_step_and_the_lr_find_curve_apart(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    learn = make_learner(cbs=[TensorBoardCallback(tmp_path / "tb")])
    finder = learn.lr_find(num_it=12)
    learn.fit_one_cycle(2, 0.05, pct_start=0.4)
    read, acc = read_tensorboard(tmp_path / "tb")
    # Event files keep float32: equal to the Recorder's floats to float32 precision.
    assert_series_equal(read, expected_series(learn), rel=1e-6)
    assert not any(tag.startswith("lr_find") for tag in read)  # the sweep never mixes with the training run

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["n_epoch"].number_value == 2 and hparams["batches_per_epoch"].number_value == STEPS_PER_EPOCH
    assert hparams["optimizer"].string_value == type(learn.opt).__name__ and hparams["bs"].number_value == 16
    # What the fit used (not learn.lr, 1e-2): the schedule's arguments, each a param of its own.
    assert "lr" not in hparams and hparams["lr_schedule"].string_value == "one_cycle"
    assert hparams["one_cycle.max_lr"].number_value == 0.05 and hparams["one_cycle.pct_start"].number_value == 0.4

    sweep, _ = read_tensorboard(tmp_path / "tb" / "lr_find")
    assert [s for s, _ in sweep["lr_find/lr"]] == list(range(len(finder.lrs)))
    assert [v for _, v in sweep["lr_find/lr"]] == pytest.approx(finder.lrs, rel=1e-6)
    assert [v for _, v in sweep["lr_find/loss"]] == pytest.approx(finder.losses, rel=1e-6)


def test_tensorboard_resumed_fit_leaves_one_continuous_series(tmp_path):
    ref = make_learner()
    ref.fit_one_cycle(3, 0.05)

    ckpt, log_dir = tmp_path / "ckpt.pt", tmp_path / "tb"
    # Checkpoint after step 3 (mid epoch 0); interrupted (Ctrl-C) after step 10: the run holds the 10 steps the
    # Recorder kept (0-9, the interrupted epoch's too); the resumed fit logs steps 3-9 again, shown once.
    killed = make_learner(cbs=[TensorBoardCallback(log_dir)])
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(3, 0.05, cbs=[SaveAt(ckpt, 3), Raise(10, KeyboardInterrupt())])
    logged = read_tensorboard(log_dir)[0]["train/loss"]
    assert [s for s, _ in logged] == killed.recorder.to_df("batches")["train_iter"].tolist() == list(range(10))
    assert [v for _, v in logged] == pytest.approx(killed.recorder.to_df("batches")["loss"].tolist(), rel=1e-6)

    resumed = make_learner(cbs=[TensorBoardCallback(tmp_path / "elsewhere")])  # the checkpoint names the run
    resumed.fit_one_cycle(3, 0.05, resume=ckpt)
    read, _ = read_tensorboard(log_dir)
    assert_series_equal(read, expected_series(ref), rel=1e-6)
    assert not (tmp_path / "elsewhere").exists()


def test_a_second_fit_goes_on_at_the_next_step(tmp_path):
    learn = make_learner(cbs=[TensorBoardCallback(tmp_path / "tb")])
    learn.fit(1)
    learn.fit(2)
    read, _ = read_tensorboard(tmp_path / "tb")
    assert [s for s, _ in read["train/loss"]] == list(range(3 * STEPS_PER_EPOCH))
    assert [v for _, v in read["train/loss"]] == pytest.approx(learn.recorder.to_df("batches")["loss"].tolist(),
                                                               rel=1e-6)


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ImportError, match=r"MLflowCallback needs the 'mlflow-skinny' package, which is not "
                                          r"installed: pip install 'cyclr\[track\]'"):
        MLflowCallback()


def test_only_the_main_process_logs(tmp_path):
    learn = make_learner(cbs=[TensorBoardCallback(tmp_path / "tb")])
    learn.rank = 1  # what a second torchrun process sees
    learn.fit(1)
    assert not (tmp_path / "tb").exists()


# ----- MLflow (one SQLite store for the module: creating one runs MLflow's migrations, several seconds) ------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    from mlflow import MlflowClient

    return uri, MlflowClient(tracking_uri=uri)


def read_mlflow(client, run_id) -> dict:
    keys = client.get_run(run_id).data.metrics
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def test_mlflow_run_matches_the_recorder_and_lr_find_is_a_run_of_its_own(store, tmp_path):
    uri, client = store
    cb = MLflowCallback(uri, experiment="match", run_name="two-epochs", log_history=True)
    learn = make_learner(cbs=[cb])
    finder = learn.lr_find(num_it=12)
    learn.fit_one_cycle(2, 0.05)
    run = client.get_run(cb.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "two-epochs"
    assert_series_equal(read_mlflow(client, cb.run_id), expected_series(learn), rel=1e-12)  # doubles: exact
    assert run.data.params["n_epoch"] == "2" and run.data.params["optimizer"] == type(learn.opt).__name__
    artifacts = {a.path for a in client.list_artifacts(cb.run_id, "history")}
    assert artifacts == {"history/batches.csv", "history/epochs.csv"}

    runs = client.search_runs([run.info.experiment_id])
    sweep = next(r for r in runs if r.data.tags.get("cyclr.kind") == "lr_find")
    assert sweep.info.run_id != cb.run_id and sweep.info.status == "FINISHED"
    curve = read_mlflow(client, sweep.info.run_id)
    assert [v for _, v in curve["lr_find/lr"]] == pytest.approx(finder.lrs, rel=1e-12)
    assert not any(k.startswith("lr_find") for k in run.data.metrics)


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_mlflow_run_ends_failed_or_killed_when_the_fit_does_not_end(store, error, status):
    uri, client = store
    cb = MLflowCallback(uri, experiment="failing")
    learn = make_learner(cbs=[cb])
    with pytest.raises(type(error)):
        learn.fit(2, cbs=[Raise(8, error)])
    assert client.get_run(cb.run_id).info.status == status
    # Every step the Recorder kept is in the run, the interrupted epoch's too (steps 6 and 7), as the Recorder has it.
    logged = read_mlflow(client, cb.run_id)["train/loss"]
    batches = learn.recorder.to_df("batches")
    assert [s for s, _ in logged] == batches["train_iter"].tolist() == list(range(8))
    assert [v for _, v in logged] == batches["loss"].tolist()


def test_mlflow_resumed_fit_appends_to_the_same_run_without_duplicates(store, tmp_path):
    uri, client = store
    ref = make_learner()
    ref.fit_one_cycle(3, 0.05)

    ckpt = tmp_path / "ckpt.pt"
    cb = MLflowCallback(uri, experiment="resume")
    killed = make_learner(cbs=[cb])
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(3, 0.05, cbs=[SaveAt(ckpt, 3), Raise(10, KeyboardInterrupt())])
    assert client.get_run(cb.run_id).info.status == "KILLED"

    again = MLflowCallback(uri, experiment="resume")
    resumed = make_learner(cbs=[again])
    resumed.fit_one_cycle(3, 0.05, resume=ckpt)
    assert again.run_id == cb.run_id
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert_series_equal(read_mlflow(client, cb.run_id), expected_series(ref), rel=1e-12)


# ----- what the fit really used (issue 23.1) -------------------------------------------------------------------------
def two_group_learner(cbs=()):
    learn = make_learner(cbs=cbs)
    learn.splitter = lambda model: [list(model[0].parameters()), list(model[2].parameters())]
    return learn


def test_params_record_the_rates_the_fit_used_not_learn_lr(store):
    uri, client = store
    constant = MLflowCallback(uri, experiment="params")
    learn = make_learner(cbs=[constant])  # learn.lr is 1e-2
    learn.fit(1, lr=1e-4, wd=0.05)
    params = client.get_run(constant.run_id).data.params
    assert params["lr"] == "0.0001" and params["lr_schedule"] == "constant" and params["wd"] == "0.05"
    assert (params["n_epoch"], params["n_steps"], params["bs"]) == ("1", str(STEPS_PER_EPOCH), "16")

    one_cycle = MLflowCallback(uri, experiment="params")
    learn = two_group_learner(cbs=[one_cycle])
    learn.fit_one_cycle(2, slice(1e-3, 1e-1), pct_start=0.4, div_factor=20.0)
    params = client.get_run(one_cycle.run_id).data.params
    assert "lr" not in params and params["lr_schedule"] == "one_cycle"
    assert params["one_cycle.max_lr"] == repr(slice(1e-3, 1e-1))
    assert float(params["one_cycle.max_lr_0"]) == 1e-3 and float(params["one_cycle.max_lr_1"]) == 1e-1
    assert params["one_cycle.pct_start"] == "0.4" and params["one_cycle.div_factor"] == "20.0"
    assert params["n_epoch"] == "2" and params["n_param_groups"] == "2" and params["optimizer"] == "AdamW"
    assert not any(k.startswith("cb/") for k in params)  # no truncated reprs where the arguments are logged


def test_tensorboard_hparams_of_a_plain_fit_give_its_lr(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    learn = make_learner(cbs=[TensorBoardCallback(tmp_path / "tb")])  # learn.lr is 1e-2
    learn.fit(1, lr=3e-4)
    _, acc = read_tensorboard(tmp_path / "tb")
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr_schedule"].string_value == "constant" and hparams["lr"].number_value == 3e-4


def test_default_folder_is_one_per_callback_lr_find_and_fits_inside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = TensorBoardCallback(), TensorBoardCallback()  # created in the same second
    assert first.log_dir != second.log_dir
    learn = make_learner(cbs=[first])
    learn.lr_find(num_it=6)
    learn.fit(1)
    make_learner(cbs=[second]).fit(1)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == sorted(os.path.basename(cb.log_dir) for cb in (first, second))
    assert (tmp_path / "runs" / os.path.basename(first.log_dir) / "lr_find").is_dir()
    assert [s for s, _ in read_tensorboard(first.log_dir)[0]["train/loss"]] == list(range(STEPS_PER_EPOCH))


def test_params_of_a_torch_scheduler_are_its_settings_and_rates(store):
    from torch.optim.lr_scheduler import OneCycleLR

    from cyclr import TorchScheduler

    uri, client = store
    cb = MLflowCallback(uri, experiment="params")
    learn = two_group_learner(cbs=[cb])
    factory = lambda opt, total_steps: OneCycleLR(opt, max_lr=[0.02, 0.2], total_steps=total_steps)  # noqa: E731
    learn.fit(2, cbs=[TorchScheduler(factory)])
    params = client.get_run(cb.run_id).data.params
    assert "lr" not in params and params["lr_schedule"] == "torch_scheduler"
    assert params["torch_scheduler.scheduler"] == "OneCycleLR" and params["torch_scheduler.total_steps"] == "12"
    assert (params["torch_scheduler.max_lr_0"], params["torch_scheduler.max_lr_1"]) == ("0.02", "0.2")
    assert params["torch_scheduler.base_lr_1"] == str(0.2 / 25)  # where OneCycleLR starts: max_lr / div_factor


def test_the_default_mlflow_store_is_refused_when_it_is_a_symbolic_link(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")  # the dev extra installs it: skipped only where the `track` extra is absent
    someone_elses = tmp_path / "elsewhere" / "their.db"
    someone_elses.parent.mkdir()
    someone_elses.write_bytes(b"their store")
    (tmp_path / "mlflow.db").symlink_to(someone_elses)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=r"mlflow\.db is a symbolic link \(to .*their\.db\).*tracking_uri="):
        MLflowCallback()
    assert someone_elses.read_bytes() == b"their store"
    # Named explicitly, the same store is the user's choice; and without the link the default is the local file.
    assert MLflowCallback(tracking_uri=f"sqlite:///{someone_elses}").tracking_uri.endswith("their.db")
    (tmp_path / "mlflow.db").unlink()
    assert MLflowCallback().tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
