"""Data-parallel training (learner/distributed.py), checked with real processes: torchrun on CPU with gloo.

Each torchrun launch starts 2 processes of tests/ddp_worker.py, which save what they saw and ended with; the checks
compare the ranks with each other and with single-process oracles computed here (the same model trained with the
global batch size, the same weights evaluated on the whole validation set).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ddp_worker as worker
import pytest
import torch
from torch import nn

from cyclr import DataLoaders, InMemoryLoader, Learner, TorchLoader
from cyclr.learner.distributed import DistributedCallback, shard_dataloaders

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60  # per launch; a job that hangs fails the test instead of the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(mode: str, out: Path) -> tuple[int, str, float]:
    """Run `ddp_worker.py mode out` in 2 processes; return the exit code, the combined output and the seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(REPO / "tests" / "ddp_worker.py"), mode, str(out)]
    start = time.perf_counter()
    # A session of its own, so a timeout can end the launcher and both workers together.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun {mode} did not end within {TIMEOUT_S} s (a hang):\n{output[-4000:]}")
    return proc.returncode, output, time.perf_counter() - start


def load_ranks(out: Path, stem: str) -> list[dict]:
    return [torch.load(out / f"{stem}{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.fixture(scope="module")
def train_job(tmp_path_factory) -> tuple[int, str, Path]:
    """One launch for all the checks (starting 2 processes costs far more than their training)."""
    out = tmp_path_factory.mktemp("ddp_train")
    returncode, output, _ = torchrun("train", out)
    return returncode, output, out


@pytest.fixture(scope="module")
def ranks(train_job) -> list[dict]:
    returncode, output, out = train_job
    if not (out / "rank0.pt").exists() or not (out / "rank1.pt").exists():
        pytest.fail(f"torchrun train failed (exit code {returncode}):\n{output[-4000:]}")
    return load_ranks(out, "rank")


@pytest.fixture(scope="module")
def one_process() -> Learner:
    """The same fit in a single process with the global batch size (2 x the per-process batch)."""
    learn = Learner(worker.mlp(seed=0), worker.data(bs=2 * worker.BS), nn.CrossEntropyLoss(), lr=worker.MAX_LR,
                    device="cpu", progress=False)
    learn.fit_one_cycle(worker.EPOCHS, max_lr=worker.MAX_LR)
    return learn


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy over the whole set in one forward pass: the single-process oracle."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    return nn.functional.cross_entropy(out, y).item(), (out.argmax(1) == y).sum().item() / len(y)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between ranks"


# ----- launched with torchrun ---------------------------------------------------------------------------------------
def test_each_process_joins_and_only_rank_0_shows_progress(ranks):
    assert [(r["rank"], r["world_size"], r["is_main_process"]) for r in ranks] == [(0, 2, True), (1, 2, False)]
    assert ranks[0]["callbacks"][0] == ranks[1]["callbacks"][0] == "DistributedCallback"  # first at every event
    assert "ProgressCallback" in ranks[0]["callbacks"] and "ProgressCallback" not in ranks[1]["callbacks"]
    assert [name for name in ranks[0]["callbacks"] if name != "ProgressCallback"] == ranks[1]["callbacks"]


def test_a_learner_built_under_torchrun_joins_at_its_first_fit_not_before(ranks):
    for r in ranks:
        before = r["before_join"]
        # No process group yet (nothing waited for the other process), the whole training data (16 batches of 16),
        # no DistributedCallback: a plain learner until fit, whose repr reads the unsharded loaders.
        assert (before["world_size"], before["rank"], before["group"]) == (1, 0, False)
        assert before["n_train_batches"] == 16 and "DistributedCallback" not in before["callbacks"]
        assert before["repr"].startswith("Learner(model=Sequential (") and "train=16 batches, valid=11 batches" in (
            before["repr"])
        assert (r["world_size"], r["n_train_batches"]) == (2, 8)  # joined by fit, before its epoch length


def test_validate_and_get_preds_join_before_reading_the_loaders(ranks):
    valid = worker.data().valid
    for rank, r in enumerate(ranks):
        n_shard = len(valid.y[rank::2])  # 51 on rank 0, 50 on rank 1
        validated, predicted = r["joins"]["validate"], r["joins"]["get_preds"]
        for joined in (validated, predicted):
            assert (joined["world_size_before"], joined["world_size"], joined["n_valid"]) == (1, 2, n_shard)
        preds, targets = predicted["result"]
        assert preds.shape == (n_shard, worker.N_CLASSES) and torch.equal(targets, valid.y[rank::2])
        # validate's result is the mean over all samples (both shards summed), the same on both ranks
        model = worker.mlp(seed=0)
        assert validated["result"]["valid_loss"] == pytest.approx(evaluate(model, valid.x, valid.y)[0], rel=1e-6)


def test_model_is_the_ddp_wrapper_only_for_the_training_forward_pass(ranks):
    for r in ranks:
        assert r["model_types"] == {
            "train before_batch": ["DistributedDataParallel"],  # so forward (or a subclass's) goes through it
            "train after_pred": ["Sequential"], "train after_batch": ["Sequential"],  # clipping, checkpoints
            "valid before_batch": ["Sequential"], "valid after_pred": ["Sequential"],
            "valid after_batch": ["Sequential"],
        }
        assert r["model_type_after_fit"] == "Sequential"
        assert not any(name.startswith("module.") for name in r["weights"])  # saves like a plain module


def test_schedules_and_steps_identical_on_every_rank_and_equal_to_one_process(ranks, one_process):
    # 128 samples per rank in batches of 16: 8 steps per epoch everywhere, the single process's count with bs 32.
    assert [r["n_train_batches"] for r in ranks] == [len(one_process.dls.train)] * 2 == [8, 8]
    rank0, rank1 = (r["batches"] for r in ranks)
    assert rank0["train_iter"] == rank1["train_iter"] == list(range(worker.EPOCHS * 8))
    for column in ("pct", "lr", "mom"):
        assert rank0[column] == rank1[column], column
    assert rank0["lr"] == one_process.recorder.lrs
    assert rank0["mom"] == one_process.recorder.moms
    # The recorded batch loss is the mean over both ranks' batches: the single process's loss on their union.
    assert rank0["loss"] == rank1["loss"]
    assert rank0["loss"] == pytest.approx(one_process.recorder.losses, abs=1e-6)


def test_each_rank_trains_on_its_own_shard_reshuffled_in_step(ranks):
    # The single process's order with the same seed; rank r takes its positions r, r + 2, r + 4, ...
    loader = worker.data().train
    for epoch in range(worker.EPOCHS):
        global_order = torch.cat([xb[:, 0] for xb, _ in loader]).tolist()
        assert ranks[0]["seen"][epoch] == global_order[0::2]
        assert ranks[1]["seen"][epoch] == global_order[1::2]
    assert ranks[0]["seen"][0] != ranks[0]["seen"][1]  # reshuffled between epochs


def test_final_weights_identical_on_every_rank_and_equal_to_one_process(ranks, one_process):
    assert_same_weights(ranks[0]["weights"], ranks[1]["weights"])
    for name, value in one_process.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][name], value, atol=1e-5, rtol=0)


def test_validation_averages_every_sample_exactly_once(ranks):
    valid = worker.data().valid
    assert worker.N_VALID % 2 == 1  # uneven shards: 51 and 50 samples, 6 and 5 batches
    model = worker.mlp(seed=0)
    model.load_state_dict(ranks[0]["weights"])
    loss, acc = evaluate(model, valid.x, valid.y)
    for r in ranks:
        assert r["epochs"]["valid_loss"][-1] == pytest.approx(loss, rel=1e-6)
        # Each batch's accuracy is a float32 mean: exact to ~1e-7, then weighted and summed.
        assert r["epochs"]["accuracy"][-1] == pytest.approx(acc, abs=1e-6)
        assert r["validate"] == pytest.approx({"valid_loss": loss, "accuracy": acc}, rel=1e-6)
    assert ranks[0]["epochs"] == ranks[1]["epochs"]  # train_loss too: summed over both shards


def test_torch_dataloader_path_with_batchnorm(ranks):
    # DistributedSampler shards for training, one Subset per rank for validation; batch-norm statistics are
    # rank 0's on every rank after training, so validation and the saved model agree everywhere.
    bn0, bn1 = ranks[0]["bn"], ranks[1]["bn"]
    assert bn0["n_train_batches"] == bn1["n_train_batches"] == 8
    assert_same_weights(bn0["weights"], bn1["weights"])
    model = worker.mlp(seed=0, batchnorm=True)
    model.load_state_dict(bn0["weights"])
    valid = worker.data().valid
    loss, acc = evaluate(model, valid.x, valid.y)
    for bn in (bn0, bn1):
        assert bn["epochs"]["valid_loss"] == pytest.approx([loss], rel=1e-6)
        assert bn["epochs"]["accuracy"] == pytest.approx([acc], abs=1e-6)


def test_resume_under_ddp_continues_exactly(ranks):
    for r in ranks:
        runs = r["resume"]
        for name in ("epoch_end", "mid_epoch"):
            assert_same_weights(runs[name]["weights"], runs["uninterrupted"]["weights"])
            assert runs[name]["epochs"]["valid_loss"] == runs["uninterrupted"]["epochs"]["valid_loss"]
        # From an epoch-end checkpoint the history is exact too. Mid-epoch, the batches before the checkpoint come
        # back as rank 0 recorded them (its own losses and sums, not yet averaged with the others'): the same
        # from the checkpoint on.
        assert runs["epoch_end"]["epochs"] == runs["uninterrupted"]["epochs"]
        assert runs["epoch_end"]["losses"] == runs["uninterrupted"]["losses"]
        assert runs["mid_epoch"]["losses"][11:] == runs["uninterrupted"]["losses"][11:]
    assert_same_weights(ranks[0]["resume"]["mid_epoch"]["weights"], ranks[1]["resume"]["mid_epoch"]["weights"])


def test_distributed_block_joins_an_existing_group_and_leaves_it(ranks):
    for r in ranks:
        ctx = r["context"]
        assert ctx["inside"]["world_size"] == 2 and ctx["inside"]["n_train_batches"] == 8
        assert ctx["world_size_after"] == 1 and ctx["dls_restored"]
        assert ctx["inside"]["callbacks"][0] == "DistributedCallback"
        assert "DistributedCallback" not in ctx["callbacks_after"]
        assert "ProgressCallback" in ctx["callbacks_after"]  # on rank 1 too: hidden inside the block only
        assert ctx["train_epoch_after"] == 1  # the shuffling state moved on with the shard's
    assert "ProgressCallback" not in ranks[1]["context"]["inside"]["callbacks"]
    assert_same_weights(ranks[0]["context"]["weights"], ranks[1]["context"]["weights"])


def test_lr_find_gives_the_same_curve_and_suggestions_on_every_rank(train_job):
    returncode, output, out = train_job
    assert returncode == 0, f"torchrun train failed in lr_find:\n{output[-4000:]}"
    rank0, rank1 = load_ranks(out, "lr_find")
    assert len(rank0["lrs"]) > 5
    assert rank0["world_sizes"] == [1, 2]  # joined by lr_find itself, before its snapshot
    assert rank0 == rank1  # same lrs, same (all-reduced) losses, hence the same stop and suggestions
    assert all(math.isfinite(v) and v > 0 for v in rank0["suggestions"].values())


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    returncode, output, seconds = torchrun("fail", tmp_path)
    assert returncode != 0
    assert f"ValueError: {worker.FAILURE_MESSAGE}" in output
    assert not list(tmp_path.glob("finished*"))  # neither rank went on as if nothing happened
    assert seconds < TIMEOUT_S


# ----- in this process --------------------------------------------------------------------------------------------
def test_a_stopped_rank_times_out_the_others_naming_it(tmp_path):
    # Two processes as torchrun would start them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*), without torchrun, whose
    # own clean-up waits 30 s on a stopped worker; rank 0 hosts the rendezvous store.
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                CYCLR_DIST_TIMEOUT="4", PYTHONPATH=os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH")) if p))
    ranks = [subprocess.Popen([sys.executable, str(REPO / "tests" / "ddp_worker.py"), "hang", str(tmp_path)],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        start = time.perf_counter()
        output, _ = ranks[0].communicate(timeout=120)
        seconds = time.perf_counter() - start
        assert ranks[1].poll() is None  # stopped, not dead: only a timeout could end rank 0's wait
    finally:
        for rank in ranks:
            rank.kill()  # SIGKILL ends a stopped process too
            rank.communicate(timeout=60)
    assert ranks[0].returncode == 1
    assert "Timed out waiting 4000ms" in output
    assert ("cyclr: rank(s) [1] of 2 stopped answering: rank 0 waited 4 s for them in a collective (the timeout: "
            "$CYCLR_DIST_TIMEOUT seconds for the group cyclr creates") in output
    assert "ranks [0] are alive" in output
    assert seconds < 60  # the timeout, plus the roll call's grace (at most the timeout), plus start-up
    assert not list(tmp_path.glob("finished*"))


@pytest.mark.parametrize(("value", "match"), [("0", "got 0.0"), ("ten", "got 'ten'"), ("inf", "got inf")])
def test_a_bad_dist_timeout_is_refused_naming_the_variable(monkeypatch, value, match):
    from cyclr.learner.dist_timeout import dist_timeout

    monkeypatch.setenv("CYCLR_DIST_TIMEOUT", value)
    with pytest.raises(ValueError, match=rf"\$CYCLR_DIST_TIMEOUT must be a number of seconds > 0.*{match}"):
        dist_timeout()
    monkeypatch.delenv("CYCLR_DIST_TIMEOUT")
    assert dist_timeout().total_seconds() == 600  # well under torch's 30 minutes
    assert dist_timeout(2.5).total_seconds() == 2.5


def test_distributed_does_nothing_in_a_single_process():
    def fit(use_block: bool) -> Learner:
        learn = Learner(worker.mlp(seed=0), worker.data(), nn.CrossEntropyLoss(), lr=0.1, device="cpu",
                        progress=False)
        if use_block:
            with learn.distributed():
                assert learn.world_size == 1 and not learn.is_distributed and learn.is_main_process
                assert not any(isinstance(cb, DistributedCallback) for cb in learn.cbs)
                learn.fit(1)
        else:
            learn.fit(1)
        return learn

    plain, block = fit(False), fit(True)
    assert_same_weights(plain.model.state_dict(), block.model.state_dict())
    t = torch.tensor([1.0, 2.0])
    assert block.all_reduce_sum(t) is t and block.all_reduce_mean(t) is t
    block.barrier()  # no process group: returns at once


@pytest.mark.parametrize("kind", ["in_memory", "torch"])
def test_shards_split_training_evenly_and_validation_exactly(kind):
    world_size, n_train, n_valid = 3, 10, 10  # neither divides evenly
    x_train, x_valid = torch.arange(n_train).float()[:, None], torch.arange(n_valid).float()[:, None]
    y_train, y_valid = torch.arange(n_train), torch.arange(n_valid)
    if kind == "in_memory":
        dls = DataLoaders.from_tensors(x_train, y_train, x_valid, y_valid, bs=2, seed=5)
    else:
        data_set = torch.utils.data.TensorDataset
        dls = DataLoaders.from_datasets(data_set(x_train, y_train), data_set(x_valid, y_valid), bs=2, seed=5)
    shards = [shard_dataloaders(dls, rank, world_size) for rank in range(world_size)]
    loader_type = InMemoryLoader if kind == "in_memory" else TorchLoader
    assert all(isinstance(s.train, loader_type) and isinstance(s.valid, loader_type) for s in shards)
    assert {len(s.train) for s in shards} == {2}  # ceil(10 / 3) = 4 samples each: 2 batches on every rank
    train_seen = torch.cat([yb for s in shards for _, yb in s.train])
    assert set(train_seen.tolist()) == set(range(n_train))  # padded to 12 by repeating 2, but nothing is left out
    valid_seen = torch.cat([yb for s in shards for _, yb in s.valid])
    assert sorted(valid_seen.tolist()) == list(range(n_valid))  # every sample exactly once
    assert dls.train.world_size == 1 and dls.valid.world_size == 1  # the caller's loaders are left alone


def test_a_loader_that_cannot_be_sharded_is_refused():
    x, y = torch.randn(8, 2), torch.arange(8) % 2
    dls = DataLoaders(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4))
    with pytest.raises(TypeError, match=r"dls.train .*DataLoader.*from_tensors"):
        shard_dataloaders(dls, rank=0, world_size=2)
