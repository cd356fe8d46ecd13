"""The reproductions: the d2l chapter's schedules (as described and as the book really ran them), the blog's calls,
and `cyclr reproduce d2l|blog --quick` end to end on real Fashion-MNIST."""

import csv
import math

import pytest
import torch

import experiments as rep
from cyclr import lenet_bn, resnet56
from cyclr.learner.cli import main
from cyclr.learner.models import cifar_resnet

BOOK_EPOCHS = 30


def runs_by_name():
    return {r.name: r for r in rep.d2l_runs()}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----- the schedules against the book's own mechanics ---------------------------------------------------------------
def _lr_per_epoch_with_torch_scheduler(make_scheduler, initial_lr, steps_before_training=0):
    """What a torch epoch scheduler gives each of 30 epochs when stepped after every epoch, as the book's loop does,
    after `steps_before_training` extra steps (the book's plotting cell)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=initial_lr, momentum=0)
    scheduler = make_scheduler(opt)
    for _ in range(steps_before_training):
        opt.step()
        scheduler.step()
    lrs = []
    for _ in range(BOOK_EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def multi_step(opt):
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[15, 30], gamma=0.5)


def test_multi_factor_as_described_is_torch_multisteplr_stepped_once_per_epoch():
    expected = _lr_per_epoch_with_torch_scheduler(multi_step, 0.5)
    sched = runs_by_name()["multi_factor"].sched
    assert [sched(t) for t in range(BOOK_EPOCHS)] == pytest.approx(expected, rel=1e-12, abs=0)
    assert expected[14] == 0.5 and expected[15] == 0.25


def test_multi_factor_as_published_is_the_scheduler_stepped_30_times_before_training():
    # The book's plotting cell called scheduler.step() once per plotted epoch before `train` ran.
    expected = _lr_per_epoch_with_torch_scheduler(multi_step, 0.5, steps_before_training=BOOK_EPOCHS)
    sched = runs_by_name()["multi_factor_as_published"].sched
    assert expected == [0.125] * BOOK_EPOCHS
    assert [sched(t) for t in range(BOOK_EPOCHS)] == expected


def book_cosine(epoch, max_update=20, base_lr=0.3, final_lr=0.01, warmup_steps=0):
    """The book's CosineScheduler as a closed form: linear warm-up from 0, cosine to final_lr, then pinned."""
    if epoch < warmup_steps:
        return base_lr * epoch / warmup_steps
    if epoch > max_update:
        return final_lr
    progress = (epoch - warmup_steps) / (max_update - warmup_steps)
    return final_lr + (base_lr - final_lr) * (1 + math.cos(math.pi * progress)) / 2


def test_cosine_runs_follow_the_book_formula():
    runs = runs_by_name()
    for t in range(BOOK_EPOCHS):
        assert runs["cosine"].sched(t) == pytest.approx(book_cosine(t), abs=1e-12)
        assert runs["cosine_warmup"].sched(t) == pytest.approx(book_cosine(t, warmup_steps=5), abs=1e-12)
    assert runs["cosine_warmup"].sched(0) == 0.0 and runs["cosine_warmup"].sched(5) == pytest.approx(0.3)


def test_warmup_as_published_is_the_book_loop_setting_the_lr_after_each_epoch():
    # train(): the optimizer starts at lr=0.3; after epoch e it sets lr = scheduler(e) for the next epoch.
    lr, expected = 0.3, []
    for epoch in range(BOOK_EPOCHS):
        expected.append(lr)
        lr = book_cosine(epoch, warmup_steps=5)
    sched = runs_by_name()["cosine_warmup_as_published"].sched
    assert [sched(t) for t in range(BOOK_EPOCHS)] == pytest.approx(expected, abs=1e-12)
    assert expected[:3] == pytest.approx([0.3, 0.0, 0.06])


def test_square_root_and_constant():
    runs = runs_by_name()
    assert [runs["square_root"].sched(t) for t in (0, 3, 24)] == pytest.approx([0.1, 0.05, 0.02])
    assert {runs["constant"].sched(t) for t in range(BOOK_EPOCHS)} == {0.3}


def test_one_epoch_late_refuses_bad_arguments():
    with pytest.raises(TypeError, match="sched must be a schedule"):
        rep.OneEpochLate(lambda t: 0.1, 0.3)
    with pytest.raises(ValueError, match="initial_lr must be a number >= 0"):
        rep.OneEpochLate(runs_by_name()["constant"].sched, -1)


def test_every_book_figure_belongs_to_a_run():
    assert set(rep.D2L_BOOK) <= set(runs_by_name())


# ----- the blog's calls --------------------------------------------------------------------------------------------
def test_blog_calls_are_verbatim():
    exp1, exp2, exp3 = rep.BLOG_CALLS
    assert exp1.fit_kwargs() == {"cyc_len": 95, "max_lr": 0.08, "div_factor": 10, "pct_start": 0.1368,
                                 "moms": (0.95, 0.85), "wd": 1e-4}
    assert exp2.fit_kwargs() == {"cyc_len": 50, "max_lr": 0.8, "div_factor": 10, "pct_start": 0.5,
                                 "moms": (0.95, 0.85), "wd": 1e-4}
    assert exp3.fit_kwargs(19) == {**exp1.fit_kwargs(19), "moms": (0.9, 0.9)}


def test_scaled_epochs():
    assert [rep.scaled_epochs(c.cyc_len, 0.2) for c in rep.BLOG_CALLS] == [19, 10, 19]
    assert [rep.scaled_epochs(c.cyc_len, 0.05) for c in rep.BLOG_CALLS] == [5, 3, 5]
    assert rep.scaled_epochs(95, 1.0) == 95 and rep.scaled_epochs(5, 0.01) == 1
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="epoch_scale must be in"):
            rep.scaled_epochs(95, bad)


def _summary_entry(name, accuracy, valid_loss, train_loss=0.2, rises=2, min_valid=None, epochs=19):
    entry = {"run": name, "epochs": epochs}
    values = {"accuracy": accuracy, "valid_loss": valid_loss, "train_loss": train_loss,
              "gap": valid_loss - train_loss, "valid_loss_rises": rises, "largest_valid_rise": 0.1,
              "min_valid_loss": valid_loss if min_valid is None else min_valid}
    entry.update({f"{k}_mean": v for k, v in values.items()})
    return entry


def test_blog_claims_verdicts():
    names = [c.name for c in rep.BLOG_CALLS]
    summary = [_summary_entry(names[0], 0.90, 0.30, train_loss=0.28, min_valid=0.295),
               _summary_entry(names[1], 0.895, 0.31, epochs=10),
               _summary_entry(names[2], 0.903, 0.33)]
    verdicts = [c["holds"] for c in rep.blog_claims(summary)]
    assert verdicts == [True, True, True, True, True, True]

    summary = [_summary_entry(names[0], 0.90, 0.30, train_loss=0.1, rises=0, min_valid=0.2),
               _summary_entry(names[1], 0.85, math.nan, epochs=10),
               _summary_entry(names[2], 0.91, 0.29)]
    verdicts = [c["holds"] for c in rep.blog_claims(summary)]
    assert verdicts == [False, False, False, False, False, False]
    assert len(rep.blog_claims(summary[:1])) == 3  # only the claims about Exp. 1 can be judged


def test_blog_gpu_setup_needs_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        rep.run_blog(tmp_path, setup="gpu")
    with pytest.raises(ValueError, match="setup must be"):
        rep.run_blog(tmp_path, setup="tpu")
    with pytest.raises(ValueError, match="cpu_model must be one of"):
        rep.run_blog(tmp_path, cpu_model="vgg")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_bad_arguments_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown d2l run"):
        rep.run_d2l(tmp_path, runs=["constant", "cosin"])
    with pytest.raises(ValueError, match="seeds is empty"):
        rep.run_d2l(tmp_path, seeds=[])
    with pytest.raises(ValueError, match="seeds must be distinct"):
        rep.run_d2l(tmp_path, seeds=[1, 1])
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        rep.run_d2l(tmp_path, epochs=0)
    with pytest.raises(SystemExit, match="--epochs is an option of `cyclr reproduce d2l`"):
        main(["reproduce", "blog", "--epochs", "3", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


# ----- models --------------------------------------------------------------------------------------------------
def test_resnet56_shape_and_size():
    model = resnet56()
    # He et al. (2016) give 0.85M parameters for ResNet-56; ours has 1x1 projection shortcuts (their option B).
    assert sum(p.numel() for p in model.parameters()) == 855_770
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 55
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert lenet_bn()(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        cifar_resnet(52)


# ----- end to end on real Fashion-MNIST ---------------------------------------------------------------------------
@pytest.mark.slow
def test_reproduce_d2l_quick_writes_results_and_trains_the_schedules(tmp_path, capsys):
    out = tmp_path / "d2l"
    assert main(["reproduce", "d2l", "--quick", "--seeds", "0", "--out", str(out)]) == 0
    for name in ("d2l_runs.csv", "d2l_history.csv", "d2l_summary.csv", "d2l_table.md", "d2l_schedules.png",
                 "d2l_curves.png"):
        assert (out / name).stat().st_size > 0, name
    runs = read_csv(out / "d2l_runs.csv")
    assert [r["run"] for r in runs] == [r.name for r in rep.d2l_runs()]
    for r in runs:
        assert r["epochs"] == "3" and r["n_train"] == "1024" and r["n_valid"] == "512"
        for key in ("train_loss", "train_acc", "test_acc"):
            assert math.isfinite(float(r[key])), (r["run"], key)
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1

    # The lr each epoch trained at (read from the optimizer by the Recorder) is the schedule's value there.
    history = read_csv(out / "d2l_history.csv")
    expected = {"constant": [0.3] * 3, "square_root": [0.1, 0.1 / 2**0.5, 0.1 / 3**0.5], "multi_factor": [0.5] * 3,
                "cosine_warmup": [0.0, 0.06, 0.12], "multi_factor_as_published": [0.125] * 3,
                "cosine_warmup_as_published": [0.3, 0.0, 0.06]}
    for name, lrs in expected.items():
        recorded = [float(h["lr"]) for h in history if h["run"] == name]
        assert recorded == pytest.approx(lrs, abs=1e-12), name

    table = (out / "d2l_table.md").read_text()
    assert "QUICK SMOKE RUN" in table and "0.145 / 0.944 / 0.877" in table and "cosine_warmup_as_published" in table
    assert "d2l_table.md" in capsys.readouterr().out

    # Run again: every (run, seed) is already there, so nothing trains and no row is added.
    assert main(["reproduce", "d2l", "--quick", "--seeds", "0", "--out", str(out)]) == 0
    assert len(read_csv(out / "d2l_runs.csv")) == len(runs)
    assert capsys.readouterr().out.count("already in") == len(runs)
    # The folder holds one configuration: another one is refused before any training.
    with pytest.raises(ValueError, match="another configuration"):
        rep.run_d2l(out, seeds=[0], quick=True, n_train=2048)


@pytest.mark.slow
def test_reproduce_blog_quick_runs_the_three_calls(tmp_path):
    out = tmp_path / "blog"
    assert main(["reproduce", "blog", "--quick", "--seeds", "0", "--out", str(out)]) == 0
    for name in ("blog_runs.csv", "blog_history.csv", "blog_batches.csv", "blog_summary.csv", "blog_table.md",
                 "blog_runs.png"):
        assert (out / name).stat().st_size > 0, name
    runs = {r["run"]: r for r in read_csv(out / "blog_runs.csv")}
    assert list(runs) == [c.name for c in rep.BLOG_CALLS]
    for call in rep.BLOG_CALLS:
        r = runs[call.name]
        assert int(r["epochs"]) == rep.scaled_epochs(call.cyc_len, 0.05)
        assert r["setup"] == "cpu" and r["model"] == "lenet_bn"
        # one-cycle starts at max_lr / div_factor and never exceeds max_lr
        assert float(r["first_lr"]) == pytest.approx(call.max_lr / call.div_factor)
        assert call.max_lr * 0.95 <= float(r["peak_lr"]) <= call.max_lr
        assert math.isfinite(float(r["valid_loss"]))
    batches = read_csv(out / "blog_batches.csv")
    moms = {c.name: [float(b["mom"]) for b in batches if b["run"] == c.name] for c in rep.BLOG_CALLS}
    assert set(moms["exp3_constant_momentum"]) == {0.9}
    assert max(moms["exp1_one_cycle"]) == pytest.approx(0.95) and min(moms["exp1_one_cycle"]) < 0.86
    table = (out / "blog_table.md").read_text()
    assert "QUICK SMOKE RUN" in table and "| claim (blog) |" in table and "use_clr_beta=(10, 13.68" in table


# ----- the writers the reproductions share --------------------------------------------------------------------
def test_figures_and_whole_csvs_replace_a_planted_link_and_never_write_through_it(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.common import read_rows, save_figure, write_rows

    target = tmp_path / "private.txt"
    target.write_text("keep")
    for name in ("plot.png", "plot.svg", "rows.csv"):
        (tmp_path / name).symlink_to(target)
    save_figure(plt.figure(), tmp_path / "plot.png")
    save_figure(plt.figure(), tmp_path / "plot.svg")  # the format follows the suffix
    write_rows(tmp_path / "rows.csv", ["a", "b"], [{"a": 1, "b": "x,y"}])
    assert target.read_text() == "keep"
    assert not any((tmp_path / n).is_symlink() for n in ("plot.png", "plot.svg", "rows.csv"))
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in (tmp_path / "plot.svg").read_bytes()
    assert read_rows(tmp_path / "rows.csv") == [{"a": "1", "b": "x,y"}]
    assert not list(tmp_path.glob(".*cyclr-tmp"))  # no temporary file left behind
