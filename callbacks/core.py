"""Events, cancellation exceptions and the Callback base class.

A callback is a small class with an ``order`` and methods named exactly like the events it handles. Each hook
receives the learner explicitly: ``def after_batch(self, learn): ...``.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENTS = (
    "before_fit", "before_epoch", "before_train", "before_batch", "after_pred", "after_loss",
    "before_backward", "before_step", "after_step", "after_batch", "after_train",
    "before_validate", "after_validate", "after_epoch", "after_fit", "cleanup_fit",
)


@dataclass(frozen=True)
class CallbackOrders:
    """Every callback's `order`, in one table: lower runs first at every event (ties keep the order they were added).
    A callback of cyclr takes its order from here (`order = ORDER.scheduler`); a new one gets a row here, with why.
    Gaps are left on purpose: a user's callback at the default 0 runs after the learner's own set-up (distributed,
    optimizer modes) and before everything that reads a batch's results.
    """

    distributed: int = -100  # learner/distributed.py: wraps the model before anyone's before_batch, unwraps after
    optimizer_modes: int = -10  # train/eval mode of schedule-free optimizers, before anything sees the weights
    nan_guard: int = 2  # tests loss and gradients in before_step, before a step is cancelled or the scaler skips it
    gradient_accumulation: int = 3  # cancels non-final micro-batches' steps; sets n_train_iters before schedulers
    mixed_precision: int = 5  # unscales the gradients before they are clipped
    scheduler: int = 10  # ParamScheduler and its recipes: write the scheduled values in before_batch
    gradient_clip: int = 15  # clips the unscaled, averaged gradients just before the step
    lr_finder: int = 20  # sets the sweep's rate in before_batch, stops at a non-finite loss in after_loss
    recorder: int = 50  # records what the step used; writes the epoch's row in after_epoch
    swa: int = 52  # callbacks/averaging.py: reads the epoch's row
    ema: int = 53  # callbacks/averaging.py: after SWA
    snapshot_ensemble: int = 54  # callbacks/ensembles.py: after SWA and EMA, before the checkpoints
    torch_scheduler: int = 54  # callbacks/torch_scheduler.py: steps in after_step / after_epoch (reads the row)
    early_stopping: int = 55  # reads the epoch's row
    reduce_lr_on_plateau: int = 56  # reads the epoch's row
    csv_logger: int = 57  # writes the epoch's row
    trackers: int = 58  # callbacks/tracker.py (TensorBoard, MLflow): write the epoch's row
    progress: int = 60  # prints the row once everything above has filled it
    checkpoint: int = 90  # saves once every other callback has updated its state
    pruning: int = 95  # OptunaPruning (callbacks/tuning.py), PreemptionCheckpoint: decide on the epoch the
    # trackers and checkpoints wrote

ORDER = CallbackOrders()


class CancelBatchException(Exception):
    """Skip the rest of this batch and go to `after_batch`."""


class CancelTrainException(Exception):
    """Skip the rest of the training phase of this epoch and go to `after_train`."""


class CancelValidException(Exception):
    """Skip the rest of the validation phase of this epoch and go to `after_validate`."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch and go to `after_epoch`."""


class CancelFitException(Exception):
    """Stop training now and go to `after_fit`."""


_HOOK_PREFIXES = ("before_", "after_", "cleanup_")

# Other frameworks' hook names (Keras, Lightning, fastai v1, HF Trainer) and the cyclr event that runs at that point,
# so that a callback ported from one of them is refused with the name to use instead of never being called.
FOREIGN_HOOKS = {
    "on_train_begin": "before_fit", "on_train_start": "before_fit", "on_fit_start": "before_fit",
    "on_train_end": "after_fit", "on_fit_end": "after_fit", "on_epoch_begin": "before_epoch",
    "on_epoch_start": "before_epoch", "on_train_epoch_start": "before_train", "on_epoch_end": "after_epoch",
    "on_train_epoch_end": "after_train", "on_batch_begin": "before_batch", "on_batch_start": "before_batch",
    "on_train_batch_begin": "before_batch", "on_train_batch_start": "before_batch", "on_step_begin": "before_batch",
    "on_batch_end": "after_batch", "on_train_batch_end": "after_batch", "on_step_end": "after_step",
    "on_loss_begin": "after_pred", "on_backward_begin": "before_backward", "on_before_backward": "before_backward",
    "on_backward_end": "before_step", "on_after_backward": "before_step", "on_before_optimizer_step": "before_step",
    "on_validation_start": "before_validate", "on_validation_epoch_start": "before_validate",
    "on_test_begin": "before_validate", "on_validation_end": "after_validate",
    "on_validation_epoch_end": "after_validate", "on_test_end": "after_validate", "on_evaluate": "after_validate",
    "on_validation_batch_start": "before_batch", "on_validation_batch_end": "after_batch",
    "on_test_batch_begin": "before_batch", "on_test_batch_end": "after_batch", "on_exception": "cleanup_fit",
}


class Callback:
    """Base class for callbacks. Lower `order` runs first; ties keep insertion order. The class attributes and
    methods below are every flag and question the learner and the other callbacks may ask of a callback; a subclass
    overrides the ones that differ for it."""

    order: int = 0
    """When it runs at each event, against the others: lower first (cyclr's own take theirs from `ORDER`)."""

    writes_files: bool = False
    """Writes files during a fit (checkpoints, logs). The LR finder's sweep runs without it, so that the sweep's
    diverging state and rows never replace what the fit wrote, not even when the process is killed mid-sweep."""

    sits_out_lr_find: bool = False
    """Sits out the LR finder's sweep: taken off the learner while `lr_find` runs and put back after, untouched (an
    average of the weights, a scheduler, a pruner must never see the swept steps)."""

    def steps_per_epoch(self, n_batches: int) -> int:
        """The optimizer steps an epoch of `n_batches` training batches takes with this callback attached:
        `n_batches`, unless it groups batches into one step (GradientAccumulation)."""
        return n_batches

    def schedule_tails(self, learn) -> dict:
        """The ends of the fit's schedules this callback supplies, asked by the fit's ParamScheduler in before_fit:
        `{hyperparameter: (optimizer step, tail)}`, the tail a schedule of the fraction of the tail done, run from
        that step on in place of the rest of the ParamScheduler's own (callbacks/schedule_tail.py). SWA(lr=...)
        supplies its averaging rate this way. `{}` (the default): none."""
        return {}

    def checkpoint_state(self, path) -> dict:
        """The state a checkpoint written during a fit to `path` keeps: `state_dict()`, unless the callback keeps part
        of it beside the file (the Recorder appends its batch history to the run's side file)."""
        return self.state_dict()

    def resume_paths(self) -> list[str]:
        """Every checkpoint file this callback may have written in an earlier run, for `fit(..., resume='auto')`."""
        return []

    def run_files_lock(self, run_id: str):
        """The writer lock on files of run `run_id` this callback writes, taken by a resume before anything changes
        and held to the fit's end; None (the default): none."""
        return None

    def preemption_path(self, learn) -> str | None:
        """Where a preempted fit saves for this callback (callbacks/preemption.py); None (the default): nowhere."""
        return None

    @property
    def name(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict:
        """Plain values and tensors only, so checkpoints load with ``torch.load(weights_only=True)``."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def fit_config(self) -> dict | None:
        """What this callback was configured with that decides the training (a scheduler's rates and shape), as
        plain values; None (the default) for a callback that decides nothing of the kind. A fit records it at its
        start in its checkpoints, and `fit(..., resume=path)` refuses to go on with another one unless
        `allow_config_change` allows it; then the callback keeps this fit's configuration and its saved state is
        not loaded, so a callback that describes itself here keeps in `state_dict` only what it describes (as the
        schedulers do)."""
        return None

    def __repr__(self) -> str:
        return f"{self.name}(order={self.order})"


def check_hook_names(cb: Callback) -> None:
    """Refuse a callback whose method names look like hooks but are not events (e.g. ``after_batc``), are another
    framework's hook names (``on_epoch_end``), or whose hooks cannot be called as ``hook(learn)``."""
    if not isinstance(cb, Callback):
        # Imported here: torch_scheduler.py builds on this module. A torch scheduler gets the way to run it.
        from .torch_scheduler import refuse_torch_scheduler

        refuse_torch_scheduler(cb, "a callback in cbs")
        raise TypeError(
            f"callbacks must be instances of cyclr.Callback, got {type(cb).__name__}; "
            "subclass Callback and pass an instance (did you pass the class instead of `MyCallback()`?)"
        )
    for attr in dir(type(cb)):
        if attr.startswith(_HOOK_PREFIXES) and attr not in EVENTS and callable(getattr(cb, attr, None)):
            close = [e for e in EVENTS if _similar(attr, e)]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{cb.name} defines {attr!r}, which is not an event.{hint} Events are: {', '.join(EVENTS)}."
            )
        if attr in FOREIGN_HOOKS and callable(getattr(cb, attr, None)):
            raise ValueError(
                f"{cb.name} defines {attr!r}, another framework's hook name, which cyclr never calls: name it "
                f"{FOREIGN_HOOKS[attr]!r} (def {FOREIGN_HOOKS[attr]}(self, learn)). Events are: {', '.join(EVENTS)}."
            )
    for event in EVENTS:
        hook = getattr(cb, event, None)
        if callable(hook) and not _callable_with_one_argument(hook):
            raise ValueError(
                f"{cb.name}.{event} cannot be called as {event}(learn): every hook takes the learner, "
                f"def {event}(self, learn); got {event}{_signature(hook)}"
            )


def _callable_with_one_argument(hook) -> bool:
    import inspect

    try:
        inspect.signature(hook).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): let it be
        return True
    return True


def _signature(hook) -> str:
    import inspect

    try:
        return str(inspect.signature(getattr(hook, "__func__", hook)))
    except (TypeError, ValueError):
        return "(?)"


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.8
