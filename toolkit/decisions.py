"""Decisions tuned for macro-F1: per-class offsets added to log-probabilities, honestly validated.

The argmax of the probabilities maximizes expected accuracy, not macro-F1: a rare class usually
wins more F1 than it loses when it is predicted a little more often. The rule here predicts
``argmax_c(log p_c + b_c)``; the offsets ``b`` (one per class) are chosen on out-of-fold rows by
coordinate ascent:

* start from ``b = 0`` (the argmax);
* for each class in turn, with the other offsets held, try every value of a fixed grid
  (``OFFSET_GRID``, -3 to 3 in steps of 0.1, natural-log units) and keep the best macro-F1; a change
  is kept only when it is strictly better, and among equal scores the value nearest 0 wins;
* repeat until a sweep changes nothing (at most ``sweeps``).

Offsets chosen on rows and scored on the same rows always look better. :func:`tune_decisions` therefore
cross-fits: each fold's rows are decided with offsets chosen on the other folds' rows, and the gain is
that score minus the cross-fitted argmax's. When it is not positive the offsets are refused (the rule
stays the argmax) and a note says why. Macro-F1 counts every class of the list, present or not, as
:func:`toolkit.metrics.classification_metrics` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.errors import DataError, UsageError

__all__ = [
    "DECISIONS",
    "OFFSET_GRID",
    "Decision",
    "apply_offsets",
    "crossfit_offsets",
    "fit_offsets",
    "macro_f1",
    "tune_decisions",
]

DECISIONS = ("argmax", "f1")
OFFSET_GRID = tuple(round(v, 1) for v in np.arange(-3.0, 3.0001, 0.1))
FoldScores = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro-F1 over all ``n_classes`` (a class with no true and no predicted row scores 0)."""
    pred = np.asarray(pred, dtype=np.int64)
    return float(_macro_f1_many(np.asarray(y, dtype=np.int64), pred[None, :], n_classes)[0])


def _macro_f1_many(y: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 of each row of ``preds`` ``[G, N]`` against ``y`` in one pass.

    F1 needs per class only the hits, the predicted count and the true count (2tp / (2tp + fp + fn) =
    2tp / (predicted + true)), so no G × C × C confusion array is built: O(G·N + G·C).
    """
    g = preds.shape[0]
    codes = np.arange(g)[:, None] * n_classes + preds
    predicted = np.bincount(codes.ravel(), minlength=g * n_classes).reshape(g, n_classes)
    tp = np.bincount(codes[preds == y[None, :]], minlength=g * n_classes).reshape(g, n_classes).astype(np.float64)
    denom = predicted + np.bincount(y, minlength=n_classes)[None, :]
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean(axis=1)


def apply_offsets(log_p: np.ndarray, offsets: np.ndarray | Sequence[float] | None) -> np.ndarray:
    """The decided class per row: ``argmax(log p + offsets)`` (plain argmax when ``offsets`` is None)."""
    z = np.asarray(log_p, dtype=np.float64)
    if offsets is None:
        return z.argmax(axis=1)
    b = np.asarray(offsets, dtype=np.float64)
    if b.shape != (z.shape[1],):
        raise DataError(f"{b.size} offsets for {z.shape[1]} classes", "fit the offsets on the same classes")
    return (z + b).argmax(axis=1)


def fit_offsets(log_p: np.ndarray, y: np.ndarray, *, grid: Sequence[float] = OFFSET_GRID,
                sweeps: int = 4) -> np.ndarray:
    """Offsets maximizing macro-F1 of ``argmax(log p + b)`` on these rows (see the module doc)."""
    z = np.asarray(log_p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, c = z.shape
    values = np.asarray(sorted(set(grid) | {0.0}), dtype=np.float64)
    nearest_zero = np.argsort(np.abs(values), kind="stable")  # equal scores: the smallest move wins
    b = np.zeros(c)
    if n == 0:
        return b
    best = macro_f1(y, apply_offsets(z, b), c)
    shifted = z + b
    top = _Top2(shifted)
    for _ in range(sweeps):
        changed = False
        for k in range(c):
            other_best, other_label = top.without(k)
            wins = (z[None, :, k] + values[:, None]) > other_best[None, :]  # [G, N]
            preds = np.where(wins, k, other_label[None, :])
            scores = _macro_f1_many(y, preds, c)
            peak = scores[nearest_zero].max()
            if peak > best + 1e-12:
                pick = nearest_zero[np.flatnonzero(scores[nearest_zero] >= peak - 1e-12)[0]]
                b[k], best, changed = values[pick], float(peak), True
                top.set_column(k, z[:, k] + b[k])
        if not changed:
            break
    return b


class _Top2:
    """Per row, the best and second-best entries of a score matrix ``[N, C]``, kept as columns change.

    ``i1`` is ``argmax`` of the row and ``i2`` the ``argmax`` of the row with column ``i1`` set to -inf
    (``v1``, ``v2`` their values), so that the argmax and max of the row without column ``k`` are
    ``(i1, v1)`` when ``k != i1`` and ``(i2, v2)`` otherwise — exactly what setting column ``k`` to -inf and
    calling ``argmax``/``max`` gives, ties to the lowest index and NaN first included. Changing one
    column costs O(N), plus O(C) for each row whose second best may have to come from elsewhere.
    """

    def __init__(self, scores: np.ndarray):
        self.scores = scores
        self.unordered = np.isnan(scores).any(axis=1)  # NaN rows: always rebuilt from the row
        n = scores.shape[0]
        self.i1 = np.zeros(n, dtype=np.int64)
        self.i2 = np.zeros(n, dtype=np.int64)
        self.v1 = np.zeros(n)
        self.v2 = np.zeros(n)
        self._rebuild(np.arange(n))

    def _rebuild(self, rows: np.ndarray) -> None:
        sub = self.scores[rows]  # a copy
        at = np.arange(len(rows))
        i1 = sub.argmax(axis=1)
        v1 = sub[at, i1]
        sub[at, i1] = -np.inf
        i2 = sub.argmax(axis=1)
        self.i1[rows], self.v1[rows], self.i2[rows], self.v2[rows] = i1, v1, i2, sub[at, i2]

    def without(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(max, argmax)`` per row of the scores with column ``k`` left out (set to -inf)."""
        first = self.i1 != k
        return np.where(first, self.v1, self.v2), np.where(first, self.i1, self.i2)

    def set_column(self, k: int, new: np.ndarray) -> None:
        old = self.scores[:, k].copy()
        self.scores[:, k] = new
        i1, i2, v1, v2 = self.i1, self.i2, self.v1, self.v2
        # (new, k) ranks before (v, i): a larger value, or the same value and a lower index.
        beats1 = (new > v1) | ((new == v1) & (k < i1))
        beats2 = (new > v2) | ((new == v2) & (k < i2))
        was1, was2 = i1 == k, (i2 == k) & (i1 != k)
        # Rows rebuilt from scratch: NaN rows; rows whose second best is -inf (there i2 is 0, argmax of an
        # all -inf row, not an order); k first and now behind the second; k second and lower than before.
        rebuild = self.unordered | (v2 == -np.inf) | (was1 & ~beats2) | (was2 & ~beats1 & (new < old))
        keep = ~rebuild
        stay1 = keep & was1  # still first
        up = keep & was2 & beats1  # second to first
        stay2 = keep & was2 & ~beats1  # still second, not lower
        other = keep & ~was1 & ~was2
        into1, into2 = other & beats1, other & ~beats1 & beats2
        v1[stay1] = new[stay1]
        v2[stay2] = new[stay2]
        i2[up], v2[up] = i1[up], v1[up]
        i1[up], v1[up] = k, new[up]
        i2[into1], v2[into1] = i1[into1], v1[into1]
        i1[into1], v1[into1] = k, new[into1]
        i2[into2], v2[into2] = k, new[into2]
        rows = np.flatnonzero(rebuild)
        if rows.size:
            self._rebuild(rows)


def crossfit_offsets(log_p: np.ndarray, y: np.ndarray, folds: np.ndarray, *,
                     fold_scores: FoldScores | None = None,
                     fit: Callable[[np.ndarray, np.ndarray], np.ndarray] = fit_offsets
                     ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]] | None:
    """Per fold: offsets chosen on the other folds' rows, decisions on the fold's rows.

    Args:
        log_p: log-probabilities ``[N, C]`` (used when ``fold_scores`` is None).
        y: true class indices.
        folds: fold per row; rows with a negative fold are left to the argmax.
        fold_scores: ``held -> (log_p of the other rows, log_p of the held rows)`` when the scores
            themselves depend on the held fold (ensemble weights chosen without it).
        fit: how offsets are chosen.

    Returns:
        ``(tuned labels, argmax labels, per fold [{"fold", "offsets", "argmax", "tuned"}])`` — both label
        arrays from the same per-fold scores — or None with fewer than two folds.
    """
    y = np.asarray(y, dtype=np.int64)
    folds = np.asarray(folds)
    fold_ids = [f for f in np.unique(folds) if f >= 0]
    if len(fold_ids) < 2:
        return None
    z = np.asarray(log_p, dtype=np.float64)
    n_classes = z.shape[1]
    tuned = z.argmax(axis=1)
    plain = tuned.copy()
    per_fold = []
    for f in fold_ids:
        held = folds == f
        train_z, held_z = fold_scores(held) if fold_scores is not None else (z[~held], z[held])
        offsets = fit(train_z, y[~held])
        tuned[held] = apply_offsets(held_z, offsets)
        plain[held] = held_z.argmax(axis=1)
        per_fold.append({"fold": int(f), "offsets": offsets.tolist(),
                         "argmax": macro_f1(y[held], plain[held], n_classes),
                         "tuned": macro_f1(y[held], tuned[held], n_classes)})
    return tuned, plain, per_fold


@dataclass
class Decision:
    """A decision rule and the evidence for it (``summary()`` is what ``summary.json`` records).

    ``rule`` is ``argmax`` or ``f1_offsets``; ``offsets`` is None for the argmax. The ``crossfit_*`` scores
    are macro-F1 of decisions made without the scored fold; ``in_sample_*`` are on the fitting rows.
    """

    requested: str
    rule: str
    classes: list[str]
    offsets: np.ndarray | None = None
    candidate: np.ndarray | None = None  # the offsets fitted on every row, kept or refused
    crossfit_argmax: float | None = None
    crossfit_tuned: float | None = None
    in_sample_argmax: float | None = None
    in_sample_tuned: float | None = None
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None
    crossfit_labels: np.ndarray | None = field(default=None, repr=False)  # tuned, each fold without itself
    crossfit_argmax_labels: np.ndarray | None = field(default=None, repr=False)  # the same folds' argmax

    @property
    def gain(self) -> float | None:
        if self.crossfit_tuned is None or self.crossfit_argmax is None:
            return None
        return self.crossfit_tuned - self.crossfit_argmax

    def decide(self, log_p: np.ndarray) -> np.ndarray:
        """The class each row is decided as under this rule."""
        return apply_offsets(log_p, self.offsets)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.requested, "rule": self.rule,
                               "offsets": None if self.offsets is None else
                               dict(zip(self.classes, (float(v) for v in self.offsets), strict=True))}
        if self.requested != "argmax":
            out.update({
                "metric": "macro_f1", "crossfit_argmax": self.crossfit_argmax, "crossfit_tuned": self.crossfit_tuned,
                "crossfit_gain": self.gain, "in_sample_argmax": self.in_sample_argmax,
                "in_sample_tuned": self.in_sample_tuned, "in_sample_gain":
                None if self.in_sample_tuned is None else self.in_sample_tuned - self.in_sample_argmax,
                "fitted_offsets": None if self.candidate is None else
                dict(zip(self.classes, (float(v) for v in self.candidate), strict=True)),
                "per_fold": self.per_fold, "note": self.note})
        return out


def tune_decisions(log_p: np.ndarray, y: np.ndarray, folds: np.ndarray | None, classes: Sequence[str],
                   decide: str = "f1", *, fold_scores: FoldScores | None = None) -> Decision:
    """Choose the decision rule on out-of-fold rows.

    Args:
        log_p: log-probabilities ``[N, C]`` of the rows the rule is fitted on (every row).
        y: true class indices.
        folds: fold per row, for the cross-fitted check.
        classes: class names (for the record).
        decide: ``argmax`` (nothing is fitted) or ``f1`` (per-class offsets for macro-F1).
        fold_scores: see :func:`crossfit_offsets`.

    Returns:
        The decision: offsets kept only when the cross-fitted gain over the argmax is positive; otherwise
        the argmax, with a note.

    Raises:
        UsageError: ``decide`` is unknown.
    """
    if decide not in DECISIONS:
        raise UsageError(f"--decide {decide!r} is not one of {', '.join(DECISIONS)}", "use argmax or f1")
    names = [str(c) for c in classes]
    if decide == "argmax":
        return Decision(requested="argmax", rule="argmax", classes=names)
    z = np.asarray(log_p, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n_classes = z.shape[1]
    candidate = fit_offsets(z, y)
    out = Decision(requested="f1", rule="argmax", classes=names, candidate=candidate,
                   in_sample_argmax=macro_f1(y, z.argmax(axis=1), n_classes),
                   in_sample_tuned=macro_f1(y, apply_offsets(z, candidate), n_classes))
    crossed = None if folds is None else crossfit_offsets(z, y, folds, fold_scores=fold_scores)
    if crossed is None:
        out.note = "offsets refused: fewer than two folds, so their gain cannot be measured on rows they were not fitted on"
        return out
    tuned, plain, out.per_fold = crossed
    out.crossfit_labels, out.crossfit_argmax_labels = tuned, plain
    out.crossfit_tuned = macro_f1(y, tuned, n_classes)
    out.crossfit_argmax = macro_f1(y, plain, n_classes)
    gain = out.gain
    if gain is not None and gain > 1e-12:
        out.rule, out.offsets = "f1_offsets", candidate
        out.note = (f"f1 offsets kept: cross-fitted macro_f1 {out.crossfit_tuned:.4f} vs argmax "
                    f"{out.crossfit_argmax:.4f} ({gain:+.4f})")
    else:
        out.note = (f"f1 offsets refused: cross-fitted macro_f1 {out.crossfit_tuned:.4f} vs argmax "
                    f"{out.crossfit_argmax:.4f} ({gain:+.4f}); the submission uses the argmax")
    return out
