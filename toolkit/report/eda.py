"""The EDA folder: what ``clsctl eda`` writes from the measurements of :mod:`toolkit.data.eda`.

:func:`run_eda` measures every image once, on all cores (:func:`toolkit.data.eda.measure_dataset`),
then writes into one folder:

* ``eda.json``: every figure, machine-readable (its keys are listed in :mod:`toolkit.data.eda`).
* ``eda.html``: a static page that opens from disk (no server, no network, no scripts); it shows
  the PNGs below by relative path.
* PNG plots (class counts, attributes, group sizes, image sizes, brightness, channel means,
  nearest-hash distances), thumbnail grids (``thumbs/``), outliers and duplicate examples.
* ``hashes.parquet``: per image ``path, sha1, pixel_hash, phash, phash_flip`` (see
  :mod:`toolkit.imaging.hashing`), what ``clsctl split --hashes`` reads.
* ``duplicates.parquet``: the duplicate pairs (``a, b, kind, distance``) with both labels/groups.
* ``images.parquet``: the per-image table (size, format, mode, EXIF orientation tag, grayscale,
  channel means, the outlier features and score, unreadable reason).

A rerun into the same folder replaces these files and removes the ones the previous run listed
but this one did not write (a class that is gone, thumbnails no longer asked for).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.data.eda import EdaMeasurement, check_eda_inputs, measure_dataset
from toolkit.data.eda_pass import THUMB_SIDE
from toolkit.data.listing import is_inside
from toolkit.errors import ImageError, UsageError
from toolkit.imaging.decode import load_image
from toolkit.imaging.duplicates import DEFAULT_NEAR_DISTANCE
from toolkit.progress import Progress, as_progress
from toolkit.report.html import PageFiles
from toolkit.store.tables import write_table

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

__all__ = ["check_out_dir", "default_out_dir", "eda_from_path", "run_eda"]


def default_out_dir(data: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None) -> Path:
    """``./eda/<last part of DATA>``: next to where the command runs, never inside the data.

    Run from inside ``image_root`` (``clsctl eda .`` in an ImageFolder), that folder would be in the
    data, so the default moves next to the data: ``<parent of the root>/eda/<last part of DATA>``.

    Raises:
        UsageError: The root has no parent to write next to (the file-system root).
    """
    absolute = Path(os.path.abspath(os.path.expanduser(os.fspath(data))))
    name = absolute.name or "data"
    out = Path("eda") / name
    if image_root is None or not is_inside(out, image_root):
        return out
    root = Path(os.path.abspath(image_root))
    out = root.parent / "eda" / name
    if root.parent == root or is_inside(out, image_root):
        raise UsageError(f"no place for the eda folder outside the image root {root}",
                         "pass --out a folder outside the data")
    return out


def _listed_root(manifest_df: pd.DataFrame, root: str | os.PathLike[str] | None) -> str | None:
    """The image root when the source lists a folder (then anything written into it is read back)."""
    if manifest_df.attrs.get("source") == "table":
        return None  # a table names its images: files beside them are never read as data
    found = root if root is not None else manifest_df.attrs.get("root")
    return None if found is None else os.fspath(found)


def check_out_dir(manifest_df: pd.DataFrame, root: str | os.PathLike[str] | None,
                  out_dir: str | os.PathLike[str]) -> None:
    """Refuse an output folder inside a listed image root: its PNGs would be read as images.

    In an ImageFolder the folder would become a class, in a folder of test images the plots
    would be predicted. Symlinks count where they lead.

    Raises:
        UsageError: ``out_dir`` is inside the root of a folder, pattern or builtin source.
    """
    image_root = _listed_root(manifest_df, root)
    if image_root is not None and is_inside(out_dir, image_root):
        raise UsageError(
            f"--out {out_dir} is inside the image root {image_root}: its plots would be read as images "
            "(a new class) the next time the data is listed",
            "pass --out a folder outside the data, or leave it out (the default is outside the data)",
        )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "x"


def _thumbnail(path: Path) -> Image.Image | None:
    """The image at thumbnail size, or None when it cannot be read."""
    from PIL import Image

    try:
        image = load_image(path)
    except ImageError:
        return None
    image = image.copy()
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    return image


def run_eda(manifest_df: pd.DataFrame, root: str | os.PathLike[str] | None = None,
            out_dir: str | os.PathLike[str] = "eda", *, workers: int | None = None, thumbs: int = 8,
            seed: int | None = None, near_dup_distance: int = DEFAULT_NEAR_DISTANCE,
            progress: Progress | bool | None = None, shortcuts: bool = True) -> dict[str, Any]:
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
        progress: Where progress goes (the CLI's display; True: plain lines; None/False: nothing).
        shortcuts: Run the shortcut audit (:mod:`toolkit.data.shortcuts`).

    Returns:
        The content of ``eda.json`` (see :mod:`toolkit.data.eda` for its keys).

    Raises:
        DataError: No ``path`` column, no root, or an empty manifest.
        UsageError: A negative ``thumbs``, a ``near_dup_distance`` outside 0..32, or ``out_dir``
            inside the image root of a source that lists a folder (see :func:`check_out_dir`).
    """
    # The arguments are checked before the folder is made, the folder before the long pass.
    check_eda_inputs(manifest_df, root, thumbs=thumbs, near_dup_distance=near_dup_distance)
    check_out_dir(manifest_df, root, out_dir)
    files = PageFiles(out_dir)
    task = as_progress(progress).task("eda", len(manifest_df))
    try:
        measured = measure_dataset(manifest_df, root, workers=workers, thumbs=thumbs, seed=seed,
                                   near_dup_distance=near_dup_distance, progress=task.advance,
                                   shortcuts=shortcuts)
    finally:
        task.close()
    return _write(measured, files)


def _write(measured: EdaMeasurement, files: PageFiles) -> dict[str, Any]:
    """Draw the figures, fill in their file names and write the folder; return the ``eda.json`` content."""
    from toolkit.report import eda_figures as plots  # matplotlib loads only here
    from toolkit.report.eda_html import render_eda_html
    from toolkit.store.atomic import atomic_write_bytes, atomic_write_json, read_json

    out, report, images = files.folder, measured.results, measured.images
    label = report["label_column"]
    write_table(measured.hashes, out / "hashes.parquet")
    files.add("hashes.parquet")

    for col, target in report["targets"].items():
        target["plot"] = files.write(f"counts_{_slug(col)}.png", plots.bar_counts(target["counts"], col))
    for col, values in measured.attribute_values.items():
        report["attributes"][col]["plot"] = files.write(f"attr_{_slug(col)}.png", plots.histogram(values, col))
    if report["groups"] is not None:
        report["groups"]["plot"] = files.write("group_sizes.png", plots.histogram(
            measured.group_sizes, "images per group", integer=True))
    good = measured.readable
    aspect = (good["width"].astype(float) / good["height"].astype(float)).to_numpy()
    report["sizes"]["plot"] = files.write("sizes.png", plots.sizes(good["width"].to_numpy(np.float64),
                                                                   good["height"].to_numpy(np.float64), aspect))
    report["brightness"]["plot"] = files.write("brightness.png", plots.brightness(good, label))
    report["channel_plot"] = files.write("channels.png", plots.channel_means(good))
    for k, (c, tiles) in enumerate(measured.thumbnails.items()):
        report["thumbnails"][c] = files.write(f"thumbs/{k:03d}_{_slug(c)[:40]}.png", plots.grid(tiles))

    duplicates, pairs = report["duplicates"], measured.pairs
    write_table(pairs, out / "duplicates.parquet")
    files.add("duplicates.parquet")
    duplicates["plot"] = files.write("near_distance.png", plots.nearest_distance(
        np.asarray(duplicates["nearest_distance"]["counts"]), duplicates["max_distance"]))
    examples = []
    for r in measured.example_pairs:
        row = pairs.iloc[r]
        caption = f"{row['kind']} d={int(row['distance'])}"
        if label:
            caption += f" {row['label_a']}|{row['label_b']}"
        examples.append((_thumbnail(measured.root / row["a"]), _thumbnail(measured.root / row["b"]), caption))
    duplicates["examples"] = files.write("duplicates.png", plots.pairs_strip(examples)) if examples else None
    duplicates["file"] = "duplicates.parquet"

    if measured.outlier_rows:
        tiles = [(_thumbnail(measured.root / images.at[i, "path"]),
                  f"{images.at[i, 'path']}  z={images.at[i, 'outlier_score']:.1f}") for i in measured.outlier_rows]
        report["outliers"]["plot"] = files.write("outliers.png", plots.grid(tiles, columns=8, captions=True))

    write_table(images, out / "images.parquet")
    files.add("images.parquet")

    report["timing"]["seconds"] = round(time.perf_counter() - measured.started, 2)
    report["files"] = sorted({*files.names, "eda.html", "eda.json"})

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


def eda_from_path(data: str | os.PathLike[str], *, manifest: str | os.PathLike[str] | None = None,
                  pattern: str | None = None, group: str | None = None, out: str | os.PathLike[str] | None = None,
                  workers: int | None = None, thumbs: int = 8, seed: int | None = None,
                  near_dup_distance: int | None = None, progress: Progress | bool | None = None,
                  shortcuts: bool = True) -> tuple[dict[str, Any], Path]:
    """``clsctl eda``: find out what a path holds, measure every image and write the EDA folder.

    Args:
        data: An ImageFolder root, a folder of unlabeled images, a manifest table, or the root
            ``manifest`` / ``pattern`` paths are relative to (see
            :func:`toolkit.data.sources.manifest_from_path`).
        manifest: A CSV/Parquet table with a ``path`` column relative to ``data``.
        pattern: A regex with named groups over each relative path (``label`` is the class).
        group: A column that ties images together (photo, person), copied into ``group``.
        out: Folder to write into, outside the data; default :func:`default_out_dir` of ``data``.
        workers: Processes for the pass; ``None`` = all cores.
        thumbs: Thumbnails per class (0 = none).
        seed: Show a seeded sample of each class instead of its first images.
        near_dup_distance: Largest perceptual-hash distance of a near duplicate; None = the default.
        progress: Where progress goes (see :func:`run_eda`).
        shortcuts: Run the shortcut audit.

    Returns:
        ``(eda.json content, the folder written)``.

    Raises:
        UsageError: Conflicting or out-of-range options.
        DataError: What the source finds wrong, or a manifest without images.
    """
    from toolkit.data.sources import manifest_from_path

    df = manifest_from_path(data, manifest=manifest, pattern=pattern, group=group)
    out_dir = Path(out) if out is not None else default_out_dir(data, _listed_root(df, None))
    report = run_eda(df, None, out_dir, workers=workers, thumbs=thumbs, seed=seed, progress=progress,
                     near_dup_distance=DEFAULT_NEAR_DISTANCE if near_dup_distance is None else near_dup_distance,
                     shortcuts=shortcuts)
    return report, out_dir
