"""The packages install as `cyclr.learner`, `cyclr.callbacks`, `cyclr.data`: a user's own `learner.py`,
`callbacks.py` and `data.py` beside their script never shadow them, in the editable install and in a built wheel."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

USER_SCRIPT = """
import sys
repo = {repo!r}
assert all(not p or __import__('os').path.realpath(p) != repo for p in sys.path), sys.path
import learner, callbacks, data                 # the user's own modules, beside this script
assert learner.MINE and callbacks.MINE and data.MINE
from cyclr.learner import Learner, accuracy
from cyclr.callbacks import Recorder, OneCycleCallback
from cyclr.data.synthetic import synthetic_classification
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


def test_built_wheel_beside_user_modules(tmp_path):
    wheels, source = tmp_path / "wheels", tmp_path / "source"
    # Built from a copy, so the build leaves nothing (build/, *.egg-info) in the repository.
    for folder in ("learner", "callbacks", "data"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("cyclr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cyclr/learner/learner.py" in names and "cyclr/data/core.py" in names
    assert not any(n.startswith(("learner/", "callbacks/", "data/")) for n in names)  # nothing installs top-level
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
