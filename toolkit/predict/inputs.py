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

_SHOWN = 10


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


def _ids(df: pd.DataFrame) -> list[str]:
    """The manifest's ``id`` column when unique, else file stems when unique, else relative paths."""
    if "id" in df.columns and df["id"].notna().all() and df["id"].astype(str).is_unique:
        return df["id"].astype(str).tolist()
    stems = [Path(p).stem for p in df["path"]]
    if len(set(stems)) == len(stems):
        return stems
    return df["path"].astype(str).tolist()


def _is_imagefolder(root: Path, classes: list[str], extensions: list[str]) -> bool:
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    entries = [e for e in os.listdir(root) if not e.startswith(".")]
    dirs = [e for e in entries if (root / e).is_dir()]
    top_images = [e for e in entries if not (root / e).is_dir() and e.lower().endswith(exts)]
    return bool(dirs) and not top_images and all(d in classes for d in dirs)


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
        root: folder a manifest's paths are relative to (default: the manifest's folder).

    Raises:
        DataError: missing data, no images, bad manifest, labels with unknown class names.
    """
    from toolkit.data.sources import manifest_from_folder, manifest_from_table, manifest_from_unlabeled
    from toolkit.data.targets import apply_targets

    path = Path(os.path.abspath(os.path.expanduser(os.fspath(data))))
    if not path.exists():
        raise DataError(f"{path} does not exist", "pass a folder of images or a CSV/Parquet manifest")
    extensions = list(recipe.data.extensions)
    label_col = recipe.data.label_column
    single = len(heads) == 1
    if path.is_dir():
        if single and _is_imagefolder(path, classes[heads[0]], extensions):
            df = manifest_from_folder(path, extensions, label_column=label_col)
            source = "imagefolder"
        else:
            df = manifest_from_unlabeled(path, extensions)
            source = "folder"
        name = path.name
    elif path.suffix.lower() in (".csv", ".parquet", ".pq"):
        path_col = "path"
        if recipe.data.path_column != "path":
            probe = pd.read_csv(path, nrows=0) if path.suffix.lower() == ".csv" else None
            cols = list(probe.columns) if probe is not None else list(pd.read_parquet(path).columns)
            if "path" not in cols and recipe.data.path_column in cols:
                path_col = recipe.data.path_column
        df = manifest_from_table(path, root=root, path_column=path_col, label_column=label_col, require_label=False)
        source = "manifest"
        name = path.stem
    else:
        raise DataError(f"{path} is neither a folder nor a .csv/.parquet manifest",
                        "pass a folder of images or a CSV/Parquet manifest with a path column")
    root_path = Path(df.attrs["root"])
    if len(df) == 0:
        raise DataError(f"no images to predict in {path}", "check the folder or the manifest")
    try:
        derived = apply_targets(df, recipe.targets, require_label=False)
    except DataError:
        derived = df  # columns that look like targets but do not derive cleanly: predict without scoring
    targets = _labels(derived, heads, classes, str(path), strict=source != "folder")
    df = df.reset_index(drop=True)
    ids = _ids(df)
    df = df.drop(columns=["id"]) if "id" in df.columns else df
    df.insert(0, "id", ids)
    if not df["id"].is_unique:
        dup = df.loc[df["id"].duplicated(), "id"].astype(str).tolist()
        raise DataError(f"{path}: duplicate ids {examples(dup)}", "give every image a unique id column")
    return PredictionInput(df=df, root=root_path, name=name, source=source, targets=targets)
