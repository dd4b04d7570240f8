"""What a training run leaves behind: out-of-fold tables, the summary of every fold, the calibration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.calibration import calibration_record
from toolkit.data.training import TrainingData
from toolkit.errors import RunError, ToolkitError
from toolkit.metrics import classification_metrics, cv_summary, multihead_metrics
from toolkit.store.tables import probability_arrays, probability_frame

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.config.schema import Recipe
    from toolkit.store import Run


def fold_oof_frame(data: TrainingData, fold: int, val_rows: np.ndarray, val: Mapping[str, Any]) -> pd.DataFrame:
    """The out-of-fold table of one validation pass (``val`` from :func:`toolkit.train.steps.evaluate`)."""
    rows = val_rows[val["index"]]
    return probability_frame([data.ids[i] for i in rows], data.df["path"].to_numpy()[rows],
                             dict(zip(data.heads, val["probs"], strict=True)), data.classes, folds=fold,
                             labels={h: data.targets[rows, i] for i, h in enumerate(data.heads)})


def write_oof_and_summary(run: Run, data: TrainingData, recipe: Recipe, results: Mapping[int, Mapping[str, Any]]) -> None:
    """Join the folds' out-of-fold tables into ``oof.parquet`` (manifest order) and write ``summary.json``.

    Args:
        run: The training run.
        data: The manifest, heads and classes trained on.
        recipe: The recipe (its selection metric is recorded).
        results: Fold → that fold's result (what ``done.json`` holds).
    """
    import pandas as pd

    frames = [run.read_oof(k) for k in sorted(results) if run.has_oof(k)]
    summary: dict[str, Any] = {
        "metric": recipe.train.metric, "heads": data.heads, "classes": data.classes,
        "folds": {str(k): v for k, v in results.items()},
        "cv": cv_summary([v["metrics"] for v in results.values() if v.get("metrics")]),
    }
    if frames:
        oof = pd.concat(frames, ignore_index=True)
        order = {rid: i for i, rid in enumerate(data.ids)}
        oof = oof.iloc[np.argsort([order[r] for r in oof["id"]], kind="stable")].reset_index(drop=True)
        run.write_oof(oof)
        if data.multi_head:
            y = {h: np.array([data.classes[h].index(v) for v in oof[f"label:{h}"]]) for h in data.heads}
            p = {h: oof[[f"{h}:{c}" for c in data.classes[h]]].to_numpy() for h in data.heads}
            summary["oof"] = multihead_metrics(y, p, data.classes, combine=data.heads)
        else:
            classes = data.classes[data.heads[0]]
            y = np.array([classes.index(v) for v in oof["label"]])
            summary["oof"] = classification_metrics(y, oof[classes].to_numpy(), classes)
        summary["oof_rows"] = len(oof)
        try:
            summary["calibration"] = fit_calibration(oof, data.heads, data.classes)
        except ToolkitError as exc:
            # The run itself is good: a calibration that cannot be fitted (e.g. non-finite probabilities)
            # must not cost it its summary; `--calibrate` later says why it has none.
            summary["calibration_error"] = exc.message
    run.update_summary(summary)


def fit_calibration(oof: pd.DataFrame, heads: list[str], classes: dict[str, list[str]]) -> dict[str, Any]:
    """Head → :func:`toolkit.calibration.calibration_record` of an out-of-fold table (cross-fitted by fold)."""
    probs, labels, folds = probability_arrays(oof, heads, classes, what="out-of-fold table")
    if labels is None:
        raise RunError("the out-of-fold table has no label column", "retrain the run")
    return {h: calibration_record(probs[h], labels[h], folds) for h in heads}


def run_calibration(run: Run, *, record: bool = True) -> dict[str, Any]:
    """The run's calibration (``summary.json``), fitted on its out-of-fold rows and recorded on first use.

    Runs trained before calibration was fitted at the end of training get it here, once. With
    ``record=False`` (a caller asked to write nothing) it is fitted and returned, and the run is untouched.

    Raises:
        RunError: the run has no out-of-fold table to fit on.
    """
    recorded = run.summary.get("calibration")
    heads, classes = run.read_classes()
    if isinstance(recorded, dict) and all(h in recorded for h in heads):
        return recorded
    if not run.has_oof():
        raise RunError(f"run {run.id} has no oof.parquet to fit a calibration on",
                       "calibrate runs whose folds all finished (k-fold train runs)")
    fitted = fit_calibration(run.read_oof(), heads, classes)
    if record:
        run.update_summary(calibration=fitted)
    return fitted
