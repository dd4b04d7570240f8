"""The leakage audit: groups present in more than one fold, duplicate images split across folds.

A pair of duplicate images (from :mod:`toolkit.imaging.duplicates`, or an eda run's
``hashes.parquet``) whose two images land in different folds leaks: the model of one fold trains on
an image and is validated on its copy. :func:`audit_leakage` finds both kinds;
:func:`load_duplicate_pairs` reads or computes the pairs it checks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from toolkit.data.folds import FOLD_COLUMN, columns_text, groups_across_folds, plain_value, require_columns
from toolkit.errors import DataError, ToolkitError, UsageError, examples, is_missing
from toolkit.imaging import duplicates, hashing
from toolkit.store.tables import read_table

__all__ = ["LeakageError", "audit_leakage", "leakage_message", "load_duplicate_pairs"]


class LeakageError(ToolkitError):
    """``--strict`` found leakage: a group or a duplicate pair across folds.

    ``result`` is what the split made and recorded before the audit failed it (a
    :class:`toolkit.data.splits.SplitResult`), so a caller can still show it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, result: Any = None) -> None:
        super().__init__(message, hint)
        self.result = result


def _path_resolver(paths: Sequence[str]) -> dict[str, str]:
    """Map every path and every unique trailing part of it (``b/c.png`` of ``a/b/c.png``) to the path.

    Duplicate lists may be written relative to another root (eda run on ``crops/`` while the
    manifest paths start with ``crops/``); matching on unique suffixes makes both agree.
    """
    exact = {p: p for p in paths}
    suffixes: dict[str, str | None] = {}
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            tail = "/".join(parts[i:])
            suffixes[tail] = None if tail in suffixes and suffixes[tail] != p else p
    for tail, p in suffixes.items():
        if p is not None and tail not in exact:
            exact[tail] = p
    return exact


def _lookup(resolver: dict[str, str], raw: Any) -> str | None:
    text = "" if is_missing(raw) else str(raw).replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    if text in resolver:
        return resolver[text]
    parts = text.split("/")
    # A longer path (absolute, or with an extra leading folder) whose tail is in the manifest.
    for i in range(1, len(parts)):
        tail = "/".join(parts[i:])
        if tail in resolver:
            return resolver[tail]
    return None


def audit_leakage(
    df: pd.DataFrame,
    *,
    group: str | None = None,
    duplicate_pairs: pd.DataFrame | None = None,
    fold_col: str = FOLD_COLUMN,
) -> dict[str, Any]:
    """Find leakage in a fold assignment: groups in two folds, duplicate images in two folds.

    A pair counts as leaking when its two images have different fold values, ``-1`` included
    (one in training, the other in validation). Pair paths are matched to the manifest's
    ``path`` column exactly, or by a unique trailing part when written against another root.

    Args:
        df: The manifest with ``path`` and the fold column.
        group: The group column, if the split was grouped.
        duplicate_pairs: Table with columns ``a`` and ``b`` (image paths) and optionally
            ``kind`` and ``distance``, e.g. from ``toolkit.imaging.duplicates.duplicate_pairs``.
        fold_col: The fold column.

    Returns:
        A JSON-able dict: ``groups_crossing`` (list), ``duplicates`` (``None`` when no pairs
        were given, else ``pairs``, ``matched``, ``unmatched`` and ``crossing``, a list of
        ``{a, b, kind, distance, fold_a, fold_b}``), ``findings`` (groups plus pairs that leak)
        and ``ok``.

    Raises:
        DataError: A missing column in ``df`` or ``duplicate_pairs``.
    """
    require_columns(df, [fold_col], "fold", "fold_col")
    if group is not None:
        require_columns(df, [group], "group", "--group")
    crossing_groups = groups_across_folds(df, group, fold_col) if group is not None else []

    duplicates: dict[str, Any] | None = None
    if duplicate_pairs is not None:
        require_columns(df, ["path"], "path", "the manifest")
        missing = [c for c in ("a", "b") if c not in duplicate_pairs.columns]
        if missing:
            raise DataError(f"duplicate pair table has no column(s) {', '.join(missing)} "
                            f"(columns: {columns_text(duplicate_pairs)})",
                            "pass a table with columns a, b (image paths), kind and distance")
        paths = df["path"].astype(str).tolist()
        fold_of = dict(zip(paths, df[fold_col].astype(int).tolist(), strict=True))
        resolver = _path_resolver(paths)
        kinds = duplicate_pairs["kind"].tolist() if "kind" in duplicate_pairs.columns else [None] * len(duplicate_pairs)
        dists = (duplicate_pairs["distance"].tolist() if "distance" in duplicate_pairs.columns
                 else [None] * len(duplicate_pairs))
        matched = 0
        leaks: list[dict[str, Any]] = []
        for a, b, kind, dist in zip(duplicate_pairs["a"].tolist(), duplicate_pairs["b"].tolist(), kinds, dists,
                                    strict=True):
            pa, pb = _lookup(resolver, a), _lookup(resolver, b)
            if pa is None or pb is None:
                continue
            matched += 1
            fa, fb = fold_of[pa], fold_of[pb]
            if fa != fb:
                leaks.append({"a": pa, "b": pb, "kind": None if is_missing(kind) else plain_value(kind),
                              "distance": None if is_missing(dist) else plain_value(dist),
                              "fold_a": fa, "fold_b": fb})
        duplicates = {"pairs": len(duplicate_pairs), "matched": matched,
                      "unmatched": len(duplicate_pairs) - matched, "crossing": leaks}

    findings = len(crossing_groups) + (len(duplicates["crossing"]) if duplicates else 0)
    return {"group": group, "groups_crossing": crossing_groups, "duplicates": duplicates,
            "findings": findings, "ok": findings == 0}


def load_duplicate_pairs(
    df: pd.DataFrame,
    *,
    hashes: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Duplicate image pairs for the audit: from a file, or computed from the images.

    Args:
        df: The manifest (``path`` and ``attrs["root"]``), used when computing.
        hashes: An eda run folder (its ``hashes.parquet`` is read), a hash table (columns
            ``path``, ``sha1``, ...; paired with ``toolkit.imaging.duplicates``), or a pair table
            (columns ``a``, ``b``, ``kind``, ``distance``). ``None`` computes the hashes.
        workers: Processes for hashing.

    Returns:
        A pair table with columns ``a``, ``b``, ``kind``, ``distance``.

    Raises:
        DataError: The file is missing or has neither layout; a hash table without a hash for some image
            of the manifest, or a pair table none of whose pairs names one (the audit would check nothing).
        UsageError: Hashes must be computed but the manifest does not say where its images are.
    """
    if hashes is not None:
        path = Path(hashes)
        if path.is_dir():
            path = path / "hashes.parquet"
        if not path.is_file():
            raise DataError(f"{path} does not exist",
                            "pass the folder of an eda run (it writes hashes.parquet), or use --dedup")
        table = read_table(path, text_columns=("path", "a", "b"), what="duplicate table",
                           hint="check that it is a valid CSV or Parquet file")
        if {"a", "b"} <= set(table.columns):
            _check_pairs_name_the_manifest(df, table, path)
            return table
        _check_hashes_cover_the_manifest(df, table, path)
        return duplicates.duplicate_pairs(table)
    root = df.attrs.get("root")
    if root is None:
        raise UsageError("the manifest does not say where its images are (no root)",
                         "build it with toolkit.data.sources.manifest_from_path")
    table = hashing.image_hashes(df["path"].astype(str).tolist(), root, workers=workers)
    return duplicates.duplicate_pairs(table)


def _check_hashes_cover_the_manifest(df: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """Refuse a hash table that lacks images of the manifest: the audit would call them clean unchecked.

    An eda run hashes every file of its data set, the unreadable ones too, so an image without a hash
    means the table is of another data set (or another root), or older than the data.
    """
    if "path" not in table.columns:
        raise DataError(f"duplicate table {path} has neither a `path` column (hashes) nor `a` and `b` (pairs) "
                        f"(columns: {columns_text(table)})",
                        "pass the folder of an eda run, its hashes.parquet, or a pair table with columns a, b")
    paths = df["path"].astype(str).tolist()
    resolver = _path_resolver(paths)
    hashed = {_lookup(resolver, p) for p in table["path"].tolist()}
    lacking = [p for p in paths if p not in hashed]
    if not lacking:
        return
    fix = "run `clsctl eda` on this data and pass that run, or use --dedup to hash the images now"
    if len(lacking) == len(paths):
        theirs = [str(p) for p in table["path"].head(2).tolist()]
        raise DataError(f"--hashes {path} covers none of the manifest's {len(paths)} image(s) (it hashes "
                        f"{len(table)} other file(s), e.g. {examples(theirs)}; the manifest has "
                        f"{examples(paths[:2])}): nothing would be checked", fix)
    raise DataError(f"--hashes {path} covers {len(paths) - len(lacking)} of the manifest's {len(paths)} image(s); "
                    f"{len(lacking)} have no hash ({examples(lacking, 5)}), so their duplicates would go unchecked",
                    fix)


def _check_pairs_name_the_manifest(df: pd.DataFrame, pairs: pd.DataFrame, path: Path) -> None:
    """Refuse a pair table none of whose pairs is of the manifest's images (one of another data set)."""
    if pairs.empty:
        return  # no duplicates known: nothing to check, and nothing to tell the data set from
    resolver = _path_resolver(df["path"].astype(str).tolist())
    if any(_lookup(resolver, a) is not None or _lookup(resolver, b) is not None
           for a, b in zip(pairs["a"].tolist(), pairs["b"].tolist(), strict=True)):
        return
    raise DataError(f"--hashes {path}: none of its {len(pairs)} duplicate pair(s) names an image of the manifest "
                    f"(e.g. {pairs['a'].iloc[0]}): nothing would be checked",
                    "pass the pairs (or the eda run) of this data set, or use --dedup to find them now")


def leakage_message(audit: dict[str, Any]) -> str:
    """One line that says what leaked: the crossing groups and duplicate pairs of an :func:`audit_leakage` result."""
    parts = []
    groups = audit["groups_crossing"]
    if groups:
        parts.append(f"{len(groups)} group(s) in more than one fold ({examples(groups)})")
    dup = audit["duplicates"]
    if dup and dup["crossing"]:
        pairs = [f"{p['a']} (fold {p['fold_a']}) ~ {p['b']} (fold {p['fold_b']})" for p in dup["crossing"]]
        parts.append(f"{len(pairs)} duplicate pair(s) split across folds: {examples(pairs, 5)}")
    return "leakage: " + "; ".join(parts)
