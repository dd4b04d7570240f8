"""Faults injected into the data layer: labels read as numbers or as missing, an eda folder that
becomes a class, and symbolic links that lead out of the image root."""

from __future__ import annotations

import csv
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagegen import make_imagefolder
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.config.schema import DataConfig, TargetsConfig
from toolkit.data.sources import (
    load_manifest,
    manifest_from_folder,
    manifest_from_path,
    manifest_from_pattern,
)
from toolkit.data.splits import read_source
from toolkit.data.targets import class_order
from toolkit.errors import DataError, UsageError
from toolkit.report.eda import run_eda


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(path)
    return path


def write_manifest_csv(folder: Path, labels: list[str], extra: dict[str, list[str]] | None = None) -> Path:
    """``folder/m.csv`` with one tiny image per row, the labels written exactly as given."""
    rows = []
    for i, label in enumerate(labels):
        png(folder / "img" / f"{i:02d}.png", value=10 * i)
        rows.append([f"img/{i:02d}.png", label, *[values[i] for values in (extra or {}).values()]])
    table = folder / "m.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", *(extra or {})])
        writer.writerows(rows)
    return table


def label_cells(table: Path) -> list[str]:
    """The label column as the file spells it, without any parsing."""
    with table.open(newline="", encoding="utf-8") as f:
        return [row["label"] for row in csv.DictReader(f)]


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail (instead of hanging the suite) when a listing runs in circles."""
    def expire(signum, frame):
        raise TimeoutError("the listing did not finish in 20 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------
# 1. labels, ids and groups are text, read as written
# --------------------------------------------------------------------------------------------


def test_labels_with_leading_zeros_stay_distinct_classes(tmp_path: Path) -> None:
    table = write_manifest_csv(tmp_path, ["00", "01", "1", "01", "00", "1"],
                               {"group": ["007", "7", "007", "7", "07", "07"], "id": ["0001", "0002", "0003",
                                                                                    "0004", "0005", "0006"]})
    for df in (load_manifest(DataConfig(manifest=str(table), group_column="group")), read_source(table)):
        assert df["label"].tolist() == ["00", "01", "1", "01", "00", "1"]
        assert class_order(df, "label", TargetsConfig()) == ["00", "01", "1"]
        assert df["id"].tolist()[:2] == ["0001", "0002"]
    assert load_manifest(DataConfig(manifest=str(table), group_column="group"))["group"].nunique() == 3


def test_class_names_that_look_missing_survive(tmp_path: Path) -> None:
    names = ["None", "NA", "null", "n/a", "NaN", "None"]
    table = write_manifest_csv(tmp_path, names)
    df = load_manifest(DataConfig(manifest=str(table)))  # require_label: no "empty label" error
    assert df["label"].tolist() == names
    assert sorted(class_order(df, "label", TargetsConfig())) == sorted(set(names))
    # Only a truly empty cell is missing.
    table.write_text(table.read_text().replace("img/01.png,NA", "img/01.png,"))
    with pytest.raises(DataError, match="1 row"):
        load_manifest(DataConfig(manifest=str(table)))


def test_split_in_place_keeps_the_label_text(tmp_path: Path) -> None:
    labels = ["06", "NA", "06", "NA", "6", "null", "6", "null", "06", "NA"]
    table = write_manifest_csv(tmp_path, labels)
    assert cli(["split", str(table), "--folds", "2", "-o", str(table), "--runs", str(tmp_path / "runs")]) == 0
    assert label_cells(table) == labels
    in_run = next((tmp_path / "runs").iterdir()) / "manifest.csv"
    assert label_cells(in_run) == labels


def test_pattern_ids_keep_their_leading_zeros(tmp_path: Path) -> None:
    for pid, age in (("000001", 45), ("000002", 20), ("000010", 60)):
        png(tmp_path / f"{pid}_{age}" / "mask1.png")
    df = manifest_from_pattern(tmp_path, r"(?P<id>\d+)_(?P<age>\d+)/.*")
    assert df["id"].tolist() == ["000001", "000002", "000010"]
    assert df["age"].tolist() == [45, 20, 60]  # written without a leading zero: still a number


def test_eda_still_measures_numeric_attribute_columns(tmp_path: Path) -> None:
    n = 24
    table = write_manifest_csv(tmp_path, ["a", "b"] * (n // 2),
                               {"width_mm": [str(10 + 3 * i) for i in range(n)],
                                "code": [f"{i:04d}" for i in range(n)]})
    report = run_eda(manifest_from_path(table), None, tmp_path / "out", workers=1, thumbs=0, progress=False)
    assert report["attributes"]["width_mm"]["kind"] == "numeric"
    assert report["attributes"]["width_mm"]["summary"]["max"] == 10 + 3 * (n - 1)
    assert report["attributes"]["code"]["kind"] == "identifier"  # zero-padded codes are names, not numbers


# --------------------------------------------------------------------------------------------
# 2. the eda folder never lands inside the data
# --------------------------------------------------------------------------------------------


def test_eda_from_inside_an_imagefolder_writes_next_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = make_imagefolder(tmp_path / "data" / "train", per_class=3, size=8)
    monkeypatch.chdir(root)
    assert cli(["eda", ".", "--workers", "1", "--thumbs", "1"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["blue", "green", "red"]
    assert (tmp_path / "data" / "eda" / "train" / "eda.html").is_file()
    capsys.readouterr()

    assert cli(["split", ".", "--folds", "3", "--runs", str(tmp_path / "runs")]) == 0
    run = next((tmp_path / "runs").iterdir())
    assert sorted(pd.read_csv(run / "manifest.csv")["label"].unique()) == ["blue", "green", "red"]


def test_eda_refuses_an_out_folder_inside_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_imagefolder(tmp_path / "train", per_class=2, size=8)
    capsys.readouterr()
    assert cli(["eda", str(root), "--out", str(root / "report"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "inside the image root" in err and "--out" in err
    assert not (root / "report").exists()
    # Through a link that leads back into the data, too.
    (tmp_path / "look").symlink_to(root, target_is_directory=True)
    with pytest.raises(UsageError, match="inside the image root"):
        run_eda(manifest_from_path(root), None, tmp_path / "look" / "eda", workers=1, progress=False)


def test_listing_ignores_an_eda_output_left_in_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_imagefolder(tmp_path / "train", per_class=3, size=8)
    # What an older clsctl wrote with `clsctl eda .` run inside the data: ./eda/train/...
    old = root / "eda" / "train"
    png(old / "class_counts.png")
    png(old / "thumbs" / "red.png")
    (old / "eda.json").write_text("{}")
    df = manifest_from_folder(root)
    assert sorted(df["label"].unique()) == ["blue", "green", "red"]
    assert df.attrs["ignored_dirs"] == ["eda"]
    capsys.readouterr()
    assert cli(["split", str(root), "--folds", "3", "--runs", str(tmp_path / "runs")]) == 0
    assert "eda" in capsys.readouterr().out.split("warning:", 1)[1]
    # An unlabeled folder does not list the plots as test images either.
    test = tmp_path / "test"
    png(test / "a.png")
    png(test / "report" / "class_counts.png")
    (test / "report" / "eda.json").write_text("{}")
    assert manifest_from_path(test)["path"].tolist() == ["a.png"]


# --------------------------------------------------------------------------------------------
# 3. symbolic links are judged by where they lead
# --------------------------------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the data holding an image that is not part of it."""
    png(tmp_path / "private" / "secret.png", value=200)
    return tmp_path / "private"


def test_manifest_path_through_a_link_out_of_the_root_is_refused(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "data"
    png(root / "img" / "ok.png")
    (root / "img" / "file_link.png").symlink_to(outside / "secret.png")
    (root / "folder_link").symlink_to(outside, target_is_directory=True)
    (root / "inner").symlink_to(root / "img", target_is_directory=True)
    for rel in ("img/file_link.png", "folder_link/secret.png"):
        pd.DataFrame({"path": ["img/ok.png", rel], "label": ["a", "b"]}).to_csv(root / "m.csv", index=False)
        with pytest.raises(DataError) as err:
            manifest_from_path(root / "m.csv", root=root)
        assert "\n" not in str(err.value) and rel in err.value.message and "outside" in err.value.message
    # A link whose target stays inside the root is fine.
    pd.DataFrame({"path": ["img/ok.png", "inner/ok.png"], "label": ["a", "b"]}).to_csv(root / "m.csv", index=False)
    assert manifest_from_path(root / "m.csv", root=root)["path"].tolist() == ["img/ok.png", "inner/ok.png"]


def test_imagefolder_link_out_of_the_root_is_refused(tmp_path: Path, outside: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = make_imagefolder(tmp_path / "train", per_class=2, size=8)
    (root / "red" / "extra.png").symlink_to(outside / "secret.png")
    with pytest.raises(DataError, match=r"red/extra\.png"):
        manifest_from_folder(root)
    (root / "red" / "extra.png").unlink()
    (root / "stolen").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="stolen"):
        manifest_from_folder(root)
    capsys.readouterr()
    out = tmp_path / "eda"
    assert cli(["eda", str(root), "--out", str(out), "--workers", "1"]) == 2
    assert "outside" in capsys.readouterr().err and not (out / "eda.html").exists()
    # The same links with targets inside the root are read.
    (root / "stolen").unlink()
    (root / "red" / "again.png").symlink_to(root / "blue" / "000.png")
    (root / "purple").symlink_to(root / "green", target_is_directory=True)
    df = manifest_from_folder(root)
    assert "red/again.png" in df["path"].tolist() and (df["label"] == "purple").sum() == 2


def test_imagefolder_link_loops_do_not_hang(tmp_path: Path, no_hang: None) -> None:
    root = make_imagefolder(tmp_path / "train", per_class=2, size=8)
    (root / "red" / "up").symlink_to("..", target_is_directory=True)
    (root / "red" / "self.png").symlink_to("self.png")
    (root / "knot").symlink_to("knot")
    df = manifest_from_folder(root)
    assert sorted(df["label"].unique()) == ["blue", "green", "red"]
    assert not any(p.startswith("red/up/") for p in df["path"])
    # A link that leads nowhere is listed like any broken file: eda names it, training refuses it by name.
    report = run_eda(df, None, tmp_path / "out", workers=1, thumbs=0, progress=False)
    assert [u["path"] for u in report["unreadable"]] == ["red/self.png"]
    # A class folder that leads back to the root would list the whole dataset as one more class.
    (root / "everything").symlink_to(".", target_is_directory=True)
    with pytest.raises(DataError, match="everything"):
        manifest_from_folder(root)
