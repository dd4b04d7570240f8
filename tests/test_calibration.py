"""Calibration: temperature and vector scaling fitted on out-of-fold rows, cross-fitted, recorded per run."""

from __future__ import annotations

import numpy as np
import pytest
from rungen import probabilities, train_run

from toolkit.calibration import (
    apply_calibration,
    apply_crossfit,
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    fit_vector_scaling,
    log_probs,
    negative_log_likelihood,
    scale,
    softmax,
)
from toolkit.errors import DataError, UsageError
from toolkit.train.results import run_calibration

CLASSES = ["a", "b", "c", "d"]


def sampled(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from ``softmax(z)``, and the probabilities of a model that reports ``softmax(z * temperature)``:
    over-confident by exactly ``temperature``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, len(CLASSES)))
    truth = softmax(z)
    y = (truth.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return softmax(z * temperature), y, np.arange(n) % 5


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature_of_constructed_logits_is_recovered(temperature):
    probs, y, _ = sampled(20000, temperature)
    assert fit_temperature(probs, y) == pytest.approx(temperature, rel=0.05)


def test_calibrated_nll_is_lower_on_held_out_folds():
    probs, y, folds = sampled(6000, 3.0, seed=1)
    record = calibration_record(probs, y, folds)
    assert record["crossfit"] and record["folds"] == 5 and record["rows"] == 6000
    for method in ("temperature", "vector"):
        after = record[method]["after"]
        assert after["nll"] < record["before"]["nll"]
        assert after["ece"] < record["before"]["ece"]
        assert len(record[method]["per_fold"]) == 5
    # "after" is scored on rows each fold's parameters never saw: recompute one fold by hand.
    held = folds == 2
    t = fit_temperature(probs[~held], y[~held])
    assert record["temperature"]["per_fold"][2]["temperature"] == pytest.approx(t)
    assert record["temperature"]["temperature"] == pytest.approx(3.0, rel=0.1)


def test_calibrated_nll_never_worse_on_held_out_folds_of_a_calibrated_model():
    probs, y, folds = sampled(4000, 1.0, seed=2)
    record = calibration_record(probs, y, folds, methods=("temperature",))
    assert record["temperature"]["temperature"] == pytest.approx(1.0, abs=0.08)
    # Nothing to fix: the cross-fitted NLL moves by estimation noise only.
    assert record["temperature"]["after"]["nll"] <= record["before"]["nll"] + 2e-3


def test_temperature_keeps_the_argmax_and_vector_scaling_can_fix_a_bias():
    probs, y, _ = sampled(3000, 2.0, seed=3)
    scaled = scale(probs, {"temperature": 2.0})
    assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    biased = softmax(log_probs(probs) + np.array([1.5, 0, 0, 0]))  # class a over-predicted
    w, b = fit_vector_scaling(biased, y)
    fixed = scale(biased, {"weights": w.tolist(), "biases": b.tolist()})
    assert negative_log_likelihood(fixed, y) < negative_log_likelihood(scale(biased, {"temperature":
                                                                                     fit_temperature(biased, y)}), y)
    assert b[0] < b[1:].min()  # the bias is taken back off class a


def test_ece_matches_the_report_reliability_chart():
    from toolkit.report.charts import reliability_chart

    probs, y, _ = sampled(500, 2.0, seed=4)
    _, chart_ece = reliability_chart(probs.max(axis=1), probs.argmax(axis=1) == y, title="t")
    assert expected_calibration_error(probs, y) == pytest.approx(chart_ece, abs=1e-15)
    assert np.isnan(expected_calibration_error(np.zeros((0, 4)), np.zeros(0, dtype=int)))


def test_bad_input_is_one_clear_error():
    with pytest.raises(DataError, match="labels outside"):
        calibration_record(np.full((2, 2), 0.5), np.array([0, 2]), None)
    with pytest.raises(DataError, match="no rows"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(UsageError, match="not one of"):
        apply_calibration(np.full((1, 2), 0.5), {"temperature": {"temperature": 1.0}}, "platt")
    single = calibration_record(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]), None, methods=("temperature",))
    assert not single["crossfit"] and single["folds"] == 1  # said, not hidden


def test_run_without_calibration_gets_it_on_first_use(tmp_path):
    labels = np.arange(300) % 3
    probs = probabilities(labels, 3, 0.8, seed=0)
    run = train_run(tmp_path, "old", classes=["x", "y", "z"], labels=labels, probs=probs, folds=np.arange(300) % 3)
    assert "calibration" not in run.summary  # as trained before calibration existed
    record = run_calibration(run)
    assert set(record) == {"label"} and record["label"]["temperature"]["temperature"] > 0
    assert run.summary["calibration"] == record  # recorded in summary.json
    run.update_summary(calibration={"label": {**record["label"], "temperature": {"temperature": 7.0}}})
    assert run_calibration(run)["label"]["temperature"]["temperature"] == 7.0  # read back, not refitted


def test_a_call_that_writes_nothing_leaves_the_member_runs_untouched(tmp_path):
    from toolkit.ensemble import ensemble

    labels = np.arange(300) % 3
    runs = [train_run(tmp_path, name, classes=["x", "y", "z"], labels=labels,
                      probs=probabilities(labels, 3, acc, seed=seed), folds=np.arange(300) % 3)
            for name, acc, seed in (("a", 0.8, 1), ("b", 0.7, 2))]
    before = [(r.path / "summary.json").read_bytes() for r in runs]
    assert run_calibration(runs[0], record=False)["label"]["temperature"]["temperature"] > 0
    result = ensemble([str(r.path) for r in runs], calibrate="temperature", write=False, runs_root=tmp_path)
    assert result.calibration is not None and set(result.calibration["members"]) == {"a", "b"}
    assert [(r.path / "summary.json").read_bytes() for r in runs] == before  # nothing recorded
    ensemble([str(r.path) for r in runs], calibrate="temperature", runs_root=tmp_path)
    assert all("calibration" in type(r)(r.path).summary for r in runs)  # a writing call records it once


def test_crossfit_rescales_each_fold_with_parameters_fitted_without_it():
    # folds whose models are over-confident by different amounts: each fold's cross-fitted temperature
    # is far from the all-row one, so the two calibrations of the out-of-fold rows must differ.
    parts = [sampled(1500, t, seed=10 + i) for i, t in enumerate((0.5, 1.0, 4.0))]
    probs = np.concatenate([p for p, _, _ in parts])
    y = np.concatenate([labels for _, labels, _ in parts])
    folds = np.repeat(np.arange(3), 1500)
    record = calibration_record(probs, y, folds)
    for method in ("temperature", "vector"):
        crossfit = apply_crossfit(probs, folds, record, method)
        assert not np.allclose(crossfit, apply_calibration(probs, record, method))
        for entry in record[method]["per_fold"]:
            held = folds == entry["fold"]
            np.testing.assert_allclose(crossfit[held], scale(probs[held], entry))
        # the recorded "after" is the score of exactly these rows
        assert negative_log_likelihood(crossfit, y) == pytest.approx(record[method]["after"]["nll"])
        # prediction rows (no folds) get the all-row parameters
        np.testing.assert_allclose(apply_crossfit(probs, None, record, method), apply_calibration(probs, record, method))
    assert record["temperature"]["per_fold"][2]["temperature"] == pytest.approx(
        fit_temperature(probs[folds != 2], y[folds != 2]))
    with pytest.raises(DataError, match="fold 7"):
        apply_crossfit(probs, np.full(y.size, 7), record, "temperature")


def test_negative_fold_rows_are_fitted_on_but_never_scored():
    probs, y, folds = sampled(3000, 2.0, seed=3)
    # rows outside every fold, confidently wrong: scoring them would swamp both "before" and "after"
    extra = np.full((200, len(CLASSES)), 1e-6)
    extra[:, 0] = 1.0
    extra_y = np.full(200, 1)
    all_p, all_y = np.concatenate([probs, extra]), np.concatenate([y, extra_y])
    all_folds = np.concatenate([folds, np.full(200, -1)])
    record = calibration_record(all_p, all_y, all_folds, methods=("temperature",))
    assert record["rows"] == 3200 and record["folds"] == 5
    assert record["before"]["nll"] == pytest.approx(negative_log_likelihood(probs, y))
    assert record["before"]["ece"] == pytest.approx(expected_calibration_error(probs, y))
    crossfit = apply_crossfit(all_p, all_folds, record, "temperature")
    assert record["temperature"]["after"]["nll"] == pytest.approx(negative_log_likelihood(crossfit[:3000], y))
    assert record["temperature"]["after"]["ece"] == pytest.approx(expected_calibration_error(crossfit[:3000], y))
    # the negative-fold rows themselves get the all-row parameters
    np.testing.assert_allclose(crossfit[3000:], scale(extra, record["temperature"]))
