"""Image files under a root: which suffixes count, which files are hidden, sorted relative paths.

Every source lists files through here, so they agree on what an image is: a non-hidden file whose
name ends with one of the extensions (case-insensitive). Hidden files and folders (a leading dot:
``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) are never data. Listings are sorted by path:
file-system order differs between machines and would make class indices, folds and submissions
depend on where the data was copied.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.config.schema import DataConfig
from toolkit.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "absolute_root",
    "check_root_dir",
    "finish_manifest",
    "is_image_name",
    "list_images",
    "normalize_extensions",
    "split_images",
    "suffix_summary",
    "walk_files",
]


def _default_extensions() -> list[str]:
    return list(DataConfig().extensions)


def normalize_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    """Lower-case suffixes with a leading dot; matching is case-insensitive (``.JPG`` is common)."""
    exts = _default_extensions() if extensions is None else list(extensions)
    out = []
    for ext in exts:
        ext = str(ext).strip().lower()
        if not ext:
            continue
        out.append(ext if ext.startswith(".") else "." + ext)
    if not out:
        raise DataError("no image extensions given (data.extensions is empty)",
                        'set data.extensions, e.g. [".jpg", ".png"]')
    return tuple(out)


def is_image_name(name: str, exts: tuple[str, ...]) -> bool:
    """Whether a file name ends with one of ``exts`` (as :func:`normalize_extensions` gives them)."""
    # endswith (not Path.suffix) so multi-dot suffixes such as ".nii.gz" work too.
    return name.lower().endswith(exts)


def absolute_root(root: str | os.PathLike[str]) -> Path:
    """Absolute root without resolving symlinks: the path the user named is the one we report."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))


def check_root_dir(root: Path, what: str = "image root") -> None:
    """Raise a :class:`DataError` naming ``root`` (as ``what``) when it is missing or not a folder."""
    if not root.exists():
        raise DataError(f"{what} {root} does not exist",
                        "check data.root (a relative path is relative to the recipe file)")
    if not root.is_dir():
        raise DataError(f"{what} {root} is not a folder",
                        "data.root must name a folder of images; a CSV/Parquet list goes in data.manifest")


def walk_files(base: Path) -> list[str]:
    """All non-hidden files under ``base``, as sorted POSIX paths relative to ``base``.

    Hidden files and folders (leading dot: ``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) are
    skipped entirely because they are never data. Symlinked folders are not followed, which
    keeps a link cycle from hanging the listing; a symlinked root itself works.
    """
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        # Prune in place so os.walk does not descend into hidden folders.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(base).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in filenames:
            if not name.startswith("."):
                files.append(prefix + name)
    files.sort()
    return files


def split_images(files: Sequence[str], exts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``(images, others)``: the files with an image suffix, and the rest, each in the given order."""
    images = [f for f in files if is_image_name(posixpath.basename(f), exts)]
    others = [f for f in files if not is_image_name(posixpath.basename(f), exts)]
    return images, others


def suffix_summary(files: Sequence[str]) -> str:
    """'12 files: .txt ×10, .csv ×2' — tells the user at a glance why nothing was picked up."""
    if not files:
        return "nothing"
    counts: dict[str, int] = {}
    for f in files:
        suffix = posixpath.splitext(f)[1].lower() or "(no suffix)"
        counts[suffix] = counts.get(suffix, 0) + 1
    parts = ", ".join(f"{s} ×{n}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{len(files)} file(s): {parts}"


def list_images(root: Path, exts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Images and other files under ``root``; no image at all is an error naming what was found."""
    images, others = split_images(walk_files(root), exts)
    if not images:
        raise DataError(f"no images under {root} (found {suffix_summary(others)})",
                        f"check data.root and data.extensions (now {', '.join(exts)})")
    return images, others


def finish_manifest(df: pd.DataFrame, root: Path, source: str) -> pd.DataFrame:
    """A new index and the ``root`` and ``source`` attributes every manifest carries."""
    df = df.reset_index(drop=True)
    df.attrs["root"] = str(root)
    df.attrs["source"] = source
    return df
