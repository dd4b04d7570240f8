"""Duplicate images: exact copies, pixel-equal re-encodings, and perceptual near-duplicates.

Four kinds of match, strongest first (a pair is reported under the strongest kind only):

* ``exact``: the files have the same bytes (same SHA-1).
* ``pixel``: different bytes, same decoded pixels (e.g. a PNG saved again with another
  compression level, or a PNG and a BMP of one image). Pixels are the ones
  :func:`toolkit.imaging.decode.load_image` gives, so every stage agrees on what an image is.
* ``near``: the 64-bit perceptual hashes differ in at most ``max_distance`` bits (resized,
  re-compressed, slightly cropped or retouched copies).
* ``near_flip``: one image's hash is within ``max_distance`` bits of the hash of the other
  image mirrored left-right (a horizontally flipped copy, a classic augmentation leak).

The pixel digest (:func:`pixel_digest`) is a SHA-1 of a tag, the image size and the pixel planes
(all red values row by row, then green, then blue). An image whose three channels are equal
everywhere (a grey-mode file, or an RGB file that only looks grey: sketches, scans, X-rays) is
hashed with another tag and its one plane only, a third of the work; the tag keeps the two
encodings apart, so equal digests still mean equal pixels.

The perceptual hash is a DCT hash: the image is box-filtered down (first so that its long side is
at most 256 px, the resolution ``clsctl eda`` computes everything else at, then to 32×32), turned
into grey (luma 0.299 R + 0.587 G + 0.114 B, in floating point) and transformed with an
orthonormal 2-D DCT-II. Of the 128 lowest-frequency AC
coefficients (ordered by ``u + v``, then ``v``; the DC term, i.e. overall brightness, is left out)
every second one is kept, and each is compared with the median of the 64: bit = coefficient >
median. Low frequencies describe the layout of an image and survive resizing and compression.
Spreading the 64 bits over twice the usual band (rather than the classic 8×8 corner) matters for
sparse images: on line drawings the 8×8 corner encodes little more than the silhouette, and
different sketches of similar poses collide (on PACS sketches, five times as many pairs within 8
bits), while the measured distances of re-encoded, resized and brightened copies stay the same.
The median threshold sets exactly 32 bits, so distances are always even. ``phash_flip`` is the
same hash of the 32×32 grey image mirrored left-right (computed from the same coefficients: a
left-right mirror flips the sign of every coefficient with an odd horizontal frequency). A
nearly uniform image (its 32×32 grey version has a standard deviation below one grey level) has no
layout to hash: its ``phash``/``phash_flip`` are missing and it only takes part in exact and pixel
matching (otherwise a black and a white image would be "near duplicates"). Files are hashed in
chunks: the per-image work is the decode (OpenCV for plain PNG/JPEG files, as the loader does), the
planes and the 32×32 box filter (Pillow's, or its exact numpy twin for images of at most 32 px),
and the DCTs of a whole chunk run as a few stacked numpy calls (each image's result is the same
whatever the chunk).

Pairs are a graph, not a full list of all pairs: within a cluster of identical files (or
identical pixels, or identical hashes) every member is paired with the cluster's first path
(sorted), and near matches are searched between those representatives only. The connected
components of the pairs are exactly the duplicate groups (:func:`duplicate_groups`), and a
cluster of 1,000 identical blank images gives 999 pairs, not half a million.

The near search never builds an n×n matrix: hashes are cut into ``max_distance + 1`` bands, and
by the pigeonhole principle two hashes within ``max_distance`` bits agree exactly on at least one
band, so only hashes that share a band value are compared (sort by band value, compare
neighbours at growing offsets). When that would compare more candidates than a brute-force
search (tiny inputs, very skewed hashes, large distances), a chunked XOR + popcount over the
whole set is used instead. Memory stays linear in the number of images plus the pairs found.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import stat
import struct
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from toolkit.errors import ImageError, UsageError
from toolkit.imaging.decode import (
    _to_rgb,  # the loader's own conversion rules, not a copy of them
    decode_plain_native,
    load_image,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_NEAR_DISTANCE",
    "HASH_COLUMNS",
    "PAIR_KINDS",
    "duplicate_groups",
    "duplicate_pairs",
    "hamming",
    "hash_image",
    "image_hashes",
    "layout",
    "perceptual_hash",
    "pixel_digest",
    "reduce_image",
]

#: Default largest Hamming distance (of 64 bits) for a near duplicate. Measured on samples of the
#: shared datasets, JPEG re-encoding (quality 75) moves a hash by at most 4 bits, a 60 % resize by
#: 6 bits in 99 % of images, a 20 % brightness change by at most 6; a 4 % border crop already moves
#: it by 6-14. Distinct look-alike images (sketches of one pose on white) start at 2 bits and
#: become common above 6, so 6 keeps most true copies while limiting chance matches.
DEFAULT_NEAR_DISTANCE = 6

#: Columns of :func:`image_hashes` (and of ``hashes.parquet`` written by ``clsctl eda``).
HASH_COLUMNS = ("path", "sha1", "pixel_hash", "phash", "phash_flip")

#: Values of the ``kind`` column of :func:`duplicate_pairs`, strongest first.
PAIR_KINDS = ("exact", "pixel", "near", "near_flip")

_HASH_SIDE = 32
_HASH_BITS = 64
# Below this standard deviation (grey levels, 0..255) a 32×32 image is treated as uniform.
_FLAT_STD = 1.0
# Brute force compares at most this many hashes at once (rows × columns of one XOR block).
_BLOCK_ELEMENTS = 1 << 21


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (so ``D @ x`` is the DCT of a column vector ``x``)."""
    k = np.arange(n)
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


def _low_frequencies(n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Row/column indices of every second of the ``2 * count`` lowest AC frequencies (no DC)."""
    cells = sorted(((u, v) for u in range(n) for v in range(n) if (u, v) != (0, 0)),
                   key=lambda uv: (uv[0] + uv[1], uv[1]))[:2 * count:2]
    return np.array([c[0] for c in cells]), np.array([c[1] for c in cells])


_DCT = _dct_matrix(_HASH_SIDE)
_LOW_ROWS, _LOW_COLS = _low_frequencies(_HASH_SIDE, _HASH_BITS)


#: Long side (pixels) images are box-reduced to before anything else is computed from them.
REDUCED_SIDE = 256
# A left-right mirror of the 32×32 image multiplies DCT coefficient (u, v) by (-1)**v.
_FLIP_SIGNS = np.where(_LOW_COLS % 2 == 1, -1.0, 1.0)


def reduce_image(image: Image.Image, max_side: int = REDUCED_SIDE) -> Image.Image:
    """Box-downscale so that the long side is at most ``max_side`` (aspect ratio kept).

    The new size is ``round(side * max_side / long_side)`` (at least 1) for each side; an image
    already small enough is returned unchanged.

    Args:
        image: Any PIL image.
        max_side: Largest allowed long side.

    Returns:
        The (possibly) downscaled image.
    """
    w, h = image.size
    long_side = max(w, h)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX)


def tiny_bytes(reduced: Image.Image) -> bytes:
    """The 32×32 box-filtered version of an RGB or L image, as raw bytes (3072 or 1024).

    An ``L`` image gives the same values as the RGB image with three copies of its plane
    (Pillow filters every channel alike), at a third of the cost.
    """
    return reduced.resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX).tobytes()


# ----- Pillow's BOX filter to 32×32 in numpy, for images no larger than that


@functools.lru_cache(maxsize=64)
def _box_enlarge_index(in_size: int) -> np.ndarray | None:
    """Which input sample each of the 32 outputs takes when Pillow's BOX filter enlarges an axis.

    Follows Pillow's coefficient set-up (a window around each output centre, box weights) for
    ``in_size <= 32``: every output then has exactly one input sample with weight one, so the
    filter only picks samples (its fixed-point arithmetic gives the sample back unchanged). None if
    a window held anything else (not met in practice; the caller then uses Pillow).
    """
    out = _HASH_SIDE
    if not 1 <= in_size <= out:
        return None
    scale = in_size / out
    index = []
    for xx in range(out):
        # Pillow's expressions as they are (support 0.5, scale factor 1), float rounding included.
        center = (xx + 0.5) * scale
        xmin = max(int(center - 0.5 + 0.5), 0)
        xmax = min(int(center + 0.5 + 0.5), in_size) - xmin
        hits = [xmin + x for x in range(xmax) if -0.5 < x + xmin - center + 0.5 <= 0.5]
        if len(hits) != 1:
            return None
        index.append(hits[0])
    return np.array(index, np.intp)


def _box32(pixels: np.ndarray) -> np.ndarray | None:
    """Pillow's ``resize((32, 32), BOX)`` of an ``H x W`` or ``H x W x C`` uint8 array with both sides
    at most 32, as two gathers (bit-identical; Pillow's per-call overhead is 10-20 µs, this 3-5 µs).
    None for larger images."""
    h, w = pixels.shape[:2]
    rows, cols = _box_enlarge_index(h), _box_enlarge_index(w)
    if rows is None or cols is None:
        return None
    return pixels.take(rows, axis=0).take(cols, axis=1)


@functools.lru_cache(maxsize=1)
def _box32_agrees() -> bool:
    """Whether :func:`_box32` gives this Pillow's values (checked once per process on random data).

    Guards against a Pillow release that filters differently: the numpy path is then not used.
    """
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(1, 1), (7, 31), (31, 7), (21, 25), (32, 17), (3, 32), (29, 29), (32, 32)]):
        x = rng.integers(0, 256, (h, w, 3) if k % 2 else (h, w), dtype=np.uint8)
        mode = "RGB" if k % 2 else "L"
        ref = Image.frombuffer(mode, (w, h), x.tobytes(), "raw", mode, 0, 1) \
            .resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX)
        got = _box32(x)
        if got is None or got.tobytes() != ref.tobytes():
            return False
    return True


_WORK = threading.local()


def workspace(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A reusable scratch array of ``shape`` (one per name and thread; contents undefined).

    Temporaries above glibc's mmap threshold (128 KiB) keep coming back as fresh mappings, and
    every 4 KiB page of one faults on first touch (measured at a few µs each on a small VM: more
    than the arithmetic on it). Chunk-sized temporaries are therefore allocated once per worker
    thread and reused.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    buf = getattr(_WORK, name, None)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(size, dtype)
        setattr(_WORK, name, buf)
    return buf[:size].reshape(shape)


def stack_tiny(tinies: Sequence[bytes]) -> np.ndarray:
    """``B x 3 x 32 x 32`` float64 planes (0..255) from :func:`tiny_bytes` outputs.

    Planar, so that every later per-image reduction runs over a contiguous last axis (numpy
    reduces an interleaved ``... x 3`` axis many times slower). An ``L`` tiny image fills all
    three planes. The result lives in a :func:`workspace`: valid until the next call.
    """
    side = _HASH_SIDE
    out = workspace("tiny", (len(tinies), 3, side, side), np.float64)
    grey = [k for k, t in enumerate(tinies) if len(t) == side * side]
    rgb = [k for k, t in enumerate(tinies) if len(t) != side * side]
    # One copy per kind for the whole stack (interleaved RGB -> planes, one plane -> three).
    if len(rgb) == len(tinies):
        out[:] = np.frombuffer(b"".join(tinies), np.uint8).reshape(-1, side, side, 3).transpose(0, 3, 1, 2)
    elif rgb:
        out[rgb] = np.frombuffer(b"".join(tinies[k] for k in rgb), np.uint8).reshape(-1, side, side, 3) \
            .transpose(0, 3, 1, 2)
    if len(grey) == len(tinies):
        out[:] = np.frombuffer(b"".join(tinies), np.uint8).reshape(-1, 1, side, side)
    elif grey:
        out[grey] = np.frombuffer(b"".join(tinies[k] for k in grey), np.uint8).reshape(-1, 1, side, side)
    return out


def layout_batch(tiny: np.ndarray) -> tuple[np.ndarray, list[int | None], list[int | None]]:
    """Perceptual hashes of a stack of 32×32 images, in a few whole-stack numpy calls.

    Per-image calls of a dozen small numpy functions cost more than the arithmetic; stacking
    amortises them, and the stack-sized temporaries live in :func:`workspace` arrays. Every
    step is elementwise or a per-image matrix product, so an image's hash does not depend on
    what else is in the stack.

    Args:
        tiny: ``B x 3 x 32 x 32`` float planes (0..255), as :func:`stack_tiny` makes them.

    Returns:
        ``(grey, phash, phash_flip)``: the ``B x 32 x 32`` luma images (0..255, a workspace
        array valid until the next call) and one hash (or None for a nearly uniform image) per
        image.
    """
    b = tiny.shape[0]
    grey = workspace("grey", (b, _HASH_SIDE, _HASH_SIDE), np.float64)
    tmp = workspace("grey_tmp", (b, _HASH_SIDE, _HASH_SIDE), np.float64)
    if b == 0:
        return grey, [], []
    # grey = R * 0.299 + G * 0.587 + B * 0.114, in that order, without temporaries.
    np.multiply(tiny[:, 0], 0.299, out=grey)
    np.add(grey, np.multiply(tiny[:, 1], 0.587, out=tmp), out=grey)
    np.add(grey, np.multiply(tiny[:, 2], 0.114, out=tmp), out=grey)
    # The standard deviation as np.std computes it, in the workspace.
    n = _HASH_SIDE * _HASH_SIDE
    np.subtract(grey, grey.sum(axis=(1, 2), keepdims=True) / n, out=tmp)
    flat = (np.sqrt(np.multiply(tmp, tmp, out=tmp).sum(axis=(1, 2)) / n) < _FLAT_STD).tolist()
    dct = workspace("dct", (b, _HASH_SIDE, _HASH_SIDE), np.float64)
    coeffs = np.matmul(np.matmul(_DCT, grey, out=tmp), _DCT.T, out=dct)[:, _LOW_ROWS, _LOW_COLS]
    # Round away float noise so a flat region gives exact zeros, not random bits.
    both = np.round(np.stack([coeffs, coeffs * _FLIP_SIGNS]), 6)
    ordered = np.sort(both, axis=-1)  # median of 64 values; np.median costs far more per call
    median = (ordered[..., 31] + ordered[..., 32]) / 2
    # Bit k of the 64-bit hash is coefficient k, the first coefficient the most significant.
    words = np.packbits(both > median[..., None], axis=-1).view(">u8")[..., 0].tolist()
    phash = [None if f else int(h) for f, h in zip(flat, words[0], strict=True)]
    flip = [None if f else int(h) for f, h in zip(flat, words[1], strict=True)]
    return grey, phash, flip


def layout(reduced: Image.Image) -> tuple[np.ndarray, int | None, int | None]:
    """The 32×32 RGB version of an image and its perceptual hashes.

    Args:
        reduced: An RGB image, already passed through :func:`reduce_image`.

    Returns:
        ``(tiny, phash, phash_flip)``: ``tiny`` is the ``32 x 32 x 3`` float64 box-filtered image
        (0..255); the hashes are None for a nearly uniform image.
    """
    t = stack_tiny([tiny_bytes(reduced)])
    tiny = t[0].transpose(1, 2, 0).copy()  # out of the workspace before it is reused
    _, phash, flip = layout_batch(t)
    return tiny, phash[0], flip[0]


def perceptual_hash(image: Image.Image) -> tuple[int | None, int | None]:
    """The 64-bit DCT hash of an image and of its left-right mirror image.

    Args:
        image: Any PIL image (it is converted to RGB if needed).

    Returns:
        ``(phash, phash_flip)`` as unsigned 64-bit integers, or ``(None, None)`` for a nearly
        uniform image (see the module docstring).
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    _, phash, flip = layout(reduce_image(rgb))
    return phash, flip


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
        if max(self.width, self.height) <= _HASH_SIDE and _box32_agrees():
            src = self.planes[0] if self.grey else self._pixels
            tiny = _box32(src)
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


def hamming(a: Any, b: Any) -> Any:
    """Number of differing bits between 64-bit hashes (scalars or numpy arrays).

    Args:
        a: Hash or array of hashes.
        b: Hash or array of hashes (broadcast against ``a``).

    Returns:
        An int for two scalars, else an integer array.
    """
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    out = _popcount(x)
    return int(out) if np.ndim(out) == 0 else out


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: one native instruction per element
        return np.bitwise_count(x)
    as_bytes = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(*np.shape(x), 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


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


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def chunk_size(n_items: int, workers: int) -> int:
    """Items per task for a pool: about eight tasks per worker, at most 64 items each.

    Enough tasks that the workers finish together and progress stays smooth; enough items per
    task that stacked numpy calls and inter-process messages are amortised.
    """
    return max(1, min(64, n_items // (max(1, workers) * 8)))


def imap_ordered(func: Callable[[Any], Any], items: Sequence[Any], workers: int | None = None,
                 chunksize: int | None = None) -> Iterator[Any]:
    """``map(func, items)`` on a process pool, yielding results in input order as they come.

    Args:
        func: A picklable (module-level) function.
        items: Its arguments.
        workers: Processes; ``None`` = all cores; ``<= 1`` (or a single item) runs in this process.
        chunksize: Items sent to a worker at once; default :func:`chunk_size`.

    Yields:
        ``func(item)`` for each item, in order.
    """
    n_workers = default_workers() if workers is None else int(workers)
    n_workers = min(n_workers, len(items))
    if n_workers <= 1:
        yield from map(func, items)
        return
    import multiprocessing

    if chunksize is None:
        chunksize = chunk_size(len(items), n_workers)
    with multiprocessing.get_context().Pool(n_workers) as pool:
        yield from pool.imap(func, items, chunksize=chunksize)


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
        ``phash`` and ``phash_flip`` (nullable ``UInt64``; see the module docstring).
    """

    names = [os.fspath(p) for p in paths]
    base = os.fspath(root) if root is not None else None
    full = [os.path.join(base, n) if base is not None else n for n in names]
    n_workers = default_workers() if workers is None else max(1, int(workers))
    size = chunk_size(len(full), n_workers)
    chunks = [full[i:i + size] for i in range(0, len(full), size)]
    # The common format plugins and OpenCV (the plain-file decoder), loaded once here rather than
    # in every worker.
    Image.preinit()
    _cv2()
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


# --------------------------------------------------------------------------- pair search


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of ``max_distance + 1`` bands that together cover the 64 bits."""
    m = max_distance + 1
    widths = [_HASH_BITS // m + (1 if i < _HASH_BITS % m else 0) for i in range(m)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _band_keys(h: np.ndarray, shift: int, width: int) -> np.ndarray:
    mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    return (h >> np.uint64(shift)) & mask


def _band_cost(values: np.ndarray, bands: list[tuple[int, int]]) -> float:
    """Candidate comparisons the band search would make (pairs sharing a band value)."""
    total = 0.0
    for shift, width in bands:
        _, counts = np.unique(_band_keys(values, shift, width), return_counts=True)
        total += float((counts.astype(np.float64) * (counts - 1)).sum() / 2)
    return total


def _near_indices(h: np.ndarray, g: np.ndarray | None, max_distance: int) -> tuple[np.ndarray, ...]:
    """Index pairs ``(i, j)`` with ``popcount(h[i] ^ x[j]) <= max_distance``.

    Self mode (``g`` None): ``x = h`` and ``i < j``. Cross mode: ``x = g`` and ``i != j``.

    Returns:
        ``(i, j, distance)`` arrays, each pair once.
    """
    n = len(h)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    if n < 2:
        return empty
    values = h if g is None else np.concatenate([h, g])
    bands = _bands(max_distance)
    n_pairs = n * (n - 1) / 2 if g is None else float(n) * n
    if n <= 2048 or _band_cost(values, bands) > 0.25 * n_pairs:
        i, j, d = _brute_force(h, g, max_distance)
    else:
        i, j, d = _band_search(h, g, values, bands, max_distance)
    if i.size == 0:
        return empty
    # A pair found in several bands appears several times: keep it once.
    key = i.astype(np.int64) * n + j.astype(np.int64)
    _, first = np.unique(key, return_index=True)
    return i[first], j[first], d[first]


def _brute_force(h: np.ndarray, g: np.ndarray | None, max_distance: int) -> tuple[np.ndarray, ...]:
    n = len(h)
    other = h if g is None else g
    rows = max(1, _BLOCK_ELEMENTS // n)
    found_i, found_j, found_d = [], [], []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        dist = _popcount(h[start:stop, None] ^ other[None, :])
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = ii < jj if g is None else ii != jj
        ii, jj = ii[keep], jj[keep]
        found_i.append(ii)
        found_j.append(jj)
        found_d.append(dist[ii - start, jj].astype(np.int64))
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def _band_search(h: np.ndarray, g: np.ndarray | None, values: np.ndarray,
                 bands: list[tuple[int, int]], max_distance: int) -> tuple[np.ndarray, ...]:
    n = len(h)
    total = len(values)
    found_i, found_j, found_d = [], [], []
    for shift, width in bands:
        keys = _band_keys(values, shift, width)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        # Equal keys are contiguous after sorting. Compare each position with the one `offset`
        # further on; a position whose neighbour at `offset` has another key can have no equal
        # key further on, so it drops out. Work is linear in the candidates, memory in n.
        active = np.arange(total - 1)
        offset = 1
        while active.size:
            active = active[active + offset < total]
            active = active[sorted_keys[active] == sorted_keys[active + offset]]
            if not active.size:
                break
            x, y = order[active], order[active + offset]
            if g is None:
                i, j = np.minimum(x, y), np.maximum(x, y)
                d = _popcount(h[i] ^ h[j])
            else:
                # Keep pairs of one original hash (index < n) and one mirrored hash (>= n).
                mixed = (x < n) != (y < n)
                x, y = x[mixed], y[mixed]
                i, j = np.where(x < n, x, y), np.where(x < n, y, x) - n
                d = _popcount(h[i] ^ g[j])
                keep = i != j
                i, j, d = i[keep], j[keep], d[keep]
            hit = d <= max_distance
            found_i.append(i[hit])
            found_j.append(j[hit])
            found_d.append(d[hit].astype(np.int64))
            offset += 1
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def _star_pairs(paths: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair every member of a cluster of equal keys with the cluster's first (sorted) path.

    ``paths`` must be sorted. Returns ``(first, other, is_representative)`` where the mask marks
    the first path of every cluster (and every path without a cluster).
    """
    import pandas as pd

    first = pd.Series(paths).groupby(pd.Series(keys), sort=False).transform("first").to_numpy(object)
    rep = first == paths
    return first[~rep], paths[~rep], rep


def duplicate_pairs(hashes_df: pd.DataFrame, max_distance: int = DEFAULT_NEAR_DISTANCE) -> pd.DataFrame:
    """Find exact, pixel-equal, near and mirrored near duplicates among hashed images.

    Args:
        hashes_df: A table with the columns of :func:`image_hashes` (missing values allowed:
            rows without ``sha1`` / ``pixel_hash`` / ``phash`` skip that kind of match).
        max_distance: Largest Hamming distance (0..32 bits of 64) for ``near``/``near_flip``.

    Returns:
        Columns ``a`` and ``b`` (paths, ``a < b``), ``kind`` (``exact``, ``pixel``, ``near``,
        ``near_flip``) and ``distance`` (differing hash bits; 0 for exact and pixel), sorted by
        kind then paths. See the module docstring for which pairs are listed: their connected
        components are the duplicate groups.

    Raises:
        UsageError: ``max_distance`` outside 0..32.
        DataError: A required column is missing or paths repeat.
    """
    import pandas as pd

    from toolkit.errors import DataError

    if not 0 <= int(max_distance) <= 32:
        raise UsageError(f"near-duplicate distance {max_distance} is outside 0..32 bits",
                         "use a small distance such as the default "
                         f"{DEFAULT_NEAR_DISTANCE}; above 32 of 64 bits unrelated images match")
    max_distance = int(max_distance)
    missing = [c for c in HASH_COLUMNS if c not in hashes_df.columns]
    if missing:
        raise DataError(f"hash table lacks column(s) {', '.join(missing)}",
                        "build it with toolkit.imaging.duplicates.image_hashes or read eda's hashes.parquet")
    df = hashes_df.loc[:, list(HASH_COLUMNS)].copy()
    df["path"] = df["path"].astype(str)
    if df["path"].duplicated().any():
        dup = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise DataError(f"hash table lists {dup!r} more than once", "hash each image once")
    df = df.sort_values("path", kind="stable").reset_index(drop=True)

    parts: list[pd.DataFrame] = []

    def add(a: np.ndarray, b: np.ndarray, kind: str, dist: np.ndarray | int) -> None:
        if len(a):
            lo = np.where(a < b, a, b)
            hi = np.where(a < b, b, a)
            parts.append(pd.DataFrame({"a": lo.astype(object), "b": hi.astype(object), "kind": kind,
                                       "distance": np.broadcast_to(np.asarray(dist, np.int64), len(a))}))

    # Exact: same bytes.
    cur = df[df["sha1"].notna()]
    a, b, rep = _star_pairs(cur["path"].to_numpy(object), cur["sha1"].to_numpy(object))
    add(a, b, "exact", 0)
    # Pixel: among one file per byte-cluster (plus files without sha1), same decoded pixels.
    keep = df["sha1"].isna().to_numpy().copy()
    keep[np.flatnonzero(df["sha1"].notna().to_numpy())[rep]] = True
    cur = df[keep & df["pixel_hash"].notna().to_numpy()]
    a, b, rep = _star_pairs(cur["path"].to_numpy(object), cur["pixel_hash"].to_numpy(object))
    add(a, b, "pixel", 0)
    # Near: among one image per pixel-cluster, identical hashes first, then the band search.
    cur = cur[rep]
    cur = cur[cur["phash"].notna().to_numpy()]
    if len(cur):
        phash = cur["phash"].to_numpy(np.uint64)
        a, b, rep = _star_pairs(cur["path"].to_numpy(object), phash)
        add(a, b, "near", 0)
        cur = cur[rep]
        paths = cur["path"].to_numpy(object)
        h = cur["phash"].to_numpy(np.uint64)
        g = cur["phash_flip"].to_numpy(np.uint64)
        i, j, d = _near_indices(h, None, max_distance)
        add(paths[i], paths[j], "near", d)
        fi, fj, fd = _near_indices(h, g, max_distance)
        if fi.size:
            # A mirrored pair is found from both sides (h_i~g_j and h_j~g_i): keep the closer one,
            # and drop pairs that already match unmirrored. Pairs are compared as i * n + j keys.
            n = len(h)
            key = np.minimum(fi, fj) * n + np.maximum(fi, fj)
            order = np.lexsort((fd, key))
            key, fd = key[order], fd[order]
            first = np.ones(key.size, bool)
            first[1:] = key[1:] != key[:-1]
            key, fd = key[first], fd[first]
            fresh = ~np.isin(key, i.astype(np.int64) * n + j)
            key, fd = key[fresh], fd[fresh]
            add(paths[key // n], paths[key % n], "near_flip", fd)

    if not parts:
        return pd.DataFrame({"a": pd.Series(dtype=object), "b": pd.Series(dtype=object),
                             "kind": pd.Series(dtype=object), "distance": pd.Series(dtype=np.int64)})
    out = pd.concat(parts, ignore_index=True)
    rank = out["kind"].map({k: n for n, k in enumerate(PAIR_KINDS)})
    out = out.assign(_rank=rank).sort_values(["_rank", "a", "b"], kind="stable").drop(columns="_rank")
    return out.reset_index(drop=True)


def duplicate_groups(pairs: pd.DataFrame) -> dict[str, int]:
    """Connected components of a pair table: which duplicate group each paired path is in.

    Args:
        pairs: Output of :func:`duplicate_pairs` (columns ``a`` and ``b``).

    Returns:
        ``{path: group number}`` for every path that occurs in a pair; groups are numbered
        0, 1, ... in order of their first (sorted) path. Unpaired images are not listed.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression keeps later finds short
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(pairs["a"].astype(str), pairs["b"].astype(str), strict=True):
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:
            # The smaller path becomes the root, so numbering does not depend on pair order.
            parent[max(ra, rb)] = min(ra, rb)
    roots = sorted({find(p) for p in parent})
    number = {r: k for k, r in enumerate(roots)}
    return {p: number[find(p)] for p in sorted(parent)}
