"""clsctl clean: label issues from out-of-fold probabilities, duplicates with other labels, --apply."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagegen import make_imagefolder, write_recipe
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.errors import RunError, UsageError
from toolkit.store import RunStore
from toolkit.store.tables import probability_frame

CLASSES = ["cat", "dog", "fox"]


def _fake_run(tmp_path: Path, n: int = 90, flipped: tuple[int, ...] = (3, 17, 40, 77), seed: int = 0):
    """A finished train run whose out-of-fold probabilities are confident in the true class, with a few
    given labels flipped to another class; two images are byte-identical copies with different labels."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "images"
    root.mkdir()
    true = np.arange(n) % 3
    given = true.copy()
    for i in flipped:
        given[i] = (true[i] + 1) % 3
    paths = []
    for i in range(n):
        path = f"{CLASSES[given[i]]}/{i:03d}.png"
        (root / path).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / path)
        paths.append(path)
    dup_a, dup_b = paths[0], f"{CLASSES[1]}/copy_of_000.png"  # the same picture under another label
    shutil.copy(root / dup_a, root / dup_b)
    paths.append(dup_b)
    given = np.append(given, 1)
    true = np.append(true, 0)
    probs = np.full((len(paths), 3), 0.04)
    probs[np.arange(len(paths)), true] = 0.92
    probs[-1] = [0.5, 0.45, 0.05]
    run = RunStore(tmp_path / "runs").create("train", name="fake", extra={"data_root": str(root)})
    manifest = pd.DataFrame({"path": paths, "label": np.asarray(CLASSES)[given], "fold": np.arange(len(paths)) % 3})
    run.write_manifest(manifest)
    run.write_classes(["label"], {"label": CLASSES})
    run.write_oof(probability_frame(paths, paths, {"label": probs}, {"label": CLASSES}, folds=manifest["fold"],
                                    labels={"label": given}))
    run.finish()
    return run, set(np.asarray(paths)[list(flipped)]), root


def test_known_label_errors_are_surfaced_first(tmp_path):
    from toolkit.clean.cleaner import clean_run

    source, flipped, _ = _fake_run(tmp_path)
    result = clean_run(source, runs_root=tmp_path / "runs", workers=1)
    issues = result.heads[0]
    suspects = issues.suspects
    assert flipped <= set(suspects["path"])
    assert set(suspects.head(len(flipped))["path"]) == flipped  # the flipped rows rank first
    row = suspects.iloc[0]
    assert row["suggested_label"] != row["label"] and row["label_quality"] < 0.1
    assert issues.health["rows"] == 91 and 0 < issues.health["score"] < 1
    assert {"a", "b", "kind", "label_a", "label_b"} <= set(result.conflicts.columns)
    pair = result.conflicts.iloc[0]
    assert {pair["a"], pair["b"]} == {"cat/000.png", "dog/copy_of_000.png"} and pair["kind"] == "exact"
    # the clean run records what it found, its parent and every image once
    run = result.run
    assert run.kind == "clean" and run.parents == [source.id] and run.status == "finished"
    table = run.read_label_issues()
    assert len(table) == 91 and table["path"].tolist() == source.read_manifest()["path"].tolist()
    assert list(table.columns[:7]) == ["id", "path", "label", "suggested_label", "label_quality", "is_label_issue", "rank"]
    assert sorted(table["rank"]) == list(range(1, 92))


def test_apply_writes_a_new_manifest_and_never_touches_the_source(tmp_path):
    from toolkit.clean.cleaner import clean_run

    source, flipped, _ = _fake_run(tmp_path)
    before = (source.path / "manifest.csv").read_bytes()
    dropped = clean_run(source, runs_root=tmp_path / "runs", apply="drop", duplicates=False)
    fixed = pd.read_csv(dropped.files["clean_manifest"], dtype=str)
    assert not flipped & set(fixed["path"]) and len(fixed) == 91 - dropped.applied["changed"]
    relabelled = clean_run(source, runs_root=tmp_path / "runs", apply="relabel", duplicates=False)
    fixed = pd.read_csv(relabelled.files["clean_manifest"], dtype=str).set_index("path")
    for path in flipped:
        assert fixed.loc[path, "label"] == relabelled.heads[0].table.set_index("path").loc[path, "suggested_label"]
    assert (source.path / "manifest.csv").read_bytes() == before
    strict = clean_run(source, runs_root=tmp_path / "runs", apply="drop", min_quality=0.0, duplicates=False)
    assert strict.applied["changed"] == 0  # no quality is below 0


def test_bad_options_fail_before_any_run_is_made(tmp_path):
    from toolkit.clean.cleaner import clean_run

    source, _, _ = _fake_run(tmp_path)
    with pytest.raises(UsageError, match="--filter-by 'nope'"):
        clean_run(source, runs_root=tmp_path / "runs", filter_by="nope")
    with pytest.raises(UsageError, match="--apply 'fix'"):
        clean_run(source, runs_root=tmp_path / "runs", apply="fix")
    assert [r.kind for r in RunStore(tmp_path / "runs").list()] == ["train"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from toolkit.config import load_recipe
    from toolkit.train import train

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("clean")
    images = make_imagefolder(base / "train", per_class=8)
    recipe = load_recipe(write_recipe(base / "r.toml", images, train={"epochs": 1}))
    full = train(recipe, runs_root=base / "runs", name="full", progress=False)
    one = train(recipe, runs_root=base / "runs", name="one", folds="0", progress=False)
    return {"base": base, "full": full, "one": one, "recipe": recipe}


def test_a_run_without_every_out_of_fold_row_is_refused(trained):
    from toolkit.clean.cleaner import clean_run

    with pytest.raises(RunError, match=r"--folds all"):
        clean_run(trained["one"], runs_root=trained["base"] / "runs")


def test_cli_clean_then_train_on_the_clean_manifest(trained, capsys):
    from toolkit.config import with_overrides
    from toolkit.train import train

    runs = trained["base"] / "runs"
    code = cli(["clean", str(trained["full"].path), "--apply", "drop", "--min-quality", "0.5", "--runs", str(runs),
                "--name", "c1"])
    out = capsys.readouterr().out
    assert code == 0 and "label health score" in out and "retrain: clsctl train" in out
    clean = RunStore(runs).open("c1")
    assert (clean.path / "gallery.html").is_file() and (clean.path / "label_issues.csv").is_file()
    summary = json.loads((clean.path / "summary.json").read_text())
    manifest = summary["apply"]["manifest"]
    recipe = with_overrides(trained["recipe"], {"data.manifest": manifest, "data.root": summary["apply"]["root"]})
    again = train(recipe, runs_root=runs, name="retrained", folds="0", progress=False)
    assert again.status == "finished"
    used = again.read_manifest()
    assert len(used) == summary["apply"]["rows_after"]
    # the clean manifest keeps the source's folds, so the retrained run is comparable fold by fold
    source_folds = trained["full"].read_manifest().set_index("path")["fold"]
    assert (used.set_index("path")["fold"] == source_folds.loc[used["path"]]).all()
    # the retrained run names the clean run as its parent, and the report sets it against the source run
    assert again.parents == [clean.id]
    page = trained["base"] / "report.html"
    code = cli(["report", str(trained["full"].path), clean.id, again.id, "--runs", str(runs), "--out", str(page)])
    out = capsys.readouterr().out
    assert code == 0 and page.is_file()
    row = next(line for line in out.splitlines() if line.strip().startswith(again.id))
    assert f"{trained['full'].id} (parent)" in row and "data.manifest" in row


def test_quick_cleans_a_folder_without_a_run(tmp_path):
    """--quick on an ImageFolder with three labels moved to the wrong class folder."""
    from toolkit.report.clean import clean

    root = make_imagefolder(tmp_path / "data", per_class=20)
    moved = ["red/000.png", "green/001.png", "blue/002.png"]
    targets = {"red/000.png": "green", "green/001.png": "blue", "blue/002.png": "red"}
    for path in moved:
        (root / path).rename(root / targets[path] / f"moved_{Path(path).name}")
    result = clean(root, quick=True, backbone="test_efficientnet", pretrained=False, image_size=32, workers=1,
                   runs_root=tmp_path / "runs", apply="relabel")
    flagged = set(result.heads[0].suspects["path"])
    assert {f"{targets[p]}/moved_{Path(p).name}" for p in moved} <= flagged
    run = result.run
    assert run.kind == "clean" and run.parents == [] and run.info["quick"]["backbone"] == "test_efficientnet"
    assert (run.path / "gallery.html").is_file() and (run.path / "outliers.csv").is_file()
    fixed = pd.read_csv(result.files["clean_manifest"], dtype=str).set_index("path")
    assert fixed.loc["red/moved_002.png", "label"] == "blue"
