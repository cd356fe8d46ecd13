"""The LR-finder study's code (experiments/lr_finder_study.py and its tasks and report): the grid and its extension
rule against values worked out by hand, the tasks' data made the same on every call, a diverged fit scored as
chance, and the whole study in quick mode on one task: every file written, the summary's regrets recomputed from
the runs, and a second call training nothing again."""

import math
import statistics

import pytest
import torch

from experiments.common import read_rows
from experiments.lr_finder_study import LRFinderStudy, StudyConfig, grid_extension, log_grid, run_lr_finder_study
from experiments.lr_finder_tasks import TASKS, digits_split, motif_sequences


def test_log_grid_half_a_decade_apart():
    assert log_grid(1e-3, 10.0) == [0.001, 0.00316228, 0.01, 0.0316228, 0.1, 0.316228, 1.0, 3.16228, 10.0]
    assert log_grid(1e-5, 1.0)[::4] == [1e-5, 0.001, 0.1]  # quick mode's grid


@pytest.mark.parametrize("scores, diverged, expected", [
    # best in the middle, two decades (four points) on each side: nothing to add
    ([0.1, 0.2, 0.3, 0.4, 0.9, 0.5, 0.4, 0.3, 0.2], [False] * 9, []),
    # best at the lowest rate: two decades below it; above, the grid already reaches two decades
    ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], [False] * 9, [1e-5, 3.16228e-5, 1e-4, 3.16228e-4]),
    # best at the highest rate: two decades above it, nothing below
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], [False] * 9, [31.6228, 100.0, 316.228, 1000.0]),
    # best one point below the top, the top diverged with every seed: no rate above is tried
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9, 0.1], [False] * 8 + [True], []),
])
def test_grid_extension(scores, diverged, expected):
    assert grid_extension(log_grid(1e-3, 10.0), scores, diverged) == expected


def test_task_data_is_deterministic():
    x1, y1 = motif_sequences(64, seed=3)
    x2, y2 = motif_sequences(64, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (64, 24) and int(x1.max()) < 32 and sorted(set(y1.tolist())) == [0, 1, 2, 3]
    assert not torch.equal(motif_sequences(64, seed=4)[0], x1)
    first, second = digits_split(), digits_split()
    assert [t.shape[0] for t in first] == [1437, 1437, 360, 360]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert float(first[0].max()) == 1.0 and float(first[0].min()) == 0.0


def test_a_diverged_fit_is_scored_as_chance(tmp_path):
    study = LRFinderStudy(tmp_path, seeds=[0], quick=True, log=lambda s: None)
    row = study.fit(StudyConfig("digits_mlp", "sgd", 1, 64), "grid", "grid", 1e9, seed=0)
    assert row["diverged"] == "True" and float(row["accuracy"]) == pytest.approx(TASKS["digits_mlp"].chance)
    assert float(row["epochs_trained"]) < 1
    assert read_rows(tmp_path / "runs.csv")[0]["diverged"] == "True"


def test_quick_study_on_one_task(tmp_path):
    lines = []
    summary = run_lr_finder_study(tmp_path, tasks=("digits_mlp",), seeds=(0,), quick=True, log=lines.append,
                                  command="pytest")["summary"]
    runs = read_rows(tmp_path / "runs.csv")
    # two optimizers x two grids (1 epoch, and the 2-epoch variation) x (3 rates, 4 suggestions, the wd sweep's pick)
    # + Optuna's picks after 2 and 3 blind trials and 2 seeded ones, retrained on the default grid of each optimizer
    kinds = [r["kind"] for r in runs]
    assert kinds.count("grid") == 12 and kinds.count("suggestion") == 16 and kinds.count("wd_sweep") == 4
    for opt in ("sgd", "adamw"):
        labels = sorted(r["label"] for r in runs if (r["kind"], r["opt"]) == ("optuna", opt))
        assert labels == ["blind k=2", "blind k=3", "seeded k=2"]
    finders = read_rows(tmp_path / "finder.csv")
    assert len(finders) == 2  # the finder sees the batch size, not the epochs
    trials = read_rows(tmp_path / "optuna_trials.csv")
    assert [(t["opt"], t["search"]) for t in trials] == [("sgd", "blind")] * 3 + [("sgd", "seeded")] * 2 + [
        ("adamw", "blind")] * 3 + [("adamw", "seeded")] * 2
    # The seeded search's first trial is at the valley of seed 0's own lr_find, the same as the finder's row.
    for opt in ("sgd", "adamw"):
        first = next(t for t in trials if (t["opt"], t["search"], t["number"]) == (opt, "seeded", "0"))
        valley = next(f["valley"] for f in finders if f["opt"] == opt)
        assert float(first["max_lr"]) == pytest.approx(float(valley), rel=1e-5)
        assert float(first["lr_find_seconds"]) > 0
    for name in ("summary.csv", "lr_finder_table.md", "lr_finder_digits_mlp.png", "lr_finder_variations.png",
                 "optuna.db"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "lr_finder_table.md").read_text()
    assert "QUICK SMOKE RUN" in table and "command `pytest`" in table
    assert "- digits_mlp / sgd: the valley suggestion is" in table and "- digits_mlp / adamw:" in table
    assert "#### The moving optimum: digits_mlp" in table and "| sgd | 2 | 64 |" in table

    # The summary's regret, recomputed from the runs: the grid's best mean accuracy minus the valley's.
    entry = next(e for e in summary if (e["opt"], e["epochs"], e["method"]) == ("sgd", 1, "valley"))
    grid = [r for r in runs if (r["opt"], r["epochs"], r["kind"]) == ("sgd", "1", "grid")]
    best = max(float(r["accuracy"]) for r in grid)
    valley = next(r for r in runs if (r["opt"], r["epochs"], r["label"]) == ("sgd", "1", "valley"))
    assert entry["regret_points"] == pytest.approx(100 * (best - float(valley["accuracy"])))
    assert entry["lr_ratio"] == pytest.approx(float(valley["lr"]) / entry["best_lr"])
    assert math.isclose(entry["cost_pct_of_grid"], 100 * entry["cost_seconds"] / entry["grid_seconds"])

    # A second call trains nothing: every run, finder sweep and trial is already there.
    again = []
    run_lr_finder_study(tmp_path, tasks=("digits_mlp",), seeds=(0,), quick=True, log=again.append)
    assert again == [] and read_rows(tmp_path / "runs.csv") == runs
    assert read_rows(tmp_path / "optuna_trials.csv") == trials
    assert statistics.fmean(e["n"] for e in summary) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"tasks": ("imagenet",)}, "unknown task 'imagenet'"),
    ({"optimizers": ("lamb",)}, "unknown optimizer 'lamb'"),
    ({"tasks": ("motif_gru",), "variation_task": "digits_mlp"}, "variation_task 'digits_mlp' must be one of"),
    ({"seeds": (0, 0)}, "distinct"),
])
def test_bad_arguments_refused_before_anything_is_written(tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        run_lr_finder_study(out, quick=True, **kwargs)
    assert not out.exists()


def test_a_missing_package_is_named_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else
                        real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"digits task's data needs the 'scikit-learn' package.*pip install"):
        run_lr_finder_study(tmp_path / "out", tasks=("digits_mlp",), quick=True)
    assert not (tmp_path / "out").exists()
