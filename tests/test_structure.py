"""The code's shape, as the design card and the hot-path issue ask it: no module over 400 lines, no private name
imported from another module, `callbacks` and `data` never importing `learner`, one callback order table."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("learner", "callbacks", "data")
MODULES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)
MAX_LINES = 400


def imports(path):
    """(level, module, names) of each `from ... import ...` in `path`, wherever it is (a function's body too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [alias.name for alias in node.names]


def test_the_library_is_found_where_the_card_puts_it():
    assert len(MODULES) > 50 and ROOT / "learner" / "learner.py" in MODULES


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_name_is_imported_across_modules():
    private = [(str(p.relative_to(ROOT)), module, name) for p in MODULES for _, module, names in imports(p)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_callbacks_and_data_never_import_learner():
    found = []
    for package in ("callbacks", "data"):
        for p in (ROOT / package).rglob("*.py"):
            depth = len(p.relative_to(ROOT).parts) - 1  # 1 for callbacks/x.py, 2 for callbacks/schedules/x.py
            for level, module, _ in imports(p):
                absolute = level == 0 and module.startswith("cyclr.learner")
                relative = level > depth and (module == "learner" or module.startswith("learner."))
                if absolute or relative:
                    found.append(str(p.relative_to(ROOT)))
    assert found == []


def test_callback_orders_come_from_the_one_table():
    # Every `order = ...` of a library callback names a row of callbacks/core.py's ORDER, never a bare number.
    bare = [f"{p.relative_to(ROOT)}: {line.strip()}" for p in MODULES for line in p.read_text().splitlines()
            if re.match(r"\s+order\s*=\s*[-\d]", line)]
    assert bare == []


def test_every_test_id_can_be_passed_back_to_pytest_from_a_shell():
    # No space, quote, backslash or `<>` in a node id (conftest's pytest_make_parametrize_id and helpers.node_id):
    # a failing test named in a CI log can be rerun by pasting its id.
    import subprocess
    import sys

    listing = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    ids = [line for line in listing.stdout.splitlines() if "::" in line]
    assert len(ids) > 900, listing.stdout[-2000:] + listing.stderr[-2000:]
    unsafe = [i for i in ids if not re.fullmatch(r"[A-Za-z0-9_./:=+,\[\]-]+", i)]
    assert unsafe == []
