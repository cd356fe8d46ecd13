"""The GPU day proven on the CPU: the planner's arithmetic on a fake clock, then `benchmarks/gpu_pack.py` packs and
`gpu_check.py --dry-run` runs from the pack in a fresh virtual environment that sees only what the device image has.

The fresh environment gets the distributions the device image lists (gpu_pack.IMAGE_PACKAGES), linked from .venv
(torch among them), and nothing else: no cyclr, no fastprogress. Everything else comes from the pack, installed as
the device's `run` command installs it (`pip install --no-index --no-deps --target`). Its figures mean nothing; what
is checked is that the packed check runs, plans within its budget, reports what it skipped and why, and that a
second run with `--skip-done` runs only what the first did not finish.

The pack persists in .gpu-pack-test/ (ignored) and the decoded CIFAR-10 cache under ~/.cache/cyclr/gpu-pack-test, so
the network (pip's registry, for the missing wheels) is needed on the first run only."""

import importlib.metadata as md
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_budget import Budget, Report, epochs_that_fit, load_previous, rounds_that_fit  # noqa: E402
from gpu_pack import IMAGE_PACKAGES, canonical  # noqa: E402

SPEED_OPTIONS = ("plain_fp32", "cyclr_fp32", "bf16", "channels_last", "compile", "all_three")
BLOG_CALLS = ("exp1_one_cycle", "exp2_higher_lr_shorter_cycle", "exp3_constant_momentum")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cyclr" / "gpu-pack-test"


def positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


# ---------------------------------------------------------------- the planner, on a fake clock


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_budget_counts_down_from_its_start_and_refuses_a_bad_one():
    clock = FakeClock()
    budget = Budget(60, clock=clock)
    clock.now += 25
    assert budget.elapsed() == 25 and budget.left() == 35
    with pytest.raises(ValueError, match="--budget-s must be a positive number of seconds, got 0"):
        Budget(0)


def test_rounds_and_epochs_are_planned_from_the_measured_first_epoch():
    assert rounds_that_fit(wanted=2, round_s=10.0, left_s=25.0) == 2
    assert rounds_that_fit(wanted=2, round_s=10.0, left_s=15.0) == 1
    assert rounds_that_fit(wanted=2, round_s=10.0, left_s=9.0) == 0
    full = {"exp1": 95, "exp2": 50, "exp3": 95}
    assert epochs_that_fit(full, epoch_s=2.0, left_s=200.0) == (full, 1.0)  # 190 s: the full length
    epochs, scale = epochs_that_fit(full, epoch_s=2.0, left_s=95.0)  # half the time: every run at half its length
    assert scale == 0.5 and epochs == {"exp1": 47, "exp2": 25, "exp3": 47}
    epochs, _ = epochs_that_fit(full, epoch_s=2.0, left_s=2.5)  # one epoch of the longest: at least one of each
    assert epochs == {"exp1": 1, "exp2": 1, "exp3": 1}
    epochs, _ = epochs_that_fit(full, epoch_s=2.0, left_s=1.0)  # not even one
    assert epochs == {"exp1": 0, "exp2": 0, "exp3": 0}


def test_skip_done_carries_finished_sections_only(tmp_path):
    previous = {"meta": {"date": "2026-12-04 08:00:00"}, "sections": {
        "blog": {"status": "scaled", "scale": 0.5}, "epochs": {"status": "done"},
        "speed_options": {"status": "skipped", "reason": "needs at least 120 s"}, "fp16": {"status": "failed"}}}
    (tmp_path / "previous.json").write_text(json.dumps(previous))
    report = Report(tmp_path / "gpu_check.json", {"date": "later"}, load_previous(tmp_path / "previous.json"))
    assert report.carried == {"blog", "epochs"}
    assert report.data["sections"]["blog"] == {"status": "scaled", "scale": 0.5, "carried_from": "2026-12-04 08:00:00"}
    report.finish("speed_options", "skipped", reason="needs at least 120 s to measure its first epoch; 3 s left")
    written = json.loads((tmp_path / "gpu_check.json").read_text())  # written at every finish
    assert written["sections"]["speed_options"]["status"] == "skipped"
    assert "speed_options: skipped -- needs at least 120 s" in (tmp_path / "gpu_check.txt").read_text()
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a gpu_check JSON"):
        load_previous(tmp_path / "other.json")


def test_the_averaging_projection_allows_for_the_evaluation_and_swa_s_compilation():
    from gpu_averaging import EVAL_PASSES, projection

    def ready(compile_options, fallback=None):
        return {"compile": compile_options, "compile_fallback": fallback, "compile_epoch_s": 60.0, "epoch_s": 4.0,
                "predict_s": 0.5}

    runs = ("one_cycle", "sgdr", "swa_constant", "swa_cyclic")
    assert EVAL_PASSES == {"one_cycle": 2, "sgdr": 6, "swa_constant": 3, "swa_cyclic": 3}
    # Compiled: SWA's batch-norm pass (an epoch, 4.2 s with the 5% margin) may compile once more (60 - 4 s).
    epoch_s, eval_s = projection({name: ready({}) for name in runs}, {"concurrent_safety": 1.05})
    assert epoch_s == pytest.approx(4.2) and eval_s == pytest.approx(3 * 0.5 + 4.2 + 56)
    # Eager, or compiled then fallen back to eager: no compilation to allow for; SGDR's six passes are then the most.
    for options, fallback in ((None, None), ("eager (fallback)", "RuntimeError: ...")):
        _, eval_s = projection({name: ready(options, fallback) for name in runs}, {"concurrent_safety": 1.05})
        assert eval_s == pytest.approx(max(6 * 0.5, 3 * 0.5 + 4.2))


# ---------------------------------------------------------------- pack, fresh environment, dry run


def image_site(target: Path) -> Path:
    """A folder of links to the files of .venv's distributions that the device image has too (torch, numpy, pip...)."""
    image = {canonical(n) for n in IMAGE_PACKAGES}
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    for dist in md.distributions(path=[str(site)]):
        if canonical(dist.metadata["Name"]) not in image:
            continue
        for top in {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            if (site / top).exists() and not (target / top).exists() and not top.endswith(".pth"):
                (target / top).symlink_to(site / top)
    return target


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The pack, the fresh environment with the pack installed, and the two dry runs' reports and outputs."""
    pack_dir = ROOT / ".gpu-pack-test"  # inside the tree, as on the device; ignored (.gitignore)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_pack.py"), "--pack-dir", str(pack_dir)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    pack_output = done.stdout
    tmp = tmp_path_factory.mktemp("gpu_day")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=120)
    python = str(tmp / "venv" / "bin" / "python")
    fresh_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    (Path(fresh_site) / "device_image.pth").write_text(str(image_site(tmp / "image")) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CYCLR_DATA")}
    before = subprocess.run([python, "-c", "import fastprogress"], capture_output=True, text=True, env=env)
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--no-cache-dir", "--upgrade", "--target", str(tmp / "site"),
                              *map(str, sorted((pack_dir / "wheels").glob("*.whl")))],
                             capture_output=True, text=True, env=env, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    env.update(PYTHONPATH=str(tmp / "site"), CYCLR_DATA=str(pack_dir / "data"), XDG_CACHE_HOME=str(CACHE),
               PYTHONUNBUFFERED="1")
    # Decoded once (cached across test runs) outside the budgets: on the device the decode is inside the budget.
    subprocess.run([python, "-c", "from cyclr.data.cifar10 import load_cifar10; load_cifar10(download=False)"],
                   check=True, env=env, timeout=300)

    def dry_run(name, *extra):
        out = tmp / name / "gpu_check.json"
        done = subprocess.run([python, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out), *extra],
                              capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads(out.read_text()), done.stdout

    first = dry_run("first", "--budget-s", "60")
    second = dry_run("second", "--budget-s", "300", "--skip-done", str(tmp / "first" / "gpu_check.json"))
    return {"pack_output": pack_output, "pack_dir": pack_dir, "before": before, "site": tmp / "site",
            "first": first, "second": second, "second_dir": tmp / "second"}


def test_the_pack_prints_its_size_and_the_run_call(packed):
    manifest = json.loads((packed["pack_dir"] / "manifest.json").read_text())
    wheels = " ".join(manifest["wheels"])
    assert "fastprogress-" in wheels and "cyclr-" in wheels and "torch-" not in wheels  # the image has torch
    assert manifest["data"] == "data/cifar10-jpg.tar.gz" and "fashion" not in json.dumps(manifest).lower()
    assert manifest["travels_bytes"] == manifest["tree_bytes"] + manifest["pack_bytes"] < 64 * 2**20
    assert "MiB of the 64 MiB limit" in packed["pack_output"]
    call = manifest["run"]
    assert json.dumps(call, indent=2) in packed["pack_output"]
    assert len(call["command"]) < 2000 and call["carry"] == [".gpu-pack-test"] and call["timeout_s"] == 405
    assert call["command"].startswith("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
                                      "--upgrade --target /tmp/site .gpu-pack-test/wheels/*.whl && export "
                                      "PYTHONPATH=/tmp/site")


def test_the_fresh_environment_lacks_fastprogress_until_the_pack_installs_it(packed):
    assert packed["before"].returncode != 0 and "No module named 'fastprogress'" in packed["before"].stderr
    meta = packed["first"][0]["meta"]
    assert meta["cyclr_from"].startswith(str(packed["site"]))  # the packed wheel, not .venv's editable install
    assert meta["dry_run"] is True and meta["device_name"] == "cpu"
    assert {"torch", "cuda", "cudnn", "python"} <= set(meta["versions"])
    assert {"float32_matmul_precision", "cudnn_allow_tf32"} <= set(meta["precision"])


def test_the_planner_skips_what_does_not_fit_and_says_why(packed):
    report, stdout = packed["first"]
    sections = report["sections"]
    assert list(sections) == ["blog", "epochs", "speed_options", "fp16", "ddp", "averaging"]
    assert sections["ddp"]["status"] == "skipped"  # its dry-run floor (100 s) is over the whole budget (60 s)
    assert "[plan] ddp: skipped -- needs at least 100 s to measure its first epoch" in stdout
    assert sections["averaging"]["status"] == "skipped"  # its floor (60 s): less than that is left at its turn
    assert "[plan] averaging: skipped -- needs at least 60 s to measure its first epoch" in stdout
    for name, section in sections.items():
        assert section["status"] in ("done", "scaled", "skipped"), (name, section)
        if section["status"] == "skipped":
            assert f"[plan] {name}: skipped -- " in stdout and section["reason"]
    assert report["meta"]["elapsed_s"] < 60 + 10  # the budget, give or take the last section's end


def test_the_blog_ran_three_concurrent_runs_as_planned(packed):
    blog = packed["first"][0]["sections"]["blog"]
    assert blog["status"] == "done", blog
    assert blog["concurrent_processes"] == 3 and blog["full_epochs"] == {
        "exp1_one_cycle": 3, "exp2_higher_lr_shorter_cycle": 2, "exp3_constant_momentum": 3}  # 95, 50, 95 x 0.03
    assert blog["planned_epochs"] == blog["full_epochs"] and blog["scale"] == 1.0
    assert positive_finite(blog["concurrent_epoch_s"])
    for name in BLOG_CALLS:
        run = blog[name]
        assert run["epochs"] == blog["planned_epochs"][name] == len(run["history"])
        assert 0 <= run["test_accuracy"] <= 1 and positive_finite(run["fit_s"])
        assert blog["calibration"][name]["compile_fallback"] is None


def test_sections_that_ran_have_sane_figures(packed):
    sections = packed["first"][0]["sections"]
    if sections["epochs"]["status"] == "done":
        for name in ("mlp_cifar10", "resnet8_cifar10"):
            figures = sections["epochs"][name]
            assert positive_finite(figures["plain_s"]) and positive_finite(figures["cyclr_s"])
            assert figures["rounds"] == figures["rounds_asked"] == 1
    if sections["speed_options"]["status"] == "done":
        for name in SPEED_OPTIONS:
            assert positive_finite(sections["speed_options"][name]["speedup_vs_plain_fp32"])
        assert sections["speed_options"]["plain_fp32"]["speedup_vs_plain_fp32"] == 1.0
        assert sections["speed_options"]["compile_options"] == {"backend": "eager"}
    if sections["fp16"]["status"] == "done":
        fp16 = sections["fp16"]["resnet_cifar10"]
        assert fp16["steps_taken_last_epoch"] <= fp16["batches_per_epoch"]
        assert positive_finite(fp16["s_per_step_taken"]) and positive_finite(fp16["final_scale"])


def test_skip_done_reruns_only_what_did_not_finish(packed):
    first, (report, stdout) = packed["first"][0], packed["second"]
    finished = [n for n, s in first["sections"].items() if s["status"] in ("done", "scaled")]
    assert "blog" in finished
    for name in finished:
        assert f"[plan] {name}: finished in " in stdout
        assert report["sections"][name]["carried_from"] == first["meta"]["date"]
    ddp = report["sections"]["ddp"]
    assert ddp["status"] == "done", ddp
    assert ddp["mlp_cifar10"]["backend"] == "gloo" and ddp["mlp_cifar10"]["world_size"] == 2
    assert report["meta"]["previous_meta"]["date"] == first["meta"]["date"]


AVERAGING_VARIANTS = ("one_cycle", "one_cycle_ema", "sgdr", "snapshot_best_single_m3", "snapshot_m3",
                      "snapshot_best_single_m5", "snapshot_m5", "swa_constant_last", "swa_constant", "swa_cyclic_last",
                      "swa_cyclic")


def test_the_averaging_runs_trained_concurrently_and_were_scored(packed):
    """The second run's averaging section: four trainings of the same planned length side by side, every variant
    scored on the whole (dry-run) test set, the papers' claims evaluated on those scores."""
    report, stdout = packed["second"]
    averaging = report["sections"]["averaging"]
    assert averaging["status"] == "done", averaging
    assert averaging["concurrent_processes"] == 4 and averaging["trainings"] == [
        "one_cycle", "sgdr", "swa_constant", "swa_cyclic"]
    assert averaging["full_epochs"] == averaging["planned_epochs"] == 3 and averaging["scale"] == 1.0
    assert positive_finite(averaging["concurrent_epoch_s"]) and positive_finite(averaging["evaluation_s"])
    assert "[plan] averaging: concurrent epoch " in stdout and "3 epochs each" in stdout
    for training in averaging["trainings"]:
        run = averaging[f"run_{training}"]
        assert run["epochs"] == 3 == len(run["history"]) and positive_finite(run["fit_s"])
        assert averaging["calibration"][training]["steps_per_epoch"] == 6  # 192 images, batch 32
    assert averaging["run_sgdr"]["ens_n"] == 5  # one snapshot at the end of each of SGDR's 5 cycles
    assert averaging["run_one_cycle"]["ema_n"] == 18  # one EMA update per step: 3 epochs of 6
    assert averaging["run_swa_constant"]["swa_n"] == 4  # every step from 75% of the 18 steps on (step 14)
    assert averaging["run_swa_cyclic"]["swa_n"] >= 1
    for variant in AVERAGING_VARIANTS:
        figures = averaging[variant]
        assert 0 <= figures["test_acc"] <= 1 and positive_finite(figures["test_loss"]), (variant, figures)
        assert 0 <= figures["ece"] <= 1 and figures["train_seconds"] == averaging[f"run_{figures['training']}"]["fit_s"]
        assert f"[averaging] {variant}: training={figures['training']}, test_acc=" in stdout
    assert averaging["snapshot_m3"]["members"] == 3 and averaging["snapshot_m5"]["members"] == 5
    # The run's last weights are the SGDR variant itself; the best of the last 3 snapshots is at least as good.
    assert averaging["snapshot_best_single_m3"]["test_acc"] >= averaging["sgdr"]["test_acc"]
    claims = [figures for key, figures in averaging.items() if key.startswith("claim_")]
    assert len(claims) >= 7 and claims[0]["claim"].startswith("SWA beats conventional training of the same budget")
    assert claims[0]["measured"].startswith("swa_constant - one_cycle: ") and "in 1/1 seeds" in claims[0]["measured"]
    assert all(c["holds"] in ("yes", "no", "unclear") for c in claims)  # every claim measured, none n/a
    assert "averaging: done" in (packed["second_dir"] / "gpu_check.txt").read_text()
