"""The Learner: model, data, loss and optimizer, and the whole fit loop, readable top to bottom."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from callbacks.core import (
    EVENTS,
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    check_hook_names,
)
from callbacks.lr_finder import SNAPSHOT_MEMORY_LIMIT, SUGGESTION_NAMES, LRFinderPlots, run_lr_find
from callbacks.progress import ProgressCallback
from callbacks.recorder import Recorder
from callbacks.scheduler import OneCycleCallback, SGDRCallback


def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The default optimizer: SGD with momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


# Names users schedule, mapped to torch's param_group keys ('mom' is special: momentum or betas[0]).
_HYPER_ALIASES = {"wd": "weight_decay"}


def _check_positive_finite(name: str, value, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Learner:
    """Wraps a model, its data (`data.DataLoaders`), a loss function and an optimizer factory, and trains them.

    `opt_func(params, lr=...)` is any function returning a `torch.optim.Optimizer` (torch's classes work as they
    are). `splitter(model)` may return a list of parameter lists, one optimizer group each (discriminative rates).
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

        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device)
        self.dls, self.loss_func, self.opt_func = dls, loss_func, opt_func
        self.lr, self.wd, self.metrics, self.splitter = lr, wd, metrics, splitter
        self.opt: torch.optim.Optimizer | None = None

        self.cbs: list[Callback] = []
        self._hooks: dict[str, list] = {e: [] for e in EVENTS}
        self.recorder = Recorder(train_metrics=train_metrics)
        default_cbs = [self.recorder] + ([ProgressCallback()] if progress else [])
        self.add_cbs(default_cbs + list(cbs))

        # Loop state: integer counters only (pct_train is derived from them).
        self.training = False
        self.epoch = self.n_epoch = self.iter = 0
        self.train_iter = self.n_train_iters = 0
        self.dl = self.xb = self.yb = self.pred = self.loss = None

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
        return self.model(xb)

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

    def fit(self, n_epoch: int, lr: float | None = None, wd: float | None = None, cbs: Iterable[Callback] = ()):
        """Train for `n_epoch` epochs. `cbs` are attached for this fit only."""
        if isinstance(n_epoch, bool) or not isinstance(n_epoch, int) or n_epoch < 1:
            raise ValueError(f"n_epoch must be an int >= 1, got {n_epoch!r}")
        if lr is not None:
            _check_positive_finite("lr", lr)
        if wd is not None:
            _check_positive_finite("wd", wd, allow_zero=True)
        cbs = list(cbs)
        for cb in cbs:
            check_hook_names(cb)
        self._check_data()
        if self.opt is None:
            self.create_opt()
        if lr is not None:
            self.set_hyper("lr", lr)
        if wd is not None:
            self.set_hyper("wd", wd)

        self.add_cbs(cbs)
        try:
            self.n_epoch = n_epoch
            self.n_train_iters = n_epoch * len(self.dls.train)
            self.train_iter = 0
            self._with_events(self._do_fit, "fit", CancelFitException)
        finally:
            try:
                self("cleanup_fit")
            finally:
                self.remove_cbs(cbs)
                self.training = False

    def _with_events(self, body: Callable[[], None], name: str, cancel: type[Exception]) -> None:
        try:
            self(f"before_{name}")
            body()
        except cancel:
            pass
        try:
            self(f"after_{name}")
        except cancel:  # raised in after_<name> itself: it ends that hook chain, nothing more to skip
            pass

    def _do_fit(self) -> None:
        for epoch in range(self.n_epoch):
            self.epoch = epoch
            self._with_events(self._do_epoch, "epoch", CancelEpochException)

    def _do_epoch(self) -> None:
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
        for i, (xb, yb) in enumerate(self.dl):
            self.iter = i
            self.xb, self.yb = self._to_device(xb), self._to_device(yb)
            self._with_events(self._do_one_batch, "batch", CancelBatchException)
            if self.training:
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
        self("after_step")
        self.zero_grad()

    def _to_device(self, b):
        if isinstance(b, torch.Tensor):
            return b.to(self.device, non_blocking=True)
        if isinstance(b, (list, tuple)):
            return type(b)(self._to_device(o) for o in b)
        return b

    # ----- checks done before any weight changes ------------------------------------------------------------------
    def _check_data(self) -> None:
        train = self.dls.train
        if train is None or len(train) == 0:
            raise ValueError("the training loader is empty: give DataLoaders at least one training batch")
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
                    loss = self.loss_func(pred, yb)
                except Exception as e:
                    raise ValueError(
                        f"loss_func failed on the model output of shape {tuple(pred.shape)} and targets of shape "
                        f"{tuple(yb.shape)}: {e}"
                    ) from e
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
                      cbs: Iterable[Callback] = ()):
        """Train `cyc_len` epochs with the one-cycle policy (`callbacks.scheduler.OneCycleCallback`).

        `max_lr` (default `self.lr`) may be a list or `slice(lo, hi)` for per-group rates; `moms=None` leaves the
        momentum alone."""
        cb = OneCycleCallback(self.lr if max_lr is None else max_lr, div_factor, pct_start, final_div, moms)
        self.fit(cyc_len, wd=wd, cbs=[cb, *cbs])

    def fit_sgdr(self, n_cycles: int, cycle_len: int, max_lr=None, cycle_mult: int = 2, eta_min: float = 0.0,
                 wd: float | None = None, cbs: Iterable[Callback] = ()):
        """Train with SGDR: `n_cycles` cosine cycles, cycle k lasting `cycle_len * cycle_mult**k` epochs."""
        cb = SGDRCallback(self.lr if max_lr is None else max_lr, n_cycles, cycle_len, cycle_mult, eta_min)
        print(f"fit_sgdr: {n_cycles} cycles of {cycle_len}*{cycle_mult}**k epochs = {cb.total_epochs} epochs")
        self.fit(cb.total_epochs, wd=wd, cbs=[cb, *cbs])

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
