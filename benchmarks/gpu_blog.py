"""The GPU day's first section: the blog's three `fit_one_cycle` calls verbatim (ResNet-56 / CIFAR-10, 95, 50 and 95
epochs, batch 512, SGD, flips and padding-4 crops), run CONCURRENTLY as three processes on the one GPU (a ResNet-56
leaves most of an H200 idle), with the data and its augmentation resident on the device, bf16 autocast,
channels_last and torch.compile.

The three runs share the GPU as gpu_concurrent.py describes: each compiles and times a concurrent epoch, the parent
projects the longest run (95 epochs) from it and plans the full lengths if they fit the time left, else all three
scaled by the same factor (same one-cycle shape, fewer epochs; said in the JSON), and each then runs the blog's call
with the planned epochs.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # experiments/
import gpu_concurrent as concurrent  # noqa: E402
from gpu_budget import epochs_that_fit  # noqa: E402

from experiments.blog import BLOG_CALLS, scaled_epochs  # noqa: E402


def worker(call_name: str, folder: Path) -> None:
    """One blog run in a process of its own (gpu_concurrent.py's steps): the blog's call with the planned epochs."""
    call = next(c for c in BLOG_CALLS if c.name == call_name)

    def train(learn, epochs: int, progress) -> None:
        learn.fit_one_cycle(**call.fit_kwargs(epochs), cbs=[progress])

    concurrent.run_worker(folder, call_name, [c.name for c in BLOG_CALLS], "cifar_train", call.max_lr / call.div_factor,
                          train)


def full_lengths(size: dict) -> dict[str, int]:
    """The blog's epochs (95, 50, 95), or on the dry run the same scaled down (`blog_length_scale`)."""
    return {c.name: scaled_epochs(c.cyc_len, size["blog_length_scale"]) for c in BLOG_CALLS}


def run_blog(ctx) -> None:
    """The section: start the workers, plan from their concurrent epoch, follow them until they end or the budget
    does; every figure goes to `ctx.report` under 'blog'."""
    size, report, budget = ctx.size, ctx.report, ctx.budget
    full = full_lengths(size)
    section = report.section("blog")
    section.update({"concurrent_processes": len(BLOG_CALLS), "full_epochs": full,
                    "setup": f"resnet{size['resnet_depth']} / CIFAR-10 on {ctx.device}, batch {size['resnet_bs']}, "
                             "SGD, bf16 autocast + channels_last + compile, data and augmentation on the device"})
    with concurrent.Workers(ctx, "blog", Path(__file__), full) as workers:
        ready = workers.wait_ready()
        if ready is None:
            return
        epoch_s = max(r["epoch_s"] for r in ready.values())
        left = budget.left() - size["concurrent_reserve_s"]
        epochs, scale = epochs_that_fit(full, epoch_s * size["concurrent_safety"], left)
        projected_full_s = max(full.values()) * epoch_s * size["concurrent_safety"]
        section.update({"calibration": ready, "concurrent_epoch_s": epoch_s,
                        "projected_full_length_s": projected_full_s, "left_at_plan_s": left, "planned_epochs": epochs,
                        "scale": scale})
        workers.plan(epochs)
        if min(epochs.values()) < 1:
            report.finish("blog", "skipped", reason=f"a concurrent epoch takes {epoch_s:.1f} s: the full length needs "
                                                    f"{projected_full_s:.0f} s and not even one epoch of each run "
                                                    f"fits the {left:.0f} s left")
            return
        report.write()
        print(f"[plan] blog: concurrent epoch {epoch_s:.2f} s, full length {projected_full_s:.0f} s, {left:.0f} s "
              f"left: epochs {epochs}" + ("" if scale >= 1 else f" (scaled by {scale:.3f})"), flush=True)
        results, wall_s = workers.follow()
    for name, result in results.items():
        if result is None:
            continue
        call = next(c for c in BLOG_CALLS if c.name == name)
        last = result["rows"][-1]
        report.emit("blog", name, {"epochs": result["epochs"], "fit_s": result["fit_s"],
                                   "test_accuracy": last["accuracy"], "valid_loss": last["valid_loss"],
                                   "train_loss": last["train_loss"], "study_result": call.source_result,
                                   "history": concurrent.history(result["rows"])})
    section["wall_s_all_three"] = wall_s
    workers.finish(results, scale, f"the full length (95 epochs at {epoch_s:.1f} s a concurrent epoch, "
                                   f"{projected_full_s:.0f} s) did not fit the {left:.0f} s left: every run scaled by "
                                   f"{scale:.3f}, the one-cycle shape kept")


if __name__ == "__main__":
    concurrent.worker_main(worker, [c.name for c in BLOG_CALLS], "one blog worker (started by gpu_check.py)")
