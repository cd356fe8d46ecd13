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
    import cyclr.learner

    devices = []
    original = cyclr.learner.Learner.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        devices.append(self.device)

    monkeypatch.setattr(cyclr.learner.Learner, "__init__", recording_init)
    argv = ["demo", "--epochs", "1", "--n-train", "256", "--n-valid", "128", "--num-it", "5", "--bs", "64",
            "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert devices == [torch.device("cpu")]
    assert (tmp_path / "history_epochs.csv").exists()
