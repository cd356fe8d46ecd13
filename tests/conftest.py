"""Suite-wide settings: plots render off-screen, torch uses one thread, and parametrized tests get node ids a shell
can pass back to pytest.

On the 2-core machines this suite targets, tiny models run many times faster on one thread, and one thread keeps a
busy machine from oversubscribing its cores (two threads on a loaded 2-core box were measured 3-15x slower).
`CYCLR_TEST_THREADS=N` overrides it.
"""

import os
import sys

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("CYCLR_TEST_THREADS", "1")))


import pytest  # noqa: E402
from helpers import node_id  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    """Closes every matplotlib figure each test opened, so a long run does not keep hundreds of them alive."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")  # a test that drew nothing need not import pyplot
    if pyplot is not None:
        pyplot.close("all")



def pytest_make_parametrize_id(config, val, argname):
    """A parametrized test's id part made from a string or a function's name goes through `node_id`, so that a node
    id never holds a space, quote, backslash or `<>` (`[<lambda>-monitor='f1' is not recorded]`), which break running
    that one test again from a shell or a CI log. Other values keep pytest's ids (`argname` + index)."""
    if isinstance(val, str):
        return node_id(val)
    if callable(val) and hasattr(val, "__name__"):
        return node_id(val.__name__)
    return None
