"""What ``clsctl predict`` reads: an unlabeled folder, a manifest, or an ImageFolder (which it also scores).

A folder is an ImageFolder when it holds no images at its top level and its subfolders are named
after the run's classes; anything else is a folder of unlabeled images, listed recursively. Subfolders
of an ImageFolder that are not classes of the run are predicted but not scored, with a note saying so
(the user still gets every image's prediction, and a score that is not diluted by classes the model
cannot know). A manifest is a CSV/Parquet file with a path column, relative to ``root`` (default: its
folder); it is labeled when it holds the run's target columns with known class names. Rows whose label
is empty are predicted and left out of the score; a label the run does not know is an error.
:func:`check_input_images` decodes every image before any model runs: unreadable ones are all named at
once, or left out with ``data.on_bad_image = "skip"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from toolkit.config.schema import Recipe, TargetsConfig
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
        targets: head → class index per row, -1 where the row is not scored; empty when no row is.
        unscored: why rows with an index of -1 are not scored: ``unlabeled`` (an empty label) and
            ``unknown_class`` (an ImageFolder subfolder that is not a class of the run) → row count.
        notes: warnings for the user, one line each.
        skipped: rows left out as unreadable (``data.on_bad_image = "skip"``): ``{"id", "path", "reason"}``.
    """

    df: pd.DataFrame
    root: Path
    name: str
    source: str
    targets: dict[str, np.ndarray]
    unscored: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    unscored_rows: dict[str, np.ndarray] = field(default_factory=dict)  # reason → rows, the counts' source

    @property
    def labeled(self) -> bool:
        return bool(self.targets)

    @property
    def scored_rows(self) -> np.ndarray:
        """Indices of the rows with a label of every head."""
        if not self.targets:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.all([t >= 0 for t in self.targets.values()], axis=0))

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


def _source_columns(targets: TargetsConfig, column: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The manifest columns a target column is read or derived from (``[targets]`` maps, bins, combines)."""
    if column in seen:  # a map that replaces its own source column (a map named `label` over `label`)
        return {column}
    seen = seen | {column}
    if column in targets.combine:
        parts = list(targets.combine[column].columns)
    elif column in targets.bins:
        parts = [targets.bins[column].column]
    elif column in targets.maps:
        parts = [targets.maps[column].column]
    else:
        return {column}
    return set().union(*(_source_columns(targets, part, seen) for part in parts))


def _empty(values: pd.Series) -> np.ndarray:
    return (values.isna() | values.astype(str).str.strip().eq("")).to_numpy()


def _row_labels(df: pd.DataFrame, recipe: Recipe, heads: list[str], classes: dict[str, list[str]], where: str,
                strict: bool, skip: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Class indices per head, -1 in rows not scored (``skip``, or an empty label); and which rows were empty.

    Only rows with every label filled in are derived and checked: a test manifest often has the label
    column of its training manifest with most cells blank, and a blank is not a class name.
    """
    from toolkit.data.targets import apply_targets

    sources = sorted(set().union(*(_source_columns(recipe.targets, h) for h in heads)) & set(df.columns))
    none = np.zeros(len(df), dtype=bool)
    if not sources:
        return {}, none
    empty = np.any([_empty(df[c]) for c in sources], axis=0) & ~skip
    keep = ~empty & ~skip
    if not keep.any():
        return {}, empty
    try:
        derived = apply_targets(df[keep], recipe.targets, require_label=False)
    except DataError:
        derived = df[keep]  # columns that look like targets but do not derive cleanly: predict without scoring
    found = _labels(derived, heads, classes, where, strict)
    if not found:
        return {}, none
    out = {}
    for h, index in found.items():
        out[h] = np.full(len(df), -1, dtype=np.int64)
        out[h][keep] = index
    return out, empty


def _image_folder_with_unknown_classes(path: Path, df: pd.DataFrame, recipe: Recipe, known: list[str]
                                       ) -> pd.DataFrame | None:
    """``path`` as an ImageFolder when it looks like one whose subfolders are only partly the run's classes.

    Every image must lie in a subfolder and at least one subfolder must be a class; otherwise the folder
    stays a folder of unlabeled images (test sets split into ``batch1/``, ``batch2/``... are common).
    """
    from toolkit.data.sources import manifest_from_path

    tops = [PurePosixPath(p).parts for p in df["path"]]
    if not known or any(len(parts) < 2 for parts in tops) or not {parts[0] for parts in tops} & set(known):
        return None
    folder = manifest_from_path(path, extensions=list(recipe.data.extensions), label_column=recipe.data.label_column)
    return folder if folder.attrs["source"] == "folder" else None


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
    known = classes[heads[0]] if len(heads) == 1 else []
    df = manifest_from_path(path, root=root if is_table else None, extensions=list(recipe.data.extensions),
                            label_column=recipe.data.label_column, path_column=path_col, known_classes=known)
    notes: list[str] = []
    skip = np.zeros(len(df), dtype=bool)
    if df.attrs["source"] == "unlabeled":
        folder = _image_folder_with_unknown_classes(path, df, recipe, known)
        if folder is not None:
            df = folder
            label = df[recipe.data.label_column].astype(str)
            skip = ~label.isin(known).to_numpy()
            unknown = sorted(set(label[skip]))
            notes.append(f"{path}: subfolder(s) {examples(unknown)} are not classes of the run (its classes: "
                         f"{', '.join(known)}); their {int(skip.sum())} image(s) are predicted but not scored")
    source = {"folder": "imagefolder", "unlabeled": "folder", "table": "manifest"}[df.attrs["source"]]
    name = path.stem if is_table else path.name
    root_path = Path(df.attrs["root"])
    if len(df) == 0:
        raise DataError(f"no images to predict in {path}", "check the folder or the manifest")
    df = df.reset_index(drop=True)
    targets, empty = _row_labels(df, recipe, heads, classes, str(path), strict=source != "folder", skip=skip)
    unscored = {"unlabeled": empty, "unknown_class": skip} if targets else {}
    ids = row_ids(df, stems=True)
    df = df.drop(columns=["id"]) if "id" in df.columns else df
    df.insert(0, "id", ids)
    if not df["id"].is_unique:
        dup = df.loc[df["id"].duplicated(), "id"].astype(str).tolist()
        raise DataError(f"{path}: duplicate ids {examples(dup)}", "give every image a unique id column")
    return PredictionInput(df=df, root=root_path, name=name, source=source, targets=targets,
                           unscored={k: int(v.sum()) for k, v in unscored.items() if v.any()}, notes=notes,
                           unscored_rows={k: v for k, v in unscored.items() if v.any()})


def check_input_images(inputs: PredictionInput, loader: Callable[[str], np.ndarray], on_bad_image: str,
                       sample: pd.DataFrame | None = None) -> PredictionInput:
    """Decode every image once before predicting (into the decoded cache the models read through, when
    ``loader`` is one): fail naming every unreadable one, or leave their rows out (``on_bad_image = "skip"``).

    A skipped image gets no prediction and no submission row, and a warning says so: clsctl never makes
    up an answer for an image it could not read, and a made-up row would be submitted without anyone
    noticing. A sample submission that lists a skipped image is therefore refused, naming it.

    Raises:
        DataError: Unreadable images with ``on_bad_image = "fail"``; with ``skip``, none left to predict, or
            a sample submission that lists a skipped image.
    """
    from toolkit.imaging.cache import check_images
    from toolkit.runtime import cores

    paths = inputs.paths
    bad = check_images(paths, loader, cores()).errors
    if not bad:
        return inputs
    reasons = dict(bad)
    rows = np.array([p in reasons for p in paths], dtype=bool)
    listed = [f"{rel}: {reasons[full]}" for rel, full in zip(inputs.df["path"], paths, strict=True) if full in reasons]
    if on_bad_image != "skip":
        raise DataError(f"{len(listed)} unreadable image(s): {'; '.join(listed[:10])}"
                        f"{f' (and {len(listed) - 10} more)' if len(listed) > 10 else ''}",
                        "remove or replace them, or leave them out of the folder or manifest; a run trained with "
                        "data.on_bad_image = \"skip\" leaves them out of its predictions")
    if rows.all():
        raise DataError(f"none of the {len(paths)} image(s) to predict can be read: {'; '.join(listed[:3])}",
                        "check the folder or the manifest")
    skipped = [{"id": str(i), "path": str(p), "reason": reasons[str(inputs.root / p)]}
               for i, p in zip(inputs.df["id"][rows], inputs.df["path"][rows], strict=True)]
    if sample is not None:
        from toolkit.predict.submission import sample_ids_among

        asked = sample_ids_among(sample, inputs.df["id"].astype(str).tolist(), inputs.df["path"].astype(str).tolist(),
                                 np.flatnonzero(rows).tolist())
        if asked:
            raise DataError(f"the sample submission lists {len(asked)} image(s) that cannot be read: {examples(asked)}",
                            "a submission answers every id: replace those images, or predict without "
                            "--sample-submission and fill the rows yourself")
    keep = ~rows
    targets = {h: t[keep] for h, t in inputs.targets.items()}
    unscored_rows = {k: m[keep] for k, m in inputs.unscored_rows.items()}
    if targets and not np.all([t >= 0 for t in targets.values()], axis=0).any():
        targets, unscored_rows = {}, {}  # the unreadable images were the only labelled ones: nothing to score
    note = (f"skipped {len(skipped)} unreadable image(s) (data.on_bad_image = \"skip\"); they are not in the "
            f"predictions or the submission: {examples(listed)}")
    return replace(inputs, df=inputs.df[keep].reset_index(drop=True), targets=targets,
                   unscored={k: int(m.sum()) for k, m in unscored_rows.items() if m.any()},
                   unscored_rows={k: m for k, m in unscored_rows.items() if m.any()},
                   notes=[*inputs.notes, note], skipped=skipped)
