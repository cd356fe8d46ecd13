"""Bad input across the public API: each call below must fail with an error that names what to change, before any
weight changes. The same cases generate the page docs/bad_input.md, which the README links to (run this test to
regenerate it; it fails when the committed page is out of date).

Each case is `(call as shown in the table, function of the environment, expected error type, regex the message must
match)`. The environment is a small learner with its data and a directory holding a good checkpoint and a truncated
one.
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import node_id
from torch import nn

from cyclr import (
    Callback,
    CheckpointError,
    Cos,
    CSVLogger,
    DataLoaders,
    EarlyStoppingCallback,
    GradientAccumulation,
    GradientClip,
    Learner,
    Lin,
    LRFinderCallback,
    MixedPrecision,
    OneCycleCallback,
    ParamScheduler,
    ReduceLROnPlateau,
    SaveModelCallback,
    SGDRCallback,
    cosine,
    fashion_mnist,
    multi_factor,
    one_cycle,
    sgd,
    sgdr,
    triangular,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_input.md"


class Env:
    """A 3-feature, 2-class problem: 12 training samples (3 batches of 4), 6 validation samples."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(18, 3, generator=g), torch.arange(18) % 2
        self.dls = DataLoaders.from_tensors(self.x[:12], self.y[:12], self.x[12:], self.y[12:], bs=4)
        self.ce = nn.CrossEntropyLoss()
        torch.manual_seed(0)
        self.learn = Learner(nn.Linear(3, 2), self.dls, self.ce, opt_func=sgd, lr=0.1, device="cpu", progress=False)
        self.checkpoint = tmp / "ckpt.pt"
        trainer = Learner(nn.Linear(3, 2), self.dls, self.ce, opt_func=sgd, lr=0.1, device="cpu", progress=False)
        trainer.fit(2, cbs=[SaveModelCallback(self.checkpoint, every_epoch=True)])
        data = self.checkpoint.read_bytes()
        self.truncated = tmp / "truncated.pt"
        self.truncated.write_bytes(data[: len(data) // 3])

    def learner(self, model=None, dls=None, loss_func=None, **kwargs):
        kwargs.setdefault("device", "cpu")
        kwargs.setdefault("opt_func", sgd)
        return Learner(model or nn.Linear(3, 2), dls or self.dls, loss_func or self.ce, progress=False, **kwargs)


@dataclass
class Case:
    call: str
    run: object  # function of an Env
    error: type
    match: str


def regression_dls(env):
    return DataLoaders.from_tensors(env.x[:12], env.x[:12, :1], bs=4)


class NamedMetricTypo(Callback):
    def after_batc(self, learn):
        pass


CASES = [
    # ----- Learner(...)
    Case("Learner('lenet', dls, loss_func)", lambda e: Learner("lenet", e.dls, e.ce), TypeError,
         "model must be a torch.nn.Module"),
    Case("Learner(model, (x, y), loss_func)", lambda e: Learner(nn.Linear(3, 2), (e.x, e.y), e.ce), TypeError,
         r"dls must be a cyclr.DataLoaders.*DataLoaders.from_tensors"),
    Case("Learner(model, dls, 'cross_entropy')", lambda e: Learner(nn.Linear(3, 2), e.dls, "cross_entropy"),
         TypeError, "loss_func must be callable"),
    Case("Learner(..., opt_func='sgd')", lambda e: e.learner(opt_func="sgd"), TypeError,
         "opt_func must be callable"),
    Case("Learner(..., lr=0)", lambda e: e.learner(lr=0), ValueError, r"lr must be > 0, got 0"),
    Case("Learner(..., lr=float('nan'))", lambda e: e.learner(lr=math.nan), ValueError, "lr must be finite"),
    Case("Learner(..., lr='1e-3')", lambda e: e.learner(lr="1e-3"), TypeError, "lr must be a real number, got str"),
    Case("Learner(..., wd=-0.1)", lambda e: e.learner(wd=-0.1), ValueError, r"wd must be >= 0"),
    Case("Learner(..., metrics=[0.5])", lambda e: e.learner(metrics=[0.5]), TypeError,
         r"each metric must be callable as metric\(pred, target\)"),
    Case("Learner(..., cbs=[EarlyStoppingCallback])", lambda e: e.learner(cbs=[EarlyStoppingCallback]), TypeError,
         r"callbacks must be instances of cyclr.Callback.*MyCallback\(\)"),
    Case("Learner(..., cbs=[<callback with after_batc>])", lambda e: e.learner(cbs=[NamedMetricTypo()]), ValueError,
         "defines 'after_batc', which is not an event. Did you mean 'after_batch'"),
    Case("Learner(..., device='gpu')", lambda e: e.learner(device="gpu"), ValueError,
         "device must be a torch.device or a string like 'cpu', 'cuda'"),
    Case("Learner(..., opt_func=lambda params, lr: None).fit(1)",
         lambda e: e.learner(opt_func=lambda params, lr: None).fit(1), TypeError,
         r"opt_func must return a torch.optim.Optimizer, got NoneType"),
    # ----- fit(...) and the data, model and loss it checks before the first step
    Case("learn.fit(0)", lambda e: e.learn.fit(0), ValueError, r"n_epoch must be an int >= 1, got 0"),
    Case("learn.fit(2.5)", lambda e: e.learn.fit(2.5), TypeError, r"n_epoch must be an int >= 1, got float \(2.5\)"),
    Case("learn.fit(1, lr=-0.1)", lambda e: e.learn.fit(1, lr=-0.1), ValueError, r"lr must be > 0"),
    Case("learn.fit(1, wd=math.inf)", lambda e: e.learn.fit(1, wd=math.inf), ValueError,
         r"wd must be finite, got inf"),
    Case("learn.fit(1, cbs=[GradientClip])", lambda e: e.learn.fit(1, cbs=[GradientClip]), TypeError,
         "callbacks must be instances of cyclr.Callback"),
    Case("Learner(nn.Linear(5, 2), dls, ...).fit(1)  # 3 features", lambda e: e.learner(nn.Linear(5, 2)).fit(1),
         ValueError, r"model failed on a training batch of shape \(4, 3\).*input layer"),
    Case("Learner(nn.Linear(3, 1), dls, CrossEntropyLoss()).fit(1)  # labels 0..1",
         lambda e: e.learner(nn.Linear(3, 1)).fit(1), ValueError,
         r"labels range over \[0, 1\] but the model outputs 1 classes.*give the last layer 2 outputs"),
    Case("Learner(nn.Linear(3, 2), dls_regression, MSELoss()).fit(1)  # targets (n, 1)",
         lambda e: e.learner(nn.Linear(3, 2), regression_dls(e), nn.MSELoss()).fit(1), ValueError,
         r"model output of shape \(4, 2\) and targets of shape \(4, 1\).*output the targets' shape"),
    Case("Learner(..., CrossEntropyLoss(reduction='none')).fit(1)",
         lambda e: e.learner(loss_func=nn.CrossEntropyLoss(reduction="none")).fit(1), ValueError,
         r"loss_func must return a scalar tensor, got \(4,\).*reduction='mean'"),
    Case("Learner(..., loss_func=lambda p, y: 0.5).fit(1)",
         lambda e: e.learner(loss_func=lambda p, y: 0.5).fit(1), ValueError,
         r"loss_func must return a scalar tensor, got float"),
    Case("Learner(model, DataLoaders([]), ...).fit(1)", lambda e: e.learner(dls=DataLoaders([])).fit(1),
         ValueError, "the training loader is empty"),
    Case("Learner(model, DataLoaders(train, valid=[]), ...).fit(1)",
         lambda e: e.learner(dls=DataLoaders(e.dls.train, [])).fit(1), ValueError,
         "the validation loader is empty"),
    Case("learn.fit(1, resume=3)", lambda e: e.learn.fit(1, resume=3), TypeError,
         r"path must be a file path \(str or os.PathLike\), got int"),
    Case("learn.fit(2, resume='missing.pt')", lambda e: e.learn.fit(2, resume=e.tmp / "missing.pt"),
         FileNotFoundError, "no checkpoint file at"),
    Case("learn.fit(2, resume='truncated.pt')", lambda e: e.learn.fit(2, resume=e.truncated), CheckpointError,
         "truncated.pt cannot be read: truncated or corrupt"),
    Case("learn.fit(3, resume='ckpt.pt')  # saved by a fit(2)", lambda e: e.learn.fit(3, resume=e.checkpoint),
         ValueError, r"planned for 2 epochs of 3 batches \(6 batches\), but this fit plans 3 epochs of 3 batches"),
    Case("learn.fit(2, resume='ckpt.pt')  # saved at its end", lambda e: e.learn.fit(2, resume=e.checkpoint),
         ValueError, "nothing is left to train in a fit of 2 epochs"),
    # ----- save / load
    Case("learn.load('missing.pt')", lambda e: e.learn.load(e.tmp / "missing.pt"), FileNotFoundError,
         "no checkpoint file at"),
    Case("learn.load('truncated.pt')", lambda e: e.learn.load(e.truncated), CheckpointError,
         "cannot be read: truncated or corrupt"),
    Case("Learner(nn.Linear(3, 4), ...).load('ckpt.pt')", lambda e: e.learner(nn.Linear(3, 4)).load(e.checkpoint),
         CheckpointError, r"model: .*weight \(2, 3\) in the checkpoint vs \(4, 3\) in the model"),
    Case("Learner(..., opt_func=torch.optim.Adam).load('ckpt.pt')",
         lambda e: e.learner(opt_func=torch.optim.Adam).load(e.checkpoint), CheckpointError,
         "optimizer: the checkpoint holds the state of SGD but this learner's optimizer is Adam"),
    Case("learn.save('x.pt', at='middle')", lambda e: e.learn.save(e.tmp / "x.pt", at="middle"), ValueError,
         "at must be one of"),
    Case("learn.save('')", lambda e: e.learn.save(""), ValueError, r"path is empty \(''\): pass a file name"),
    # ----- fit_one_cycle, fit_sgdr, lr_find
    Case("learn.fit_one_cycle(1, max_lr=-1)", lambda e: e.learn.fit_one_cycle(1, max_lr=-1), ValueError,
         "max_lr must be > 0"),
    Case("learn.fit_one_cycle(1, pct_start=1.5)", lambda e: e.learn.fit_one_cycle(1, pct_start=1.5), ValueError,
         r"pct_start must be in \(0, 1\)"),
    Case("learn.fit_one_cycle(1, moms=(0.95,))", lambda e: e.learn.fit_one_cycle(1, moms=(0.95,)), ValueError,
         "moms must be a 2-tuple"),
    Case("learn.fit_one_cycle(1, moms=(0.95, 1.2))", lambda e: e.learn.fit_one_cycle(1, moms=(0.95, 1.2)),
         ValueError, r"moms\[1\] must be in \[0, 1\)"),
    Case("learn.fit_one_cycle(1, max_lr=[0.1, 0.01])  # 1 parameter group",
         lambda e: e.learn.fit_one_cycle(1, max_lr=[0.1, 0.01]), ValueError,
         "max_lr has 2 values for 1 parameter groups"),
    Case("learn.fit_sgdr(0, 1)", lambda e: e.learn.fit_sgdr(0, 1), ValueError, "n_cycles must be an int >= 1"),
    Case("learn.fit_sgdr(2, 1, cycle_mult=1.5)", lambda e: e.learn.fit_sgdr(2, 1, cycle_mult=1.5), TypeError,
         "cycle_mult must be an int >= 1"),
    Case("learn.fit_sgdr(2, 1, max_lr=0.1, eta_min=0.5)", lambda e: e.learn.fit_sgdr(2, 1, max_lr=0.1, eta_min=0.5),
         ValueError, "eta_min must be <= max_lr"),
    Case("learn.lr_find(start_lr=1.0, end_lr=0.1)", lambda e: e.learn.lr_find(start_lr=1.0, end_lr=0.1),
         ValueError, "start_lr must be smaller than end_lr"),
    Case("learn.lr_find(num_it=1)", lambda e: e.learn.lr_find(num_it=1), ValueError, "num_it must be an int >= 2"),
    Case("learn.lr_find(step_mode='log')", lambda e: e.learn.lr_find(step_mode="log"), ValueError,
         "step_mode must be one of"),
    Case("learn.lr_find(suggest_funcs=['best'])", lambda e: e.learn.lr_find(suggest_funcs=["best"]), ValueError,
         "unknown suggestion 'best'"),
    Case("learn.lr_find(wds=0.01)", lambda e: e.learn.lr_find(wds=0.01), TypeError,
         r"wds must be a list of weight decays like \[1e-2, 1e-3, 0\]"),
    # ----- set_hyper
    Case("learn.set_hyper('lr', -0.1)", lambda e: e.learn.set_hyper("lr", -0.1), ValueError,
         r"lr must be >= 0, got -0.1"),
    Case("learn.set_hyper('mom', 1.5)", lambda e: e.learn.set_hyper("mom", 1.5), ValueError,
         r"mom must be in \[0, 1\)"),
    Case("learn.set_hyper('lr', '0.1')", lambda e: e.learn.set_hyper("lr", "0.1"), TypeError,
         "lr must be a real number, got str"),
    Case("learn.set_hyper('lr', 0.1, group=2)  # 1 group", lambda e: e.learn.set_hyper("lr", 0.1, group=2),
         IndexError, r"group must be in \[0, 0\] \(the optimizer has 1 parameter group\(s\)\), got 2"),
    Case("learn.set_hyper('nesterov_momentum', 0.9)", lambda e: e.learn.set_hyper("nesterov_momentum", 0.9),
         KeyError, "SGD has no hyperparameter 'nesterov_momentum'"),
    Case("Learner(..., opt_func=torch.optim.Adagrad).set_hyper('mom', 0.9)",
         lambda e: e.learner(opt_func=torch.optim.Adagrad).set_hyper("mom", 0.9), KeyError,
         r"Adagrad has no momentum"),
    # ----- data
    Case("DataLoaders.from_tensors(x, y, bs=0)", lambda e: DataLoaders.from_tensors(e.x, e.y, bs=0), ValueError,
         "bs must be an int >= 1, got 0"),
    Case("DataLoaders.from_tensors(x, y, bs='64')", lambda e: DataLoaders.from_tensors(e.x, e.y, bs="64"),
         TypeError, "bs must be an int >= 1, got str"),
    Case("DataLoaders.from_tensors(x[:10], y)", lambda e: DataLoaders.from_tensors(e.x[:10], e.y), ValueError,
         "x and y must have the same number of samples"),
    Case("DataLoaders.from_tensors(x.tolist(), y)", lambda e: DataLoaders.from_tensors(e.x.tolist(), e.y),
         TypeError, r"x and y must be torch.Tensors.*torch.as_tensor"),
    Case("DataLoaders.from_tensors(x[:0], y[:0])", lambda e: DataLoaders.from_tensors(e.x[:0], e.y[:0]),
         ValueError, r"x and y are empty \(0 samples\)"),
    Case("DataLoaders.from_tensors(x, y, x_valid)", lambda e: DataLoaders.from_tensors(e.x, e.y, e.x), ValueError,
         "give both x_valid and y_valid, or neither"),
    Case("fashion_mnist(bs=0)", lambda e: fashion_mnist(bs=0), ValueError, "bs must be an int >= 1"),
    Case("fashion_mnist(n_train=0)", lambda e: fashion_mnist(n_train=0), ValueError,
         r"n_train must be None or an int in \[1, 60000\]"),
    Case("fashion_mnist(n_valid=20_000)", lambda e: fashion_mnist(n_valid=20_000), ValueError,
         r"n_valid must be None or an int in \[1, 10000\]"),
    # ----- ParamScheduler and schedules
    Case("ParamScheduler({'lr': 0.1})", lambda e: ParamScheduler({"lr": 0.1}), TypeError,
         r"the schedule for 'lr' must be callable as sched\(position\)"),
    Case("ParamScheduler({})", lambda e: ParamScheduler({}), TypeError, "scheds must be a non-empty dict"),
    Case("ParamScheduler({'lr': Lin(0.1, 0)}, unit='step')",
         lambda e: ParamScheduler({"lr": Lin(0.1, 0.0)}, unit="step"), ValueError, "unit must be one of"),
    Case("ParamScheduler({'lr': triangular(...)}, unit='pct')",
         lambda e: ParamScheduler({"lr": triangular(0.01, 0.1, 10)}, unit="pct"), ValueError,
         "is a function of a step count; use unit='batch' or unit='epoch'"),
    Case("learn.fit(1, cbs=[ParamScheduler({'lr': lambda pos: 'fast'})])",
         lambda e: e.learn.fit(1, cbs=[ParamScheduler({"lr": lambda pos: "fast"})]), TypeError,
         "the schedule for 'lr' .* must return a float, got str"),
    Case("learn.fit(1, cbs=[ParamScheduler({'lr': lambda pos: math.nan})])",
         lambda e: e.learn.fit(1, cbs=[ParamScheduler({"lr": lambda pos: math.nan})]), ValueError,
         "hyperparameters must be finite"),
    Case("learn.fit(1, cbs=[ParamScheduler({'beta2': Lin(0.9, 0.99)})])  # SGD",
         lambda e: e.learn.fit(1, cbs=[ParamScheduler({"beta2": Lin(0.9, 0.99)})]), ValueError,
         "cannot schedule 'beta2': SGD has no 'beta2'"),
    Case("Lin('0.1', 0.01)", lambda e: Lin("0.1", 0.01), TypeError, "must be a real number, got str"),
    Case("Cos(0.1, math.inf)", lambda e: Cos(0.1, math.inf), ValueError, "must be finite"),
    Case("one_cycle(0.1, div_factor=0)", lambda e: one_cycle(0.1, div_factor=0), ValueError,
         "div_factor must be > 0"),
    Case("sgdr(0.1, n_cycles=2, cycle_len=0)", lambda e: sgdr(0.1, n_cycles=2, cycle_len=0), ValueError,
         "cycle_len must be an int >= 1"),
    Case("triangular(0.01, 0.1, step_size=0)", lambda e: triangular(0.01, 0.1, step_size=0), ValueError,
         "step_size must be an int >= 1"),
    Case("triangular(0.1, 0.01, 10)", lambda e: triangular(0.1, 0.01, 10), ValueError,
         r"base_lr must be <= max_lr .*got base_lr=0.1 > max_lr=0.01: swap them"),
    Case("cosine(0.1, 0.2, 10)", lambda e: cosine(0.1, 0.2, 10), ValueError,
         r"final must be <= base \(a cosine decay from base to final\).*use Cos\(0.1, 0.2\)"),
    Case("multi_factor(0.1, [5], 2)", lambda e: multi_factor(0.1, [5], 2), ValueError,
         r"factor must be in \(0, 1\] \(the decay at each of steps\), got 2"),
    Case("one_cycle(1e300)", lambda e: one_cycle(1e300), ValueError, r"max_lr must be at most 3.4e\+38"),
    Case("one_cycle(1e-3, div_factor=1e-300)", lambda e: one_cycle(1e-3, div_factor=1e-300), ValueError,
         r"div_factor must be >= 1 \(the start rate max_lr/div_factor is at most the peak\)"),
    Case("learn.fit_one_cycle(1, 1e300)", lambda e: e.learner().fit_one_cycle(1, 1e300), ValueError,
         r"max_lr must be at most 3.4e\+38"),
    Case("learn.fit_one_cycle(1, max_lr=slice(0.1, 0.01))",
         lambda e: e.learner().fit_one_cycle(1, max_lr=slice(0.1, 0.01)), ValueError,
         r"max_lr=slice\(0.1, 0.01\) is reversed"),
    # ----- callbacks' constructors
    Case("OneCycleCallback(max_lr=slice(None))", lambda e: OneCycleCallback(max_lr=slice(None)), ValueError,
         r"max_lr as a slice must be slice\(lo, hi\) or slice\(hi\)"),
    Case("SGDRCallback(0.1, n_cycles=0, cycle_len=1)", lambda e: SGDRCallback(0.1, n_cycles=0, cycle_len=1),
         ValueError, "n_cycles must be an int >= 1"),
    Case("LRFinderCallback(start_lr=0)", lambda e: LRFinderCallback(start_lr=0), ValueError,
         "start_lr must be > 0"),
    Case("EarlyStoppingCallback(patience=0)", lambda e: EarlyStoppingCallback(patience=0), ValueError,
         "patience must be an int >= 1"),
    Case("EarlyStoppingCallback(mode='best')", lambda e: EarlyStoppingCallback(mode="best"), ValueError,
         "mode must be one of"),
    Case("EarlyStoppingCallback(min_delta=-0.01)", lambda e: EarlyStoppingCallback(min_delta=-0.01), ValueError,
         "min_delta must be >= 0"),
    Case("learn.fit(1, cbs=[EarlyStoppingCallback(monitor='acc')])",
         lambda e: e.learn.fit(1, cbs=[EarlyStoppingCallback(monitor="acc")]), ValueError,
         r"monitor='acc' is not recorded; choose one of \['train_loss', 'valid_loss'\]"),
    Case("ReduceLROnPlateau(factor=2)", lambda e: ReduceLROnPlateau(factor=2), ValueError,
         r"factor must be in \(0, 1\)"),
    Case("ReduceLROnPlateau(min_lr=-1e-5)", lambda e: ReduceLROnPlateau(min_lr=-1e-5), ValueError,
         "min_lr must be >= 0"),
    Case("GradientClip(max_norm=0)", lambda e: GradientClip(max_norm=0), ValueError, "max_norm must be > 0"),
    Case("GradientAccumulation(0)", lambda e: GradientAccumulation(0), ValueError,
         "n_batches must be an int >= 1"),
    Case("GradientAccumulation(2.5)", lambda e: GradientAccumulation(2.5), TypeError,
         "n_batches must be an int >= 1"),
    Case("CSVLogger(path=3)", lambda e: CSVLogger(path=3), TypeError, "path must be a file path"),
    Case("SaveModelCallback(every_n_batches=100)", lambda e: SaveModelCallback(every_n_batches=100), ValueError,
         "every_n_batches saves the latest state.*every_epoch=True"),
    Case("SaveModelCallback(every_epoch=True, every_n_batches=0)",
         lambda e: SaveModelCallback(every_epoch=True, every_n_batches=0), ValueError,
         "every_n_batches must be an int >= 1"),
    Case("MixedPrecision(torch.float32)", lambda e: MixedPrecision(torch.float32), ValueError,
         "dtype must be torch.bfloat16 or torch.float16"),
]


def normalise(message: str, env: Env) -> str:
    """The message as the table shows it: temporary paths and memory addresses made stable."""
    message = message.replace(str(env.tmp), "<tmp>")
    return re.sub(r"0x[0-9a-f]+", "0x...", message)


def run_case(case: Case, env: Env) -> tuple[str, str]:
    """Run the call; check the error type, message and that the learner's weights did not change."""
    before = [p.detach().clone() for p in env.learn.model.parameters()]
    with pytest.raises(case.error) as info:
        case.run(env)
    message = info.value.args[0] if info.value.args else str(info.value)
    assert re.search(case.match, str(message)), f"{case.call}: {message!r} does not match {case.match!r}"
    after = list(env.learn.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), f"{case.call} changed the weights"
    return type(info.value).__name__, normalise(str(message), env)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("bad_input"))


@pytest.mark.parametrize("case", CASES, ids=[node_id(c.call) for c in CASES])
def test_bad_input_is_refused_with_a_message_that_says_what_to_change(case, env):
    run_case(case, env)


def markdown_table(rows: list[tuple[str, str, str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| call | error | message |", "|---|---|---|"]
    lines += [f"| `{cell(call)}` | {error} | {cell(message)} |" for call, error, message in rows]
    return "\n".join(lines) + "\n"


def test_the_bad_input_page_is_up_to_date(env):
    rows = [(case.call, *run_case(case, env)) for case in CASES]
    table = markdown_table(rows)
    doc = ("# Bad input and the errors it gets\n\n"
           "Generated by `tests/test_bad_input.py` (which fails when this file is out of date and rewrites it): "
           "every call is made, and must fail before any weight changes with an error that says what to change. "
           "`<tmp>` is a temporary directory.\n\n" + table)
    if not DOC.exists() or DOC.read_text() != doc:
        DOC.write_text(doc)
        pytest.fail(f"regenerated {DOC.relative_to(ROOT)} from the cases: review and commit it")
