"""From a recipe to what the trainer needs: the manifest, targets per head, class lists and folds.

numpy and pandas are imported where they are used, so :func:`check_data_source` answers before any
heavy library loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.config.schema import DataConfig, Recipe
from toolkit.errors import DataError, RecipeError, UsageError, examples
from toolkit.store.tables import RESERVED_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from toolkit.store import Run



@dataclass
class TrainingData:
    """The manifest with everything derived from it that training and OOF writing need."""

    df: pd.DataFrame
    root: Path
    heads: list[str]  # target columns; one entry for a single-head model
    classes: dict[str, list[str]]  # class list per head, in index order
    targets: np.ndarray  # int64 [N, len(heads)]
    folds: np.ndarray  # int64 [N]; -1 = never held out (always trained on)
    ids: list[str] = field(default_factory=list)

    @property
    def multi_head(self) -> bool:
        return len(self.heads) > 1

    @property
    def fold_ids(self) -> list[int]:
        import numpy as np

        return sorted(int(f) for f in np.unique(self.folds) if f >= 0)

    def without(self, rows: Sequence[int]) -> TrainingData:
        """The same data less ``rows`` (positions); classes stay as they were, folds keep their numbers."""
        import numpy as np

        keep = np.ones(len(self.df), dtype=bool)
        keep[np.asarray(rows, dtype=np.int64)] = False
        return TrainingData(df=self.df[keep].reset_index(drop=True), root=self.root, heads=self.heads,
                            classes=self.classes, targets=self.targets[keep], folds=self.folds[keep],
                            ids=[i for i, k in zip(self.ids, keep, strict=True) if k])

    def class_counts(self, rows: np.ndarray, head: int = 0) -> list[int]:
        """Members of each class of ``head`` among ``rows``."""
        import numpy as np

        n = len(self.classes[self.heads[head]])
        return np.bincount(self.targets[rows, head], minlength=n).tolist()


def _folds(df: pd.DataFrame, recipe: Recipe, label: str) -> np.ndarray:
    import numpy as np
    import pandas as pd

    split = recipe.split
    if split.fold_column in df.columns:
        values = pd.to_numeric(df[split.fold_column], errors="coerce")
        if values.isna().any():
            bad = df.loc[values.isna(), "path"].head(5).tolist()
            raise DataError(f"column `{split.fold_column}` has missing or non-integer values (e.g. rows {bad})",
                            "re-create it with `clsctl split`, or drop the column to let the recipe's [split] decide")
        return values.astype(np.int64).to_numpy()
    from toolkit.data.folds import assign_folds

    group = split.group or ("group" if "group" in df.columns else None)
    folds = assign_folds(df, folds=split.folds, group=group, stratify=split.stratify or label,
                         holdout=split.holdout, seed=split.seed)
    return np.asarray(folds, dtype=np.int64)


def check_data_source(data: DataConfig) -> None:
    """The recipe names labeled data to train on (checked without reading it).

    Raises:
        RecipeError: Neither ``data.root`` nor ``data.manifest`` is set, or the data is unlabeled.
    """
    if not (data.root or data.manifest):
        raise RecipeError("the recipe names no data: data.root and data.manifest are both unset",
                          'set data.root = "path/to/images" (or "builtin:digits")')
    if data.unlabeled:
        raise RecipeError("data.unlabeled = true: training needs labels", "point data.root at labeled data")


def load_training_data(recipe: Recipe) -> TrainingData:
    """Read the recipe's data source, derive targets, and assign folds.

    No image is opened here: the trainer checks every one before training (see
    :func:`toolkit.imaging.cache.check_images`) and fails or skips them as ``data.on_bad_image`` says.

    Raises:
        RecipeError: The recipe names no labeled data.
        DataError: missing columns, empty classes, unusable folds.
    """
    import numpy as np

    from toolkit.data.sources import load_manifest, row_ids
    from toolkit.data.targets import apply_targets, class_order, encode_labels, target_columns

    check_data_source(recipe.data)
    df = load_manifest(recipe.data)
    root = Path(df.attrs["root"])
    df = apply_targets(df, recipe.targets)
    heads = target_columns(recipe.targets)
    classes = {h: class_order(df, h, recipe.targets) for h in heads}
    for h, names in classes.items():
        clash = [c for c in names if c in RESERVED_COLUMNS]
        if clash and len(heads) == 1:
            raise DataError(f"class name(s) {clash} clash with the columns of oof.parquet ({', '.join(RESERVED_COLUMNS)})",
                            "rename the class folders or map the labels with [targets.maps]")
        if len(names) < 2:
            raise DataError(f"target `{h}` has {len(names)} class(es): {names}", "classification needs at least two classes")
    targets = np.stack([encode_labels(df, h, classes[h]) for h in heads], axis=1).astype(np.int64)
    folds = _folds(df, recipe, heads[0])
    df = df.reset_index(drop=True)
    data = TrainingData(df=df, root=root, heads=heads, classes=classes, targets=targets, folds=folds, ids=row_ids(df))
    if not data.fold_ids:
        raise DataError("no fold holds validation rows", "run `clsctl split` or set split.folds / split.holdout")
    return data


def bad_images_error(bad: list[tuple[str, str]], root: Path, what: str) -> DataError:
    """One error line naming the first ten ``(path, reason)`` pairs (paths relative to ``root``)."""
    shown = "; ".join(f"{_relative(p, root)}: {why}" for p, why in bad[:10])
    more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
    return DataError(f"{len(bad)} {what} image(s): {shown}{more}",
                     "remove or replace them, or drop their rows from the manifest (`clsctl eda` lists them all); "
                     "data.on_bad_image = \"skip\" trains without them")


def _relative(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) else path


def skip_bad_images(data: TrainingData, bad: list[tuple[str, str]], folds: Sequence[int]
                    ) -> tuple[TrainingData, list[dict[str, str]]]:
    """``data`` without the rows of the unreadable images ``bad`` (``data.on_bad_image = "skip"``).

    Rows are dropped after the folds were assigned, so every other image keeps the fold it would have
    had with the bad ones repaired.

    Returns:
        The data left, and ``{"path", "reason"}`` per dropped row (paths as in the manifest), for ``run.json``.

    Raises:
        DataError: What is left has a class without an image, or a fold in ``folds`` without a validation row.
    """
    import numpy as np

    reasons = {_relative(p, data.root): why for p, why in bad}
    paths = data.df["path"].astype(str).tolist()
    rows = [i for i, p in enumerate(paths) if p in reasons]
    left = data.without(rows)
    for h_i, head in enumerate(data.heads):
        size = len(data.classes[head])
        before = np.bincount(data.targets[:, h_i], minlength=size)
        after = np.bincount(left.targets[:, h_i], minlength=size)
        empty = [c for c, b, a in zip(data.classes[head], before, after, strict=True) if b and not a]
        if empty:
            raise DataError(f"skipping {len(rows)} unreadable image(s) leaves class(es) {examples(empty)} of "
                            f"`{head}` without an image", "replace the unreadable images, or drop the class")
    gone = [k for k in folds if not (left.folds == k).any()]
    if gone:
        raise DataError(f"skipping {len(rows)} unreadable image(s) leaves fold(s) {gone} without a validation image",
                        "replace the unreadable images")
    return left, [{"path": paths[i], "reason": reasons[paths[i]]} for i in rows]


def parse_fold_selection(spec: str | None, available: list[int]) -> list[int]:
    """``all`` → every fold; ``2`` → fold 2; ``0,2`` → folds 0 and 2."""
    if spec is None or spec.strip().lower() == "all":
        return list(available)
    try:
        chosen = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--folds {spec!r} is not all, a fold number or a comma list", "e.g. --folds all, --folds 0, --folds 0,2") from None
    missing = [f for f in chosen if f not in available]
    if missing or not chosen:
        raise UsageError(f"--folds {spec}: fold(s) {missing or chosen} do not exist", f"the split has folds {available}")
    return sorted(dict.fromkeys(chosen))


def run_image_root(run: Run) -> Path:
    """The folder a train run's manifest paths are relative to.

    Runs record it in ``run.json`` (``data_root``); for runs of earlier releases the recipe's data
    source is listed again to find it.
    """
    root = run.info.get("data_root")
    if not root:
        from toolkit.data.sources import load_manifest

        root = load_manifest(run.read_recipe().data, require_label=False).attrs["root"]
    return Path(root)
