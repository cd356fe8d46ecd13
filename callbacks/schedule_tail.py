"""Tails: the end of a fit's schedule supplied by a callback, run by the fit's ParamScheduler as part of its own.

`learn.fit_one_cycle(10, 0.1, cbs=[SWA(start=0.75, lr=0.01)])`: SWA averages the weights over the last quarter of
the fit at a rate of its own. It offers that rate through `Callback.schedule_tails(learn)`, as
`{'lr': (first optimizer step of the tail, tail schedule)}`; the ParamScheduler asks every attached callback in
`before_fit` and runs each of its schedules of that hyperparameter as a `HeadTail`: its own values up to the step
(truncated, not squeezed: exactly the values the plain schedule has there), then the tail over the rest of the fit.
So one callback writes the rate, its whole-fit range check covers the tail, and the Recorder records it as any rate.
Two callbacks claiming the tail of one hyperparameter are refused before the first step.
"""

from __future__ import annotations

import numbers

from .schedules.base import Const, Schedule, check_schedule


class HeadTail(Schedule):
    """`head` before position `at`, exactly its own values; from `at` to `end`, `tail` at its own fraction of that
    stretch, `(pos - at) / (end - at)`. The positions are the ParamScheduler's ('pct', 'batch' or 'epoch'), so the
    schedule lives on whichever clock its head does; it is built per fit (`at`, `end` depend on the fit's length)
    and never saved: checkpoints keep the head, and the tail comes again from its callback's settings."""

    domain = None

    def __init__(self, head, tail: Schedule, at: float, end: float):
        if not at < end:
            raise ValueError(f"a tail must start before the end of the fit: at={at!r}, end={end!r}")
        self.head, self.tail, self.at, self.end = head, tail, at, end
        self._head_value = head.value if isinstance(head, Schedule) else head  # what ParamScheduler would call

    def config(self) -> dict:
        return {"head": self.head, "tail": self.tail, "at": self.at, "end": self.end}

    def value(self, pos):
        if pos < self.at:
            return self._head_value(pos)
        return self.tail.value((pos - self.at) / (self.end - self.at))


def check_tail(name: str, tail) -> Schedule:
    """A tail as a schedule: a number is a constant rate; a schedule must run on the fraction of the tail done
    (Lin, Cos, combine, `swa_cycles`, ...), not count steps."""
    if isinstance(tail, numbers.Real) and not isinstance(tail, bool):
        return Const(tail)
    check_schedule(name, tail)
    if tail.domain == "step":
        raise ValueError(f"{name} = {tail!r} counts steps; a tail sees the fraction of the tail done, in [0, 1): "
                         "give a number (a constant rate) or a schedule of pct (Lin, Cos, combine, swa_cycles)")
    return tail


def tail_span(learn, unit: str, step: int) -> tuple[float, float]:
    """The position on a ParamScheduler's clock (`unit`) where a tail from optimizer step `step` starts, and the
    fit's end on that clock."""
    n = learn.n_train_iters
    if unit == "pct":
        return step / n, 1.0  # batch i of n runs at i / n: exactly the steps from `step` on
    if unit == "batch":
        return step, n
    steps_per_epoch = n // learn.n_epoch
    if step % steps_per_epoch:
        raise ValueError(f"a tail from optimizer step {step} starts inside epoch {step // steps_per_epoch}, but the "
                         "ParamScheduler (unit='epoch') changes its values once per epoch: start it at an epoch "
                         "(e.g. SWA(start=<epoch index>)) or schedule with unit='pct'")
    return step // steps_per_epoch, learn.n_epoch


def with_tails(learn, scheds: dict, unit: str) -> dict:
    """`scheds` (a ParamScheduler's for this fit, by hyperparameter: one schedule or one per group) with the tails
    the attached callbacks supply for the hyperparameters it schedules; refuses two claims on one."""
    claims: dict = {}  # hyperparameter -> (the callback, its tail's first step, the tail)
    for cb in learn.cbs:
        for name, (step, tail) in cb.schedule_tails(learn).items():
            if name in claims:
                raise ValueError(f"{claims[name][0].name} and {cb.name} both supply the tail of the {name!r} "
                                 "schedule in this fit: one schedule has one tail; keep one of them")
            claims[name] = (cb, step, tail)
    scheds = dict(scheds)
    for name, (_, step, tail) in claims.items():
        if name in scheds:  # another ParamScheduler of this fit may schedule it
            at, end = tail_span(learn, unit, step)
            value = scheds[name]
            scheds[name] = [HeadTail(s, tail, at, end) for s in value] if isinstance(value, list) else \
                HeadTail(value, tail, at, end)
    return scheds
