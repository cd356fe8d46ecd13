"""What the progress output leaves behind: in a notebook (executed with nbclient) exactly one table and one figure
(PNG) per fit, no stale empty <progress> bar, nothing visible for an lr_find; in a terminal no stray block
character before the bars."""

import re

import nbformat
import pytest
from test_notebooks import kernel_name  # noqa: F401  (the fixture installs the kernel spec when missing)
from torch import nn

from cyclr import Learner, accuracy, synthetic_classification

SETUP = """\
import torch
from torch import nn
from cyclr import synthetic_classification
from cyclr import Learner, accuracy
torch.manual_seed(0)
learn = Learner(nn.Linear(8, 3), synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0),
                nn.CrossEntropyLoss(), lr=0.05, metrics=[accuracy], device="cpu")"""
CELLS = [SETUP, "learn.fit(2)", (  # a 10-point sweep may warn that it shows no clear descent: not progress output
    "import warnings\nwith warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n"
    "    res = learn.lr_find(num_it=10)"), "learn.fit_one_cycle(3, 0.1)",
         "learn.validate();"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory, kernel_name):  # noqa: F811  (the fixture imported above)
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    folder = tmp_path_factory.mktemp("nb")
    NotebookClient(nb, timeout=300, kernel_name=kernel_name, resources={"metadata": {"path": str(folder)}}).execute()
    return [cell.outputs for cell in nb.cells]


def html(output) -> str:
    return output.get("data", {}).get("text/html", "")


def visible(outputs) -> list:
    """Outputs a reader sees: not fastprogress's one <style> block per kernel, not an emptied display."""
    shown = []
    for o in outputs:
        text = html(o).strip()
        if o["output_type"] == "display_data" and "image/png" not in o["data"]:
            if text.startswith("<style>") or re.fullmatch(r"(<div>\s*</div>)?", text):
                continue
        shown.append(o)
    return shown


def table_rows(output) -> int:
    return len(re.findall(r"<tr[ >]", html(output))) - 1  # the header row aside


@pytest.mark.parametrize(("cell", "n_epoch"), [(1, 2), (3, 3)])
def test_each_fit_leaves_one_table_and_one_figure(executed, cell, n_epoch):
    outputs = visible(executed[cell])
    assert [o["output_type"] for o in outputs] == ["display_data", "display_data"], outputs
    table, graph = sorted(outputs, key=lambda o: "image/png" in o["data"])
    assert "<table" in html(table) and table_rows(table) == n_epoch
    assert "valid_loss" in html(table) and "accuracy" in html(table)
    assert "image/png" in graph["data"] and graph["data"]["image/png"]  # the live graph, kept as a PNG


def test_no_stale_progress_bar_anywhere(executed):
    for outputs in executed:
        for o in outputs:
            assert "<progress" not in html(o), o
    assert sum("<style>" in html(o) for outputs in executed for o in outputs) == 1  # fastprogress's, once


def test_lr_find_and_validate_leave_nothing_visible(executed):
    assert visible(executed[2]) == []
    assert visible(executed[4]) == []


def test_terminal_bars_have_no_stray_block_character(monkeypatch, capsys):
    import fastprogress.fastprogress as fp

    from cyclr import ProgressCallback

    monkeypatch.setattr(fp, "printing", lambda: True)  # draw as in a terminal, though pytest captures stdout
    learn = Learner(nn.Linear(8, 3), synthetic_classification(n_train=96, n_valid=32, bs=16, seed=0),
                    nn.CrossEntropyLoss(), metrics=[accuracy], device="cpu", progress=False,
                    cbs=[ProgressCallback(show_bars=True)])
    learn.fit(2)
    out = capsys.readouterr().out
    bars = re.findall(r"\|█*-*\|", out)
    assert any("█" in b for b in bars)  # bars were drawn, filled with the block character
    assert "█" not in re.sub(r"\|█*-*\|", "", out)  # and it appears nowhere else
    assert re.search(r"epoch\s+train_loss\s+valid_loss\s+accuracy\s+time", out)
