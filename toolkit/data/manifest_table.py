"""A manifest from a table: a CSV or Parquet file with one row per image and a path column.

Paths are relative to an image root (by default the table's folder; :func:`guess_table_root`
finds it among the nearby folders). Rows keep the table's own order: a test-set table often fixes
the submission order.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from toolkit.data.listing import absolute_root, check_root_dir, finish_manifest, is_inside, resolved
from toolkit.errors import DataError, examples, is_missing
from toolkit.store.tables import CSV_SUFFIXES, PARQUET_SUFFIXES, read_table

__all__ = ["guess_table_root", "manifest_from_table"]


def _read_manifest(path: Path, path_column: str) -> pd.DataFrame:
    # A missing file and a wrong suffix are checked here: their hints point at data.manifest.
    if not path.exists():
        raise DataError(f"manifest {path} does not exist",
                        "check data.manifest (a relative path is relative to the recipe file)")
    suffix = path.suffix.lower()
    if suffix not in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
        raise DataError(f"manifest {path} has an unsupported suffix {suffix or '(none)'!r}",
                        "use a .csv or .parquet file")
    # Every column is text as written: labels "06" and "6" are two classes, "0001" is an id and
    # "NA" or "None" a class name. Only a truly empty cell is missing. Stages that need numbers
    # (bins, fold numbers, EDA attributes) convert the column they use.
    df = read_table(path, all_text=True, keep_default_na=False, what="manifest")
    if path.suffix.lower() in CSV_SUFFIXES:
        df = df.mask(df.eq(""))
    return df


def _normalize_rel(raw: object, roots: Sequence[str]) -> str | None:
    """Turn one table path into a normalized POSIX path relative to the root.

    Returns:
        The relative path, ``""`` for an empty value, or ``None`` when it escapes the root.
    """
    if is_missing(raw):
        return ""
    text = str(raw).strip().replace("\\", "/")  # Windows-written manifests use backslashes
    if not text:
        return ""
    if posixpath.isabs(text) or re.match(r"^[A-Za-z]:/", text):
        norm = posixpath.normpath(text)
        for r in roots:
            # Both the lexical and the symlink-resolved root count as "inside".
            if norm == r or norm.startswith(r.rstrip("/") + "/"):
                return posixpath.relpath(norm, r)
        return None
    norm = posixpath.normpath(text)
    if norm == ".":
        return ""
    if norm == ".." or norm.startswith("../"):
        return None
    return norm


def links_outside(root: Path, rels: Sequence[str]) -> list[str]:
    """``path -> target`` for each relative path that a symlink leads out of ``root``.

    The lexical check of :func:`_normalize_rel` cannot see links. Folders are resolved once each
    (a manifest has many rows per folder); a file costs one ``lstat``, and ``realpath`` only when
    it is a link itself.
    """
    root_real = resolved(root)
    folder_ok: dict[str, bool] = {}
    out = []
    for rel in rels:
        folder = posixpath.dirname(rel)
        if folder not in folder_ok:
            folder_ok[folder] = is_inside(root / folder, root_real)
        path = root / rel
        if not folder_ok[folder] or (os.path.islink(path) and not is_inside(path, root_real)):
            out.append(f"{rel} -> {resolved(path)}")
    return out


def _row_list(idx: Sequence[int], values: Sequence[object]) -> str:
    items = [f"row {i + 1} ({v!r})" for i, v in zip(idx, values, strict=True)]
    return examples(items)


def manifest_from_table(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    path_column: str = "path",
    label_column: str = "label",
    *,
    require_label: bool = True,
) -> pd.DataFrame:
    """Read a CSV or Parquet manifest whose path column is relative to ``root``.

    Rows keep the table's own order (a test-set table often fixes the submission order);
    paths are normalized to POSIX relative form, and ``path_column`` is renamed to ``path``.
    Every other CSV column is kept as text, exactly as written (``06``, ``NA`` and ``None`` are
    values; only an empty cell is missing); a Parquet column keeps its stored type. Rows are
    numbered from 1 in messages, header excluded.

    Args:
        path: The ``.csv`` or ``.parquet`` file.
        root: Image root the paths are relative to; default the table's folder.
        path_column: Column holding the image path.
        label_column: Column holding the label; it must exist unless ``require_label`` is False.
        require_label: Whether a missing or empty ``label_column`` is an error.

    Returns:
        The manifest with ``attrs["root"]`` and ``attrs["source"] == "table"``.

    Raises:
        DataError: Unsupported suffix, unreadable file (empty, not UTF-8), missing columns, no
            rows, empty labels, empty paths, paths escaping the root (also through a symlink),
            missing files or duplicate paths.
    """
    table_path = absolute_root(path)
    root_path = absolute_root(root) if root is not None else table_path.parent
    df = _read_manifest(table_path, path_column)
    columns = [str(c) for c in df.columns]

    if path_column not in df.columns:
        raise DataError(f"manifest {table_path} has no path column {path_column!r} (columns: {', '.join(columns)})",
                        "set data.path_column to the column that holds the image paths")
    if require_label and label_column not in df.columns:
        raise DataError(f"manifest {table_path} has no label column {label_column!r} (columns: {', '.join(columns)})",
                        "set data.label_column to the column that holds the class, or derive it in [targets]")
    if df.empty:
        raise DataError(f"manifest {table_path} has a header row but no image rows",
                        "add one row per image under the header")
    if path_column != "path":
        if "path" in df.columns:
            raise DataError(f"manifest {table_path} has both {path_column!r} and 'path' columns",
                            "rename or drop the 'path' column, or set data.path_column = \"path\"")
        df = df.rename(columns={path_column: "path"})
    check_root_dir(root_path)

    if require_label:
        empty_labels = [i for i, v in enumerate(df[label_column].tolist()) if is_missing(v) or str(v).strip() == ""]
        if empty_labels:
            raise DataError(
                f"manifest {table_path}: {len(empty_labels)} row(s) have no {label_column!r} value "
                f"(rows {examples([str(i + 1) for i in empty_labels])})",
                "fill in the labels or drop those rows; a test set without labels needs no label column",
            )

    roots = [root_path.as_posix()]
    real = Path(os.path.realpath(root_path)).as_posix()
    if real not in roots:
        roots.append(real)

    raw = df["path"].tolist()
    rel = [_normalize_rel(v, roots) for v in raw]
    blank = [i for i, r in enumerate(rel) if r == ""]
    if blank:
        raise DataError(f"manifest {table_path}: {len(blank)} row(s) have an empty path "
                        f"(rows {examples([str(i + 1) for i in blank])})",
                        "fill in the image paths or drop those rows")
    escaping = [i for i, r in enumerate(rel) if r is None]
    if escaping:
        raise DataError(
            f"manifest {table_path}: {len(escaping)} path(s) point outside the image root {root_path}: "
            f"{_row_list(escaping, [raw[i] for i in escaping])}",
            "paths must be relative to data.root and stay inside it; set data.root to a folder that "
            "contains every image",
        )

    seen: dict[str, int] = {}
    dups: list[str] = []
    for i, r in enumerate(rel):
        if r in seen:
            dups.append(f"{r} (rows {seen[r] + 1} and {i + 1})")
        else:
            seen[r] = i
    if dups:
        raise DataError(f"manifest {table_path}: {len(dups)} duplicate path(s): {examples(dups)}",
                        "each image must appear once; drop the repeated rows")

    rel_ok = [r for r in rel if r is not None]  # every None was rejected above; narrows the type
    linked_out = links_outside(root_path, rel_ok)
    if linked_out:
        raise DataError(
            f"manifest {table_path}: {len(linked_out)} path(s) lead outside the image root {root_path} "
            f"through a symbolic link: {examples(linked_out)}",
            "copy those images into the root, or set data.root to the folder that holds them; links whose "
            "target stays inside the root are fine",
        )
    missing = [r for r in rel_ok if not os.path.isfile(root_path / r)]
    if missing:
        raise DataError(
            f"manifest {table_path}: {len(missing)} of {len(rel)} image(s) not found under {root_path}: "
            f"{examples(missing)}",
            "set data.root to the folder the paths are relative to, or remove the rows",
        )

    df["path"] = pd.Series(rel_ok, index=df.index, dtype=object).astype(str)
    df = finish_manifest(df, root_path, "table")
    df.attrs["skipped_files"] = 0
    return df


def guess_table_root(table: str | os.PathLike[str]) -> Path | None:
    """The folder a table's paths are relative to: its own folder, its parent or a subfolder.

    Checks a sample of relative paths; returns the first candidate under which all exist.

    Returns:
        The folder (symlinks resolved), or None when the table cannot be read, has no ``path``
        column or absolute paths, or no candidate holds the sample.
    """
    table = Path(table)
    try:
        paths = read_table(table, all_text=True, keep_default_na=False)
    except DataError:
        return None
    if "path" not in paths.columns:
        return None
    sample = [str(p).replace("\\", "/") for p in paths["path"].dropna().head(25) if str(p)]
    if not sample or any(os.path.isabs(p) for p in sample):
        return None
    base = table.parent.resolve()
    candidates = [base, base.parent]
    with contextlib.suppress(OSError):
        candidates += sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    for root in candidates:
        if all((root / p).is_file() for p in sample):
            return root
    return None
