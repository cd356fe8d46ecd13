"""The packages install as `cyclr.learner`, `cyclr.callbacks`, `cyclr.data`: a user's own `learner.py`,
`callbacks.py` and `data.py` beside their script never shadow them, in the editable install and in a built wheel.

The top-level module (`from cyclr import Learner`, src/cyclr/) works three ways: installed from the wheel in a fresh
venv, from the editable install, and in a script run from the repository root (with the editable install, and with
the wheel: nothing at the root shadows the installed package).
"""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import cyclr

REPO = Path(__file__).resolve().parents[1]
FRONT_DOOR = """
import cyclr
from cyclr import Learner, fashion_mnist, accuracy, one_cycle, ParamScheduler, LRFinderCallback
from importlib.metadata import version
from pathlib import Path
assert cyclr.__version__ == version("cyclr"), (cyclr.__version__, version("cyclr"))
assert (Path(cyclr.__file__).parent / "py.typed").exists()
assert all(hasattr(cyclr, name) for name in cyclr.__all__)
import cyclr.learner, cyclr.data.cifar10
print(cyclr.__file__)
print(cyclr.learner.__file__)
print(Learner.__module__, one_cycle.__module__, LRFinderCallback.__module__)
"""

USER_SCRIPT = """
import sys
repo = {repo!r}
assert all(not p or __import__('os').path.realpath(p) != repo for p in sys.path), sys.path
import learner, callbacks, data                 # the user's own modules, beside this script
assert learner.MINE and callbacks.MINE and data.MINE
from cyclr import Learner, accuracy, Recorder, OneCycleCallback, synthetic_classification
import cyclr.learner, cyclr.callbacks, cyclr.data
print(cyclr.learner.__file__)
print(cyclr.callbacks.__file__)
print(cyclr.data.__file__)
import torch
learn = Learner(torch.nn.Linear(8, 3), synthetic_classification(), torch.nn.CrossEntropyLoss(), metrics=[accuracy],
                progress=False)
learn.fit_one_cycle(1, 0.1)
print(learn.recorder.to_df('epochs')['accuracy'].iloc[-1])
"""


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    for name in ("learner", "callbacks", "data"):
        (folder / f"{name}.py").write_text("MINE = True\n")
    (folder / "train.py").write_text(USER_SCRIPT.format(repo=str(REPO)))
    return folder


def _run(folder: Path, python_args: list[str], env: dict) -> list[str]:
    done = subprocess.run([sys.executable, *python_args, str(folder / "train.py")], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_editable_install_beside_user_modules(tmp_path):
    folder = _user_folder(tmp_path)
    out = _run(folder, [], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert [Path(p) for p in out[:3]] == [REPO / "learner" / "__init__.py", REPO / "callbacks" / "__init__.py",
                                           REPO / "data" / "__init__.py"]
    assert float(out[3]) > 0.6  # it trains: well above chance (1/3)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("wheel")
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    # Built from a copy, so the build leaves nothing (build/, *.egg-info) in the repository.
    for folder in ("learner", "callbacks", "data", "src"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (built,) = wheels.glob(f"cyclr-{cyclr.__version__}-*.whl")
    return built


def test_the_wheel_holds_the_front_door_and_the_three_folders_inside_cyclr(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cyclr/__init__.py", "cyclr/py.typed", "cyclr/learner/learner.py", "cyclr/data/core.py",
            "cyclr/callbacks/schedules/cycles.py"} <= set(names)
    assert not any(n.startswith(("learner/", "callbacks/", "data/", "src/")) for n in names)  # nothing top-level


def fresh_venv_with_the_wheel(wheel: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A new venv with the wheel installed (no dependencies); its dependencies come from .venv's site-packages
    through a .pth file, so nothing big is downloaded. Lines of a .pth file only extend sys.path: the editable
    install's finder in that folder is never started."""
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies_from_dot_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return python, site


def run_front_door(python, cwd: Path, tmp_path: Path) -> list[str]:
    done = subprocess.run([str(python), "-c", FRONT_DOOR], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_the_front_door_from_the_wheel_in_a_fresh_venv(wheel, tmp_path):
    python, site = fresh_venv_with_the_wheel(wheel, tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # From a folder of the user's, and from the repository root: there, nothing shadows the installed package.
    for cwd in (outside, REPO):
        front, learner, modules = run_front_door(python, cwd, tmp_path)
        assert Path(front) == site / "cyclr" / "__init__.py"
        assert Path(learner) == site / "cyclr" / "learner" / "__init__.py"
        assert modules == "cyclr.learner.learner cyclr.callbacks.schedules.cycles cyclr.callbacks.lr_finder"


def test_the_front_door_from_the_editable_install(tmp_path):
    # From any folder, and in a script run from the repository root (`python -c` puts the working folder first on
    # sys.path, as `python script.py` puts the script's folder).
    for cwd in (tmp_path, REPO):
        front, learner, _ = run_front_door(sys.executable, cwd, tmp_path)
        assert Path(front) == REPO / "src" / "cyclr" / "__init__.py"
        assert Path(learner) == REPO / "learner" / "__init__.py"


def test_built_wheel_beside_user_modules(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    folder = _user_folder(tmp_path)
    # -S: no site-packages processing, so the editable install's finder is absent; only the wheel provides cyclr.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": f"{site}:{sysconfig.get_paths()['purelib']}"}
    out = _run(folder, ["-S"], env=env)
    assert all(Path(p).is_relative_to(site / "cyclr") for p in out[:3]), out
    assert float(out[3]) > 0.6  # it trains: well above chance (1/3)


def test_the_front_door_names_objects_not_modules_each_once():
    # `fashion_mnist` is both a function and the module defining it: the front door must hand out the function.
    import types

    assert len(set(cyclr.__all__)) == len(cyclr.__all__)
    modules = [name for name in cyclr.__all__ if isinstance(getattr(cyclr, name), types.ModuleType)]
    assert modules == []
    assert callable(cyclr.fashion_mnist) and cyclr.fashion_mnist.__module__ == "cyclr.data.fashion_mnist"
