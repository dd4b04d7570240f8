"""``clsctl eda`` on small generated folders: counts, stats, grayscale, unreadable files, HTML."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from toolkit.cli.main import run as cli
from toolkit.data.eda_pass import STATS_MAX_SIDE, analyze_chunk, downscale_for_stats
from toolkit.data.outliers import OUTLIER_THRESHOLD
from toolkit.data.sources import manifest_from_path
from toolkit.errors import DataError, UsageError
from toolkit.imaging.decode import load_image
from toolkit.imaging.hashing import pixel_digest
from toolkit.imaging.phash import layout
from toolkit.report.eda import default_out_dir, run_eda


def colour_image(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([255 * x / w, 128 + 60 * np.sin(y / 4 + seed), np.full((h, w), 40 * (seed % 5))], axis=-1)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """cat: 6 images (one a grey-looking RGB file, one 600×300 that gets downscaled, one truncated);
    dog: 3 images (one an exact copy of a cat image, one empty file)."""
    root = tmp_path / "pets"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for k in range(3):
        Image.fromarray(colour_image(k)).save(root / "cat" / f"c{k}.png")
    grey = np.repeat(colour_image(5)[..., :1], 3, axis=2)
    Image.fromarray(grey, "RGB").save(root / "cat" / "grey.png")
    Image.fromarray(colour_image(9, (600, 300))).save(root / "cat" / "big.jpg", quality=90)
    data = (root / "cat" / "c0.png").read_bytes()
    (root / "cat" / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(colour_image(11)).save(root / "dog" / "d0.png")
    shutil.copyfile(root / "cat" / "c1.png", root / "dog" / "copied.png")
    (root / "dog" / "zero.png").write_bytes(b"")
    return root


def run(folder: Path, tmp_path: Path, **kw) -> dict:
    return run_eda(manifest_from_path(folder), None, tmp_path / "out", workers=1, progress=False, **kw)


def test_counts_stats_grayscale_and_unreadable(folder: Path, tmp_path: Path) -> None:
    r = run(folder, tmp_path)
    assert r["images"] == {"total": 9, "readable": 7, "unreadable": 2}
    label = r["targets"]["label"]
    assert label["counts"] == {"cat": 6, "dog": 3}
    assert label["imbalance_ratio"] == 2.0 and label["largest"] == "cat" and label["smallest"] == "dog"

    unreadable = {u["path"]: u["reason"] for u in r["unreadable"]}
    assert set(unreadable) == {"cat/truncated.png", "dog/zero.png"}
    assert "empty" in unreadable["dog/zero.png"]
    assert "truncated" in unreadable["cat/truncated.png"] or "corrupt" in unreadable["cat/truncated.png"]

    assert r["grayscale"]["count"] == 1
    assert r["grayscale"]["per_class"] == {"cat": {"count": 1, "share": 0.2}, "dog": {"count": 0, "share": 0.0}}
    # Format and mode come from the header, which the truncated PNG still has.
    assert r["image_modes"] == {"RGB": 8} and r["file_formats"] == {"JPEG": 1, "PNG": 7}

    # Mean/std: the same downscaled pixels, pooled, with numpy.
    readable = [p for p in sorted(folder.rglob("*.*")) if p.name not in ("truncated.png", "zero.png")]
    arrays = [np.asarray(downscale_for_stats(load_image(p)), np.float64).reshape(-1, 3) / 255 for p in readable]
    assert max(a.shape[0] for a in arrays) == 256 * 128  # the 600×300 image was downscaled
    pixels = np.concatenate(arrays)
    np.testing.assert_allclose(r["stats"]["mean"], pixels.mean(axis=0), atol=1e-6, rtol=0)
    np.testing.assert_allclose(r["stats"]["std"], pixels.std(axis=0), atol=1e-6, rtol=0)
    assert r["stats"]["pixels"] == pixels.shape[0] and r["stats"]["max_side"] == STATS_MAX_SIDE
    cat = np.concatenate([a for a, p in zip(arrays, readable, strict=True) if p.parent.name == "cat"])
    np.testing.assert_allclose(r["stats"]["per_class"]["cat"]["mean"], cat.mean(axis=0), atol=1e-6, rtol=0)

    assert r["sizes"]["width"]["max"] == 600 and r["sizes"]["common"] == [[40, 30, 6], [600, 300, 1]]


def test_duplicates_and_label_conflicts(folder: Path, tmp_path: Path) -> None:
    r = run(folder, tmp_path)
    d = r["duplicates"]
    assert d["pairs"]["exact"] == 1
    assert d["label_conflicts"]["count"] == 1
    item = d["label_conflicts"]["items"][0]
    assert (item["a"], item["b"], item["kind"]) == ("cat/c1.png", "dog/copied.png", "exact")
    assert (item["label_a"], item["label_b"]) == ("cat", "dog")
    pairs = pd.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert len(pairs) == sum(d["pairs"].values())

    hashes = pd.read_parquet(tmp_path / "out" / "hashes.parquet")
    assert list(hashes.columns) == ["path", "sha1", "pixel_hash", "phash", "phash_flip"]
    assert len(hashes) == 9
    assert hashes.set_index("path")["pixel_hash"].isna().sum() == 2  # the unreadable ones


def test_groups_and_group_conflicts(tmp_path: Path) -> None:
    root = tmp_path / "g"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    for k in range(4):
        Image.fromarray(colour_image(k)).save(root / "a" / f"p{k // 2}_{k}.png")
    shutil.copyfile(root / "a" / "p0_0.png", root / "b" / "p9_0.png")
    df = manifest_from_path(root, pattern=r"(?P<label>[ab])/(?P<person>p\d)_\d\.png", group="person")
    r = run_eda(df, None, tmp_path / "out", workers=1, progress=False)
    assert r["groups"]["n_groups"] == 3 and r["groups"]["largest"][0] == ["p0", 2]
    assert r["duplicates"]["group_conflicts"]["count"] == 1
    assert r["duplicates"]["label_conflicts"]["count"] == 1


def test_html_is_self_contained(folder: Path, tmp_path: Path) -> None:
    r = run(folder, tmp_path)
    out = tmp_path / "out"
    html = (out / "eda.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert len([x for x in refs if x.endswith(".png")]) >= 6
    for ref in refs:
        if ref.startswith("#"):
            continue
        assert not re.match(r"^[a-z]+:", ref), ref  # no scheme: no http, no file:, no data:
        assert (out / ref).is_file(), ref
    assert "http" not in html.lower()
    assert "<script" not in html.lower()
    for name in r["files"]:
        assert (out / name).is_file(), name
    assert json.loads((out / "eda.json").read_text(encoding="utf-8"))["stats"]["mean"] == r["stats"]["mean"]


def test_thumbnails_first_or_seeded_and_stale_files_removed(folder: Path, tmp_path: Path) -> None:
    first = run(folder, tmp_path, thumbs=2)
    assert set(first["thumbnails"]) == {"cat", "dog"}
    stale = tmp_path / "out" / first["thumbnails"]["cat"]
    assert stale.is_file()
    again = run(folder, tmp_path, thumbs=0)
    assert again["thumbnails"] == {} and not stale.exists()


def test_pool_equals_single_process(folder: Path, tmp_path: Path) -> None:
    one = run_eda(manifest_from_path(folder), None, tmp_path / "one", workers=1, progress=False)
    two = run_eda(manifest_from_path(folder), None, tmp_path / "two", workers=2, progress=False)
    assert one["stats"] == two["stats"] and one["duplicates"]["pairs"] == two["duplicates"]["pairs"]
    assert pd.read_parquet(tmp_path / "one" / "hashes.parquet").equals(pd.read_parquet(tmp_path / "two" / "hashes.parquet"))


def test_outlier_stands_out(tmp_path: Path) -> None:
    root = tmp_path / "o" / "x"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(20):  # dark strokes spread over a white page
        img = np.full((64, 64), 255, np.uint8)
        for _ in range(6):
            r0, c0 = rng.integers(4, 56, 2)
            img[r0:r0 + 3, 4:60] = 0
            img[4:60, c0:c0 + 3] = 0
        Image.fromarray(img).save(root / f"s{k:02d}.png")
    Image.fromarray(np.full((64, 64), 20, np.uint8)).save(root / "zz_dark.png")
    r = run_eda(manifest_from_path(tmp_path / "o"), None, tmp_path / "out", workers=1, progress=False)
    top = r["outliers"]["items"][0]
    assert top["path"] == "x/zz_dark.png" and top["score"] > OUTLIER_THRESHOLD
    assert r["outliers"]["count"] >= 1


def test_unlabeled_folder_and_default_out(tmp_path: Path) -> None:
    root = tmp_path / "test_images"
    root.mkdir()
    for k in range(3):
        Image.fromarray(colour_image(k)).save(root / f"{k}.png")
    df = manifest_from_path(root)
    assert "label" not in df.columns
    r = run_eda(df, None, tmp_path / "out", workers=1, progress=False)
    assert r["label_column"] is None and r["targets"] == {}
    assert r["images"]["readable"] == 3 and list(r["thumbnails"]) == ["(all)"]
    assert default_out_dir(root) == Path("eda") / "test_images"


def test_bad_arguments(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        manifest_from_path(folder, manifest=tmp_path / "m.csv", pattern="x")
    with pytest.raises(DataError, match="group column"):
        manifest_from_path(folder, group="nope")
    with pytest.raises(UsageError, match="thumbs"):
        run_eda(manifest_from_path(folder), None, tmp_path / "out", thumbs=-1, progress=False)


def test_cli(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert cli(["eda", str(folder), "--out", str(out), "--workers", "1", "--thumbs", "3", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "imbalance 2.0" in printed and "2 unreadable" in printed
    assert (out / "eda.html").is_file() and (out / "hashes.parquet").is_file()
    assert json.loads((out / "eda.json").read_text(encoding="utf-8"))["settings"]["seed"] == 1
    assert cli(["eda", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_pacs_sketch(shared_dataset, tmp_path: Path) -> None:
    root = shared_dataset("pacs-sketch")
    sketch = root / "sketch" if (root / "sketch").is_dir() else root
    r = run_eda(manifest_from_path(sketch), None, tmp_path / "out", progress=False)
    assert r["images"] == {"total": 3929, "readable": 3929, "unreadable": 0}
    assert r["targets"]["label"]["imbalance_ratio"] == pytest.approx(816 / 80, abs=1e-3)
    assert r["grayscale"]["share"] == 1.0
    assert r["duplicates"]["pairs"]["exact"] == 0 and r["duplicates"]["pairs"]["pixel"] == 0
    images = pd.read_parquet(tmp_path / "out" / "images.parquet").set_index("path")
    # The hand-written word "ERROR" filed as a dog: its ink fills an unusually short band.
    assert images.loc["dog/n02103406_4068-1.png", "outlier_score"] > OUTLIER_THRESHOLD


def reference_features(tiny: np.ndarray) -> dict[str, float]:
    """The outlier layout features of one 32×32 RGB image (0..255), written out plainly."""
    f = tiny.reshape(-1, 3) / 255.0
    rg = f[:, 0] - f[:, 1]
    yb = (f[:, 0] + f[:, 1]) / 2 - f[:, 2]
    colorfulness = np.sqrt(rg.var() + yb.var()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    y = (f @ np.array([0.299, 0.587, 0.114])).reshape(32, 32)
    edges = np.abs(np.diff(y, axis=1)).mean() + np.abs(np.diff(y, axis=0)).mean()
    border = np.sort(np.concatenate([y[0], y[-1], y[:, 0], y[:, -1]]))
    mask = np.abs(y - border[64]) > 0.1
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return {"colorfulness": colorfulness, "edge_density": edges,
            "content_width": (cols[-1] - cols[0] + 1) / 32 if cols.size else 0.0,
            "content_height": (rows[-1] - rows[0] + 1) / 32 if rows.size else 0.0}


def test_per_image_values_match_the_loader(folder: Path, tmp_path: Path) -> None:
    # Big grey images take the one-plane path (digest, sums, 32×32 layout); check them too.
    grey = colour_image(3, (520, 300))[..., 0]
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(folder / "dog" / "big_grey_rgb.png")
    Image.fromarray(grey.T.copy()).save(folder / "dog" / "big_grey_mode.png")
    r = run(folder, tmp_path)
    images = pd.read_parquet(tmp_path / "out" / "images.parquet").set_index("path")
    hashes = pd.read_parquet(tmp_path / "out" / "hashes.parquet").set_index("path")
    checked = 0
    for path in images.index[images["ok"]]:
        image = load_image(folder / path)
        pixels = np.asarray(image)
        small = np.asarray(downscale_for_stats(image), np.float64).reshape(-1, 3) / 255
        row = images.loc[path]
        assert (row["width"], row["height"]) == image.size
        assert row["grayscale"] == (np.array_equal(pixels[..., 0], pixels[..., 1])
                                    and np.array_equal(pixels[..., 1], pixels[..., 2])), path
        np.testing.assert_allclose(row[["mean_r", "mean_g", "mean_b"]].to_numpy(float), small.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(row[["std_r", "std_g", "std_b"]].to_numpy(float), small.std(axis=0), atol=1e-9)
        assert hashes.loc[path, "pixel_hash"] == pixel_digest(pixels), path
        reduced = downscale_for_stats(image)
        tiny, phash, flip = layout(reduced)
        assert (hashes.loc[path, "phash"], hashes.loc[path, "phash_flip"]) == (phash, flip), path
        for name, value in reference_features(tiny).items():
            assert row[name] == pytest.approx(value, abs=1e-9), (path, name)
        checked += 1
    assert checked == 9 and images.loc["dog/big_grey_rgb.png", "grayscale"]
    # One plane pooled for three: the dataset statistics are still exact.
    assert r["stats"]["pixels"] == sum(int(np.prod(downscale_for_stats(load_image(folder / p)).size))
                                       for p in images.index[images["ok"]])


def test_a_chunk_gives_what_single_files_give(folder: Path) -> None:
    # Hashes, sums and features are computed per chunk in stacked numpy calls and reused buffers.
    tasks = [(str(p), False) for p in sorted(folder.rglob("*.*"))]
    whole = analyze_chunk(tasks)
    parts = [analyze_chunk([t]) for t in tasks]
    for key in ("ok", "reason", "sha1", "pixel_hash", "phash", "phash_flip", "grayscale", "width"):
        assert whole[key] == [p[key][0] for p in parts], key
    for key in ("n", "s", "s2"):
        assert np.array_equal(whole[key], np.concatenate([p[key] for p in parts])), key
    for key in ("colorfulness", "edge_density", "content_width", "content_height"):
        np.testing.assert_allclose(whole[key], np.concatenate([p[key] for p in parts]), rtol=1e-12, atol=1e-15)
    assert sum(whole["ok"]) == 7


def test_channel_sums_are_exact_at_the_limits() -> None:
    # 65,536 white pixels (a 256×256 plane) is the largest sum of squares at the stats resolution:
    # 4,261,478,400, above 2**32, where the sums must still be exact integers.
    from toolkit.imaging.hashing import plane_sums

    rng = np.random.default_rng(0)
    white = np.full((256, 256), 255, np.uint8)
    assert plane_sums(white) == (65536 * 255, 65536 * 255 * 255)
    assert plane_sums(Image.fromarray(white)) == (65536 * 255, 65536 * 255 * 255)
    shapes = [(300, 300), (1, 1), (1, 7), (64, 64), (37, 251), (256, 256), (1000, 1000), (48, 48)]
    shapes += [tuple(rng.integers(1, 257, 2)) for _ in range(200)]
    for shape in shapes:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        x.flat[: x.size // int(rng.integers(1, 5))] = rng.choice([0, 255])
        assert plane_sums(x) == (int(x.sum(dtype=np.int64)), int((x.astype(np.int64) ** 2).sum())), shape


def test_page_helpers_escape_and_stay_offline(tmp_path: Path) -> None:
    from toolkit.report.html import PageFiles, data_uri, render_page

    page = ('{% extends "page.html" %}{% block title %}{{ name }}{% endblock %}'
            '{% block body %}{{ table(["a", "n"], rows, numeric=[1]) }}<img src="{{ src }}">{% endblock %}')
    html = render_page(page, name="<x>", rows=[["<b>", 3]], src=data_uri(b"\x89PNG"))
    assert html.startswith("<!DOCTYPE html>") and "<title>&lt;x&gt;</title>" in html and "<style>" in html
    assert "<td>&lt;b&gt;</td><td class=\"n\">3</td>" in html and 'src="data:image/png;base64,' in html
    assert "http" not in html and "<script" not in html
    files = PageFiles(tmp_path / "page")
    assert files.write("figs/a.png", b"png") == "figs/a.png" and files.add("t.parquet") == "t.parquet"
    assert (tmp_path / "page" / "figs" / "a.png").read_bytes() == b"png" and files.names == ["figs/a.png", "t.parquet"]
