"""Calibration of class probabilities: temperature scaling and vector scaling, fitted on out-of-fold rows.

Both rescale the log-probabilities of a row and renormalize (Guo et al. 2017):

* **temperature**: ``softmax(log p / T)``; one number, so it never changes a row's argmax.
* **vector**: ``softmax(w ⊙ log p + b)``; one scale and one bias per class (it can change the argmax).

Log-probabilities stand in for logits: they differ from them by a per-row constant, which softmax
ignores, so scaling them is the same as scaling the model's logits.

:func:`calibration_record` fits on a run's out-of-fold rows and is cross-fitted by fold: each fold's
rows are rescaled with parameters fitted on the other folds' rows, and the NLL and ECE "after" are
scored on those rows only, so the reported improvement is never measured on the rows it was fitted
on. The parameters kept for later use are fitted on every row. Rows with a negative fold were never
held out: they are left out of "before" and "after" alike.

:func:`apply_crossfit` rescales out-of-fold rows the same way (each fold with the parameters fitted
without it), so that what is tuned on them later (decisions, ensemble weights) is not fitted on
rows the calibration already saw.

Choices that change numbers:

* probabilities are clipped to ``[1e-12, 1]`` before the log (a float32 zero would be ``-inf``);
* ECE is the top-label ECE over 15 equal-width bins, each bin ``(lower, upper]`` (the first also
  holds 0); the run report's reliability diagram draws the same bins (:func:`reliability_bins`);
* vector scaling adds an L2 penalty of ``1e-3`` per row on ``w - 1`` and ``b``, so a class absent from
  the fitting rows keeps finite parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.errors import DataError, UsageError

__all__ = [
    "METHODS",
    "apply_calibration",
    "apply_crossfit",
    "calibration_record",
    "expected_calibration_error",
    "fit_temperature",
    "fit_vector_scaling",
    "log_probs",
    "negative_log_likelihood",
    "reliability_bins",
    "scale",
    "softmax",
    "top_label_ece",
]

METHODS = ("temperature", "vector")
PROB_FLOOR = 1e-12
ECE_BINS = 15
VECTOR_L2 = 1e-3
# 1/T is searched in this range: T from 0.01 (sharpen a hundredfold) to 1000 (nearly uniform).
_INVERSE_T_BOUNDS = (1e-3, 1e2)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Row-normalized log-probabilities ``[N, C]`` of scores that may hold zeros or not sum to 1."""
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_FLOOR, None)
    return np.log(p / p.sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax, stable for any finite input."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean ``-log p[y]`` (probabilities clipped as above)."""
    y = np.asarray(y, dtype=np.int64)
    return float(-log_probs(probs)[np.arange(y.size), y].mean())


def reliability_bins(confidence: np.ndarray, correct: np.ndarray,
                     bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Rows, accuracy and mean confidence per equal-width bin (0 where a bin is empty); None without rows.

    A bin holds ``(lower, upper]``, the first also 0.

    Raises:
        ValueError: ``confidence`` and ``correct`` differ in length, ``bins`` is below 1, or a
            confidence lies outside ``[0, 1]``.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct).ravel().astype(np.float64)
    if conf.shape != hit.shape or bins < 1:
        raise ValueError(f"need as many confidences as flags and bins >= 1, got {conf.size}, {hit.size}, {bins}")
    # float32 softmax outputs overshoot 1 by a rounding error; anything further out is a caller's bug.
    if conf.size and not (np.all(conf >= -1e-6) and np.all(conf <= 1 + 1e-6)):
        raise ValueError("confidence must lie in [0, 1]")
    if conf.size == 0:
        return None
    conf = np.clip(conf, 0.0, 1.0)
    which = np.digitize(conf, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1.0)
    return count, np.bincount(which, hit, bins) / safe, np.bincount(which, conf, bins) / safe


def top_label_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """``Σ_b (n_b / N)·|accuracy_b − confidence_b|`` of top-label confidences and hits; NaN without rows.

    Raises:
        ValueError: as :func:`reliability_bins`.
    """
    if (stats := reliability_bins(confidence, correct, bins)) is None:
        return float("nan")
    count, acc, conf = stats
    return float(np.sum(count / count.sum() * np.abs(acc - conf)))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE of probability rows against true classes (:func:`top_label_ece`)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if y.size == 0:
        return float("nan")
    # Clipped rather than refused: this module takes scores that need not sum to 1 (see log_probs).
    return top_label_ece(np.clip(p.max(axis=1), 0.0, 1.0), p.argmax(axis=1) == y, bins)


def _check(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise DataError(f"calibration needs probabilities [N, C] and N labels, got {p.shape} and {y.shape}",
                        "pass one probability row per labeled row")
    if y.size == 0:
        raise DataError("no rows to fit a calibration on", "the run has no out-of-fold rows")
    if not np.all(np.isfinite(p)):
        raise DataError("probabilities contain NaN or infinity", "check the model outputs")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise DataError(f"labels outside 0..{p.shape[1] - 1}", "the class list must cover every label")
    return p, y


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` minimizing the NLL of ``softmax(log p / T)`` on these rows.

    The NLL is convex in ``1/T``, so a bounded scalar search finds the optimum.
    """
    from scipy.optimize import minimize_scalar

    p, y = _check(probs, y)
    z = log_probs(p)
    z_true = z[np.arange(y.size), y]

    def nll(beta: float) -> float:
        return float(np.mean(_logsumexp(beta * z) - beta * z_true))

    found = minimize_scalar(nll, bounds=_INVERSE_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(1.0 / found.x)


def fit_vector_scaling(probs: np.ndarray, y: np.ndarray, l2: float = VECTOR_L2) -> tuple[np.ndarray, np.ndarray]:
    """Per-class scales ``w`` and biases ``b`` minimizing the NLL of ``softmax(w ⊙ log p + b)`` (L-BFGS)."""
    from scipy.optimize import minimize

    p, y = _check(probs, y)
    z = log_probs(p)
    n, c = z.shape
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    start_w = 1.0 / fit_temperature(p, y)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:c], theta[c:]
        s = z * w + b
        q = softmax(s)
        value = float(np.mean(_logsumexp(s) - s[np.arange(n), y])) + l2 * (np.sum((w - 1) ** 2) + np.sum(b ** 2))
        diff = (q - onehot) / n
        grad = np.concatenate([(diff * z).sum(axis=0) + 2 * l2 * (w - 1), diff.sum(axis=0) + 2 * l2 * b])
        return value, grad

    theta0 = np.concatenate([np.full(c, start_w), np.zeros(c)])
    found = minimize(loss, theta0, jac=True, method="L-BFGS-B")
    return found.x[:c].copy(), found.x[c:].copy()


def scale(probs: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Probabilities rescaled by a fitted method (``{"temperature": T}`` or ``{"weights", "biases"}``)."""
    z = log_probs(probs)
    if "temperature" in params:
        return softmax(z / float(params["temperature"]))
    w, b = np.asarray(params["weights"], dtype=np.float64), np.asarray(params["biases"], dtype=np.float64)
    if w.shape != (z.shape[1],) or b.shape != (z.shape[1],):
        raise DataError(f"vector scaling for {w.size} classes applied to {z.shape[1]}",
                        "calibrate with the run whose classes these are")
    return softmax(z * w + b)


def _fit(method: str, probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if method == "temperature":
        return {"temperature": fit_temperature(probs, y)}
    if method == "vector":
        w, b = fit_vector_scaling(probs, y)
        return {"weights": w.tolist(), "biases": b.tolist()}
    raise UsageError(f"calibration method {method!r} is not one of {', '.join(METHODS)}",
                     "use temperature or vector")


def _quality(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"nll": negative_log_likelihood(probs, y), "ece": expected_calibration_error(probs, y)}


def calibration_record(probs: np.ndarray, y: np.ndarray, folds: np.ndarray | None,
                       methods: Sequence[str] = METHODS) -> dict[str, Any]:
    """Fit each method on out-of-fold rows; NLL / ECE before and after, the after cross-fitted by fold.

    Args:
        probs: out-of-fold probabilities ``[N, C]``.
        y: true class indices ``[N]``.
        folds: the fold of each row; with fewer than two folds "after" is scored in-sample (and says so).
            Rows with a negative fold are fitted on but not scored.
        methods: which of ``temperature`` and ``vector`` to fit.

    Returns:
        ``{"rows", "folds", "crossfit", "before": {"nll", "ece"}, <method>: {params..., "after": {"nll",
        "ece"}, "per_fold": [params fitted without each fold]}}``; the top-level params of a method are
        fitted on every row.
    """
    p, y = _check(probs, y)
    folds = np.zeros(y.size, dtype=np.int64) if folds is None else np.asarray(folds)
    fold_ids = [f for f in np.unique(folds) if f >= 0]
    crossfit = len(fold_ids) >= 2
    # rows with a negative fold are never rescaled by the cross-fit, so neither side scores them
    scored = folds >= 0
    out: dict[str, Any] = {"rows": int(y.size), "folds": len(fold_ids), "crossfit": crossfit,
                           "before": _quality(p[scored], y[scored])}
    for method in methods:
        params = _fit(method, p, y)
        if crossfit:
            after = p.copy()
            per_fold = []
            for f in fold_ids:
                held = folds == f
                fitted = _fit(method, p[~held], y[~held])
                after[held] = scale(p[held], fitted)
                per_fold.append({"fold": int(f), **fitted})
        else:
            after, per_fold = scale(p, params), []
        out[method] = {**params, "after": _quality(after[scored], y[scored]), "per_fold": per_fold}
    return out


def apply_calibration(probs: np.ndarray, record: Mapping[str, Any], method: str = "temperature") -> np.ndarray:
    """Probabilities rescaled with the parameters ``record`` (from :func:`calibration_record`) holds for ``method``.

    Raises:
        UsageError: the record has no fit of ``method``.
    """
    if method not in METHODS:
        raise UsageError(f"calibration method {method!r} is not one of {', '.join(METHODS)}",
                         "use temperature or vector")
    params = record.get(method)
    if not isinstance(params, Mapping):
        raise UsageError(f"no {method} calibration is recorded", "fit it first (it is fitted on the run's out-of-fold rows)")
    return scale(probs, params)


def apply_crossfit(probs: np.ndarray, folds: np.ndarray | None, record: Mapping[str, Any],
                   method: str = "temperature") -> np.ndarray:
    """Out-of-fold probabilities rescaled with each row's fold's cross-fitted ``method`` parameters.

    A row of fold ``f >= 0`` gets the parameters ``record`` holds as fitted without fold ``f`` (its
    ``per_fold`` entry); rows with a negative fold, every row when ``folds`` is None, and every row of
    a record that was not cross-fitted get the parameters fitted on every row (:func:`apply_calibration`).
    Prediction rows (no fold) take :func:`apply_calibration` directly.

    Raises:
        UsageError: the record has no fit of ``method``. DataError: a fold the record has no
            parameters for, or ``folds`` not one per row.
    """
    out = apply_calibration(probs, record, method)
    per_fold = record[method].get("per_fold") or []
    if folds is None or not per_fold:
        return out
    folds = np.asarray(folds)
    if folds.shape != (out.shape[0],):
        raise DataError(f"{folds.size} folds for {out.shape[0]} probability rows", "pass one fold per row")
    by_fold = {int(entry["fold"]): entry for entry in per_fold}
    p = np.asarray(probs, dtype=np.float64)
    for f in np.unique(folds[folds >= 0]):
        if int(f) not in by_fold:
            raise DataError(f"the {method} calibration has no parameters fitted without fold {int(f)}",
                            "calibrate with the run whose out-of-fold rows these are")
        held = folds == f
        out[held] = scale(p[held], by_fold[int(f)])
    return out
