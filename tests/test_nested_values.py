"""The walk over nested values (data/nested.py) and the one definition of a plain value (data/state.py's `plain`),
which checkpoints, a fit's config and the schedules' state dicts all use."""

from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from cyclr import Callback, DataLoaders, Learner
from cyclr.data.nested import map_leaves, tensors_in
from cyclr.data.state import plain
from cyclr.learner.checkpoint_checks import check_fit_config
from cyclr.learner.checkpoint_files import read_checkpoint
from cyclr.learner.checkpoint_format import CheckpointError

Pair = namedtuple("Pair", "x y")


def test_map_leaves_rebuilds_every_container_around_the_new_leaves():
    nest = {"a": (torch.ones(2), [3, "s"]), "b": Pair(torch.zeros(1), None)}
    out = map_leaves(lambda v: v * 2 if isinstance(v, torch.Tensor) else v, nest)
    assert type(out["a"]) is tuple and type(out["a"][1]) is list and type(out["b"]) is Pair
    assert torch.equal(out["a"][0], torch.full((2,), 2.0)) and out["a"][1] == [3, "s"] and out["b"].y is None
    assert map_leaves(str, [1, (2,)]) == ["1", ("2",)]  # every leaf, not only tensors


def test_tensors_in_yields_every_tensor_in_order():
    a, b, c = torch.zeros(1), torch.ones(2), torch.ones(3)
    assert [t.numel() for t in tensors_in({"x": [a, ("no", b)], "y": 7, "z": c})] == [1, 2, 3]
    assert list(tensors_in("no tensor")) == []


def test_plain_converts_numpy_numbers_and_keeps_the_kept_types():
    value = {"lr": (np.float32(0.5), np.int64(3)), "size": torch.Size([2, 3]), "t": torch.ones(1)}
    out = plain(value, "v", keep=(torch.Tensor, torch.Size))
    assert out["lr"] == (0.5, 3) and type(out["lr"]) is tuple and type(out["lr"][0]) is float
    assert type(out["lr"][1]) is int and type(out["size"]) is torch.Size and out["t"] is value["t"]
    assert plain({"m": (0.9, 0.8)}, "v", config=True) == {"m": [0.9, 0.8]}
    with pytest.raises(TypeError, match=r"^v key 1 is not a string"):
        plain({1: 2}, "v", config=True)  # a config names its entries


def test_plain_refuses_anything_else_naming_where_it_is():
    with pytest.raises(TypeError, match=r"^v\['a'\]\[1\] is a numpy.ndarray, not a plain value .*; do this$"):
        plain({"a": [1, np.zeros(2)]}, "v", "; do this")
    with pytest.raises(TypeError, match=r"^v key .* is a builtins.object"):
        plain({object(): 1}, "v")
    with pytest.raises(TypeError, match=r"v\[0\] is a torch.Tensor"):
        plain([torch.ones(1)], "v")  # tensors only where the caller keeps them


def test_a_callback_state_with_numpy_numbers_saves_as_python_numbers(tmp_path):
    class NumpyNumbers(Callback):
        def state_dict(self):
            return {"best": np.float32(0.25), "step": np.int64(7)}

        def load_state_dict(self, state):
            self.loaded = state

    x, y = torch.randn(8, 3), torch.arange(8) % 2
    cb = NumpyNumbers()
    learn = Learner(nn.Linear(3, 2), DataLoaders.from_tensors(x, y, bs=4), nn.CrossEntropyLoss(), device="cpu",
                    progress=False, cbs=[cb])
    learn.save(tmp_path / "c.pt")  # read back with weights_only=True: no numpy object inside
    state = read_checkpoint(tmp_path / "c.pt")["callbacks"]["NumpyNumbers_0"]
    assert state == {"best": 0.25, "step": 7} and type(state["best"]) is float and type(state["step"]) is int


def test_a_checkpoint_config_that_is_not_plain_is_refused_naming_it():
    with pytest.raises(CheckpointError, match=r"progress: the checkpoint's config\['lr'\] is a builtins.slice"):
        check_fit_config({"callbacks": {}, "lr": slice(1, 2)})
