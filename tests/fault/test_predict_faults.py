"""clsctl predict on bad input: path-like names, unfinished runs, partial or unknown labels, bad batch sizes.

Each test injects one fault (a real Ctrl-C in the middle of a fold, a deleted checkpoint, a manifest with
empty labels, ...) and checks what a user sees: one clear line and exit 2, or a warning and a result that
says what it scored, and that a refused command writes nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli
from toolkit.config import load_recipe
from toolkit.errors import RunError, UsageError
from toolkit.predict import predict
from toolkit.store import Run
from toolkit.train import Callback

CLASSES = ["blue", "green", "red"]

pytestmark = pytest.mark.usefixtures("one_thread")


class _CtrlCInFold(Callback):
    """Ctrl-C at the end of the first epoch of one fold, after its best checkpoint was saved."""

    def __init__(self, fold: int) -> None:
        self.fold = fold

    def on_epoch_end(self, trainer, state, row, val):  # noqa: ANN001, ANN201
        if state.fold == self.fold:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict_faults")
    torch.set_num_threads(1)
    return {"base": base, "train": make_imagefolder(base / "train", per_class=6, size=24),
            "test": make_imagefolder(base / "test", per_class=2, size=24, seed=1)}


@pytest.fixture(scope="module")
def finished(data):
    """A finished 3-fold run, one epoch per fold."""
    from toolkit.train.trainer import Trainer

    recipe = load_recipe(write_recipe(data["base"] / "finished.toml", data["train"]))
    run = Trainer(recipe, runs_root=data["base"] / "runs", name="finished", progress=False).run()
    assert run.status == "finished"
    return run


@pytest.fixture(scope="module")
def interrupted(data):
    """A 3-fold run stopped by Ctrl-C in fold 1 after its first of two epochs: fold 0 finished, fold 1 has a
    mid-training checkpoint and no done record, fold 2 never started."""
    from toolkit.train.trainer import Trainer

    recipe = load_recipe(write_recipe(data["base"] / "interrupted.toml", data["train"], train={"epochs": 2}))
    trainer = Trainer(recipe, runs_root=data["base"] / "runs", name="interrupted", progress=False,
                      callbacks=[_CtrlCInFold(1)])
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    run = trainer.folder.refresh()
    assert run.status == "interrupted"
    assert run.checkpoint_folds() == [0, 1]  # the injected fault: fold 1's checkpoint is from mid-training
    assert run.read_fold_done(0) is not None and run.read_fold_done(1) is None
    return run


def _copy(run: Run, dest: Path) -> Run:
    shutil.copytree(run.path, dest / run.path.name)
    return Run(dest / run.path.name)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


# --------------------------------------------------------------------------- 1. -n that is a path
@pytest.mark.parametrize("name", ["../run", "../../escaped", "{abs}", "sub/dir", "..", ".hidden", ""])
def test_name_that_is_a_path_is_refused_and_nothing_is_written(finished, data, tmp_path, capsys, name):
    run = _copy(finished, tmp_path)
    name = name.replace("{abs}", str(tmp_path / "outside"))
    before = _files(tmp_path)
    code = cli(["predict", str(run.path), str(data["test"]), "-n", name, "--workers", "0"])
    err = _one_error_line(capsys)
    assert code == 2
    assert "--name" in err and "plain name" in err
    assert _files(tmp_path) == before  # run.json intact, nothing outside the run, no prediction set
    assert Run(run.path).status == "finished"


def test_a_plain_name_is_kept_as_given(finished, data, tmp_path):
    run = _copy(finished, tmp_path)
    result = predict(run, data["test"], name="v2.final_A-1", workers=0, progress=False)
    assert result.files["parquet"] == run.path / "predictions" / "v2.final_A-1.parquet"


# --------------------------------------------------------------------------- 2. unfinished runs
@pytest.mark.parametrize("folds", ["all", "best"])
def test_interrupted_run_is_refused_naming_the_unfinished_folds(interrupted, data, capsys, folds):
    before = _files(interrupted.path)
    code = cli(["predict", str(interrupted.path), str(data["test"]), "--folds", folds, "--workers", "0"])
    err = _one_error_line(capsys)
    assert code == 2
    assert "folds 1, 2 did not finish" in err
    assert f"clsctl train --resume {interrupted.id}" in err and "--folds 0" in err
    assert _files(interrupted.path) == before


def test_interrupted_run_predicts_with_its_finished_folds_when_asked(interrupted, data):
    result = predict(interrupted, data["test"], folds="0", write=False, workers=0, progress=False)
    assert result.folds == [0]
    for fold in ("1", "0,1", "2"):  # mid-training weights, or no weights at all
        with pytest.raises(UsageError, match=r"fold [12] did not finish"):
            predict(interrupted, data["test"], folds=fold, write=False, workers=0, progress=False)


def test_run_with_a_deleted_checkpoint_is_refused(finished, data, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    run.checkpoint_path(2).unlink()
    code = cli(["predict", str(run.path), str(data["test"]), "--workers", "0"])
    err = _one_error_line(capsys)
    assert code == 2
    assert "fold 2 finished but folds/2/model.safetensors is missing" in err and "--folds 0,1" in err
    with pytest.raises(RunError, match="fold 2"):
        predict(run, data["test"], folds="best", write=False, workers=0, progress=False)
    result = predict(run, data["test"], folds="0,1", workers=0, progress=False)
    assert result.folds == [0, 1] and result.name == "test-fold0_1"  # the name says it is not every fold


# --------------------------------------------------------------------------- 3. partial and unknown labels
def _manifest(data: dict, tmp_path: Path, labels: list[str]) -> Path:
    paths = sorted(str(p.relative_to(data["test"])) for p in data["test"].rglob("*.png"))
    frame = pd.DataFrame({"path": paths, "label": labels[:len(paths)]})
    frame.to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_manifest_with_some_empty_labels_scores_only_the_labelled_rows(finished, data, tmp_path, capsys):
    from toolkit.metrics import classification_metrics

    run = _copy(finished, tmp_path)
    truth = [p.parent.name for p in sorted(data["test"].rglob("*.png"))]
    labels = [c if i % 2 == 0 else "" for i, c in enumerate(truth)]  # every other label missing
    csv = _manifest(data, tmp_path, labels)
    result = predict(run, csv, root=data["test"], workers=0, progress=False, name="half")
    assert result.n == 6 and result.scores["n"] == 3
    kept = [i for i, c in enumerate(labels) if c]
    expected = classification_metrics([CLASSES.index(labels[i]) for i in kept], result.probs["label"][kept], CLASSES)
    assert result.scores["accuracy"] == pytest.approx(expected["accuracy"])
    assert json.loads(result.files["json"].read_text())["scores"]["n"] == 3
    code = cli(["predict", str(run.path), str(csv), "--root", str(data["test"]), "--workers", "0", "-n", "half"])
    assert code == 0
    assert "scored 3 of 6 images (3 without a label)" in capsys.readouterr().out


def test_manifest_with_only_empty_labels_predicts_unscored(finished, data, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    csv = _manifest(data, tmp_path, [""] * 6)
    result = predict(run, csv, root=data["test"], workers=0, progress=False)
    assert result.n == 6 and result.scores is None
    assert len(pd.read_parquet(result.files["parquet"])) == 6


def test_imagefolder_with_an_unknown_class_warns_and_scores_the_known_ones(finished, data, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    folder = tmp_path / "test"
    shutil.copytree(data["test"], folder)
    make_imagefolder(folder, per_class=2, size=24, classes={"purple": (150, 30, 200)}, seed=2)
    result = predict(run, folder, workers=0, progress=False, name="open")
    assert result.n == 8 and result.source == "imagefolder"
    assert result.scores["n"] == 6 and sum(result.scores["support"].values()) == 6
    assert any("purple" in note and "not scored" in note for note in result.notes)
    code = cli(["predict", str(run.path), str(folder), "--workers", "0", "-n", "open"])
    out = capsys.readouterr().out
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "purple" in warnings[0] and "2 image(s)" in warnings[0]
    assert "scored 6 of 8 images" in out


def test_unlabeled_folder_with_subfolders_stays_unlabeled(finished, tmp_path):
    run = _copy(finished, tmp_path)
    folder = tmp_path / "batches"
    make_imagefolder(folder, per_class=2, size=24, classes={"batch1": (10, 10, 10), "batch2": (90, 90, 90)})
    result = predict(run, folder, workers=0, progress=False, write=False)
    assert result.source == "folder" and result.scores is None and result.notes == []


# --------------------------------------------------------------------------- 4. batch size
@pytest.mark.parametrize("batch", ["0", "-4"])
def test_batch_size_below_one_is_refused(finished, data, tmp_path, capsys, batch):
    run = _copy(finished, tmp_path)
    before = _files(tmp_path)
    code = cli(["predict", str(run.path), str(data["test"]), "-b", batch, "--workers", "0"])
    err = _one_error_line(capsys)
    assert code == 2 and f"--batch-size {batch}" in err
    assert _files(tmp_path) == before
    with pytest.raises(UsageError):
        predict(run, data["test"], batch_size=int(batch), write=False, workers=0, progress=False)
    assert np.isfinite(predict(run, data["test"], batch_size=1, write=False, workers=0, progress=False)
                       .probs["label"]).all()
