"""Run folders in the layout of earlier releases (run format 1 as first written: no ``format_version`` or
``data_root`` in run.json, a model.json without its preprocessing record or model settings) still
predict the same probabilities and still ensemble; a folder from a newer release is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from imagegen import make_imagefolder, write_recipe

from toolkit.config import load_recipe
from toolkit.models import read_record
from toolkit.store import Run

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["blue", "green", "red"]


def _downgrade(run: Run) -> None:
    """Rewrite a run folder as earlier releases wrote it."""
    info = json.loads((run.path / "run.json").read_text())
    for key in ("format_version", "data_root"):
        info.pop(key)
    (run.path / "run.json").write_text(json.dumps(info))
    for meta_path in run.path.glob("folds/*/model.json"):
        meta = json.loads(meta_path.read_text())
        for key in ("preprocessing", "model"):
            meta.pop(key)
        meta_path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from toolkit.train import train

    base = tmp_path_factory.mktemp("format")
    images = make_imagefolder(base / "train", per_class=8)
    recipe = load_recipe(write_recipe(base / "r.toml", images, train={"epochs": 1}))
    current = train(recipe, runs_root=base / "runs", name="current", progress=False)
    shutil.copytree(current.path, base / "runs" / "legacy")
    legacy = Run(base / "runs" / "legacy")
    _downgrade(legacy)
    return {"base": base, "current": current, "legacy": legacy, "test": make_imagefolder(base / "test", per_class=3, seed=1)}


def test_legacy_model_json_reads_into_the_same_checkpoint_record(runs):
    old, new = read_record(runs["legacy"], 0), read_record(runs["current"], 0)
    assert old == new  # the missing keys came from the run's recipe.toml
    assert old.preprocessing.cache and old.model["name"] == "test_efficientnet_gn"


def test_legacy_run_predicts_the_same_probabilities(runs):
    from toolkit.predict import predict

    kwargs = dict(tta="hflip", workers=0, progress=False, write=False)
    old = predict(runs["legacy"], runs["test"], **kwargs)
    new = predict(runs["current"], runs["test"], **kwargs)
    assert old.ids == new.ids and old.source == "imagefolder"
    np.testing.assert_array_equal(old.probs["label"], new.probs["label"])


def test_legacy_tta_auto_finds_the_images_from_the_recipe(runs):
    from toolkit.predict import predict

    old = predict(runs["legacy"], runs["test"], tta="auto", workers=0, progress=False, write=False)
    new = predict(runs["current"], runs["test"], tta="auto", workers=0, progress=False, write=False)
    assert old.tta_auto["policies"] == new.tta_auto["policies"]


def test_legacy_runs_ensemble_with_current_ones(runs):
    from toolkit.ensemble import ensemble
    from toolkit.predict import predict

    for run in (runs["legacy"], runs["current"]):
        predict(run, runs["test"], tta="none", name="test", workers=0, progress=False)
    result = ensemble([str(runs["legacy"].path), str(runs["current"].path)], vote="soft",
                      runs_root=runs["base"] / "runs")
    pd.testing.assert_frame_equal(result.run.read_oof()[CLASSES], runs["current"].read_oof()[CLASSES], atol=1e-7)
    assert result.prediction_set == "test" and "csv" in result.files


def test_a_newer_run_format_is_refused_in_one_line(runs, tmp_path, capsys):
    from toolkit.cli.main import run as cli

    newer = tmp_path / "newer"
    shutil.copytree(runs["current"].path, newer)
    info = json.loads((newer / "run.json").read_text())
    info["format_version"] += 1
    (newer / "run.json").write_text(json.dumps(info))
    code = cli(["predict", str(newer), str(runs["test"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "written by a newer clsctl" in err[0] and "upgrade clsctl" in err[0]


def test_many_class_confusion_matrices_are_stored_as_their_cells_and_read_back_dense(tmp_path):
    """summary.json of a 500-class run holds nonzero cells; old dense files and small class lists read as before."""
    from rungen import train_run

    from toolkit.metrics import classification_metrics
    from toolkit.store.confusion import DENSE_CLASSES, compact_confusions, confusion_matrix

    rng = np.random.default_rng(0)
    classes = [f"c{i:03d}" for i in range(500)]
    labels = rng.integers(0, 500, 2000)
    probs = rng.random((2000, 500), dtype=np.float32)
    probs[np.arange(2000), labels] += np.where(rng.random(2000) < 0.7, 400.0, 0.0).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    folds = np.arange(2000) % 5
    run = train_run(tmp_path / "runs", "wide", classes=classes, labels=labels, probs=probs, folds=folds)
    summary = run.summary
    expected = np.array(classification_metrics(labels, probs, classes)["confusion_matrix"])
    stored = summary["oof"]["confusion_matrix"]
    assert stored["format"] == "cells" and stored["shape"] == [500, 500]
    assert len(stored["cells"]) == np.count_nonzero(expected)
    np.testing.assert_array_equal(confusion_matrix(stored), expected)
    fold = folds == 2
    np.testing.assert_array_equal(confusion_matrix(summary["folds"]["2"]["metrics"]["confusion_matrix"]),
                                  classification_metrics(labels[fold], probs[fold], classes)["confusion_matrix"])
    assert run.summary_path.stat().st_size < 2_000_000  # 22 MB as 500 × 500 lists per fold
    # a run written before: dense lists at any size still read, and are compacted when the summary is next written
    old = json.loads(run.summary_path.read_text())
    old["oof"]["confusion_matrix"] = expected.tolist()
    run.summary_path.write_text(json.dumps(old))
    np.testing.assert_array_equal(confusion_matrix(run.summary["oof"]["confusion_matrix"]), expected)
    assert run.update_summary(note="x")["oof"]["confusion_matrix"] == stored
    # small class lists keep their dense lists
    small = [[3, 0], [1, 2]]
    assert compact_confusions({"m": {"confusion_matrix": small}}) == {"m": {"confusion_matrix": small}}
    edge = np.eye(DENSE_CLASSES + 1, dtype=np.int64)
    cells = compact_confusions({"confusion_matrix": edge.tolist()})["confusion_matrix"]
    np.testing.assert_array_equal(confusion_matrix(cells), edge)
    np.testing.assert_array_equal(confusion_matrix(compact_confusions({"confusion_matrix": edge})["confusion_matrix"]),
                                  edge)
