"""`benchmarks/gpu_check.py --dry-run`: the GPU day's command runs end to end on the CPU and reports every section.

Its figures mean nothing at these sizes; what is checked is that every CUDA-path option (bf16, fp16 with the
scaler, channels_last, compile, torchrun) runs through the same code and lands in the JSON with sane values."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEED_OPTIONS = ("plain_fp32", "cyclr_fp32", "bf16", "channels_last", "compile", "all_three")
BLOG_CALLS = ("exp1_one_cycle", "exp2_higher_lr_shorter_cycle", "exp3_constant_momentum")


def positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--blog",
                           "--out", str(out)], capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_every_section_is_in_the_json_and_on_stdout(dry_run):
    report, stdout = dry_run
    assert set(report) == {"meta", "epochs", "speed_options", "fp16", "ddp", "blog"}
    assert report["meta"]["dry_run"] is True and report["meta"]["device"] == "cpu"
    assert set(report["epochs"]) == {"lenet_fashion_mnist", "resnet8_cifar10"}
    assert set(SPEED_OPTIONS) <= set(report["speed_options"])
    assert set(BLOG_CALLS) <= set(report["blog"])
    for line in ("[epochs] lenet_fashion_mnist:", "[speed_options] all_three:", "[fp16] resnet_cifar10:",
                 "[ddp] lenet_fashion_mnist:", "[blog] exp2_higher_lr_shorter_cycle:"):
        assert line in stdout
    assert json.loads(stdout[stdout.index("{\n"):stdout.rindex("}") + 1]) == report  # the same figures on stdout


def test_epoch_and_speed_figures_are_sane(dry_run):
    report, _ = dry_run
    for figures in report["epochs"].values():
        assert positive_finite(figures["plain_s"]) and positive_finite(figures["cyclr_s"])
        assert positive_finite(figures["cyclr_x_plain"])
        assert 0 <= figures["plain_accuracy"] <= 1 and 0 <= figures["cyclr_accuracy"] <= 1
    for name in SPEED_OPTIONS:
        figures = report["speed_options"][name]
        assert positive_finite(figures["epoch_s"]) and positive_finite(figures["speedup_vs_plain_fp32"])
    assert report["speed_options"]["plain_fp32"]["speedup_vs_plain_fp32"] == 1.0
    assert report["speed_options"]["compile_options"] == {"backend": "eager"}


def test_fp16_counts_only_the_steps_taken(dry_run):
    fp16 = dry_run[0]["fp16"]["resnet_cifar10"]
    assert fp16["epochs_run"] == 1  # so the last fit's steps and all skipped steps belong to the same epoch
    assert fp16["steps_taken_last_epoch"] + fp16["skipped_steps_all_epochs"] == fp16["batches_per_epoch"]
    assert positive_finite(fp16["s_per_step_taken"]) and positive_finite(fp16["final_scale"])


def test_torchrun_trained_with_two_processes(dry_run):
    ddp = dry_run[0]["ddp"]["lenet_fashion_mnist"]
    assert ddp["ok"] is True, ddp
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 2
    assert positive_finite(ddp["fit_s"]) and 0 <= ddp["accuracy"] <= 1


def test_blog_calls_ran_one_epoch_each_in_the_dry_run(dry_run):
    blog = dry_run[0]["blog"]
    for name in BLOG_CALLS:
        assert blog[name]["epochs"] == 1
        assert 0 <= blog[name]["test_accuracy"] <= 1 and positive_finite(blog[name]["fit_s"])
    assert blog["total_s"] == pytest.approx(sum(blog[name]["fit_s"] for name in BLOG_CALLS))
