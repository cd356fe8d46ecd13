"""Faults a user's worst day brings, each with its attack: a killed process mid-save, file modes, checkpoint paths
with format specs."""

import csv
import errno
import math
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from tmpfs import fill, full_tmpfs  # noqa: F401 -- a fixture
from torch import nn

from cyclr import (
    Callback,
    CancelFitException,
    CheckpointError,
    CSVLogger,
    EarlyStoppingCallback,
    Learner,
    SaveModelCallback,
    TerminateOnNaNCallback,
    synthetic_classification,
)
from cyclr.data.state import TEMP_SUFFIX, atomic_torch_save
from cyclr.learner.checkpoint_files import read_checkpoint


def make_learner(**kwargs):
    torch.manual_seed(0)
    dls = synthetic_classification(n_train=64, n_valid=32, n_features=4, n_classes=3, bs=16, seed=0)
    kwargs = {"opt_func": torch.optim.SGD, "lr": 0.1, "progress": False, **kwargs}
    return Learner(nn.Linear(4, 3), dls, nn.CrossEntropyLoss(), **kwargs)


KILLED_MID_WRITE = """
import os, signal, sys
from cyclr.data.state import atomic_write

def write(f):
    f.write(b"x" * 1_000_000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the machine's worst moment: between the write and the rename

atomic_write(sys.argv[1], write)
"""


def test_a_save_killed_mid_write_leaves_a_recognisable_temp_file_that_the_next_save_removes(tmp_path):
    path = tmp_path / "ckpt.pt"
    learn = make_learner()
    learn.save(path)
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(stale) == 1 and stale[0].name.startswith(".ckpt.pt.") and stale[0].stat().st_size == 1_000_000
    assert path.read_bytes() == before  # the old checkpoint is intact
    learn.fit(1)
    learn.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


LIVE_WRITER = """
import sys
from cyclr.data.state import atomic_write

def write(f):
    f.write(b"the other writer's checkpoint")
    print("writing", flush=True)
    sys.stdin.readline()

atomic_write(sys.argv[1], write)
"""


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    # Another process in the middle of writing the same checkpoint: its temporary file is locked while in use.
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(tmp_path / "ckpt.pt")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "writing\n"
        (temp,) = tmp_path.glob(f".ckpt.pt.{writer.pid}.*{TEMP_SUFFIX}")
        atomic_torch_save({"a": 1}, tmp_path / "ckpt.pt")
        assert temp.exists()
        writer.stdin.write("\n")
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
        writer.wait(timeout=60)
        writer.stdout.close()
    assert (tmp_path / "ckpt.pt").read_bytes() == b"the other writer's checkpoint"  # its rename found its file


def test_checkpoints_honour_the_umask_and_keep_an_existing_files_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = make_learner().save(tmp_path / "new.pt")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 & ~0o027, as open() would give
        os.chmod(path, 0o604)
        make_learner().save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
    finally:
        os.umask(old)


def test_save_model_callback_formats_the_path_with_its_format_spec(tmp_path):
    learn = make_learner()
    learn.fit(3, cbs=[SaveModelCallback(tmp_path / "ckpt_{epoch:03d}.pt", every_epoch=True)])
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("cyclr-history-"))
    assert names == ["ckpt_000.pt", "ckpt_001.pt", "ckpt_002.pt"]
    steps = make_learner()
    steps.fit(1, cbs=[SaveModelCallback(tmp_path / "s" / "step{train_iter:05d}.pt", every_epoch=True,
                                        every_n_batches=2)])
    # 4 steps: saved after steps 2 and 4 (and at the epoch's end, after step 4 too)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.pt")) == ["step00002.pt", "step00004.pt"]


@pytest.mark.parametrize(("path", "match"), [
    ("ckpt_{step}.pt", r"format field\(s\) \['step'\]; the fields it may use are \{epoch\}, \{train_iter\}"),
    ("ckpt_{epoch:q}.pt", "is not a valid format string"),
    ("ckpt_{.pt", "is not a valid format string"),
])
def test_save_model_callback_refuses_a_bad_path_template_when_created(path, match):
    with pytest.raises(ValueError, match=match):
        SaveModelCallback(path, every_epoch=True)


def test_a_full_disk_says_no_space_left_and_keeps_the_old_checkpoint(full_tmpfs):  # noqa: F811
    path = make_learner().save(full_tmpfs / "ckpt.pt")
    before = path.read_bytes()
    fill(full_tmpfs)
    with pytest.raises(OSError, match=f"no space left at {full_tmpfs} to write ckpt.pt .*the previous ckpt.pt, if "
                                      "any, is intact") as caught:
        make_learner().save(path)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["ckpt.pt", "filler"]  # no temporary file left


class NaNGradientAt(Callback):
    """A finite loss whose gradient is NaN: the backward pass of a NaN-producing op the loss does not see."""

    def __init__(self, step):
        self.step = step

    def before_step(self, learn):
        if learn.train_iter == self.step:
            next(learn.model.parameters()).grad[0, 0] = math.nan

    order = 1  # before TerminateOnNaN (2) reads the gradients


def test_a_nan_gradient_with_a_finite_loss_stops_before_the_step_keeping_the_last_good_weights():
    learn = make_learner()
    learn.fit(1, cbs=[StopAt(2)])  # reference: the weights after steps 0 and 1
    good = [p.detach().clone() for p in learn.model.parameters()]
    learn = make_learner()
    with pytest.warns(RuntimeWarning, match=r"the training loss is finite \(.*\) but a gradient is NaN or infinite "
                                            r"at epoch 0, batch 2 \(optimizer step 2\).*last step with finite loss "
                                            "and gradients"):
        learn.fit(1, cbs=[NaNGradientAt(2)])
    (guard,) = [cb for cb in learn.cbs if isinstance(cb, TerminateOnNaNCallback)]
    assert guard.stopped_at == (0, 2, 2)
    assert all(torch.equal(a, b) for a, b in zip(learn.model.parameters(), good, strict=True))


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def before_batch(self, learn):
        if learn.training and learn.train_iter == self.step:
            raise CancelFitException()


class ValidLossNaNFrom(Callback):
    order = 52  # after the Recorder's row, before the monitors read it

    def __init__(self, epoch):
        self.epoch = epoch

    def after_epoch(self, learn):
        if learn.epoch >= self.epoch:
            learn.recorder.epoch_rows[-1]["valid_loss"] = math.nan


def test_a_nan_validation_loss_is_warned_about_and_early_stopping_stops(tmp_path):
    learn = make_learner()
    stop, save = EarlyStoppingCallback(patience=3), SaveModelCallback(tmp_path / "best.pt")
    with pytest.warns(RuntimeWarning) as caught:
        learn.fit(5, cbs=[ValidLossNaNFrom(1), stop, save])
    messages = [str(w.message) for w in caught]
    assert any("SaveModelCallback: valid_loss is nan at epoch 1; no checkpoint is written for it (the best stays "
               "epoch 0)" in m for m in messages)
    assert any("EarlyStoppingCallback: valid_loss is nan at epoch 1; stopping after this epoch (best" in m and
               "at epoch 0)" in m for m in messages)
    assert stop.stopped_epoch == 1 and len(learn.recorder.epoch_rows) == 2 and save.best_epoch == 0


def test_check_finite_false_lets_the_fit_go_on_through_nan_epochs():
    learn = make_learner()
    stop = EarlyStoppingCallback(patience=2, check_finite=False)
    with pytest.warns(RuntimeWarning, match="counts as no improvement"):
        learn.fit(5, cbs=[ValidLossNaNFrom(1), stop])
    assert stop.stopped_epoch == 2 and stop.best_epoch == 0  # patience ran out after two NaN epochs


class InterruptAt(Callback):
    def __init__(self, step):
        self.step = step

    def before_batch(self, learn):
        if learn.training and learn.train_iter == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_mid_epoch_keeps_the_rows_of_the_steps_taken():
    learn = make_learner()
    with pytest.raises(KeyboardInterrupt):
        learn.fit(2, cbs=[InterruptAt(6)])  # 4 steps per epoch: epoch 0 and two steps of epoch 1
    assert [r["train_iter"] for r in learn.recorder.batch_rows] == list(range(6))
    learn.fit(1)  # the next fit neither loses nor repeats them
    assert [(r["fit"], r["train_iter"]) for r in learn.recorder.batch_rows] == \
        [(0, i) for i in range(6)] + [(1, i) for i in range(4)]


def test_lr_find_leaves_checkpoints_and_csv_logs_alone(tmp_path):
    learn = make_learner()
    saver = SaveModelCallback(tmp_path / "ckpt.pt", every_epoch=True, every_n_batches=1)
    logger = CSVLogger(tmp_path / "history.csv")
    learn.add_cbs([saver, logger])
    learn.fit(1)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    learn.lr_find(num_it=20)  # diverges: its state must never reach the files
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    assert saver in learn.cbs and logger in learn.cbs  # back for the next fit
    learn.fit(1)
    assert read_checkpoint(tmp_path / "ckpt.pt")["progress"]["train_iter"] == 4
    assert len(list(csv.reader(open(tmp_path / "history.csv")))) == 2  # header and the new fit's epoch


def flip_bit_in_file(path, needle: bytes, bit: int = 6) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "the bytes to damage must occur exactly once"
    data[at + len(needle) - 1] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_one_flipped_bit_in_the_weights_is_refused_as_corrupt(tmp_path):
    learn = make_learner()
    learn.fit(1)
    path = learn.save(tmp_path / "ckpt.pt")
    weight = learn.model.weight.detach().reshape(-1)
    flip_bit_in_file(path, weight[:3].numpy().tobytes())  # a bit of the third weight's exponent
    fresh = make_learner()
    before = [p.detach().clone() for p in fresh.model.parameters()]
    with pytest.raises(CheckpointError, match="is corrupt: its content does not match the checksum"):
        fresh.load(path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.parameters(), before, strict=True))


def test_a_flipped_bit_in_the_counters_is_refused_as_corrupt(tmp_path):
    learn = make_learner()
    path = tmp_path / "ckpt.pt"
    learn.fit(3, cbs=[SaveModelCallback(path, every_epoch=True)])
    ckpt = torch.load(path, weights_only=True)
    ckpt["progress"]["epoch"] ^= 1  # what a flip in the pickled counters does, written back with the old checksum
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="is corrupt"):
        make_learner().fit(3, resume=path)


def test_random_bytes_are_reported_as_corrupt_not_as_malicious(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(CheckpointError, match="corrupt") as caught:
        make_learner().load(path)
    assert "objects other than tensors" not in str(caught.value)


def test_a_model_with_no_trainable_parameters_is_refused_before_training():
    learn = make_learner()
    learn.model.requires_grad_(False)
    with pytest.raises(ValueError, match="the model has no trainable parameters .*learn.unfreeze"):
        learn.fit(1)
    assert learn.recorder.batch_rows == []


def test_numpy_scalars_are_accepted_wherever_python_numbers_are():
    learn = make_learner(lr=np.float32(0.05), wd=np.float64(0.0))
    learn.fit(np.int64(1), lr=np.float32(0.1))
    learn.fit_one_cycle(np.int64(1), max_lr=np.float32(0.1), pct_start=np.float64(0.25))
    learn.fit_sgdr(np.int64(1), np.int64(1), max_lr=np.float32(0.1))
    assert learn.lr_find(start_lr=np.float32(1e-4), end_lr=np.float64(1.0), num_it=np.int64(5)).lrs
    assert len(learn.recorder.batch_rows) == 12


# ----- the docs' table of faults: each row names the test that attacks it (which must exist) ---------------------
FAULTS = [
    ("SIGKILL between writing a checkpoint and renaming it", "old checkpoint intact; the stale `.cyclr-tmp` file, "
     "which no process holds locked any more, is removed by the next save", "test_a_save_killed_mid_write_leaves_a_"
     "recognisable_temp_file_that_the_next_save_removes"),
    ("another live process writing the same checkpoint", "its temporary file, locked while in use, is left alone; "
     "its rename succeeds", "test_a_live_writers_temp_file_is_left_alone"),
    ("a process in another pid namespace (a container sharing the folder) holding an `lr_find` snapshot and a "
     "checkpoint's temporary file; its pid not alive on this host", "both kept (liveness is the lock it holds, not "
     "its pid): its sweep restores the weights exactly and its rename succeeds",
     "test_a_process_in_another_pid_namespace_keeps_its_snapshot_and_temp_file_until_it_dies"),
    ("that process SIGKILLed", "its lock died with it: the next snapshot and save remove its files",
     "test_files_of_a_killed_owner_in_another_pid_namespace_are_removed"),
    ("a symbolic link to a world-readable file planted at a checkpoint's path, saved under umask 077",
     "the link replaced, never written through; the checkpoint 0600 (the umask's), the target untouched",
     "test_a_link_planted_at_a_checkpoint_path_is_replaced_and_its_targets_mode_is_not_copied"),
    ("a symbolic link planted at the history side file's path", "refused naming the link; its target untouched",
     "test_a_link_planted_at_the_history_side_file_is_refused_and_its_target_untouched"),
    ("a symbolic link (also dangling) or a FIFO where cyclr appends or writes a file "
     "(`cyclr.data.state.open_for_write`)",
     "refused at once naming the path; new files take the umask's mode, existing regular files keep theirs",
     "test_open_for_write_refuses_links_and_fifos_keeps_a_regular_files_mode_and_honours_the_umask"),
    ("two processes resuming one checkpoint with the same SaveModelCallback path", "the second refused before any "
     "step, naming the first (pid, host); every checkpoint still reads with its history",
     "test_two_processes_resuming_one_checkpoint_the_second_is_refused_before_any_step_naming_the_first"),
    ("the writer of a run's files SIGKILLed", "its lock died with it: the next writer goes on",
     "test_the_writer_lock_dies_with_its_holder"),
    ("a full disk (a 1 MiB tmpfs) under the run's lock", "the lock still excludes a second writer (its owner "
     "unnamed)", "test_on_a_full_disk_the_writer_lock_still_excludes"),
    ("a file system that refuses locks (ENOLCK)", "warned; writers still excluded, by the exclusive creation of the "
     "lock file (after a crash, removed by hand as the message says)",
     "test_where_the_file_system_refuses_locks_writers_still_exclude_each_other"),
    ("full disk during a save (a 1 MiB tmpfs, filled)", "`OSError(ENOSPC)`: no space left at PATH, previous "
     "checkpoint intact, no temporary file left",
     "test_a_full_disk_says_no_space_left_and_keeps_the_old_checkpoint"),
    ("one flipped bit in a checkpoint's weights", "refused as corrupt (SHA-256 of every part), learner unchanged",
     "test_one_flipped_bit_in_the_weights_is_refused_as_corrupt"),
    ("a flipped bit in a checkpoint's counters", "refused as corrupt before resuming",
     "test_a_flipped_bit_in_the_counters_is_refused_as_corrupt"),
    ("random bytes as a checkpoint", "refused as corrupt (not called malicious)",
     "test_random_bytes_are_reported_as_corrupt_not_as_malicious"),
    ("umask 027, or an existing checkpoint with mode 0604", "new files 0640, existing files keep their mode",
     "test_checkpoints_honour_the_umask_and_keep_an_existing_files_mode"),
    ("`SaveModelCallback('ckpt_{epoch:03d}.pt')`", "one file per epoch, formatted; bad fields refused at creation",
     "test_save_model_callback_formats_the_path_with_its_format_spec"),
    ("`lr_find` with SaveModelCallback and CSVLogger attached", "their files untouched by the sweep",
     "test_lr_find_leaves_checkpoints_and_csv_logs_alone"),
    ("a finite loss with a NaN gradient", "stopped before the step, weights of the last good step, truthful warning",
     "test_a_nan_gradient_with_a_finite_loss_stops_before_the_step_keeping_the_last_good_weights"),
    ("a NaN validation loss", "warned with its epoch; EarlyStopping stops (check_finite), no 'best' checkpoint of it",
     "test_a_nan_validation_loss_is_warned_about_and_early_stopping_stops"),
    ("Ctrl-C mid-epoch", "the steps taken keep their Recorder rows; the next fit continues the history",
     "test_ctrl_c_mid_epoch_keeps_the_rows_of_the_steps_taken"),
    ("a model with no trainable parameters", "refused before training, saying how to unfreeze",
     "test_a_model_with_no_trainable_parameters_is_refused_before_training"),
    ("numpy scalars as lr, epochs, sweep settings", "accepted like Python numbers",
     "test_numpy_scalars_are_accepted_wherever_python_numbers_are"),
    ("a relabelled Fashion-MNIST source file", "refused: its MD5 differs from the published one, file named",
     "test_fashion_mnist_torchvision_layout_and_stale_cache"),
    ("a damaged Fashion-MNIST disk cache (a flipped label, a 100-image train set)", "detected, decoded again",
     "test_a_damaged_disk_cache_is_detected_and_decoded_again"),
    ("a corrupt .gz source", "the error names the file", "test_a_corrupt_gzip_source_is_reported_with_its_path"),
    ("a damaged copy of the CIFAR-10 tarball", "refused: SHA-256 differs from the recorded one",
     "test_a_damaged_copy_of_the_cifar_jpeg_edition_is_refused"),
    ("in an image folder or archive: a truncated JPEG, a non-image saved as .jpg, an empty file, a wrong-size image, "
     "ten bytes corrupted near a JPEG's end (decoded silently by libjpeg, with a printed warning)", "refused naming "
     "the file (path, or archive:member) and what is wrong; libjpeg's warning captured and quoted",
     "test_a_bad_image_file_is_refused_naming_it"),
    ("an image rewritten in place (its folder's mtime unchanged)", "decoded again: the cache key holds each image "
     "file's size and mtime", "test_an_image_rewritten_in_place_is_decoded_again"),
    ("a rank stopped (SIGSTOP) in the middle of a data-parallel fit", "the others time out after $CYCLR_DIST_TIMEOUT "
     "s (default 10 min, torch's 30) and their error names the rank that stopped answering",
     "test_a_stopped_rank_times_out_the_others_naming_it"),
    ("a checkpoint every 100 steps of a long run", "every checkpoint the same size: the batch history is appended "
     "to a side file (48 B a step in RAM)", "test_a_checkpoint_taken_during_a_fit_does_not_grow_with_the_run"),
    ("SIGKILL in the middle of appending to the history side file", "every checkpoint still loads; the next save "
     "cuts the partial block off", "test_a_save_killed_mid_append_leaves_every_checkpoint_readable"),
    ("the history side file missing, or one bit of it flipped", "refused naming the file, learner unchanged; "
     "`with_history=False` loads the rest", "test_a_missing_or_changed_history_file_is_refused_naming_it"),
    ("resuming from an earlier checkpoint, then saving again", "the later checkpoints keep their own history",
     "test_resuming_from_an_earlier_checkpoint_keeps_the_later_ones_readable"),
    ("resuming with another max_lr, schedule, lr/wd, batch size or data size (same number of batches)",
     "refused before anything changes, naming each difference and the `allow_config_change=[...]` that allows it; "
     "allowed, the new settings apply from the resume point for every scheduler",
     "test_another_scheduler_setting_is_refused_naming_it_and_nothing_changes"),
    ("SIGKILL during `lr_find` while its snapshot is in a temporary file (above `snapshot_memory_limit`)",
     "the file, `cyclr-lr-find-<pid>.<random>.pt`, is removed by the next snapshot written to a file; files live "
     "processes hold locked are kept",
     "test_the_next_snapshot_removes_the_file_of_a_killed_process_and_keeps_live_ones"),
    ("a label out of range in a later batch of a torch DataLoader", "the loss's own exception type, chained from "
     "torch's, naming the phase, batch and epoch, the targets' range, the model's classes and what to change",
     "test_a_bad_label_in_the_third_training_batch_names_the_batch_and_the_range"),
    ("a bad label in the first batch of a torch DataLoader, past its first two samples", "refused by the "
     "pre-flight before any step", "test_the_first_batch_is_still_the_pre_flights_with_every_label_of_it"),
    ("a full disk under TensorBoard's folder during a fit (the checkpoints' disk healthy)",
     "the epoch's checkpoint is written first, then a LoggerError names the folder and ENOSPC; a resume completes "
     "the run, every step once",
     "test_tensorboard_on_a_full_disk_keeps_the_epochs_checkpoint_and_a_resume_completes_the_run"),
    ("a full disk under MLflow's SQLite store",
     "the epoch's checkpoint is written first; one line says 'database or disk is full' and the store's path (no "
     "SQL); the run ends FAILED, not RUNNING",
     "test_mlflow_on_a_full_sqlite_disk_says_so_briefly_and_ends_the_run_failed"),
    ("a full disk under the CSV log",
     "the epoch's checkpoint is written first; no half row",
     "test_csv_on_a_full_disk_keeps_the_epochs_checkpoint_and_no_half_row"),
    ("a CSV log on a read-only file system",
     "refused before the first step",
     "test_a_csv_on_a_read_only_file_system_is_refused_before_the_first_step"),
    ("2 and 4 runs started within milliseconds with TensorBoardCallback() and MLflowCallback() at their defaults "
     "(one new mlflow.db)",
     "a folder each; the store created once under a lock; every step of every run read back",
     "test_runs_started_together_each_get_their_own_tensorboard_folder_and_mlflow_run"),
    ("a second fit appending to a CSV log a live run is writing",
     "refused before any step naming the writer (pid, host); allowed once it ended, even SIGKILLed",
     "test_a_file_another_live_process_writes_is_refused_and_allowed_once_that_process_is_killed"),
    ("a symbolic link planted at a CSV log's path",
     "refused naming the link; its target untouched",
     "test_a_symlink_planted_at_the_path_is_never_written_through"),
    ("Ctrl-C (SIGINT) mid-epoch with TensorBoard and MLflow attached",
     "both hold exactly the steps the Recorder kept; MLflow run KILLED",
     "test_a_real_ctrl_c_mid_epoch_leaves_every_step_the_recorder_kept_in_both_trackers"),
    ("SIGTERM at a random step of a real job, then the same command requeued (fit(resume='auto'))",
     "the batch finishes, a checkpoint is written where SaveModelCallback saves, exit status 75; the requeued run "
     "ends bitwise equal to an uninterrupted one, CSV and TensorBoard with every epoch / step once",
     "test_sigterm_at_a_random_step_then_requeue_gives_the_uninterrupted_run_bitwise"),
    ("SIGTERM or SIGUSR1 in a training batch with a tracker attached",
     "the batch finishes; checkpoint at its end; tracker run KILLED; the previous handlers restored",
     "test_the_batch_in_progress_finishes_then_the_run_is_saved_and_the_tracker_run_killed"),
    ("SIGTERM with MLflow attached, then the requeue",
     "run KILLED, then the same run FINISHED with every step once",
     "test_mlflow_run_is_killed_by_the_preemption_and_finished_by_the_requeue_every_step_once"),
    ("SIGTERM during validation", "validation finishes; checkpoint at the epoch's end",
     "test_a_signal_during_validation_waits_for_the_end_of_the_epoch"),
    ("SIGTERM during an LR-finder sweep", "the sweep ends, weights put back; the next fit stops after its first step "
     "with a checkpoint", "test_a_signal_during_an_lr_find_sweep_waits_for_the_next_fit"),
    ("SIGTERM on a stream (no len(), or an IterableDataset)", "the checkpoint waits for the epoch's end (said once "
     "in the log); resume='auto' ends bitwise equal to the uninterrupted run",
     "test_a_signal_on_a_stream_saves_at_the_epochs_end_and_the_resume_equals_the_uninterrupted_run"),
    ("SIGTERM to one rank of a 2-process torchrun job", "both ranks stop after the same step; one checkpoint",
     "test_under_torchrun_every_rank_stops_after_the_same_step_when_one_is_signalled"),
    ("SIGTERM in a SLURM job", "checkpoint written, then the job requeued (scontrol requeue), exit status 75",
     "test_in_a_slurm_job_the_job_is_requeued_once_the_checkpoint_is_written"),
    ("a damaged newest checkpoint when a requeued job resumes (resume='auto')",
     "passed over with a warning naming it; the run goes on from the newest valid one",
     "test_resume_auto_passes_over_a_damaged_file_and_one_saved_between_fits"),
    ("another process taking a run's writer lock between a resume's check and its first step",
     "refused: the resume holds the lock from its check to the fit's end",
     "test_a_resume_holds_the_runs_writer_lock_from_its_check_to_the_end_of_the_fit"),
]
FAULTS_START, FAULTS_END = "<!-- faults-table: start -->", "<!-- faults-table: end -->"


def test_the_faults_table_is_backed_by_tests_and_up_to_date():
    from pathlib import Path

    tests = Path(__file__).parent
    defined = {line.split("(")[0][4:] for path in tests.glob("test_*.py") for line in path.read_text().splitlines()
               if line.startswith("def test_")}
    missing = [name for _, _, name in FAULTS if name not in defined]
    assert not missing, f"the faults table names tests that do not exist: {missing}"
    table = "| fault | what happens | test |\n|---|---|---|\n" + "".join(
        f"| {fault} | {outcome} | `{name}` |\n" for fault, outcome, name in FAULTS)
    repo = tests.parent
    holders = [p for p in [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))] if FAULTS_START in p.read_text()]
    assert len(holders) == 1, f"the faults table's markers should be in one page, found in {holders}"
    page = holders[0].read_text()
    start, end = page.index(FAULTS_START) + len(FAULTS_START), page.index(FAULTS_END)
    if page[start:end] != "\n" + table:
        holders[0].write_text(page[:start] + "\n" + table + page[end:])
        pytest.fail(f"regenerated the faults table in {holders[0].relative_to(repo)} from FAULTS: review and commit it")
