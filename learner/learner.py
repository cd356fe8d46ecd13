"""The Learner, its state and its fit loop, top to bottom: the events, their dispatch, the levels of the loop and the
steps a subclass may change. Beside it, each mixin in the file named after it: Batches (batches and model outputs),
AttachedCallbacks, OptimizerSetup (optimizer_setup.py), Recipes, Transfer, Inference, Checkpoints (save, load, resume;
the file format is checkpoint_files.py) and DataParallel; the checks before training are preflight.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable

import torch
from torch import nn

from ..callbacks import core
from ..callbacks.core import EVENTS, Callback
from ..callbacks.hypers import restore_hypers, saved_hypers
from ..callbacks.optimizer_modes import OptimizerModes
from ..callbacks.preemption import PreemptionCheckpoint
from ..callbacks.progress import ProgressCallback
from ..callbacks.recorder import Recorder
from ..callbacks.training import TerminateOnNaNCallback
from ..data.core import loader_length
from . import distributed, epoch_length, preflight
from .attached_callbacks import AttachedCallbacks
from .batches import Batches
from .checkpoints import Checkpoints
from .data_parallel import DataParallel
from .fit_config import describe_fit
from .inference import Inference
from .optimizer import adam
from .optimizer_setup import OptimizerSetup
from .recipes import Recipes
from .transfer import Transfer

# The loop's integer counters (declared in Learner.__init__), changed through Learner.set_counters only.
COUNTERS = ("epoch", "iter", "train_iter", "n_epoch", "n_train_iters", "start_epoch", "skip_batches")

# Each level of the loop: its two events and the exception that cancels it, named once rather than per batch.
_LEVELS = {level: (f"before_{level}", f"after_{level}", cancel) for level, cancel in (
    ("fit", core.CancelFitException), ("epoch", core.CancelEpochException), ("train", core.CancelTrainException),
    ("validate", core.CancelValidException), ("batch", core.CancelBatchException))}


class Learner(Batches, AttachedCallbacks, OptimizerSetup, Recipes, Transfer, Inference, Checkpoints,
              DataParallel):
    """Wraps a model, its data (`cyclr.DataLoaders`), a loss function and an optimizer factory, and trains them.

    `opt_func(params, lr=...)` is any function returning a `torch.optim.Optimizer` (torch's classes work as they
    are). The defaults train: AdamW with fastai's settings at lr 3e-3 (one epoch of LeNet on Fashion-MNIST reaches
    0.82-0.83; fastai's 1e-3 gives 0.77). `splitter(model)` may return a list of parameter lists, one optimizer
    group each (discriminative rates). For speed on CUDA: `channels_last=True` keeps 4-d weights and batches in
    NHWC; `compile=True` (or a dict of `torch.compile` arguments, e.g. `{'mode': 'max-autotune'}`) runs the model
    compiled, `learn.model` staying the plain module.
    `wd_bn_bias=False` (fastai's default) keeps norm layers' parameters (batch, layer, group, instance, RMS) and
    biases out of weight decay; True decays them too, as a torch optimizer given `model.parameters()` does.
    Under torchrun, `dist_timeout` (seconds) is how long a collective waits for the other processes.

    Args:
        model: the torch module to train; moved to `device` now.
        dls (DataLoaders): the training loader and, optionally, the validation loader (`cyclr.DataLoaders`).
        loss_func: called as `loss_func(pred, target)`; None: the model's output carries its loss (a `loss` attribute or
            key, as Hugging Face models return).
        opt_func: `opt_func(params, lr=...)` returns a `torch.optim.Optimizer`; the default is `cyclr.adam` (AdamW with
            fastai's settings).
        lr: the learning rate the optimizer is created with, and the recipes' rate when they are given none.
        wd: the weight decay set on every parameter group; None: the optimizer's own (`adam`'s is 0.01).
        metrics (Callable | Sequence[Callable]): computed on the validation set each epoch: functions `metric(pred,
            target)` or objects with update/compute/reset (a torchmetrics Metric); one or a list.
        cbs (Callback | Iterable[Callback] | None): callbacks attached for every fit, besides the default ones.
        device (torch.device | str | None): where the model and the batches go; None: the GPU when there is one, else
            the CPU.
        splitter: `splitter(model)` returns a list of parameter lists, one optimizer group each (discriminative rates,
            freezing); None: one group with every parameter.
        progress: show a progress bar and the epoch table.
        train_metrics: also compute the metrics on the training batches (columns `train_<metric>`).
        channels_last: keep 4-d weights and batches in NHWC (faster convolutions on CUDA).
        compile: run the model under `torch.compile` (a dict: its arguments, e.g. `{'mode': 'max-autotune'}`);
            `learn.model` stays the plain module.
        n_inp: how many leading parts of a tuple batch are inputs to the model; None: all but the last.
        sanity_check: before training, also run one validation batch through the model, the loss and the metrics.
        wd_bn_bias: also decay norm layers' parameters and biases; False (fastai's default) keeps them out of weight
            decay.
        dist_timeout: under torchrun, how long a collective waits for the other processes, in seconds; None:
            `$CYCLR_DIST_TIMEOUT`, else 10 minutes.
    """

    def __init__(self, model: nn.Module, dls, loss_func: Callable | None, opt_func: Callable = adam, lr: float = 3e-3,
                 wd: float | None = None, metrics=(), cbs=(), device=None, splitter: Callable | None = None,
                 progress: bool = True, train_metrics: bool = False, channels_last: bool = False,
                 compile: bool | dict = False, n_inp: int | None = None, sanity_check: bool = True,
                 wd_bn_bias: bool = False, dist_timeout: float | None = None):
        metrics = preflight.check_learner_arguments(model, dls, loss_func, opt_func, lr, wd, metrics, n_inp)
        compile_options = preflight.compile_options(channels_last, compile)
        device = preflight.parse_device(device)
        preflight.warn_compile_on_cpu(device, compile_options)
        # Every attribute the loop and the mixins share is created here, grouped by who writes it; who reads it
        # follows each one's comment. The mixins create none of their own.

        # ----- the constructor's arguments: read by the loop and every mixin ------------------------------------
        self.device = device  # Batches.to_device's target; the torchrun join sets this process's GPU (LOCAL_RANK's)
        self.model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
        self.channels_last = channels_last  # Batches.to_device: 4-d batches in NHWC, as the weights (CUDA speed)
        self.compile_options = compile_options  # Batches._model_to_run: torch.compile's arguments (None: eager)
        self._compiled = None  # Batches._model_to_run: the torch.compile wrapper of `model`, made on first use
        self.dls = dls  # the loop, pre-flight, inference, checkpoints; the torchrun join swaps in this rank's shard
        self.loss_func = loss_func  # Batches.get_loss (None: the output's `loss`); get_preds(with_loss=True)
        self.opt_func = opt_func  # OptimizerSetup.create_opt
        self.lr = float(lr)  # create_opt, reset_lrs (through _base_lrs), describe_fit, the recipes' default rate
        self.wd = None if wd is None else float(wd)  # create_opt, describe_fit (None: the optimizer's own)
        self.metrics = metrics  # the Recorder (its columns), the pre-flight (each tried on a batch)
        self.n_inp = n_inp  # Batches.split_batch: leading parts of a tuple batch that are inputs (None: all but one)
        self.sanity_check = sanity_check  # the pre-flight: also run one validation batch before training
        self.wd_bn_bias = preflight.flag("wd_bn_bias", wd_bn_bias)  # create_opt: decay norm layers and biases?
        self.dist_timeout = None if dist_timeout is None else distributed.dist_timeout(dist_timeout)  # the join

        # ----- the optimizer and its parameter groups (optimizer_setup.py, transfer.py) -------------------------
        self.opt: torch.optim.Optimizer | None = None  # create_opt (on first need); load, resume, the LR finder
        self._base_lrs: list[float] = []  # create_opt, set_hyper outside a fit: the rates reset_lrs goes back to
        self.splitter = splitter  # create_opt's groups; Transfer.freeze_to may set body_head_split first
        self.frozen_idx = 0  # Transfer.freeze_to: leading groups frozen; the LR finder leaves their rates alone
        self.train_bn = True  # Transfer.freeze_to: batch norm of frozen groups stays trainable

        # ----- callbacks (attached_callbacks.py): add_cbs / remove_cbs write cbs and _hooks, the dispatch reads them -
        self.cbs: list[Callback] = []
        self._hooks: dict[str, list] = {e: [] for e in EVENTS}  # each event's hooks, in order
        self.recorder = Recorder(train_metrics=train_metrics)  # Recipes.lr_find writes recorder.lr_find_result
        default_cbs = [self.recorder, TerminateOnNaNCallback(), OptimizerModes(), PreemptionCheckpoint()]
        self.add_cbs(default_cbs + ([ProgressCallback()] if progress else []) + preflight.callback_list(cbs))

        # ----- the loop's counters, integers only (pct_train derives from them): set_counters alone changes them,
        # for the loop, `load` and a resumed fit (checkpoints.py); callbacks read them ----------------------------
        self.epoch = 0  # the epoch under way
        self.iter = 0  # the batch under way in the phase
        self.train_iter = 0  # optimizer steps taken in this fit (not cancelled batches, not accumulation steps)
        self.n_epoch = 0  # the epochs this fit plans
        self.n_train_iters = 0  # the optimizer steps this fit plans (0: a stream fitted without steps_per_epoch)
        self.start_epoch = 0  # the first epoch to run (a resumed fit's checkpoint epoch)
        self.skip_batches = 0  # training batches of start_epoch the checkpoint had done, passed over

        # ----- what the loop is doing: written by the loop (and the LR finder's restore), read by callbacks -------
        self.training = False  # in a training phase
        self.dl = None  # the phase's loader
        self.xb = self.yb = None  # the batch's inputs and targets (Batches.split_batch)
        self.pred = self.loss = None  # its output and loss
        self.event: str | None = None  # the event being dispatched (save reads where in the loop it is)
        self.stepped = False  # this batch took an optimizer step (the loop counts train_iter by it)

        # ----- the fit's own state, written by fit -------------------------------------------------------------
        self.in_fit = False  # inside fit(): save, set_hyper and the callbacks read it
        self.fit_started = False  # its before_fit passed (a refusal before puts the hyperparameters back)
        self.resuming = False  # it goes on from a checkpoint (the Recorder keeps the restored history)
        self.steps_per_epoch = 0  # a stream's batches an epoch (0: the loader's len()); the LR finder sets it too
        self.fit_config: dict | None = None  # what the fit started with (fit_config.py): its checkpoints record it
        self.run_locks: tuple = ()  # a resumed run's writer locks, held until the fit ends (checkpoints.py)

        # ----- what the pre-flight learned of the data (preflight.py), read by the loop and inference ------------
        self.train_n_inp: int | None = None  # inputs of the training tuple batches (load restores it)
        self.peeked: dict = {}  # one-shot streams' first batches the pre-flight drew, yielded first next epoch
        self._training_shapes: tuple | None = None  # Inference: (training loader, its per-sample input shapes)

        # ----- data-parallel (distributed.py): under torchrun, the first fit, lr_find, validate, get_preds or save
        # joins the other processes (_join_launched_group), which rewrites dls, rank, world_size and device --------
        self.rank = 0  # this process among those training together (0: the main one, which writes files)
        self.world_size = 1  # how many train together
        self._joined: distributed.Joined | None = None  # what the join changed (None: not joined)

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        sizes = ", ".join(f"{k}={'?' if (n := loader_length(dl)) is None else n} batches"
                          for k, dl in (("train", self.dls.train), ("valid", getattr(self.dls, "valid", None)))
                          if dl is not None)
        opt = type(self.opt).__name__ if self.opt is not None else getattr(self.opt_func, "__name__", self.opt_func)
        return (f"Learner(model={type(self.model).__name__} ({n_params:,} parameters), data=({sizes}), "
                f"opt={opt} lr={self.lr:g} wd={self.wd}, loss={self.loss_func!r}, "
                f"cbs=[{', '.join(type(cb).__name__ for cb in self.cbs)}])")

    # ----- dispatch: the callbacks' hooks for each event, in order (attached_callbacks.py builds the lists) -------
    def __call__(self, event: str) -> None:
        self.event = event  # so that learn.save() called from a hook knows where in the loop it is
        for hook in self._hooks[event]:
            hook(self)

    # ----- the steps a subclass may change (split_batch, forward, get_loss, to_device: batches.py) ----------------
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

    def set_counters(self, **counters: int) -> None:
        """Set some of the loop's counters (COUNTERS): the one place they change, for the loop, `load` and a resumed
        fit, so that where a fit stands is always these integers and nothing else."""
        for name, value in counters.items():
            if name not in COUNTERS:
                raise AttributeError(f"{name!r} is not one of the loop's counters {COUNTERS}")
            setattr(self, name, value)

    def fit(self, n_epoch: int, lr=None, wd: float | None = None, cbs: Iterable[Callback] = (),
            resume=None, allow_length_change: bool = False, allow_config_change: bool | Collection[str] = False,
            steps_per_epoch: int | None = None):
        """Train for `n_epoch` epochs. `cbs` are attached for this fit only. `lr` (default: the Learner's) may be a
        number, a list (one per parameter group) or `slice(lo, hi)` / `slice(hi)`, as in the recipes. A training
        loader without a len() (a stream) needs `steps_per_epoch` (batches drawn an epoch) for a scheduled fit.

        `resume=path` goes on from a checkpoint written during an earlier run of this same fit (see `save`), at the
        batch it was taken, with everything restored; the fit must plan the same length unless
        `allow_length_change=True`, and start with the same settings (lr, wd, each scheduler's parameters, the
        batch sizes and the number of training samples, recorded in the checkpoint) unless `allow_config_change`
        allows the differences: True for all, or their names (`['max_lr']`, as the refusal lists them). This fit's
        settings then apply from the checkpoint's position on, for every scheduler. `resume='auto'`: the newest
        checkpoint of the fit's checkpoint callbacks, or a fresh start when none (a job requeued after SIGTERM).

        Args:
            n_epoch: the epochs to train (>= 1).
            lr (float | list[float] | slice | None): the learning rate, set on the groups before the fit: a number, one
                per parameter group, or `slice(lo, hi)` / `slice(hi)`; None: start from the Learner's own rates.
            wd: the weight decay set on every group before the fit; None: leave it as it is.
            cbs (Callback | Iterable[Callback]): callbacks attached for this fit only.
            resume (str | os.PathLike | None): a checkpoint of an earlier run of this fit to go on from; 'auto': the
                newest checkpoint the fit's checkpoint callbacks wrote, else a fresh start; None: a fresh start.
            allow_length_change: with `resume`, accept a fit whose planned length differs from the checkpoint's.
            allow_config_change: with `resume`, accept settings that differ from the checkpoint's: True for all, or the
                names of those that may differ (e.g. `['max_lr']`).
            steps_per_epoch: batches drawn per epoch from a training loader without a len() (a stream); None: the
                loader's len().
        """
        cbs = preflight.check_fit_arguments(n_epoch, lr, wd, cbs)
        self._join_launched_group()  # under torchrun: before the loaders' lengths and the pre-flight, per shard
        per_epoch = epoch_length.batches_per_epoch(self, cbs, steps_per_epoch)  # 0: a stream, no plan
        self.steps_per_epoch = steps_per_epoch or 0
        preflight.check_first_batches(self)
        resume = self.auto_resume_path(cbs) if isinstance(resume, str) and resume == "auto" else resume
        if resume is not None:  # checks all, then restores everything and sets the counters
            self._resume_from(resume, n_epoch, cbs, allow_length_change, allow_config_change, lr, wd)
        else:
            self.set_counters(n_epoch=n_epoch, n_train_iters=n_epoch * per_epoch, train_iter=0, start_epoch=0,
                              skip_batches=0)
        if self.opt is None:
            self.create_opt()
        hypers_before = saved_hypers(self.opt)  # put back if before_fit refuses the fit (a schedule out of range)
        if resume is None and lr is None:  # as in fastai: start at learn.lr, not where a schedule or load left it
            self.reset_lrs()
        for name, value in (("lr", lr), ("wd", wd)):
            if value is not None:
                self.set_hyper(name, value)

        self.fit_config = describe_fit(self, lr, wd, cbs)  # what this fit starts with: its checkpoints record it
        self.add_cbs(cbs)
        try:
            self.in_fit, self.resuming = True, resume is not None
            self._with_events(self._do_fit, "fit")
        except BaseException:
            if not self.fit_started:
                restore_hypers(self.opt, hypers_before)
            raise
        finally:
            self.in_fit = self.resuming = self.fit_started = False
            self.set_counters(skip_batches=0)
            try:
                self("cleanup_fit")
            finally:
                self.remove_cbs(cbs)
                self.training = False
                self.release_run_locks()

    def _with_events(self, body: Callable[[], None], level: str) -> None:
        before, after, cancel = _LEVELS[level]
        try:
            self(before)
            body()
        except cancel:
            pass
        try:
            self(after)
        except cancel:  # raised in after_<level> itself: it ends that hook chain, nothing more to skip
            pass

    def _do_fit(self) -> None:
        self.fit_started = True
        self.zero_grad()  # gradients an interrupted fit left behind must not reach this one's first step
        for epoch in range(self.start_epoch, self.n_epoch):
            self.set_counters(epoch=epoch)
            self._with_events(self._do_epoch, "epoch")
            self.set_counters(skip_batches=0)  # only the first epoch of a resumed fit starts mid-way

    def _do_epoch(self) -> None:
        self._start_phase(training=True, dl=self.dls.train)
        self._with_events(self._all_batches, "train")
        if self.dls.valid is not None:
            self._start_phase(training=False, dl=self.dls.valid)
            self._with_events(self._do_validate, "validate")

    def _start_phase(self, training: bool, dl) -> None:
        # Set before the phase's before_ event, so its hooks already see the phase they are in.
        self.training, self.dl = training, dl
        self.model.train(training)

    def _do_validate(self) -> None:
        with torch.no_grad():
            self._all_batches()

    def _all_batches(self) -> None:
        planned = epoch_length.planned_batches(self) if self.training else None  # the loader held to its len()
        batches, i = enumerate(epoch_length.epoch_batches(self)), -1
        if self.training and self.skip_batches:
            # Resuming mid-epoch: the loaders were restored to this epoch's start, so the same shuffle is drawn;
            # pass over the batches done before the checkpoint.
            batches = itertools.islice(batches, self.skip_batches, None)
        for i, batch in batches:
            if i == planned:
                raise epoch_length.too_many_batches(self, planned)
            self.set_counters(iter=i)
            self.xb, self.yb = self.split_batch(self.to_device(batch))
            self.stepped = False
            self._with_events(self._do_one_batch, "batch")
            if self.stepped:  # train_iter counts optimizer steps: not cancelled ones, not accumulation micro-batches
                self.set_counters(train_iter=self.train_iter + 1)
        if self.training:
            epoch_length.warn_if_short(self, i + 1, planned)

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
