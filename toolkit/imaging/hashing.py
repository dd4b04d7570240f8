"""Per-image hashes: the file bytes, the decoded pixels and the perceptual layout, from one read.

:func:`image_hashes` gives one row per file (:data:`HASH_COLUMNS`): ``sha1`` of the bytes,
``pixel_hash`` of the decoded pixels and the perceptual hashes of :mod:`toolkit.imaging.phash`.
It is the table ``clsctl eda`` writes as ``hashes.parquet`` and what
:func:`toolkit.imaging.duplicates.duplicate_pairs` searches.

Pixels are the ones :func:`toolkit.imaging.decode.load_image` gives, so every stage agrees on what
an image is; a file is read once and decoded from memory (:func:`decode_data`: OpenCV for plain
PNG/JPEG files, as the loader does, Pillow for the rest), and anything unusual goes through
``load_image`` itself. The decoded image is kept as a :class:`Decoded`: its planes serve the digest,
the grayscale test and channel statistics alike.

The pixel digest (:func:`pixel_digest`) is a SHA-1 of a tag, the image size and the pixel planes
(all red values row by row, then green, then blue). An image whose three channels are equal
everywhere (a grey-mode file, or an RGB file that only looks grey: sketches, scans, X-rays) is
hashed with another tag and its one plane only, a third of the work; the tag keeps the two
encodings apart, so equal digests still mean equal pixels.

Files are hashed in chunks: the per-image work is the decode, the planes and the 32×32 box filter,
and the DCTs of a whole chunk run as a few stacked numpy calls.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from toolkit.errors import ImageError
from toolkit.imaging.decode import (
    _to_rgb,  # the loader's own conversion rules, not a copy of them
    decode_plain_native,
    load_image,
)
from toolkit.imaging.phash import box32, layout, layout_batch, reduce_image, stack_tiny, tiny_bytes
from toolkit.imaging.pool import chunk_size, default_workers, imap_ordered

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "HASH_COLUMNS",
    "Decoded",
    "decode_bytes",
    "decode_data",
    "hash_image",
    "hashes_frame",
    "image_hashes",
    "pixel_digest",
    "plane_sums",
    "preload_decoders",
    "read_file",
]

#: Columns of :func:`image_hashes` (and of ``hashes.parquet`` written by ``clsctl eda``).
HASH_COLUMNS = ("path", "sha1", "pixel_hash", "phash", "phash_flip")

_GREY_TAG = b"grey"
_RGB_TAG = b"rgb\0"


def _cv2() -> Any:
    import cv2

    return cv2


def _digest(width: int, height: int, bands: Sequence[Any], grey: bool) -> str:
    # The size goes in too: a 2×8 and a 4×4 image with the same bytes are different images.
    h = hashlib.sha1((_GREY_TAG if grey else _RGB_TAG) + struct.pack("<qq", height, width), usedforsecurity=False)
    for band in bands[:1] if grey else bands:
        h.update(band)
    return h.hexdigest()


def pixel_digest(array: np.ndarray) -> str:
    """A digest of decoded pixels (and their shape), equal exactly when the pixels are equal.

    Args:
        array: ``H x W x 3`` ``uint8`` pixels.

    Returns:
        40 hex characters: SHA-1 (the fastest digest hashlib offers on common CPUs; this is a
        fingerprint, not a security measure) of a tag, the size and the pixel planes, one plane
        when all three are equal (see the module docstring).

    Raises:
        ValueError: ``array`` is not ``H x W x 3``.
    """
    a = np.asarray(array, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 pixels, got shape {a.shape}")
    bands = [np.ascontiguousarray(a[..., c]).tobytes() for c in range(3)]
    return _digest(a.shape[1], a.shape[0], bands, bands[0] == bands[1] == bands[2])


class Decoded:
    """A decoded image as the per-image passes use it: size, pixel digest, grayscale flag, planes.

    Built once per file (:func:`decode_data`, :meth:`from_image`): the planes serve the digest,
    the grayscale test and the channel statistics, and an image whose three channels are equal
    continues as its one plane (a third of the work; Pillow filters an ``L`` plane exactly as each
    channel of the RGB image, so the 32×32 layout and the hashes are unchanged).

    Attributes:
        width, height: Size in pixels (as displayed: EXIF rotation applied).
        grey: True when red, green and blue are equal everywhere.
        digest: :func:`pixel_digest` of the RGB pixels.
        planes: ``H x W`` C-contiguous ``uint8`` arrays: R, G, B, or the one plane when ``grey``.
    """

    __slots__ = ("width", "height", "grey", "digest", "planes", "_pixels", "_order", "_image")

    def __init__(self, pixels: np.ndarray, order: str = "RGB", image: Image.Image | None = None) -> None:
        """Args:
            pixels: ``H x W`` (a grey image) or ``H x W x 3`` C-contiguous ``uint8``.
            order: Channel order of a 3-channel ``pixels``: ``"RGB"`` or ``"BGR"`` (OpenCV's).
            image: The same pixels as a Pillow image, when the caller has one (saves a copy).
        """
        self.height, self.width = pixels.shape[:2]
        self._pixels, self._order, self._image = pixels, order, image
        if pixels.ndim == 2:
            self.grey, self.planes = True, [pixels]
        else:
            cv2 = _cv2()
            first, g, last = cv2.split(pixels)
            r, b = (first, last) if order == "RGB" else (last, first)
            self.grey = cv2.norm(r, g, cv2.NORM_INF) == 0 and cv2.norm(r, b, cv2.NORM_INF) == 0
            self.planes = [r] if self.grey else [r, g, b]
        self.digest = _digest(self.width, self.height, self.planes, self.grey)

    @classmethod
    def from_image(cls, image: Image.Image) -> Decoded:
        """From an ``RGB`` image, or an ``L`` image standing for three equal channels (what
        :func:`toolkit.imaging.decode.load_image` makes of an opaque grey file)."""
        if image.mode not in ("RGB", "L"):
            raise ValueError(f"expected an RGB or L image, got mode {image.mode}")
        return cls(np.asarray(image, dtype=np.uint8), "RGB", image)

    def tiny_bytes(self) -> bytes:
        """:func:`tiny_bytes` of :func:`reduce_image` of this image (the 32×32 layout), computed the
        cheapest exact way: in numpy for a small image, else by Pillow."""
        tiny = box32(self.planes[0] if self.grey else self._pixels)
        if tiny is not None:
            if not self.grey and self._order == "BGR":
                tiny = tiny[..., ::-1]
            return tiny.tobytes()
        return tiny_bytes(reduce_image(self.working()))

    def working(self) -> Image.Image:
        """The image to filter: an ``L`` image of the one plane when grey, else the RGB image."""
        if self.grey:
            plane = self.planes[0]
            if self._image is not None and self._image.mode == "L":
                return self._image
            return Image.frombuffer("L", (self.width, self.height), plane, "raw", "L", 0, 1)
        if self._image is not None:
            return self._image
        return Image.frombuffer("RGB", (self.width, self.height), self._pixels, "raw", self._order, 0, 1)


def plane_sums(plane: Any) -> tuple[int, int]:
    """Exact sums of ``x`` and ``x²`` over an ``H x W`` ``uint8`` plane (array or Pillow ``L`` image).

    OpenCV returns both as float64, a few units in the last place off a whole number for the sum of
    squares (its ``NORM_L2SQR`` is not computed in integers): far below 0.5 at these magnitudes (a
    256×256 plane of 255s sums to 4,261,478,400 squared units, float64 resolves 2**-20 there), so
    rounding gives the exact integers (tested against numpy on extreme and random planes).
    """
    cv2 = _cv2()
    x = plane if isinstance(plane, np.ndarray) else np.asarray(plane, dtype=np.uint8)
    return round(cv2.sumElems(x)[0]), round(cv2.norm(x, cv2.NORM_L2SQR))


def decode_data(data: bytes) -> tuple[tuple[str | None, str, int] | None, Decoded | None]:
    """Header and :class:`Decoded` pixels of an image file already in memory, as the loader decodes them.

    Plain 8-bit RGB or grey PNG/JPEG files are decoded by OpenCV
    (:func:`toolkit.imaging.decode.decode_plain_native`: the loader's pixels, faster); everything else
    by Pillow (:func:`decode_bytes`). Run it as :func:`decode_bytes` says.

    Returns:
        ``(header, decoded)`` as :func:`decode_bytes` returns ``(header, image)``: ``decoded`` is
        None when the caller must fall back to :func:`toolkit.imaging.decode.load_image`.
    """
    try:
        native = decode_plain_native(data)
    except Exception:  # an OpenCV surprise: Pillow decides (and names any problem)
        native = None
    if native is not None:
        fmt, pixels = native
        return (fmt, "L" if pixels.ndim == 2 else "RGB", 1), Decoded(pixels, "BGR")
    header, image = decode_bytes(data)
    return header, (None if image is None else Decoded.from_image(image))


def hash_image(image: Image.Image, reduced: Image.Image | None = None) -> tuple[str, int | None, int | None]:
    """Pixel digest and perceptual hashes of a decoded RGB image.

    Args:
        image: An RGB image as :func:`toolkit.imaging.decode.load_image` returns it.
        reduced: ``reduce_image(image)`` when the caller has it already (saves a resize).

    Returns:
        ``(pixel_hash, phash, phash_flip)``.
    """
    decoded = Decoded.from_image(image)
    if reduced is None:
        reduced = reduce_image(decoded.working())
    _, phash, flip = layout(reduced)
    return decoded.digest, phash, flip



# --------------------------------------------------------------------------- reading files

# Formats whose header gives the frame count without seeking through the file, so the image
# opened for the header can be decoded as it is. Others (GIF, TIFF...) are opened a second time
# through load_image, as every multi-frame file is.
_FAST_FORMATS = frozenset({"PNG", "JPEG", "BMP", "WEBP"})
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)


def read_file(path: str) -> bytes | None:
    """All bytes of a regular file, or None when it cannot be read as one.

    ``O_NONBLOCK`` and the ``fstat`` check keep a FIFO or device from blocking the pass; the
    caller then asks :func:`toolkit.imaging.decode.load_image` for the precise reason.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        size = st.st_size
        data = os.read(fd, size + 1)
        if len(data) != size:  # a short read, or a file that changed since fstat: read to the end
            parts = [data]
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
            data = b"".join(parts)
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def decode_bytes(data: bytes) -> tuple[tuple[str | None, str, int] | None, Image.Image | None]:
    """Header and pixels of an image file already in memory, as :func:`load_image` decodes them.

    One ``Image.open`` serves both the header and the decode, and decoding from memory skips the
    many small reads Pillow makes from a file. Run it with
    ``warnings.simplefilter("error", Image.DecompressionBombWarning)`` in effect, as
    :func:`load_image` does, so an oversized image falls to the caller's ``load_image`` call.

    Returns:
        ``(header, image)``: ``header`` is ``(format, mode, frames)`` or None when the bytes are
        not an image Pillow can open; ``image`` is the decoded image (``RGB``, or ``L`` for an
        opaque grey image, which ``load_image`` would turn into three equal channels) or None
        when anything is unusual (corrupt data, several frames, a format outside the common
        ones): the caller then decodes the file with ``load_image``, which also names the reason
        of a failure.
    """
    try:
        im = Image.open(io.BytesIO(data))
        header = (im.format, im.mode, int(getattr(im, "n_frames", 1)))
    except Exception:  # not an image, a damaged header or too large: load_image says which
        return None, None
    if im.format not in _FAST_FORMATS or header[2] != 1:
        return header, None
    try:
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        if im.mode == "L" and "transparency" not in im.info:
            return header, im
        return header, _to_rgb(im)
    except Exception:  # truncated, corrupt EXIF, unsupported mode: load_image names the reason
        return header, None


# --------------------------------------------------------------------------- hashing files


def _hash_chunk(paths: Sequence[str]) -> list[tuple[str | None, str | None, int | None, int | None]]:
    rows: list[tuple[str | None, str | None, int | None, int | None]] = []
    tinies: list[bytes] = []
    hashed: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for path in paths:
            data = read_file(path)
            if data is None:
                rows.append((None, None, None, None))
                continue
            sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
            decoded = decode_data(data)[1] if data else None
            if decoded is None:
                try:
                    decoded = Decoded.from_image(load_image(path))
                except ImageError:
                    rows.append((sha1, None, None, None))
                    continue
            hashed.append(len(rows))
            rows.append((sha1, decoded.digest, None, None))
            tinies.append(decoded.tiny_bytes())
    _, phash, flip = layout_batch(stack_tiny(tinies))
    for k, i in enumerate(hashed):
        rows[i] = (rows[i][0], rows[i][1], phash[k], flip[k])
    return rows


def preload_decoders() -> None:
    """Load the common Pillow format plugins and OpenCV (the plain-file decoder) in this process.

    Called before a pool starts, so that forked workers find them loaded rather than each
    loading them again.
    """
    Image.preinit()
    _cv2()


def image_hashes(paths: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str] | None = None,
                 workers: int | None = None) -> pd.DataFrame:
    """Hash every image file: bytes, decoded pixels, perceptual hash and its mirrored twin.

    Unreadable files never stop it: a file that cannot be read has no hashes, one that can be
    read but not decoded has only ``sha1``.

    Args:
        paths: Image paths, relative to ``root`` (or absolute / relative to the working folder
            when ``root`` is None). They are returned as given.
        root: Folder the paths are relative to.
        workers: Processes; ``None`` = all cores, ``<= 1`` = this process only.

    Returns:
        One row per path, in input order, with columns ``path`` (str), ``sha1`` (hex SHA-1 of the
        file bytes), ``pixel_hash`` (hex digest of the decoded RGB pixels and their shape),
        ``phash`` and ``phash_flip`` (nullable ``UInt64``; see :mod:`toolkit.imaging.phash`).
    """
    names = [os.fspath(p) for p in paths]
    base = os.fspath(root) if root is not None else None
    full = [os.path.join(base, n) if base is not None else n for n in names]
    n_workers = default_workers() if workers is None else max(1, int(workers))
    size = chunk_size(len(full), n_workers)
    chunks = [full[i:i + size] for i in range(0, len(full), size)]
    preload_decoders()
    rows = [row for part in imap_ordered(_hash_chunk, chunks, n_workers, chunksize=1) for row in part]
    return hashes_frame(names, rows)


def hashes_frame(paths: Sequence[str], rows: Sequence[tuple[Any, Any, Any, Any]]) -> pd.DataFrame:
    """Build the :func:`image_hashes` table from ``(sha1, pixel_hash, phash, phash_flip)`` rows."""
    import pandas as pd

    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    return pd.DataFrame({
        "path": pd.Series([str(p) for p in paths], dtype=object),
        "sha1": pd.Series(cols[0], dtype=object),
        "pixel_hash": pd.Series(cols[1], dtype=object),
        "phash": pd.array(list(cols[2]), dtype="UInt64"),
        "phash_flip": pd.array(list(cols[3]), dtype="UInt64"),
    })
