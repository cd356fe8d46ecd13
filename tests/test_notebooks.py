"""The notebooks in nbs/: committed without outputs, and each runs top to bottom in quick mode (CYCLR_QUICK=1), where
it asserts its claims with loose bounds. A failing cell or claim fails the test. The executed copy, with its outputs,
is written to build/nbs/, where the documentation site (docs/hooks.py) renders it from."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NBS = Path(__file__).resolve().parents[1] / "nbs"
EXECUTED = NBS.parent / "build" / "nbs"
NOTEBOOKS = ["00_quickstart.ipynb", "01_custom_callbacks.ipynb", "02_blog_experiments.ipynb",
             "03_d2l_lr_scheduling.ipynb", "04_bring_your_own.ipynb", "05_transfer_learning.ipynb",
             "06_tracking.ipynb", "07_schedule_free.ipynb", "08_averaging.ipynb",
             "09_lr_finder_study.ipynb"]
KERNEL = "python3"


@pytest.fixture(scope="module")
def kernel_name():
    """The python3 kernel of this interpreter (the venv's): its spec is installed into sys.prefix when missing, as on
    a fresh clone where ipykernel came with `pip install -e '.[dev]'` but no spec was written yet."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL], check=True,
                       capture_output=True)
    return KERNEL


def test_the_notebooks_are_committed_without_outputs():
    assert sorted(p.name for p in NBS.glob("*.ipynb")) == NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(NBS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, name
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before committing"
        assert any('os.environ.get("CYCLR_QUICK")' in c.source for c in code), f"{name} has no quick-mode parameter"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_quick_mode(name, kernel_name, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("CYCLR_QUICK", "1")
    nb = nbformat.read(NBS / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name=kernel_name, resources={"metadata": {"path": str(NBS)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    EXECUTED.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, EXECUTED / name)
