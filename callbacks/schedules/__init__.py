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
