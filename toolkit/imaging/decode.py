"""The one image loader: every stage (EDA, training, prediction, cleaning) reads pixels here.

Having a single loader means an image looks the same to every stage: the same EXIF
rotation, the same alpha handling, the same 16-bit scaling. A model trained on one
interpretation and evaluated on another would silently lose accuracy.

Conversion rules (applied by :func:`load_image`, whatever the file format):

* EXIF orientation is applied first, so width/height are the displayed ones.
* ``RGB`` is returned as decoded (no copy).
* ``1``, ``L``, ``P`` (opaque), ``CMYK``, ``YCbCr``, ``RGBX``: Pillow's ``convert("RGB")``.
* Anything carrying transparency (``LA``, ``PA``, ``RGBA``, ``P``/``L``/``RGB`` with a
  ``transparency`` entry, palettes with alpha) is composited over :data:`BACKGROUND`
  with ``out = round((fg * a + bg * (255 - a)) / 255)`` per channel.
* ``I;16`` (and its byte-order variants): ``round(value / 257)``, so the full 16-bit
  range 0..65535 maps onto 0..255 (65535 -> 255, 257*k -> k). Clipping at 255, which is
  what Pillow's own ``convert("L")`` does, would turn almost every 16-bit image white.
* ``I`` (32-bit signed): Pillow uses this mode as the container for 16-bit samples
  (16-bit PPM/PGM, older 16-bit PNG readers, ``I;16`` after arithmetic), so it is read
  as 16-bit data: clipped to 0..65535, then scaled like ``I;16``. Scaling by the full
  int32 range would make those images black. A per-image min/max stretch is avoided on
  purpose: it would make the same grey level mean different things in different files.
* ``F`` (32-bit float): if every value is <= 1 the image is taken to be in [0, 1] and
  multiplied by 255; otherwise values are taken to be on the 0..255 scale and clipped.
  NaN becomes 0. Results are rounded to nearest.
"""

from __future__ import annotations

import os
import stat
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from toolkit.errors import ImageError

__all__ = [
    "BACKGROUND",
    "IMAGE_EXTENSIONS",
    "ImageHeader",
    "is_image_file",
    "load_image",
    "decode_plain",
    "decode_plain_native",
    "exif_orientation",
    "load_image_array",
    "read_image_header",
    "scan_images",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

# White, because the transparent images met in classification data are mostly sketches,
# line art, logos and product cut-outs drawn with dark strokes for a light page: over
# white they look as their author saw them, over black the strokes would vanish. It is
# a fixed constant (not a setting) so training and prediction can never disagree.
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Integer grayscale modes holding 16-bit samples (see module docstring for ``I``).
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

# ``warnings.catch_warnings`` swaps the process-wide filter list and is not thread-safe:
# two threads entering and leaving it interleaved can leave the "error" filter installed
# for good. ``Image.open`` only parses the header (cheap, mostly under the GIL anyway),
# so serialising just that call costs nothing while pixel decoding stays parallel.
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself, read without decoding pixels.

    Attributes:
        format: Pillow's format name, e.g. ``"JPEG"``, ``"PNG"``.
        mode: Pillow's pixel mode as stored in the file, e.g. ``"RGB"``, ``"P"``, ``"I;16"``.
        width: Width in pixels, as stored (before any EXIF rotation).
        height: Height in pixels, as stored (before any EXIF rotation).
        n_frames: Number of frames (1 for still images).
        bytes: File size in bytes.
    """

    format: str
    mode: str
    width: int
    height: int
    n_frames: int
    bytes: int

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, like ``PIL.Image.Image.size``."""
        return (self.width, self.height)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Tell whether ``path`` has an image suffix from :data:`IMAGE_EXTENSIONS`.

    Only the name is looked at (case-insensitively); the file need not exist.

    Args:
        path: File name or path.

    Returns:
        True for e.g. ``a.JPG`` or ``b.tiff``, False for ``c.txt`` or ``d``.
    """
    return os.path.splitext(os.fsdecode(path))[1].lower() in IMAGE_EXTENSIONS


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file into a fully loaded RGB image.

    See the module docstring for how each pixel mode becomes RGB. Multi-frame files
    (animated GIF/WEBP/PNG, multi-page TIFF) give their first frame.

    Args:
        path: Path to the image file.

    Returns:
        An ``RGB`` image whose pixels are already decoded, so using it later can not
        fail on bad file data, and whose file handle is closed.

    Raises:
        ImageError: The file is missing, empty, not an image, truncated or corrupt,
            larger than Pillow's decompression-bomb limit, or of an unsupported mode.
    """
    name = os.fsdecode(path)
    _check_file(name)
    with _open(name) as im:
        try:
            # Decode now: Image.open is lazy, and a truncated file must fail here, where
            # the path is known, not in the middle of a training batch.
            im.load()
        except MemoryError:
            raise
        except Exception as e:  # Pillow plugins raise many types on bad data
            raise ImageError(name, f"truncated or corrupt image data: {_describe(e)}") from e
        try:
            # in_place: no copy when there is no orientation tag (the common case).
            ImageOps.exif_transpose(im, in_place=True)
        except MemoryError:
            raise
        except Exception as e:
            raise ImageError(name, f"corrupt EXIF metadata: {_describe(e)}") from e
        try:
            return _to_rgb(im)
        except ValueError as e:  # Pillow has no conversion for this mode (e.g. LAB)
            raise ImageError(name, f"unsupported pixel mode {im.mode}: {e}") from e


def load_image_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file into an ``H x W x 3`` ``uint8`` array.

    Plain 8-bit RGB or grey PNG and JPEG files (no transparency, EXIF, animation or CMYK) are decoded
    by OpenCV, which gives the same pixels as Pillow for them, 1.1-2.1x faster than Pillow on the
    shared data sets (``benchmarks/decode_bench.py``); everything else, and any file OpenCV refuses,
    goes through :func:`load_image`.

    Args:
        path: Path to the image file.

    Returns:
        The pixels of :func:`load_image`, as a C-contiguous array.

    Raises:
        ImageError: As :func:`load_image`.
    """
    name = os.fsdecode(path)
    fast = _fast_decode(name)
    if fast is not None:
        return fast
    return np.asarray(load_image(name), dtype=np.uint8)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change how Pillow turns the file into RGB (transparency, EXIF rotation, animation).
_PNG_SPECIAL = (b"tRNS", b"eXIf", b"acTL")
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _plain_channels(data: bytes) -> int | None:
    """1 or 3 when ``data`` is a PNG or JPEG that both decoders turn into the same RGB pixels, else None.

    Conservative by design: anything unusual (a chunk or segment that Pillow's rules act on, a bit
    depth other than 8, a file that does not end where the format says) returns None, and the file
    goes through Pillow, which also names what is wrong with a damaged file.
    """
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 45 or data[12:16] != b"IHDR":
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        depth, colour, interlace = data[24], data[25], data[28]
        if depth != 8 or colour not in (0, 2) or interlace not in (0, 1) or _too_large(width, height):
            return None
        pos, n = 8, len(data)
        view = memoryview(data)
        while pos + 12 <= n:  # walk the chunks (a handful per file): the file must end in IEND
            kind = data[pos + 4:pos + 8]
            if kind in _PNG_SPECIAL:
                return None
            end = pos + 8 + int.from_bytes(data[pos:pos + 4], "big")
            # Every chunk's CRC must hold: damaged data goes to Pillow, which names the problem
            # (libpng would print its own error line first, and the two might not agree on pixels).
            if end + 4 > n or zlib.crc32(view[pos + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
                return None
            if kind == b"IEND":
                return 1 if colour == 0 else 3
            pos = end + 4
        return None  # truncated: Pillow says so
    if data.startswith(b"\xff\xd8\xff"):
        if not data[-64:].rstrip(b"\x00").endswith(b"\xff\xd9"):  # truncated: Pillow says so
            return None
        pos, n = 2, len(data)
        while pos + 4 <= n:
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            length = int.from_bytes(data[pos + 2:pos + 4], "big")
            segment = data[pos + 4:pos + 2 + length]
            if marker == 0xE1 and segment.startswith(b"Exif"):
                return None  # may carry an orientation: Pillow applies it
            if marker == 0xEE and segment.startswith(b"Adobe"):
                return None  # colour transform flags (CMYK, RGB-coded files)
            if marker == 0xE2 and segment.startswith(b"MPF\x00"):
                return None  # a multi-picture file (MPO): Pillow reports its frames
            if marker in _JPEG_SOF:
                if len(segment) < 6 or segment[0] != 8:
                    return None
                height, width, comps = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5]
                if comps not in (1, 3) or _too_large(width, height):
                    return None
                return comps
            if marker == 0xDA:  # start of scan before any frame header: not a JPEG we know
                return None
            pos += 2 + length
    return None


def _too_large(width: int, height: int) -> bool:
    limit = Image.MAX_IMAGE_PIXELS
    return width <= 0 or height <= 0 or (limit is not None and width * height > limit)


def _fast_decode(name: str) -> np.ndarray | None:
    """OpenCV's decode of a plain PNG/JPEG as RGB, or None to use Pillow (see :func:`load_image_array`)."""
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError:
        return None  # load_image names the reason
    return decode_plain(data)


def decode_plain(data: bytes, keep_grey: bool = False) -> np.ndarray | None:
    """Decode a file's bytes with OpenCV when it is a plain 8-bit RGB or grey PNG/JPEG, else None.

    "Plain" means no transparency, EXIF, animation or multi-picture data, Adobe colour transform or
    other bit depth: files for which OpenCV's pixels are Pillow's (and :func:`load_image`'s), checked
    on the shared data sets and in the tests. None means: use :func:`load_image` (which also names what is wrong
    with a damaged file).

    Returns:
        ``H x W x 3`` RGB ``uint8``, or ``H x W`` for a grey file when ``keep_grey``.
    """
    native = decode_plain_native(data)
    if native is None:
        return None
    import cv2

    pixels = native[1]
    if pixels.ndim == 2:
        return pixels if keep_grey else cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def decode_plain_native(data: bytes) -> tuple[str, np.ndarray] | None:
    """:func:`decode_plain` without the conversion to RGB: OpenCV's own layout, no extra copy.

    Returns:
        ``(format, pixels)``: ``format`` is ``"PNG"`` or ``"JPEG"``; ``pixels`` is ``H x W`` for a
        grey file and ``H x W x 3`` in OpenCV's **BGR** order otherwise (C-contiguous ``uint8``);
        None when the file is not plain (see :func:`decode_plain`) or OpenCV refuses it.
    """
    channels = _plain_channels(data)
    if channels is None:
        return None
    import cv2

    flags = (cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if decoded is None or decoded.ndim != (2 if channels == 1 else 3):
        return None
    return ("PNG" if data.startswith(_PNG_SIGNATURE) else "JPEG"), decoded


# Where a file's EXIF block (a TIFF structure) is found: JPEG's APP1 after "Exif\0\0"; PNG's eXIf chunk
# and WebP's EXIF chunk right after their type (WebP after a 4-byte length); a TIFF file is one itself.
_EXIF_SEARCH = 1 << 16  # a JPEG's APP1 segment comes first and is at most 64 KiB long


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1..8) of an image file in memory, or 0 when it has none.

    A byte search and a walk of the first IFD only, no image decoded: cheap enough for every file
    of a per-image pass. :func:`load_image` applies the rotation the tag asks for.
    """
    if data.startswith(b"\xff\xd8"):
        start = data.find(b"Exif\x00\x00", 2, _EXIF_SEARCH)
        start = start + 6 if start >= 0 else -1
    elif data.startswith(_PNG_SIGNATURE):
        start = data.find(b"eXIf", 8)
        start = start + 4 if start >= 0 else -1
    elif data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        start = data.find(b"EXIF", 12)
        start = start + 8 if start >= 0 else -1
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        start = 0
    else:
        return 0
    if start < 0:
        return 0
    return _tiff_orientation(data, start)


def _tiff_orientation(data: bytes, start: int) -> int:
    """Tag 0x0112 of the first IFD of the TIFF structure at ``start``; 0 when absent or malformed."""
    order = data[start:start + 2]
    if order not in (b"II", b"MM"):
        return 0
    endian: Literal["little", "big"] = "little" if order == b"II" else "big"
    if int.from_bytes(data[start + 2:start + 4], endian) != 42:
        return 0
    ifd = start + int.from_bytes(data[start + 4:start + 8], endian)
    entries = int.from_bytes(data[ifd:ifd + 2], endian)
    for k in range(min(entries, 512)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(data):
            return 0
        if int.from_bytes(data[entry:entry + 2], endian) == 0x0112:
            value = int.from_bytes(data[entry + 8:entry + 10], endian)
            return value if 1 <= value <= 8 else 0
    return 0


def read_image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Read format, mode, size and frame count without decoding any pixels.

    Much cheaper than :func:`load_image`, but a file with a valid header and corrupt
    pixel data passes.

    Args:
        path: Path to the image file.

    Returns:
        The header fields and the file size.

    Raises:
        ImageError: The file is missing, empty, not an image, has a corrupt header, or
            is larger than Pillow's decompression-bomb limit.
    """
    name = os.fsdecode(path)
    size_bytes = _check_file(name)
    with _open(name) as im:
        try:
            # n_frames walks the frame headers (GIF, TIFF) but decodes no pixels.
            n_frames = int(getattr(im, "n_frames", 1))
        except MemoryError:
            raise
        except Exception as e:
            raise ImageError(name, f"truncated or corrupt image data: {_describe(e)}") from e
        return ImageHeader(
            format=im.format or "",
            mode=im.mode,
            width=im.width,
            height=im.height,
            n_frames=n_frames,
            bytes=size_bytes,
        )


def scan_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    full_decode: bool = True,
) -> list[tuple[str, str]]:
    """Check every file and list the unreadable ones, without stopping at the first.

    Threads, not processes: Pillow releases the GIL while it decodes (and the OS while
    it reads), so threads run decodes in parallel without the cost of starting
    processes, pickling paths and results, or re-importing torch in each worker. With
    ``full_decode=False`` the work is header parsing, which is mostly I/O-bound, where
    threads are the right tool anyway. Measured on 2 cores, 240 noisy 1024x768 JPEGs:
    serial 2.1 s, 2 threads 1.1 s, 2 (already started) processes 1.0 s.

    Args:
        paths: Image files to check.
        workers: Number of threads; ``None`` means ``os.cpu_count()``, ``<= 1`` runs
            serially in the calling thread.
        full_decode: Decode all pixels with :func:`load_image` (finds truncated and
            corrupt data, what training would hit). False only reads headers with
            :func:`read_image_header` (fast; finds missing, empty and non-image files).

    Returns:
        ``(path, reason)`` for each unreadable file, in input order; empty if all are
        readable. ``reason`` is :attr:`ImageError.reason`.
    """
    names = [os.fsdecode(p) for p in paths]
    check = _check_decode if full_decode else _check_header
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers <= 1 or len(names) <= 1:
        reasons: Iterable[str | None] = map(check, names)
        return [(n, r) for n, r in zip(names, reasons, strict=True) if r is not None]
    with ThreadPoolExecutor(max_workers=min(n_workers, len(names)),
                            thread_name_prefix="scan_images") as pool:
        # Executor.map yields in input order whatever the completion order.
        reasons = list(pool.map(check, names))
    return [(n, r) for n, r in zip(names, reasons, strict=True) if r is not None]


# --------------------------------------------------------------------------- helpers


def _check_decode(name: str) -> str | None:
    try:
        load_image(name)
    except ImageError as e:
        return e.reason
    return None


def _check_header(name: str) -> str | None:
    try:
        read_image_header(name)
    except ImageError as e:
        return e.reason
    return None


def _check_file(name: str) -> int:
    """Fail early with a precise reason for files that are absent, empty or not files.

    Returns:
        The file size in bytes.
    """
    try:
        st = os.stat(name)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ImageError(name, "no such file") from e
    except PermissionError as e:
        raise ImageError(name, "permission denied") from e
    except OSError as e:
        raise ImageError(name, f"cannot access file: {e.strerror or e}") from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(name, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or stream forever inside Image.open.
        raise ImageError(name, "not a regular file")
    if st.st_size == 0:
        raise ImageError(name, "file is empty (0 bytes)")
    return st.st_size


@contextmanager
def _open(name: str) -> Iterator[ImageFile.ImageFile]:
    """``Image.open`` with every failure turned into an ImageError, file closed on exit."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice that Pillow only warns; make it an
            # error so a bomb is reported like any other unreadable file instead of
            # being decoded (and without leaving a stray warning on stderr).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(name)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(name, f"image too large (decompression-bomb limit): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(name, "not an image PIL can identify") from e
    except FileNotFoundError as e:  # removed between the stat and the open
        raise ImageError(name, "no such file") from e
    except PermissionError as e:
        raise ImageError(name, "permission denied") from e
    except MemoryError:
        raise
    except Exception as e:  # a recognised format whose header is damaged
        raise ImageError(name, f"truncated or corrupt image data: {_describe(e)}") from e
    with im:
        yield im


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to RGB by the rules in the module docstring."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im  # the JPEG fast path: nothing to do, nothing copied
    if mode in _WIDE_INT_MODES or mode == "F":
        return _wide_gray_to_rgb(im)
    if im.has_transparency_data:
        # convert("RGBA") applies every kind of transparency Pillow knows (alpha band,
        # palette alpha, tRNS index or colour key); then blend over the background.
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        # Pillow blends with round((fg*a + bg*(255-a)) / 255) per channel.
        out.paste(rgba, (0, 0), rgba)
        return out
    return im.convert("RGB")


def _wide_gray_to_rgb(im: Image.Image) -> Image.Image:
    a = np.asarray(im)
    transparent = None
    key = im.info.get("transparency")
    if isinstance(key, int) and not isinstance(key, bool):
        transparent = a == key  # tRNS grey key of a 16-bit PNG
    if im.mode == "F":
        a = np.nan_to_num(a.astype(np.float32, copy=False), nan=0.0)
        if a.size and float(a.max()) <= 1.0:
            a = a * 255.0
        gray = np.rint(np.clip(a, 0.0, 255.0)).astype(np.uint8)
    else:
        # Clip first for mode I (int32); a no-op for the unsigned 16-bit modes.
        wide = np.clip(a.astype(np.int64, copy=False), 0, 65535)
        # round(v / 257) in integers: floor((v + 128) / 257) is exact for integer v.
        gray = ((wide + 128) // 257).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if transparent is not None:
        rgb[transparent] = BACKGROUND
    return Image.fromarray(rgb)
