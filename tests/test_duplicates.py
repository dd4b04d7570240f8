"""Hashing and duplicate-pair search on small generated images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from toolkit.clean import duplicates as dup
from toolkit.clean.duplicates import (
    DEFAULT_NEAR_DISTANCE,
    duplicate_groups,
    duplicate_pairs,
    hamming,
    image_hashes,
    perceptual_hash,
)
from toolkit.errors import DataError, UsageError


def scene(seed: int, size: int = 64) -> np.ndarray:
    """A colourful, strongly left-right asymmetric picture: gradient, blocks and a bar."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3), np.float64)
    img[..., 0] = 255 * x / size
    img[..., 1] = 128 + 100 * np.sin(y / (3 + seed % 5))
    img[..., 2] = rng.uniform(0, 255)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 16, 2)
        img[y0:y0 + 16, x0:x0 + 10] = rng.uniform(0, 255, 3)
    img[:, : size // 5] = (20, 20, 20)  # a dark bar on the left only: mirroring moves it
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """original, byte copy, two pixel-equal re-encodings, a mirrored copy, an unrelated image."""
    base = scene(1)
    Image.fromarray(base).save(tmp_path / "orig.png", compress_level=9)
    shutil.copyfile(tmp_path / "orig.png", tmp_path / "copy.png")
    Image.fromarray(base).save(tmp_path / "recoded.png", compress_level=0)
    Image.fromarray(base).save(tmp_path / "recoded.bmp")
    Image.fromarray(base[:, ::-1]).save(tmp_path / "mirror.png")
    Image.fromarray(scene(7)).save(tmp_path / "other.png")
    return tmp_path


NAMES = ["copy.png", "mirror.png", "orig.png", "other.png", "recoded.bmp", "recoded.png"]


def test_hash_table_columns_and_kinds(files: Path) -> None:
    hashes = image_hashes(NAMES, files, workers=1)
    assert list(hashes.columns) == ["path", "sha1", "pixel_hash", "phash", "phash_flip"]
    assert hashes["path"].tolist() == NAMES
    by = hashes.set_index("path")
    assert (files / "orig.png").read_bytes() != (files / "recoded.png").read_bytes()
    assert by.loc["orig.png", "sha1"] == by.loc["copy.png", "sha1"]
    assert by.loc["orig.png", "sha1"] != by.loc["recoded.png", "sha1"]
    assert by.loc["orig.png", "pixel_hash"] == by.loc["recoded.png", "pixel_hash"] == by.loc["recoded.bmp", "pixel_hash"]
    assert by.loc["orig.png", "pixel_hash"] != by.loc["mirror.png", "pixel_hash"]

    pairs = duplicate_pairs(hashes)
    found = {(a, b): (k, d) for a, b, k, d in pairs.itertuples(index=False)}
    assert found[("copy.png", "orig.png")] == ("exact", 0)
    # The pixel-equal files pair with the first path of the byte cluster ("copy.png").
    assert found[("copy.png", "recoded.bmp")] == ("pixel", 0)
    assert found[("copy.png", "recoded.png")] == ("pixel", 0)
    kind, distance = found[("copy.png", "mirror.png")]
    assert kind == "near_flip" and distance <= DEFAULT_NEAR_DISTANCE
    # Mirroring really moves the plain hash far away: it is found only through the mirrored hash.
    assert hamming(int(by.loc["orig.png", "phash"]), int(by.loc["mirror.png", "phash"])) > 16
    assert not any("other.png" in (a, b) for a, b in found)
    assert set(pairs["kind"]) == {"exact", "pixel", "near_flip"}
    assert duplicate_groups(pairs) == {n: 0 for n in NAMES if n != "other.png"}


def test_process_pool_gives_the_same_hashes(files: Path) -> None:
    one = image_hashes(NAMES, files, workers=1)
    two = image_hashes(NAMES, files, workers=2)
    pd.testing.assert_frame_equal(one, two)


def test_flip_hash_is_the_hash_of_the_mirrored_image() -> None:
    # 64 px -> 32 px box filtering is exactly mirror-symmetric, so the two must agree bit for bit.
    img = Image.fromarray(scene(3))
    phash, flip = perceptual_hash(img)
    mirrored, mirrored_flip = perceptual_hash(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert mirrored == flip and mirrored_flip == phash
    assert bin(phash).count("1") == 32  # median threshold: half the bits set


def test_near_copies_resized_and_recompressed(tmp_path: Path) -> None:
    base = Image.fromarray(scene(2, size=128))
    base.save(tmp_path / "a.png")
    base.resize((90, 90), Image.Resampling.BILINEAR).save(tmp_path / "b.jpg", quality=85)
    hashes = image_hashes(["a.png", "b.jpg"], tmp_path, workers=1)
    pairs = duplicate_pairs(hashes)
    assert pairs[["a", "b", "kind"]].values.tolist() == [["a.png", "b.jpg", "near"]]
    assert 0 <= pairs["distance"].iloc[0] <= DEFAULT_NEAR_DISTANCE


def test_unreadable_files_get_no_pixel_hashes(tmp_path: Path) -> None:
    Image.fromarray(scene(1)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    hashes = image_hashes(["ok.png", "cut.png", "empty.png", "missing.png"], tmp_path, workers=1).set_index("path")
    assert hashes.loc["ok.png", "pixel_hash"] is not None and not pd.isna(hashes.loc["ok.png", "phash"])
    for name in ("cut.png", "empty.png"):
        assert isinstance(hashes.loc[name, "sha1"], str)  # the bytes could be read
        assert pd.isna(hashes.loc[name, "pixel_hash"]) and pd.isna(hashes.loc[name, "phash"])
    assert pd.isna(hashes.loc["missing.png", "sha1"])
    assert duplicate_pairs(hashes.reset_index()).empty


def test_flat_images_have_no_perceptual_hash(tmp_path: Path) -> None:
    Image.new("RGB", (40, 40), (255, 255, 255)).save(tmp_path / "white.png")
    Image.new("RGB", (40, 40), (0, 0, 0)).save(tmp_path / "black.png")
    hashes = image_hashes(["white.png", "black.png"], tmp_path, workers=1)
    assert hashes["phash"].isna().all()
    assert duplicate_pairs(hashes).empty  # a black and a white image are not near duplicates


def test_band_search_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    n = 6000  # above the brute-force cut-off, so the band search runs
    h = rng.integers(0, 2**63, n, dtype=np.int64).view(np.uint64) ^ rng.integers(0, 2, n).astype(np.uint64) << 63
    # Plant near pairs at known distances.
    for k, bits in enumerate([1, 3, 6, 9]):
        flip = np.uint64(0)
        for b in rng.choice(64, bits, replace=False):
            flip |= np.uint64(1) << np.uint64(b)
        h[100 + k] = h[k] ^ flip
    g = rng.permutation(h)
    for max_distance in (0, 6, 9):
        values = np.concatenate([h, g])
        bands = dup._bands(max_distance)
        for other in (None, g):
            got = dup._band_search(h, other, h if other is None else values, bands, max_distance)
            ref = dup._brute_force(h, other, max_distance)
            assert {*zip(*(a.tolist() for a in got), strict=True)} == {*zip(*(a.tolist() for a in ref), strict=True)}
    i, j, d = dup._near_indices(h, None, 6)
    assert {(int(a), int(b), int(c)) for a, b, c in zip(i, j, d, strict=True)} >= {(0, 100, 1), (1, 101, 3), (2, 102, 6)}
    assert (3, 103) not in set(zip(i.tolist(), j.tolist(), strict=True))


def test_pairs_are_a_star_per_identical_cluster() -> None:
    table = pd.DataFrame({"path": [f"{k}.png" for k in range(5)], "sha1": ["s"] * 5, "pixel_hash": ["p"] * 5,
                          "phash": pd.array([1] * 5, dtype="UInt64"), "phash_flip": pd.array([2] * 5, dtype="UInt64")})
    pairs = duplicate_pairs(table)
    assert pairs[["a", "b"]].values.tolist() == [["0.png", f"{k}.png"] for k in range(1, 5)]
    assert set(pairs["kind"]) == {"exact"}


def test_bad_arguments() -> None:
    table = pd.DataFrame({"path": ["a"], "sha1": ["x"]})
    with pytest.raises(DataError, match="lacks column"):
        duplicate_pairs(table)
    full = pd.DataFrame({"path": ["a", "a"], "sha1": ["x", "y"], "pixel_hash": [None, None],
                         "phash": pd.array([None, None], dtype="UInt64"),
                         "phash_flip": pd.array([None, None], dtype="UInt64")})
    with pytest.raises(DataError, match="more than once"):
        duplicate_pairs(full)
    with pytest.raises(UsageError, match="outside 0..32"):
        duplicate_pairs(full.iloc[:1], max_distance=40)


def test_hamming() -> None:
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(np.uint64(2**64 - 1), 0) == 64
    assert hamming(np.array([1, 3], np.uint64), np.uint64(0)).tolist() == [1, 2]
