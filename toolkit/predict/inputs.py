"""What ``clsctl predict`` reads: an unlabeled folder, a manifest, or an ImageFolder (which it also scores).

A folder is an ImageFolder when it holds no images at its top level and every subfolder is named
after one of the run's classes; anything else is a folder of unlabeled images, listed recursively.
A manifest is a CSV/Parquet file with a path column, relative to ``root`` (default: its folder); it
is labeled when it holds the run's target columns with known class names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.config.schema import Recipe
from toolkit.errors import DataError, examples
from toolkit.store.tables import read_table


@dataclass
class PredictionInput:
    """The images to predict, with their ids and (when known) their labels.

    Attributes:
        df: one row per image: ``id``, ``path`` (relative to ``root``) and any source columns.
        root: absolute folder the paths are relative to.
        name: a default name for the prediction set (the folder's or the manifest's name).
        source: ``folder`` (unlabeled), ``imagefolder`` or ``manifest``.
        targets: head → class index per row, for labeled data; empty when unlabeled.
    """

    df: pd.DataFrame
    root: Path
    name: str
    source: str
    targets: dict[str, np.ndarray]

    @property
    def labeled(self) -> bool:
        return bool(self.targets)

    @property
    def paths(self) -> list[str]:
        """Absolute image paths."""
        return [str(self.root / p) for p in self.df["path"]]


def _labels(df: pd.DataFrame, heads: list[str], classes: dict[str, list[str]], where: str,
            strict: bool) -> dict[str, np.ndarray]:
    """Class indices per head when every head column is present; {} otherwise."""
    if not all(h in df.columns for h in heads):
        return {}
    out: dict[str, np.ndarray] = {}
    for h in heads:
        values = df[h].astype(str).tolist()
        index = {c: i for i, c in enumerate(classes[h])}
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            if not strict:
                return {}
            raise DataError(f"{where}: column `{h}` holds class name(s) the run does not know: {examples(unknown)}",
                            f"the run's classes are {', '.join(classes[h])}; rename or drop the column to predict "
                            "without scoring")
        out[h] = np.array([index[v] for v in values], dtype=np.int64)
    return out


def read_input(data: str | Path, recipe: Recipe, heads: list[str], classes: dict[str, list[str]], *,
               root: str | Path | None = None) -> PredictionInput:
    """List the images to predict and find their labels, if any.

    Args:
        data: a folder (ImageFolder or unlabeled) or a ``.csv``/``.parquet`` manifest.
        recipe: the run's recipe (image extensions, path/label column names, ``[targets]``).
        heads: the run's target heads.
        classes: the run's class list per head.
        root: folder a manifest's paths are relative to (default: the manifest's folder, or the folder
            next to it that holds its images).

    Raises:
        DataError: missing data, no images, bad manifest, labels with unknown class names.
    """
    from toolkit.data.sources import manifest_from_path, row_ids
    from toolkit.data.targets import apply_targets

    path = Path(os.path.abspath(os.path.expanduser(os.fspath(data))))
    if not path.exists():
        raise DataError(f"{path} does not exist", "pass a folder of images or a CSV/Parquet manifest")
    is_table = path.is_file()
    if is_table and path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise DataError(f"{path} is neither a folder nor a .csv/.parquet manifest",
                        "pass a folder of images or a CSV/Parquet manifest with a path column")
    path_col = "path"
    if is_table and recipe.data.path_column != "path":
        columns = read_table(path, what="manifest").columns
        if "path" not in columns and recipe.data.path_column in columns:
            path_col = recipe.data.path_column
    # A folder is scored as an ImageFolder only when its subfolders are this run's classes.
    known = classes[heads[0]] if len(heads) == 1 else ()
    df = manifest_from_path(path, root=root if is_table else None, extensions=list(recipe.data.extensions),
                            label_column=recipe.data.label_column, path_column=path_col, known_classes=known)
    source = {"folder": "imagefolder", "unlabeled": "folder", "table": "manifest"}[df.attrs["source"]]
    name = path.stem if is_table else path.name
    root_path = Path(df.attrs["root"])
    if len(df) == 0:
        raise DataError(f"no images to predict in {path}", "check the folder or the manifest")
    try:
        derived = apply_targets(df, recipe.targets, require_label=False)
    except DataError:
        derived = df  # columns that look like targets but do not derive cleanly: predict without scoring
    targets = _labels(derived, heads, classes, str(path), strict=source != "folder")
    df = df.reset_index(drop=True)
    ids = row_ids(df, stems=True)
    df = df.drop(columns=["id"]) if "id" in df.columns else df
    df.insert(0, "id", ids)
    if not df["id"].is_unique:
        dup = df.loc[df["id"].duplicated(), "id"].astype(str).tolist()
        raise DataError(f"{path}: duplicate ids {examples(dup)}", "give every image a unique id column")
    return PredictionInput(df=df, root=root_path, name=name, source=source, targets=targets)
