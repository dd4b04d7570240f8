"""Choosing ensemble weights on out-of-fold predictions.

* :func:`fit_weights` — coordinate ascent on the metric: start from equal weights; for each member in
  turn try every value of a fixed grid of relative weights (``WEIGHT_GRID``, 0 to 3) with the others
  held, keep a change only when it strictly improves the metric (soft voting breaks ties by the lower
  log loss, so a plateau of equal scores still moves towards better probabilities); repeat until a
  sweep changes nothing (at most ``sweeps``). Weights are normalized to sum to 1. A grid rather than a
  gradient method because macro-F1 and accuracy are step functions of the weights.
* :func:`greedy_select` — Caruana et al. (2004) forward selection with replacement: repeatedly add
  the member whose addition gives the best metric; the ensemble is the best prefix of that path; a
  member's weight is how often it was picked.
* :func:`bagged_greedy` — the same on ``bags`` random halves of the members, selection counts
  averaged, which keeps one lucky member from taking all the weight.
* :func:`crossfit_labels` — an honest estimate for either: per fold, choose the weights on the
  other folds' rows and vote on the fold's rows.

Scores on the rows the weights were chosen on are optimistic; the cross-fitted score is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolkit.decisions import macro_f1
from toolkit.ensemble.voting import combine, is_labels, member_arrays, normalize_weights
from toolkit.errors import UsageError

METRICS = ("macro_f1", "accuracy")
WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def fast_score(y: np.ndarray, pred: np.ndarray, n_classes: int, metric: str) -> float:
    """Macro-F1 over all ``n_classes`` (:func:`toolkit.decisions.macro_f1`) or accuracy."""
    if metric == "accuracy":
        y = np.asarray(y, dtype=np.int64)
        return float((y == np.asarray(pred, dtype=np.int64)).mean()) if y.size else 0.0
    if metric != "macro_f1":
        raise UsageError(f"--metric {metric!r} is not one of {', '.join(METRICS)}", "use macro_f1 or accuracy")
    return macro_f1(y, pred, n_classes)


class _Objective:
    """Score weight vectors on fixed rows, reusing the members' voting arrays.

    A vote is an argmax of ``Σ w_m · a_m``, so it is summed member by member (no ``[M, N, C]`` stack, which
    for 10 members × 100,000 rows × 500 classes would be 4 GiB) and greedy selection scores each
    candidate as one addition to the running sum of the members picked so far (:meth:`extended`), one
    ``N × C`` pass per candidate instead of one per member. Soft votes read the members' own float32
    probabilities, widened to float64 where they are weighted and summed.
    """

    def __init__(self, kind: str, members: Sequence[np.ndarray], y: np.ndarray, n_classes: int, metric: str) -> None:
        self.kind, self.members, self.y, self.n_classes, self.metric = kind, list(members), y, n_classes, metric
        if kind == "soft" and not any(is_labels(m) for m in self.members):
            self.arrays = [np.asarray(m) for m in self.members]
        elif kind == "rank":
            # Normalized ranks are multiples of 1 / (2 (N - 1)) (average ranks end in .5): scaled to whole
            # numbers their weighted sums are exact, so a tie between classes is a tie whatever the order
            # of summation, and goes to the earlier class.
            scale = 2.0 * max(1, len(y) - 1)
            self.arrays = [np.rint(a * scale) for a in member_arrays(kind, self.members, n_classes)]
        else:
            self.arrays = member_arrays(kind, self.members, n_classes)
        self.rows = np.arange(len(y))

    def total(self, weights: np.ndarray) -> np.ndarray:
        """``Σ weights_m · a_m`` (unnormalized)."""
        raw = np.zeros((len(self.y), self.n_classes))
        for w, array in zip(weights, self.arrays, strict=True):
            if w:
                raw += np.multiply(array, w, dtype=np.float64) if w != 1 else array
        return raw

    def __call__(self, weights: np.ndarray) -> tuple[float, float]:
        weights = np.asarray(weights, dtype=np.float64)
        return self._score(self.total(weights), weights)

    def extended(self, running: np.ndarray, counts: np.ndarray, m: int) -> tuple[float, float]:
        """The score of ``counts`` plus one more of member ``m``, where ``running`` is ``total(counts)``."""
        trial = counts.copy()
        trial[m] += 1
        return self._score(running + self.arrays[m], trial)

    def _score(self, raw: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
        labels = raw.argmax(axis=1)
        if self.kind == "hard":
            self._break_ties(raw, labels, weights)
        value = fast_score(self.y, labels, self.n_classes, self.metric)
        if self.kind != "soft":
            return value, 0.0
        # soft: the tie-breaker is the log loss of the normalized vote, so only the labels' column is divided
        p = np.clip(raw[self.rows, self.y] / weights.sum(), 1e-15, 1.0)
        return value, float(np.log(p).mean())

    def _break_ties(self, raw: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> None:
        """Tied hard votes as :func:`~toolkit.ensemble.voting.combine` breaks them: mean probability, then the earlier class."""
        top = raw.max(axis=1, keepdims=True)
        tied = raw >= top - 1e-9 * weights.sum()  # combine compares shares of normalized weights
        multi = np.flatnonzero(tied.sum(axis=1) > 1)
        if not multi.size:
            return
        keep = [(m, w) for m, w in zip(self.members, weights, strict=True) if not is_labels(m) and w > 0]
        if not keep:
            labels[multi] = tied[multi].argmax(axis=1)
            return
        probs = sum(np.asarray(m)[multi].astype(np.float64) * w for m, w in keep)
        labels[multi] = np.where(tied[multi], probs, -np.inf).argmax(axis=1)


def fit_weights(members: Sequence[np.ndarray], y: np.ndarray, n_classes: int, *, vote: str = "soft",
                metric: str = "macro_f1", grid: Sequence[float] = WEIGHT_GRID, sweeps: int = 10) -> np.ndarray:
    """Weights maximizing ``metric`` on these rows by coordinate ascent over ``grid`` (see the module doc)."""
    objective = _Objective(vote, members, np.asarray(y), n_classes, metric)
    w = np.ones(len(members))
    best = objective(w)
    for _ in range(sweeps):
        changed = False
        for m in range(len(members)):
            for value in grid:
                if value == w[m]:
                    continue
                trial = w.copy()
                trial[m] = value
                if trial.sum() <= 0:
                    continue
                score = objective(trial)
                if score[0] > best[0] + 1e-12 or (abs(score[0] - best[0]) <= 1e-12 and score[1] > best[1] + 1e-12):
                    w, best, changed = trial, score, True
        if not changed:
            break
    return normalize_weights(w, len(members))


def greedy_select(members: Sequence[np.ndarray], y: np.ndarray, n_classes: int, *, vote: str = "soft",
                  metric: str = "macro_f1", steps: int | None = None,
                  allowed: Sequence[int] | None = None) -> tuple[np.ndarray, list[dict[str, Any]], float]:
    """Caruana forward selection with replacement.

    Args:
        members: per member, probabilities ``[N, C]`` (or labels ``[N]`` for hard voting).
        y: true class indices.
        n_classes: number of classes.
        vote: the voting rule the selected ensemble uses.
        metric: ``macro_f1`` or ``accuracy``.
        steps: additions to try at most (default ``max(10, 2 × members)``); the search also stops once
            ``max(3, members)`` additions in a row brought no gain.
        allowed: indices of the members that may be picked (bagging); default all.

    Returns:
        ``(counts, path, score)``: how often each member is in the best prefix, every step
        (``{"step", "member", "score"}``), and the best prefix's score. Ties go to the earlier member.
    """
    objective = _Objective(vote, members, np.asarray(y), n_classes, metric)
    allowed = list(range(len(members))) if allowed is None else list(allowed)
    steps = steps or max(10, 2 * len(members))
    counts = np.zeros(len(members))
    best_counts, best_score = None, -math.inf
    path: list[dict[str, Any]] = []
    patience, stale = max(3, len(allowed)), 0
    running = np.zeros((len(y), n_classes))  # Σ counts_m · a_m of the members picked so far
    for step in range(steps):
        pick, pick_score = None, (-math.inf, -math.inf)
        for m in allowed:
            score = objective.extended(running, counts, m)
            if score > pick_score:
                pick, pick_score = m, score
        counts[pick] += 1
        running += objective.arrays[pick]
        path.append({"step": step + 1, "member": int(pick), "score": float(pick_score[0])})
        if pick_score[0] > best_score + 1e-12:
            best_score, best_counts, stale = pick_score[0], counts.copy(), 0
        else:
            stale += 1
            if stale >= patience:
                break
    return best_counts, path, float(best_score)


def bagged_greedy(members: Sequence[np.ndarray], y: np.ndarray, n_classes: int, *, vote: str = "soft",
                  metric: str = "macro_f1", bags: int = 1, fraction: float = 0.5, seed: int = 0,
                  steps: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Greedy selection on ``bags`` random member subsets; weights = the mean of each bag's normalized counts.

    With ``bags == 1`` the whole library is used (plain greedy selection).

    Returns:
        ``(weights, runs)``: normalized weights and, per bag, ``{"members", "counts", "path", "score"}``.
    """
    if bags < 1:
        raise UsageError(f"--bags {bags} must be 1 or more", "e.g. --bags 20")
    m = len(members)
    rng = np.random.default_rng(seed)
    total = np.zeros(m)
    runs = []
    size = m if bags == 1 else min(m, max(2 if m >= 2 else 1, math.ceil(fraction * m)))
    for _ in range(bags):
        subset = sorted(range(m)) if size == m else sorted(rng.choice(m, size=size, replace=False).tolist())
        counts, path, score = greedy_select(members, y, n_classes, vote=vote, metric=metric, steps=steps,
                                            allowed=subset)
        total += counts / counts.sum()
        runs.append({"members": subset, "counts": counts.astype(int).tolist(), "path": path, "score": score})
    return normalize_weights(total, m), runs


def _fits_float32(member: np.ndarray) -> bool:
    """Whether float64 probabilities are float32 ones widened (as read from ``oof.parquet``).

    The other folds' rows are copied once per fold; such members are copied as float32, which holds the
    very same values in half the memory (1.5 GiB less for ten members × 80,000 rows × 500 classes).
    """
    member = np.asarray(member)
    if member.dtype != np.float64 or member.ndim != 2:
        return False
    return all(np.array_equal(part, part.astype(np.float32)) for part in np.array_split(member, 16))


def crossfit_labels(choose: Callable[[list[np.ndarray], np.ndarray], np.ndarray], members: Sequence[np.ndarray],
                    y: np.ndarray, folds: np.ndarray, vote: str, n_classes: int) -> np.ndarray | None:
    """Labels where each fold's rows are voted with weights chosen on the other folds' rows.

    Returns None when there are fewer than two folds.
    """
    folds = np.asarray(folds)
    ids = [f for f in np.unique(folds) if f >= 0]
    if len(ids) < 2:
        return None
    labels = np.full(len(y), -1, dtype=np.int64)
    narrow = [_fits_float32(mm) for mm in members]
    for f in ids:
        held = folds == f
        rest = [np.asarray(mm)[~held].astype(np.float32) if small else np.asarray(mm)[~held]
                for mm, small in zip(members, narrow, strict=True)]
        weights = choose(rest, np.asarray(y)[~held])
        del rest
        _, lab = combine(vote, [np.asarray(mm)[held] for mm in members], weights, n_classes)
        labels[held] = lab
    rest = labels < 0
    if rest.any():  # rows outside any fold: weights chosen on everything
        weights = choose(list(members), np.asarray(y))
        labels[rest] = combine(vote, [np.asarray(mm)[rest] for mm in members], weights, n_classes)[1]
    return labels
