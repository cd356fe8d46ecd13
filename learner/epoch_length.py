"""The batches an epoch really draws against the ones its fit planned (issue 23.3).

A fit's schedules are planned over `n_train_iters = n_epoch * len(train loader)` steps. A loader whose `len()` is
wrong breaks that plan silently: one that yields fewer batches ends every epoch early and leaves each schedule short
of its end (a one-cycle stopped at pct 0.49), one that yields more would feed the schedules positions past the end
of the fit. The loop counts the batches it draws: more than planned is refused at the first extra batch, before the
batch runs; fewer is warned about when the epoch ends, with how far the schedules fall short."""

from __future__ import annotations

import warnings


def planned_batches(learn) -> int | None:
    """The training batches this epoch was planned with: the loader's len() (None: no len() to hold it to)."""
    return len(learn.dl) if hasattr(type(learn.dl), "__len__") else None


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
    warnings.warn(
        f"epoch {learn.epoch}: the training loader yielded {drawn} batches where its len() says {planned}, so the "
        f"fit's schedules (planned over {learn.n_epoch} epochs of {planned} batches, {learn.n_train_iters} steps) "
        f"fall {planned - drawn} batches short in this epoch; if every epoch is as short, the fit ends at pct_train "
        f"{drawn / planned:.2f} instead of 1.00 (its schedules cut by {1 - drawn / planned:.0%}). Make the loader's "
        "__len__ say how many batches it yields.",
        RuntimeWarning, stacklevel=2,
    )
