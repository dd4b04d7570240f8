"""Metrics: fixed arrays with confusion matrices and scores worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.errors import DataError, RecipeError
from toolkit.metrics import (
    METRICS,
    classification_metrics,
    combine_indices,
    cv_summary,
    is_better,
    list_metrics,
    metric_direction,
    multihead_metrics,
)

CLASSES = ["a", "b", "c"]
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]
# rows = true, columns = predicted
CM = [[2, 1, 0],
      [0, 1, 1],
      [0, 0, 1]]


def test_known_confusion_matrix_and_scores():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert m["confusion_matrix"] == CM
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision = column diagonal share, recall = row diagonal share
    assert m["per_class_precision"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.5})
    assert m["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
    f1 = {"a": 2 * 1.0 * (2 / 3) / (1 + 2 / 3), "b": 0.5, "c": 2 * 0.5 * 1.0 / 1.5}
    assert m["per_class_f1"] == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert m["support"] == {"a": 3, "b": 2, "c": 1}
    assert "log_loss" not in m
    assert all(isinstance(v, float) for v in m["per_class_f1"].values())
    assert all(isinstance(v, int) for row in m["confusion_matrix"] for v in row)


def test_absent_class_counts_as_zero_in_macro_f1():
    classes = ["a", "b", "c", "d"]  # "d" is neither true nor predicted anywhere
    m = classification_metrics(Y_TRUE, Y_PRED, classes)
    assert m["confusion_matrix"] == [[*row, 0] for row in CM] + [[0, 0, 0, 0]]
    assert m["per_class_f1"]["d"] == 0.0
    assert m["per_class_recall"]["d"] == 0.0 and m["per_class_precision"]["d"] == 0.0
    assert m["support"]["d"] == 0
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 4)
    # balanced accuracy averages recall over the classes that occur in y_true
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_class_predicted_but_never_true():
    # "c" is predicted once but has no true sample: precision 0, F1 0, still in the matrix
    m = classification_metrics([0, 0, 1], [0, 2, 1], CLASSES)
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert m["per_class_precision"]["c"] == 0.0 and m["per_class_f1"]["c"] == 0.0
    assert m["macro_f1"] == pytest.approx((2 * 1 * 0.5 / 1.5 + 1.0 + 0.0) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_probabilities_give_argmax_and_clipped_log_loss():
    probs = np.array([[0.7, 0.2, 0.1],
                      [0.1, 0.8, 0.1],
                      [0.5, 0.5, 0.0]])  # the true class of row 3 got probability 0
    m = classification_metrics([0, 1, 2], probs, CLASSES)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]  # ties go to the first class
    p_clipped = 1e-15 / (1 + 1e-15)
    expected = -(math.log(0.7) + math.log(0.8) + math.log(p_clipped)) / 3
    assert math.isfinite(m["log_loss"])
    assert m["log_loss"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n_classes", [2, 3, 500])
def test_log_loss_is_scikit_learns_to_the_bit(n_classes):
    """The log loss reads only the true class's column, in blocks of rows; the value must not move."""
    import sklearn.metrics as skm

    from toolkit.metrics import LOG_LOSS_EPS, LOG_LOSS_ROWS

    rng = np.random.default_rng(n_classes)
    n = LOG_LOSS_ROWS + 321  # more than one block
    for dtype, sharpen in ((np.float32, 1), (np.float64, 8), (np.float64, 40)):
        probs = (rng.random((n, n_classes)) ** sharpen).astype(dtype)
        probs[rng.random((n, n_classes)) < 0.05] = 0.0
        probs[rng.integers(0, n, 5), rng.integers(0, n_classes, 5)] = 1.0
        y = rng.integers(0, n_classes, n)
        clipped = np.clip(probs.astype(np.float64), LOG_LOSS_EPS, 1.0)
        reference = skm.log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=list(range(n_classes)))
        assert classification_metrics(y, probs, [str(c) for c in range(n_classes)])["log_loss"] == float(reference)


def test_float_predictions_with_integer_values_are_accepted():
    m = classification_metrics(np.array(Y_TRUE, dtype=float), np.array(Y_PRED, dtype=float), CLASSES)
    assert m["confusion_matrix"] == CM


@pytest.mark.parametrize(("y_true", "pred", "match"), [
    ([0, 3], [0, 1], "class index 3 outside 0..2"),
    ([0, 1], [0, -1], "class index -1"),
    ([0, 1], [0], "1 predictions for 2 true labels"),
    ([0, 1], np.ones((2, 4)) / 4, r"shape \(2, 4\), expected \(2, 3\)"),
    ([], [], "no samples"),
    ([0.5, 1], [0, 1], "integer class indices"),
    ([0, 1], np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]]), "NaN"),
])
def test_bad_inputs(y_true, pred, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(y_true, pred, CLASSES)


# --- selection metrics -------------------------------------------------------------------------------


def test_direction_registry():
    assert list_metrics() == sorted(METRICS)
    assert {n: metric_direction(n) for n in list_metrics()} == {
        "accuracy": "max", "balanced_accuracy": "max", "log_loss": "min", "macro_f1": "max", "val_loss": "min"}
    with pytest.raises(RecipeError) as err:
        metric_direction("f1")
    assert "train.metric" in str(err.value) and "'f1'" in str(err.value)
    for name in list_metrics():
        assert name in err.value.hint


def test_is_better():
    assert is_better("macro_f1", 0.7, 0.6) and not is_better("macro_f1", 0.6, 0.7)
    assert not is_better("macro_f1", 0.6, 0.6)  # ties keep the earlier checkpoint
    assert is_better("val_loss", 0.3, 0.4) and not is_better("val_loss", 0.4, 0.3)
    assert is_better("log_loss", 0.5, None) and is_better("accuracy", 0.1, float("nan"))
    assert not is_better("accuracy", float("nan"), 0.1)
    assert not is_better("macro_f1", 0.605, 0.6, min_delta=0.01) and is_better("macro_f1", 0.62, 0.6, min_delta=0.01)
    assert not is_better("val_loss", 0.395, 0.4, min_delta=0.01) and is_better("val_loss", 0.38, 0.4, min_delta=0.01)
    with pytest.raises(RecipeError):
        is_better("nope", 1.0, 0.0)


# --- cross-validation summary ------------------------------------------------------------------------


def test_cv_summary_mean_and_sample_std():
    folds = [
        {"accuracy": 0.8, "macro_f1": 0.5, "n": 10, "per_class_recall": {"a": 1.0}, "confusion_matrix": [[1]]},
        {"accuracy": 0.9, "macro_f1": 0.7, "n": 12, "best": True},
        {"accuracy": 1.0, "macro_f1": 0.6, "n": 14, "log_loss": 0.25},
    ]
    s = cv_summary(folds)
    assert set(s) == {"accuracy", "macro_f1", "n", "log_loss"}  # dicts, lists and bools are skipped
    assert s["accuracy"]["mean"] == pytest.approx(0.9)
    # deviations −0.1, 0, +0.1 → sample variance 0.02/2
    assert s["accuracy"]["std"] == pytest.approx(0.1)
    assert s["macro_f1"] == pytest.approx({"mean": 0.6, "std": 0.1, "n": 3})
    assert s["n"]["mean"] == pytest.approx(12.0) and s["n"]["std"] == pytest.approx(2.0)
    assert s["log_loss"] == {"mean": 0.25, "std": 0.0, "n": 1}  # only one fold has it


def test_cv_summary_single_and_no_fold():
    assert cv_summary([{"accuracy": 0.75}]) == {"accuracy": {"mean": 0.75, "std": 0.0, "n": 1}}
    with pytest.raises(DataError):
        cv_summary([])


# --- multi-head ------------------------------------------------------------------------------------

HEADS = {"mask": ["wear", "incorrect", "not"], "gender": ["male", "female"], "age": ["<30", "30-59", ">=60"]}


def test_combine_indices_mixed_radix():
    sizes = [3, 2, 3]
    assert combine_indices([[0], [0], [0]], sizes).tolist() == [0]
    assert combine_indices([[2], [1], [0]], sizes).tolist() == [((2 * 2) + 1) * 3 + 0]  # 15
    assert combine_indices([[2], [1], [2]], sizes).tolist() == [17]
    assert combine_indices([[1, 0], [0, 1], [2, 1]], sizes).tolist() == [8, 4]
    all_idx = [combine_indices([[m], [g], [a]], sizes)[0] for m in range(3) for g in range(2) for a in range(3)]
    assert all_idx == list(range(18))


def test_multihead_per_head_and_combined():
    y = {"mask": [0, 2, 1, 0], "gender": [1, 0, 0, 1], "age": [0, 2, 1, 1]}
    # one-hot-ish probabilities; sample 3 gets age wrong, sample 2 gets gender wrong
    pred = {"mask": [0, 2, 1, 0], "gender": [1, 0, 1, 1], "age": [0, 2, 1, 0]}
    probs = {h: np.eye(len(c))[pred[h]] * 0.9 + 0.1 / len(c) for h, c in HEADS.items()}
    out = multihead_metrics(y, probs, HEADS, combine=["mask", "gender", "age"])
    assert out["heads"]["mask"]["accuracy"] == 1.0
    assert out["heads"]["gender"]["accuracy"] == pytest.approx(0.75)
    assert out["heads"]["age"]["accuracy"] == pytest.approx(0.75)
    comb = out["combined"]
    assert len(comb["confusion_matrix"]) == 18
    assert list(comb["support"])[:4] == ["wear_male_<30", "wear_male_30-59", "wear_male_>=60", "wear_female_<30"]
    assert list(comb["support"])[15] == "not_female_<30"
    # true combined: (0,1,0)=3, (2,0,2)=14, (1,0,1)=7, (0,1,1)=4; predicted: 3, 14, 10, 3
    assert comb["support"]["wear_female_<30"] == 1 and comb["support"]["not_male_>=60"] == 1
    assert comb["accuracy"] == pytest.approx(0.5)
    cm = np.array(comb["confusion_matrix"])
    assert cm[3, 3] == 1 and cm[14, 14] == 1 and cm[7, 10] == 1 and cm[4, 3] == 1 and cm.sum() == 4
    # combined probabilities are the product of the heads', so log loss is reported
    p_true = [math.prod(probs[h][i, y[h][i]] for h in HEADS) for i in range(4)]
    assert comb["log_loss"] == pytest.approx(-sum(math.log(p) for p in p_true) / 4, rel=1e-9)


def test_multihead_with_indices_function_and_no_combine():
    y = {"mask": [0, 1], "gender": [1, 0]}
    pred = {"mask": [0, 1], "gender": [1, 1]}
    classes = {"mask": HEADS["mask"], "gender": HEADS["gender"]}
    assert "combined" not in multihead_metrics(y, pred, classes)
    out = multihead_metrics(y, pred, classes, combine=["gender", "mask"], separator="/")
    assert list(out["combined"]["support"])[:2] == ["male/wear", "male/incorrect"]
    assert out["combined"]["accuracy"] == pytest.approx(0.5)
    assert "log_loss" not in out["combined"]

    def is_wear(idx):  # a custom combined target: 1 where the mask head says "wear"
        return (np.asarray(idx["mask"]) == 0).astype(int)

    custom = multihead_metrics(y, pred, classes, combine=is_wear, combined_classes=["other", "wear"])
    assert custom["combined"]["confusion_matrix"] == [[1, 0], [0, 1]]
    with pytest.raises(DataError, match="combined_classes"):
        multihead_metrics(y, pred, classes, combine=is_wear)
    with pytest.raises(DataError, match="unknown head"):
        multihead_metrics(y, pred, classes, combine=["mask", "age"])
    with pytest.raises(DataError, match="head"):
        multihead_metrics({"mask": [0, 1]}, pred, classes)
