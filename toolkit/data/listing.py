"""Image files under a root: which suffixes count, which files are hidden, sorted relative paths.

Every source lists files through here, so they agree on what an image is: a non-hidden file whose
name ends with one of the extensions (case-insensitive). Hidden files and folders (a leading dot:
``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) and eda output folders (they hold ``eda.json``)
are never data. Listings are sorted by path: file-system order differs between machines and would
make class indices, folds and submissions depend on where the data was copied.

Whether a path is inside the root is decided after following symlinks (:func:`is_inside`): a
link may lead anywhere on the disk, and what it leads to would be read, measured and shown.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from toolkit.config.schema import DataConfig
from toolkit.errors import DataError, examples

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EDA_MARKER",
    "Walk",
    "absolute_root",
    "check_root_dir",
    "finish_manifest",
    "is_eda_output",
    "is_image_name",
    "is_inside",
    "list_images",
    "normalize_extensions",
    "outside_root_error",
    "resolved",
    "split_images",
    "suffix_summary",
    "walk_files",
]

# The file every eda output folder holds; a folder with it is a report, never data.
EDA_MARKER = "eda.json"


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


def resolved(path: str | os.PathLike[str]) -> str:
    """The path with every symlink followed (a link that loops or dangles resolves as far as it can)."""
    return os.path.realpath(path)


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``root`` or lies below it once symlinks on both are followed.

    A lexical check is not enough: ``root/cat/x.png`` may be a link to a file anywhere on the disk.
    """
    real, base = resolved(path), resolved(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def is_eda_output(folder: str | os.PathLike[str]) -> bool:
    """Whether a folder is what ``clsctl eda`` writes (it holds ``eda.json``): plots, never data."""
    return os.path.isfile(os.path.join(folder, EDA_MARKER))


class Walk(NamedTuple):
    """What :func:`walk_files` found under a folder; every path is POSIX, relative to it, sorted.

    Attributes:
        files: The files listed.
        eda_outputs: Folders left out because they are an eda output.
        outside: Symlinked files whose target lies outside the root, as ``path -> target``.
    """

    files: list[str]
    eda_outputs: list[str]
    outside: list[str]


def _is_linked_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows the link
    except OSError:  # a link that loops (ELOOP) is no folder
        return False


def walk_files(base: Path, root: Path | None = None) -> Walk:
    """All non-hidden files under ``base``; ``root`` (default ``base``) is what links must stay inside.

    Hidden files and folders (leading dot: ``.DS_Store``, ``.ipynb_checkpoints``, ``.git``) are
    skipped entirely because they are never data, and so are eda output folders (an older release
    wrote them into the data, where the plots would be read as images). Symlinked folders below
    ``base`` are not followed, which keeps a link cycle from hanging the listing and an image from
    being listed twice; a symlinked ``base`` itself works. A symlinked file is listed when its
    target stays inside ``root`` and reported in ``outside`` otherwise; one that loops or dangles
    is listed, so that it is reported as unreadable by name like any broken file.
    """
    root_real = resolved(root if root is not None else base)
    files: list[str] = []
    eda_outputs: list[str] = []
    outside: list[str] = []
    pending = [""]
    while pending:
        prefix = pending.pop()
        try:
            with os.scandir(base / prefix if prefix else base) as it:
                entries = list(it)
        except OSError:  # as os.walk does: a folder that cannot be listed holds nothing we can read
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if entry.is_symlink():
                if _is_linked_folder(entry):
                    continue
                target = resolved(entry.path)
                if not is_inside(target, root_real):
                    outside.append(f"{rel} -> {target}")
                    continue
                files.append(rel)
            elif entry.is_dir(follow_symlinks=False):
                if is_eda_output(entry.path):
                    eda_outputs.append(rel)
                else:
                    pending.append(rel + "/")
            else:
                files.append(rel)
    return Walk(sorted(files), sorted(eda_outputs), sorted(outside))


def outside_root_error(root: Path, links: Sequence[str]) -> DataError:
    """The one error for symlinks that lead out of the image root, naming them."""
    return DataError(
        f"{len(links)} symbolic link(s) under {root} lead outside it: {examples(links)}",
        "copy those images into the root, or point the data path at the folder that holds them; "
        "links whose target stays inside the root are fine",
    )


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


def list_images(root: Path, exts: tuple[str, ...]) -> tuple[list[str], list[str], list[str]]:
    """Images, other files and ignored eda output folders under ``root``.

    Raises:
        DataError: No image at all (naming what was found), or links that lead outside ``root``.
    """
    walk = walk_files(root)
    if walk.outside:
        raise outside_root_error(root, walk.outside)
    images, others = split_images(walk.files, exts)
    if not images:
        raise DataError(f"no images under {root} (found {suffix_summary(others)})",
                        f"check data.root and data.extensions (now {', '.join(exts)})")
    return images, others, walk.eda_outputs


def finish_manifest(df: pd.DataFrame, root: Path, source: str) -> pd.DataFrame:
    """A new index and the ``root`` and ``source`` attributes every manifest carries."""
    df = df.reset_index(drop=True)
    df.attrs["root"] = str(root)
    df.attrs["source"] = source
    return df
