"""Classification metrics, the selection-metric registry, and cross-validation summaries.

Everything here is numpy + ``sklearn.metrics``; results are plain Python numbers, lists and
dicts, ready for ``summary.json``.

Choices that change numbers:

* **Every class of the class list counts.** Per-class scores, the confusion matrix and
  macro-F1 use ``labels=range(C)``. A class with no true and no predicted sample in the
  evaluated set gets precision = recall = F1 = 0 (``zero_division=0``), so macro-F1 always
  divides by ``C``: a model is never rewarded for a class the validation fold happens to lack,
  and scores of folds stay on one scale. Keep every class in every fold (stratified splits do).
* **Balanced accuracy** is sklearn's: the mean recall over the classes present in ``y_true``
  (recall is undefined for a class with no true sample).
* **Log loss** clips probabilities to ``[1e-15, 1]`` and renormalizes each row before sklearn
  scores it, so a confident miss costs a large finite amount instead of infinity.
* **CV std** is the sample standard deviation (``ddof=1``) when there are two folds or more —
  folds are a sample of the possible splits — and 0.0 for a single fold (``n`` says how many).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn import metrics as skm

from toolkit.errors import DataError, RecipeError

__all__ = [
    "METRICS",
    "Metric",
    "classification_metrics",
    "combine_indices",
    "combined_probabilities",
    "cv_summary",
    "is_better",
    "list_metrics",
    "metric_direction",
    "multihead_metrics",
]

LOG_LOSS_EPS = 1e-15


# --------------------------------------------------------------------------------------------
# Selection metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A metric that can select the best checkpoint (``train.metric``)."""

    name: str
    direction: Literal["max", "min"]
    help: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("macro_f1", "max", "mean F1 over all classes"),
        Metric("accuracy", "max", "fraction of correct predictions"),
        Metric("balanced_accuracy", "max", "mean recall over the classes present"),
        Metric("log_loss", "min", "cross-entropy of the predicted probabilities"),
        Metric("val_loss", "min", "the training loss on the validation set"),
    )
}


def list_metrics() -> list[str]:
    """The names ``train.metric`` accepts, sorted."""
    return sorted(METRICS)


def metric_direction(name: str) -> Literal["max", "min"]:
    """``"max"`` if a larger value of ``name`` is better, ``"min"`` if a smaller one is.

    Raises:
        RecipeError: ``name`` is not a selection metric (the message lists the valid ones).
    """
    try:
        return METRICS[name].direction
    except KeyError:
        raise RecipeError(f"unknown train.metric {name!r}", f"choose one of: {', '.join(list_metrics())}") from None


def is_better(name: str, new: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether ``new`` improves on ``best`` for metric ``name`` by more than ``min_delta``.

    A first value (``best`` None or NaN) always improves; a NaN ``new`` never does.
    """
    direction = metric_direction(name)
    if new is None or math.isnan(new):
        return False
    if best is None or math.isnan(best):
        return True
    return new > best + min_delta if direction == "max" else new < best - min_delta


# --------------------------------------------------------------------------------------------
# Classification metrics
# --------------------------------------------------------------------------------------------


def _as_labels(y: Any, n_classes: int, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"{what} must be one class index per sample, got shape {arr.shape}",
                        "pass integer class indices, not names or one-hot rows")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.number) and bool(np.all(np.mod(arr, 1) == 0)))
    if arr.size and not integral:
        raise DataError(f"{what} must be integer class indices, got dtype {arr.dtype}",
                        "encode labels with their index in the class list")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n_classes)]
    if bad.size:
        raise DataError(f"{what} holds class index {int(bad[0])} outside 0..{n_classes - 1}",
                        "the class list must cover every label")
    return arr


LOG_LOSS_ROWS = 4096  # rows widened at a time: 16 MB at 500 classes


def _log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's ``log_loss`` of ``probs`` clipped to ``[LOG_LOSS_EPS, 1]`` and renormalized per row,
    bit for bit, without its ``[N, C]`` copies.

    scikit-learn one-hot encodes the labels and takes ``xlogy`` of every cell: five float64 copies
    of the table (2 GB for 100,000 rows × 500 classes) for one nonzero term per row. Here only the
    true class's probability is divided by its row's clipped sum, then clipped to ``[eps, 1 - eps]``
    and logged as scikit-learn does, a block of rows at a time.
    """
    n = len(y)
    picked = np.empty(n, dtype=np.float64)
    for start in range(0, n, LOG_LOSS_ROWS):
        block = np.clip(probs[start:start + LOG_LOSS_ROWS].astype(np.float64), LOG_LOSS_EPS, 1.0)
        rows = np.arange(len(block))
        picked[start:start + len(block)] = block[rows, y[start:start + len(block)]] / block.sum(axis=1)
    eps = np.finfo(np.float64).eps
    return float(np.average(-np.log(np.clip(picked, eps, 1 - eps))))


def _split_pred(y_pred_or_probs: Any, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    arr = np.asarray(y_pred_or_probs)
    if arr.ndim == 2:
        if arr.shape != (n, n_classes):
            raise DataError(f"probabilities have shape {arr.shape}, expected ({n}, {n_classes})",
                            "one row per sample and one column per class, in class order")
        if not np.all(np.isfinite(arr)):
            raise DataError("probabilities contain NaN or infinity", "check the model outputs")
        return arr.argmax(axis=1).astype(np.int64), arr
    pred = _as_labels(arr, n_classes, "predictions")
    if pred.shape[0] != n:
        raise DataError(f"{pred.shape[0]} predictions for {n} true labels", "pass one prediction per sample")
    return pred, None


def classification_metrics(y_true: Any, y_pred_or_probs: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Scores of single-label predictions over a fixed class list.

    Args:
        y_true: true class indices ``[N]``.
        y_pred_or_probs: predicted class indices ``[N]``, or probabilities ``[N, C]`` (then the
            prediction is the argmax and ``log_loss`` is added).
        classes: class names in index order; all of them are scored, present or not.

    Returns:
        ``accuracy``, ``macro_f1``, ``balanced_accuracy``, ``per_class_recall``,
        ``per_class_precision``, ``per_class_f1`` and ``support`` (each ``{class: value}``),
        ``confusion_matrix`` (``C×C`` list of lists, rows = true, columns = predicted),
        ``n``, and ``log_loss`` when probabilities were given.

    Raises:
        DataError: empty input, mismatched lengths or shapes, or indices outside the class list.
    """
    classes = [str(c) for c in classes]
    n_classes = len(classes)
    if n_classes == 0:
        raise DataError("no classes to score", "pass the class list in index order")
    y = _as_labels(y_true, n_classes, "true labels")
    if y.size == 0:
        raise DataError("no samples to score", "the evaluated set is empty")
    pred, probs = _split_pred(y_pred_or_probs, y.shape[0], n_classes)
    labels = list(range(n_classes))

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected when a class is absent.
        warnings.simplefilter("ignore", UserWarning)
        balanced = skm.balanced_accuracy_score(y, pred)
    out: dict[str, Any] = {
        "n": int(y.shape[0]),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced),
        "per_class_recall": {c: float(v) for c, v in zip(classes, recall, strict=True)},
        "per_class_precision": {c: float(v) for c, v in zip(classes, precision, strict=True)},
        "per_class_f1": {c: float(v) for c, v in zip(classes, f1, strict=True)},
        "support": {c: int(v) for c, v in zip(classes, support, strict=True)},
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).astype(int).tolist(),
    }
    if probs is not None:
        out["log_loss"] = _log_loss(y, probs)
    return out


# --------------------------------------------------------------------------------------------
# Cross-validation summary
# --------------------------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def cv_summary(per_fold: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of every scalar metric over folds.

    Args:
        per_fold: one metrics dict per fold (e.g. :func:`classification_metrics` outputs).
            Non-scalar values (per-class dicts, confusion matrices) are skipped; a metric
            missing from some folds is summarized over the folds that have it.

    Returns:
        ``{metric: {"mean": ..., "std": ..., "n": folds}}`` with the sample std (``ddof=1``),
        0.0 for a single fold.

    Raises:
        DataError: no folds.
    """
    if not per_fold:
        raise DataError("no folds to summarize", "pass one metrics dict per fold")
    names: list[str] = []
    for fold in per_fold:
        names.extend(k for k, v in fold.items() if _is_scalar(v) and k not in names)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        values = np.array([float(f[name]) for f in per_fold if name in f and _is_scalar(f[name])])
        std = float(values.std(ddof=1)) if values.size >= 2 else 0.0
        out[name] = {"mean": float(values.mean()), "std": std, "n": int(values.size)}
    return out


# --------------------------------------------------------------------------------------------
# Multi-head metrics
# --------------------------------------------------------------------------------------------


def combine_indices(indices: Sequence[Any], sizes: Sequence[int]) -> np.ndarray:
    """Mixed-radix index of a combined label, most significant head first.

    ``((i_0 · n_1) + i_1) · n_2 + i_2`` for three heads of sizes ``n_0, n_1, n_2`` — the order of
    ``toolkit.data.targets`` combined classes.
    """
    if len(indices) != len(sizes) or not sizes:
        raise ValueError("one index array per head size is needed")
    combined = np.zeros(np.asarray(indices[0]).shape, dtype=np.int64)
    for idx, size in zip(indices, sizes, strict=True):
        combined = combined * int(size) + np.asarray(idx, dtype=np.int64)
    return combined


def combined_probabilities(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Per-sample outer product of head probabilities, flattened in mixed-radix order.

    Treating the heads as independent given the image is what a multi-head model assumes; the
    argmax of the product is the combination of the heads' argmaxes.
    """
    out = np.asarray(probs[0], dtype=np.float64)
    for p in probs[1:]:
        p = np.asarray(p, dtype=np.float64)
        out = (out[:, :, None] * p[:, None, :]).reshape(out.shape[0], -1)
    return out


def multihead_metrics(
    y_true_by_head: Mapping[str, Any],
    probs_by_head: Mapping[str, Any],
    classes_by_head: Mapping[str, Sequence[str]],
    combine: Sequence[str] | Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    *,
    combined_classes: Sequence[str] | None = None,
    separator: str = "_",
) -> dict[str, Any]:
    """Metrics of each head, and optionally of the label the heads combine into.

    Args:
        y_true_by_head: head → true class indices ``[N]``.
        probs_by_head: head → probabilities ``[N, C_head]`` (or predicted indices ``[N]``).
        classes_by_head: head → class names in index order.
        combine: None for per-head metrics only; a sequence of head names, most significant
            first, to also score the combined label (e.g. ``["mask", "gender", "age"]`` → 18
            classes, index ``((i_0·n_1)+i_1)·n_2+i_2``); or a function mapping
            ``{head: indices}`` to combined indices, which needs ``combined_classes``.
        combined_classes: names of the combined classes; by default the heads' class names
            joined with ``separator`` in mixed-radix order (as ``[targets.combine]`` names them).
        separator: text between the parts of a default combined class name.

    Returns:
        ``{"heads": {head: classification_metrics(...)}}`` plus ``"combined"`` when
        ``combine`` is given. With an ordering and probabilities for every head, the combined
        probabilities are the product of the heads' (so ``log_loss`` is reported too).

    Raises:
        DataError: heads missing from one of the mappings, or bad arrays.
    """
    heads = list(classes_by_head)
    for what, mapping in (("true labels", y_true_by_head), ("predictions", probs_by_head)):
        missing = [h for h in heads if h not in mapping]
        if missing:
            raise DataError(f"no {what} for head(s) {', '.join(missing)}", "pass every head in each mapping")
    out: dict[str, Any] = {
        "heads": {h: classification_metrics(y_true_by_head[h], probs_by_head[h], classes_by_head[h]) for h in heads}
    }
    if combine is None:
        return out

    def pred_of(head: str) -> np.ndarray:
        arr = np.asarray(probs_by_head[head])
        return arr.argmax(axis=1) if arr.ndim == 2 else arr.astype(np.int64)

    if callable(combine):
        if combined_classes is None:
            raise DataError("a combine function needs combined_classes", "pass the combined class names in index order")
        y = combine({h: np.asarray(y_true_by_head[h], dtype=np.int64) for h in heads})
        pred = combine({h: pred_of(h) for h in heads})
        out["combined"] = classification_metrics(y, pred, combined_classes)
        return out

    order = list(combine)
    unknown = [h for h in order if h not in classes_by_head]
    if unknown or not order:
        raise DataError(f"combine names unknown head(s) {', '.join(unknown) or '(none given)'}",
                        f"combine heads from: {', '.join(heads)}")
    sizes = [len(classes_by_head[h]) for h in order]
    if combined_classes is None:
        combined_classes = [separator.join(parts) for parts in itertools.product(*(classes_by_head[h] for h in order))]
    y = combine_indices([y_true_by_head[h] for h in order], sizes)
    arrays = [np.asarray(probs_by_head[h]) for h in order]
    if all(a.ndim == 2 for a in arrays):
        combined_pred: np.ndarray = combined_probabilities(arrays)
    else:
        combined_pred = combine_indices([pred_of(h) for h in order], sizes)
    out["combined"] = classification_metrics(y, combined_pred, combined_classes)
    return out
