"""Hyperparameter schedules: pure functions of a position, with a readable repr, that plot themselves.

A schedule holds only its configuration, never a counter: ``sched(pos)`` gives the same value every time, so a
resumed fit needs nothing but the learner's counters. Two clocks exist:

- ``domain == 'pct'``: the fraction of the fit done, in [0, 1]; batch ``i`` of ``N`` sees ``i / N``
  (``Lin``, ``Cos``, ``Exp``, ``Poly``, ``combine``, ``one_cycle``, ``sgdr``).
- ``domain == 'step'``: an update count ``t = 0, 1, 2, ...``: the global batch index or the epoch index, whichever
  unit the ``ParamScheduler`` feeds (``triangular``, ``triangular2``, ``exp_range``, and the d2l trackers
  ``square_root``, ``factor``, ``multi_factor``, ``cosine``, ``warmup``).

``Const`` works on either clock. Every schedule has ``state_dict()`` (plain values only, so
``torch.load(weights_only=True)`` reads it back) and ``schedule_from_state(state)`` rebuilds it from a whitelist of
the kinds defined here.

The modules: ``base`` (the common shape, the building blocks, ``combine``, ``schedule_from_state``), ``cycles``
(one-cycle, flat-cos, SGDR, cyclical, and their defaults ``ONE_CYCLE``, ``FLAT_COS``, ``SGDR_DEFAULTS``,
``CYCLICAL``), ``decay`` (the d2l
chapter's decays and ``warmup``). Users import them from the front door: ``from cyclr import one_cycle``.
"""

from .base import (
    BOUNDARY_TOL,
    MAX_RATE,
    Combine,
    Configured,
    Const,
    Cos,
    Exp,
    Lin,
    Poly,
    Schedule,
    check_rate,
    check_rate_slice,
    check_schedule,
    combine,
    scheds_from_state,
    scheds_state,
    schedule_from_state,
    schedule_kinds,
)
from .cycles import (
    ANNEAL_STRATEGIES,
    CYCLIC_MODES,
    CYCLICAL,
    FLAT_COS,
    ONE_CYCLE,
    SGDR,
    SGDR_DEFAULTS,
    Cyclical,
    CyclicalDefaults,
    FlatCosDefaults,
    OneCycle,
    OneCycleDefaults,
    SGDRDefaults,
    cyclical,
    exp_range,
    flat_cos,
    one_cycle,
    sgdr,
    triangular,
    triangular2,
)
from .decay import (
    CosineDecay,
    Factor,
    MultiFactor,
    SquareRoot,
    Warmup,
    cosine,
    factor,
    multi_factor,
    square_root,
    warmup,
)

__all__ = [
    "Configured", "Schedule", "Lin", "Cos", "Exp", "Poly", "Const", "Combine", "combine", "check_schedule",
    "check_rate", "check_rate_slice", "MAX_RATE",
    "schedule_from_state", "schedule_kinds", "scheds_state", "scheds_from_state", "BOUNDARY_TOL",
    "OneCycle", "one_cycle", "SGDR", "sgdr", "Cyclical", "cyclical", "triangular", "triangular2", "exp_range",
    "CYCLIC_MODES", "ONE_CYCLE", "SGDR_DEFAULTS", "CYCLICAL", "OneCycleDefaults", "SGDRDefaults", "CyclicalDefaults",
    "flat_cos", "FLAT_COS", "FlatCosDefaults", "ANNEAL_STRATEGIES",
    "SquareRoot", "Factor", "MultiFactor", "CosineDecay", "Warmup", "square_root", "factor", "multi_factor", "cosine",
    "warmup",
]
