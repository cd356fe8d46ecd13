"""The Recorder's batch history stored by column, and checkpoints whose size does not grow with the run (issue 14,
defect 3): the history of a checkpoint taken during a fit lives in an append-only side file beside it."""

from __future__ import annotations

import math
import shutil
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cyclr import Callback, CheckpointError, DataLoaders, Learner, SaveModelCallback, synthetic_classification
from cyclr.callbacks.history import BLOCK_MAGIC, BatchHistory
from cyclr.callbacks.recorder import FLUSH_EVERY
from cyclr.learner.checkpoint_files import checksum, read_checkpoint


def make_learner(n_train=64, bs=16, **kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=n_train, n_valid=32, n_features=4, n_classes=3, bs=bs, seed=0)
    kwargs = {"opt_func": torch.optim.SGD, "lr": 0.1, "progress": False, **kwargs}
    return Learner(nn.Linear(4, 3), dls, nn.CrossEntropyLoss(), **kwargs)


def one_step_learner(n_steps: int) -> Learner:
    """One sample per batch: `n_steps` optimizer steps in one epoch, at little cost each."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n_steps, 2, generator=generator)
    y = (x[:, 0] > 0).long()
    dls = DataLoaders.from_tensors(x, y, x[:8], y[:8], bs=1, valid_bs=8, seed=0)
    return Learner(nn.Linear(2, 2), dls, nn.CrossEntropyLoss(), opt_func=torch.optim.SGD, lr=0.01, progress=False)


def history_of(path):
    return read_checkpoint(path)["callbacks"]["Recorder_0"]["batch_history"]


def test_rows_and_dataframe_read_back_exactly_what_was_recorded():
    rows = []
    for i in range(40):
        row = {"fit": i // 20, "epoch": (i // 5) % 4, "train_iter": i, "pct": i / 40, "lr": 0.1 * i, "mom": 0.9,
               "loss": 1.0 / (i + 1), "smooth_loss": math.nan if i == 3 else 2.0 / (i + 1)}
        if i >= 20:  # the second fit has two parameter groups and an effective lr
            row.update({"eff_lr": 1e-3 * i, "lr_0": 0.01 * i, "lr_1": 0.1 * i, "mom_0": 0.8, "mom_1": 0.9})
        rows.append(row)
    history = BatchHistory()
    for row in rows:
        history.append(row)
    restored = BatchHistory.from_state(history.state_dict())
    for h in (history, restored):
        got = [h.row(i) for i in range(len(h))]
        assert [{k: v for k, v in r.items() if k != "smooth_loss"} for r in got] == \
            [{k: v for k, v in r.items() if k != "smooth_loss"} for r in rows]
        assert math.isnan(got[3]["smooth_loss"]) and set(got[0]) == set(rows[0]) and set(got[25]) == set(rows[25])
        df = pd.DataFrame(h.to_columns())
        expected = pd.DataFrame(rows, columns=["fit", "epoch", "train_iter", "pct", "lr", "mom", "loss",
                                               "smooth_loss", "eff_lr", "lr_0", "lr_1", "mom_0", "mom_1"])
        pd.testing.assert_frame_equal(df, expected)  # dtypes too: int64 indices, float64 values


def test_a_learners_history_and_to_df_are_those_of_the_rows():
    learn = make_learner()
    learn.fit(2)
    rows = list(learn.recorder.batch_rows)
    assert [r["train_iter"] for r in rows] == list(range(8)) and learn.recorder.batch_rows[2:4] == rows[2:4]
    df = learn.recorder.to_df("batches")
    assert list(df.columns) == ["fit", "epoch", "train_iter", "pct", "lr", "mom", "loss", "smooth_loss"]
    assert df.to_dict("records") == rows and learn.recorder.losses == df["loss"].tolist()
    assert str(df["train_iter"].dtype) == "int64" and learn.recorder.lrs == [0.1] * 8


def test_a_recorded_step_takes_at_most_64_bytes_of_memory():
    n = 50_000
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = BatchHistory()
    for i in range(n):
        history.append({"fit": 0, "epoch": i // 1000, "train_iter": i, "pct": i / n, "lr": 1e-3, "mom": 0.9,
                        "loss": 0.5, "smooth_loss": 0.5})
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held / n <= 64, f"{held / n:.1f} bytes per step"
    assert history.nbytes() / n == pytest.approx(48, abs=1)  # six 8-byte columns; fit and epoch are runs


def test_losses_wait_on_the_device_for_at_most_flush_every_steps():
    seen = []

    class Watch(Callback):
        order = 60

        def after_batch(self, learn):
            if learn.training:
                seen.append(len(learn.recorder._pending_losses))

    learn = one_step_learner(FLUSH_EVERY * 2 + 10)
    learn.fit(1, cbs=[Watch()])
    assert max(seen) == FLUSH_EVERY - 1 and len(learn.recorder.batch_rows) == FLUSH_EVERY * 2 + 10


def test_a_checkpoint_taken_during_a_fit_does_not_grow_with_the_run(tmp_path):
    sizes = []

    class Sizes(Callback):
        order = 95  # after SaveModelCallback (90)

        def after_batch(self, learn):
            if learn.training and (learn.train_iter + 1) % 100 == 0:
                sizes.append((tmp_path / "ckpt.pt").stat().st_size)

    learn = one_step_learner(3000)
    learn.fit(1, cbs=[SaveModelCallback(tmp_path / "ckpt.pt", every_n_batches=100, every_epoch=True), Sizes()])
    side = tmp_path / f"cyclr-history-{learn.recorder.run_id}.bin"
    # The history grew by 2,900 rows between the first and the last save (~190 kB in the side file); the checkpoint
    # changed only by the losses still waiting on the device (at most FLUSH_EVERY of them).
    assert side.stat().st_size > 3000 * 56
    assert max(sizes) - min(sizes) < FLUSH_EVERY * 60 and max(sizes) < side.stat().st_size / 4
    state = read_checkpoint(tmp_path / "ckpt.pt")["callbacks"]["Recorder_0"]
    pending = 0 if state["pending_losses"] is None else len(state["pending_losses"])
    assert len(state["batch_history"]) + pending == 3000  # every step, as a row or a loss still pending
    resumed = one_step_learner(3000)
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.recorder.batch_rows == learn.recorder.batch_rows[:len(state["batch_history"])]


def test_every_checkpoint_reads_back_the_history_it_was_saved_with(tmp_path):
    learn = make_learner()
    learn.fit(3, cbs=[SaveModelCallback(tmp_path / "step{train_iter}.pt", every_n_batches=1, every_epoch=True)])
    rows = list(learn.recorder.batch_rows)
    files = sorted(tmp_path.glob("step*.pt"), key=lambda p: int(p.stem[4:]))
    assert [p.name for p in files] == [f"step{i}.pt" for i in range(1, 13)]
    for step, path in enumerate(files, start=1):
        state = read_checkpoint(path)["callbacks"]["Recorder_0"]
        history, pending = state["batch_history"], state["pending_losses"]
        assert len(history) + (0 if pending is None else len(pending)) == step  # rows, and losses still pending
        assert len(history) == 4 * (step // 4)  # the epoch's rows are made at its end (every epoch is 4 steps)
        assert [history.row(i) for i in range(len(history))] == rows[:len(history)]


def test_resuming_from_an_earlier_checkpoint_keeps_the_later_ones_readable(tmp_path):
    learn = make_learner()
    learn.fit(3, cbs=[SaveModelCallback(tmp_path / "first_{epoch}.pt", every_epoch=True)])
    full = list(learn.recorder.batch_rows)
    again = make_learner()
    again.fit(3, cbs=[SaveModelCallback(tmp_path / "again_{epoch}.pt", every_epoch=True)],
              resume=tmp_path / "first_0.pt")
    assert list(again.recorder.batch_rows) == full  # the resumed run is the same run
    # The first run's later checkpoints still read their own rows, and so do the new ones
    for path in [*(tmp_path / f"first_{epoch}.pt" for epoch in range(3)), tmp_path / "again_1.pt",
                 tmp_path / "again_2.pt"]:
        epoch = int(path.stem[-1])
        history = history_of(path)
        assert [history.row(i) for i in range(len(history))] == full[:4 * (epoch + 1)]
    assert len(list(tmp_path.glob("cyclr-history-*.bin"))) == 1  # one run, one side file


def test_a_save_killed_mid_append_leaves_every_checkpoint_readable(tmp_path):
    learn = make_learner()
    learn.fit(2, cbs=[SaveModelCallback(tmp_path / "c_{epoch}.pt", every_epoch=True)])
    side = next(tmp_path.glob("cyclr-history-*.bin"))
    with open(side, "ab") as f:  # what a SIGKILL in the middle of an append leaves: a block's start, cut short
        f.write(BLOCK_MAGIC + (10_000).to_bytes(8, "little") + bytes(40))
    assert len(history_of(tmp_path / "c_1.pt")) == 8
    resumed = make_learner()
    resumed.fit(3, cbs=[SaveModelCallback(tmp_path / "c_{epoch}.pt", every_epoch=True)],
                resume=tmp_path / "c_1.pt", allow_length_change=True)
    for epoch in range(3):
        assert len(history_of(tmp_path / f"c_{epoch}.pt")) == 4 * (epoch + 1)
    assert BLOCK_MAGIC + (10_000).to_bytes(8, "little") not in side.read_bytes()  # the partial block was cut off


def test_a_missing_or_changed_history_file_is_refused_naming_it(tmp_path):
    learn = make_learner()
    learn.fit(2, cbs=[SaveModelCallback(tmp_path / "c.pt", every_epoch=True)])
    side = next(tmp_path.glob("cyclr-history-*.bin"))
    data = bytearray(side.read_bytes())
    data[-3] ^= 0x10  # one bit of the last loss
    side.write_bytes(bytes(data))
    other = make_learner()
    before = [p.detach().clone() for p in other.model.parameters()]
    with pytest.raises(CheckpointError, match=rf"{side.name} is corrupt"):
        other.load(tmp_path / "c.pt")
    side.unlink()
    with pytest.raises(CheckpointError, match=rf"{side.name}, which is missing.*with_history=False"):
        other.load(tmp_path / "c.pt")
    assert all(torch.equal(a, b) for a, b in zip(before, other.model.parameters(), strict=True))
    other.load(tmp_path / "c.pt", with_history=False)  # everything but the history
    assert torch.equal(other.model.weight, learn.model.weight) and len(other.recorder.batch_rows) == 0


def test_a_checkpoint_saved_between_fits_stands_alone(tmp_path):
    learn = make_learner()
    learn.fit(2)
    learn.save(tmp_path / "a" / "model.pt")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["model.pt"]
    shutil.move(tmp_path / "a" / "model.pt", tmp_path / "moved.pt")
    other = make_learner()
    other.load(tmp_path / "moved.pt")
    assert other.recorder.batch_rows == learn.recorder.batch_rows and len(other.recorder.batch_rows) == 8


def test_a_version_2_checkpoint_with_row_dicts_still_loads(tmp_path):
    learn = make_learner()
    learn.fit(1)
    learn.save(tmp_path / "v3.pt")
    ckpt = torch.load(tmp_path / "v3.pt", weights_only=True)
    state = ckpt["callbacks"]["Recorder_0"]
    del state["batch_history"], state["run_id"]
    state["batch_rows"] = [dict(r) for r in learn.recorder.batch_rows]
    ckpt["version"] = 2
    ckpt["checksum"] = checksum(ckpt)
    torch.save(ckpt, tmp_path / "v2.pt")
    other = make_learner()
    other.load(tmp_path / "v2.pt")
    assert other.recorder.batch_rows == learn.recorder.batch_rows
    assert np.array_equal(other.recorder.history.numpy("loss"), learn.recorder.history.numpy("loss"))
