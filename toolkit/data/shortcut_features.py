"""The features the shortcut audit tests: file properties and names, each turned into a few codes.

:mod:`toolkit.data.shortcuts` asks of every feature whether its value tells the label. It needs each
feature as small integer codes (one per value, or per bin of a quantity), which this module makes:

* **file** features, which reach the model through the pixels: the stored ``format`` (compression
  artefacts), ``mode`` (palette, grey, alpha), grey-looking pixels, the EXIF orientation tag,
  ``width``, ``height``, ``aspect`` (width / height), ``pixels`` (their product: resolution survives
  any resize) and ``bytes_per_pixel`` of lossy files (compression quality; of a lossless file the size
  only says how much detail its pixels hold, which the model sees anyway, so it is not tested there);
* **name** features, which the model never sees but which show that classes were assembled from
  different sources or named after their class: the file ``extension``, the last number in the file
  name (ids handed out class by class), and each frequent token of the file name and of the folders
  below the class folder (``cat.123.jpg``, ``n02084071_77.jpg``, ``positive_0042.png``).

A quantity with many values is cut into :data:`N_BINS` quantile bins; values (and tokens) seen on
fewer than ``min_support`` images are pooled, because a value held by three images predicts their
label by chance as often as not.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit.errors import ImageError
from toolkit.imaging.decode import exif_orientation, read_image_header

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FILE_FEATURES", "LOSSY_FORMATS", "N_BINS", "Feature", "file_features", "file_properties",
           "fmt_number", "min_support", "name_features"]

#: File features: key → what the audit calls it.
FILE_FEATURES: dict[str, str] = {
    "format": "file format",
    "mode": "stored pixel mode",
    "grayscale": "grey-looking pixels",
    "exif_orientation": "EXIF orientation tag",
    "width": "width (px)",
    "height": "height (px)",
    "aspect": "aspect ratio (width / height)",
    "pixels": "pixel count (width × height)",
    "bytes_per_pixel": "bytes per pixel of lossy (JPEG/WebP) files",
}
#: Formats whose file size says how hard they were compressed, not only how much detail they hold.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP"})
#: Quantile bins of a quantity with many distinct values.
N_BINS = 10
# At most this many name tokens are tested (the most frequent): every test raises the bar of all.
_MAX_TOKENS = 64
# Runs of letters and digits; ``_`` separates tokens as any other punctuation does.
_TOKEN = re.compile(r"[^\W_]+")
_NUMBER = re.compile(r"\d+")
# The first bytes of a file hold its header and, in a JPEG, the APP1 segment with the EXIF block.
_HEAD_BYTES = 1 << 16


@dataclass
class Feature:
    """One feature as codes.

    Attributes:
        key: Its name in ``eda.json``: ``format``, ``name_number``, ``name token 'cat'``...
        label: What a person reads: ``file format``, ``file names containing 'cat'``.
        kind: ``file`` (the pixels carry it) or ``name`` (only the file's name does).
        codes: One int per image; -1 where the feature is not defined (a lossless file's bytes per pixel).
        values: Code → the value or bin it stands for.
        raw: The quantity itself (for the metadata model), or None for a categorical feature.
        family: ``name_tokens`` or ``folder_tokens`` for a token (their findings are reported together).
    """

    key: str
    label: str
    kind: str
    codes: np.ndarray
    values: list[str]
    raw: np.ndarray | None = None
    family: str | None = None

    @property
    def varies(self) -> bool:
        """Whether at least two codes occur among the images it is defined for."""
        defined = self.codes[self.codes >= 0]
        return defined.size > 0 and int(defined.min()) != int(defined.max())


def min_support(n: int) -> int:
    """Fewest images a value or token must have to be tested on its own: 10, or 1% of a large set (at most 50)."""
    return max(10, min(50, math.ceil(0.01 * n)))


def _pooled(key: str, label: str, kind: str, codes: np.ndarray, names: list[str], counts: np.ndarray,
            support: int) -> Feature:
    """A feature whose values seen on fewer than ``support`` images share one ``other`` code."""
    kept = counts >= support
    if kept.all():
        return Feature(key, label, kind, codes.astype(np.int64), names)
    mapping = np.where(kept, np.cumsum(kept) - 1, int(kept.sum()))
    return Feature(key, label, kind, mapping[codes].astype(np.int64),
                   [n for n, k in zip(names, kept, strict=True) if k] + ["other (rare values)"])


def _categorical(key: str, label: str, kind: str, values: Sequence[object], support: int) -> Feature:
    """Codes of a categorical column (a missing value is the value ``(unknown)``), rare values pooled."""
    import pandas as pd

    column = pd.Series(values, dtype=object)
    text = column.astype(str).where(column.notna(), "(unknown)").to_numpy(dtype=object)
    names, codes, counts = np.unique(text, return_inverse=True, return_counts=True)
    return _pooled(key, label, kind, codes, [str(v) for v in names], counts, support)


def fmt_number(x: float) -> str:
    """A quantity as the audit writes it: three significant digits, whole numbers from 1000 up."""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _numeric(key: str, label: str, kind: str, values: np.ndarray, support: int) -> Feature:
    """Codes of a quantity: its values when few, else quantile bins; -1 where it is not a finite number."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    distinct = np.unique(x[finite])
    if distinct.size <= N_BINS + 2:  # few values (every image 28×28, or three sizes): each its own code
        _, inverse, counts = np.unique(x[finite], return_inverse=True, return_counts=True)
        feature = _pooled(key, label, kind, inverse, [fmt_number(v) for v in distinct], counts, support)
        codes = np.full(x.size, -1, np.int64)
        codes[finite] = feature.codes
        feature.codes, feature.raw = codes, x
        return feature
    edges = np.unique(np.quantile(x[finite], np.linspace(0, 1, N_BINS + 1)))
    codes = np.full(x.size, -1, np.int64)
    codes[finite] = np.searchsorted(edges[1:-1], x[finite], side="right")
    names = [f"{fmt_number(lo)}–{fmt_number(hi)}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return Feature(key, label, kind, codes, names, raw=x)


def file_features(table: pd.DataFrame, support: int) -> list[Feature]:
    """The file features of a per-image table (columns ``format``, ``mode``, ``width``, ``height``,
    ``bytes``; ``grayscale`` and ``exif_orientation`` when present), those that vary."""
    width = table["width"].astype("float64").to_numpy()
    height = table["height"].astype("float64").to_numpy()
    formats = table["format"].tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        pixels = width * height
        lossy = np.array([f in LOSSY_FORMATS for f in formats], bool)
        bpp = np.where(lossy, table["bytes"].astype("float64").to_numpy() / pixels, np.nan)
        aspect = width / height
    features = [_categorical("format", FILE_FEATURES["format"], "file", formats, support),
                _categorical("mode", FILE_FEATURES["mode"], "file", table["mode"].tolist(), support)]
    if "grayscale" in table.columns:
        grey = ["grey" if g is True or g == 1 else "colour" for g in table["grayscale"].tolist()]
        features.append(_categorical("grayscale", FILE_FEATURES["grayscale"], "file", grey, support))
    if "exif_orientation" in table.columns:
        tag = np.nan_to_num(table["exif_orientation"].astype("float64").to_numpy()).astype(np.int64)
        tags = np.where(tag == 0, "none", tag.astype(str))
        features.append(_categorical("exif_orientation", FILE_FEATURES["exif_orientation"], "file", tags, support))
    for key, values in (("width", width), ("height", height), ("aspect", aspect), ("pixels", pixels),
                        ("bytes_per_pixel", bpp)):
        features.append(_numeric(key, FILE_FEATURES[key], "file", values, support))
    return [f for f in features if f.varies]


def _below_class(parts: list[str], label: str) -> list[str]:
    """The folders of a path below its class folder (all of them when no folder is named after the class)."""
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == label:
            return parts[i + 1:]
    return parts


def _tokens(text: str) -> set[str]:
    # Numbers of three digits or more are ids (``0042``, ``20190101``): the number feature covers them.
    return {t for t in _TOKEN.findall(text.lower()) if not (t.isdigit() and len(t) > 2)}


def _token_features(rows: list[set[str]], where: str, n: int, support: int) -> list[Feature]:
    counts: dict[str, int] = {}
    for tokens in rows:
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
    frequent = sorted((t for t, c in counts.items() if support <= c <= n - support),
                      key=lambda t: (-counts[t], t))[:_MAX_TOKENS]
    columns: dict[str, np.ndarray] = {t: np.zeros(n, np.int64) for t in frequent}
    for i, tokens in enumerate(rows):
        for t in tokens:
            if t in columns:
                columns[t][i] = 1
    # Tokens that always come together (``with`` and ``mask`` of ``with_mask``) are one feature.
    merged: dict[bytes, list[str]] = {}
    for t in frequent:
        merged.setdefault(np.packbits(columns[t]).tobytes(), []).append(t)
    noun = "file names" if where == "name" else "folders"
    out = []
    for same in merged.values():
        shown = "', '".join(same[:3])
        key = f"{where} token '{same[0]}'"
        out.append(Feature(key, f"{noun} containing '{shown}'", "name", columns[same[0]],
                           [f"without '{same[0]}'", f"'{shown}'"], family=f"{where}_tokens"))
    return out


def name_features(paths: Sequence[str], labels: Sequence[str], support: int) -> list[Feature]:
    """The name features of relative image paths (their labels locate the class folder), those that vary."""
    n = len(paths)
    stems, folders, suffixes, numbers = [], [], [], np.full(n, np.nan)
    for i, (path, label) in enumerate(zip(paths, labels, strict=True)):
        parts = str(path).replace("\\", "/").split("/")
        stem, suffix = os.path.splitext(parts[-1])
        stems.append(_tokens(stem))
        folders.append(set().union(*(_tokens(p) for p in _below_class(parts[:-1], label))))
        suffixes.append(suffix.lower() or "(none)")
        found = _NUMBER.findall(stem)
        if found:
            numbers[i] = float(found[-1][-15:])  # the last 15 digits: a float keeps them exactly
    features = [_categorical("extension", "file extension", "name", suffixes, support),
                _numeric("name_number", "last number in the file name", "name", numbers, support)]
    features += _token_features(stems, "name", n, support)
    features += _token_features(folders, "folder", n, support)
    return [f for f in features if f.varies]


def _properties(path: str) -> tuple[object, ...]:
    """Format, mode, displayed width and height, bytes and EXIF orientation of one file, from its header."""
    import io

    from PIL import Image

    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
            size = os.fstat(fh.fileno()).st_size
        orientation = exif_orientation(head)
        try:
            with Image.open(io.BytesIO(head)) as im:
                fmt, mode, (width, height) = im.format, im.mode, im.size
        except Exception:  # the header reaches past the first bytes (a large EXIF block): read the file
            header = read_image_header(path)
            fmt, mode, width, height = header.format, header.mode, header.width, header.height
    except (OSError, ImageError):
        return None, None, None, None, None, None
    if orientation in (5, 6, 7, 8):  # rotated by a quarter turn when loaded: the displayed size, as eda
        width, height = height, width
    return fmt, mode, width, height, size, orientation


def file_properties(paths: Sequence[str], root: str | os.PathLike[str], workers: int | None = None) -> pd.DataFrame:
    """Format, mode, width, height (as displayed), bytes and EXIF orientation of every file, from headers only.

    What ``clsctl split`` audits without decoding a pixel. Files that cannot be read get empty values.

    Args:
        paths: Paths relative to ``root``.
        root: The image root.
        workers: Threads (header reads wait on the disk more than on the CPU); None = 4.

    Returns:
        One row per path, columns ``format, mode, width, height, bytes, exif_orientation``.
    """
    import pandas as pd

    full = [str(Path(root) / p) for p in paths]
    threads = 4 if workers is None else max(1, int(workers))
    if threads <= 1 or len(full) < 64:
        rows = [_properties(p) for p in full]
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="file_properties") as pool:
            rows = list(pool.map(_properties, full, chunksize=64))
    table = pd.DataFrame(rows, columns=["format", "mode", "width", "height", "bytes", "exif_orientation"])
    for col in ("width", "height", "bytes", "exif_orientation"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table
