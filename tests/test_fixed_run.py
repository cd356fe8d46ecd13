"""Fixed runs give the rates, momenta, losses and final weights recorded before a redesign (tests/reference):
`fixed_run` (SGD with momentum) before the move into the `cyclr.` namespace, `fixed_run_adamw` (AdamW, two parameter
groups, every recipe) before the hot-path rework of the scheduler layer."""

from pathlib import Path

import torch
from fixed_run import fixed_run, fixed_run_adamw

REFERENCES = Path(__file__).parent / "reference"


def test_fixed_run_matches_the_reference_recorded_before_the_redesign():
    ref = torch.load(REFERENCES / "fixed_run.pt", weights_only=True)
    got = fixed_run()
    assert set(got) == set(ref)
    # Schedules are float64 arithmetic in Python: equal to the last bits.
    for key in ("finder_lrs", "lrs", "moms"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=0)
    # Losses and weights are float32 kernels: bitwise on the machine that recorded them; a CPU with other vector
    # units may round differently in the last place.
    for key in ("finder_losses", "losses", "valid_losses"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6)
    assert got["weights"].keys() == ref["weights"].keys()
    for name, value in ref["weights"].items():
        torch.testing.assert_close(got["weights"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert len(got["lrs"]) == 42  # 2 + 3 + 2 epochs of 6 batches: the sweep is not in the history


def test_adamw_run_of_every_recipe_is_bitwise_the_one_recorded_before_the_scheduler_rework():
    ref = torch.load(REFERENCES / "fixed_run_adamw.pt", weights_only=True)
    got = fixed_run_adamw()
    assert set(got) == set(ref)
    # Every scheduled value is float64 Python arithmetic, the same on any machine: no ulp may move (a cached or
    # vectorised schedule would round differently).
    for key in ("finder_lrs", "lrs", "moms", "lr_0", "mom_0"):
        assert torch.equal(got[key], ref[key]), key
    # float32 kernels: bitwise on the machine that recorded them (a CPU with other vector units may round the last
    # place differently, hence the tolerance, which still catches one step taken with another rate).
    for key in ("finder_losses", "losses", "valid_losses"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-6, atol=1e-7, msg=key)
    for name, value in ref["weights"].items():
        torch.testing.assert_close(got["weights"][name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert list(got["batch_table"]) == list(ref["batch_table"])  # the same columns, in the same order
    for name, column in ref["batch_table"].items():
        if "loss" in name:
            torch.testing.assert_close(got["batch_table"][name], column, rtol=1e-6, atol=1e-7, msg=name)
        else:
            assert torch.equal(got["batch_table"][name], column), name
    assert len(got["lrs"]) == 5 * (2 + 1 + 2 + 3 + 2 + 2)  # 5 batches an epoch; the sweep is not in the history
