"""MkDocs hooks: the package as installed for the API reference, and the notebooks in nbs/ as pages.

The reference is read by griffe (mkdocstrings) without importing anything, from the files on disk: it needs them in
the installed layout, `cyclr/` holding `learner/`, `callbacks/` and `data/`, which the repository spreads over
src/cyclr/ and the root. build/api/cyclr/ is that layout: a copy of the
front door and links to the three folders (mkdocs.yml points griffe there).

The notebooks are committed without outputs. `tests/test_notebooks.py` and `make docs` execute them in quick mode
(CYCLR_QUICK=1) and write the executed copies to build/nbs/; a copy at least as new as its notebook is rendered,
else the notebook itself (its cells, without outputs), so the site always builds.
"""

import shutil
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_LAYOUT = ROOT / "build" / "api" / "cyclr"
SUBPACKAGES = ("learner", "callbacks", "data")
NBS = ROOT / "nbs"
EXECUTED = ROOT / "build" / "nbs"
STAGED = ROOT / "build" / "docs"
NAV_SECTION = "Notebooks"


def notebooks() -> list[Path]:
    return sorted(NBS.glob("*.ipynb"))


def rendered_copy(notebook: Path) -> Path:
    executed = EXECUTED / notebook.name
    if executed.exists() and executed.stat().st_mtime >= notebook.stat().st_mtime:
        return executed
    return notebook


def link_installed_layout() -> None:
    INSTALLED_LAYOUT.mkdir(parents=True, exist_ok=True)
    # A copy, not a link: griffe follows a linked __init__.py back to src/cyclr/ and looks for the subpackages there.
    shutil.copyfile(ROOT / "src" / "cyclr" / "__init__.py", INSTALLED_LAYOUT / "__init__.py")
    for name in SUBPACKAGES:
        link, target = INSTALLED_LAYOUT / name, ROOT / name
        if not (link.is_symlink() and link.resolve() == target):
            link.unlink(missing_ok=True)
            link.symlink_to(target)


@event_priority(100)  # before mkdocstrings reads its paths, which must exist by then
def on_config(config):
    link_installed_layout()
    # Every notebook in nbs/ gets a place in the navigation, also those added after mkdocs.yml was written.
    for entry in config.nav:
        if isinstance(entry, dict) and NAV_SECTION in entry:
            entry[NAV_SECTION] = [f"notebooks/{nb.name}" for nb in notebooks()]
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the .ipynb files it finds into pages
def on_files(files, config):
    # Staged as plain files in a folder of their own: mkdocs-jupyter cannot read a File.generated one.
    (STAGED / "notebooks").mkdir(parents=True, exist_ok=True)
    for nb in notebooks():
        shutil.copyfile(rendered_copy(nb), STAGED / "notebooks" / nb.name)
        files.append(File(f"notebooks/{nb.name}", str(STAGED), config.site_dir, config.use_directory_urls))
    return files
