"""Hashing and duplicate-pair search on small generated images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from toolkit.errors import DataError, UsageError
from toolkit.imaging import duplicates as dup
from toolkit.imaging import hashing
from toolkit.imaging import phash as ph
from toolkit.imaging.decode import decode_plain_native, load_image
from toolkit.imaging.duplicates import DEFAULT_NEAR_DISTANCE, duplicate_groups, duplicate_pairs, hamming
from toolkit.imaging.hashing import image_hashes
from toolkit.imaging.phash import perceptual_hash


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


def mode_zoo(folder: Path) -> list[str]:
    """One file per way an image can reach the loader: modes, formats, EXIF rotation, frames."""
    rgb = scene(4, size=48)
    grey = rgb[..., 1]
    names = []

    def save(name: str, image: Image.Image, **kw) -> None:
        image.save(folder / name, **kw)
        names.append(name)

    save("rgb.png", Image.fromarray(rgb))
    save("grey_mode.png", Image.fromarray(grey))
    save("grey_looking_rgb.png", Image.fromarray(np.repeat(grey[..., None], 3, axis=2)))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32))
    alpha = np.dstack([rgb, np.linspace(0, 255, 48 * 48).reshape(48, 48).astype(np.uint8)])
    save("rgba.png", Image.fromarray(alpha))
    save("grey_alpha.png", Image.fromarray(np.dstack([grey, alpha[..., 3]])))
    save("grey16.png", Image.fromarray(grey.astype(np.uint16) * 257 + 3))
    save("plain.bmp", Image.fromarray(rgb))
    save("photo.webp", Image.fromarray(rgb), lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    save("rotated.jpg", Image.fromarray(rgb[:, :40]), exif=exif, quality=95)
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(rgb[::-1].copy()).convert("P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    names.append("animated.gif")
    return names


def test_every_mode_hashes_the_pixels_the_loader_gives(tmp_path: Path) -> None:
    # Files are decoded from the bytes already read, not through load_image: the pixels (and so
    # the digests and hashes) must still be exactly the loader's, whatever the mode or format.
    names = mode_zoo(tmp_path)
    # All but the animated GIF are decoded from memory (the path this test is about).
    fast = {n for n in names if hashing.decode_bytes((tmp_path / n).read_bytes())[1] is not None}
    assert set(names) - fast == {"animated.gif"}
    hashes = image_hashes(names, tmp_path, workers=1).set_index("path")
    for name in names:
        image = load_image(tmp_path / name)
        assert hashes.loc[name, "pixel_hash"] == hashing.pixel_digest(np.asarray(image)), name
        phash, flip = perceptual_hash(image)
        assert (hashes.loc[name, "phash"], hashes.loc[name, "phash_flip"]) == (phash, flip), name
    assert load_image(tmp_path / "rotated.jpg").size == (48, 40)  # the EXIF rotation was applied
    # A grey-mode file and an RGB file that only looks grey hold the same pixels.
    assert hashes.loc["grey_mode.png", "pixel_hash"] == hashes.loc["grey_looking_rgb.png", "pixel_hash"]
    assert hashes.loc["grey_mode.png", "pixel_hash"] != hashes.loc["rgb.png", "pixel_hash"]


def test_pixel_digest_tells_grey_from_colour() -> None:
    grey = scene(5)[..., 0]
    as_rgb = np.repeat(grey[..., None], 3, axis=2)
    # A colour image whose first plane is the grey plane (the grey digest hashes one plane only).
    coloured = as_rgb.copy()
    coloured[..., 2] = 255 - grey
    assert hashing.pixel_digest(as_rgb) != hashing.pixel_digest(coloured)
    assert hashing.pixel_digest(as_rgb) == hashing.pixel_digest(as_rgb.copy())
    assert hashing.pixel_digest(as_rgb[:8]) != hashing.pixel_digest(as_rgb[:8].reshape(16, -1, 3))  # same bytes
    one = as_rgb.copy()
    one[3, 7, 1] ^= 1  # one channel of one pixel
    assert hashing.pixel_digest(one) != hashing.pixel_digest(as_rgb)
    with pytest.raises(ValueError, match="H x W x 3"):
        hashing.pixel_digest(grey)


def test_hashes_do_not_depend_on_the_stack() -> None:
    # Hashes are computed for a chunk of images at once; each must equal the one-image result.
    rng = np.random.default_rng(3)
    tinies = [scene(k, size=32).tobytes() for k in range(20)]
    tinies += [rng.integers(0, 256, (32, 32), dtype=np.uint8).tobytes() for _ in range(5)]  # L
    tinies.insert(7, np.full((32, 32, 3), 200, np.uint8).tobytes())  # flat: no hash
    _, phash, flip = ph.layout_batch(ph.stack_tiny(tinies))
    alone = [ph.layout_batch(ph.stack_tiny([t]))[1:] for t in tinies]
    assert phash == [a[0][0] for a in alone] and flip == [a[1][0] for a in alone]
    assert phash[7] is None and sum(h is None for h in phash) == 1
    # An L tiny image hashes like the RGB image with three copies of its plane.
    plane = np.frombuffer(tinies[-1], np.uint8).reshape(32, 32)
    rgb = np.repeat(plane[..., None], 3, axis=2)
    assert ph.layout_batch(ph.stack_tiny([rgb.tobytes()]))[1] == [phash[-1]]


def test_decode_bytes_leaves_unusual_files_to_the_loader(tmp_path: Path) -> None:
    names = mode_zoo(tmp_path)
    assert "animated.gif" in names
    header, image = hashing.decode_bytes((tmp_path / "animated.gif").read_bytes())
    assert header == ("GIF", "P", 2) and image is None  # several frames: load_image decodes it
    data = (tmp_path / "rgb.png").read_bytes()
    header, image = hashing.decode_bytes(data[: len(data) // 2])
    assert header == ("PNG", "RGB", 1) and image is None  # truncated: header kept, no pixels
    assert hashing.decode_bytes(b"not an image") == (None, None)
    header, image = hashing.decode_bytes((tmp_path / "grey_mode.png").read_bytes())
    assert header == ("PNG", "L", 1) and image.mode == "L"


def test_decode_data_gives_the_pillow_path_results_for_every_file(tmp_path: Path) -> None:
    # Plain PNG/JPEG files are decoded by OpenCV (BGR, no copy to RGB), the rest by Pillow: header,
    # size, grayscale flag, digest, planes and the 32x32 layout must not depend on which.
    names = mode_zoo(tmp_path)
    rgb = scene(6, size=40)
    grey = rgb[..., 0]
    extra = {"plain.jpg": (rgb, {"quality": 90}), "progressive.jpg": (rgb, {"progressive": True}),
             "grey.jpg": (grey, {}), "grey_looking.jpg": (np.repeat(grey[..., None], 3, 2), {"quality": 100}),
             "small.png": (rgb[:21, :25], {}), "small_grey.png": (grey[:9, :30], {}),
             "tall.png": (scene(2, size=128)[:, :40], {}), "interlaced.png": (rgb, {"interlace": 1})}
    for name, (pixels, kw) in extra.items():
        Image.fromarray(pixels).save(tmp_path / name, **kw)
        names.append(name)
    opencv = set()
    for name in names:
        data = (tmp_path / name).read_bytes()
        header, decoded = hashing.decode_data(data)
        if name == "animated.gif":
            assert decoded is None and header == ("GIF", "P", 2)
            continue
        if decode_plain_native(data) is not None:
            opencv.add(name)
        pillow_header, image = hashing.decode_bytes(data)
        assert header == pillow_header, name
        reference = hashing.Decoded.from_image(image)
        pixels = np.asarray(load_image(tmp_path / name))
        assert (decoded.width, decoded.height) == (pixels.shape[1], pixels.shape[0]), name
        assert decoded.grey == reference.grey == bool((pixels == pixels[..., :1]).all()), name
        assert decoded.digest == reference.digest == hashing.pixel_digest(pixels), name
        expected = [pixels[..., 0]] if decoded.grey else [pixels[..., c] for c in range(3)]
        assert all(np.array_equal(a, b) for a, b in zip(decoded.planes, expected, strict=True)), name
        assert decoded.tiny_bytes() == reference.tiny_bytes(), name
        # The same 32x32 planes as the loader's RGB image filtered by Pillow (an L layout fills all three).
        loader_tiny = ph.stack_tiny([ph.tiny_bytes(ph.reduce_image(load_image(tmp_path / name)))]).copy()
        assert np.array_equal(ph.stack_tiny([decoded.tiny_bytes()]), loader_tiny), name
    assert opencv == {"rgb.png", "grey_mode.png", "grey_looking_rgb.png", *extra}  # EXIF, CMYK, ...: Pillow


def test_small_layouts_in_numpy_are_pillows_box_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Up to 32 px a side the 32x32 layout is two gathers; it must equal Pillow's BOX resize exactly,
    # and the Pillow path (taken when the once-per-process check fails) must give the same bytes.
    rng = np.random.default_rng(11)
    assert ph._box32_agrees()
    for h in range(1, 41):
        for w in range(1, 41):
            for shape in ((h, w), (h, w, 3)):
                x = rng.integers(0, 256, shape, dtype=np.uint8)
                got = ph._box32(x)
                if max(h, w) > 32:
                    assert got is None
                    continue
                ref = Image.fromarray(x).resize((32, 32), Image.Resampling.BOX)
                assert got is not None and got.tobytes() == ref.tobytes(), shape
    x = rng.integers(0, 256, (17, 29, 3), dtype=np.uint8)
    fast = hashing.Decoded(x, "BGR").tiny_bytes()
    monkeypatch.setattr(ph, "_box32_agrees", lambda: False)
    assert hashing.Decoded(x, "BGR").tiny_bytes() == fast == hashing.Decoded(x[..., ::-1].copy(), "RGB").tiny_bytes()


def test_multi_picture_jpeg_goes_to_pillow(tmp_path: Path) -> None:
    first, second = Image.fromarray(scene(3)), Image.fromarray(scene(4))
    first.save(tmp_path / "pair.mpo", save_all=True, append_images=[second])
    data = (tmp_path / "pair.mpo").read_bytes()
    assert decode_plain_native(data) is None
    header, decoded = hashing.decode_data(data)
    assert header == ("MPO", "RGB", 2) and decoded is None  # several frames: load_image decodes the first
    assert image_hashes(["pair.mpo"], tmp_path, workers=1)["pixel_hash"].iloc[0] \
        == hashing.pixel_digest(np.asarray(load_image(tmp_path / "pair.mpo")))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_read_file_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    assert hashing.read_file(str(tmp_path / "pipe.png")) is None
    assert hashing.read_file(str(tmp_path)) is None and hashing.read_file(str(tmp_path / "missing.png")) is None
    (tmp_path / "a.png").write_bytes(b"12345")
    assert hashing.read_file(str(tmp_path / "a.png")) == b"12345"
    hashes = image_hashes(["pipe.png"], tmp_path, workers=1)
    assert hashes["sha1"].isna().all()

