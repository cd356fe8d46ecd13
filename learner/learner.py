"""The Learner: model, data, loss and optimizer, and the whole fit loop, readable top to bottom."""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..callbacks.core import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    check_hook_names,
)
from ..callbacks.lr_finder import SNAPSHOT_MEMORY_LIMIT, SUGGESTION_NAMES, LRFinderPlots, run_lr_find
from ..callbacks.progress import ProgressCallback
from ..callbacks.recorder import Recorder
from ..callbacks.scheduler import OneCycleCallback, SGDRCallback
from ..callbacks.training import TerminateOnNaNCallback

from . import checkpoint
from . import distributed as _dist


def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The default optimizer: SGD with momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


# The two events around each level of the loop, named once here rather than formatted for every batch.
_LEVEL_EVENTS = {level: (f"before_{level}", f"after_{level}")
                 for level in ("fit", "epoch", "train", "validate", "batch")}

# Names users schedule, mapped to torch's param_group keys ('mom' is special: momentum or betas[0]).
_HYPER_ALIASES = {"wd": "weight_decay"}


def _check_positive_finite(name: str, value, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")


_COMPILE_KEYS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")


def _check_speed_options(channels_last, compile) -> dict | None:
    """The keyword arguments for torch.compile (None: don't compile), after checking both options."""
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be True or False, got {channels_last!r}")
    if isinstance(compile, bool):
        return {} if compile else None
    if not isinstance(compile, dict):
        raise TypeError(
            f"compile must be True, False or a dict of torch.compile arguments like {{'mode': 'max-autotune'}}, "
            f"got {type(compile).__name__}"
        )
    unknown = sorted(set(compile) - set(_COMPILE_KEYS))
    if unknown:
        raise ValueError(f"compile has unknown torch.compile arguments {unknown}; allowed: {', '.join(_COMPILE_KEYS)}")
    return dict(compile)


def _check_hyper_value(name: str, value) -> None:
    """The ranges of the hyperparameters `set_hyper` knows by name; raw param_group keys are left to the optimizer."""
    if name in ("lr", "wd"):
        _check_positive_finite(name, value, allow_zero=True)
    elif name in ("mom", "beta2"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1) (a momentum or Adam beta), got {value!r}")


def _parse_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"device must be a torch.device or a string like 'cpu', 'cuda', 'cuda:1' or 'mps', got {device!r}"
        ) from e


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Learner:
    """Wraps a model, its data (`data.DataLoaders`), a loss function and an optimizer factory, and trains them.

    `opt_func(params, lr=...)` is any function returning a `torch.optim.Optimizer` (torch's classes work as they
    are). `splitter(model)` may return a list of parameter lists, one optimizer group each (discriminative rates).
    For speed on CUDA: `channels_last=True` keeps 4-d weights and batches in NHWC; `compile=True` (or a dict of
    `torch.compile` arguments, e.g. `{'mode': 'max-autotune'}`) runs the model compiled, `learn.model` staying the
    plain module.
    """

    def __init__(
        self,
        model: nn.Module,
        dls,
        loss_func: Callable,
        opt_func: Callable = sgd,
        lr: float = 1e-3,
        wd: float = 0.0,
        metrics: Iterable[Callable] = (),
        cbs: Iterable[Callback] = (),
        device=None,
        splitter: Callable | None = None,
        progress: bool = True,
        train_metrics: bool = False,
        channels_last: bool = False,
        compile: bool | dict = False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not hasattr(dls, "train"):
            raise TypeError(
                f"dls must be a data.DataLoaders (with .train and .valid), got {type(dls).__name__}; "
                "build one with DataLoaders(train_dl, valid_dl) or DataLoaders.from_tensors(...)"
            )
        if not callable(loss_func):
            raise TypeError(f"loss_func must be callable (e.g. torch.nn.CrossEntropyLoss()), got {loss_func!r}")
        if not callable(opt_func):
            raise TypeError(f"opt_func must be callable as opt_func(params, lr=...), got {opt_func!r}")
        _check_positive_finite("lr", lr)
        _check_positive_finite("wd", wd, allow_zero=True)
        metrics = list(metrics)
        for m in metrics:
            if not callable(m):
                raise TypeError(f"each metric must be callable as metric(pred, target), got {m!r}")
        compile_options = _check_speed_options(channels_last, compile)

        self.device = _parse_device(device) if device is not None else _default_device()
        self.model = model.to(self.device)
        # Speed options for CUDA (they work, to no benefit, on the CPU): NHWC weights and batches; torch.compile.
        self.channels_last, self.compile_options, self._compiled = channels_last, compile_options, None
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dls, self.loss_func, self.opt_func = dls, loss_func, opt_func
        self.lr, self.wd, self.metrics, self.splitter = lr, wd, metrics, splitter
        self.opt: torch.optim.Optimizer | None = None

        self.cbs: list[Callback] = []
        self._hooks: dict[str, list] = {e: [] for e in EVENTS}
        self.recorder = Recorder(train_metrics=train_metrics)
        default_cbs = [self.recorder, TerminateOnNaNCallback()] + ([ProgressCallback()] if progress else [])
        self.add_cbs(default_cbs + list(cbs))

        # Loop state: integer counters only (pct_train is derived from them).
        self.training = False
        self.epoch = self.n_epoch = self.iter = 0
        self.train_iter = self.n_train_iters = 0
        self.dl = self.xb = self.yb = self.pred = self.loss = None
        # in_fit: inside fit(). stepped: this batch took an optimizer step (train_iter counts only those).
        # resuming: this fit goes on from a checkpoint, at epoch start_epoch, after its first skip_batches batches.
        self.in_fit = self.stepped = self.resuming = False
        self.start_epoch = self.skip_batches = 0
        self._data_state_at_epoch_start: dict = {}  # what a mid-epoch checkpoint saves to replay the epoch's shuffle

        # Data-parallel state (learner/distributed.py): launched by torchrun, this process joins the others now.
        self.rank, self.world_size = 0, 1
        self._joined = _dist.join(self) if _dist.torchrun_world_size() > 1 else None

    # ----- callbacks ------------------------------------------------------------------------------------------------
    def add_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            check_hook_names(cb)
            if cb in self.cbs:
                raise ValueError(f"{cb.name} is already attached to this learner")
            self.cbs.append(cb)
        self._rebuild_hooks()

    def remove_cbs(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            if cb in self.cbs:
                self.cbs.remove(cb)
        self._rebuild_hooks()

    @contextlib.contextmanager
    def added_cbs(self, cbs: Iterable[Callback]):
        cbs = list(cbs)
        self.add_cbs(cbs)
        try:
            yield self
        finally:
            self.remove_cbs(cbs)

    def _rebuild_hooks(self) -> None:
        # Sorted once here, never per event: the per-batch dispatch is a plain loop over bound methods.
        self.cbs.sort(key=lambda cb: cb.order)  # stable: ties keep insertion order
        self._hooks = {e: [getattr(cb, e) for cb in self.cbs if hasattr(cb, e)] for e in EVENTS}

    def __call__(self, event: str) -> None:
        for hook in self._hooks[event]:
            hook(self)

    def show_loop(self) -> None:
        """Print each event of the fit loop, indented by nesting, with the callbacks that run at it, in order."""
        depth = {"before_fit": 0, "before_epoch": 1, "before_train": 2, "before_batch": 3, "after_pred": 4,
                 "after_loss": 4, "before_backward": 4, "before_step": 4, "after_step": 4, "after_batch": 3,
                 "after_train": 2, "before_validate": 2, "after_validate": 2, "after_epoch": 1, "after_fit": 0,
                 "cleanup_fit": 0}
        for event in EVENTS:
            names = ", ".join(type(hook.__self__).__name__ for hook in self._hooks[event])
            print(f"{'  ' * depth[event]}{event}: {names or '-'}")

    @property
    def progress(self) -> ProgressCallback | None:
        return next((cb for cb in self.cbs if isinstance(cb, ProgressCallback)), None)

    @contextlib.contextmanager
    def no_bar(self):
        """Train without progress bars and table inside this block."""
        bar = self.progress
        if bar is not None:
            self.remove_cbs([bar])
        try:
            yield self
        finally:
            if bar is not None:
                self.add_cbs([bar])

    # ----- optimizer and hyperparameters ---------------------------------------------------------------------------
    def create_opt(self) -> torch.optim.Optimizer:
        params = self.splitter(self.model) if self.splitter is not None else self.model.parameters()
        if self.splitter is not None:
            params = [{"params": list(p)} for p in params]
        opt = self.opt_func(params, lr=self.lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"opt_func must return a torch.optim.Optimizer, got {type(opt).__name__}; "
                "pass e.g. torch.optim.AdamW or functools.partial(torch.optim.SGD, momentum=0.9)"
            )
        self.opt = opt
        if self.wd:
            self.set_hyper("wd", self.wd)
        return opt

    def set_hyper(self, name: str, value: float, group: int | None = None) -> None:
        """Set hyperparameter `name` ('lr', 'mom', 'wd', 'beta2' or any param_group key) in every group or one."""
        if self.opt is None:
            self.create_opt()
        _check_hyper_value(name, value)
        n_groups = len(self.opt.param_groups)
        if group is not None and (isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < n_groups):
            raise IndexError(f"group must be in [0, {n_groups - 1}] (the optimizer has {n_groups} parameter "
                             f"group(s)), got {group!r}")
        groups = self.opt.param_groups if group is None else [self.opt.param_groups[group]]
        for g in groups:
            if name == "mom":
                if "momentum" in g:
                    g["momentum"] = value
                elif "betas" in g:
                    g["betas"] = (value, g["betas"][1])
                else:
                    raise KeyError(f"{type(self.opt).__name__} has no momentum (neither 'momentum' nor 'betas')")
            elif name == "beta2":
                g["betas"] = (g["betas"][0], value)
            else:
                key = _HYPER_ALIASES.get(name, name)
                if key not in g:
                    raise KeyError(f"{type(self.opt).__name__} has no hyperparameter {key!r}; it has {sorted(g)}")
                g[key] = value

    def hypers(self) -> list[dict]:
        """The current lr, mom and wd of every parameter group."""
        if self.opt is None:
            self.create_opt()
        out = []
        for g in self.opt.param_groups:
            mom = g["momentum"] if "momentum" in g else g["betas"][0] if "betas" in g else None
            out.append({"lr": g["lr"], "mom": mom, "wd": g.get("weight_decay")})
        return out

    # ----- the steps a subclass may change ----------------------------------------------------------------------------
    def forward(self, xb):
        return self._model_to_run()(xb)

    def get_loss(self, pred, yb):
        return self.loss_func(pred, yb)

    def backward(self) -> None:
        self.loss.backward()

    def step(self) -> None:
        self.opt.step()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    # ----- the fit loop ---------------------------------------------------------------------------------------------
    @property
    def pct_train(self) -> float:
        return self.train_iter / self.n_train_iters if self.n_train_iters else 0.0

    def fit(self, n_epoch: int, lr: float | None = None, wd: float | None = None, cbs: Iterable[Callback] = (),
            resume=None, allow_length_change: bool = False):
        """Train for `n_epoch` epochs. `cbs` are attached for this fit only.

        `resume=path` goes on from a checkpoint written during an earlier run of this same fit (see `save`), at the
        batch it was taken, with everything restored; the fit must plan the same length unless
        `allow_length_change=True`."""
        if isinstance(n_epoch, bool) or not isinstance(n_epoch, int) or n_epoch < 1:
            raise ValueError(f"n_epoch must be an int >= 1, got {n_epoch!r}")
        if lr is not None:
            _check_positive_finite("lr", lr)
        if wd is not None:
            _check_positive_finite("wd", wd, allow_zero=True)
        if isinstance(cbs, Callback):
            raise TypeError(f"cbs must be a list of callbacks, got a single {cbs.name}; pass cbs=[{cbs.name}(...)]")
        cbs = list(cbs)
        for cb in cbs:
            check_hook_names(cb)
        self._check_data()
        if resume is not None:
            self._resume_from(resume, n_epoch, cbs, allow_length_change)  # checks all, then sets the counters
        else:
            self.n_epoch, self.n_train_iters = n_epoch, n_epoch * len(self.dls.train)
            self.train_iter = self.start_epoch = self.skip_batches = 0
        if self.opt is None:
            self.create_opt()
        if lr is not None:
            self.set_hyper("lr", lr)
        if wd is not None:
            self.set_hyper("wd", wd)

        self.add_cbs(cbs)
        try:
            self.zero_grad()  # gradients an interrupted fit left behind must not reach this one's first step
            self.in_fit, self.resuming = True, resume is not None
            self._with_events(self._do_fit, "fit", CancelFitException)
        finally:
            self.in_fit = self.resuming = False
            self.skip_batches = 0
            try:
                self("cleanup_fit")
            finally:
                self.remove_cbs(cbs)
                self.training = False

    def _with_events(self, body: Callable[[], None], name: str, cancel: type[Exception]) -> None:
        before, after = _LEVEL_EVENTS[name]
        try:
            self(before)
            body()
        except cancel:
            pass
        try:
            self(after)
        except cancel:  # raised in after_<name> itself: it ends that hook chain, nothing more to skip
            pass

    def _do_fit(self) -> None:
        for epoch in range(self.start_epoch, self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)
            self.skip_batches = 0  # only the first epoch of a resumed fit starts mid-way

    def _do_epoch(self) -> None:
        # Before the training loader draws this epoch's shuffle: a mid-epoch checkpoint saves this to replay it.
        self._data_state_at_epoch_start = self.dls.state_dict() if hasattr(self.dls, "state_dict") else {}
        self._start_phase(training=True, dl=self.dls.train)
        self._with_events(self._all_batches, "train", CancelTrainException)
        if self.dls.valid is not None:
            self._start_phase(training=False, dl=self.dls.valid)
            self._with_events(self._do_validate, "validate", CancelValidException)

    def _start_phase(self, training: bool, dl) -> None:
        # Set before the phase's before_ event, so its hooks already see the phase they are in.
        self.training, self.dl = training, dl
        self.model.train(training)

    def _do_validate(self) -> None:
        with torch.no_grad():
            self._all_batches()

    def _all_batches(self) -> None:
        batches = enumerate(self.dl)
        if self.training and self.skip_batches:
            # Resuming mid-epoch: the loaders were restored to this epoch's start, so the same shuffle is drawn;
            # pass over the batches done before the checkpoint.
            batches = itertools.islice(batches, self.skip_batches, None)
        for i, (xb, yb) in batches:
            self.iter = i
            self.xb, self.yb = self._to_device(xb), self._to_device(yb)
            self.stepped = False
            self._with_events(self._do_one_batch, "batch", CancelBatchException)
            if self.stepped:  # train_iter counts optimizer steps: not cancelled ones, not accumulation micro-batches
                self.train_iter += 1

    def _do_one_batch(self) -> None:
        self.pred = self.forward(self.xb)
        self("after_pred")
        self.loss = self.get_loss(self.pred, self.yb)
        self("after_loss")
        if not self.training:
            return
        self("before_backward")
        self.backward()
        self("before_step")
        self.step()
        self.stepped = True
        self("after_step")
        self.zero_grad()

    def _to_device(self, b):
        if isinstance(b, torch.Tensor):
            if self.channels_last and b.dim() == 4:  # images in the weights' layout (no copy when already in it)
                return b.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            return b.to(self.device, non_blocking=True)
        if isinstance(b, (list, tuple)):
            return type(b)(self._to_device(o) for o in b)
        return b

    def _model_to_run(self) -> nn.Module:
        """`self.model`, or with `compile=` its `torch.compile` wrapper, which shares its parameters (`self.model`
        itself stays the plain module, so state dicts and checkpoints keep their keys). Compiled again when
        `self.model` is replaced (e.g. wrapped for data-parallel training)."""
        if self.compile_options is None:
            return self.model
        if self._compiled is None or self._compiled._orig_mod is not self.model:
            self._compiled = torch.compile(self.model, **self.compile_options)
        return self._compiled

    # ----- checks done before any weight changes ------------------------------------------------------------------
    def _check_data(self) -> None:
        train = self.dls.train
        if train is None or len(train) == 0:
            raise ValueError("the training loader is empty: give DataLoaders at least one training batch")
        valid = getattr(self.dls, "valid", None)
        if valid is not None and hasattr(valid, "__len__") and len(valid) == 0:
            raise ValueError("the validation loader is empty: give it at least one batch, or pass valid=None")
        xb, yb = _first_items(train)
        if xb is None:
            return
        xb, yb = self._to_device(xb), self._to_device(yb)
        was_training = self.model.training
        self.model.eval()  # eval + no_grad: the check must not touch batch-norm statistics or gradients
        try:
            with torch.no_grad():
                try:
                    pred = self.model(xb)
                except Exception as e:
                    raise ValueError(
                        f"the model failed on a training batch of shape {tuple(xb.shape)}: {e}. "
                        "Check that the model's input layer fits the data."
                    ) from e
                _check_labels(pred, yb, train)
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        loss = self.loss_func(pred, yb)
                except Exception as e:
                    raise ValueError(
                        f"loss_func failed on the model output of shape {tuple(pred.shape)} and targets of shape "
                        f"{tuple(yb.shape)}: {e}"
                    ) from e
                # MSELoss and friends broadcast a target of another shape with only a warning: the loss would be
                # silently wrong.
                if any("target size" in str(w.message) for w in caught):
                    raise ValueError(
                        f"loss_func got a model output of shape {tuple(pred.shape)} and targets of shape "
                        f"{tuple(yb.shape)}, which it would broadcast into a wrong loss: make the model's last "
                        "layer output the targets' shape"
                    )
                for w in caught:  # the others are not ours to swallow
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                    raise ValueError(
                        f"loss_func must return a scalar tensor, got {shape}; reduce it (e.g. reduction='mean')"
                    )
        finally:
            self.model.train(was_training)

    # ----- evaluation and inference -----------------------------------------------------------------------------------
    def validate(self, dl=None) -> dict[str, float]:
        """Validation loss and metrics on `dl` (default: the validation loader), with the usual events."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no validation loader: pass validate(dl=...) or build DataLoaders with a valid set")
        if len(dl) == 0:
            raise ValueError("the validation loader is empty")
        self._start_phase(training=False, dl=dl)
        self._with_events(self._do_validate, "validate", CancelValidException)
        return dict(self.recorder.last_validation)

    def get_preds(self, dl=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model outputs and targets over `dl` (default: the validation loader), concatenated, on the CPU."""
        dl = dl if dl is not None else self.dls.valid
        if dl is None:
            raise ValueError("no loader to predict on: pass get_preds(dl=...) or build DataLoaders with a valid set")
        preds, targets = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for xb, yb in dl:
                    preds.append(self.forward(self._to_device(xb)).float().cpu())
                    targets.append(yb.cpu() if isinstance(yb, torch.Tensor) else torch.as_tensor(yb))
        finally:
            self.model.train(was_training)
        return torch.cat(preds), torch.cat(targets)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Model output for a batch `x` (eval mode, no gradients), on the CPU."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"predict expects a tensor batch, got {type(x).__name__}")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.forward(x.to(self.device)).cpu()
        finally:
            self.model.train(was_training)

    # --- schedules (fit_one_cycle, fit_sgdr) ---
    def fit_one_cycle(self, cyc_len: int, max_lr=None, moms=(0.95, 0.85), div_factor: float = 25.0,
                      pct_start: float = 0.3, final_div: float | None = None, wd: float | None = None,
                      cbs: Iterable[Callback] = (), resume=None, allow_length_change: bool = False):
        """Train `cyc_len` epochs with the one-cycle policy (`callbacks.scheduler.OneCycleCallback`).

        `max_lr` (default `self.lr`) may be a list or `slice(lo, hi)` for per-group rates; `moms=None` leaves the
        momentum alone."""
        cb = OneCycleCallback(self.lr if max_lr is None else max_lr, div_factor, pct_start, final_div, moms)
        self.fit(cyc_len, wd=wd, cbs=[cb, *cbs], resume=resume, allow_length_change=allow_length_change)

    def fit_sgdr(self, n_cycles: int, cycle_len: int, max_lr=None, cycle_mult: int = 2, eta_min: float = 0.0,
                 wd: float | None = None, cbs: Iterable[Callback] = (), resume=None, allow_length_change: bool = False):
        """Train with SGDR: `n_cycles` cosine cycles, cycle k lasting `cycle_len * cycle_mult**k` epochs."""
        cb = SGDRCallback(self.lr if max_lr is None else max_lr, n_cycles, cycle_len, cycle_mult, eta_min)
        if self.is_main_process:
            print(f"fit_sgdr: {n_cycles} cycles of {cycle_len}*{cycle_mult}**k epochs = {cb.total_epochs} epochs")
        self.fit(cb.total_epochs, wd=wd, cbs=[cb, *cbs], resume=resume, allow_length_change=allow_length_change)

    # --- lr finder (lr_find) ---
    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, step_mode: str = "exp",
                stop_div: bool = True, show_plot: bool = False, wds=None, suggest_funcs=SUGGESTION_NAMES,
                snapshot_memory_limit: int = SNAPSHOT_MEMORY_LIMIT):
        """Train `num_it` batches with the rate growing from `start_lr` to `end_lr` ('exp' or 'linear' steps) and
        return the curve of loss against rate with suggestions (`callbacks.lr_finder.LRFinderResult`).

        Stops early at a non-finite loss and, with `stop_div`, when the smoothed loss exceeds 4x its minimum.
        `wds=[1e-2, 1e-3, 0]` runs one sweep per weight decay and returns an `LRFinderSweep`. Afterwards the
        learner is exactly as before (weights, optimizer, RNGs, loaders, callbacks, history), even after an
        exception; the result is kept for `learn.recorder.plot_lr_find()` and `learn.sched`."""
        result = run_lr_find(self, start_lr, end_lr, num_it, step_mode, stop_div, wds, suggest_funcs,
                             snapshot_memory_limit, show_plot)
        self.recorder.lr_find_result = result
        return result

    @property
    def sched(self) -> LRFinderPlots:
        """fastai 0.7's `learn.sched` after `lr_find`: `.plot()` the LR-finder curve, `.plot_lr()` the sweep's rates."""
        result = getattr(self.recorder, "lr_find_result", None)
        if result is None:
            raise RuntimeError("learn.sched draws the last LR-finder sweep: run learn.lr_find() first")
        return LRFinderPlots(result)

    # --- checkpoints (save, load, resume) ---
    def save(self, path, at: str | None = None) -> Path:
        """Write a checkpoint of everything to `path`, atomically (learner/checkpoint.py): model, optimizer, loop
        counters and the fit's planned length, every callback's state, the loaders' shuffling state, the RNGs.

        Between fits, `learn.save(path)`. Inside a fit, say where it is taken, so `fit(..., resume=path)` knows where
        to go on: `at='batch_end'` from after_batch of a training batch, `at='epoch_end'` from after_epoch
        (`callbacks.checkpoint.SaveModelCallback` does this). Only the main process writes (data-parallel runs)."""
        return checkpoint.save_checkpoint(self, path, at)

    def load(self, path, with_opt: bool = True, model_only: bool = False) -> Learner:
        """Load a checkpoint written by `save`: everything it holds, or the model's weights only (`model_only`), or
        all but the optimizer (`with_opt=False`). Read with `torch.load(weights_only=True)`, so a file can never run
        code; every part is checked against this learner first, and a `CheckpointError` names the part that does not
        fit (another architecture, another optimizer, a truncated file), with the learner left unchanged."""
        checkpoint.restore(self, checkpoint.read_checkpoint(path), with_opt=with_opt, model_only=model_only)
        return self

    def _resume_from(self, path, n_epoch: int, cbs: list[Callback], allow_length_change: bool) -> None:
        # The fit's own callbacks are not attached yet: their keys come from the order add_cbs will give them.
        all_cbs = sorted([*self.cbs, *cbs], key=lambda cb: cb.order)
        checkpoint.resume(self, path, n_epoch, all_cbs, allow_length_change)

    # --- distributed (torchrun, DistributedDataParallel: learner/distributed.py) ---
    @property
    def is_distributed(self) -> bool:
        """True while this learner is one of several processes training together."""
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        """True on rank 0 (and in a single process): the one that shows progress and writes plots, logs, checkpoints."""
        return self.rank == 0

    @contextlib.contextmanager
    def distributed(self, **ddp_kwargs):
        """Train data-parallel inside this block: join the default process group (initialised from torchrun's
        environment when the script did not do it), shard the loaders, wrap the model in DistributedDataParallel
        (`ddp_kwargs` go to it) during training; undone on exit. Does nothing in a single process, and nothing more
        when the learner already joined at creation because torchrun launched it."""
        if self.is_distributed:
            yield self
            return
        joined = _dist.join(self, **ddp_kwargs)
        if joined is None:
            yield self
            return
        try:
            yield self
        except BaseException:
            _dist.leave(self, joined, destroy_group=False)  # the others may still be in a collective: just go
            raise
        _dist.leave(self, joined)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all processes (every process must call this at the same point); `tensor` itself
        in a single process."""
        return _dist.all_reduce_sum(tensor, self.device) if self.is_distributed else tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over all processes, e.g. a batch loss every process must act on identically (the LR
        finder's stop); `tensor` itself in a single process."""
        return self.all_reduce_sum(tensor) / self.world_size if self.is_distributed else tensor

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. after rank 0 wrote a checkpoint the others will read)."""
        if self.is_distributed:
            torch.distributed.barrier()


def _first_items(dl):
    """A first batch to check shapes with, taken without advancing the loader's shuffling state."""
    if hasattr(dl, "x") and hasattr(dl, "y"):
        bs = max(1, min(getattr(dl, "bs", 1), len(dl.y)))
        return dl.x[:bs], dl.y[:bs]
    dataset = getattr(dl, "dataset", None)
    if dataset is not None and hasattr(dataset, "__getitem__") and len(dataset) > 0:
        n = min(getattr(dl, "batch_size", None) or 1, len(dataset), 8)
        items = [dataset[i] for i in range(n)]
        try:
            return torch.utils.data.default_collate(items)
        except Exception:
            return None, None
    return None, None


def _check_labels(pred, yb, train) -> None:
    """Class labels must index the model's outputs; otherwise cross-entropy fails deep inside a batch."""
    if not (isinstance(pred, torch.Tensor) and isinstance(yb, torch.Tensor)):
        return
    if pred.ndim != 2 or yb.ndim != 1 or yb.dtype not in (torch.int64, torch.int32, torch.uint8):
        return
    labels = train.y if hasattr(train, "y") else yb
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= pred.shape[1]:
        raise ValueError(
            f"labels range over [{lo}, {hi}] but the model outputs {pred.shape[1]} classes; "
            f"labels must lie in [0, {pred.shape[1] - 1}]: give the last layer {hi + 1} outputs or fix the labels"
        )
