"""A train run's calibration and decision rule, fitted on its out-of-fold rows, for ``clsctl predict``.

Both are chosen before any image is predicted, so a run that cannot support them fails at once.
"""

from __future__ import annotations

from typing import Any

from toolkit.calibration import apply_crossfit, log_probs
from toolkit.decisions import DECISIONS, Decision, tune_decisions
from toolkit.errors import RunError, UsageError
from toolkit.store import Run
from toolkit.store.tables import probability_arrays
from toolkit.train.results import run_calibration


def run_calibration_for(run: Run, method: str | None, *, record: bool = True) -> dict[str, Any] | None:
    """Head → the run's calibration record (fitted, and recorded unless ``record`` is False, on first use),
    or None when not asked for."""
    if method is None:
        return None
    from toolkit.calibration import METHODS

    if method not in METHODS:
        raise UsageError(f"--calibration {method!r} is not one of {', '.join(METHODS)}", "use temperature or vector")
    return run_calibration(run, record=record)


def run_decision(run: Run, decide: str, calibration: dict[str, Any] | None, method: str | None) -> Decision | None:
    """The decision rule for the run's single head, tuned on its (calibrated, if asked) out-of-fold rows.

    Returns None for ``argmax``.

    Raises:
        UsageError: an unknown rule, or a tuned rule on a multi-head run. RunError: no out-of-fold rows.
    """
    if decide not in DECISIONS:
        raise UsageError(f"--decide {decide!r} is not one of {', '.join(DECISIONS)}", "use argmax or f1")
    if decide == "argmax":
        return None
    heads, classes = run.read_classes()
    if len(heads) > 1:
        raise UsageError(f"--decide {decide}: run {run.id} has several heads ({', '.join(heads)}), whose decision "
                         "is the combined label's",
                         f"compose them and decide there: clsctl ensemble --compose "
                         f"{' '.join(f'{h}={run.id}' for h in heads)} --decide {decide}")
    if not run.has_oof():
        raise RunError(f"--decide {decide}: run {run.id} has no oof.parquet to tune on",
                       "train every fold to the end (k-fold), or predict with --decide argmax")
    head = heads[0]
    probs, labels, folds = probability_arrays(run.read_oof(), heads, classes, what=f"run {run.id}'s out-of-fold table")
    if labels is None:
        raise RunError(f"run {run.id}'s out-of-fold table has no labels", "retrain it")
    p = probs[head]
    if calibration is not None and method is not None:
        p = apply_crossfit(p, folds, calibration[head], method)
    return tune_decisions(log_probs(p), labels[head], folds, classes[head], decide)
