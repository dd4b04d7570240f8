"""Ensembles: soft, hard and rank voting over runs and prediction files, weights chosen on out-of-fold rows.

Public API::

    from toolkit.ensemble import ensemble
    result = ensemble(["runs/*-ce", "runs/*-focal"], vote="soft", select="greedy", bags=20)
    result.oof_score, result.crossfit_score, result.weights

    # one run, or several, with decisions tuned for macro-F1 (kept only when the cross-fitted gain is positive)
    ensemble(["runs/*-ce"], calibrate="temperature", decide="f1").decision.summary()
    # separately trained attribute runs multiplied into the recipe's [targets.combine] label
    ensemble(["mask=runs/<a>", "gender=runs/<b>", "age=runs/<c>"], compose=True, into="label18")

Lower-level pieces: :mod:`toolkit.ensemble.voting` (``combine``, ``soft_vote``, ``hard_vote``,
``rank_average``), :mod:`toolkit.ensemble.selection` (``fit_weights``, ``greedy_select``,
``bagged_greedy``, ``crossfit_labels``), :mod:`toolkit.ensemble.members` (loading and alignment),
:mod:`toolkit.ensemble.compose` (per-attribute composition); the math of calibration and decisions
is :mod:`toolkit.calibration` and :mod:`toolkit.decisions`.
"""

from __future__ import annotations

from toolkit.ensemble.ensembler import EnsembleResult, ensemble, parse_weights
from toolkit.ensemble.members import Member, align_ids, check_classes, load_members
from toolkit.ensemble.selection import (
    METRICS,
    bagged_greedy,
    crossfit_labels,
    fast_score,
    fit_weights,
    greedy_select,
)
from toolkit.ensemble.voting import VOTES, combine, hard_vote, normalize_weights, rank_average, soft_vote

__all__ = [
    "METRICS",
    "VOTES",
    "EnsembleResult",
    "Member",
    "align_ids",
    "bagged_greedy",
    "check_classes",
    "combine",
    "crossfit_labels",
    "ensemble",
    "fast_score",
    "fit_weights",
    "greedy_select",
    "hard_vote",
    "load_members",
    "normalize_weights",
    "parse_weights",
    "rank_average",
    "soft_vote",
]
