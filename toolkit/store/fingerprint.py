"""A short, cheap identity for a set of data files, recorded in every run's ``run.json``.

Two runs with the same fingerprint saw the same files (same relative paths, sizes and
modification times; or the same bytes with ``content=True``). By default only ``os.stat`` is
called, so fingerprinting 100k images takes well under a second and never reads pixels.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import PurePath
from typing import TYPE_CHECKING

from toolkit.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["data_fingerprint", "manifest_fingerprint"]

StrPath = str | os.PathLike[str]

# Part of the hashed text, so a change to what is hashed can never collide with old values,
# and a stat fingerprint never equals a content fingerprint of the same files.
_SCHEME = "clsctl-data-fingerprint-v1"
_SHOWN = 5


def _file_digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def data_fingerprint(
    paths: Iterable[StrPath],
    root: StrPath | None = None,
    *,
    content: bool = False,
) -> str:
    """Fingerprint a list of files.

    The digest covers the sorted list of ``(relative path, size, mtime_ns)``, so the order of
    ``paths`` does not matter but renaming, adding, removing, resizing or touching a file
    does. With ``content=True`` each file's bytes are hashed instead of size and mtime, which
    survives copying the data elsewhere but reads every file.

    Args:
        paths: File paths, relative to ``root`` (absolute paths are used as they are).
        root: The folder the paths are relative to; the current folder when ``None``.
        content: Hash file contents instead of stat information.

    Returns:
        ``"sha256:<16 hex digits>/<number of files>"``; the count lets a reader see at a
        glance whether files were added or removed.

    Raises:
        DataError: If a path does not exist or is not a regular file; the message names it.
    """
    base = os.fspath(root) if root is not None else ""
    entries: list[tuple[str, str]] = []
    missing: list[str] = []
    not_files: list[str] = []
    for item in paths:
        rel = os.fspath(item)
        full = os.path.join(base, rel) if base else rel
        try:
            info = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            missing.append(rel)
            continue
        if not stat.S_ISREG(info.st_mode):
            not_files.append(rel)
            continue
        # as_posix + PurePath normalisation: "a/./b", "a//b" and "a\\b" (Windows) hash alike.
        key = PurePath(rel).as_posix()
        detail = _file_digest(full) if content else f"{info.st_size}:{info.st_mtime_ns}"
        entries.append((key, detail))
    where = f" under {base}" if base else ""
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (f" and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else "")
        raise DataError(f"{len(missing)} data file(s) do not exist{where}: {shown}",
                        "fix the paths in the manifest or point the data root at the right folder")
    if not_files:
        shown = ", ".join(not_files[:_SHOWN])
        raise DataError(f"{len(not_files)} data path(s) are not regular files{where}: {shown}",
                        "list image files, not folders, in the manifest")
    entries.sort()
    digest = hashlib.sha256(f"{_SCHEME} {'content' if content else 'stat'}\n".encode())
    for key, detail in entries:
        # NUL cannot occur in a path, so the fields cannot run into each other.
        digest.update(f"{key}\0{detail}\n".encode("utf-8", "surrogateescape"))
    return f"sha256:{digest.hexdigest()[:16]}/{len(entries)}"


def manifest_fingerprint(df: pd.DataFrame, root: StrPath | None = None, content: bool = False) -> str:
    """Fingerprint the files a manifest table lists in its ``path`` column.

    Args:
        df: A table with a ``path`` column of paths relative to ``root``.
        root: The folder the paths are relative to.
        content: Hash file contents instead of stat information.

    Returns:
        The same string :func:`data_fingerprint` returns.

    Raises:
        DataError: If there is no ``path`` column, a path is empty, or a file is missing.
    """
    if "path" not in df.columns:
        columns = ", ".join(map(str, df.columns)) or "none"
        raise DataError(f"the manifest has no 'path' column (columns: {columns})",
                        "name the column holding image paths 'path'")
    paths = df["path"]
    empty = paths.isna()
    if bool(empty.any()):
        rows = ", ".join(map(str, paths.index[empty][:_SHOWN]))
        raise DataError(f"{int(empty.sum())} manifest row(s) have no path (rows {rows})",
                        "fill in or drop those rows")
    return data_fingerprint([str(p) for p in paths], root, content=content)

