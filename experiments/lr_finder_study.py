"""Does the LR finder find the rate a search would? The study behind `cyclr reproduce lr-finder`.

For each task (experiments/lr_finder_tasks.py) and optimizer (SGD with momentum, AdamW), at the task's epochs and
batch size (and, on one task, at two budgets and two batch sizes):

- the ground truth: final accuracy of `fit_one_cycle(epochs, max_lr)` over a log grid of max_lr half a decade apart,
  one fit per seed, the grid extended until it reaches two decades past the best rate on both sides (or, above it,
  a rate where every seed diverged);
- the finder: `lr_find()` on a fresh learner per seed, each suggestion (valley, steep, minimum, slide) trained at
  with that seed; and the weight-decay sweep `lr_find(wds=...)`, its best_wd trained at with its valley;
- Optuna: `tune_lr` (TPE and a MedianPruner, in `optuna.db`) for `optuna_trials` trials on seed 0 over the grid's
  starting range, and for 10 trials seeded from lr_find (a decade either side of its valley, the first trial at
  it); the best rate after k trials trained at with every seed;
- the cost of each: epochs and seconds.

Every fit is one row of `runs.csv`, appended as soon as it ends; every finder run one row of `finder.csv`; every
Optuna trial one row of `optuna_trials.csv`. A call that finds rows already there trains only what is missing, so
a long run that is cut short goes on where it stopped. Then experiments/lr_finder_report.py writes the summary
(`summary.csv`), the table (`lr_finder_table.md`) and the figures. A diverged fit (stopped at a NaN loss) is scored
at chance accuracy and flagged.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cyclr.callbacks.lr_suggest import SUGGESTION_NAMES

from .common import append_row, check_seeds, read_rows, round_sig, write_rows
from .lr_finder_tasks import OPTIMIZERS, TASKS, Task, make_learner

__all__ = ["run_lr_finder_study", "StudyConfig", "log_grid", "grid_extension", "RUN_FIELDS", "FINDER_FIELDS",
           "TRIAL_FIELDS", "WDS", "LR_STEP"]

LR_STEP = 10 ** 0.5  # the grid's step: half a decade
DECADES_PAST = 2  # the grid reaches this many decades past the best rate on each side
LOWEST_LR, HIGHEST_LR = 1e-8, 1e3  # the grid never extends past these
MAX_EXTENSIONS = 4
WDS = (0.1, 0.01, 0.001, 0.0)  # the weight-decay sweep
OPTUNA_TRIALS, OPTUNA_KS = 20, (5, 10, 20)
SEEDED_TRIALS = 10  # the search around lr_find's valley (a decade either side), the first trial at the valley

RUN_FIELDS = ["task", "opt", "epochs", "bs", "kind", "label", "seed", "lr", "wd", "accuracy", "raw_accuracy",
              "valid_loss", "diverged", "epochs_trained", "seconds"]
FINDER_FIELDS = ["task", "opt", "bs", "seed", "batches_per_epoch", "iterations", "seconds", "no_clear_descent",
                 *SUGGESTION_NAMES, "wd_sweep_curves", "wd_sweep_seconds", "best_wd", "best_wd_valley"]
TRIAL_FIELDS = ["task", "opt", "epochs", "bs", "search", "lr_find_seconds", "number", "state", "max_lr", "value",
                "diverged", "epochs_trained", "seconds"]


@dataclass(frozen=True)
class StudyConfig:
    """One grid: a task, an optimizer, a budget in epochs and a batch size."""

    task: str
    opt: str
    epochs: int
    bs: int

    def key(self) -> tuple:
        return (self.task, self.opt, str(self.epochs), str(self.bs))


def log_grid(lo: float, hi: float, step: float = LR_STEP) -> list[float]:
    """Rates from `lo` to `hi` (both included, rounded to the grid), `step` apart on a log scale: powers of
    `step`, so two grids share their points."""
    k_lo, k_hi = round(math.log(lo, step)), round(math.log(hi, step))
    return [round_sig(step ** k) for k in range(k_lo, k_hi + 1)]


def grid_extension(lrs: Sequence[float], scores: Sequence[float], all_diverged: Sequence[bool],
                   step: float = LR_STEP, decades: float = DECADES_PAST) -> list[float]:
    """The rates to add to a grid (`lrs` ascending, `scores` their mean accuracies) so that it reaches `decades`
    decades past its best rate on both sides: below, down to best / 10**decades; above, up to best * 10**decades,
    unless a rate above the best already diverged with every seed (every larger one would too)."""
    best = max(range(len(lrs)), key=lambda i: scores[i])
    span = round(decades * math.log(10, step))  # grid points in `decades` decades
    k = [round(math.log(lr, step)) for lr in lrs]
    new = [step ** j for j in range(k[best] - span, k[0])]
    if not any(all_diverged[best + 1:]):
        new += [step ** j for j in range(k[-1] + 1, k[best] + span + 1)]
    return [lr for lr in map(round_sig, new) if LOWEST_LR <= lr <= HIGHEST_LR]


class LRFinderStudy:
    """The runs of the study, appended to the CSVs in `out` as they finish; the rows already there are kept."""

    def __init__(self, out: Path, seeds: list[int], quick: bool, log: Callable[[str], None]):
        self.out, self.seeds, self.quick, self.log = out, seeds, quick, log
        self.runs_csv, self.finder_csv = out / "runs.csv", out / "finder.csv"
        self.trials_csv = out / "optuna_trials.csv"
        self.runs = {self._run_key(r): r for r in read_rows(self.runs_csv)}
        self.finders = {(r["task"], r["opt"], r["bs"], r["seed"]): r for r in read_rows(self.finder_csv)}

    @staticmethod
    def _run_key(row: dict) -> tuple:
        return (row["task"], row["opt"], str(row["epochs"]), str(row["bs"]), row["kind"], row["label"],
                str(row["seed"]), f"{float(row['lr']):.6g}", str(row["wd"]))

    # ----- one fit ------------------------------------------------------------------------------------------------
    def fit(self, cfg: StudyConfig, kind: str, label: str, lr: float, seed: int, wd: float | None = None) -> dict:
        row = {"task": cfg.task, "opt": cfg.opt, "epochs": cfg.epochs, "bs": cfg.bs, "kind": kind, "label": label,
               "seed": seed, "lr": round_sig(float(lr)), "wd": "" if wd is None else wd}
        key = self._run_key(row)
        if key in self.runs:
            return self.runs[key]
        task = TASKS[cfg.task]
        learn = make_learner(task, cfg.opt, seed, cfg.bs, self.quick)
        start = time.perf_counter()
        with _quiet():
            learn.fit_one_cycle(cfg.epochs, max_lr=float(lr), wd=wd)
        seconds = time.perf_counter() - start
        last = learn.recorder.epoch_rows[-1] if learn.recorder.epoch_rows else {}
        valid_loss, raw = float(last.get("valid_loss", math.nan)), float(last.get("accuracy", math.nan))
        diverged = learn.train_iter < learn.n_train_iters or not math.isfinite(valid_loss)
        row.update({"accuracy": task.chance if diverged else raw, "raw_accuracy": raw, "valid_loss": valid_loss,
                    "diverged": diverged, "epochs_trained": learn.train_iter / len(learn.dls.train),
                    "seconds": seconds})
        row = {k: round_sig(v) for k, v in row.items()}
        append_row(self.runs_csv, RUN_FIELDS, row)
        self.runs[key] = {k: str(v) for k, v in row.items()}
        self.log(f"{cfg.task} {cfg.opt} e{cfg.epochs} bs{cfg.bs} {kind} {label} lr {float(lr):.3g} seed {seed}: "
                 f"accuracy {row['accuracy']:.4f}{' (diverged)' if diverged else ''} ({seconds:.1f} s)")
        return self.runs[key]

    # ----- the ground truth ---------------------------------------------------------------------------------------
    def grid(self, cfg: StudyConfig, lrs: list[float]) -> list[float]:
        """Train the grid with every seed, extending it until it spans the best rate (see `grid_extension`)."""
        for _ in range(MAX_EXTENSIONS + 1):
            by_lr = {lr: [self.fit(cfg, "grid", "grid", lr, s) for s in self.seeds] for lr in lrs}
            scores = [sum(float(r["accuracy"]) for r in rows) / len(rows) for rows in by_lr.values()]
            all_diverged = [all(r["diverged"] == "True" for r in rows) for rows in by_lr.values()]
            new = [] if self.quick else grid_extension(lrs, scores, all_diverged)
            if not new:
                return lrs
            self.log(f"{cfg.task} {cfg.opt} e{cfg.epochs} bs{cfg.bs}: best rate near the grid's edge, adding "
                     f"{', '.join(f'{lr:.3g}' for lr in new)}")
            lrs = sorted(set(lrs) | set(new))
        return lrs

    # ----- the finder ---------------------------------------------------------------------------------------------
    def finder(self, cfg: StudyConfig, seed: int) -> dict:
        """lr_find and the weight-decay sweep on a fresh learner: what the finder sees depends on the batch size,
        never on the epochs, so one run serves every budget."""
        key = (cfg.task, cfg.opt, str(cfg.bs), str(seed))
        if key in self.finders:
            return self.finders[key]
        learn = make_learner(TASKS[cfg.task], cfg.opt, seed, cfg.bs, self.quick)
        start = time.perf_counter()
        with _quiet():
            result = learn.lr_find()  # its defaults, as tune_lr's seeded search runs it
        seconds = time.perf_counter() - start
        wds = WDS[1::2] if self.quick else WDS
        with _quiet():
            sweep = learn.lr_find(wds=wds)
        wd_seconds = time.perf_counter() - start - seconds
        row = {"task": cfg.task, "opt": cfg.opt, "bs": cfg.bs, "seed": seed,
               "batches_per_epoch": len(learn.dls.train), "iterations": len(result.lrs), "seconds": seconds,
               "no_clear_descent": any("no clear descent" in s.reason for s in result.suggestions.values()),
               **{name: result.suggestions[name].lr for name in SUGGESTION_NAMES},
               "wd_sweep_curves": len(wds), "wd_sweep_seconds": wd_seconds, "best_wd": sweep.best_wd,
               "best_wd_valley": sweep.best.suggestions["valley"].lr}
        row = {k: round_sig(v) for k, v in row.items()}
        append_row(self.finder_csv, FINDER_FIELDS, row)
        self.finders[key] = {k: str(v) for k, v in row.items()}
        self.log(f"{cfg.task} {cfg.opt} bs{cfg.bs} lr_find seed {seed}: "
                 + ", ".join(f"{n} {row[n]:.3g}" for n in SUGGESTION_NAMES) + f"; best_wd {row['best_wd']}")
        return self.finders[key]

    def suggestions(self, cfg: StudyConfig) -> None:
        for seed in self.seeds:
            found = self.finder(cfg, seed)
            for name in SUGGESTION_NAMES:
                self.fit(cfg, "suggestion", name, float(found[name]), seed)
            self.fit(cfg, "wd_sweep", "best_wd valley", float(found["best_wd_valley"]), seed,
                     wd=float(found["best_wd"]))

    # ----- Optuna -------------------------------------------------------------------------------------------------
    def optuna_search(self, cfg: StudyConfig, n_trials: int, ks: Sequence[int], seeded: bool = False) -> None:
        """`tune_lr` over the grid's starting range (blind), or around lr_find's valley (`seeded`), on seed 0; the
        best rate after each k trials trained at with every seed."""
        import optuna

        from cyclr import tune_lr

        search = "seeded" if seeded else "blind"
        storage, name = f"sqlite:///{(self.out / 'optuna.db').resolve()}", "-".join((*cfg.key(), search))
        try:
            done = len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            done = 0
        task = TASKS[cfg.task]
        if done < n_trials:
            with _quiet():
                tune_lr(lambda: make_learner(task, cfg.opt, self.seeds[0], cfg.bs, self.quick), n_trials - done,
                        cfg.epochs, storage=storage, study_name=name, monitor="accuracy", seed=0,
                        search=None if seeded else {"max_lr": task.grid[cfg.opt]}, seed_from_lr_find=seeded)
        loaded = optuna.load_study(study_name=name, storage=storage)
        trials = loaded.trials[:n_trials]
        rows = [{"task": cfg.task, "opt": cfg.opt, "epochs": cfg.epochs, "bs": cfg.bs, "search": search,
                 "lr_find_seconds": loaded.user_attrs.get("lr_find_seconds", 0.0), "number": t.number,
                 "state": t.state.name, "max_lr": t.params.get("max_lr"), "value": t.value,
                 "diverged": t.user_attrs.get("diverged"), "epochs_trained": t.user_attrs.get("epochs_trained"),
                 "seconds": t.user_attrs.get("seconds")} for t in trials]
        old = [r for r in read_rows(self.trials_csv)
               if (r["task"], r["opt"], r["epochs"], r["bs"], r["search"]) != (*cfg.key(), search)]
        write_rows(self.trials_csv, TRIAL_FIELDS, old + [{k: round_sig(v) for k, v in r.items()} for r in rows])
        for k in ks:
            complete = [t for t in trials[:k] if t.state == optuna.trial.TrialState.COMPLETE]
            if complete:
                best = max(complete, key=lambda t: t.value)
                for seed in self.seeds:
                    self.fit(cfg, "optuna", f"{search} k={k}", best.params["max_lr"], seed)


@contextlib.contextmanager
def _quiet():
    """The warnings a study expects by the hundred: diverged fits, curves without a clear descent, Optuna's logs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import optuna

            verbosity = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        except ImportError:
            optuna = None
        try:
            yield
        finally:
            if optuna is not None:
                optuna.logging.set_verbosity(verbosity)


def run_lr_finder_study(out: str | Path, tasks: Sequence[str] = tuple(TASKS), optimizers: Sequence[str] = ("sgd",
                        "adamw"), seeds: Sequence[int] = (0, 1, 2), quick: bool = False,
                        variation_task: str | None = "digits_mlp", optuna_trials: int | None = None,
                        log: Callable[[str], None] = print, command: str | None = None) -> dict:
    """Run the study (see the module docstring) and write its results to `out`; return the summary.

    `quick`: a smoke test in seconds: small subsets, one epoch (two in the variation), a grid of three rates two
    decades apart and never extended, 3 Optuna trials (2 seeded)."""
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; the tasks are {list(TASKS)}")
    for opt in optimizers:
        if opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {opt!r}; choose from {list(OPTIMIZERS)}")
    if variation_task is not None and variation_task not in tasks:
        raise ValueError(f"variation_task {variation_task!r} must be one of the tasks run ({list(tasks)}) or None")
    seeds = check_seeds(seeds)
    _check_packages(tasks)
    n_trials = optuna_trials or (3 if quick else OPTUNA_TRIALS)
    ks = sorted({min(k, n_trials) for k in ((2, 3) if quick else OPTUNA_KS)})
    seeded_trials = min(n_trials, 2 if quick else SEEDED_TRIALS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = LRFinderStudy(out, seeds, quick, log)
    for name in tasks:
        task = TASKS[name]
        for opt in optimizers:
            for cfg in _configs(task, opt, quick, with_variations=name == variation_task):
                study.grid(cfg, _start_grid(task, opt, quick))
                study.suggestions(cfg)
                if (cfg.epochs, cfg.bs) == _default(task, quick):
                    study.optuna_search(cfg, n_trials, ks)
                    study.optuna_search(cfg, seeded_trials, [k for k in ks if k <= seeded_trials], seeded=True)

    from .lr_finder_report import write_report

    return write_report(out, quick=quick, command=command)


def _check_packages(tasks: Sequence[str]) -> None:
    """The packages the study needs beyond cyclr's own, named before anything trains."""
    needed = [("optuna", "optuna", "the Optuna search")]
    if "digits_mlp" in tasks:
        needed.append(("sklearn", "scikit-learn", "the digits task's data"))
    for module, package, what in needed:
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"{what} needs the {package!r} package, which is not installed: pip install -e "
                              f"'.[dev]' (or pip install {package})")


def _default(task: Task, quick: bool) -> tuple[int, int]:
    return (1 if quick else task.epochs), task.bs


def _configs(task: Task, opt: str, quick: bool, with_variations: bool) -> list[StudyConfig]:
    epochs, bs = _default(task, quick)
    configs = [StudyConfig(task.name, opt, epochs, bs)]
    if with_variations:
        variations = ((2, bs),) if quick else task.variations
        configs += [StudyConfig(task.name, opt, e, b) for e, b in variations]
    return configs


def _start_grid(task: Task, opt: str, quick: bool) -> list[float]:
    lo, hi = task.grid[opt]
    return log_grid(lo, hi)[::4] if quick else log_grid(lo, hi)  # quick: three rates two decades apart
