"""What the d2l and blog reproductions share: the CSV and markdown writers, the statistics over seeds, the machine
description, the argument checks and the row helpers."""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from cyclr.data.state import atomic_write

__all__ = [
    "machine_description", "today", "heading", "check_seeds", "check_positive_int", "summary_stats", "plus_minus",
    "round_sig", "rows_of_config", "thinned", "last_per_epoch", "same_config", "append_row", "write_rows",
    "read_rows", "save_figure",
]


def machine_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} GPU, {os.cpu_count()}-core CPU"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), no GPU"


def today() -> str:
    return datetime.date.today().isoformat()


def heading(title: str, quick: bool, command: str | None) -> list[str]:
    """A results table's title and provenance line: date, machine, torch version and the command that made it."""
    provenance = f"{today()}, {machine_description()}, torch {torch.__version__}"
    return [title + (" -- QUICK SMOKE RUN" if quick else ""), "",
            provenance + (f", command `{command}`" if command else "") + "."]


def check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds=(0, 1)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"each seed must be an int >= 0, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def summary_stats(values: list[float]) -> dict:
    """Mean, sample standard deviation (nan for one value), min and max."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
            "min": min(values), "max": max(values)}


def plus_minus(entry: dict, key: str, digits: int = 3) -> str:
    """`mean +- sd` of a summary entry's `key` (the mean alone when sd is nan)."""
    mean, sd = entry[f"{key}_mean"], entry[f"{key}_sd"]
    return f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} +- {sd:.{digits}f}"


def round_sig(value):
    """A float rounded to 6 significant digits (other values unchanged): small enough to commit."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def rows_of_config(path: Path, config: dict) -> list[dict]:
    """The rows already in the results CSV `path`, after checking they were made with `config`: one folder holds
    the runs of one configuration, so that its summary and plots never mix two."""
    rows = read_rows(path)
    for row in rows:
        if not same_config(row, config):
            theirs = {k: row.get(k) for k in config}
            raise ValueError(f"{path} holds results of another configuration ({theirs}, this run: {config}); "
                             "give another output folder (--out) or remove that one")
    return rows


def thinned(rows: list, points: int = 500) -> list:
    """About `points` evenly spaced rows, the last one included: enough for a plot, small enough to commit."""
    stride = max(1, len(rows) // points)
    kept = rows[::stride]
    return kept if not rows or kept[-1] is rows[-1] else [*kept, rows[-1]]


def last_per_epoch(rows: list[dict]) -> list[dict]:
    """One history row per (run, seed, epoch), the last written: a run that was cut short after writing part of
    its history and trained again on the next call has its epochs twice."""
    latest = {(r["run"], r["seed"], r["epoch"]): r for r in rows}
    return list(latest.values())


def same_config(row: dict, config: dict) -> bool:
    for key, value in config.items():
        if key not in row:
            return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isclose(float(row[key]), float(value)):
                return False
        elif str(row[key]) != str(value):
            return False
    return True


def append_row(path: Path, fields: list[str], row: dict) -> None:
    """Append one row, writing the header first for a new file; the file is closed (flushed) after each row."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def write_rows(path: Path, fields: list[str], rows: list[dict]) -> None:
    """Write the CSV whole, atomically (a symbolic link at `path` is replaced, never written through)."""

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        text.flush()
        text.detach()  # atomic_write flushes, syncs and closes the binary file itself

    atomic_write(path, write)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def save_figure(fig, path: Path) -> None:
    """Save `fig` atomically in the format of `path`'s suffix (png without one), then close it. A symbolic link at
    `path` is replaced, never written through."""
    import matplotlib.pyplot as plt

    form = Path(path).suffix[1:] or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=form, dpi=100, bbox_inches="tight"))
    plt.close(fig)
