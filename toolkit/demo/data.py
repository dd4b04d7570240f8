"""The demo's data: scikit-learn's handwritten digits as manifests, with stated groups and a held-out part.

The digits come from 43 writers (UCI optdigits; scikit-learn ships its 1,797-image test part, written by
13 of them), but no writer id is shipped, so the demo cannot group by writer. What it can measure: an
image's nearest neighbour of the same class lies within 150 rows of it for 59% of the images (16% for a
random image of that class), so neighbouring rows share handwriting. Groups are therefore blocks of
consecutive rows (``rows0000-0099``, ...): a fold or the held-out part takes whole blocks, and most
look-alike pairs stay on one side. Blocks are not writers, and the split's duplicate audit reports the
look-alike pairs that still cross folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from toolkit.data.builtin import builtin_root
from toolkit.data.folds import assign_folds
from toolkit.data.sources import manifest_from_path
from toolkit.data.splits import write_manifest

__all__ = ["DemoData", "write_demo_data"]


@dataclass(frozen=True)
class DemoData:
    """Where the demo's images and manifests are, and how they were divided.

    Attributes:
        root: The digits' ImageFolder (written once into the clsctl cache); every manifest's paths are
            relative to it.
        images: Manifest of every image the demo uses (what ``eda`` looks at).
        train: The images the folds are made on.
        heldout: The images no model trains or selects on; ``predict`` scores them.
        heldout_labels: ``(id, label)`` of every held-out image.
    """

    root: Path
    images: Path
    train: Path
    heldout: Path
    n_images: int
    n_train: int
    n_heldout: int
    n_groups: int
    block_rows: int
    heldout_labels: tuple[tuple[str, str], ...] = ()


def _row(path: str) -> int:
    """The image's row in scikit-learn's order: the builtin writer names each file by it (``3/0123.png``)."""
    return int(Path(path).stem)


def write_demo_data(folder: Path, *, images: int | None, block_rows: int, heldout: float, seed: int) -> DemoData:
    """Write the demo's manifests (``id``, ``path``, ``label``, ``group``) into ``folder``.

    Args:
        folder: Where ``digits.csv``, ``train.csv`` and ``heldout.csv`` go.
        images: Use only the first this many rows of scikit-learn's order (None: all 1,797).
        block_rows: Consecutive rows per group.
        heldout: Share of the images (whole groups, stratified by class) set aside for ``predict``.
        seed: Seed of the held-out draw.
    """
    root = builtin_root("digits")
    listed = manifest_from_path(root)
    rows = listed["path"].map(_row)
    df = pd.DataFrame({"id": rows.map(lambda r: f"{r:04d}"), "path": listed["path"], "label": listed["label"]})
    df = df.assign(row=rows).sort_values("row", kind="stable").reset_index(drop=True)
    if images is not None:
        df = df[df["row"] < images].reset_index(drop=True)
    start = (df["row"] // block_rows) * block_rows
    df["group"] = [f"rows{s:04d}-{s + block_rows - 1:04d}" for s in start]
    df = df.drop(columns="row")
    side = assign_folds(df, holdout=heldout, group="group", stratify="label", seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    held = df[side.to_numpy() == 0].reset_index(drop=True)
    train = df[side.to_numpy() != 0].reset_index(drop=True)
    return DemoData(root=root, images=write_manifest(df, folder / "digits.csv"),
                    train=write_manifest(train, folder / "train.csv"),
                    heldout=write_manifest(held, folder / "heldout.csv"),
                    n_images=len(df), n_train=len(train), n_heldout=len(held), n_groups=int(df["group"].nunique()),
                    block_rows=block_rows, heldout_labels=tuple(zip(held["id"], held["label"], strict=True)))
