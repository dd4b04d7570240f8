"""Label issues from out-of-sample probabilities, with cleanlab (Northcutt et al., JAIR 2021).

cleanlab is imported here and only here, and only when a function is called (releases before the
Apache-2.0 relicensing were AGPL-3.0, so the one module that needs it is the one place to swap it). Its
confident-learning filter decides which rows are label issues; its label-quality score ranks every
row; its dataset functions give the per-class noise rates, the most overlapping class pairs and one
health score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from toolkit.errors import DataError, UsageError, examples

#: cleanlab's ``filter_by`` methods; the default prunes each (given, true) cell of the confident joint
#: down to its estimated noise, the method the confident-learning paper's benchmarks report.
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")
DEFAULT_FILTER = "prune_by_noise_rate"
#: The filter of ``clean --quick``, applied to each of its two classifiers. Frozen-feature classifiers
#: err far more than a fine-tuned model, and confident learning counts those errors as label noise:
#: on PACS sketches with 5 % flipped labels, ``prune_by_noise_rate`` on the probe flagged twice the
#: flips (precision 0.40). Ranking by self-confidence and flagging only what both classifiers flag
#: gave 0.72-0.74 precision at 0.84-0.85 recall over three flip seeds.
QUICK_FILTER = "low_self_confidence"
#: How each row's label quality is scored (cleanlab.rank): the probability of the given label,
#: comparable across rows and classes.
QUALITY_METHOD = "self_confidence"


@dataclass
class LabelIssues:
    """The label issues of one target (head).

    Attributes:
        head: The target column.
        classes: Class names in probability-column order.
        table: One row per image, in the source's row order: ``id``, ``path``, ``label``,
            ``suggested_label`` (the most probable class), ``label_quality`` (0..1, low = suspect),
            ``is_label_issue``, ``rank`` (1 = most suspect, by label quality), then one probability
            column per class.
        health: ``score`` (cleanlab's overall label health, 0..1), ``issues``, ``rows``, ``filter_by``,
            ``per_class`` (noise rate and issue counts per class, worst first) and ``overlapping``
            (class pairs most often confused for each other).
    """

    head: str
    classes: list[str]
    table: pd.DataFrame
    health: dict[str, Any] = field(default_factory=dict)

    @property
    def suspects(self) -> pd.DataFrame:
        """The rows flagged as label issues, most suspect first."""
        return self.table[self.table["is_label_issue"]].sort_values("rank")


def _check_inputs(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], filter_by: str) -> None:
    if filter_by not in FILTERS:
        raise UsageError(f"--filter-by {filter_by!r} is not one of cleanlab's methods",
                         f"choose one of {', '.join(FILTERS)}")
    if probs.ndim != 2 or probs.shape[1] != len(classes) or len(labels) != len(probs):
        raise DataError(f"{len(labels)} labels and probabilities of shape {probs.shape} do not fit {len(classes)} classes",
                        "the out-of-fold table and the class list disagree; retrain the run")
    if not np.isfinite(probs).all():
        raise DataError("out-of-fold probabilities hold NaN or infinite values", "retrain the run")
    present = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, present, strict=True) if n == 0]
    if empty:
        raise DataError(f"class(es) {examples(empty)} have no row in the out-of-fold table",
                        "cleanlab needs every class to be present; train on data where each class has examples")


def find_label_issues(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, ids: Sequence[str],
                      paths: Sequence[str], head: str = "label", filter_by: str = DEFAULT_FILTER,
                      agree: Sequence[np.ndarray] = ()) -> LabelIssues:
    """Flag and rank likely label errors.

    Args:
        labels: Given class index per row.
        probs: Out-of-sample probabilities ``[N, C]`` (out-of-fold: each row scored by a model that did not
            train on it — in-sample probabilities make every label look right).
        classes: Class names.
        ids: Row ids (as in the run's out-of-fold table).
        paths: Image paths as written in the source manifest.
        head: The target's name.
        filter_by: cleanlab's ``filter_by`` method (see :data:`FILTERS`).
        agree: Out-of-sample probabilities of other classifiers over the same rows. When given, the
            filter runs on each of them instead of ``probs`` and a row is an issue only when every one
            flags it; ``probs`` still ranks the rows and suggests the label.

    Raises:
        UsageError: An unknown ``filter_by``.
        DataError: Shapes that do not fit, non-finite probabilities, a class with no rows.
    """
    from cleanlab.dataset import (
        find_overlapping_classes,
        overall_label_health_score,
        rank_classes_by_label_quality,
    )
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    _check_inputs(labels, probs, classes, filter_by)
    # cleanlab expects rows that sum to one; float32 tables written to disk are off by ~1e-7.
    probs = probs / probs.sum(axis=1, keepdims=True)
    is_issue = np.ones(len(labels), dtype=bool) if agree else cleanlab_issues(labels, probs, filter_by=filter_by)
    for other in agree:
        other = np.asarray(other, dtype=np.float64)
        _check_inputs(labels, other, classes, filter_by)
        is_issue &= cleanlab_issues(labels, other / other.sum(axis=1, keepdims=True), filter_by=filter_by)
    quality = get_label_quality_scores(labels, probs, method=QUALITY_METHOD)
    order = np.lexsort((np.arange(len(quality)), quality))  # lowest quality first, ties by row order
    rank = np.empty(len(quality), dtype=np.int64)
    rank[order] = np.arange(1, len(quality) + 1)
    names = np.asarray(classes, dtype=object)
    table = pd.DataFrame({"id": [str(i) for i in ids], "path": [str(p) for p in paths], "label": names[labels],
                          "suggested_label": names[probs.argmax(axis=1)], "label_quality": quality,
                          "is_label_issue": is_issue, "rank": rank})
    for c_i, c in enumerate(classes):
        table[c] = probs[:, c_i]

    per_class = rank_classes_by_label_quality(labels, probs, class_names=classes)
    overlapping = find_overlapping_classes(labels, probs, class_names=classes)
    health = {
        "score": float(overall_label_health_score(labels, probs, verbose=False)),
        "issues": int(is_issue.sum()), "rows": len(labels),
        "filter_by": filter_by if not agree else f"{filter_by}, agreed by {len(agree)} classifiers",
        "per_class": [{"class": str(r["Class Name"]), "noise_rate": float(r["Label Noise"]),
                       "label_issues": int(r["Label Issues"]), "inverse_label_issues": int(r["Inverse Label Issues"]),
                       "label_quality": float(r["Label Quality Score"])} for _, r in per_class.iterrows()],
        "overlapping": [{"a": str(r["Class Name A"]), "b": str(r["Class Name B"]),
                         "examples": int(r["Num Overlapping Examples"]), "joint": float(r["Joint Probability"])}
                        for _, r in overlapping.head(10).iterrows() if int(r["Num Overlapping Examples"]) > 0],
    }
    return LabelIssues(head=head, classes=classes, table=table, health=health)
