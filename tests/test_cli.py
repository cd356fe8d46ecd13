"""The `cyclr` command line: every --help shows every default, --version, --device, and exit codes with messages a
shell user can act on (2: a bad command line, 1: an error found while running, 130: Ctrl-C)."""

import argparse
import re
from importlib import import_module
from importlib.metadata import version

import pytest
import torch

from cyclr.learner import cli


def subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["demo", "reproduce"])
def test_help_shows_every_default(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no wrapping inside "(default: ...)"
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = [a for a in subparsers(cli.build_parser())[command]._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"device", "threads", "out"}
    blocks = re.split(r"\n  (?=-)", text)  # one block per option: its flags, then its help (maybe on a line below)
    for action in options:
        block = " ".join(next(b for b in blocks if b.startswith(action.option_strings[0])).split())
        assert f"(default: {action.default})" in block, block


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"cyclr {version('cyclr')}"


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--device", "gpu"], "argument --device: expected a device like cpu, cuda, cuda:1 or mps, got 'gpu'"),
    (["demo", "--device", "cuda"], "argument --device: cuda: torch sees no CUDA device on this machine; "
                                   "use --device cpu"),
    (["demo", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
    (["demo", "--max-lr", "-1"], "argument --max-lr: expected a finite number > 0, got -1"),
    (["reproduce", "d2l", "--threads", "two"], "argument --threads: expected an integer >= 1, got 'two'"),
    (["train"], "invalid choice: 'train' (choose from 'demo', 'reproduce')"),
])
def test_bad_command_lines_exit_2_with_what_to_change(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: cyclr")


@pytest.mark.parametrize(("error", "status", "message"), [
    (FileNotFoundError("Fashion-MNIST not found in: /nowhere; install dataset-fashion-mnist"), 1,
     "cyclr demo: error: Fashion-MNIST not found in: /nowhere; install dataset-fashion-mnist"),
    (KeyboardInterrupt(), 130, "cyclr demo: interrupted"),
])
def test_errors_while_running_exit_with_a_status_and_a_message(error, status, message, capsys, monkeypatch,
                                                               tmp_path):
    def fail(**kwargs):
        raise error

    # The module (cyclr.data exports a function of the same name).
    monkeypatch.setattr(import_module("cyclr.data.fashion_mnist"), "fashion_mnist", fail)
    assert cli.main(["demo", "--out", str(tmp_path / "out"), "--device", "cpu"]) == status
    assert capsys.readouterr().err.strip() == message


def test_demo_trains_on_the_device_asked_for(tmp_path, monkeypatch, capsys):
    from cyclr.learner import learner as learner_module

    devices = []
    original = learner_module.Learner.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        devices.append(self.device)

    monkeypatch.setattr(learner_module.Learner, "__init__", recording_init)
    # Symbolic links planted where the demo writes a plot and a CSV: replaced, their targets never written through.
    target = tmp_path / "elsewhere.txt"
    target.write_text("someone else's file")
    for name in ("loss.png", "history_epochs.csv"):
        (tmp_path / name).symlink_to(target)
    argv = ["demo", "--epochs", "1", "--n-train", "256", "--n-valid", "128", "--num-it", "5", "--bs", "64",
            "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert devices == [torch.device("cpu")]
    assert target.read_text() == "someone else's file"
    assert not (tmp_path / "loss.png").is_symlink() and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    history = (tmp_path / "history_epochs.csv")
    assert not history.is_symlink() and history.read_text().startswith("fit,epoch,")


# ----- cyclr reproduce: each experiment takes its own options and refuses the others' -----------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["averaging", "--epoch-scale", "2"], "cyclr reproduce averaging: --epoch-scale is an option of "
                                          "`cyclr reproduce blog`"),
    (["averaging", "--setup", "cpu", "--model", "lenet"],
     "cyclr reproduce averaging: --setup is an option of `cyclr reproduce blog`; --model is an option of "
     "`cyclr reproduce blog`"),
    (["lr-finder", "--epochs", "3"], "cyclr reproduce lr-finder: --epochs is an option of `cyclr reproduce d2l` "
                                     "and `cyclr reproduce averaging`"),
    (["lr-finder", "--n-train", "100"], "--n-train is an option of `cyclr reproduce averaging`"),
    (["lr-finder", "--device", "mps"], "cyclr reproduce lr-finder: the study trains on the CPU only"),
    (["d2l", "--n-train", "100"], "cyclr reproduce d2l: --n-train is an option of `cyclr reproduce averaging`"),
    (["blog", "--epochs", "3"], "--epochs is an option of `cyclr reproduce d2l` and `cyclr reproduce averaging`; "
                                "the blog's runs scale their cyc_len with --epoch-scale"),
])
def test_reproduce_refuses_another_experiments_options_before_anything_runs(argv, message, tmp_path, monkeypatch):
    import experiments

    def must_not_run(*args, **kwargs):
        raise AssertionError("the runner was called")

    for runner in ("run_d2l", "run_blog", "run_averaging", "run_lr_finder_study"):
        monkeypatch.setattr(experiments, runner, must_not_run)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["reproduce", *argv, "--out", str(out)])
    assert message in str(exit_.value.code)
    assert not out.exists()


@pytest.mark.parametrize(("argv", "runner", "expected"), [
    # Options not given are left to the runner's own defaults (its seeds, its epochs).
    (["averaging"], "run_averaging", {"quick": False, "n_train": None, "device": None}),
    (["averaging", "--quick", "--seeds", "3", "4", "--epochs", "7", "--n-train", "2000", "--device", "cpu"],
     "run_averaging", {"quick": True, "seeds": [3, 4], "epochs": 7, "n_train": 2000, "device": "cpu"}),
    (["lr-finder"], "run_lr_finder_study", {"quick": False}),
    (["lr-finder", "--quick", "--seeds", "0", "--device", "cpu"], "run_lr_finder_study",
     {"quick": True, "seeds": [0]}),
    (["d2l", "--epochs", "5"], "run_d2l", {"quick": False, "device": None, "epochs": 5}),
])
def test_reproduce_passes_each_experiment_its_options(argv, runner, expected, tmp_path, monkeypatch, capsys):
    import experiments

    calls = []
    table = f"{argv[0].replace('-', '_')}_table.md"

    def fake_runner(out, **kwargs):
        calls.append(kwargs)
        (out.mkdir(parents=True), (out / table).write_text("| the table |"))
        return {"out": out}

    monkeypatch.setattr(experiments, runner, fake_runner)
    monkeypatch.setattr("sys.argv", ["cyclr", "reproduce", *argv])
    assert cli.main(["reproduce", *argv, "--out", str(tmp_path / "out")]) == 0
    command = "cyclr reproduce " + " ".join(argv)
    assert calls == [{**expected, "command": command}]
    printed = capsys.readouterr().out
    assert "| the table |" in printed and f"{table} written to {tmp_path / 'out'}" in printed


@pytest.mark.slow
def test_reproduce_averaging_quick_writes_its_table_and_plots(tmp_path, capsys):
    out = tmp_path / "averaging"
    assert cli.main(["reproduce", "averaging", "--quick", "--seeds", "0", "--threads", "1", "--out", str(out)]) == 0
    for name in ("averaging_runs.csv", "averaging_summary.csv", "averaging_table.md", "averaging_accuracy.png",
                 "averaging_schedules.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "averaging_table.md").read_text()
    assert "QUICK SMOKE RUN" in table and "| swa_cyclic | swa_cyclic | 0 |" in table
    assert table in capsys.readouterr().out
