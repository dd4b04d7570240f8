"""Where the images come from: every source ends as one manifest DataFrame.

The manifest is the currency between stages: one row per image, a ``path`` column holding a
POSIX path relative to the image root, a ``label`` column (or whatever ``data.label_column``
names) and any other columns the source provides (attributes parsed from file names, ``group``,
``fold``). The root travels with the frame in ``df.attrs["root"]`` (an absolute path string) so a
stage never has to be told twice where the images live.

Sources:

* ImageFolder (:func:`manifest_from_folder`): one subfolder per class.
* A table (:func:`manifest_from_table`): a CSV or Parquet file with a path column.
* A pattern (:func:`manifest_from_pattern`): a regex with named groups over each relative path.
* Unlabeled (:func:`manifest_from_unlabeled`): every image under a folder (a test set).
* ``builtin:NAME`` (:func:`builtin_root`): a small dataset that ships with an installed library,
  written to the cache once, then read as an ImageFolder.

Which source a path is: :func:`manifest_from_path` for a path on the command line (every command
decides it the same way), :func:`load_manifest` for a recipe's ``[data]``.

Listings are always sorted by path: file-system order differs between machines and would make
class indices, folds and submissions depend on where the data was copied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from pathlib import Path

import pandas as pd

from toolkit.config.schema import DataConfig
from toolkit.data.builtin import builtin_root
from toolkit.data.listing import (
    absolute_root,
    check_root_dir,
    finish_manifest,
    is_eda_output,
    is_image_name,
    is_inside,
    list_images,
    normalize_extensions,
    outside_root_error,
    resolved,
    split_images,
    suffix_summary,
    walk_files,
)
from toolkit.data.manifest_table import guess_table_root, manifest_from_table
from toolkit.errors import DataError, UsageError, examples

__all__ = [
    "builtin_root",
    "load_manifest",
    "manifest_from_folder",
    "manifest_from_path",
    "manifest_from_pattern",
    "manifest_from_table",
    "manifest_from_unlabeled",
]

_PLAIN_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def manifest_from_folder(
    root: str | os.PathLike[str],
    extensions: Iterable[str] | None = None,
    *,
    label_column: str = "label",
) -> pd.DataFrame:
    """List an ImageFolder tree: ``root/<class>/**/<image>``.

    Each non-hidden subfolder of ``root`` is a class; images are collected recursively inside
    it. Files whose suffix is not in ``extensions`` are ignored and counted in
    ``df.attrs["skipped_files"]``; eda output folders (they hold ``eda.json``) are left out and
    named in ``df.attrs["ignored_dirs"]``. Symlinks are followed only where their target stays
    inside ``root`` (see :func:`toolkit.data.listing.walk_files`).

    Args:
        root: Folder holding one subfolder per class.
        extensions: Image suffixes (case-insensitive); default ``DataConfig().extensions``.
        label_column: Name of the column that receives the class (subfolder) name.

    Returns:
        Columns ``path`` and ``label_column``, sorted by path; ``attrs["root"]``,
        ``attrs["source"] == "folder"`` and ``attrs["skipped_files"]`` set.

    Raises:
        DataError: The root is missing or not a folder, has no class subfolders, has images
            directly in it, a class folder holds no images, or a symlink leads outside the root
            (or a class folder link back to it).
    """
    exts = normalize_extensions(extensions)
    root_path = absolute_root(root)
    check_root_dir(root_path)

    entries = sorted(p for p in os.listdir(root_path) if not p.startswith("."))
    folders = [e for e in entries if (root_path / e).is_dir()]
    top_files = [e for e in entries if not (root_path / e).is_dir()]
    top_images, top_other = split_images(top_files, exts)
    ignored = [e for e in folders if is_eda_output(root_path / e)]
    class_dirs = [e for e in folders if e not in ignored]
    _check_class_links(root_path, class_dirs)

    if top_images:
        raise DataError(
            f"{len(top_images)} image(s) lie directly in {root_path} instead of in a class subfolder "
            f"({examples(top_images, 5)})",
            "for a folder of unlabeled images (a test set) set `unlabeled = true` in [data]; for labels "
            "kept elsewhere set data.manifest to a CSV/Parquet with path and label columns",
        )
    if not class_dirs:
        raise DataError(
            f"no class subfolders in {root_path} (found {suffix_summary(top_other)})",
            "an ImageFolder root holds one subfolder per class (root/cat/1.jpg, root/dog/2.jpg); "
            "otherwise set data.manifest, data.pattern or `unlabeled = true`",
        )

    paths: list[str] = []
    labels: list[str] = []
    skipped = len(top_other)
    empty: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    outside: list[str] = []
    for cls in class_dirs:
        walk = walk_files(root_path / cls, root_path)
        outside += [f"{cls}/{link}" for link in walk.outside]
        if not walk.files and not walk.outside and walk.eda_outputs:
            ignored.append(cls)  # holds nothing but eda output: what `clsctl eda .` once wrote (./eda/<name>)
            continue
        ignored += [f"{cls}/{d}" for d in walk.eda_outputs]
        images, others = split_images(walk.files, exts)
        skipped += len(others)
        if not images:
            empty[cls] = others
            continue
        counts[cls] = len(images)
        paths.extend(f"{cls}/{f}" for f in images)
        labels.extend([cls] * len(images))

    if outside:
        raise outside_root_error(root_path, outside)
    if empty:
        detail = "; ".join(f"{cls}: {suffix_summary(others)}" for cls, others in empty.items())
        found = ", ".join(f"{c} ({n})" for c, n in counts.items()) or "none"
        raise DataError(
            f"class folder(s) without images in {root_path}: {', '.join(empty)} ({detail}); "
            f"classes with images: {found}",
            f"add images to those folders or remove them; image suffixes picked up are "
            f"{', '.join(exts)} (data.extensions)",
        )

    # Sort the whole listing by path: class order must come from sorting, never from listdir.
    order = sorted(range(len(paths)), key=paths.__getitem__)
    df = pd.DataFrame({"path": [paths[i] for i in order], label_column: [labels[i] for i in order]})
    df = finish_manifest(df, root_path, "folder")
    df.attrs["skipped_files"] = int(skipped)
    df.attrs["ignored_dirs"] = sorted(ignored)
    return df


def _check_class_links(root: Path, class_dirs: list[str]) -> None:
    """Refuse class folders that are links leading out of the root, or back to it (a loop).

    Refused rather than skipped: a class that silently goes missing changes what a model is
    trained on, and train and predict show no notes. A link to the root (or above it) would list
    the whole dataset again as one more class.
    """
    bad = []
    for cls in class_dirs:
        folder = root / cls
        if not folder.is_symlink():
            continue
        target = resolved(folder)
        if not is_inside(target, root) or is_inside(root, target):
            bad.append(f"{cls} -> {target}")
    if bad:
        raise DataError(
            f"{len(bad)} class folder link(s) under {root} lead outside it or back to it: {examples(bad)}",
            "copy those images into the root, or point the data path at the folder that holds them; "
            "links whose target stays inside the root are fine",
        )


# --------------------------------------------------------------------------------------------
# Pattern
# --------------------------------------------------------------------------------------------


def _maybe_int(values: list[str | None]) -> pd.Series | list[str | None]:
    """int64 when every value is an integer written plainly (ages); otherwise the text as written.

    Only a plain spelling converts (``45``, not ``045`` or ``+45``): then the number prints back as
    the path wrote it, while ``000001`` and ``1`` (an id, a class folder) would become one value.
    A column with any missing value (an optional group that did not take part) stays text,
    because int64 cannot hold a gap and a nullable Int64 would surprise downstream code.
    """
    if not values or any(v is None or not _PLAIN_INT_RE.fullmatch(v) for v in values):
        return values
    try:
        return pd.Series([int(v) for v in values], dtype="int64")  # type: ignore[arg-type]
    except OverflowError:  # more digits than int64 holds: keep the text
        return values


def manifest_from_pattern(
    root: str | os.PathLike[str],
    pattern: str,
    extensions: Iterable[str] | None = None,
    *,
    strict: bool = True,
) -> pd.DataFrame:
    """List images under ``root`` and parse attributes from their relative paths.

    The regex is applied with :func:`re.fullmatch` to each POSIX path relative to ``root``
    (e.g. ``images/000001_female_Asian_45/mask1.jpg``): the whole path must match, which makes
    a pattern's reach predictable. Add ``.*`` where a prefix or suffix should be free. Named
    groups become columns; a column whose every value is an integer written without a leading
    zero or sign becomes int64 (``000001`` stays text).

    Args:
        root: Folder searched recursively for images.
        pattern: Regular expression with named groups.
        extensions: Image suffixes (case-insensitive); default ``DataConfig().extensions``.
        strict: Whether an image that does not match is an error; if False it is dropped and
            counted in ``attrs["unmatched_files"]``.

    Returns:
        Column ``path`` plus one column per named group, sorted by path; ``attrs["root"]``,
        ``attrs["source"] == "pattern"``, ``attrs["skipped_files"]`` and
        ``attrs["unmatched_files"]`` set.

    Raises:
        DataError: Invalid regex, a group named ``path``, no images, or (strict) images that
            do not match.
    """
    exts = normalize_extensions(extensions)
    root_path = absolute_root(root)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"data.pattern is not a valid regular expression: {exc}",
                        "fix the regex; named groups look like (?P<name>...)") from exc
    if "path" in regex.groupindex:
        raise DataError("data.pattern has a group named 'path', which is reserved for the image path",
                        "rename that group")
    check_root_dir(root_path)

    images, others, ignored = list_images(root_path, exts)

    names = list(regex.groupindex)
    rows: dict[str, list[str | None]] = {n: [] for n in names}
    paths: list[str] = []
    unmatched: list[str] = []
    for rel in images:
        m = regex.fullmatch(rel)
        if m is None:
            unmatched.append(rel)
            continue
        paths.append(rel)
        for n in names:
            rows[n].append(m.group(n))

    if unmatched and (strict or not paths):
        raise DataError(
            f"{len(unmatched)} of {len(images)} image path(s) under {root_path} do not match data.pattern "
            f"{pattern!r} (the whole relative path must match): {examples(unmatched)}",
            "fix the pattern (add `.*` where any text may follow), or move the files out of the root",
        )

    data: dict[str, object] = {"path": paths}
    for n in names:
        data[n] = _maybe_int(rows[n])
    df = pd.DataFrame(data)
    df = finish_manifest(df, root_path, "pattern")
    df.attrs["skipped_files"] = len(others)
    df.attrs["unmatched_files"] = len(unmatched)
    df.attrs["ignored_dirs"] = ignored
    return df


# --------------------------------------------------------------------------------------------
# Unlabeled
# --------------------------------------------------------------------------------------------


def manifest_from_unlabeled(
    root: str | os.PathLike[str],
    extensions: Iterable[str] | None = None,
) -> pd.DataFrame:
    """List every image under ``root`` (recursively) without labels, e.g. a test set.

    Args:
        root: Folder searched recursively.
        extensions: Image suffixes (case-insensitive); default ``DataConfig().extensions``.

    Returns:
        Column ``path`` only, sorted; ``attrs["root"]``, ``attrs["source"] == "unlabeled"`` and
        ``attrs["skipped_files"]`` set.

    Raises:
        DataError: The root is missing, not a folder, or holds no images.
    """
    exts = normalize_extensions(extensions)
    root_path = absolute_root(root)
    check_root_dir(root_path)
    images, others, ignored = list_images(root_path, exts)
    df = finish_manifest(pd.DataFrame({"path": images}), root_path, "unlabeled")
    df.attrs["skipped_files"] = len(others)
    df.attrs["ignored_dirs"] = ignored
    return df


# --------------------------------------------------------------------------------------------
# From the recipe
# --------------------------------------------------------------------------------------------


def load_manifest(data: DataConfig, *, require_label: bool = True) -> pd.DataFrame:
    """Build the manifest that ``[data]`` describes.

    The source is chosen in this order: ``manifest`` set → table (root = ``data.root`` or the
    manifest's folder); ``pattern`` set → pattern; ``unlabeled`` → unlabeled; else ImageFolder
    with the class in ``data.label_column``. A root of the form ``builtin:NAME`` is resolved
    through :func:`builtin_root`. Column names are kept as the source gives them; ``[targets]``
    picks the label. When ``data.group_column`` is set it is copied to ``group``.

    Args:
        data: The ``[data]`` section.
        require_label: For a table, whether ``data.label_column`` must be present and filled.
            (A pattern's label usually comes from ``[targets]``, which checks it when applied.)

    Returns:
        The manifest with ``attrs["root"]`` and ``attrs["source"]`` (``folder``, ``table``,
        ``pattern``, ``unlabeled``, or ``builtin:NAME`` for a builtin ImageFolder).

    Raises:
        DataError: No root where one is needed, or any error of the chosen source.
    """
    root: str | Path | None = data.root
    builtin: str | None = None
    if root is not None and str(root).startswith("builtin:"):
        builtin = str(root)[len("builtin:"):]
        root = builtin_root(builtin)

    if data.manifest:
        df = manifest_from_table(data.manifest, root, data.path_column, data.label_column,
                                 require_label=require_label)
    else:
        if root is None:
            raise DataError("data.root is not set",
                            "set data.root to the image folder (or \"builtin:digits\"), or data.manifest to a table")
        if data.pattern:
            df = manifest_from_pattern(root, data.pattern, data.extensions)
        elif data.unlabeled:
            df = manifest_from_unlabeled(root, data.extensions)
        else:
            df = manifest_from_folder(root, data.extensions, label_column=data.label_column)
            if builtin is not None:
                df.attrs["source"] = f"builtin:{builtin}"

    if data.group_column:
        _copy_group(df, data.group_column, "set data.group_column to one of those columns, or leave it unset")
    return df


def _copy_group(df: pd.DataFrame, column: str, hint: str) -> None:
    """Copy the column that ties images together (photo, person, patient) into ``group``."""
    if column not in df.columns:
        raise DataError(f"group column {column!r} not in the manifest (columns: {', '.join(map(str, df.columns))})",
                        hint)
    df["group"] = df[column]


# --------------------------------------------------------------------------------------------
# From a path on the command line
# --------------------------------------------------------------------------------------------


def _looks_like_image_folder(root: Path, exts: tuple[str, ...], known_classes: Collection[str] | None) -> bool:
    """Visible subfolders, no image directly in ``root`` and, when classes are known, only class subfolders."""
    entries = [e for e in os.listdir(root) if not e.startswith(".")]
    folders = [e for e in entries if (root / e).is_dir() and not is_eda_output(root / e)]
    top_images = [e for e in entries if not (root / e).is_dir() and is_image_name(e, exts)]
    if not folders or top_images:
        return False
    return known_classes is None or all(f in known_classes for f in folders)


def manifest_from_path(
    path: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    pattern: str | None = None,
    root: str | os.PathLike[str] | None = None,
    extensions: Iterable[str] | None = None,
    label_column: str = "label",
    path_column: str = "path",
    require_label: bool = False,
    group: str | None = None,
    known_classes: Collection[str] | None = None,
) -> pd.DataFrame:
    """The manifest of the images a path names: the one place a command decides what a path is.

    * ``manifest`` given: that table, its paths relative to ``path`` (the image root).
    * ``pattern`` given: every image under ``path``, with the regex's named groups as columns.
    * ``path`` a file: a manifest table (``.csv``, ``.parquet``, ``.pq``). Its paths are relative
      to ``root``; without one, to the first of its folder, its parent folder or one of its
      subfolders that holds a sample of them (else its folder).
    * ``path`` a folder: an ImageFolder (the class is the subfolder name) when it has visible
      subfolders and no image directly in it, else a folder of unlabeled images listed
      recursively. With ``known_classes`` (the classes of a trained model) it is an ImageFolder
      only when every subfolder is one of them; an empty collection never makes one. With
      ``require_label`` a folder is always read as an ImageFolder, so that a folder without
      classes fails with the reason.

    Args:
        path: An ImageFolder root, a folder of images, a manifest table, or the root that
            ``manifest`` / ``pattern`` paths are relative to.
        manifest: A CSV/Parquet table with a path column relative to ``path``.
        pattern: A regex with named groups over each relative path (a group named ``label``
            becomes the class).
        root: The image root of a table ``path``; only a table takes one.
        extensions: Image suffixes (case-insensitive); default ``DataConfig().extensions``.
        label_column: The column that holds (or, for an ImageFolder, receives) the class.
        path_column: The path column of a table.
        require_label: Whether the source must give a filled ``label_column`` (a table) or
            classes (a folder).
        group: A column copied into ``group`` (photo, person, patient), as ``data.group_column``.
        known_classes: Class names an ImageFolder's subfolders must all belong to.

    Returns:
        The manifest, with ``attrs["root"]`` and ``attrs["source"]`` (``folder``, ``unlabeled``,
        ``table`` or ``pattern``).

    Raises:
        UsageError: ``manifest`` and ``pattern`` together, or ``root`` with anything but a table.
        DataError: A missing path, an unknown group column, or whatever the source finds wrong.
    """
    if manifest is not None and pattern is not None:
        raise UsageError("--manifest and --pattern both given", "use one: a table, or a regex over file paths")
    if root is not None and (manifest is not None or pattern is not None):
        raise UsageError(f"--root {root} was given with --manifest or --pattern",
                         "with those, the data path itself is the image root")
    source = absolute_root(path)
    if manifest is not None:
        df = manifest_from_table(manifest, absolute_root(source), path_column, label_column,
                                 require_label=require_label)
    elif pattern is not None:
        df = manifest_from_pattern(source, pattern, extensions)
    elif source.is_dir():
        if root is not None and Path(root).resolve() != source.resolve():
            raise UsageError(f"--root {root} was given with an ImageFolder source {source}",
                             "--root is for a manifest table; for a folder, pass the folder itself")
        exts = normalize_extensions(extensions)
        if require_label or _looks_like_image_folder(absolute_root(source), exts, known_classes):
            df = manifest_from_folder(source, exts, label_column=label_column)
        else:
            df = manifest_from_unlabeled(source, exts)
    elif not source.exists():
        raise DataError(f"{source} does not exist", "pass a folder of images or a CSV/Parquet manifest")
    else:
        table_root = root if root is not None else guess_table_root(source)
        df = manifest_from_table(source, table_root, path_column, label_column, require_label=require_label)
    if group is not None:
        _copy_group(df, group, "name one of those columns, or leave --group out")
    return df


def row_ids(df: pd.DataFrame, *, stems: bool = False) -> list[str]:
    """One id per manifest row, as text: what out-of-fold tables and prediction sets are keyed by.

    The manifest's ``id`` column when it is filled and unique; else, with ``stems``, the file names
    without suffix when those are unique (what competitions' sample submissions list); else the relative
    paths. Training keys its out-of-fold rows without ``stems``, so runs trained on the same manifest
    always align by id; prediction sets use ``stems``.
    """
    if "id" in df.columns and df["id"].notna().all() and df["id"].astype(str).is_unique:
        return df["id"].astype(str).tolist()
    if stems:
        names = [Path(str(p)).stem for p in df["path"]]
        if len(set(names)) == len(names):
            return names
    return df["path"].astype(str).tolist()
