"""clsctl demo: every stage on the built-in digits into one folder; the folder's record; the data's groups."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from toolkit.cli.main import run
from toolkit.demo.data import write_demo_data
from toolkit.demo.folder import RECORD, DemoFolder
from toolkit.errors import UsageError
from toolkit.store import Run


def _report_path(out: str) -> Path:
    found = re.findall(r"^report: (.+)$", out, flags=re.M)
    assert found, out[-2000:]
    return Path(found[-1])


def _check_demo_folder(root: Path, out: str, folds: int) -> dict[str, Run]:
    """Every step's artifact exists, and each step printed its headline; returns the runs by kind/name."""
    for step in range(1, 11):
        assert re.search(rf"^\[{step}/10\] \S.*: .*\(\d+\.\d s\)$", out, flags=re.M), f"no headline for step {step}"
    report = _report_path(out)
    assert report == root / "report.html" and report.is_file()
    page = report.read_text(encoding="utf-8")
    assert "digits-base" in page and "digits-aug" in page and "aug.preset" in page
    assert (root / "eda" / "eda.html").is_file() and (root / "eda" / "eda.json").is_file()
    runs = {Run(p).name: Run(p) for p in (root / "runs").iterdir()}
    assert set(runs) == {"digits-split", "digits-base", "digits-aug", "digits-ensemble", "digits-clean"}
    assert {runs[n].kind for n in runs} == {"split", "train", "ensemble", "clean"}
    assert all(r.status == "finished" for r in runs.values()), {n: r.status for n, r in runs.items()}
    for name in ("digits-base", "digits-aug"):
        train = runs[name]
        assert train.summary["cv"]["macro_f1"]["n"] == folds
        assert train.prediction_path("heldout").is_file() and train.prediction_path("heldout", "csv").is_file()
        assert runs["digits-split"].id in train.parents
    assert runs["digits-ensemble"].summary["prediction_set"] == "heldout"
    assert runs["digits-ensemble"].prediction_path("heldout").is_file()
    issues = runs["digits-clean"].read_label_issues()
    assert len(issues) == len(runs["digits-base"].read_oof())
    # The two recipes differ in exactly the one key the report puts the difference down to.
    base, aug = (runs[n].read_recipe() for n in ("digits-base", "digits-aug"))
    assert (base.aug.preset, aug.aug.preset) == ("none", "light")
    assert base.train == aug.train and base.model == aug.model and base.loss == aug.loss
    return runs


def test_quick_demo_runs_every_stage(tmp_path, capsys, monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    root = tmp_path / "demo"
    assert run(["demo", "--quick", "--out", str(root), "--open"]) == 0
    out = capsys.readouterr().out
    runs = _check_demo_folder(root, out, folds=3)
    assert opened == [(root / "report.html").as_uri()]
    written = json.loads((root / RECORD).read_text())["written"]
    assert {"data", "eda", "report.html"} <= set(written)
    assert {f"runs/{r.path.name}" for r in runs.values()} <= set(written)
    # Learnt something even in seconds: far above the 10% of chance.
    assert runs["digits-base"].summary["cv"]["accuracy"]["mean"] > 0.5


@pytest.mark.slow
def test_full_demo_in_under_three_minutes(tmp_path, capsys):
    root = tmp_path / "demo"
    start = time.perf_counter()
    assert run(["demo", "--out", str(root)]) == 0
    elapsed = time.perf_counter() - start
    runs = _check_demo_folder(root, capsys.readouterr().out, folds=5)
    for name in ("digits-base", "digits-aug"):
        assert runs[name].summary["cv"]["macro_f1"]["mean"] > 0.9
    assert elapsed < 180, f"the demo took {elapsed:.0f} s"


def test_a_folder_the_demo_did_not_write_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert run(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not write" in err[0]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / RECORD).exists()


def test_a_second_demo_replaces_only_what_the_first_wrote(tmp_path):
    folder = DemoFolder.prepare(tmp_path / "demo")
    root = folder.path
    (root / "runs" / "20260101-000000-digits-base").mkdir(parents=True)
    (root / "runs" / "20260101-000000-digits-base" / "run.json").write_text("{}")
    folder.own(root / "runs" / "20260101-000000-digits-base", root / "report.html")
    (root / "report.html").write_text("old")
    (root / "runs" / "20250101-000000-mine").mkdir()  # the user's own run beside the demo's
    (root / "notes.txt").write_text("mine")

    again = DemoFolder.prepare(root)
    assert again.written == []
    assert not (root / "report.html").exists() and not (root / "runs" / "20260101-000000-digits-base").exists()
    assert (root / "runs" / "20250101-000000-mine").is_dir() and (root / "notes.txt").read_text() == "mine"


def test_the_record_deletes_nothing_outside_the_folder(tmp_path):
    outside = tmp_path / "keep.txt"
    outside.write_text("keep")
    root = tmp_path / "demo"
    DemoFolder.prepare(root)
    (root / RECORD).write_text(json.dumps({"written": ["../keep.txt", str(outside), ""]}))
    DemoFolder.prepare(root)
    assert outside.read_text() == "keep"
    (root / RECORD).write_text("not json")
    with pytest.raises(UsageError, match="unreadable"):
        DemoFolder.prepare(root)
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        DemoFolder.prepare(tmp_path / "file")


def test_demo_data_groups_are_blocks_and_the_heldout_part_takes_whole_ones(tmp_path):
    data = write_demo_data(tmp_path, images=300, block_rows=50, heldout=0.2, seed=0)
    every = pd.read_csv(data.images, dtype=str)
    train, held = (pd.read_csv(p, dtype=str) for p in (data.train, data.heldout))
    assert len(every) == data.n_images == 300 and data.n_groups == 6
    rows = every["id"].astype(int)
    assert sorted(rows) == list(range(300))
    assert (every["group"] == [f"rows{r // 50 * 50:04d}-{r // 50 * 50 + 49:04d}" for r in rows]).all()
    assert not set(train["group"]) & set(held["group"]) and len(train) + len(held) == 300
    assert 0 < len(held) < 150 and set(held["label"]) == set(every["label"])
    assert (data.root / every["path"].iloc[0]).is_file()
    assert dict(data.heldout_labels) == dict(zip(held["id"], held["label"], strict=True))
