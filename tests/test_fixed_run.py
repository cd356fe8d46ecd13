"""A fixed run (lr_find, fit_one_cycle, fit_sgdr, a triangular ParamScheduler; SGD with momentum; every argument
explicit) gives the rates, momenta, losses and final weights recorded before the redesign (tests/reference)."""

from pathlib import Path

import torch
from fixed_run import fixed_run

REFERENCE = Path(__file__).parent / "reference" / "fixed_run.pt"


def test_fixed_run_matches_the_reference_recorded_before_the_redesign():
    ref = torch.load(REFERENCE, weights_only=True)
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
