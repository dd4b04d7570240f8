"""Voting rules over aligned member predictions (pure numpy).

Every rule is a weighted mean of a per-member array, then an argmax:

* **soft**: the members' probabilities.
* **hard**: one-hot of each member's predicted class (a member may be a plain label list); the
  scores are each class's share of the weight. A tie between classes goes to the class with the
  higher weighted mean probability over the members that have probabilities, then to the earlier
  class; the winner of a tie gets ``TIE_EPS`` extra share so the written scores' argmax is the vote.
* **rank**: per class, each member's scores rank-normalized over the samples to [0, 1]
  (``(rank - 1) / (N - 1)``, average ranks for ties), so members with different calibration count
  alike. Written scores are each row divided by its sum (same argmax); they are not probabilities.

Weights are non-negative and normalized to sum to 1; None means equal weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.errors import UsageError

VOTES = ("soft", "hard", "rank")
TIE_EPS = 1e-6


def normalize_weights(weights: Sequence[float] | np.ndarray | None, m: int) -> np.ndarray:
    """Non-negative weights summing to 1 (equal when None).

    Raises:
        UsageError: wrong count, negative or non-finite values, or all zero.
    """
    if weights is None:
        return np.full(m, 1.0 / m)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != m:
        raise UsageError(f"{w.size} weight(s) for {m} member(s)", "give one weight per member, in argument order")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise UsageError(f"weights must be finite and non-negative, got {w.tolist()}", "e.g. --weights 1,2,1")
    if w.sum() <= 0:
        raise UsageError("the weights are all zero", "give at least one member a positive weight")
    return w / w.sum()


def is_labels(member: np.ndarray) -> bool:
    """A member given as class indices ``[N]`` rather than scores ``[N, C]``."""
    return np.asarray(member).ndim == 1


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), n_classes), dtype=np.float64)
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return out


def rank_normalize(scores: np.ndarray) -> np.ndarray:
    """Per column, ranks over the rows scaled to [0, 1] (average ranks for ties)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if n == 1:
        return np.full_like(scores, 0.5)
    return (rankdata(scores, axis=0, method="average") - 1.0) / (n - 1)


def member_arrays(kind: str, members: Sequence[np.ndarray], n_classes: int) -> list[np.ndarray]:
    """What each rule averages: probabilities (soft), one-hot votes (hard) or normalized ranks (rank)."""
    if kind not in VOTES:
        raise UsageError(f"--vote {kind!r} is not one of {', '.join(VOTES)}", "use soft, hard or rank")
    if kind != "hard" and any(is_labels(m) for m in members):
        raise UsageError(f"a member given as labels only (a submission CSV) supports hard voting, not {kind}",
                         "use --vote hard, or give that member's probabilities")
    if kind == "soft":
        # float32 members stay as they are (a float64 copy beside each of ten 100,000 × 500 members would be
        # 4 GiB more): every sum over them widens each value first, which is exact
        return [_probabilities(m) for m in members]
    if kind == "rank":
        return [rank_normalize(m) for m in members]
    return [one_hot(m if is_labels(m) else np.asarray(m).argmax(axis=1), n_classes) for m in members]


def _probabilities(member: np.ndarray) -> np.ndarray:
    member = np.asarray(member)
    return member if member.dtype == np.float32 else np.asarray(member, dtype=np.float64)


def _tie_probs(members: Sequence[np.ndarray], w: np.ndarray) -> np.ndarray | None:
    keep = [(m, wi) for m, wi in zip(members, w, strict=True) if not is_labels(m) and wi > 0]
    if not keep:
        return None
    total = sum(wi for _, wi in keep)
    return sum(np.asarray(m, dtype=np.float64) * wi for m, wi in keep) / total


def _weighted_sum(w: np.ndarray, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``Σ w_m · a_m`` member by member: stacking first would hold every member twice (4 GiB more for
    ten members × 100,000 rows × 500 classes)."""
    raw = np.zeros(np.shape(arrays[0]), dtype=np.float64)
    term = np.empty_like(raw)
    for wi, array in zip(w, arrays, strict=True):
        if wi:
            np.multiply(array, wi, out=term, dtype=np.float64)  # float64 products of float32 members too
            raw += term
    return raw


def combine(kind: str, members: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray | None = None,
            n_classes: int | None = None, arrays: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vote.

    Args:
        kind: ``soft``, ``hard`` or ``rank``.
        members: per member, probabilities ``[N, C]`` or (hard only) class indices ``[N]``.
        weights: one per member (normalized here); None = equal.
        n_classes: needed when every member is a label list.
        arrays: :func:`member_arrays` precomputed (selection loops reuse them).

    Returns:
        ``(scores [N, C], labels [N])``; rows of ``scores`` sum to 1 and their argmax is ``labels``.
    """
    if not members:
        raise UsageError("no members to vote", "pass at least one run or prediction file")
    if n_classes is None:
        n_classes = next(np.asarray(m).shape[1] for m in members if not is_labels(m))
    w = normalize_weights(weights, len(members))
    arrays = arrays if arrays is not None else member_arrays(kind, members, n_classes)
    raw = _weighted_sum(w, arrays)  # [N, C]
    if kind == "hard":
        labels = raw.argmax(axis=1)
        top = raw.max(axis=1, keepdims=True)
        tied = raw >= top - 1e-9
        multi = tied.sum(axis=1) > 1
        if multi.any():
            probs = _tie_probs(members, w)
            if probs is not None:
                labels[multi] = np.where(tied[multi], probs[multi], -np.inf).argmax(axis=1)
            else:
                labels[multi] = tied[multi].argmax(axis=1)
            scores = raw.copy()
            scores[np.flatnonzero(multi), labels[multi]] += TIE_EPS
            scores /= scores.sum(axis=1, keepdims=True)
            return scores, labels
        return raw, labels
    labels = raw.argmax(axis=1)
    if kind == "rank":
        sums = raw.sum(axis=1, keepdims=True)
        scores = np.divide(raw, sums, out=np.full_like(raw, 1.0 / raw.shape[1]), where=sums > 0)
        return scores, labels
    return raw, labels


def soft_vote(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of probabilities ``[N, C]``."""
    return combine("soft", probs, weights)[0]


def hard_vote(members: Sequence[np.ndarray], weights: Sequence[float] | None = None,
              n_classes: int | None = None) -> np.ndarray:
    """Weighted majority class per row (ties: higher mean probability, then the earlier class)."""
    return combine("hard", members, weights, n_classes)[1]


def rank_average(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of per-class rank-normalized scores ``[N, C]`` (not row-normalized)."""
    n_classes = np.asarray(probs[0]).shape[1]
    w = normalize_weights(weights, len(probs))
    return np.tensordot(w, np.stack(member_arrays("rank", probs, n_classes)), axes=1)
