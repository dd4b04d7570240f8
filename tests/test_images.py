"""Tests for toolkit.imaging.decode. Every image is generated in tmp_path."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from toolkit.errors import DataError, ImageError
from toolkit.imaging import decode as images
from toolkit.imaging.decode import (
    BACKGROUND,
    IMAGE_EXTENSIONS,
    ImageHeader,
    is_image_file,
    load_image,
    load_image_array,
    read_image_header,
    scan_images,
)

W, H = 6, 4


def _save(im: Image.Image, path: Path, **kwargs: object) -> Path:
    im.save(path, **kwargs)
    return path


def _pixel(path: Path, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    im = load_image(path)
    assert im.mode == "RGB"
    return im.getpixel(xy)


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tol: int) -> bool:
    return all(abs(int(a) - int(e)) <= tol for a, e in zip(actual, expected, strict=True))


def _blend(fg: int, alpha: int, bg: int) -> int:
    return round((fg * alpha + bg * (255 - alpha)) / 255)


def _noise_jpeg(path: Path, size: tuple[int, int] = (256, 256)) -> Path:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return _save(Image.fromarray(arr), path, quality=95)


# ----------------------------------------------------------------- extensions


def test_image_extensions_are_lowercase_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} == IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


@pytest.mark.parametrize("name", ["a.jpg", "b.JPEG", "c.Png", "d/e.webp", "f.BMP", "g.tif", "h.TIFF", "i.gif"])
def test_is_image_file_true(name: str) -> None:
    assert is_image_file(name)
    assert is_image_file(Path(name))


@pytest.mark.parametrize("name", ["a.txt", "jpg", "b.jpg.bak", "c", ".png.txt", "d.svg"])
def test_is_image_file_false(name: str) -> None:
    assert not is_image_file(name)


def test_background_is_white() -> None:
    assert BACKGROUND == (255, 255, 255)


# ----------------------------------------------------------------- modes


def test_mode_rgb_exact(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (W, H), (10, 200, 30)), tmp_path / "rgb.png")
    im = load_image(p)
    assert im.size == (W, H)
    assert im.getpixel((3, 2)) == (10, 200, 30)


def test_mode_L(tmp_path: Path) -> None:
    p = _save(Image.new("L", (W, H), 100), tmp_path / "l.png")
    assert _pixel(p) == (100, 100, 100)


def test_mode_1(tmp_path: Path) -> None:
    im = Image.new("1", (W, H), 0)
    im.putpixel((1, 0), 1)
    p = _save(im, tmp_path / "one.png")
    out = load_image(p)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def _palette_image() -> Image.Image:
    im = Image.new("P", (W, H), 0)
    im.putpalette([0, 0, 0, 10, 20, 30, 250, 0, 0] + [0] * (256 - 3) * 3)
    im.putpixel((0, 0), 1)
    im.putpixel((1, 0), 2)
    return im


def test_mode_P_palette_colour(tmp_path: Path) -> None:
    p = _save(_palette_image(), tmp_path / "p.png")
    with Image.open(p) as raw:
        assert raw.mode == "P"
    out = load_image(p)
    assert out.getpixel((0, 0)) == (10, 20, 30)
    assert out.getpixel((1, 0)) == (250, 0, 0)
    assert out.getpixel((2, 0)) == (0, 0, 0)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_mode_P_transparency_index_is_white(tmp_path: Path, suffix: str) -> None:
    # Index 0 (black) is transparent: it must come back as the white background, not black.
    p = _save(_palette_image(), tmp_path / f"pt{suffix}", transparency=0)
    with Image.open(p) as raw:
        assert raw.mode == "P"
        assert "transparency" in raw.info
    out = load_image(p)
    assert out.getpixel((2, 0)) == BACKGROUND
    assert out.getpixel((0, 0)) == (10, 20, 30)
    assert out.getpixel((1, 0)) == (250, 0, 0)


def test_mode_LA_half_transparent(tmp_path: Path) -> None:
    p = _save(Image.new("LA", (W, H), (100, 128)), tmp_path / "la.png")
    with Image.open(p) as raw:
        assert raw.mode == "LA"
    v = _blend(100, 128, 255)  # 177
    assert _close(_pixel(p), (v, v, v), 1)


def test_mode_RGBA_half_transparent(tmp_path: Path) -> None:
    im = Image.new("RGBA", (W, H), (200, 100, 0, 128))
    im.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white
    im.putpixel((2, 0), (10, 20, 30, 255))  # opaque -> unchanged
    p = _save(im, tmp_path / "rgba.png")
    out = load_image(p)
    expected = tuple(_blend(c, 128, 255) for c in (200, 100, 0))  # (227, 177, 127)
    assert _close(out.getpixel((0, 0)), expected, 1)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert out.getpixel((2, 0)) == (10, 20, 30)


def test_mode_PA_in_memory() -> None:
    # No common file format stores PA, so the converter is checked directly.
    im = Image.new("PA", (W, H), (1, 128))
    im.putpalette([0, 0, 0, 200, 100, 0] + [0] * 254 * 3)
    out = images._to_rgb(im)
    expected = tuple(_blend(c, 128, 255) for c in (200, 100, 0))
    assert out.mode == "RGB"
    assert _close(out.getpixel((0, 0)), expected, 1)


def test_rgb_with_colour_key_transparency(tmp_path: Path) -> None:
    im = Image.new("RGB", (W, H), (1, 2, 3))
    im.putpixel((0, 0), (40, 50, 60))
    p = _save(im, tmp_path / "key.png", transparency=(1, 2, 3))
    out = load_image(p)
    assert out.getpixel((1, 1)) == BACKGROUND
    assert out.getpixel((0, 0)) == (40, 50, 60)


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_mode_CMYK(tmp_path: Path, suffix: str) -> None:
    im = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    p = _save(im, tmp_path / f"cmyk{suffix}")
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    tol = 0 if suffix == ".tif" else 4
    assert _close(_pixel(p, (8, 8)), (0, 255, 255), tol)


def test_mode_CMYK_black_channel(tmp_path: Path) -> None:
    p = _save(Image.new("CMYK", (W, H), (0, 0, 0, 128)), tmp_path / "k.tif")
    assert _pixel(p) == (127, 127, 127)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_mode_I16_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    arr = np.array([[0, 65535, 257 * 100, 25700 + 128, 25700 + 129, 1000]], dtype=np.uint16)
    p = _save(Image.fromarray(arr), tmp_path / f"i16{suffix}")
    with Image.open(p) as raw:
        assert raw.mode.startswith("I;16")
    out = load_image_array(p)
    # 1000/257 = 3.89 -> 4; 25828/257 = 100.498 -> 100; 25829/257 = 100.502 -> 101
    assert out[0, :, 0].tolist() == [0, 255, 100, 100, 101, 4]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_mode_I16_big_endian_in_memory() -> None:
    arr = np.array([[0, 65535, 257 * 100]], dtype=">u2")
    im = Image.frombytes("I;16B", (3, 1), arr.tobytes())
    out = np.asarray(images._to_rgb(im))
    assert out[0, :, 0].tolist() == [0, 255, 100]


def test_mode_I_int32_clipped_to_16_bit(tmp_path: Path) -> None:
    arr = np.array([[0, 65535, 257 * 100, 70000, -5]], dtype=np.int32)
    p = _save(Image.fromarray(arr), tmp_path / "i32.tif")
    with Image.open(p) as raw:
        assert raw.mode == "I"
    out = load_image_array(p)
    assert out[0, :, 1].tolist() == [0, 255, 100, 255, 0]


def test_mode_F_unit_range(tmp_path: Path) -> None:
    arr = np.array([[0.0, 1.0, 0.4, 0.5, np.nan]], dtype=np.float32)
    p = _save(Image.fromarray(arr), tmp_path / "f01.tif")
    with Image.open(p) as raw:
        assert raw.mode == "F"
    out = load_image_array(p)
    # 0.4*255 = 102; 0.5*255 = 127.5 -> 128 (round half to even); NaN -> 0
    assert out[0, :, 2].tolist() == [0, 255, 102, 128, 0]


def test_mode_F_byte_range_clipped(tmp_path: Path) -> None:
    arr = np.array([[0.0, 100.4, 300.0, -20.0, 254.6]], dtype=np.float32)
    p = _save(Image.fromarray(arr), tmp_path / "f255.tif")
    out = load_image_array(p)
    assert out[0, :, 0].tolist() == [0, 100, 255, 0, 255]


def test_rgb_fast_path_returns_loaded_image_without_copy(tmp_path: Path) -> None:
    p = _noise_jpeg(tmp_path / "fast.jpg", (32, 16))
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (32, 16)
    assert im.format == "JPEG"  # the decoded file object itself, not a converted copy
    assert im.getpixel((0, 0)) is not None  # usable after the file was closed


# ----------------------------------------------------------------- formats

FORMAT_CASES = [
    (".jpg", {"quality": 95}, 4),
    (".jpeg", {"quality": 95}, 4),
    (".png", {}, 0),
    (".webp", {"lossless": True}, 0),
    (".bmp", {}, 0),
    (".tif", {}, 0),
    (".tiff", {"compression": "tiff_lzw"}, 0),
    (".gif", {}, 0),
]


@pytest.mark.parametrize(("suffix", "kwargs", "tol"), FORMAT_CASES)
def test_formats_round_trip_colours(tmp_path: Path, suffix: str, kwargs: dict, tol: int) -> None:
    im = Image.new("RGB", (32, 16), (255, 0, 0))
    im.paste((0, 0, 255), (16, 0, 32, 16))  # right half blue
    p = _save(im, tmp_path / f"img{suffix}", **kwargs)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (32, 16)
    assert _close(out.getpixel((4, 8)), (255, 0, 0), tol)
    assert _close(out.getpixel((28, 8)), (0, 0, 255), tol)
    arr = load_image_array(p)
    assert arr.shape == (16, 32, 3) and arr.dtype == np.uint8
    assert _close(tuple(arr[8, 4]), (255, 0, 0), tol)


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (W, H), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as raw:
        assert raw.n_frames == 3
    assert _pixel(p, (2, 2)) == (255, 0, 0)
    assert read_image_header(p).n_frames == 3


def test_animated_webp_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (W, H), c) for c in [(0, 255, 0), (255, 0, 0)]]
    p = tmp_path / "anim.webp"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    assert _pixel(p, (2, 2)) == (0, 255, 0)


# ----------------------------------------------------------------- EXIF


def _oriented_jpeg(path: Path, orientation: int) -> Path:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(im, path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    p = _oriented_jpeg(tmp_path / "rot6.jpg", 6)
    with Image.open(p) as raw:
        assert raw.size == (40, 20)
    out = load_image(p)
    assert out.size == (20, 40)  # width/height swapped
    # Orientation 6 = display rotated 90 degrees clockwise: stored left -> top.
    assert _close(out.getpixel((10, 5)), (255, 0, 0), 6)
    assert _close(out.getpixel((10, 35)), (0, 0, 255), 6)
    # The header reports the stored size; load_image the displayed one.
    assert read_image_header(p).size == (40, 20)


def test_exif_orientation_3_rotates_180(tmp_path: Path) -> None:
    out = load_image(_oriented_jpeg(tmp_path / "rot3.jpg", 3))
    assert out.size == (40, 20)
    assert _close(out.getpixel((5, 10)), (0, 0, 255), 6)
    assert _close(out.getpixel((35, 10)), (255, 0, 0), 6)


def test_exif_orientation_1_unchanged(tmp_path: Path) -> None:
    out = load_image(_oriented_jpeg(tmp_path / "rot1.jpg", 1))
    assert out.size == (40, 20)
    assert _close(out.getpixel((5, 10)), (255, 0, 0), 6)


# ----------------------------------------------------------------- errors


def _assert_image_error(path: Path, reason_start: str) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(path)
    err = info.value
    assert isinstance(err, DataError) and err.exit_code == 2
    assert err.path == str(path)
    assert str(path) in str(err)
    assert err.reason.startswith(reason_start), err.reason
    return err


def test_truncated_jpeg(tmp_path: Path) -> None:
    p = _noise_jpeg(tmp_path / "trunc.jpg")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    err = _assert_image_error(p, "truncated or corrupt image data: ")
    assert "truncated" in err.reason
    # The failure is local: Pillow's global switch is left as it was.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    p = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "t.png")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _assert_image_error(p, "truncated or corrupt image data: ")


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    err = _assert_image_error(p, "file is empty (0 bytes)")
    assert err.reason == "file is empty (0 bytes)"


def test_text_file_named_png(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n" * 10)
    err = _assert_image_error(p, "not an image PIL can identify")
    assert err.reason == "not an image PIL can identify"


def test_missing_file(tmp_path: Path) -> None:
    err = _assert_image_error(tmp_path / "nope.jpg", "no such file")
    assert err.reason == "no such file"


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    d = tmp_path / "dir.jpg"
    d.mkdir()
    _assert_image_error(d, "is a directory")


def test_str_path_accepted_and_reported_as_given(tmp_path: Path) -> None:
    p = str(tmp_path / "missing.png")
    with pytest.raises(ImageError) as info:
        load_image(p)
    assert info.value.path == p


@pytest.mark.parametrize("side", [12, 20])  # 144 px: warning band; 400 px: Pillow's error
def test_decompression_bomb_becomes_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                side: int) -> None:
    p = _save(Image.new("RGB", (side, side), (1, 2, 3)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray DecompressionBombWarning may escape
        err = _assert_image_error(p, "image too large")
        with pytest.raises(ImageError):
            read_image_header(p)
    assert "decompression" in err.reason
    # The temporary "error" filter must not leak into the global filter list.
    assert not any(f[2] is Image.DecompressionBombWarning for f in warnings.filters)


# ----------------------------------------------------------------- header


def test_read_image_header_fields(tmp_path: Path) -> None:
    p = _save(Image.new("L", (W, H), 7), tmp_path / "h.png")
    h = read_image_header(p)
    assert h == ImageHeader(format="PNG", mode="L", width=W, height=H, n_frames=1, bytes=p.stat().st_size)
    with pytest.raises(AttributeError):
        h.width = 3  # type: ignore[misc]  # frozen


def test_read_image_header_does_not_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _noise_jpeg(tmp_path / "h.jpg", (64, 48))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    # A truncated file still has a valid header: reading it must not touch pixel data.
    h = read_image_header(p)
    assert (h.format, h.mode, h.width, h.height, h.n_frames) == ("JPEG", "RGB", 64, 48, 1)
    assert h.bytes == len(data) // 2

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert read_image_header(p).size == (64, 48)


def test_read_image_header_errors(tmp_path: Path) -> None:
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    text = tmp_path / "t.jpg"
    text.write_text("hello")
    for path, reason in [(empty, "file is empty (0 bytes)"), (text, "not an image PIL can identify"),
                         (tmp_path / "missing.gif", "no such file")]:
        with pytest.raises(ImageError) as info:
            read_image_header(path)
        assert info.value.path == str(path)
        assert info.value.reason == reason


# ----------------------------------------------------------------- scan


def _mixed_files(tmp_path: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    good1 = _save(Image.new("RGB", (W, H), (1, 2, 3)), tmp_path / "good1.png")
    trunc = _noise_jpeg(tmp_path / "trunc.jpg")
    trunc.write_bytes(trunc.read_bytes()[:2000])
    good2 = _noise_jpeg(tmp_path / "good2.jpg", (16, 16))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    good3 = _save(Image.new("LA", (W, H), (5, 6)), tmp_path / "good3.png")
    missing = tmp_path / "missing.webp"
    paths = [good1, trunc, good2, empty, text, good3, missing]
    expected_prefixes = [
        (str(trunc), "truncated or corrupt image data: "),
        (str(empty), "file is empty (0 bytes)"),
        (str(text), "not an image PIL can identify"),
        (str(missing), "no such file"),
    ]
    return paths, expected_prefixes


@pytest.mark.parametrize("workers", [1, 2, None, 0])
def test_scan_images_reports_exactly_the_bad_files_in_order(tmp_path: Path, workers: int | None) -> None:
    paths, expected = _mixed_files(tmp_path)
    bad = scan_images(paths, workers=workers)
    assert [p for p, _ in bad] == [p for p, _ in expected]
    for (_, reason), (_, prefix) in zip(bad, expected, strict=True):
        assert reason.startswith(prefix), reason


def test_scan_images_many_files_parallel_keeps_order(tmp_path: Path) -> None:
    paths: list[Path] = []
    for i in range(40):
        p = tmp_path / f"{i:02d}.png"
        if i % 7 == 3:
            p.write_bytes(b"")
        else:
            _save(Image.new("RGB", (8, 8), (i, i, i)), p)
        paths.append(p)
    expected = [(str(p), "file is empty (0 bytes)") for i, p in enumerate(paths) if i % 7 == 3]
    assert scan_images(paths, workers=4) == expected
    assert scan_images(iter(paths), workers=1) == expected


def test_scan_images_header_only_misses_truncated_data(tmp_path: Path) -> None:
    paths, expected = _mixed_files(tmp_path)
    bad = scan_images(paths, workers=2, full_decode=False)
    # The truncated JPEG has an intact header, so only a full decode finds it.
    assert [p for p, _ in bad] == [p for p, _ in expected if not p.endswith("trunc.jpg")]


def test_scan_images_all_good_and_empty_input(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (W, H)), tmp_path / "ok.bmp")
    assert scan_images([p, str(p)], workers=2) == []
    assert scan_images([], workers=2) == []


def test_scan_images_accepts_os_pathlike_and_returns_str(tmp_path: Path) -> None:
    missing = tmp_path / "gone.jpg"
    result = scan_images([missing], workers=1)
    assert result == [(os.fspath(missing), "no such file")]
    assert isinstance(result[0][0], str)


def test_load_image_from_bytes_roundtrip_matches_array(tmp_path: Path) -> None:
    # load_image and load_image_array agree pixel for pixel.
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    p = tmp_path / "rt.png"
    p.write_bytes(buf.getvalue())
    assert np.array_equal(load_image_array(p), arr)
    assert np.array_equal(np.asarray(load_image(p)), arr)


# ----------------------------------------------------------------- OpenCV fast path


def _variants(tmp_path: Path) -> list[tuple[Path, bool]]:
    """(file, expected to take the OpenCV path) over the formats and options met in practice."""
    rng = np.random.default_rng(7)
    out = []
    for i, (h, w) in enumerate([(1, 1), (17, 33), (64, 48), (227, 227), (9, 300)]):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        smooth = np.cumsum(rgb, axis=1, dtype=np.uint32).astype(np.uint8)  # JPEG-friendly content
        grey = rgb[..., 0]
        out += [(_save(Image.fromarray(rgb), tmp_path / f"rgb{i}.png"), True),
                (_save(Image.fromarray(grey), tmp_path / f"grey{i}.png", optimize=True), True),
                (_save(Image.fromarray(rgb), tmp_path / f"inter{i}.png", interlace=1), True),
                (_save(Image.fromarray(smooth), tmp_path / f"q{i}.jpg", quality=90), True),
                (_save(Image.fromarray(smooth), tmp_path / f"prog{i}.jpg", quality=75, progressive=True), True),
                (_save(Image.fromarray(smooth), tmp_path / f"s444_{i}.jpg", quality=95, subsampling=0), True),
                (_save(Image.fromarray(grey), tmp_path / f"grey{i}.jpg", quality=85), True),
                # Pillow's rules apply: transparency, palettes, 16 bit, CMYK, EXIF rotation
                (_save(Image.fromarray(rgb).convert("RGBA"), tmp_path / f"rgba{i}.png"), False),
                (_save(Image.fromarray(rgb).convert("P"), tmp_path / f"pal{i}.png"), False),
                (_save(Image.fromarray(smooth).convert("CMYK"), tmp_path / f"cmyk{i}.jpg"), False),
                (_save(Image.fromarray(grey.astype(np.uint16) * 257), tmp_path / f"wide{i}.png"), False)]
    keyed = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    out.append((_save(keyed, tmp_path / "key.png", transparency=(1, 2, 3)), False))
    out.append((_oriented_jpeg(tmp_path / "rot6.jpg", 6), False))
    return out


def test_opencv_path_gives_pillows_pixels(tmp_path: Path) -> None:
    for path, fast in _variants(tmp_path):
        expected = np.asarray(load_image(path))
        got = load_image_array(path)
        assert (images._fast_decode(str(path)) is not None) == fast, path.name
        assert got.dtype == np.uint8 and got.flags.c_contiguous, path.name
        np.testing.assert_array_equal(got, expected, err_msg=path.name)


def test_opencv_path_leaves_damaged_files_to_pillow(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    png = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / "t.png")
    jpg = _noise_jpeg(tmp_path / "t.jpg")
    for p in (png, jpg):
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        assert images._fast_decode(str(p)) is None
        with pytest.raises(ImageError, match="truncated or corrupt image data"):
            load_image_array(p)
    trailing = _save(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), tmp_path / "trail.png")
    trailing.write_bytes(trailing.read_bytes() + b"junk" * 10)  # decodes, by Pillow
    np.testing.assert_array_equal(load_image_array(trailing), np.asarray(load_image(trailing)))


def test_png_with_damaged_data_never_reaches_opencv(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # Bytes overwritten inside IDAT (bit rot, a bad copy): the chunk's CRC no longer holds, so the file
    # goes to Pillow, which names the problem; libpng never sees it and prints nothing of its own.
    rng = np.random.default_rng(3)
    path = _save(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), tmp_path / "rot.png")
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT") + 20
    data[at:at + 20] = bytes(20)
    path.write_bytes(bytes(data))
    assert images.decode_plain(bytes(data)) is None
    with pytest.raises(ImageError, match="rot.png"):
        load_image_array(path)
    assert "libpng" not in capfd.readouterr().err
    # An intact file with an extra ancillary chunk still takes the OpenCV path.
    buf = bytearray(_save(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)), tmp_path / "ok.png",
                          pnginfo=_text_chunk()).read_bytes())
    assert images.decode_plain(bytes(buf)) is not None
    buf[-5] ^= 1  # the IEND chunk's CRC
    assert images.decode_plain(bytes(buf)) is None


def _text_chunk():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "kept")
    return info
