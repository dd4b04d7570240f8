"""The one pass over the images that ``clsctl eda`` measures: each file read and decoded once, on all cores.

A worker process reads each file once, hashes its bytes, and decodes those bytes in memory with
the loader's own rules (:func:`toolkit.imaging.hashing.decode_data`: plain 8-bit RGB or grey
PNG/JPEG files by OpenCV, everything else by Pillow, the same pixels
:func:`toolkit.imaging.decode.load_image` gives, so EDA sees what training will see; an unusual
file, e.g. multi-frame or corrupt, goes through ``load_image`` itself, which also names the reason
of a failure). It returns a small record (numbers and hashes; pixels only for the few thumbnails).
Memory therefore grows with the number of images only by that record. Unreadable files are
recorded with their reason and never stop the pass.

Where the time goes: for the small images of typical competition sets the decode itself costs
well under a millisecond, so everything else is kept to a few calls per image. Each image is split
into planes once (digest, grayscale test and statistics share them; a grey-looking image continues
as one plane), its channel sums come from two OpenCV reductions per plane, and it is box-filtered
to 32×32 (by Pillow, or by two numpy gathers with Pillow's values for images of at most 32 px); a
worker handles a chunk of images at a time, and the perceptual hashes and outlier features are
computed for the whole chunk in a few stacked numpy calls, in reused buffers (fresh memory costs a
page fault per 4 KiB, more than the arithmetic on it). ``benchmarks/eda_bench.py`` measures the
pass against a bare decode of the same files.

Channel sums are taken on every readable image downscaled (box filter, aspect kept) so that its
long side is at most :data:`STATS_MAX_SIDE` = 256 pixels; smaller images are used as they are.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from toolkit.data.outliers import LAYOUT_FEATURES, layout_features
from toolkit.errors import ImageError
from toolkit.imaging.decode import exif_orientation, load_image
from toolkit.imaging.hashing import Decoded, decode_data, plane_sums, preload_decoders, read_file
from toolkit.imaging.phash import REDUCED_SIDE, layout_batch, reduce_image, stack_tiny, tiny_bytes
from toolkit.imaging.pool import chunk_size, imap_ordered

__all__ = ["ROW_KEYS", "STATS_MAX_SIDE", "THUMB_SIDE", "ImagePass", "analyze_chunk", "downscale_for_stats",
           "measure_images"]

#: Long side (pixels) images are box-downscaled to before dataset statistics are accumulated.
STATS_MAX_SIDE = REDUCED_SIDE  # 256, as the perceptual hash: one reduction serves both
#: Long side of a thumbnail in the grids.
THUMB_SIDE = 96
#: Per-image values of the pass, in the order :func:`analyze_chunk` returns them.
ROW_KEYS = ("ok", "reason", "bytes", "format", "mode", "frames", "width", "height", "grayscale",
            "sha1", "pixel_hash", "exif_orientation")


def downscale_for_stats(image: Image.Image, max_side: int = STATS_MAX_SIDE) -> Image.Image:
    """The image statistics are computed on: box-downscaled so the long side is <= ``max_side``.

    The new size is ``round(side * max_side / long_side)`` (at least 1) for each side; an image
    already small enough is returned unchanged. (The same reduction feeds the perceptual hash.)

    Args:
        image: An RGB image.
        max_side: Largest allowed long side.

    Returns:
        The (possibly) downscaled image.
    """
    return reduce_image(image, max_side)


def _header(data: bytes) -> tuple[str | None, str, int] | None:
    """Format, mode and frames of a file whose pixels may not decode (a truncated file has them)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.format, im.mode, int(getattr(im, "n_frames", 1))
    except Exception:  # not an image at all: load_image reports it
        return None


_Sums = tuple[int, list[int], list[int]]


def _measure(decoded: Decoded, want_thumb: bool) -> tuple[_Sums, bytes, tuple[Any, ...] | None]:
    """Channel sums at the stats resolution, the 32×32 layout bytes and the thumbnail of one image.

    Returns:
        ``((n, s, s2), tiny, thumb)``: ``n`` pixels at :data:`STATS_MAX_SIDE`, exact sums of ``x``
        and ``x²`` per channel (R, G, B), ``thumb`` ``(size, RGB bytes)`` or None unless wanted.
    """
    if max(decoded.width, decoded.height) <= STATS_MAX_SIDE:  # used as it is
        small = None
        stat_planes: list[Any] = decoded.planes
        n = decoded.width * decoded.height
        tiny = decoded.tiny_bytes()
    else:  # box-reduced once, for the statistics and the layout (both at 256 px)
        small = downscale_for_stats(decoded.working())
        stat_planes = [small] if decoded.grey else list(small.split())
        n = small.size[0] * small.size[1]
        tiny = tiny_bytes(small)
    sums = [plane_sums(p) for p in stat_planes]
    if len(sums) == 1:  # grey: one plane stands for three equal ones
        sums *= 3
    thumb = None
    if want_thumb:
        t = (small if small is not None else decoded.working()).convert("RGB")  # a copy: thumbnail() works in place
        t.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
        thumb = (t.size, t.tobytes())
    return (n, [v[0] for v in sums], [v[1] for v in sums]), tiny, thumb


def _analyze_file(path: str, want_thumb: bool) -> tuple[tuple[Any, ...], _Sums | None, bytes | None,
                                                         tuple[Any, ...] | None]:
    """Everything EDA needs from one file, from one read and (nearly always) one decode.

    Returns:
        ``(row, sums, tiny, thumb)``: ``row`` follows ``ROW_KEYS``; ``sums`` (``(n, s, s2)`` for
        the statistics), ``tiny`` (32×32 layout bytes) and ``thumb`` (``(size, RGB bytes)``) are
        None when not made (unreadable file, or no thumbnail wanted).
    """
    data = read_file(path)  # None: load_image below names the reason (missing, a folder, ...)
    n_bytes = sha1 = header = decoded = orientation = None
    if data:
        n_bytes = len(data)
        sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        orientation = exif_orientation(data)
        header, decoded = decode_data(data)
    if decoded is None:
        # The header from the bytes already in memory: a file whose header parses but whose
        # pixels don't (truncated) still has a format/mode.
        if data and header is None:
            header = _header(data)
        try:
            decoded = Decoded.from_image(load_image(path))
        except (ImageError, MemoryError) as e:
            reason = e.reason if isinstance(e, ImageError) else "out of memory while decoding"
            return (False, reason, n_bytes, *(header or (None, None, None)), None, None, None, sha1, None,
                    orientation), None, None, None
    try:
        sums, tiny, thumb = _measure(decoded, want_thumb)
    except Exception as e:  # an image that decodes but breaks a measurement must not stop the run
        return (False, f"analysis failed: {type(e).__name__}: {e}", n_bytes, *(header or (None, None, None)),
                None, None, None, sha1, None, orientation), None, None, None
    return (True, None, n_bytes, *(header or (None, None, None)), decoded.width, decoded.height, decoded.grey,
            sha1, decoded.digest, orientation), sums, tiny, thumb


def analyze_chunk(tasks: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """Analyse a chunk of files in one worker: per-file work, then whole-chunk numpy.

    Returns:
        Column lists for the chunk (``ROW_KEYS``, ``phash``, ``phash_flip``), ``n``/``s``/``s2``
        (int64 arrays, zeros for unreadable files) and the features (float arrays, NaN for
        unreadable files), plus ``thumbs`` (position in the chunk → ``(size, RGB bytes)``).
    """
    size = len(tasks)
    rows: list[tuple[Any, ...]] = []
    n = np.zeros(size, np.int64)
    s = np.zeros((size, 3), np.int64)
    s2 = np.zeros((size, 3), np.int64)
    tinies: list[bytes] = []
    done: list[int] = []
    thumbs: dict[int, tuple[Any, ...]] = {}
    with warnings.catch_warnings():
        # As load_image: an image over Pillow's pixel limit is an error, not a warning and a decode.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for k, (path, want_thumb) in enumerate(tasks):
            row, sums, tiny, thumb = _analyze_file(path, want_thumb)
            rows.append(row)
            if thumb is not None:
                thumbs[k] = thumb
            if sums is None:
                continue
            tinies.append(tiny)
            done.append(k)
            n[k], s[k], s2[k] = sums
    out: dict[str, Any] = {key: list(col) for key, col in zip(ROW_KEYS, zip(*rows, strict=True), strict=True)}
    phash: list[int | None] = [None] * size
    flip: list[int | None] = [None] * size
    feats = np.full((size, len(LAYOUT_FEATURES)), np.nan)
    tiny_stack = stack_tiny(tinies)
    grey, ph, fl = layout_batch(tiny_stack)
    for j, k in enumerate(done):
        phash[k], flip[k] = ph[j], fl[j]
    if done:
        feats[done] = layout_features(tiny_stack, grey)
    out.update(phash=phash, phash_flip=flip, n=n, s=s, s2=s2, thumbs=thumbs)
    for j, key in enumerate(LAYOUT_FEATURES):
        out[key] = feats[:, j]
    return out


@dataclass
class ImagePass:
    """What the pass measured, one entry per image in manifest order.

    Attributes:
        columns: :data:`ROW_KEYS`, ``phash``, ``phash_flip`` (lists) and the
            :data:`~toolkit.data.outliers.LAYOUT_FEATURES` (float arrays, NaN when unreadable).
        n: Pixels at the stats resolution (0 when unreadable).
        s: Exact per-channel (R, G, B) sums of the pixel values, ``N x 3``.
        s2: Exact per-channel sums of their squares, ``N x 3``.
        thumbnails: Row → thumbnail (long side :data:`THUMB_SIDE`) of the rows that asked for one.
    """

    columns: dict[str, Any]
    n: np.ndarray
    s: np.ndarray
    s2: np.ndarray
    thumbnails: dict[int, Image.Image]


def measure_images(paths: Sequence[str], root: Path, thumbnails: Collection[int], workers: int,
                   progress: Callable[[int], None] | None = None) -> ImagePass:
    """Read, decode and measure every image once, on ``workers`` processes.

    Args:
        paths: Image paths relative to ``root``.
        root: The image root.
        thumbnails: Rows whose thumbnail is wanted (workers send pixels only for those).
        workers: Processes; ``<= 1`` runs in this process.
        progress: Called with the number of images done after every chunk.

    Returns:
        The :class:`ImagePass`.
    """
    tasks = [(str(root / p), i in thumbnails) for i, p in enumerate(paths)]
    size = chunk_size(len(tasks), workers)
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    columns: dict[str, list[Any]] = {k: [] for k in (*ROW_KEYS, "phash", "phash_flip", "n", "s", "s2",
                                                      *LAYOUT_FEATURES)}
    thumbs: dict[int, Image.Image] = {}
    preload_decoders()
    offset = 0
    for part in imap_ordered(analyze_chunk, chunks, workers, chunksize=1):
        for k, col in columns.items():
            if isinstance(part[k], list):
                col.extend(part[k])
            else:  # a numpy array per chunk, concatenated below
                col.append(part[k])
        for k, (thumb_size, data) in part["thumbs"].items():
            thumbs[offset + k] = Image.frombytes("RGB", thumb_size, data)
        offset += len(part["ok"])
        if progress is not None:
            progress(len(part["ok"]))
    arrays = {k: np.concatenate(columns.pop(k)) for k in ("n", "s", "s2")}
    for k in LAYOUT_FEATURES:
        columns[k] = np.concatenate(columns[k])
    return ImagePass(columns=columns, thumbnails=thumbs, **arrays)
