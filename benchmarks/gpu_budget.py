"""The GPU day's planner and report: sections run most valuable first, each only if it fits the time left, and the
JSON plus a short text summary are rewritten after every section, so a command cut off at its limit keeps all that
finished.

A section's status is one of
- `done`: it ran as planned (possibly with fewer timed rounds than asked; its figures say how many);
- `scaled`: it ran shorter than planned to fit (the blog's calls with fewer epochs, the one-cycle shape kept);
- `skipped`: the planner did not run it, `reason` says why (too little time for its first epoch, or its projection);
- `failed`: it raised; `error` holds the end of the traceback;
`--skip-done PREVIOUS.json` carries over the sections that finished (`done`, `scaled`) and runs only the others.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

FINISHED = ("done", "scaled")


class Budget:
    """Seconds left before `total_s` is spent, counted from construction; `clock` is injectable for the tests."""

    def __init__(self, total_s: float, clock=time.perf_counter):
        if not total_s > 0:
            raise ValueError(f"--budget-s must be a positive number of seconds, got {total_s!r}")
        self.total_s, self.clock = float(total_s), clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.total_s - self.elapsed()


def rounds_that_fit(wanted: int, round_s: float, left_s: float) -> int:
    """How many more timed rounds of `round_s` seconds fit into `left_s` (at most `wanted`, at least 0)."""
    if round_s <= 0:
        return wanted
    return max(0, min(wanted, int(left_s // round_s)))


def epochs_that_fit(full_epochs: dict[str, int], epoch_s: float, left_s: float) -> tuple[dict[str, int], float]:
    """Epochs per run so that the longest run ends inside `left_s` at `epoch_s` a concurrent epoch: the full lengths
    when they fit, else every run scaled by the same factor (so the runs keep their length ratios and the one-cycle
    shape, which depends on the fraction of the run only). Returns (epochs per run, scale)."""
    longest = max(full_epochs.values())
    scale = min(1.0, left_s / (longest * epoch_s)) if epoch_s > 0 else 1.0
    if scale >= 1.0:
        return dict(full_epochs), 1.0
    epochs = {name: int(n * scale) for name, n in full_epochs.items()}
    if max(epochs.values()) >= 1:  # the shorter runs end before the longest: at least one epoch each
        epochs = {name: max(1, n) for name, n in epochs.items()}
    return epochs, scale


class Report:
    """The JSON report and its text summary, both rewritten (atomically) at every `write()`."""

    def __init__(self, out: Path, meta: dict, previous: dict | None = None):
        self.out = Path(out)
        self.summary_path = self.out.with_suffix(".txt")
        self.data: dict = {"meta": meta, "sections": {}}
        self.carried: set[str] = set()
        if previous is not None:
            for name, section in previous.get("sections", {}).items():
                if section.get("status") in FINISHED:
                    self.data["sections"][name] = {**section, "carried_from": previous["meta"].get("date")}
                    self.carried.add(name)
            self.data["meta"]["previous_meta"] = previous["meta"]

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"status": "running"})

    def finish(self, name: str, status: str, **fields) -> None:
        section = self.section(name)
        section.update(fields)
        section["status"] = status
        self.write()
        detail = fields.get("reason") or fields.get("error", "")
        print(f"[plan] {name}: {status}" + (f" -- {detail}" if detail else ""), flush=True)

    def emit(self, name: str, key: str, figures: dict) -> None:
        """One line of figures inside a section, kept and printed as it comes."""
        self.section(name)[key] = figures
        print(f"[{name}] {key}: {one_line(figures)}", flush=True)

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out, json.dumps(self.data, indent=2, default=str))
        atomic_write(self.summary_path, self.summary())

    def summary(self) -> str:
        meta = self.data["meta"]
        lines = [f"gpu_check {meta.get('date')} on {meta.get('device_name')} ({meta.get('versions', {})})",
                 f"budget {meta.get('budget_s')} s, elapsed {meta.get('elapsed_s', 0):.0f} s"]
        for name, section in self.data["sections"].items():
            status = section.get("status")
            note = section.get("reason") or section.get("error", "")
            carried = " (carried over)" if name in self.carried else ""
            lines.append(f"{name}: {status}{carried}" + (f" -- {note}" if note else ""))
            lines += [f"  {key}: {one_line(value)}" for key, value in section.items()
                      if isinstance(value, dict) and one_line(value)]
        return "\n".join(lines) + "\n"


def one_line(figures: dict) -> str:
    """The plain figures of a dict, 4 significant digits (nested ones, like a run's history, stay in the JSON)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
                     if not isinstance(v, (dict, list)))


def atomic_write(path: Path, text: str) -> None:
    """A reader (or the end of a command at its time limit) never finds half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_previous(path) -> dict:
    """A previous run's JSON, for `--skip-done`; a clear error when it is not one."""
    path = Path(path)
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"--skip-done {path}: cannot read a gpu_check JSON there ({error}); pass the gpu_check.json "
                         "that an earlier run wrote") from error
    if not isinstance(previous, dict) or "sections" not in previous or "meta" not in previous:
        raise SystemExit(f"--skip-done {path}: not a gpu_check JSON (no 'meta' and 'sections'); pass the "
                         "gpu_check.json that an earlier run wrote")
    return previous
