"""clsctl export: ONNX graphs that reproduce predict, checked against PyTorch on the run's own images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from imagegen import make_imagefolder
from modelruns import model_run

from toolkit.cli.main import run as cli
from toolkit.errors import ToolkitError, UsageError
from toolkit.export import TOLERANCE, export_run
from toolkit.predict import onnx_session, predict

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["blue", "green", "red"]


def _rows(data) -> pd.DataFrame:
    paths = sorted(str(p.relative_to(data)) for p in data.rglob("*.png"))
    rows = pd.DataFrame({"path": paths, "label": [p.split("/")[0] for p in paths]})
    rows["fold"] = np.arange(len(rows)) % 2
    return rows


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A 2-fold test_efficientnet run on 40 px colour images (32 px model), exported with the hflip view."""
    base = tmp_path_factory.mktemp("export")
    data = make_imagefolder(base / "data", per_class=4, size=40)
    run = model_run(base / "runs", data, _rows(data), arch="test_efficientnet", classes={"label": CLASSES})
    result = export_run(run, tta="hflip")
    return {"base": base, "data": data, "run": run, "result": result}


def test_cnn_export_passes_parity_and_records_how_to_feed_it(cnn):
    result, run = cnn["result"], cnn["run"]
    assert result.folder == run.export_dir()
    assert [p.name for p in result.files] == ["model.onnx", "preprocessing.json"]
    assert result.folds == [0, 1] and result.views == ["identity", "hflip"]
    parity = result.parity
    assert parity["rows"] == 12 and 0.0 <= parity["max_abs_diff"] <= TOLERANCE
    info = json.loads((result.folder / "preprocessing.json").read_text())
    assert info["parity"]["max_abs_diff"] == parity["max_abs_diff"]
    assert info["input"]["shape"] == ["batch", 3, 32, 32] and info["input"]["name"] == "image"
    assert info["preprocessing"]["eval_size"] == 32 and info["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert info["outputs"] == [{"head": "label", "name": "probs_label", "classes": CLASSES}]
    assert info["resize"]["transform"]["transforms"][0]["__class_fullname__"] == "Resize"
    # no staged or swapped-out folder is left beside it
    assert sorted(p.name for p in run.export_dir().parent.iterdir() if "export" in p.name) == ["export"]


def test_graph_takes_any_batch_size(cnn):
    session = onnx_session(cnn["result"].folder / "model.onnx")
    (inp,) = session.get_inputs()
    assert inp.shape[0] == "batch"
    for n in (1, 5):
        (probs,) = session.run(["probs_label"], {"image": np.zeros((n, 3, 32, 32), np.float32)})
        assert probs.shape == (n, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_fold_averaged_graph_equals_predict(cnn):
    torch_result = predict(cnn["run"], cnn["data"], tta="hflip", write=False, workers=0)
    onnx_result = predict(cnn["run"], cnn["data"], engine="onnx", write=False, workers=0)
    assert onnx_result.engine == "onnx" and onnx_result.folds == [0, 1]
    assert onnx_result.views == ["identity", "hflip"] and onnx_result.name.endswith("-onnx")
    assert onnx_result.paths == torch_result.paths
    diff = np.abs(onnx_result.probs["label"] - torch_result.probs["label"]).max()
    assert diff <= TOLERANCE
    # the graph does average: one fold alone predicts something else
    one = predict(cnn["run"], cnn["data"], tta="hflip", folds="0", write=False, workers=0)
    assert np.abs(one.probs["label"] - onnx_result.probs["label"]).max() > 10 * TOLERANCE


def test_predict_onnx_refuses_views_and_folds_the_export_lacks(cnn):
    with pytest.raises(UsageError, match="export averages the views identity, hflip"):
        predict(cnn["run"], cnn["data"], engine="onnx", tta="vflip", write=False)
    with pytest.raises(UsageError, match="export holds folds 0, 1"):
        predict(cnn["run"], cnn["data"], engine="onnx", folds="1", write=False)
    with pytest.raises(UsageError, match="engine"):
        predict(cnn["run"], cnn["data"], engine="tensorrt", write=False)


def test_cli_predict_with_the_onnx_engine(cnn, capsys):
    rc = cli(["predict", str(cnn["run"].path), str(cnn["data"]), "--engine", "onnx", "--name", "viaonnx"])
    out = capsys.readouterr().out
    assert rc == 0 and "on onnxruntime" in out and "accuracy" in out
    info = json.loads(cnn["run"].prediction_path("viaonnx", "json").read_text())
    assert info["engine"] == "onnx" and info["views"] == ["identity", "hflip"]
    rc = cli(["export", str(cnn["run"].path), "--tta", "scale:1.2"])
    assert rc == 2 and "only flip views" in capsys.readouterr().err


def test_vit_with_register_tokens_exports_with_parity(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=3, size=24)
    run = model_run(tmp_path / "runs", data, _rows(data), arch="test_vit", classes={"label": CLASSES},
                    folds=(0,), kwargs={"img_size": 32, "patch_size": 8, "reg_tokens": 2})
    rc = cli(["export", str(run.path), "--tta", "none", "--out", str(tmp_path / "vit")])
    assert rc == 0
    info = json.loads((tmp_path / "vit" / "preprocessing.json").read_text())
    assert info["views"] == ["identity"] and info["folds"] == [0]
    assert info["parity"]["max_abs_diff"] <= TOLERANCE and info["parity"]["rows"] == 9
    # the graph alone, outside the toolkit, against the PyTorch model
    import torch

    from toolkit.models import load_fold_model

    model = load_fold_model(run, 0).model
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = torch.softmax(model(x), dim=-1).numpy()
    (got,) = onnx_session(tmp_path / "vit" / "model.onnx").run(None, {"image": x.numpy()})
    assert np.abs(got - want).max() <= TOLERANCE


def test_multihead_per_fold_export_names_each_head(tmp_path):
    """One graph per fold, mean_logit: outputs per head (probs and logits), and predict combines the folds exactly."""
    data = tmp_path / "data"
    make_imagefolder(data, per_class=3, size=24)
    rows = _rows(data).rename(columns={"label": "colour"})
    rows["bright"] = np.where(np.arange(len(rows)) % 3 == 0, "dark", "light")
    rows.to_csv(tmp_path / "m.csv", index=False)
    classes = {"colour": CLASSES, "bright": ["dark", "light"]}
    run = model_run(tmp_path / "runs", data, rows, arch="test_efficientnet", classes=classes,
                    tta={"combine": "mean_logit"})
    result = export_run(run, tta="none", per_fold=True)
    assert [p.name for p in result.files] == ["fold0.onnx", "fold1.onnx", "preprocessing.json"]
    session = onnx_session(result.folder / "fold1.onnx")
    assert [o.name for o in session.get_outputs()] == ["probs_colour", "probs_bright", "logits_colour", "logits_bright"]
    info = json.loads((result.folder / "preprocessing.json").read_text())
    assert [o["classes"] for o in info["outputs"]] == [CLASSES, ["dark", "light"]]
    assert set(info["parity"]["per_graph"]) == {"fold0.onnx", "fold1.onnx"}
    want = predict(run, tmp_path / "m.csv", root=data, write=False, workers=0)
    got = predict(run, tmp_path / "m.csv", root=data, engine="onnx", write=False, workers=0)
    assert got.combine == "mean_logit" and set(got.probs) == {"colour", "bright"}
    for head in classes:
        assert np.abs(got.probs[head] - want.probs[head]).max() <= TOLERANCE


def test_failed_parity_writes_nothing_and_keeps_the_earlier_export(cnn, tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "preprocessing.json").write_text('{"graphs": []}')  # an earlier export, to be kept
    with pytest.raises(ToolkitError, match="parity check failed"):
        export_run(cnn["run"], folds="0", tta="none", out=out, tolerance=-1.0)
    assert sorted(p.name for p in out.iterdir()) == ["preprocessing.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no staged folder left behind
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already holds other files"):
        export_run(cnn["run"], out=other)
