"""Tests for toolkit.data.sources. Every image is a tiny PNG generated in tmp_path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from toolkit.config.schema import DataConfig
from toolkit.data import builtin
from toolkit.data.sources import (
    builtin_root,
    load_manifest,
    manifest_from_folder,
    manifest_from_path,
    manifest_from_pattern,
    manifest_from_table,
    manifest_from_unlabeled,
)
from toolkit.errors import DataError, UsageError

EXTS = [".png", ".jpg"]
MASK_PATTERN = (r"images/(?P<id>\d+)_(?P<gender>[a-z]+)_(?P<race>\w+)_(?P<age>\d+)/"
                r"(?P<stem>[a-z_]+?)\d*\.\w+")


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(path)
    return path


def make_folder(root: Path, layout: dict[str, list[str]]) -> Path:
    for cls, names in layout.items():
        for name in names:
            png(root / cls / name)
    return root


# ------------------------------------------------------------------------------------------
# ImageFolder
# ------------------------------------------------------------------------------------------


def test_folder_lists_classes_recursively_and_counts_stray_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"dog": ["b.png", "sub/a.png"], "cat": ["z.png", "a.PNG"]})
    (root / "cat" / "notes.txt").write_text("x")
    (root / "README.md").write_text("x")
    png(root / "cat" / ".hidden.png")
    png(root / ".cache" / "x.png")  # hidden folder: not a class
    png(root / "dog" / ".ipynb_checkpoints" / "c.png")

    df = manifest_from_folder(root, EXTS)

    assert list(df.columns) == ["path", "label"]
    assert df["path"].tolist() == ["cat/a.PNG", "cat/z.png", "dog/b.png", "dog/sub/a.png"]
    assert df["label"].tolist() == ["cat", "cat", "dog", "dog"]
    assert df.attrs["skipped_files"] == 2
    assert df.attrs["root"] == str(root)
    assert df.attrs["source"] == "folder"


def test_folder_order_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = [f"{i:02d}.png" for i in range(12)]
    a = make_folder(tmp_path / "a", {"y": names, "x": names[::-1]})
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(names))
    b = make_folder(tmp_path / "b", {"x": shuffled, "y": shuffled[::-1]})
    da, db = manifest_from_folder(a, EXTS), manifest_from_folder(b, EXTS)
    assert da["path"].tolist() == db["path"].tolist() == sorted(da["path"].tolist())
    assert da["path"].iloc[0] == "x/00.png"


def test_folder_label_column_name(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"a": ["1.png"]})
    df = manifest_from_folder(root, EXTS, label_column="species")
    assert list(df.columns) == ["path", "species"]


def test_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as err:
        manifest_from_folder(tmp_path / "nope", EXTS)
    assert err.value.hint


def test_folder_root_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f.png"
    png(f)
    with pytest.raises(DataError, match="not a folder"):
        manifest_from_folder(f, EXTS)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no class subfolders") as err:
        manifest_from_folder(tmp_path, EXTS)
    assert ".txt" in err.value.message


def test_folder_with_empty_class_lists_it(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"cat": ["1.png", "2.png"], "dog": ["1.png"]})
    (root / "bird").mkdir()
    (root / "fish").mkdir()
    (root / "fish" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as err:
        manifest_from_folder(root, EXTS)
    msg = err.value.message
    assert "bird" in msg and "fish" in msg and ".txt" in msg
    assert "cat (2)" in msg and "dog (1)" in msg
    assert "data.extensions" in (err.value.hint or "")


def test_folder_with_images_in_root_suggests_unlabeled(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"cat": ["1.png"]})
    png(root / "loose.png")
    with pytest.raises(DataError, match="directly in") as err:
        manifest_from_folder(root, EXTS)
    assert "unlabeled = true" in (err.value.hint or "")
    assert "manifest" in (err.value.hint or "")


def test_folder_extension_matching_is_configurable(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"a": ["1.png"]})
    png(root / "a" / "2.jpg")
    assert len(manifest_from_folder(root, ["png"])) == 1  # leading dot optional
    assert manifest_from_folder(root, ["png"]).attrs["skipped_files"] == 1
    assert len(manifest_from_folder(root, [".png", ".JPG"])) == 2


# ------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for name in ["a/1.png", "a/2.png", "b/3.png"]:
        png(root / name)
    return root


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_csv_and_parquet(tmp_path: Path, image_root: Path, suffix: str) -> None:
    table = pd.DataFrame({"file": ["b/3.png", "./a/1.png", "a\\2.png"], "label": ["y", "x", "x"],
                          "id": ["007", "008", "009"]})
    out = tmp_path / f"m{suffix}"
    table.to_csv(out, index=False) if suffix == ".csv" else table.to_parquet(out)

    df = manifest_from_table(out, image_root, path_column="file")

    # Table order is kept (a test table may fix the submission order); paths normalized.
    assert df["path"].tolist() == ["b/3.png", "a/1.png", "a/2.png"]
    assert df["label"].tolist() == ["y", "x", "x"]
    assert "file" not in df.columns
    assert df.attrs["root"] == str(image_root)
    assert df.attrs["source"] == "table"


def test_table_root_defaults_to_table_folder(image_root: Path) -> None:
    out = image_root / "m.csv"
    pd.DataFrame({"path": ["a/1.png"], "label": ["x"]}).to_csv(out, index=False)
    df = manifest_from_table(out)
    assert df.attrs["root"] == str(image_root)


def test_table_absolute_path_inside_root_is_made_relative(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "m.csv"
    pd.DataFrame({"path": [str(image_root / "a" / "1.png")], "label": ["x"]}).to_csv(out, index=False)
    assert manifest_from_table(out, image_root)["path"].tolist() == ["a/1.png"]


def test_table_unsupported_suffix(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "m.json"
    out.write_text("{}")
    with pytest.raises(DataError, match="unsupported suffix"):
        manifest_from_table(out, image_root)


def test_table_missing_path_column_lists_columns(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "m.csv"
    pd.DataFrame({"filename": ["a/1.png"], "cls": ["x"]}).to_csv(out, index=False)
    with pytest.raises(DataError, match="no path column 'path'") as err:
        manifest_from_table(out, image_root)
    assert "filename" in err.value.message and "cls" in err.value.message
    assert "data.path_column" in (err.value.hint or "")


def test_table_missing_label_column_lists_columns(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a/1.png"], "cls": ["x"]}).to_csv(out, index=False)
    with pytest.raises(DataError, match="no label column 'label'") as err:
        manifest_from_table(out, image_root)
    assert "cls" in err.value.message
    df = manifest_from_table(out, image_root, require_label=False)
    assert df["path"].tolist() == ["a/1.png"]
    assert manifest_from_table(out, image_root, label_column="cls")["cls"].tolist() == ["x"]


def test_table_empty_label_is_an_error(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a/1.png", "a/2.png"], "label": ["x", None]}).to_csv(out, index=False)
    with pytest.raises(DataError, match="rows 2"):
        manifest_from_table(out, image_root)


def test_table_missing_files_listed_with_count(tmp_path: Path, image_root: Path) -> None:
    paths = ["a/1.png"] + [f"gone/{i:02d}.png" for i in range(13)]
    out = tmp_path / "m.csv"
    pd.DataFrame({"path": paths, "label": "x"}).to_csv(out, index=False)
    with pytest.raises(DataError) as err:
        manifest_from_table(out, image_root)
    msg = err.value.message
    assert "13 of 14" in msg
    assert "gone/00.png" in msg and "gone/09.png" in msg
    assert "gone/10.png" not in msg and "3 more" in msg


@pytest.mark.parametrize("bad", ["../outside.png", "a/../../outside.png", "/etc/passwd"])
def test_table_path_escaping_root(tmp_path: Path, image_root: Path, bad: str) -> None:
    png(tmp_path / "outside.png")
    out = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a/1.png", bad], "label": ["x", "y"]}).to_csv(out, index=False)
    with pytest.raises(DataError, match="outside the image root") as err:
        manifest_from_table(out, image_root)
    assert "row 2" in err.value.message and bad in err.value.message


def test_table_dotdot_that_stays_inside_root_is_fine(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "m.csv"
    pd.DataFrame({"path": ["b/../a/1.png"], "label": ["x"]}).to_csv(out, index=False)
    assert manifest_from_table(out, image_root)["path"].tolist() == ["a/1.png"]


def test_table_duplicate_paths(tmp_path: Path, image_root: Path) -> None:
    out = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a/1.png", "b/3.png", "./a/1.png"], "label": "x"}).to_csv(out, index=False)
    with pytest.raises(DataError, match="duplicate") as err:
        manifest_from_table(out, image_root)
    assert "a/1.png (rows 1 and 3)" in err.value.message


def test_table_missing_file(tmp_path: Path, image_root: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        manifest_from_table(tmp_path / "nope.csv", image_root)


# ------------------------------------------------------------------------------------------
# Pattern
# ------------------------------------------------------------------------------------------

PEOPLE = [("000001", "female", "Asian", 45), ("000002", "male", "Asian", 20), ("000010", "male", "Black", 60)]
STEMS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]


def make_mask_layout(root: Path, people=PEOPLE, suffix: str = ".jpg") -> Path:
    for pid, gender, race, age in reversed(people):  # created in reverse: order must not matter
        for stem in reversed(STEMS):
            png(root / "images" / f"{pid}_{gender}_{race}_{age}" / f"{stem}{suffix}")
    return root


def test_pattern_mask_layout(tmp_path: Path) -> None:
    root = make_mask_layout(tmp_path / "train")
    (root / "train.csv").write_text("id\n")

    df = manifest_from_pattern(root, MASK_PATTERN, EXTS)

    assert len(df) == 21
    assert list(df.columns) == ["path", "id", "gender", "race", "age", "stem"]
    assert df["path"].tolist() == sorted(df["path"].tolist())
    assert df["path"].iloc[0] == "images/000001_female_Asian_45/incorrect_mask.jpg"
    assert df["age"].dtype == np.int64  # ids keep their leading zeros: they are names, not numbers
    assert sorted(set(df["age"])) == [20, 45, 60]
    assert sorted(set(df["id"])) == ["000001", "000002", "000010"]
    assert set(df["race"]) == {"Asian", "Black"}
    assert set(df["gender"]) == {"female", "male"}
    assert df["stem"].value_counts().to_dict() == {"mask": 15, "incorrect_mask": 3, "normal": 3}
    row = df[df["path"] == "images/000001_female_Asian_45/mask3.jpg"].iloc[0]
    assert (row["id"], row["gender"], row["race"], row["age"], row["stem"]) == ("000001", "female", "Asian", 45, "mask")
    assert df.attrs["skipped_files"] == 1
    assert df.attrs["unmatched_files"] == 0
    assert df.attrs["source"] == "pattern"


def test_pattern_is_a_full_match(tmp_path: Path) -> None:
    make_mask_layout(tmp_path)
    # Without a way to consume the rest of the path, a prefix-only pattern matches nothing.
    with pytest.raises(DataError, match="do not match"):
        manifest_from_pattern(tmp_path, r"images/(?P<id>\d+)", EXTS)
    df = manifest_from_pattern(tmp_path, r"images/(?P<id>\d+)_.*", EXTS)
    assert len(df) == 21


def test_pattern_unmatched_files_listed_or_dropped(tmp_path: Path) -> None:
    root = make_mask_layout(tmp_path)
    for i in range(12):
        png(root / "images" / "junk" / f"{i:02d}.png")
    with pytest.raises(DataError) as err:
        manifest_from_pattern(root, MASK_PATTERN, EXTS)
    msg = err.value.message
    assert "12 of 33" in msg and "images/junk/00.png" in msg and "2 more" in msg
    assert "images/junk/11.png" not in msg

    df = manifest_from_pattern(root, MASK_PATTERN, EXTS, strict=False)
    assert len(df) == 21
    assert df.attrs["unmatched_files"] == 12


def test_pattern_mixed_values_stay_text(tmp_path: Path) -> None:
    png(tmp_path / "1_a.png")
    png(tmp_path / "x_b.png")
    df = manifest_from_pattern(tmp_path, r"(?P<n>\w+?)_(?P<c>\w)\.png", EXTS)
    assert df["n"].tolist() == ["1", "x"]


def test_pattern_invalid_regex(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    with pytest.raises(DataError, match="not a valid regular expression"):
        manifest_from_pattern(tmp_path, r"(?P<x", EXTS)


# ------------------------------------------------------------------------------------------
# Unlabeled
# ------------------------------------------------------------------------------------------


def test_unlabeled(tmp_path: Path) -> None:
    for name in ["z.png", "a/b.png", "a/a.jpg", ".hidden.png"]:
        png(tmp_path / name)
    (tmp_path / "info.csv").write_text("x")
    df = manifest_from_unlabeled(tmp_path, EXTS)
    assert list(df.columns) == ["path"]
    assert df["path"].tolist() == ["a/a.jpg", "a/b.png", "z.png"]
    assert df.attrs["skipped_files"] == 1
    assert df.attrs["source"] == "unlabeled"


def test_unlabeled_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images"):
        manifest_from_unlabeled(tmp_path, EXTS)


# ------------------------------------------------------------------------------------------
# Builtin
# ------------------------------------------------------------------------------------------


def test_unknown_builtin_lists_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown builtin dataset 'mnist'") as err:
        builtin_root("mnist", tmp_path)
    assert "digits" in err.value.message
    with pytest.raises(DataError, match="digits"):
        load_manifest(DataConfig(root="builtin:cifar"))


def test_builtin_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLSCTL_CACHE", str(cache))

    root = builtin_root("digits")
    assert root == cache / "builtin" / "digits"
    df = load_manifest(DataConfig(root="builtin:digits"))
    assert len(df) == 1797
    assert sorted(df["label"].unique()) == [str(d) for d in range(10)]
    assert df.attrs["source"] == "builtin:digits"
    assert df.attrs["skipped_files"] == 0  # the hidden completion marker is not a stray file
    assert df["path"].iloc[0] == "0/0000.png"

    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in (0, 1, 1796):
        path = root / str(digits.target[index]) / f"{index:04d}.png"
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (32, 32) and pixels.dtype == np.uint8
        # nearest-neighbour upscale of 0..16 → 0..255, white on black
        assert np.array_equal(pixels[::4, ::4], np.rint(digits.images[index] * 255 / 16).astype(np.uint8))
        assert np.array_equal(pixels[3::4, 3::4], pixels[::4, ::4])

    probe = root / "0" / "0000.png"
    before = probe.stat().st_mtime_ns
    marker_before = (root / builtin._COMPLETE_MARKER).stat().st_mtime_ns
    start = time.perf_counter()
    assert builtin_root("digits") == root
    assert time.perf_counter() - start < 0.5
    assert probe.stat().st_mtime_ns == before
    assert (root / builtin._COMPLETE_MARKER).stat().st_mtime_ns == marker_before
    # no temp folders left beside it
    assert [p.name for p in root.parent.iterdir()] == ["digits"]


def test_builtin_build_loses_race_gracefully(tmp_path: Path) -> None:
    final = tmp_path / "builtin" / "toy"

    def other_builder_finishes_first(target: Path) -> None:
        # Simulate a concurrent process completing the same dataset while we build ours.
        final.mkdir(parents=True)
        (final / "theirs.txt").write_text("theirs")
        (final / builtin._COMPLETE_MARKER).write_text("complete\n")
        (target / "ours.txt").write_text("ours")

    assert builtin._materialize(final, other_builder_finishes_first) == final
    assert sorted(p.name for p in final.iterdir()) == [builtin._COMPLETE_MARKER, "theirs.txt"]
    assert [p.name for p in final.parent.iterdir()] == ["toy"]  # our temp copy is discarded


def test_builtin_failed_build_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "builtin" / "toy"

    def broken(target: Path) -> None:
        (target / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        builtin._materialize(final, broken)
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_builtin_replaces_incomplete_folder(tmp_path: Path) -> None:
    final = tmp_path / "builtin" / "toy"
    final.mkdir(parents=True)
    (final / "stale.txt").write_text("x")
    builtin._materialize(final, lambda t: (t / "new.txt").write_text("y"))
    assert sorted(p.name for p in final.iterdir()) == [builtin._COMPLETE_MARKER, "new.txt"]


# ------------------------------------------------------------------------------------------
# load_manifest
# ------------------------------------------------------------------------------------------


def test_load_manifest_picks_the_source(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "folder", {"a": ["1.png"], "b": ["2.png"]})
    assert load_manifest(DataConfig(root=str(folder))).attrs["source"] == "folder"
    df = load_manifest(DataConfig(root=str(folder), label_column="species"))
    assert df["species"].tolist() == ["a", "b"]

    assert load_manifest(DataConfig(root=str(folder), unlabeled=True)).attrs["source"] == "unlabeled"

    masks = make_mask_layout(tmp_path / "masks")
    df = load_manifest(DataConfig(root=str(masks), pattern=MASK_PATTERN, group_column="id"))
    assert df.attrs["source"] == "pattern"
    assert df["group"].tolist() == df["id"].tolist()

    table = tmp_path / "folder" / "list.csv"
    pd.DataFrame({"path": ["b/2.png"], "label": ["b"]}).to_csv(table, index=False)
    df = load_manifest(DataConfig(manifest=str(table)))
    assert df.attrs["source"] == "table"
    assert df.attrs["root"] == str(folder)


def test_load_manifest_group_column_missing(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "folder", {"a": ["1.png"]})
    with pytest.raises(DataError, match="group column 'person'") as err:
        load_manifest(DataConfig(root=str(folder), group_column="person"))
    assert "path" in err.value.message and "label" in err.value.message


def test_load_manifest_needs_a_root() -> None:
    with pytest.raises(DataError, match="data.root is not set"):
        load_manifest(DataConfig())


# ------------------------------------------------------------------------------------------
# manifest_from_path: what a path on the command line is
# ------------------------------------------------------------------------------------------


def test_path_folder_with_class_subfolders_is_an_imagefolder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"cat": ["1.png"], "dog": ["2.png", "sub/3.png"]})
    df = manifest_from_path(root)
    assert df.attrs["source"] == "folder"
    assert df["label"].tolist() == ["cat", "dog", "dog"]
    assert manifest_from_path(root, label_column="species")["species"].tolist() == ["cat", "dog", "dog"]


def test_path_folder_with_images_at_the_top_is_unlabeled(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"cat": ["1.png"]})
    png(root / "top.png")
    df = manifest_from_path(root)
    assert df.attrs["source"] == "unlabeled" and "label" not in df.columns
    assert df["path"].tolist() == ["cat/1.png", "top.png"]
    with pytest.raises(DataError, match="directly in"):  # a source that must give labels says why it cannot
        manifest_from_path(root, require_label=True)


def test_path_known_classes_decide_an_imagefolder(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"cat": ["1.png"], "dog": ["2.png"]})
    assert manifest_from_path(root, known_classes=["cat", "dog", "fox"]).attrs["source"] == "folder"
    assert manifest_from_path(root, known_classes=["cat"]).attrs["source"] == "unlabeled"
    assert manifest_from_path(root, known_classes=[]).attrs["source"] == "unlabeled"


def test_path_table_finds_its_image_root(tmp_path: Path) -> None:
    make_folder(tmp_path / "data" / "images", {"a": ["1.png"], "b": ["2.png"]})
    table = tmp_path / "data" / "train.csv"
    pd.DataFrame({"path": ["a/1.png", "b/2.png"], "label": ["a", "b"]}).to_csv(table, index=False)
    df = manifest_from_path(table)
    assert df.attrs["source"] == "table" and df.attrs["root"] == str((tmp_path / "data" / "images").resolve())
    df = manifest_from_path(table, root=tmp_path / "data" / "images")
    assert df["label"].tolist() == ["a", "b"]


def test_path_with_manifest_or_pattern_is_their_root(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"a": ["p1_1.png"], "b": ["p2_1.png"]})
    table = tmp_path / "list.csv"
    pd.DataFrame({"path": ["a/p1_1.png"], "person": ["p1"]}).to_csv(table, index=False)
    df = manifest_from_path(root, manifest=table, group="person")
    assert df.attrs["root"] == str(root) and df["group"].tolist() == ["p1"]
    df = manifest_from_path(root, pattern=r"(?P<label>[ab])/(?P<person>p\d)_\d\.png")
    assert df.attrs["source"] == "pattern" and df["person"].tolist() == ["p1", "p2"]


def test_path_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", {"a": ["1.png"]})
    with pytest.raises(DataError, match="does not exist"):
        manifest_from_path(tmp_path / "missing")
    with pytest.raises(UsageError, match="both given"):
        manifest_from_path(root, manifest=tmp_path / "m.csv", pattern="x")
    with pytest.raises(UsageError, match="--root"):
        manifest_from_path(root, root=tmp_path)
    with pytest.raises(DataError, match="group column 'person' not in the manifest") as err:
        manifest_from_path(root, group="person")
    assert "--group" in (err.value.hint or "")


def test_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, toolkit.data.sources, toolkit.data.targets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env={**os.environ})
    assert out.stdout.strip() == "False"
