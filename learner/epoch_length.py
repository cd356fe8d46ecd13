"""The batches an epoch really draws against the ones its fit planned (issue 23.3), and epochs over streams
(issue 23.5).

A fit's schedules are planned over `n_train_iters = n_epoch * batches an epoch` steps. A loader whose `len()` is
wrong breaks that plan silently: one that yields fewer batches ends every epoch early and leaves each schedule short
of its end (a one-cycle stopped at pct 0.49), one that yields more would feed the schedules positions past the end
of the fit. The loop counts the batches it draws: more than planned is refused at the first extra batch, before the
batch runs; fewer is warned about when the epoch ends, with how far the schedules fall short.

A stream (a loader without a len(): an IterableDataset, a generator) has no length to plan with. `fit(n_epoch,
steps_per_epoch=N)` gives one: each epoch draws N batches from it (an endless stream included). Without it an epoch
runs until the stream ends, which a fit at a constant rate allows; a scheduler, which places every step of the fit
on its schedule before the first one, is refused."""

from __future__ import annotations

import itertools
import warnings

from ..callbacks.scheduler import ParamScheduler
from ..callbacks.torch_scheduler import TorchScheduler
from ..data.checks import int_at_least, user_stacklevel
from ..data.core import loader_length


def batches_per_epoch(learn, cbs, steps_per_epoch: int | None) -> int:
    """The training batches each epoch of this fit plans (0: a stream without steps_per_epoch, no plan)."""
    length = loader_length(learn.dls.train)
    if steps_per_epoch is not None:
        int_at_least("steps_per_epoch", steps_per_epoch, 1)
        if length is not None and length != steps_per_epoch:
            raise ValueError(
                f"steps_per_epoch={steps_per_epoch} is for a training loader without a len() (a stream); this one "
                f"has len() {length}: leave steps_per_epoch out"
            )
        return steps_per_epoch
    if length is not None:
        return length
    needs = [type(cb).__name__ for cb in [*learn.cbs, *cbs] if isinstance(cb, (ParamScheduler, TorchScheduler))]
    if needs:
        raise ValueError(
            f"the training loader has no len() (a stream: {type(learn.dls.train).__name__}), so the fit's length is "
            f"unknown and {', '.join(needs)} cannot place its steps on a schedule: pass steps_per_epoch=N to fit "
            "or to the recipe (fit(n_epoch, steps_per_epoch=N), fit_one_cycle(n_epoch, max_lr, steps_per_epoch=N); "
            "each epoch then draws N batches from the stream), or train at a constant rate (fit without a scheduler)"
        )
    return 0


def epoch_batches(learn):
    """The batches of this phase's loader: with steps_per_epoch, the next that many of a stream; a one-shot
    stream's batch drawn by the pre-flight first."""
    dl = learn.dl
    batches = with_peeked(learn, dl)
    if learn.training and learn.steps_per_epoch and loader_length(dl) is None:
        return itertools.islice(batches, learn.steps_per_epoch)
    return batches


def with_peeked(learn, dl):
    """`dl`, or for a one-shot stream whose first batch the pre-flight drew, that batch and then the stream."""
    peeked = learn.peeked.pop(id(dl), None) if learn.peeked else None
    return dl if peeked is None else itertools.chain([peeked], dl)


def planned_batches(learn) -> int | None:
    """The training batches this epoch was planned with: the loader's len() or steps_per_epoch (None: no plan)."""
    return learn.steps_per_epoch or loader_length(learn.dl)


def too_many_batches(learn, planned: int) -> RuntimeError:
    return RuntimeError(
        f"the training loader yielded more batches than the {planned} its len() announced (epoch {learn.epoch} "
        f"reached batch {planned + 1}): the fit's schedules were planned over {learn.n_epoch} epochs of {planned} "
        f"batches ({learn.n_train_iters} steps), so this batch would run them past their end. The fit stopped "
        f"before this batch (train_iter {learn.train_iter}). Make the loader's __len__ say how many batches it yields "
        "(its sampler's length, drop_last), or wrap it so that it yields len() batches."
    )


def warn_if_short(learn, drawn: int, planned: int | None) -> None:
    """Warn when a training epoch drew fewer batches than planned (a cancelled epoch never gets here)."""
    if planned is None or drawn >= planned or learn.skip_batches:
        return
    says = "steps_per_epoch says" if learn.steps_per_epoch else "its len() says"
    warnings.warn(
        f"epoch {learn.epoch}: the training loader yielded {drawn} batches where {says} {planned}, so the "
        f"fit's schedules (planned over {learn.n_epoch} epochs of {planned} batches, {learn.n_train_iters} steps) "
        f"fall {planned - drawn} batches short in this epoch; if every epoch is as short, the fit ends at pct_train "
        f"{drawn / planned:.2f} instead of 1.00 (its schedules cut by {1 - drawn / planned:.0%}). Make the loader's "
        "__len__ say how many batches it yields.",
        RuntimeWarning, stacklevel=user_stacklevel(),
    )
