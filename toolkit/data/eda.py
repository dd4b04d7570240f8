"""Exploratory data analysis: everything worth knowing about an image set before training on it.

:func:`run_eda` reads every image once, on all cores, and writes into one folder:

* ``eda.json``: every figure, machine-readable (keys below).
* ``eda.html``: a static page that opens from disk (no server, no network, no scripts); it shows
  the PNGs below by relative path.
* PNG plots (class counts, attributes, group sizes, image sizes, brightness, channel means,
  nearest-hash distances), thumbnail grids (``thumbs/``), outliers and duplicate examples.
* ``hashes.parquet``: per image ``path, sha1, pixel_hash, phash, phash_flip`` (see
  :mod:`toolkit.imaging.duplicates`), what ``clsctl split --hashes`` reads.
* ``duplicates.parquet``: the duplicate pairs (``a, b, kind, distance``) with both labels/groups.
* ``images.parquet``: the per-image table (size, format, mode, grayscale, channel means, the
  outlier features and score, unreadable reason).

One pass: a worker process reads each file once, hashes its bytes, and decodes those bytes in
memory with the loader's own rules (:func:`toolkit.imaging.duplicates.decode_data`: plain 8-bit RGB
or grey PNG/JPEG files by OpenCV, everything else by Pillow, the same pixels
:func:`toolkit.imaging.decode.load_image` gives, so EDA sees what training will see; an unusual file,
e.g. multi-frame or corrupt, goes through ``load_image`` itself, which also names the reason of a
failure). It returns a small record (numbers and hashes; pixels only for the few thumbnails).
Memory therefore grows with the number of images only by that record, and the duplicate search is
sub-quadratic (see :func:`toolkit.imaging.duplicates.duplicate_pairs`). Unreadable files are
recorded with their reason and never stop the run.

Where the time goes: for the small images of typical competition sets the decode itself costs
well under a millisecond, so everything else is kept to a few calls per image. Each image is split
into planes once (digest, grayscale test and statistics share them; a grey-looking image continues
as one plane), its channel sums come from two OpenCV reductions per plane, and it is box-filtered
to 32×32 (by Pillow, or by two numpy gathers with Pillow's values for images of at most 32 px); a
worker handles a chunk of images at a time, and the perceptual hashes and
outlier features are computed for the whole chunk in a few stacked numpy calls, in reused buffers
(fresh memory costs a page fault per 4 KiB, more than the arithmetic on it).
``benchmarks/eda_bench.py`` measures the pass against a bare decode of the same files.

Dataset statistics (``stats``) are computed on every readable image downscaled (box filter, aspect
kept) so that its long side is at most :data:`STATS_MAX_SIDE` = 256 pixels; smaller images are
used as they are. Every such pixel counts once, pooled over the whole set; sums of ``x`` and
``x²`` are accumulated as exact integers, so the result does not depend on the order or the number
of workers. Values are in 0..1 units (pixel / 255), the convention of torchvision/timm ``Normalize``;
a recipe uses them with ``[data] normalize = "dataset"`` and ``stats_file = "<out>/eda.json"``.

``eda.json`` keys:

* ``version`` (1), ``root``, ``source`` (how the manifest was made), ``created`` (UTC ISO time),
  ``settings`` (``stats_max_side``, ``near_dup_distance``, ``thumbs``, ``seed``, ``workers``).
* ``images``: ``total``, ``readable``, ``unreadable``.
* ``label_column``: the class column (``"label"``) or null when the data is unlabeled.
* ``targets``: per categorical column (the label first, then categorical attributes):
  ``counts`` (value → images), ``n_classes``, ``largest``, ``smallest``, ``imbalance_ratio``
  (largest / smallest count), ``plot``.
* ``attributes``: per other column: ``kind`` ``numeric`` (``summary``: count/min/p5/median/mean/
  p95/max, ``histogram``: ``edges``/``counts``, ``plot``) or ``identifier`` (``n_unique`` only).
* ``groups``: null, or ``column``, ``n_groups``, ``images_per_group`` (summary), ``largest``
  (``[group, images]``), ``mixed_label_groups`` (groups whose images carry several labels), ``plot``.
* ``sizes``: ``width``, ``height``, ``aspect_ratio`` (width/height) summaries, ``common``
  (``[width, height, images]``), ``plot``. Sizes are as displayed (EXIF rotation applied).
* ``file_formats``, ``image_modes``: counts of the stored format (``PNG``, ``JPEG``...) and mode
  (``RGB``, ``L``, ``P``...) of every file whose header can be read (a truncated file still
  counts), ``frames_gt1``: multi-frame files.
* ``grayscale``: ``count``, ``share``, ``per_class`` (``count``, ``share``): images whose decoded
  red, green and blue channels are equal everywhere (a grey-mode file, or an RGB file that only
  looks grey).
* ``stats``: ``mean``, ``std`` (per channel R, G, B, 0..1), ``pixels``, ``images``,
  ``max_side``, ``per_class`` (``mean``, ``std``).
* ``brightness``: per-image mean luma (0.299 R + 0.587 G + 0.114 B, 0..1): ``summary``,
  ``histogram``, ``per_class_median``, ``plot``; ``channel_plot``: per-image channel means.
* ``thumbnails``: class → PNG of the first (or, with a seed, a seeded sample of) ``thumbs`` images.
* ``unreadable``: ``[{path, reason}]``, every one.
* ``duplicates``: ``max_distance``, ``pairs`` (count per kind), ``groups`` (connected components),
  ``images_in_groups``, ``largest_groups``, ``label_conflicts`` and ``group_conflicts``
  (``count`` and up to 200 ``items``: pairs whose labels / groups differ), ``same_group_share``
  (share of near pairs within one group, when a group column exists), ``nearest_distance``
  (histogram of each sampled image's distance to its nearest other hash), ``plot``, ``examples``.
* ``outliers``: ``method``, ``features``, ``threshold``, ``count`` (images over the threshold),
  ``items`` (top 50: ``path``, ``label``, ``score``, ``reasons``), ``plot``.
* ``timing``: ``seconds``, ``pass_seconds``, ``images_per_second``.
* ``files``: every file this run wrote in the folder (a rerun removes the stale ones).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from toolkit.errors import DataError, ImageError, UsageError
from toolkit.imaging.decode import load_image
from toolkit.imaging.duplicates import (
    DEFAULT_NEAR_DISTANCE,
    REDUCED_SIDE,
    Decoded,
    _cv2,
    _popcount,
    chunk_size,
    decode_data,
    default_workers,
    duplicate_groups,
    duplicate_pairs,
    hashes_frame,
    imap_ordered,
    layout_batch,
    plane_sums,
    read_file,
    reduce_image,
    stack_tiny,
    tiny_bytes,
    workspace,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "OUTLIER_FEATURES",
    "STATS_MAX_SIDE",
    "THUMB_SIDE",
    "default_out_dir",
    "downscale_for_stats",
    "eda_manifest",
    "run_eda",
]

#: Long side (pixels) images are box-downscaled to before dataset statistics are accumulated.
STATS_MAX_SIDE = REDUCED_SIDE  # 256, as the perceptual hash: one reduction serves both
#: Long side of a thumbnail in the grids.
THUMB_SIDE = 96
# The per-image features the outlier score compares, each with the smallest spread it is measured
# against: a feature that barely varies (every sketch 227×227) must not make a tiny difference
# look enormous.
OUTLIER_FEATURES: dict[str, float] = {
    "brightness": 0.02,          # mean luma, 0..1
    "contrast": 0.02,            # mean over channels of the per-image std, 0..1
    "colorfulness": 0.02,        # Hasler-Süsstrunk colourfulness at 32×32, 0..1 scale
    "edge_density": 0.01,        # mean absolute luma step between neighbours at 32×32
    "content_width": 0.05,       # box around pixels unlike the border colour, share of width
    "content_height": 0.05,      # ... and of height
    "log_aspect": 0.05,          # log(width / height)
    "log_pixels": 0.1,           # log(width * height)
    "log_bytes_per_pixel": 0.1,  # how hard the file compresses: noise, detail, format
}
#: Outlier score (distance to the nearest same-class images, in units of the class's typical such
#: distance) above which an image is counted as an outlier.
OUTLIER_THRESHOLD = 3.0
_OUTLIER_K = 5
_OUTLIER_REFERENCE = 10_000
_LIST_LIMIT = 200
_NN_SAMPLE = 2000


# --------------------------------------------------------------------------- manifest


def eda_manifest(data: str | os.PathLike[str], *, manifest: str | os.PathLike[str] | None = None,
                 pattern: str | None = None, group: str | None = None) -> pd.DataFrame:
    """Build the manifest ``clsctl eda`` looks at.

    Args:
        data: An ImageFolder root (one subfolder per class), a folder of unlabeled images (no
            class subfolders, or images directly in it), or the root a manifest/pattern is
            relative to.
        manifest: A CSV/Parquet table with a ``path`` column relative to ``data`` (other columns,
            ``label`` included, are optional).
        pattern: A regex with named groups over each relative path (a group named ``label``
            becomes the class).
        group: A column copied into ``group`` (photo, person, patient), as ``data.group_column``.

    Returns:
        The manifest (``attrs["root"]`` set).

    Raises:
        UsageError: Both ``manifest`` and ``pattern`` given.
        DataError: Whatever the source finds wrong, or an unknown group column.
    """
    from toolkit.data import sources

    if manifest is not None and pattern is not None:
        raise UsageError("--manifest and --pattern both given", "use one: a table, or a regex over file paths")
    root = Path(os.path.abspath(os.path.expanduser(os.fspath(data))))
    if manifest is not None:
        df = sources.manifest_from_table(manifest, root, require_label=False)
    elif pattern is not None:
        df = sources.manifest_from_pattern(root, pattern)
    elif _looks_like_image_folder(root):
        df = sources.manifest_from_folder(root)
    else:
        df = sources.manifest_from_unlabeled(root)
    if group is not None:
        if group not in df.columns:
            raise DataError(f"group column {group!r} not in the manifest (columns: {', '.join(map(str, df.columns))})",
                            "name one of those columns, or leave --group out")
        df["group"] = df[group]
    return df


def _looks_like_image_folder(root: Path) -> bool:
    """ImageFolder when there are visible subfolders and no images directly in the root."""
    from toolkit.imaging.decode import is_image_file

    if not root.is_dir():
        return False  # let the unlabeled source raise its clear "does not exist" error
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    has_dirs = any(e.is_dir() for e in entries)
    top_images = any(e.is_file() and is_image_file(e.name) for e in entries)
    return has_dirs and not top_images


def default_out_dir(data: str | os.PathLike[str]) -> Path:
    """``./eda/<last part of DATA>``: next to where the command runs, never inside the data."""
    name = Path(os.path.abspath(os.path.expanduser(os.fspath(data)))).name or "data"
    return Path("eda") / name


# --------------------------------------------------------------------------- per image


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


# Per image: (ok, reason, bytes, format, mode, frames, width, height, grayscale, sha1, pixel_hash).
_ROW_KEYS = ("ok", "reason", "bytes", "format", "mode", "frames", "width", "height", "grayscale",
             "sha1", "pixel_hash")
_FEATURE_KEYS = ("colorfulness", "edge_density", "content_width", "content_height")


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _features(tiny: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Layout descriptors for the outlier score from a stack of 32×32 box-filtered images.

    Args:
        tiny: ``B x 3 x 32 x 32`` float planes (0..255, whole numbers).
        grey: ``B x 32 x 32`` luma of the same images (0..255), as the perceptual hash uses it.

    Returns:
        ``B x 4``: colourfulness, edge density, content width, content height (see
        :data:`OUTLIER_FEATURES`). Whole-stack numpy calls with their stack-sized temporaries in
        workspaces: per image, call overhead and page faults, not arithmetic, would be the cost.
    """
    b, side = grey.shape[0], grey.shape[1]
    n = side * side
    # Hasler-Süsstrunk colourfulness from the opponent channels rg = R - G, yb = (R + G) / 2 - B.
    flat = tiny.reshape(b, 3, n)
    rg = np.subtract(flat[:, 0], flat[:, 1], out=workspace("feat_rg", (b, n), np.float64))
    yb = np.add(flat[:, 0], flat[:, 1], out=workspace("feat_yb", (b, n), np.float64))
    yb *= 0.5
    yb -= flat[:, 2]
    scale = 1.0 / (n * 255.0)
    m_rg, m_yb = rg.sum(axis=1) * scale, yb.sum(axis=1) * scale
    e_rg = np.einsum("ij,ij->i", rg, rg) * (scale / 255.0)
    e_yb = np.einsum("ij,ij->i", yb, yb) * (scale / 255.0)
    var = np.maximum(e_rg - m_rg * m_rg, 0.0) + np.maximum(e_yb - m_yb * m_yb, 0.0)
    colorfulness = np.sqrt(var) + 0.3 * np.sqrt(m_rg * m_rg + m_yb * m_yb)
    # Edge density: mean absolute luma step between horizontal, plus between vertical neighbours.
    step = workspace("feat_step", (b, side, side - 1), np.float64)
    across = np.abs(np.subtract(grey[:, :, 1:], grey[:, :, :-1], out=step), out=step).sum(axis=(1, 2))
    step = workspace("feat_step", (b, side - 1, side), np.float64)
    down = np.abs(np.subtract(grey[:, 1:], grey[:, :-1], out=step), out=step).sum(axis=(1, 2))
    edges = (across + down) / (side * (side - 1) * 255.0)
    # Content box: pixels that differ clearly (by a tenth of the range) from the typical border
    # colour (the background of a sketch, a product shot, a scan). A photo fills its frame; a
    # drawing or text often doesn't.
    border = np.sort(np.concatenate([grey[:, 0], grey[:, -1], grey[:, :, 0], grey[:, :, -1]], axis=1), axis=1)
    diff = workspace("feat_diff", grey.shape, np.float64)
    mask = workspace("feat_mask", grey.shape, np.bool_)
    np.subtract(grey, border[:, border.shape[1] // 2, None, None], out=diff)
    np.greater(np.abs(diff, out=diff), 25.5, out=mask)

    def extent(hit: np.ndarray) -> np.ndarray:  # B x side booleans -> share spanned by the hits
        first = hit.argmax(axis=1)
        last = side - 1 - hit[:, ::-1].argmax(axis=1)
        return np.where(hit.any(axis=1), (last - first + 1) / side, 0.0)

    return np.column_stack([colorfulness, edges, extent(mask.any(axis=1)), extent(mask.any(axis=2))])


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
        ``(row, sums, tiny, thumb)``: ``row`` follows ``_ROW_KEYS``; ``sums`` (``(n, s, s2)`` for
        the statistics), ``tiny`` (32×32 layout bytes) and ``thumb`` (``(size, RGB bytes)``) are
        None when not made (unreadable file, or no thumbnail wanted).
    """
    data = read_file(path)  # None: load_image below names the reason (missing, a folder, ...)
    n_bytes = sha1 = header = decoded = None
    if data:
        n_bytes = len(data)
        sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
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
            return (False, reason, n_bytes, *(header or (None, None, None)), None, None, None, sha1, None), \
                None, None, None
    try:
        sums, tiny, thumb = _measure(decoded, want_thumb)
    except Exception as e:  # an image that decodes but breaks a measurement must not stop the run
        return (False, f"analysis failed: {type(e).__name__}: {e}", n_bytes, *(header or (None, None, None)),
                None, None, None, sha1, None), None, None, None
    return (True, None, n_bytes, *(header or (None, None, None)), decoded.width, decoded.height, decoded.grey,
            sha1, decoded.digest), sums, tiny, thumb


def _analyze_chunk(tasks: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """Analyse a chunk of files in one worker: per-file work, then whole-chunk numpy.

    Returns:
        Column lists for the chunk (``_ROW_KEYS``, ``phash``, ``phash_flip``), ``n``/``s``/``s2``
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
    out: dict[str, Any] = {key: list(col) for key, col in zip(_ROW_KEYS, zip(*rows, strict=True), strict=True)}
    phash: list[int | None] = [None] * size
    flip: list[int | None] = [None] * size
    feats = np.full((size, len(_FEATURE_KEYS)), np.nan)
    tiny_stack = stack_tiny(tinies)
    grey, ph, fl = layout_batch(tiny_stack)
    for j, k in enumerate(done):
        phash[k], flip[k] = ph[j], fl[j]
    if done:
        feats[done] = _features(tiny_stack, grey)
    out.update(phash=phash, phash_flip=flip, n=n, s=s, s2=s2, thumbs=thumbs)
    for j, key in enumerate(_FEATURE_KEYS):
        out[key] = feats[:, j]
    return out


# --------------------------------------------------------------------------- helpers


def _summary(values: np.ndarray, digits: int = 4) -> dict[str, float | int | None]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0, "min": None, "p5": None, "median": None, "mean": None, "p95": None, "max": None}
    p5, med, p95 = np.percentile(values, [5, 50, 95])
    return {"count": int(values.size), "min": _r(values.min(), digits), "p5": _r(p5, digits),
            "median": _r(med, digits), "mean": _r(values.mean(), digits), "p95": _r(p95, digits),
            "max": _r(values.max(), digits)}


def _r(x: float, digits: int = 4) -> float | None:
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _histogram(values: np.ndarray, bins: int = 30, log: bool = False) -> dict[str, list[float] | list[int]]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"edges": [], "counts": []}
    lo, hi = float(values.min()), float(values.max())
    if log and lo > 0 and hi > lo:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    counts, edges = np.histogram(values, bins=edges)
    return {"edges": [_r(e, 6) for e in edges], "counts": [int(c) for c in counts]}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "x"


def _key(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(missing)"
    return str(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _classify_columns(df: pd.DataFrame, label: str | None) -> tuple[list[str], list[str], list[str]]:
    """Split manifest columns into categorical targets, numeric attributes and identifiers."""
    import pandas as pd

    categorical, numeric, ident = [], [], []
    n = len(df)
    for col in df.columns:
        if col in ("path", "group") or col == label:
            continue
        s = df[col]
        n_unique = int(s.nunique(dropna=True))
        if pd.api.types.is_bool_dtype(s):
            categorical.append(col)
        elif pd.api.types.is_numeric_dtype(s):
            (categorical if n_unique <= 20 else numeric).append(col)
        elif n_unique <= min(100, max(2, n // 2)):
            categorical.append(col)
        else:
            ident.append(col)
    return categorical, numeric, ident


def _counts(values: Iterable[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        k = _key(v)
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def _natural(text: str) -> list[Any]:
    """Sort key that puts 'class2' before 'class10'."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t != ""]


def _target_summary(counts: dict[str, int]) -> dict[str, Any]:
    nonzero = {k: v for k, v in counts.items() if v > 0}
    largest = max(nonzero, key=nonzero.__getitem__) if nonzero else None
    smallest = min(nonzero, key=nonzero.__getitem__) if nonzero else None
    ratio = (nonzero[largest] / nonzero[smallest]) if nonzero else None
    return {"counts": counts, "n_classes": len(nonzero), "largest": largest, "smallest": smallest,
            "imbalance_ratio": _r(ratio, 3) if ratio is not None else None}


class _Progress:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, total: int, enabled: bool, description: str) -> None:
        self._bar = None
        if enabled and total > 0 and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, steps)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


# --------------------------------------------------------------------------- run


def run_eda(manifest_df: pd.DataFrame, root: str | os.PathLike[str] | None = None,
            out_dir: str | os.PathLike[str] = "eda", *, workers: int | None = None, thumbs: int = 8,
            seed: int | None = None, near_dup_distance: int = DEFAULT_NEAR_DISTANCE,
            progress: bool = True) -> dict[str, Any]:
    """Analyse every image of a manifest and write the EDA folder.

    Args:
        manifest_df: One row per image with ``path`` relative to ``root``; ``label``, ``group``
            and attribute columns are used when present.
        root: Image root; default ``manifest_df.attrs["root"]``.
        out_dir: Folder to write into (created; files of a previous run are replaced).
        workers: Processes for the pass; ``None`` = all cores, ``<= 1`` = this process only.
        thumbs: Thumbnails per class (0 = no grids).
        seed: ``None`` shows the first ``thumbs`` images of each class (by path); an integer
            shows a sample drawn with that seed.
        near_dup_distance: Largest perceptual-hash distance (bits of 64) of a near duplicate.
        progress: Show a progress bar when stderr is a terminal.

    Returns:
        The content of ``eda.json`` (see the module docstring for its keys).

    Raises:
        DataError: No ``path`` column, no root, or an empty manifest.
        UsageError: A negative ``thumbs`` or a ``near_dup_distance`` outside 0..32.
    """
    import pandas as pd

    from toolkit.store.atomic import atomic_write_bytes, atomic_write_json, read_json

    started = time.perf_counter()
    if "path" not in manifest_df.columns:
        raise DataError("the manifest has no 'path' column", "build it with toolkit.data.sources")
    if root is None:
        root = manifest_df.attrs.get("root")
    if root is None:
        raise DataError("no image root given and the manifest has none in attrs['root']",
                        "pass root=, or build the manifest with toolkit.data.sources")
    if len(manifest_df) == 0:
        raise DataError("the manifest lists no images", "point eda at a folder or table with images")
    if thumbs < 0:
        raise UsageError(f"--thumbs must be 0 or more, not {thumbs}", "use e.g. --thumbs 8")
    if not 0 <= near_dup_distance <= 32:
        raise UsageError(f"near-duplicate distance {near_dup_distance} is outside 0..32 bits",
                         f"use a small distance such as the default {DEFAULT_NEAR_DISTANCE}")
    root_path = Path(os.path.abspath(os.fspath(root)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_workers = default_workers() if workers is None else max(1, int(workers))

    df = manifest_df.reset_index(drop=True)
    paths = df["path"].astype(str).tolist()
    label = "label" if "label" in df.columns else None
    labels = [_key(v) for v in df[label].tolist()] if label else ["(all)"] * len(df)
    groups = df["group"].tolist() if "group" in df.columns else None

    # Thumbnails are chosen before the pass so workers send pixels only for those few images.
    by_class: dict[str, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    thumb_rows: dict[str, list[int]] = {}
    rng = np.random.default_rng(seed) if seed is not None else None
    for c, rows in by_class.items():
        if thumbs == 0:
            break
        rows = sorted(rows, key=paths.__getitem__)
        if rng is not None and len(rows) > thumbs:
            pick = sorted(rng.choice(len(rows), size=thumbs, replace=False).tolist())
            rows = [rows[k] for k in pick]
        thumb_rows[c] = rows[:thumbs]
    want = {i for rows in thumb_rows.values() for i in rows}

    # ---- the one pass
    tasks = [(str(root_path / p), i in want) for i, p in enumerate(paths)]
    size = chunk_size(len(tasks), n_workers)
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    columns: dict[str, list[Any]] = {k: [] for k in (*_ROW_KEYS, "phash", "phash_flip", "n", "s", "s2",
                                                      *_FEATURE_KEYS)}
    thumb_pixels: dict[int, Image.Image] = {}
    pass_start = time.perf_counter()
    # The common format plugins and OpenCV (the plain-file decoder), loaded once here rather than
    # in every worker.
    Image.preinit()
    _cv2()
    with _Progress(len(tasks), progress, "eda") as bar:
        offset = 0
        for part in imap_ordered(_analyze_chunk, chunks, n_workers, chunksize=1):
            for k, col in columns.items():
                if isinstance(part[k], list):
                    col.extend(part[k])
                else:  # a numpy array per chunk, concatenated below
                    col.append(part[k])
            for k, (thumb_size, data) in part["thumbs"].items():
                thumb_pixels[offset + k] = Image.frombytes("RGB", thumb_size, data)
            offset += len(part["ok"])
            bar.advance(len(part["ok"]))
    ok = np.array(columns["ok"], dtype=bool)
    n_arr = np.concatenate(columns["n"])
    s_arr = np.concatenate(columns["s"])
    s2_arr = np.concatenate(columns["s2"])
    # Exact integer totals, overall and per class (int64 holds 2**31 images of 65,536 pixels).
    class_names = sorted({labels[i] for i in np.flatnonzero(ok)})
    code = {c: j for j, c in enumerate(class_names)}
    codes = np.array([code.get(c, -1) for c in labels], dtype=np.int64)
    acc_n = np.zeros(len(class_names), np.int64)
    acc_s = np.zeros((len(class_names), 3), np.int64)
    acc_s2 = np.zeros((len(class_names), 3), np.int64)
    np.add.at(acc_n, codes[ok], n_arr[ok])
    np.add.at(acc_s, codes[ok], s_arr[ok])
    np.add.at(acc_s2, codes[ok], s2_arr[ok])
    class_acc = {c: (int(acc_n[j]), [int(v) for v in acc_s[j]], [int(v) for v in acc_s2[j]])
                 for j, c in enumerate(class_names)}
    total_n = int(acc_n.sum())
    total_s = [int(v) for v in acc_s.sum(axis=0)]
    total_s2 = [int(v) for v in acc_s2.sum(axis=0)]
    pass_seconds = time.perf_counter() - pass_start

    # ---- per-image table
    images = pd.DataFrame({"path": paths, "label": labels if label else None})
    if groups is not None:
        images["group"] = [None if _is_missing(g) else str(g) for g in groups]
    for k in ("ok", "reason", "bytes", "format", "mode", "frames", "width", "height", "grayscale"):
        images[k] = columns[k]
    n_pix = n_arr.astype(np.float64)
    s = s_arr.astype(np.float64)
    s2 = s2_arr.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = s / n_pix[:, None] / 255.0
        stds = np.sqrt(np.maximum(s2 / n_pix[:, None] / 65025.0 - means**2, 0.0))
    for ch, name in enumerate("rgb"):
        images[f"mean_{name}"] = np.where(ok, means[:, ch], np.nan)
        images[f"std_{name}"] = np.where(ok, stds[:, ch], np.nan)
    images["brightness"] = np.where(ok, _luma(means), np.nan)
    images["contrast"] = np.where(ok, stds.mean(axis=1), np.nan)
    for k in _FEATURE_KEYS:
        images[k] = np.concatenate(columns[k])
    width = images["width"].astype("float64").to_numpy()
    height = images["height"].astype("float64").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        images["log_aspect"] = np.log(width / height)
        images["log_pixels"] = np.log(width * height)
        images["log_bytes_per_pixel"] = np.log(images["bytes"].astype("float64").to_numpy() / (width * height))
    score, reasons = _outlier_scores(images, ok, seed)
    images["outlier_score"] = score
    images["outlier_reasons"] = reasons

    files: list[str] = []

    def write_png(name: str, data: bytes) -> str:
        atomic_write_bytes(out / name, data)
        files.append(name)
        return name

    hashes = hashes_frame(paths, list(zip(columns["sha1"], columns["pixel_hash"], columns["phash"],
                                          columns["phash_flip"], strict=True)))
    _write_parquet(hashes, out / "hashes.parquet")
    files.append("hashes.parquet")

    report: dict[str, Any] = {
        "version": 1,
        "root": str(root_path),
        "source": manifest_df.attrs.get("source"),
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "settings": {"stats_max_side": STATS_MAX_SIDE, "near_dup_distance": int(near_dup_distance),
                     "thumbs": int(thumbs), "seed": seed, "workers": n_workers},
        "images": {"total": len(df), "readable": int(ok.sum()), "unreadable": int((~ok).sum())},
        "label_column": label,
    }

    from toolkit.report import eda_figures as plots  # matplotlib loads only here

    # ---- targets and attributes
    categorical, numeric, ident = _classify_columns(df, label)
    targets: dict[str, Any] = {}
    for col in ([label] if label else []) + categorical:
        counts = _counts(df[col].tolist())
        summary = _target_summary(counts)
        summary["plot"] = write_png(f"counts_{_slug(col)}.png", plots.bar_counts(counts, col))
        targets[str(col)] = summary
    report["targets"] = targets
    attributes: dict[str, Any] = {}
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        attributes[str(col)] = {"kind": "numeric", "summary": _summary(values),
                                "histogram": _histogram(values, 30),
                                "plot": write_png(f"attr_{_slug(col)}.png", plots.histogram(values, col))}
    for col in ident:
        attributes[str(col)] = {"kind": "identifier", "n_unique": int(df[col].nunique(dropna=True))}
    report["attributes"] = attributes

    # ---- groups
    report["groups"] = None
    if groups is not None:
        gkeys = images["group"]
        sizes = gkeys.value_counts(dropna=True)
        mixed = 0
        if label:
            mixed = int((images.dropna(subset=["group"]).groupby("group")["label"].nunique() > 1).sum())
        report["groups"] = {
            "column": "group", "n_groups": int(len(sizes)),
            "images_per_group": _summary(sizes.to_numpy()),
            "largest": [[str(g), int(n)] for g, n in sizes.head(10).items()],
            "mixed_label_groups": mixed,
            "plot": write_png("group_sizes.png", plots.histogram(sizes.to_numpy(np.float64), "images per group",
                                                                 integer=True)),
        }

    # ---- sizes, formats, modes, grayscale
    good = images[ok]
    wh = good.groupby(["width", "height"]).size().sort_values(ascending=False)
    aspect = (good["width"].astype(float) / good["height"].astype(float)).to_numpy()
    report["sizes"] = {
        "width": _summary(good["width"].to_numpy(np.float64), 2),
        "height": _summary(good["height"].to_numpy(np.float64), 2),
        "aspect_ratio": _summary(aspect, 4),
        "common": [[int(w), int(h), int(n)] for (w, h), n in wh.head(10).items()],
        "plot": write_png("sizes.png", plots.sizes(good["width"].to_numpy(np.float64),
                                                   good["height"].to_numpy(np.float64), aspect)),
    }
    report["file_formats"] = _counts(images.loc[images["format"].notna(), "format"])
    report["image_modes"] = _counts(images.loc[images["mode"].notna(), "mode"])
    report["frames_gt1"] = int((images["frames"].fillna(1).astype(int) > 1).sum())
    gray = good["grayscale"].astype(bool)
    per_class_gray = {}
    for c, sub in good.groupby("label" if label else np.zeros(len(good)), sort=False):
        key = str(c) if label else "(all)"
        cnt = int(sub["grayscale"].astype(bool).sum())
        per_class_gray[key] = {"count": cnt, "share": _r(cnt / len(sub), 4)}
    report["grayscale"] = {"count": int(gray.sum()), "share": _r(gray.mean(), 4) if len(gray) else None,
                           "per_class": dict(sorted(per_class_gray.items(), key=lambda kv: _natural(kv[0])))}

    # ---- channel statistics (exact integer sums)
    report["stats"] = {**_mean_std(total_n, total_s, total_s2), "pixels": int(total_n),
                       "images": int(ok.sum()), "max_side": STATS_MAX_SIDE,
                       "per_class": {c: _mean_std(*class_acc[c]) for c in sorted(class_acc, key=_natural)}}
    bright = good["brightness"].to_numpy(np.float64)
    report["brightness"] = {
        "summary": _summary(bright), "histogram": _histogram(bright, 30),
        "per_class_median": {str(c): _r(v) for c, v in good.groupby("label")["brightness"].median().items()}
        if label else None,
        "plot": write_png("brightness.png", plots.brightness(good, label)),
    }
    report["channel_plot"] = write_png("channels.png", plots.channel_means(good))

    # ---- thumbnails
    report["thumbnails"] = {}
    for k, (c, rows) in enumerate(thumb_rows.items()):
        tiles = [(thumb_pixels.get(i), paths[i]) for i in rows]
        report["thumbnails"][c] = write_png(f"thumbs/{k:03d}_{_slug(c)[:40]}.png", plots.grid(tiles))

    # ---- unreadable
    bad = images[~ok]
    report["unreadable"] = [{"path": p, "reason": r} for p, r in zip(bad["path"], bad["reason"], strict=True)]

    # ---- duplicates
    report["duplicates"] = _duplicates_section(hashes[ok].reset_index(drop=True), images, near_dup_distance,
                                               label, groups is not None, seed, out, write_png, files, root_path)

    # ---- outliers
    order = np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable")
    top = [int(i) for i in order[:50] if ok[i] and np.isfinite(score[i])]
    report["outliers"] = {
        "method": "mean distance to the 5 nearest images of the same class in standardised feature "
                  "space, divided by the class's median such distance",
        "features": dict(OUTLIER_FEATURES), "threshold": OUTLIER_THRESHOLD,
        "count": int(np.sum(np.nan_to_num(score, nan=0.0) > OUTLIER_THRESHOLD)),
        "items": [{"path": paths[i], "label": labels[i] if label else None, "score": _r(score[i], 2),
                   "reasons": reasons[i]} for i in top],
        "plot": write_png("outliers.png", plots.grid(
            [(_safe_load(root_path / paths[i]), f"{paths[i]}  z={score[i]:.1f}") for i in top[:16]],
            columns=8, captions=True)) if top else None,
    }

    _write_parquet(images.drop(columns=[]), out / "images.parquet")
    files.append("images.parquet")

    total_seconds = time.perf_counter() - started
    report["timing"] = {"seconds": _r(total_seconds, 2), "pass_seconds": _r(pass_seconds, 2),
                        "images_per_second": _r(len(df) / pass_seconds, 1) if pass_seconds > 0 else None}
    files += ["eda.html", "eda.json"]
    report["files"] = sorted(set(files))

    from toolkit.report.eda_html import render_eda_html

    previous = out / "eda.json"
    stale: list[str] = []
    if previous.is_file():
        try:
            stale = [f for f in read_json(previous).get("files", []) if f not in report["files"]]
        except (OSError, ValueError, AttributeError):
            stale = []
    atomic_write_bytes(out / "eda.html", render_eda_html(report).encode("utf-8"))
    atomic_write_json(out / "eda.json", report)
    for name in stale:
        target = (out / name).resolve()
        # Only files inside the folder that an earlier run listed as its own are removed.
        if out.resolve() in target.parents and target.is_file():
            target.unlink()
    return report


def _mean_std(n: int, s: Sequence[int], s2: Sequence[int]) -> dict[str, list[float] | None]:
    if n == 0:
        return {"mean": None, "std": None}
    mean = [si / n / 255.0 for si in s]
    # Variance from exact integers: (n * s2 - s^2) / n^2 has no cancellation error.
    std = [math.sqrt(max(n * q - si * si, 0) / (n * n)) / 255.0 for si, q in zip(s, s2, strict=True)]
    return {"mean": mean, "std": std}


def _outlier_scores(images: pd.DataFrame, ok: np.ndarray, seed: int | None) -> tuple[np.ndarray, list[list[str]]]:
    """A k-nearest-neighbour outlier score within each class, and the features that drive it.

    Each feature of :data:`OUTLIER_FEATURES` is standardised over the whole set (median, and
    IQR / 1.349 but at least the feature's floor). An image's raw score is its mean Euclidean
    distance to its 5 nearest images of the same class; dividing by the class's median raw
    score makes it "how many times further from its class-mates than a typical image is". A
    distance to neighbours, unlike a distance to the class centre, does not flag the members of
    a legitimate sub-population (a second drawing style, a second camera) as long as there are
    a few of them. Classes under 10 images are scored against the whole set.

    Returns:
        ``(score, reasons)``: score is NaN for unreadable images; reasons name the two features
        furthest from the class median, as robust z-scores.
    """
    n = len(images)
    names = list(OUTLIER_FEATURES)
    raw = images[names].to_numpy(np.float64)
    score = np.full(n, np.nan)
    reasons: list[list[str]] = [[] for _ in range(n)]
    rows = np.flatnonzero(ok)
    if rows.size < 3:
        return score, reasons
    x = raw[rows]
    med = np.nanmedian(x, axis=0)
    x = np.where(np.isfinite(x), x, med)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    floors = np.array(list(OUTLIER_FEATURES.values()))
    z = ((x - np.median(x, axis=0)) / np.maximum((q75 - q25) / 1.349, floors)).astype(np.float32)
    labels = images["label"].astype(str).to_numpy(object)[rows] if images["label"].notna().any() \
        else np.full(rows.size, "", dtype=object)
    sizes = {c: int(np.sum(labels == c)) for c in set(labels.tolist())}
    pools = np.array([c if sizes[c] >= 10 else "\0all" for c in labels], dtype=object)
    rng = np.random.default_rng(0 if seed is None else seed)
    for pool in set(pools.tolist()):
        members = np.flatnonzero(pools == pool)
        reference = np.arange(rows.size) if pool == "\0all" else members
        if reference.size > _OUTLIER_REFERENCE:  # bounded work for huge classes: a seeded sample
            reference = np.sort(rng.choice(reference, size=_OUTLIER_REFERENCE, replace=False))
        knn = _knn_distance(z[members], z[reference], members, reference, _OUTLIER_K)
        typical = float(np.median(knn)) if knn.size else 0.0
        score[rows[members]] = knn / typical if typical > 0 else np.where(knn > 0, np.inf, 0.0)
        cmed = np.median(x[reference], axis=0)
        cmad = np.median(np.abs(x[reference] - cmed), axis=0) * 1.4826
        cz = (x[members] - cmed) / np.maximum(cmad, floors)
        for local, i in enumerate(rows[members]):
            top = np.argsort(-np.abs(cz[local]))[:2]
            reasons[i] = [f"{names[j]} z={cz[local, j]:+.1f}" for j in top]
    return score, reasons


def _knn_distance(q: np.ndarray, ref: np.ndarray, q_ids: np.ndarray, ref_ids: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each query row to its ``k`` nearest reference rows (itself excluded)."""
    out = np.zeros(len(q), np.float64)
    if len(ref) < 2:
        return out
    k = min(k, len(ref) - 1)
    ref_sq = (ref * ref).sum(axis=1)
    block = max(1, (1 << 22) // len(ref))
    for start in range(0, len(q), block):
        qb = q[start:start + block]
        d2 = (qb * qb).sum(axis=1)[:, None] + ref_sq[None, :] - 2.0 * (qb @ ref.T)
        # The image itself is not its own neighbour.
        same = q_ids[start:start + block, None] == ref_ids[None, :]
        d2 = np.where(same, np.inf, np.maximum(d2, 0.0))
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        out[start:start + len(qb)] = np.sqrt(nearest).mean(axis=1)
    return out


def _safe_load(path: Path) -> Image.Image | None:
    try:
        image = load_image(path)
    except ImageError:
        return None
    image = image.copy()
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return image


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    from toolkit.store.atomic import atomic_writer

    with atomic_writer(path, "wb") as handle:
        df.to_parquet(handle, index=False)


def _nearest_distances(h: np.ndarray, g: np.ndarray, seed: int | None, limit: int = _NN_SAMPLE) -> np.ndarray:
    """Distance from a sample of hashes to their nearest other hash (plain or mirrored)."""
    n = len(h)
    if n < 2:
        return np.empty(0, np.int64)
    rng = np.random.default_rng(0 if seed is None else seed)
    sample = np.sort(rng.choice(n, size=min(n, limit), replace=False))
    out = np.empty(len(sample), np.int64)
    block = max(1, (1 << 20) // n)
    for start in range(0, len(sample), block):
        rows = sample[start:start + block]
        d = np.minimum(_popcount(h[rows, None] ^ h[None, :]), _popcount(h[rows, None] ^ g[None, :]))
        d = d.astype(np.int64)
        d[np.arange(len(rows)), rows] = 99  # not itself
        out[start:start + len(rows)] = d.min(axis=1)
    return out


def _duplicates_section(hashes: pd.DataFrame, images: pd.DataFrame, max_distance: int, label: str | None,
                        has_groups: bool, seed: int | None, out: Path, write_png: Any, files: list[str],
                        root: Path) -> dict[str, Any]:

    from toolkit.report import eda_figures as plots

    pairs = duplicate_pairs(hashes, max_distance)
    info = images.set_index("path")
    lab = info["label"] if label else None
    grp = info["group"] if has_groups else None
    table = pairs.copy()
    if lab is not None:
        table["label_a"] = lab.reindex(table["a"]).to_numpy(object)
        table["label_b"] = lab.reindex(table["b"]).to_numpy(object)
    if grp is not None:
        table["group_a"] = grp.reindex(table["a"]).to_numpy(object)
        table["group_b"] = grp.reindex(table["b"]).to_numpy(object)
    _write_parquet(table, out / "duplicates.parquet")
    files.append("duplicates.parquet")

    comp = duplicate_groups(pairs)
    members: dict[int, list[str]] = {}
    for p, k in comp.items():
        members.setdefault(k, []).append(p)
    ranked = sorted(members.values(), key=lambda m: (-len(m), m[0]))

    def conflict_items(mask: np.ndarray) -> dict[str, Any]:
        sub = table[mask]
        cols = [c for c in ("a", "b", "kind", "distance", "label_a", "label_b", "group_a", "group_b") if c in sub]
        items = [{c: (int(v) if c == "distance" else v) for c, v in zip(cols, row, strict=True)}
                 for row in sub[cols].head(_LIST_LIMIT).itertuples(index=False, name=None)]
        return {"count": int(mask.sum()), "items": items}

    none = np.zeros(len(table), bool)
    label_conf = (table["label_a"] != table["label_b"]).to_numpy(bool) if lab is not None else none
    group_conf = ((table["group_a"] != table["group_b"]) & table["group_a"].notna()
                  & table["group_b"].notna()).to_numpy(bool) if grp is not None else none
    near = table["kind"].isin(["near", "near_flip"]).to_numpy(bool)
    same_group_share = None
    if grp is not None and near.any():
        same_group_share = _r(float(np.mean(~group_conf[near])), 4)

    h = hashes.loc[hashes["phash"].notna(), "phash"].to_numpy(np.uint64)
    g = hashes.loc[hashes["phash"].notna(), "phash_flip"].to_numpy(np.uint64)
    nn = _nearest_distances(h, g, seed)
    nn_hist = np.bincount(nn, minlength=65)[:65] if nn.size else np.zeros(65, np.int64)

    # Example strip: a few pairs, label conflicts first (what a person most needs to see).
    example_rows = np.concatenate([np.flatnonzero(label_conf), np.flatnonzero(~label_conf)])[:12]
    examples = []
    for r in example_rows:
        row = table.iloc[int(r)]
        caption = f"{row['kind']} d={int(row['distance'])}"
        if lab is not None:
            caption += f" {row['label_a']}|{row['label_b']}"
        examples.append((_safe_load(root / row["a"]), _safe_load(root / row["b"]), caption))

    counts = pairs["kind"].value_counts()
    return {
        "max_distance": int(max_distance),
        "pairs": {k: int(counts.get(k, 0)) for k in ("exact", "pixel", "near", "near_flip")},
        "groups": len(ranked),
        "images_in_groups": int(sum(len(m) for m in ranked)),
        "largest_groups": [{"size": len(m), "paths": m[:10],
                            "labels": _counts(lab.reindex(m).tolist()) if lab is not None else None}
                           for m in ranked[:20]],
        "label_conflicts": conflict_items(label_conf),
        "group_conflicts": conflict_items(group_conf),
        "same_group_share": same_group_share,
        "nearest_distance": {"sampled": int(nn.size), "counts": [int(c) for c in nn_hist]},
        "plot": write_png("near_distance.png", plots.nearest_distance(nn_hist, max_distance)),
        "examples": write_png("duplicates.png", plots.pairs_strip(examples)) if examples else None,
        "file": "duplicates.parquet",
    }

