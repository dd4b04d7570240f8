"""Fold assignment, its report and leakage audit, and `clsctl split` end to end."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.data.folds import SplitWarning, assign_folds, fold_report
from toolkit.data.leakage import audit_leakage, load_duplicate_pairs
from toolkit.data.splits import read_source, write_manifest
from toolkit.errors import DataError, UsageError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def grouped_frame(sizes: list[int], labels: list[str]) -> pd.DataFrame:
    """One row per image; group ``g<i>`` has ``sizes[i]`` rows; labels given per row."""
    groups = [f"g{i}" for i, size in enumerate(sizes) for _ in range(size)]
    return pd.DataFrame({"path": [f"img/{i:05d}.png" for i in range(len(groups))],
                         "label": labels[: len(groups)], "person": groups})


def random_frame(n_groups: int, shares: list[float], seed: int = 0, max_size: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_size + 1, n_groups).tolist()
    names = [f"c{i}" for i in range(len(shares))]
    labels = rng.choice(names, size=sum(sizes), p=shares).tolist()
    return grouped_frame(sizes, labels)


def quiet_assign(df: pd.DataFrame, **kwargs) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SplitWarning)
        return assign_folds(df, **kwargs)


def folds_per_group(df: pd.DataFrame, fold: pd.Series, group: str = "person") -> pd.Series:
    return fold.groupby(df[group]).nunique()


# --------------------------------------------------------------------------------------------
# assign_folds: properties
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=30),
    label_seed=st.integers(0, 2**16),
    n_classes=st.integers(1, 4),
    k=st.integers(2, 6),
    stratified=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_grouped_folds_property(sizes, label_seed, n_classes, k, stratified, seed):
    assume(len(sizes) >= k)
    rng = np.random.default_rng(label_seed)
    labels = rng.choice([f"c{i}" for i in range(n_classes)], size=sum(sizes)).tolist()
    df = grouped_frame(sizes, labels)
    fold = quiet_assign(df, folds=k, group="person", stratify="label" if stratified else None, seed=seed)

    assert fold.dtype == np.int64
    assert fold.index.equals(df.index)
    assert len(fold) == len(df) and not fold.isna().any()
    assert fold.between(0, k - 1).all()
    assert (folds_per_group(df, fold) == 1).all()  # no group in two folds
    assert sorted(fold.unique()) == list(range(k))  # every fold has a validation set


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=30),
       frac=st.floats(0.05, 0.95), seed=st.integers(0, 1000))
def test_grouped_holdout_property(sizes, frac, seed):
    df = grouped_frame(sizes, ["a", "b"] * sum(sizes))
    fold = quiet_assign(df, holdout=frac, group="person", seed=seed)
    assert set(fold.unique()) == {0, -1}  # both a validation and a training part
    assert (folds_per_group(df, fold) == 1).all()


# --------------------------------------------------------------------------------------------
# assign_folds: quality
# --------------------------------------------------------------------------------------------


def test_stratified_grouped_folds_keep_class_shares():
    df = random_frame(600, [0.6, 0.3, 0.1], seed=1)
    df["fold"] = assign_folds(df, folds=5, group="person", stratify="label", seed=0)
    report = fold_report(df, label="label", group="person")
    assert report["n_folds"] == 5
    assert report["groups_crossing"] == []
    assert report["max_deviation"]["value"] < 0.02
    sizes = [f["n"] for f in report["folds"]]
    assert max(sizes) - min(sizes) < 0.1 * len(df) / 5


def test_stratified_ungrouped_is_tight():
    df = random_frame(500, [0.7, 0.25, 0.05], seed=2, max_size=1)
    df["fold"] = assign_folds(df, folds=5, stratify="label", seed=3)
    report = fold_report(df)
    # StratifiedKFold puts every class within one row of its exact share per fold.
    for block in report["folds"]:
        for name, count in block["counts"].items():
            assert abs(count - report["overall"]["counts"][name] / 5) <= 1


def test_stratify_on_combined_columns():
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(400)],
                       "label": rng.choice(["a", "b"], 400),
                       "gender": rng.choice(["f", "m"], 400, p=[0.8, 0.2])})
    df["fold"] = assign_folds(df, folds=4, stratify=["label", "gender"], seed=0)
    combo = df["label"] + "_" + df["gender"]
    counts = pd.crosstab(df["fold"], combo)
    expected = combo.value_counts() / 4
    assert ((counts - expected).abs() <= 1).all().all()


def test_same_seed_same_folds_other_seed_other_folds():
    df = random_frame(100, [0.5, 0.5], seed=5)
    a = assign_folds(df, folds=5, group="person", seed=7)
    b = assign_folds(df, folds=5, group="person", seed=7)
    c = assign_folds(df, folds=5, group="person", seed=8)
    pd.testing.assert_series_equal(a, b)
    assert not a.equals(c)
    plain_a = assign_folds(df, folds=5, seed=1, stratify=None)
    plain_b = assign_folds(df, folds=5, seed=2, stratify=None)
    assert not plain_a.equals(plain_b)


@pytest.mark.parametrize("frac", [0.2, 0.3, 0.25])
def test_holdout_fraction_and_groups(frac):
    df = random_frame(400, [0.8, 0.2], seed=6)
    fold = assign_folds(df, holdout=frac, group="person", seed=0)
    assert set(fold.unique()) == {0, -1}
    assert abs((fold == 0).mean() - frac) < 0.03
    assert (folds_per_group(df, fold) == 1).all()
    df["fold"] = fold
    report = fold_report(df, group="person")
    assert report["n_folds"] == 1 and report["train_only"]["n"] == int((fold == -1).sum())
    assert report["max_deviation"]["value"] < 0.03
    assert fold.attrs["folds"] == 1


def test_rare_class_warns_and_reports():
    labels = ["common"] * 47 + ["rare"] * 3
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(50)], "label": labels})
    with pytest.warns(SplitWarning, match=r"class 'rare' has 3 member\(s\) < 5 folds: it is absent from the "
                                          r"validation of 2 fold\(s\)"):
        fold = assign_folds(df, folds=5, seed=0)
    assert any("'rare'" in note for note in fold.attrs["warnings"])
    df["fold"] = fold
    report = fold_report(df)
    assert len([m for m in report["missing"] if m["class"] == "rare"]) == 2
    assert report["warnings"]


def test_missing_group_values_become_own_groups():
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(20)], "label": ["a", "b"] * 10,
                       "person": ["p1"] * 6 + [None] * 8 + ["p2"] * 6})
    with pytest.warns(SplitWarning, match="8 row.* no value in group column 'person'"):
        fold = assign_folds(df, folds=4, group="person", seed=0)
    assert fold[df["person"] == "p1"].nunique() == 1
    assert fold[df["person"] == "p2"].nunique() == 1
    assert fold[df["person"].isna()].nunique() > 1  # not lumped together


# --------------------------------------------------------------------------------------------
# assign_folds: errors
# --------------------------------------------------------------------------------------------


def test_error_missing_group_column_lists_columns():
    df = random_frame(10, [0.5, 0.5])
    with pytest.raises(DataError, match=r"group column 'patient' not in the manifest \(columns: path, label, person\)"):
        assign_folds(df, group="patient")


def test_error_missing_stratify_column():
    df = random_frame(10, [0.5, 0.5])
    with pytest.raises(DataError, match=r"stratify column 'age'.*columns: path, label, person"):
        assign_folds(df, stratify="age")


def test_error_fewer_groups_than_folds():
    df = grouped_frame([3, 3, 3], ["a", "b", "a"] * 3)
    with pytest.raises(DataError, match="3 groups in column 'person' cannot fill 5 folds") as info:
        assign_folds(df, folds=5, group="person")
    assert "--folds 3" in str(info.value)


@pytest.mark.parametrize("folds", [1, 0, -3])
def test_error_too_few_folds(folds):
    with pytest.raises(UsageError, match="folds must be an integer of at least 2"):
        assign_folds(random_frame(10, [1.0]), folds=folds)


def test_error_empty_manifest():
    with pytest.raises(DataError, match="empty"):
        assign_folds(pd.DataFrame({"path": [], "label": []}))


@pytest.mark.parametrize("frac", [0.0, 1.0, 1.5, -0.2])
def test_error_holdout_out_of_range(frac):
    with pytest.raises(UsageError, match="strictly between 0 and 1"):
        assign_folds(random_frame(10, [1.0]), holdout=frac)


# --------------------------------------------------------------------------------------------
# reports and audit
# --------------------------------------------------------------------------------------------


def test_fold_report_numbers():
    df = pd.DataFrame({
        "path": [f"{i}.png" for i in range(8)],
        "label": ["a", "a", "a", "b", "a", "a", "b", "b"],
        "person": ["p", "p", "q", "q", "r", "r", "s", "p"],
        "fold": [0, 0, 0, 0, 1, 1, 1, 1],
    })
    report = fold_report(df, group="person")
    json.dumps(report)  # JSON-able
    assert report["classes"] == ["a", "b"]  # most frequent first
    assert report["overall"]["counts"] == {"a": 5, "b": 3}
    assert report["folds"][0]["counts"] == {"a": 3, "b": 1}
    assert report["folds"][1]["counts"] == {"a": 2, "b": 2}
    assert report["folds"][0]["groups"] == 2 and report["folds"][1]["groups"] == 3
    # overall share of a = 5/8 = .625; fold 0: .75, fold 1: .5 → both deviate by .125, first wins.
    assert report["max_deviation"]["value"] == pytest.approx(0.125)
    assert report["max_deviation"]["fold"] == 0 and report["max_deviation"]["class"] == "a"
    assert report["groups_crossing"] == ["p"]


def test_audit_duplicate_pairs_across_folds():
    df = pd.DataFrame({"path": ["x/a.png", "x/b.png", "x/c.png", "x/d.png"],
                       "person": ["p", "p", "q", "r"], "fold": [0, 0, 1, -1]})
    pairs = pd.DataFrame({
        "a": ["x/a.png", "x/a.png", "root/x/b.png", "x/a.png", "nowhere.png"],
        "b": ["x/b.png", "x/c.png", "x/d.png", "./x/a.png", "x/a.png"],
        "kind": ["exact", "phash", "phash_flip", "exact", "exact"],
        "distance": [0, 3, 5, 0, 0],
    })
    audit = audit_leakage(df, group="person", duplicate_pairs=pairs)
    assert audit["groups_crossing"] == []
    dup = audit["duplicates"]
    assert dup["pairs"] == 5 and dup["matched"] == 4 and dup["unmatched"] == 1
    crossing = {(p["a"], p["b"]): (p["fold_a"], p["fold_b"], p["kind"]) for p in dup["crossing"]}
    assert crossing == {("x/a.png", "x/c.png"): (0, 1, "phash"),
                        ("x/b.png", "x/d.png"): (0, -1, "phash_flip")}
    assert audit["findings"] == 2 and audit["ok"] is False
    assert audit_leakage(df, group="person")["ok"] is True


def test_audit_groups_crossing():
    df = pd.DataFrame({"path": ["a", "b", "c"], "person": ["p", "p", None], "fold": [0, 1, 1]})
    audit = audit_leakage(df, group="person")
    assert audit["groups_crossing"] == ["p"] and audit["findings"] == 1


def test_write_manifest_csv_parquet_and_bad_suffix(tmp_path):
    df = pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", "y"], "fold": [0, 1]})
    df.attrs["root"] = Path("/data")
    write_manifest(df, tmp_path / "m.csv")
    write_manifest(df, tmp_path / "sub" / "m.parquet")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m.csv"), df)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sub" / "m.parquet"), df, check_like=True)
    with pytest.raises(UsageError, match="unknown suffix '.txt'"):
        write_manifest(df, tmp_path / "m.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "sub"]  # no temp files left


def test_load_duplicate_pairs_from_files(tmp_path):
    pairs = pd.DataFrame({"a": ["a.png"], "b": ["b.png"], "kind": ["exact"], "distance": [0]})
    pairs.to_csv(tmp_path / "pairs.csv", index=False)
    got = load_duplicate_pairs(pd.DataFrame({"path": ["a.png"]}), hashes=tmp_path / "pairs.csv")
    assert got[["a", "b"]].values.tolist() == [["a.png", "b.png"]]
    with pytest.raises(DataError, match=r"hashes\.parquet does not exist"):
        load_duplicate_pairs(pd.DataFrame({"path": ["a.png"]}), hashes=tmp_path)


def test_cli_dedup_uses_the_duplicates_module(tmp_path, monkeypatch, capsys):
    calls = {}

    def image_hashes(paths, root, workers=None):
        calls["hashes"] = (list(paths), str(root))
        return pd.DataFrame({"path": list(paths), "sha1": ["same"] * len(paths)})

    def duplicate_pairs(hashes, max_distance=8):
        paths = hashes["path"].tolist()
        return pd.DataFrame({"a": paths[:-1], "b": paths[1:], "kind": "exact", "distance": 0})

    from toolkit.imaging import duplicates, hashing

    monkeypatch.setattr(duplicates, "duplicate_pairs", duplicate_pairs)
    monkeypatch.setattr(hashing, "image_hashes", image_hashes)
    make_images(tmp_path / "train", {"a": 4, "b": 4})
    code = cli(["split", str(tmp_path / "train"), "--folds", "2", "--dedup", "--strict",
                "--runs", str(tmp_path / "runs")])
    assert code == 1
    assert calls["hashes"][1] == str((tmp_path / "train").resolve())
    assert len(calls["hashes"][0]) == 8
    assert "duplicate pair(s) split across folds" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# sources and CLI
# --------------------------------------------------------------------------------------------


def make_images(root: Path, per_class: dict[str, int]) -> list[str]:
    paths = []
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            value = (hash((cls, i)) % 200) + 20
            Image.new("RGB", (8, 8), (value, i * 10 % 255, 7)).save(root / cls / f"{i:03d}.png")
            paths.append(f"{cls}/{i:03d}.png")
    return paths


def only_run(runs: Path) -> Path:
    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 1
    return folders[0]


def test_read_source_finds_the_root_of_a_table(tmp_path):
    paths = make_images(tmp_path / "data" / "images", {"a": 2, "b": 2})
    table = tmp_path / "data" / "train.csv"
    pd.DataFrame({"path": paths, "label": [p.split("/")[0] for p in paths]}).to_csv(table, index=False)
    df = read_source(table)  # paths are relative to data/images, not to the table's folder
    assert df.attrs["root"] == str((tmp_path / "data" / "images").resolve())
    assert len(df) == 4


def test_cli_split_imagefolder(tmp_path, capsys):
    make_images(tmp_path / "train", {"cat": 6, "dog": 6, "fox": 3})
    runs = tmp_path / "runs"
    code = cli(["split", str(tmp_path / "train"), "--folds", "3", "--runs", str(runs), "--name", "base"])
    out = capsys.readouterr().out
    assert code == 0
    assert "max deviation" in out and "audit: ok" in out
    folder = only_run(runs)
    assert folder.name.endswith("-base")
    info = json.loads((folder / "run.json").read_text())
    assert info["kind"] == "split" and info["status"] == "finished"
    assert info["params"]["folds"] == 3 and info["params"]["seed"] == 42
    manifest = pd.read_csv(folder / "manifest.csv")
    assert len(manifest) == 15 and sorted(manifest["fold"].unique()) == [0, 1, 2]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["report"]["n_folds"] == 3 and summary["audit"]["ok"] is True


def test_cli_split_csv_grouped_with_out(tmp_path):
    paths = make_images(tmp_path / "d", {"a": 8, "b": 8})
    table = tmp_path / "d" / "labels.csv"
    pd.DataFrame({"path": paths, "label": [p[0] for p in paths],
                  "person": [f"p{i // 2}" for i in range(16)]}).to_csv(table, index=False)
    out = tmp_path / "folds.parquet"
    runs = tmp_path / "runs"
    code = cli(["split", str(table), "--folds", "4", "--group", "person", "--out", str(out), "--runs", str(runs)])
    assert code == 0
    written = pd.read_parquet(out)
    assert written.groupby("person")["fold"].nunique().max() == 1
    assert sorted(written["fold"].unique()) == [0, 1, 2, 3]
    in_run = pd.read_csv(only_run(runs) / "manifest.csv")
    assert in_run["fold"].tolist() == written["fold"].tolist()


def test_cli_strict_fails_on_crossing_duplicates(tmp_path, capsys):
    paths = make_images(tmp_path / "train", {"a": 5, "b": 5})
    # A chain through every image: with two non-empty folds some link must cross.
    chain = pd.DataFrame({"a": paths[:-1], "b": paths[1:], "kind": "phash", "distance": 2})
    chain.to_csv(tmp_path / "pairs.csv", index=False)
    runs = tmp_path / "runs"
    args = ["split", str(tmp_path / "train"), "--folds", "2", "--hashes", str(tmp_path / "pairs.csv"),
            "--runs", str(runs)]
    assert cli([*args, "--strict"]) == 1
    captured = capsys.readouterr()
    assert "error: leakage:" in captured.err and "duplicate pair(s) split across folds" in captured.err
    info = json.loads((only_run(runs) / "run.json").read_text())
    assert info["status"] == "failed" and "leakage" in info["error"]
    summary = json.loads((only_run(runs) / "summary.json").read_text())
    assert summary["audit"]["duplicates"]["crossing"]

    assert cli([*args, "--runs", str(tmp_path / "runs2")]) == 0  # without --strict: reported, not fatal
    assert "duplicate pair(s) split across folds" in capsys.readouterr().out


def test_cli_missing_group_column_exit_2(tmp_path, capsys):
    make_images(tmp_path / "train", {"a": 3, "b": 3})
    code = cli(["split", str(tmp_path / "train"), "--group", "person", "--runs", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "group column 'person' not in the manifest (columns: path, label)" in err
    assert not (tmp_path / "runs").exists()  # nothing recorded for a split that never happened


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_facemask_grouped_split(shared_dataset, tmp_path, capsys):
    data = shared_dataset("facemask-3class")
    runs = tmp_path / "runs"
    code = cli(["split", str(data / "manifest.csv"), "--folds", "5", "--group", "photo_cluster",
                "--runs", str(runs)])
    assert code == 0
    report = json.loads((only_run(runs) / "summary.json").read_text())["report"]
    assert report["groups_crossing"] == []
    assert all(min(f["counts"].values()) > 0 for f in report["folds"])
    assert report["max_deviation"]["value"] < 0.01
    rare = [f["share"]["mask_weared_incorrect"] for f in report["folds"]]
    assert all(0.02 < s < 0.04 for s in rare)
