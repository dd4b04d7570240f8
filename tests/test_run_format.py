"""Run folders written by an earlier release (run format 1, before model.json held its preprocessing
record) still predict — with the same probabilities the earlier release wrote — and still ensemble."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagegen import make_imagefolder

from toolkit.models import read_record
from toolkit.store import Run

LEGACY = Path(__file__).parent / "data" / "run-format-1"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def legacy(tmp_path: Path) -> Run:
    runs = tmp_path / "runs"
    shutil.copytree(LEGACY, runs / LEGACY.name)
    return Run(runs / LEGACY.name)


def test_legacy_model_json_reads_into_the_checkpoint_record(legacy):
    record = read_record(legacy, 0)
    assert record.arch == "test_efficientnet_gn" and record.classes == {"label": ["blue", "green", "red"]}
    prep = record.preprocessing
    assert (prep.image_size, prep.eval_size, prep.resize, prep.crop_pct) == (32, 32, "stretch", 1.0)
    assert prep.mean == (0.485, 0.456, 0.406) and prep.cache  # the missing keys came from recipe.toml
    assert record.model["name"] == "test_efficientnet_gn"


def test_legacy_run_predicts_what_the_earlier_release_predicted(legacy, tmp_path):
    from toolkit.predict import predict

    # the earlier release predicted this generated set (same seed) with --tta hflip
    test = make_imagefolder(tmp_path / "test", per_class=3, seed=1)
    before = pd.read_parquet(LEGACY / "predictions" / "test-hflip.parquet")
    result = predict(legacy, test, tta="hflip", name="again", workers=0, progress=False)
    after = pd.read_parquet(result.files["parquet"])
    assert after["id"].tolist() == before["id"].tolist()
    classes = ["blue", "green", "red"]
    # bit-identical with the same thread count on one machine; other kernels may round float32 differently
    np.testing.assert_allclose(after[classes].to_numpy(), before[classes].to_numpy(), rtol=0, atol=1e-6)
    assert result.scores is not None and result.source == "imagefolder"


def test_legacy_runs_ensemble(legacy):
    from toolkit.ensemble import ensemble

    twin = legacy.path.parent / "run-format-1-copy"
    shutil.copytree(legacy.path, twin)
    result = ensemble([str(legacy.path), str(twin)], vote="soft", runs_root=legacy.path.parent)
    oof = legacy.read_oof()
    assert result.run.read_oof()[["blue", "green", "red"]].to_numpy() == pytest.approx(
        oof[["blue", "green", "red"]].to_numpy(), abs=1e-7)
    assert result.prediction_set == "test-hflip" and "csv" in result.files
