"""clsctl predict: preprocessing identical to training, TTA views, scoring, submissions, --tta auto."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from imagegen import make_imagefolder, write_recipe
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe
from toolkit.errors import DataError, UsageError
from toolkit.predict import build_submission, check_input_sizes, parse_tta, predict
from toolkit.predict.tta import apply_op, build_views

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["blue", "green", "red"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 3-fold run (2 epochs) on generated colour images, and a labeled test ImageFolder."""
    from toolkit.train.trainer import Trainer

    base = tmp_path_factory.mktemp("predict")
    # 48 px images for a 32 px model: the trainer's decoded cache downscales them before the transforms,
    # so predict only reproduces the out-of-fold probabilities if it reads pixels the same way.
    images = make_imagefolder(base / "train", per_class=12, size=48)
    test = make_imagefolder(base / "test", per_class=4, seed=1)
    recipe = load_recipe(write_recipe(base / "r.toml", images, train={"epochs": 2}))
    run = Trainer(recipe, runs_root=base / "runs", name="tiny", progress=False).run()
    return {"base": base, "run": run, "runs": base / "runs", "test": test, "train": images}


def _unlabeled(folder: Path, n: int = 5, symmetric: bool = False, seed: int = 3) -> Path:
    """Noisy colour images in one folder; ``symmetric``: each is its own left-right mirror, but not up-down."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pix = rng.integers(0, 256, (24, 24, 3)).astype(np.uint8)
        if symmetric:
            pix[:, 12:] = pix[:, :12][:, ::-1]
        Image.fromarray(pix).save(folder / f"img_{i:02d}.png")
    return folder


# --------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("eval_size", [None, 40])
@pytest.mark.parametrize("recipe_path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.stem)
def test_preprocessing_equals_trainer_eval_for_every_recipe(recipe_path, eval_size):
    """What the trainer builds for validation (its image loader, resolve_normalization on the model's
    config, then build_transform(train=False)) equals what predict rebuilds from model.json alone."""
    import albumentations as A

    from toolkit.config.loader import with_overrides
    from toolkit.data.preprocessing import Preprocessing, make_image_loader
    from toolkit.data.transforms import build_transform, eval_pipeline, resolve_normalization
    from toolkit.models import ModelRecord, create_model, model_data_config, model_settings

    recipe = load_recipe(recipe_path)
    if eval_size is not None:
        recipe = with_overrides(recipe, {"data.eval_size": eval_size})
    heads = recipe.targets.heads
    cfg = dataclasses.replace(recipe.model, pretrained=False, pretrained_file=None)
    with torch.device("meta"):  # only the pretrained config is read; no weights are allocated
        model = create_model(cfg, [3] * len(heads) if heads else 3, heads or None)
    mean, std = resolve_normalization(recipe.data, model_data_config(model))
    trainer_tf = build_transform(recipe, train=False, mean=mean, std=std)
    # model.json as the trainer writes it, after a JSON round trip, read with no recipe
    names = heads or ["label"]
    written = ModelRecord(arch=recipe.model.name, heads=names, classes={h: ["a", "b", "c"] for h in names},
                          preprocessing=Preprocessing.from_recipe(recipe, mean, std),
                          model=model_settings(recipe.model))
    record = ModelRecord.from_json(json.loads(json.dumps(written.to_json())))
    assert record == written
    predict_tf = eval_pipeline(record.preprocessing)
    assert A.to_dict(predict_tf) == A.to_dict(trainer_tf)
    image = np.random.default_rng(0).integers(0, 256, (61, 83, 3)).astype(np.uint8)
    a, b = trainer_tf(image=image)["image"], predict_tf(image=image)["image"]
    side = eval_size or recipe.data.image_size
    assert a.shape == (3, side, side)
    assert torch.equal(a, b)
    # the same pixels before the transforms: the decoded cache at the same downscale
    trainer_loader, predict_loader = make_image_loader(recipe), record.preprocessing.image_loader(0)
    assert type(predict_loader) is type(trainer_loader)
    if recipe.data.cache:  # same folder and downscale; only the in-memory budget differs (predict keeps none)
        assert (predict_loader.root, predict_loader.short_side) == (trainer_loader.root, trainer_loader.short_side)
        assert predict_loader.ram_budget == 0
    # model.json is the source of truth: another recorded mean changes the output
    other_prep = dataclasses.replace(record.preprocessing, mean=(0.0, 0.0, 0.0))
    other = eval_pipeline(other_prep)(image=image)["image"]
    assert not torch.equal(other, a)


def test_predict_reproduces_out_of_fold_probabilities(trained):
    run = trained["run"]
    oof = pd.read_parquet(run.file("oof.parquet"))
    for k in (0, 2):
        result = predict(run, trained["train"], tta="none", folds=str(k), write=False, workers=0, progress=False)
        held = oof[oof["fold"] == k]
        pos = {p: i for i, p in enumerate(result.paths)}
        got = result.probs["label"][[pos[p] for p in held["path"]]]
        np.testing.assert_allclose(got, held[CLASSES].to_numpy(), atol=1e-5)


# --------------------------------------------------------------------------- views
def test_parse_tta():
    assert parse_tta("hflip, scale:1.150,hflip") == ["identity", "hflip", "scale:1.15"]
    assert parse_tta(None) == parse_tta("none") == ["identity"]
    assert parse_tta(["fivecrop", "trainaug:3"]) == ["identity", "fivecrop", "trainaug:3"]
    for bad in ("hflp", "scale:1", "scale:x", "trainaug:0", "hflip,auto"):
        with pytest.raises(UsageError):
            parse_tta(bad)
    views = build_views(["identity", "scale:1.25", "fivecrop"], 32)
    assert [v.pipeline.size for v in views] == [None, 40, 37] and views[2].passes == 5


def test_fivecrop_ops_cut_the_corners_and_center():
    x = torch.arange(5 * 5, dtype=torch.float32).reshape(1, 1, 5, 5)
    assert apply_op("crop:tl", x, 3)[0, 0].tolist() == [[0, 1, 2], [5, 6, 7], [10, 11, 12]]
    assert apply_op("crop:br", x, 3)[0, 0, -1].tolist() == [22, 23, 24]
    assert apply_op("crop:tr", x, 3)[0, 0, 0].tolist() == [2, 3, 4]
    assert apply_op("crop:bl", x, 3)[0, 0, :, 0].tolist() == [10, 15, 20]
    assert apply_op("crop:c", x, 3)[0, 0, 1, 1].item() == 12
    assert torch.equal(apply_op("hflip", x, 5)[0, 0, 0], torch.tensor([4.0, 3, 2, 1, 0]))


def test_hflip_on_symmetric_images_equals_no_tta(trained, tmp_path):
    folder = _unlabeled(tmp_path / "sym", symmetric=True)
    kw = dict(write=False, workers=0, progress=False)
    plain = predict(trained["run"], folder, tta="none", **kw).probs["label"]
    flipped = predict(trained["run"], folder, tta="hflip", **kw).probs["label"]
    np.testing.assert_allclose(flipped, plain, atol=1e-6)
    # the same images are not up-down symmetric: a vertical flip does change the prediction
    vflipped = predict(trained["run"], folder, tta="vflip", **kw).probs["label"]
    assert np.abs(vflipped - plain).max() > 1e-4


def test_trainaug_and_fivecrop_are_reproducible_and_change_predictions(trained, tmp_path):
    folder = _unlabeled(tmp_path / "u", n=4)
    kw = dict(write=False, workers=0, progress=False, folds="0")
    plain = predict(trained["run"], folder, tta="none", **kw).probs["label"]
    a = predict(trained["run"], folder, tta="trainaug:2,fivecrop", **kw).probs["label"]
    b = predict(trained["run"], folder, tta="trainaug:2,fivecrop", **kw).probs["label"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - plain).max() > 1e-4
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)


def test_fixed_size_model_rejects_scale_views():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32).eval()
    check_input_sizes(vit, [32], 32, 3)  # the trained size is fine
    with pytest.raises(UsageError, match="fixed input size"):
        check_input_sizes(vit, [32, 40], 32, 3)


def test_out_of_memory_halves_the_forward_chunk():
    from toolkit.predict.engine import Inference

    class Picky(torch.nn.Module):
        def forward(self, x):
            if len(x) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return x.mean(dim=(2, 3))

    engine = Inference(batch_size=16, workers=0)
    x = torch.randn(10, 3, 4, 4)
    out = engine._forward(Picky(), x)
    assert engine.chunk == 2  # 16 → 8 → 4 → 2
    torch.testing.assert_close(out, x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------- data sources and scoring
def test_imagefolder_is_scored(trained):
    from toolkit.metrics import classification_metrics

    result = predict(trained["run"], trained["test"], tta="hflip", workers=0, progress=False, name="scored")
    assert result.source == "imagefolder" and result.n == 12
    y = np.array([CLASSES.index(p.split("/")[0]) for p in result.paths])
    expected = classification_metrics(y, result.probs["label"], CLASSES)
    assert result.scores["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert result.scores["accuracy"] >= 0.75  # the colours are learnable in 2 epochs
    saved = json.loads(result.files["json"].read_text())
    assert saved["scores"]["per_class_recall"] == expected["per_class_recall"]
    assert saved["views"] == ["identity", "hflip"] and saved["folds"] == [0, 1, 2]


def test_cli_predict_writes_parquet_and_submission(trained, tmp_path, capsys):
    folder = _unlabeled(tmp_path / "holdout", n=7)
    code = cli(["predict", str(trained["run"].path), str(folder), "--tta", "hflip,scale:1.25",
                "--runs", str(trained["runs"]), "--workers", "0"])
    assert code == 0
    pred_dir = trained["run"].file("predictions")
    table = pd.read_parquet(pred_dir / "holdout-hflip_scale1.25.parquet")
    assert list(table.columns) == ["id", "path", *CLASSES] and len(table) == 7
    assert table["id"].tolist() == [f"img_{i:02d}" for i in range(7)]
    np.testing.assert_allclose(table[CLASSES].sum(axis=1), 1.0, atol=1e-5)
    sub = pd.read_csv(pred_dir / "holdout-hflip_scale1.25.csv", dtype={"id": str})
    assert list(sub.columns) == ["id", "label"] and len(sub) == 7
    assert sub["label"].tolist() == [CLASSES[i] for i in table[CLASSES].to_numpy().argmax(axis=1)]
    assert "7 images" in capsys.readouterr().out


def test_manifest_input_keeps_its_order_and_ids(trained, tmp_path):
    folder = _unlabeled(tmp_path / "m", n=4)
    pd.DataFrame({"id": ["d", "c", "b", "a"], "path": [f"img_{i:02d}.png" for i in (3, 2, 1, 0)]}).to_csv(
        tmp_path / "m.csv", index=False)
    result = predict(trained["run"], tmp_path / "m.csv", root=folder, workers=0, progress=False, folds="1")
    assert result.ids == ["d", "c", "b", "a"] and result.source == "manifest" and result.scores is None
    assert result.name == "m-fold1"
    assert pd.read_parquet(result.files["parquet"])["path"].tolist() == [f"img_{i:02d}.png" for i in (3, 2, 1, 0)]


def test_folds_best_and_mean_logit(trained, tmp_path):
    folder = _unlabeled(tmp_path / "u", n=3)
    summary = trained["run"].summary
    best = max(summary["folds"], key=lambda k: (summary["folds"][k]["best_score"], -int(k)))
    result = predict(trained["run"], folder, folds="best", combine="mean_logit", write=False, workers=0,
                     progress=False, tta="hflip")
    assert result.folds == [int(best)] and result.combine == "mean_logit"
    as_prob = predict(trained["run"], folder, folds="best", write=False, workers=0, progress=False, tta="hflip")
    assert np.abs(result.probs["label"] - as_prob.probs["label"]).max() > 0  # a different average
    with pytest.raises(UsageError):
        predict(trained["run"], folder, folds="7", write=False)


# --------------------------------------------------------------------------- sample submissions
def test_sample_submission_layouts(trained, tmp_path):
    folder = _unlabeled(tmp_path / "s", n=4)
    ids = [f"img_{i:02d}" for i in (2, 0, 3, 1)]  # the sample's own order
    probs_sample = tmp_path / "probs.csv"
    pd.DataFrame({"image": ids, "red": 0.0, "blue": 0.0, "green": 0.0}).to_csv(probs_sample, index=False)
    result = predict(trained["run"], folder, sample_submission=probs_sample, workers=0, progress=False, name="p")
    sub = pd.read_csv(result.files["csv"], dtype={"image": str})
    assert list(sub.columns) == ["image", "red", "blue", "green"] and sub["image"].tolist() == ids
    table = pd.read_parquet(result.files["parquet"]).set_index("id")
    np.testing.assert_allclose(sub[["red", "blue", "green"]].to_numpy(), table.loc[ids, ["red", "blue", "green"]],
                               rtol=1e-6)

    # one label column: names; integers in the sample: class indices; ids given as file names match too
    names = [f"{i}.png" for i in ids]
    pd.DataFrame({"file": names, "class": "x"}).to_csv(tmp_path / "lab.csv", index=False)
    sub = build_submission(result.ids, result.paths, table.loc[result.ids, CLASSES].to_numpy(), CLASSES,
                           sample=pd.read_csv(tmp_path / "lab.csv", dtype={"file": str}))
    expected = [CLASSES[int(np.argmax(table.loc[i, CLASSES].to_numpy()))] for i in ids]
    assert sub["file"].tolist() == names and sub["class"].tolist() == expected
    sub = build_submission(result.ids, result.paths, table.loc[result.ids, CLASSES].to_numpy(), CLASSES,
                           sample=pd.DataFrame({"file": names, "ans": 0}))
    assert sub["ans"].tolist() == [CLASSES.index(c) for c in expected]


@pytest.mark.parametrize(("ids", "columns", "message"), [
    (["img_00", "img_01", "img_02"], ["red", "blue", "green"], r"1 predicted image\(s\) are not in it.*img_03"),
    (["img_00", "img_01", "img_02", "img_03", "zzz"], ["label"], r"1 id\(s\) have no prediction: row 6 \(zzz\)"),
    (["img_00", "img_01", "img_02", "img_03"], ["red", "blue", "purple"], r"class\(es\) the predictions do not have: purple"),
    (["img_00", "img_01", "img_02", "img_03"], ["red", "blue"], r"class-list mismatch: the header lacks green"),
])
def test_sample_submission_errors(trained, tmp_path, ids, columns, message):
    folder = _unlabeled(tmp_path / "e", n=4)
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": ids, **{c: 0 for c in columns}}).to_csv(sample, index=False)
    before = sorted(p.name for p in trained["run"].file("predictions").glob("*")) \
        if trained["run"].file("predictions").is_dir() else []
    with pytest.raises(DataError, match=message):
        predict(trained["run"], folder, sample_submission=sample, workers=0, progress=False, name="bad")
    after = sorted(p.name for p in trained["run"].file("predictions").glob("*"))
    assert after == before  # nothing written for a submission that does not fit
    code = cli(["predict", str(trained["run"].path), str(folder), "--sample-submission", str(sample), "--workers", "0"])
    assert code == 2


# --------------------------------------------------------------------------- --tta auto
def test_tta_auto_compares_policies_on_out_of_fold_rows(trained, tmp_path):
    folder = _unlabeled(tmp_path / "a", n=3)
    result = predict(trained["run"], folder, tta="auto", workers=0, progress=False)
    report = json.loads(result.files["tta"].read_text())
    assert result.files["tta"].name == "a-auto.tta.json"
    scores = {p["name"]: p["score"] for p in report["policies"]}
    assert len(scores) == 8 and report["rows"] == 36 and report["metric"] == "macro_f1"
    assert scores[report["chosen"]] >= scores["none"]
    assert report["chosen"] == max(scores, key=lambda n: (scores[n], -list(scores).index(n)))
    assert set(report["gain_per_class"]) == set(CLASSES)
    chosen = next(p for p in report["policies"] if p["name"] == report["chosen"])
    none = report["policies"][0]
    for c in CLASSES:
        assert report["gain_per_class"][c] == pytest.approx(chosen["per_class_recall"][c] - none["per_class_recall"][c])
    assert result.views == chosen["views"]
    # the "none" policy's score is the run's own out-of-fold score
    assert scores["none"] == pytest.approx(trained["run"].summary["oof"]["macro_f1"], abs=1e-9)


# --------------------------------------------------------------------------- multi-head
def test_multihead_predicts_each_head_and_the_combined_label(tmp_path):
    from toolkit.train.trainer import Trainer

    root = tmp_path / "mh"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for colour, rgb in {"red": (220, 30, 30), "blue": (30, 40, 220)}.items():
        for bright in ("dark", "light"):
            for i in range(6):
                scale = 0.35 if bright == "dark" else 1.0
                pix = np.array(rgb, np.float32) * scale + rng.normal(0, 10, (24, 24, 3))
                Image.fromarray(np.clip(pix, 0, 255).astype(np.uint8)).save(root / f"{colour}_{bright}_{i}.png")
                rows.append({"path": f"{colour}_{bright}_{i}.png", "colour": colour, "bright": bright,
                             "label": f"{colour}-{bright}"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", root, data={"manifest": str(tmp_path / "m.csv")},
                                      targets={"heads": ["colour", "bright"], "label": "both",
                                               "combine": {"both": {"columns": ["colour", "bright"],
                                                                    "separator": "-"}}},
                                      split={"folds": 2}))
    run = Trainer(recipe, runs_root=tmp_path / "runs", folds="0", progress=False).run()
    result = predict(run, tmp_path / "m.csv", root=root, workers=0, progress=False)
    assert set(result.probs) == {"colour", "bright"} and result.scores is not None  # labeled manifest
    assert "heads" in result.scores and result.scores["n"] == 24
    table = pd.read_parquet(result.files["parquet"])
    assert list(table.columns) == ["id", "path", "colour:blue", "colour:red", "bright:dark", "bright:light"]
    sub = pd.read_csv(result.files["csv"])
    colour = np.array(["blue", "red"])[table[["colour:blue", "colour:red"]].to_numpy().argmax(1)]
    bright = np.array(["dark", "light"])[table[["bright:dark", "bright:light"]].to_numpy().argmax(1)]
    assert sub["label"].tolist() == [f"{c}-{b}" for c, b in zip(colour, bright, strict=True)]


@pytest.mark.slow
def test_two_processes_write_the_same_predictions(trained, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): sharded, gathered, written once, equal to 1 process."""
    import os
    import subprocess
    import sys

    folder = make_imagefolder(tmp_path / "odd", per_class=7, seed=4)  # 21 images: uneven shards
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "toolkit", "predict",
           str(trained["run"].path), str(folder), "--tta", "hflip", "--name", "ddp", "--workers", "0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("21 images") == 1  # only the main process reports
    single = predict(trained["run"], folder, tta="hflip", write=False, workers=0, progress=False)
    ddp = pd.read_parquet(trained["run"].file("predictions/ddp.parquet"))
    assert ddp["id"].tolist() == single.ids
    np.testing.assert_allclose(ddp[CLASSES].to_numpy(), single.probs["label"], atol=1e-6)
