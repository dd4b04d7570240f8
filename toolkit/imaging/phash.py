"""The 32×32 layout of an image and its perceptual hash.

Everything a per-image pass computes at low resolution starts here: an image is box-filtered
down so that its long side is at most :data:`REDUCED_SIDE` (256 px, the resolution ``clsctl eda``
computes its statistics at), then to 32×32 (:func:`tiny_bytes`; for images of at most 32 px the
exact numpy twin of Pillow's filter, :func:`box32`).

The perceptual hash is a DCT hash of that 32×32 image turned into grey (luma 0.299 R + 0.587 G +
0.114 B, in floating point) and transformed with an orthonormal 2-D DCT-II. Of the 128
lowest-frequency AC coefficients (ordered by ``u + v``, then ``v``; the DC term, i.e. overall
brightness, is left out) every second one is kept, and each is compared with the median of the
64: bit = coefficient > median. Low frequencies describe the layout of an image and survive
resizing and compression. Spreading the 64 bits over twice the usual band (rather than the classic
8×8 corner) matters for sparse images: on line drawings the 8×8 corner encodes little more than
the silhouette, and different sketches of similar poses collide (on PACS sketches, five times as
many pairs within 8 bits), while the measured distances of re-encoded, resized and brightened
copies stay the same. The median threshold sets exactly 32 bits, so distances are always even.
``phash_flip`` is the same hash of the 32×32 grey image mirrored left-right (computed from the same
coefficients: a left-right mirror flips the sign of every coefficient with an odd horizontal
frequency). A nearly uniform image (its 32×32 grey version has a standard deviation below one grey
level) has no layout to hash: its ``phash``/``phash_flip`` are None (otherwise a black and a white
image would be "near duplicates").

The DCTs of a whole chunk of images run as a few stacked numpy calls (:func:`layout_batch`); each
image's result is the same whatever the chunk.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "HASH_BITS",
    "REDUCED_SIDE",
    "box32",
    "layout",
    "layout_batch",
    "perceptual_hash",
    "reduce_image",
    "stack_tiny",
    "tiny_bytes",
    "workspace",
]

#: Bits of a perceptual hash.
HASH_BITS = 64
#: Long side (pixels) images are box-reduced to before anything else is computed from them.
REDUCED_SIDE = 256

_HASH_SIDE = 32
# Below this standard deviation (grey levels, 0..255) a 32×32 image is treated as uniform.
_FLAT_STD = 1.0


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
_LOW_ROWS, _LOW_COLS = _low_frequencies(_HASH_SIDE, HASH_BITS)
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



def box32(pixels: np.ndarray) -> np.ndarray | None:
    """Pillow's ``resize((32, 32), BOX)`` of a small ``H x W`` or ``H x W x C`` ``uint8`` array, in numpy.

    Bit-identical to Pillow and several times cheaper for one small image.

    Returns:
        The ``32 x 32 (x C)`` array, or None when a side exceeds 32 px or this Pillow filters
        differently (checked once per process): the caller then asks Pillow.
    """
    if max(pixels.shape[:2]) > _HASH_SIDE or not _box32_agrees():
        return None
    return _box32(pixels)


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
