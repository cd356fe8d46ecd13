"""Every import path written for a reader resolves, and is the canonical one.

Collected from the library's docstrings, comments and messages (every string and comment of learner/, callbacks/,
data/ and src/cyclr/, and of experiments/ and benchmarks/), the README, the documentation pages, benchmarks/README.md
and the notebooks:

- `from cyclr.x import a, b` and `import cyclr.x`: the module imports and has each name;
- `cyclr.x.y` written out: the longest importable prefix imports and has the rest as attributes;
- a name of `cyclr.__all__` imported from anywhere but `cyclr` (`from cyclr.learner import Learner`): the canonical
  path is `from cyclr import Learner`;
- the paths from before the `cyclr` package, which import a user's own module of that name today:
  `from data.cifar10 import ...`, `import learner`, `data.DataLoaders`, `callbacks.Callback`.

The table of old paths (docs/import_paths.md) is the one place allowed to show them.
"""

import importlib
import io
import json
import re
import tokenize
from pathlib import Path

import cyclr

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = [ROOT / "learner", ROOT / "callbacks", ROOT / "data", ROOT / "src" / "cyclr", ROOT / "experiments",
           ROOT / "benchmarks"]
SUBPACKAGES = ("learner", "callbacks", "data")
OLD_PATHS_TABLE = ROOT / "docs" / "import_paths.md"
OLD_PATHS = ("<!-- old-paths: start -->", "<!-- old-paths: end -->")

# Stale paths in files this test's owner may not edit (issue 22), as (file, the mention as reported): the lead
# applies each fix and removes its entry; an entry that no longer occurs fails the test too.
STALE_IN_FILES_OWNED_ELSEWHERE: set[tuple[str, str]] = set()

# Notebooks other work is adding at the same time, written against the old paths: their imports that are not yet
# `from cyclr import ...` are allowed (every path must still resolve); each is removed once it is converted.
NOTEBOOKS_NOT_YET_ON_THE_FRONT_DOOR: set[str] = set()

# Dotted names that are not import paths: the tags MLflowCallback puts on its runs.
NOT_PATHS = {"cyclr.kind", "cyclr.training_run"}

FROM_IMPORT = re.compile(r"\bfrom\s+(cyclr(?:\.\w+)*)\s+import\s+(\([^)]*\)|[\w ,]+(?:\\\n[\w ,]+)*)")
IMPORT = re.compile(r"(?<![\w.])import\s+(cyclr(?:\.\w+)+)")
DOTTED = re.compile(r"(?<![\w./-])(cyclr(?:\.[A-Za-z_]\w*)+)")
BARE_FROM = re.compile(r"\bfrom\s+((?:learner|callbacks|data)(?:\.\w+)*)\s+import\b")
BARE_IMPORT = re.compile(r"(?<![\w.])(?<!from )import\s+(learner|callbacks|data)\b")
BARE_DOTTED = re.compile(r"(?<![\w./-])(learner|callbacks|data)\.([A-Za-z_]\w*)")


def library_texts() -> list[tuple[str, str]]:
    """The strings and comments of every module under LIBRARY, each as (file, text)."""
    texts = []
    for folder in LIBRARY:
        for path in sorted(folder.rglob("*.py")):
            kinds = (tokenize.STRING, tokenize.COMMENT)
            tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            texts += [(str(path.relative_to(ROOT)), tok.string) for tok in tokens if tok.type in kinds]
    return texts


def page_texts() -> list[tuple[str, str]]:
    texts = []
    for path in [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        if path == OLD_PATHS_TABLE:
            text = text[:text.index(OLD_PATHS[0])] + text[text.index(OLD_PATHS[1]):]
        texts.append((str(path.relative_to(ROOT)), text))
    for path in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        texts += [(str(path.relative_to(ROOT)), "".join(cell["source"])) for cell in cells]
    return texts


def resolves(dotted: str) -> bool:
    """Whether `a.b.c` names a module or an attribute reached from the longest importable module prefix."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for attr in parts[n:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def imported_names(clause: str) -> list[str]:
    clause = clause.strip("()").replace("\\\n", " ")
    return [item.split(" as ")[0].strip() for item in clause.split(",") if item.strip()]


def problems_in(text: str) -> list[str]:
    found = []
    for module, clause in FROM_IMPORT.findall(text):
        for name in imported_names(clause):
            if not resolves(f"{module}.{name}"):
                found.append(f"from {module} import {name}: does not resolve")
            elif module != "cyclr" and name in cyclr.__all__:
                found.append(f"from {module} import {name}: write from cyclr import {name}")
    for module in IMPORT.findall(text):
        if not resolves(module):
            found.append(f"import {module}: does not resolve")
    for dotted in DOTTED.findall(text):
        if dotted not in NOT_PATHS and not resolves(dotted):
            found.append(f"{dotted}: does not resolve")
    for module in BARE_FROM.findall(text):
        found.append(f"from {module} import: a path from before the cyclr package")
    for package in BARE_IMPORT.findall(text):
        found.append(f"import {package}: a path from before the cyclr package")
    for package, attr in BARE_DOTTED.findall(BARE_FROM.sub("", text)):
        # A public name (data.DataLoaders) or a module (learner.cli) of the old top-level packages.
        if (attr in cyclr.__all__ and attr[0].isupper()) or resolves(f"cyclr.{package}.{attr}"):
            found.append(f"{package}.{attr}: a path from before the cyclr package")
    return found


def stale_mentions() -> set[tuple[str, str]]:
    return {(where, problem) for where, text in library_texts() + page_texts() for problem in problems_in(text)}


def test_the_collector_recognises_each_kind_of_stale_path():
    written = "see `from cyclr.learner.learner import Learner` and `from cyclr.learner.models import lenet`"
    assert problems_in(written) == [
        "from cyclr.learner.learner import Learner: write from cyclr import Learner",
        "from cyclr.learner.models import lenet: write from cyclr import lenet"]
    assert problems_in("from cyclr.learner import Learner") == ["from cyclr.learner import Learner: does not resolve"]
    assert problems_in("from cyclr.learner.models import no_such_model") == [
        "from cyclr.learner.models import no_such_model: does not resolve"]
    assert problems_in("from cyclr.data.cifar10 import (\n    cifar10,\n    load_cifar10 as load,\n)") == []
    assert problems_in("`cyclr.callbacks.lr_finder.LR_FIND` and `cyclr.callbacks.schedules.NOPE`") == [
        "cyclr.callbacks.schedules.NOPE: does not resolve"]
    assert problems_in("from data.cifar10 import cifar10") == [
        "from data.cifar10 import: a path from before the cyclr package"]
    assert problems_in("# so `import learner` stays fast") == ["import learner: a path from before the cyclr package"]
    assert problems_in("needs a data.InMemoryLoader, not learn.data.x nor data.shape") == [
        "data.InMemoryLoader: a path from before the cyclr package"]
    assert problems_in("from cyclr import Learner, fashion_mnist; python -m cyclr.learner.cli demo") == []


def test_every_import_path_written_for_a_reader_resolves_and_is_canonical():
    found = stale_mentions()
    not_yet = {(where, problem) for where, problem in found
               if where in NOTEBOOKS_NOT_YET_ON_THE_FRONT_DOOR and ": write from cyclr import " in problem}
    present = {name for name in NOTEBOOKS_NOT_YET_ON_THE_FRONT_DOOR if (ROOT / name).exists()}
    assert {where for where, _ in not_yet} == present, "converted: remove it from NOTEBOOKS_NOT_YET_ON_THE_FRONT_DOOR"
    found -= not_yet
    unexpected = sorted(found - STALE_IN_FILES_OWNED_ELSEWHERE)
    assert unexpected == [], "\n".join(f"{where}: {problem}" for where, problem in unexpected)
    fixed = sorted(STALE_IN_FILES_OWNED_ELSEWHERE - found)
    assert fixed == [], f"fixed, remove from STALE_IN_FILES_OWNED_ELSEWHERE: {fixed}"


def test_each_public_name_has_one_import_path_the_front_door():
    # The subpackages' __init__ files import nothing: `from cyclr.learner import Learner` fails instead of being a
    # second path; each name lives in the module that defines it and is imported by users from `cyclr`.
    for package in ("cyclr.learner", "cyclr.callbacks", "cyclr.data", "cyclr.callbacks.schedules"):
        module = importlib.import_module(package)
        public = [name for name, value in vars(module).items()
                  if not name.startswith("_") and not isinstance(value, type(cyclr))]
        assert public == [], f"{package} re-exports {public}"
    for name in cyclr.__all__:
        value = getattr(cyclr, name)
        home = getattr(value, "__module__", None)
        if home is not None and isinstance(value, type | type(len) | type(lambda: 0)):
            assert getattr(importlib.import_module(home), name) is value, name


def test_the_old_paths_table_maps_to_paths_that_resolve():
    text = OLD_PATHS_TABLE.read_text()
    table = text[text.index(OLD_PATHS[0]):text.index(OLD_PATHS[1])]
    new_column = [row.split("|")[2] for row in table.splitlines() if row.startswith("| `")]
    assert len(new_column) >= 10
    for cell in new_column:
        assert problems_in(cell) == [], cell
    # Every name of the front door's __all__ a user imported from elsewhere is in the table's "now" column... at
    # least the ones the issue names as hard to find.
    for name in ("ParamScheduler", "LRFinderCallback", "lenet_bn", "resnet56", "one_cycle", "SaveModelCallback"):
        assert any(name in cell for cell in new_column), name
