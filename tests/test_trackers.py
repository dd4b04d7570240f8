"""train.log_with: trackers write into the run folder, and a missing or misspelt tracker is one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from imagegen import make_imagefolder, write_recipe

from toolkit.cli.main import run as cli


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs") / "train", per_class=6)


def test_a_misspelt_tracker_is_refused_with_the_nearest_name(images, tmp_path, capsys) -> None:
    recipe = write_recipe(tmp_path / "r.toml", images, train={"log_with": ["tensorbord"]})
    assert cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "train.log_with[0]" in err and "did you mean `tensorboard`" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_stops_before_any_run_folder(images, tmp_path, capsys) -> None:
    # accelerate would leave it out quietly and the run would log nowhere
    recipe = write_recipe(tmp_path / "r.toml", images, train={"log_with": ["wandb"]})
    assert cli(["train", "--recipe", str(recipe), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "train.log_with names wandb, but the wandb package is not installed" in err
    assert "uv sync --extra wandb" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_tensorboard_logs_every_epoch_of_every_fold_inside_the_run(images, tmp_path, monkeypatch) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_recipe(tmp_path / "r.toml", images, train={"log_with": ["tensorboard"], "epochs": 2},
                          split={"folds": 2, "seed": 0})
    runs = tmp_path / "runs"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli(["train", "--recipe", str(recipe), "--runs", str(runs), "--name", "tb"]) == 0
    (run,) = [p for p in runs.iterdir() if (p / "run.json").is_file()]
    # the project is named after the recipe ("clsctl" for one without a name); the hparams go below it
    events = sorted((run / "trackers" / "clsctl").glob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(run) for p in run.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for fold in (0, 1):
        for name in ("train_loss", "val_loss", "macro_f1", "accuracy", "lr"):
            assert f"fold{fold}/{name}" in tags, (fold, name, sorted(tags))
        # one step counter that only grows over the folds (wandb drops a step lower than the last)
        assert [e.step for e in acc.Scalars(f"fold{fold}/macro_f1")] == [2 * fold, 2 * fold + 1]
        assert [e.value for e in acc.Scalars(f"fold{fold}/epoch")] == [0, 1]
        assert f"fold{fold}/n" not in tags and f"fold{fold}/best" not in tags
    metrics = pd.read_csv(run / "metrics.csv")
    logged = [e.value for e in acc.Scalars("fold1/val_loss")]
    assert logged == pytest.approx(metrics.loc[metrics["fold"] == 1, "val_loss"].tolist(), rel=1e-6)
    # nothing is written beside the run or in the working directory
    assert sorted(p.name for p in runs.iterdir()) == [run.name]
    assert list(work.iterdir()) == []
