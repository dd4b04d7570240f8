"""Exploratory data analysis, the measurements: everything worth knowing about an image set before training on it.

:func:`measure_dataset` runs the one pass over the images (:mod:`toolkit.data.eda_pass`) and turns
what it measured into the content of ``eda.json``: class and attribute counts, groups, sizes,
formats, colour, dataset statistics, duplicates (:mod:`toolkit.imaging.duplicates`, whose search is
sub-quadratic) and outliers (:mod:`toolkit.data.outliers`). It writes nothing:
:func:`toolkit.report.eda.run_eda` draws the figures, fills in their file names and writes the
folder.

Dataset statistics (``stats``) are computed on every readable image downscaled (box filter, aspect
kept) so that its long side is at most :data:`~toolkit.data.eda_pass.STATS_MAX_SIDE` = 256 pixels;
smaller images are used as they are. Every such pixel counts once, pooled over the whole set; sums
of ``x`` and ``x²`` are accumulated as exact integers, so the result does not depend on the order or
the number of workers. Values are in 0..1 units (pixel / 255), the convention of torchvision/timm
``Normalize``; a recipe uses them with ``[data] normalize = "dataset"`` and
``stats_file = "<out>/eda.json"``.

``eda.json`` keys (the file names under ``plot``, ``channel_plot``, ``thumbnails``, ``examples``
and ``file`` are None, or empty, until the report writes those files):

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
  (histogram of each sampled image's distance to its nearest other hash), ``plot``, ``examples``,
  ``file`` (the pair table).
* ``outliers``: ``method``, ``features``, ``threshold``, ``count`` (images over the threshold),
  ``items`` (top 50: ``path``, ``label``, ``score``, ``reasons``), ``plot``.
* ``shortcuts``: file properties and names that predict the label (:mod:`toolkit.data.shortcuts`):
  ``findings`` (flagged features, strongest first, each with ``feature``, ``strength``, ``class``,
  ``values``, ``summary``, ``lever``; empty when nothing is flagged), ``metadata_model``
  (``balanced_accuracy``, ``chance``, ``accuracy``, ``majority_accuracy``...), ``features`` (every
  feature tested), ``skipped`` (why it did not run: no labels, turned off) and the test's criteria.
* ``timing``: ``seconds`` (the whole run; the report fills it in), ``pass_seconds``,
  ``images_per_second``.
* ``files``: every file the report wrote in the folder (a rerun removes the stale ones).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.data.eda_pass import STATS_MAX_SIDE, measure_images
from toolkit.data.outliers import LAYOUT_FEATURES, OUTLIER_FEATURES, OUTLIER_THRESHOLD, outlier_scores
from toolkit.data.shortcuts import audit_shortcuts, shortcuts_skipped
from toolkit.errors import DataError, UsageError, is_missing
from toolkit.imaging.duplicates import (
    DEFAULT_NEAR_DISTANCE,
    duplicate_groups,
    duplicate_pairs,
    nearest_distances,
)
from toolkit.imaging.hashing import hashes_frame
from toolkit.imaging.pool import default_workers

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

__all__ = ["EdaMeasurement", "check_eda_inputs", "measure_dataset"]

# Conflicting duplicate pairs listed in eda.json (the count covers all of them).
_LIST_LIMIT = 200


@dataclass
class EdaMeasurement:
    """What :func:`measure_dataset` found, and what the report needs to draw it.

    Attributes:
        results: The content of ``eda.json`` (see the module docstring), file names still empty.
        root: The absolute image root.
        images: The per-image table (``images.parquet``): size, format, mode, EXIF orientation tag
            (0: none), grayscale, channel means and stds, the outlier features, score and reasons,
            unreadable reason.
        hashes: The hash table (``hashes.parquet``) of :func:`toolkit.imaging.hashing.image_hashes`.
        pairs: The duplicate pairs (``duplicates.parquet``) with both images' labels and groups.
        attribute_values: Numeric attribute column → its values, for the histograms.
        group_sizes: Images per group, largest first (None without a group column).
        thumbnails: Class → ``(thumbnail or None, path)`` of the images shown for it.
        outlier_rows: Rows of ``images`` that score highest, most outlying first.
        example_pairs: Rows of ``pairs`` worth showing, label conflicts first.
        started: ``time.perf_counter()`` when the measurement began.
    """

    results: dict[str, Any]
    root: Path
    images: pd.DataFrame
    hashes: pd.DataFrame
    pairs: pd.DataFrame
    attribute_values: dict[str, np.ndarray]
    group_sizes: np.ndarray | None
    thumbnails: dict[str, list[tuple[Image.Image | None, str]]]
    outlier_rows: list[int]
    example_pairs: list[int]
    started: float

    @property
    def readable(self) -> pd.DataFrame:
        """The rows of ``images`` whose file decoded."""
        return self.images[self.images["ok"].to_numpy(bool)]


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


def _key(value: Any) -> str:
    return "(missing)" if is_missing(value) else str(value)


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
        elif pd.api.types.is_numeric_dtype(s) or _is_numeric_text(s):
            (categorical if n_unique <= 20 else numeric).append(col)
        elif n_unique <= min(100, max(2, n // 2)):
            categorical.append(col)
        else:
            ident.append(col)
    return categorical, numeric, ident


def _is_numeric_text(s: pd.Series) -> bool:
    """Whether a text column (manifests are read as text) holds quantities such as widths or ages.

    Every value must parse as a number, and none may be zero-padded: ``0042`` is a code or an id.
    """
    import pandas as pd

    text = s.dropna().astype(str).str.strip()
    if text.empty or text.str.fullmatch(r"[+-]?0[0-9]+.*").any():
        return False
    return bool(pd.to_numeric(text, errors="coerce").notna().all())


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
            "imbalance_ratio": _r(ratio, 3) if ratio is not None else None, "plot": None}


def _mean_std(n: int, s: Sequence[int], s2: Sequence[int]) -> dict[str, list[float] | None]:
    if n == 0:
        return {"mean": None, "std": None}
    mean = [si / n / 255.0 for si in s]
    # Variance from exact integers: (n * s2 - s^2) / n^2 has no cancellation error.
    std = [math.sqrt(max(n * q - si * si, 0) / (n * n)) / 255.0 for si, q in zip(s, s2, strict=True)]
    return {"mean": mean, "std": std}


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# --------------------------------------------------------------------------- measurement


def check_eda_inputs(manifest_df: pd.DataFrame, root: str | os.PathLike[str] | None = None, *, thumbs: int = 8,
                     near_dup_distance: int = DEFAULT_NEAR_DISTANCE) -> Path:
    """Check what :func:`measure_dataset` is given, before any work is done.

    Returns:
        The absolute image root: ``root``, else ``manifest_df.attrs["root"]``.

    Raises:
        DataError: No ``path`` column, no root, or an empty manifest.
        UsageError: A negative ``thumbs`` or a ``near_dup_distance`` outside 0..32.
    """
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
    return Path(os.path.abspath(os.fspath(root)))


def _thumbnail_rows(labels: list[str], paths: list[str], thumbs: int, seed: int | None) -> dict[str, list[int]]:
    """Class → rows shown for it: the first ``thumbs`` by path, or a seeded sample of them."""
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
    return thumb_rows


def measure_dataset(manifest_df: pd.DataFrame, root: str | os.PathLike[str] | None = None, *,
                    workers: int | None = None, thumbs: int = 8, seed: int | None = None,
                    near_dup_distance: int = DEFAULT_NEAR_DISTANCE,
                    progress: Callable[[int], None] | None = None, shortcuts: bool = True) -> EdaMeasurement:
    """Measure every image of a manifest: the one pass, then every table and figure of ``eda.json``.

    Args:
        manifest_df: One row per image with ``path`` relative to ``root``; ``label``, ``group``
            and attribute columns are used when present.
        root: Image root; default ``manifest_df.attrs["root"]``.
        workers: Processes for the pass; ``None`` = all cores, ``<= 1`` = this process only.
        thumbs: Thumbnails per class (0 = none).
        seed: ``None`` shows the first ``thumbs`` images of each class (by path); an integer
            shows a sample drawn with that seed. It also seeds the outlier and nearest-distance
            samples of large sets.
        near_dup_distance: Largest perceptual-hash distance (bits of 64) of a near duplicate.
        progress: Called with the number of images done as the pass goes.
        shortcuts: Run the shortcut audit (:mod:`toolkit.data.shortcuts`).

    Returns:
        The :class:`EdaMeasurement`.

    Raises:
        DataError: No ``path`` column, no root, or an empty manifest.
        UsageError: A negative ``thumbs`` or a ``near_dup_distance`` outside 0..32.
    """
    import pandas as pd

    started = time.perf_counter()
    root_path = check_eda_inputs(manifest_df, root, thumbs=thumbs, near_dup_distance=near_dup_distance)
    n_workers = default_workers() if workers is None else max(1, int(workers))

    df = manifest_df.reset_index(drop=True)
    paths = df["path"].astype(str).tolist()
    label = "label" if "label" in df.columns else None
    labels = [_key(v) for v in df[label].tolist()] if label else ["(all)"] * len(df)
    groups = df["group"].tolist() if "group" in df.columns else None
    # Thumbnails are chosen before the pass so workers send pixels only for those few images.
    thumb_rows = _thumbnail_rows(labels, paths, thumbs, seed)

    # ---- the one pass
    pass_start = time.perf_counter()
    measured = measure_images(paths, root_path, {i for rows in thumb_rows.values() for i in rows}, n_workers,
                              progress)
    columns = measured.columns
    ok = np.array(columns["ok"], dtype=bool)
    # Exact integer totals, overall and per class (int64 holds 2**31 images of 65,536 pixels).
    class_names = sorted({labels[i] for i in np.flatnonzero(ok)})
    code = {c: j for j, c in enumerate(class_names)}
    codes = np.array([code.get(c, -1) for c in labels], dtype=np.int64)
    acc_n = np.zeros(len(class_names), np.int64)
    acc_s = np.zeros((len(class_names), 3), np.int64)
    acc_s2 = np.zeros((len(class_names), 3), np.int64)
    np.add.at(acc_n, codes[ok], measured.n[ok])
    np.add.at(acc_s, codes[ok], measured.s[ok])
    np.add.at(acc_s2, codes[ok], measured.s2[ok])
    class_acc = {c: (int(acc_n[j]), [int(v) for v in acc_s[j]], [int(v) for v in acc_s2[j]])
                 for j, c in enumerate(class_names)}
    total_n = int(acc_n.sum())
    total_s = [int(v) for v in acc_s.sum(axis=0)]
    total_s2 = [int(v) for v in acc_s2.sum(axis=0)]
    pass_seconds = time.perf_counter() - pass_start

    # ---- per-image table
    images = pd.DataFrame({"path": paths, "label": labels if label else None})
    if groups is not None:
        images["group"] = [None if is_missing(g) else str(g) for g in groups]
    for k in ("ok", "reason", "bytes", "format", "mode", "frames", "width", "height", "exif_orientation", "grayscale"):
        images[k] = columns[k]
    n_pix = measured.n.astype(np.float64)
    s = measured.s.astype(np.float64)
    s2 = measured.s2.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = s / n_pix[:, None] / 255.0
        stds = np.sqrt(np.maximum(s2 / n_pix[:, None] / 65025.0 - means**2, 0.0))
    for ch, name in enumerate("rgb"):
        images[f"mean_{name}"] = np.where(ok, means[:, ch], np.nan)
        images[f"std_{name}"] = np.where(ok, stds[:, ch], np.nan)
    images["brightness"] = np.where(ok, _luma(means), np.nan)
    images["contrast"] = np.where(ok, stds.mean(axis=1), np.nan)
    for k in LAYOUT_FEATURES:
        images[k] = columns[k]
    width = images["width"].astype("float64").to_numpy()
    height = images["height"].astype("float64").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        images["log_aspect"] = np.log(width / height)
        images["log_pixels"] = np.log(width * height)
        images["log_bytes_per_pixel"] = np.log(images["bytes"].astype("float64").to_numpy() / (width * height))
    score, reasons = outlier_scores(images, ok, seed)
    images["outlier_score"] = score
    images["outlier_reasons"] = reasons
    if not shortcuts or not label:
        shortcut_section = shortcuts_skipped("turned off" if not shortcuts else "no labels")
    else:
        # A label parsed out of the path (--pattern) is in the names by construction: they are not tested.
        known = ok & (images["label"] != _key(None)).to_numpy(bool)  # an image without a label says nothing
        shortcut_section = audit_shortcuts(images[known], group="group" if groups is not None else None,
                                           names=manifest_df.attrs.get("source") != "pattern", seed=seed or 0)

    hashes = hashes_frame(paths, list(zip(columns["sha1"], columns["pixel_hash"], columns["phash"],
                                          columns["phash_flip"], strict=True)))

    results: dict[str, Any] = {
        "version": 1,
        "root": str(root_path),
        "source": manifest_df.attrs.get("source"),
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "settings": {"stats_max_side": STATS_MAX_SIDE, "near_dup_distance": int(near_dup_distance),
                     "thumbs": int(thumbs), "seed": seed, "workers": n_workers},
        "images": {"total": len(df), "readable": int(ok.sum()), "unreadable": int((~ok).sum())},
        "label_column": label,
    }

    # ---- targets and attributes
    categorical, numeric, ident = _classify_columns(df, label)
    results["targets"] = {str(col): _target_summary(_counts(df[col].tolist()))
                          for col in ([label] if label else []) + categorical}
    attributes: dict[str, Any] = {}
    attribute_values: dict[str, np.ndarray] = {}
    for col in numeric:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        attribute_values[str(col)] = values
        attributes[str(col)] = {"kind": "numeric", "summary": _summary(values),
                                "histogram": _histogram(values, 30), "plot": None}
    for col in ident:
        attributes[str(col)] = {"kind": "identifier", "n_unique": int(df[col].nunique(dropna=True))}
    results["attributes"] = attributes

    # ---- groups
    results["groups"] = None
    group_sizes = None
    if groups is not None:
        sizes = images["group"].value_counts(dropna=True)
        group_sizes = sizes.to_numpy(np.float64)
        mixed = 0
        if label:
            mixed = int((images.dropna(subset=["group"]).groupby("group")["label"].nunique() > 1).sum())
        results["groups"] = {
            "column": "group", "n_groups": int(len(sizes)),
            "images_per_group": _summary(sizes.to_numpy()),
            "largest": [[str(g), int(n)] for g, n in sizes.head(10).items()],
            "mixed_label_groups": mixed,
            "plot": None,
        }

    # ---- sizes, formats, modes, grayscale
    good = images[ok]
    wh = good.groupby(["width", "height"]).size().sort_values(ascending=False)
    aspect = (good["width"].astype(float) / good["height"].astype(float)).to_numpy()
    results["sizes"] = {
        "width": _summary(good["width"].to_numpy(np.float64), 2),
        "height": _summary(good["height"].to_numpy(np.float64), 2),
        "aspect_ratio": _summary(aspect, 4),
        "common": [[int(w), int(h), int(n)] for (w, h), n in wh.head(10).items()],
        "plot": None,
    }
    results["file_formats"] = _counts(images.loc[images["format"].notna(), "format"])
    results["image_modes"] = _counts(images.loc[images["mode"].notna(), "mode"])
    results["frames_gt1"] = int((images["frames"].fillna(1).astype(int) > 1).sum())
    gray = good["grayscale"].astype(bool)
    per_class_gray = {}
    for c, sub in good.groupby("label" if label else np.zeros(len(good)), sort=False):
        key = str(c) if label else "(all)"
        cnt = int(sub["grayscale"].astype(bool).sum())
        per_class_gray[key] = {"count": cnt, "share": _r(cnt / len(sub), 4)}
    results["grayscale"] = {"count": int(gray.sum()), "share": _r(gray.mean(), 4) if len(gray) else None,
                            "per_class": dict(sorted(per_class_gray.items(), key=lambda kv: _natural(kv[0])))}

    # ---- channel statistics (exact integer sums)
    results["stats"] = {**_mean_std(total_n, total_s, total_s2), "pixels": int(total_n),
                        "images": int(ok.sum()), "max_side": STATS_MAX_SIDE,
                        "per_class": {c: _mean_std(*class_acc[c]) for c in sorted(class_acc, key=_natural)}}
    bright = good["brightness"].to_numpy(np.float64)
    results["brightness"] = {
        "summary": _summary(bright), "histogram": _histogram(bright, 30),
        "per_class_median": {str(c): _r(v) for c, v in good.groupby("label")["brightness"].median().items()}
        if label else None,
        "plot": None,
    }
    results["channel_plot"] = None
    results["thumbnails"] = {}
    thumbnails = {c: [(measured.thumbnails.get(i), paths[i]) for i in rows] for c, rows in thumb_rows.items()}

    # ---- unreadable
    bad = images[~ok]
    results["unreadable"] = [{"path": p, "reason": r} for p, r in zip(bad["path"], bad["reason"], strict=True)]

    # ---- duplicates
    duplicates, pairs, example_pairs = _duplicates(hashes[ok].reset_index(drop=True), images, near_dup_distance,
                                                   label, groups is not None, seed)
    results["duplicates"] = duplicates

    # ---- outliers
    order = np.argsort(-np.nan_to_num(score, nan=-1.0), kind="stable")
    top = [int(i) for i in order[:50] if ok[i] and np.isfinite(score[i])]
    results["outliers"] = {
        "method": "mean distance to the 5 nearest images of the same class in standardised feature "
                  "space, divided by the class's median such distance",
        "features": dict(OUTLIER_FEATURES), "threshold": OUTLIER_THRESHOLD,
        "count": int(np.sum(np.nan_to_num(score, nan=0.0) > OUTLIER_THRESHOLD)),
        "items": [{"path": paths[i], "label": labels[i] if label else None, "score": _r(score[i], 2),
                   "reasons": reasons[i]} for i in top],
        "plot": None,
    }
    results["shortcuts"] = shortcut_section
    results["timing"] = {"seconds": None, "pass_seconds": _r(pass_seconds, 2),
                         "images_per_second": _r(len(df) / pass_seconds, 1) if pass_seconds > 0 else None}
    return EdaMeasurement(results=results, root=root_path, images=images, hashes=hashes, pairs=pairs,
                          attribute_values=attribute_values, group_sizes=group_sizes, thumbnails=thumbnails,
                          outlier_rows=top[:16], example_pairs=example_pairs, started=started)


def _duplicates(hashes: pd.DataFrame, images: pd.DataFrame, max_distance: int, label: str | None,
                has_groups: bool, seed: int | None) -> tuple[dict[str, Any], pd.DataFrame, list[int]]:
    """The ``duplicates`` section, the pair table with both images' labels/groups, and example rows."""
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
    nn = nearest_distances(h, g, seed)
    nn_hist = np.bincount(nn, minlength=65)[:65] if nn.size else np.zeros(65, np.int64)

    # Examples: a few pairs, label conflicts first (what a person most needs to see).
    example_rows = np.concatenate([np.flatnonzero(label_conf), np.flatnonzero(~label_conf)])[:12]

    counts = pairs["kind"].value_counts()
    section = {
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
        "plot": None,
        "examples": None,
        "file": None,
    }
    return section, table, [int(r) for r in example_rows]
