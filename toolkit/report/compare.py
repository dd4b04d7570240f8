"""Is a difference between two runs real? Recipe diffs and paired intervals on shared OOF rows.

Two intervals are computed for the delta of a metric (new − baseline), both paired, both 95%:

* **Fold-paired**: the metric of each shared fold, new minus baseline, and a t interval over the
  fold deltas with the Nadeau–Bengio correction (Machine Learning 52, 2003): k-fold training sets
  overlap, so the fold deltas are correlated and the plain t interval is too narrow; the
  corrected standard error is ``sd · sqrt(1/k + n_test/n_train)``, with ``n_test/n_train = 1/(k−1)``
  for k folds.
* **Paired bootstrap** over the shared OOF rows: resample the rows with replacement, score both
  runs on the same resample, take the 2.5 and 97.5 percentiles of the delta. It measures how
  much the rows alone can move the number; it knows nothing of the noise between trainings,
  which is why the fold interval is shown next to it.

The verdict is ``better`` or ``worse`` only when every interval there is lies wholly on one side of
zero, else ``within noise``: a gain one interval cannot tell from zero is not called real.

Rows are shared when both runs scored the same id with the same given label; folds are shared when
the shared rows sit in the same fold in both runs (the same split). Scores on resamples are
computed from weighted confusion counts, the definitions of :mod:`toolkit.metrics` (every class
counts in macro-F1; balanced accuracy over the classes present), so the point delta equals the
delta of the runs' own numbers on the shared rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from toolkit.errors import UsageError
from toolkit.metrics import LOG_LOSS_EPS, metric_direction

__all__ = [
    "BOOTSTRAP_METRICS",
    "Interval",
    "Paired",
    "Significance",
    "compare_paired",
    "flatten_recipe",
    "recipe_diff",
]

Verdict = Literal["better", "worse", "within noise"]

#: Metrics the intervals can score from OOF rows (``val_loss`` is scored as ``log_loss``).
BOOTSTRAP_METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "log_loss")
# Keys that name or describe a recipe without changing what it trains.
_LABEL_KEYS = frozenset({"name", "description"})
_CHUNK = 64  # resamples scored at once: bounds memory at _CHUNK × rows weights


# --------------------------------------------------------------------------- recipe diffs
def flatten_recipe(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys → values of a nested recipe mapping (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in recipe.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_recipe(value, dotted + "."))
        elif isinstance(value, Mapping):
            out[dotted] = {}
        else:
            out[dotted] = value
    return out


def recipe_diff(baseline: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The keys whose values differ, as ``(key, old, new)``; a key one side lacks has ``None`` there.

    Both sides are flat (:func:`flatten_recipe`); ``name`` and ``description`` are left out.
    """
    keys = sorted(set(baseline) | set(new))
    return [(k, baseline.get(k), new.get(k)) for k in keys
            if k not in _LABEL_KEYS and baseline.get(k) != new.get(k)]


# --------------------------------------------------------------------------- paired intervals
@dataclass(frozen=True)
class Interval:
    """A delta (new − baseline) with its 95% interval; ``n`` folds or rows behind it."""

    delta: float
    low: float
    high: float
    n: int

    def side(self, direction: str) -> int:
        """+1 when the interval lies wholly on the improving side of 0, −1 wholly on the other, else 0."""
        sign = 1.0 if direction == "max" else -1.0
        lo, hi = sorted((sign * self.low, sign * self.high))
        return 1 if lo > 0 else -1 if hi < 0 else 0


@dataclass(frozen=True)
class Paired:
    """Two runs' OOF rows aligned: given labels, both runs' probabilities, and each row's fold (or -1)."""

    labels: np.ndarray
    base: np.ndarray
    new: np.ndarray
    folds: np.ndarray | None  # None when the runs split the rows differently

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Significance:
    """The verdict on one run against its baseline."""

    metric: str
    scored_as: str
    rows: int
    folds: Interval | None
    bootstrap: Interval | None
    verdict: Verdict
    note: str = ""

    @property
    def delta(self) -> float | None:
        """The delta on the shared rows (``nan`` when none)."""
        source = self.bootstrap or self.folds
        return None if source is None else source.delta

    def to_json(self) -> dict[str, Any]:
        def part(i: Interval | None) -> dict[str, float] | None:
            return None if i is None else {"delta": i.delta, "low": i.low, "high": i.high, "n": i.n}
        return {"metric": self.metric, "scored_as": self.scored_as, "rows": self.rows, "folds": part(self.folds),
                "bootstrap": part(self.bootstrap), "verdict": self.verdict, "note": self.note}


class _Scorer:
    """One run's rows, ready to be scored under many resample weights.

    The per-class sums are products of the weights with sparse one-hot matrices built once:
    ``O(B·N)`` per chunk of ``B`` resamples whatever the number of classes.
    """

    def __init__(self, metric: str, labels: np.ndarray, probs: np.ndarray) -> None:
        from scipy import sparse

        self.metric = metric
        n, n_classes = probs.shape
        rows = np.arange(n)
        if metric == "log_loss":
            # OOF rows are normalised probabilities; the clip only guards log(0).
            self.losses = -np.log(np.clip(probs[rows, labels], LOG_LOSS_EPS, 1.0))
            return
        pred = probs.argmax(axis=1)
        self.hit = (pred == labels).astype(np.float64)

        def onehot(index: np.ndarray, values: np.ndarray) -> Any:
            return sparse.csc_matrix((values, (rows, index)), shape=(n, n_classes))

        self.support = onehot(labels, np.ones(n))
        self.true_pos = onehot(labels, self.hit)
        self.predicted = onehot(pred, np.ones(n))

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """The metric for each row of ``weights`` (``[B, N]`` counts of each row in a resample)."""
        total = weights.sum(axis=1)
        if self.metric == "log_loss":
            return (weights @ self.losses) / total
        if self.metric == "accuracy":
            return (weights @ self.hit) / total
        support = np.asarray((self.support.T @ weights.T).T)
        true_pos = np.asarray((self.true_pos.T @ weights.T).T)
        if self.metric == "balanced_accuracy":
            present = support > 0
            recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=present)
            return recall.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
        denom = support + np.asarray((self.predicted.T @ weights.T).T)
        f1 = np.divide(2.0 * true_pos, denom, out=np.zeros_like(true_pos), where=denom > 0)
        return f1.mean(axis=1)  # every class counts, as in toolkit.metrics


def score(metric: str, labels: np.ndarray, probs: np.ndarray) -> float:
    """The metric of one run on its rows (every row once)."""
    return float(_Scorer(metric, labels, probs)(np.ones((1, labels.shape[0])))[0])


def _fold_interval(metric: str, pair: Paired, split_folds: int | None) -> Interval | None:
    if pair.folds is None:
        return None
    folds = np.unique(pair.folds[pair.folds >= 0])
    deltas = []
    for k in folds:
        rows = pair.folds == k
        deltas.append(score(metric, pair.labels[rows], pair.new[rows]) - score(metric, pair.labels[rows], pair.base[rows]))
    if len(deltas) < 2:
        return None
    from scipy import stats

    d = np.asarray(deltas)
    k = d.shape[0]
    # n_test / n_train is a property of the split (1 / (K - 1) for K folds), not of how many of its
    # folds both runs trained.
    split = max(k, split_folds or k)
    se = d.std(ddof=1) * math.sqrt(1.0 / k + 1.0 / (split - 1))
    half = float(stats.t.ppf(0.975, k - 1) * se)
    mean = float(d.mean())
    return Interval(mean, mean - half, mean + half, k)


def _bootstrap_interval(metric: str, pair: Paired, resamples: int, seed: int) -> Interval:
    n = pair.rows
    rng = np.random.default_rng(seed)
    score_new = _Scorer(metric, pair.labels, pair.new)
    score_base = _Scorer(metric, pair.labels, pair.base)
    deltas = []
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b)[:, None] * n)
        weights = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        deltas.append(score_new(weights) - score_base(weights))
    d = np.concatenate(deltas)
    point = score(metric, pair.labels, pair.new) - score(metric, pair.labels, pair.base)
    low, high = np.percentile(d, [2.5, 97.5])
    return Interval(point, float(low), float(high), n)


def compare_paired(metric: str, pair: Paired, *, resamples: int = 1000, seed: int = 0,
                   split_folds: int | None = None) -> Significance:
    """The fold-paired and bootstrap intervals of ``new − base`` and the verdict.

    Args:
        metric: A selection metric; ``val_loss`` is scored as ``log_loss`` (OOF rows hold no loss).
        pair: The aligned rows.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling (the same seed gives the same interval).
        split_folds: Folds of the split the runs were trained on (default: the shared folds).

    Returns:
        The significance; ``within noise`` with a note when there are no shared rows.
    """
    scored_as = "log_loss" if metric == "val_loss" else metric
    if scored_as not in BOOTSTRAP_METRICS:
        scored_as = "macro_f1"
    direction = metric_direction(scored_as)
    if pair.rows == 0:
        return Significance(metric, scored_as, 0, None, None, "within noise", "no shared rows")
    if resamples < 1:
        raise UsageError(f"--resamples {resamples} must be at least 1", "e.g. --resamples 1000")
    folds = _fold_interval(scored_as, pair, split_folds)
    boot = _bootstrap_interval(scored_as, pair, resamples, seed)
    sides = {i.side(direction) for i in (folds, boot) if i is not None}
    verdict: Verdict = "better" if sides == {1} else "worse" if sides == {-1} else "within noise"
    note = "" if folds is not None else "rows split differently, no fold interval" if pair.folds is None else \
        "one shared fold, no fold interval"
    return Significance(metric, scored_as, pair.rows, folds, boot, verdict, note)


def align(base: Any, new: Any, classes: Sequence[str], *, label: str = "label", prefix: str = "") -> Paired:
    """Align two OOF frames on ``id`` (rows both scored with the same given label).

    Args:
        base: The baseline's OOF frame (``id``, ``fold``, ``label`` and one column per class).
        new: The other run's OOF frame.
        classes: The class columns, in order (the same in both runs).
        label: The label column (``label:<head>`` in multi-head runs).
        prefix: Prefix of the class columns (``<head>:`` in multi-head runs).

    Returns:
        The aligned rows; ``folds`` is None when a shared row sits in different folds.
    """
    cols = [f"{prefix}{c}" for c in classes]
    has_folds = "fold" in base.columns and "fold" in new.columns
    index = {c: i for i, c in enumerate(classes)}
    ids_a, ids_b = base["id"].astype(str), new["id"].astype(str)
    if len(ids_a) == len(ids_b) and ids_a.is_unique and bool((ids_a.to_numpy() == ids_b.to_numpy()).all()):
        # The common case (runs of one manifest): rows already in the same order, no join needed.
        same = (base[label].astype(str).to_numpy() == new[label].astype(str).to_numpy())
        labels = base[label].astype(str).map(index)
        keep = same & labels.notna().to_numpy()
        fa = base["fold"].to_numpy()[keep] if has_folds else None
        fb = new["fold"].to_numpy()[keep] if has_folds else None
        return Paired(labels.to_numpy()[keep].astype(np.int64), base[cols].to_numpy(dtype=np.float64)[keep],
                      new[cols].to_numpy(dtype=np.float64)[keep],
                      fa.astype(np.int64) if fa is not None and np.array_equal(fa, fb) else None)
    keep_cols = ["id", label, *cols] + (["fold"] if has_folds else [])
    a = base[keep_cols].drop_duplicates("id")
    b = new[keep_cols].drop_duplicates("id")
    joined = a.merge(b, on="id", suffixes=("_a", "_b"))
    joined = joined[joined[f"{label}_a"].astype(str) == joined[f"{label}_b"].astype(str)]
    labels = joined[f"{label}_a"].astype(str).map(index)
    joined = joined[labels.notna()]
    labels = labels[labels.notna()].to_numpy(dtype=np.int64)
    base_p = joined[[f"{c}_a" for c in cols]].to_numpy(dtype=np.float64)
    new_p = joined[[f"{c}_b" for c in cols]].to_numpy(dtype=np.float64)
    folds = None
    if has_folds:
        fa = joined["fold_a"].to_numpy()
        fb = joined["fold_b"].to_numpy()
        if np.array_equal(fa, fb):
            folds = fa.astype(np.int64)
    return Paired(labels, base_p, new_p, folds)
