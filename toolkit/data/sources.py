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

Listings are always sorted by path: file-system order differs between machines and would make
class indices, folds and submissions depend on where the data was copied.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.config.schema import DataConfig
from toolkit.errors import DataError

__all__ = [
    "BUILTIN_DATASETS",
    "builtin_root",
    "default_cache_dir",
    "load_manifest",
    "manifest_from_folder",
    "manifest_from_pattern",
    "manifest_from_table",
    "manifest_from_unlabeled",
]

#: Marker written last into a builtin dataset folder; its presence means the folder is complete.
#: Hidden (leading dot) so the folder listing never counts it as a stray file.
_COMPLETE_MARKER = ".clsctl-complete"

_INT_RE = re.compile(r"[+-]?[0-9]+")
_MAX_LISTED = 10


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _default_extensions() -> list[str]:
    return list(DataConfig().extensions)


def _normalize_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
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


def _is_image_name(name: str, exts: tuple[str, ...]) -> bool:
    # endswith (not Path.suffix) so multi-dot suffixes such as ".nii.gz" work too.
    return name.lower().endswith(exts)


def _abs_root(root: str | os.PathLike[str]) -> Path:
    """Absolute root without resolving symlinks: the path the user named is the one we report."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))


def _check_root_dir(root: Path, what: str = "image root") -> None:
    if not root.exists():
        raise DataError(f"{what} {root} does not exist",
                        "check data.root (a relative path is relative to the recipe file)")
    if not root.is_dir():
        raise DataError(f"{what} {root} is not a folder",
                        "data.root must name a folder of images; a CSV/Parquet list goes in data.manifest")


def _walk(base: Path) -> list[str]:
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


def _split_images(files: Sequence[str], exts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    images = [f for f in files if _is_image_name(posixpath.basename(f), exts)]
    others = [f for f in files if not _is_image_name(posixpath.basename(f), exts)]
    return images, others


def _suffix_summary(files: Sequence[str]) -> str:
    """'12 files: .txt ×10, .csv ×2' — tells the user at a glance why nothing was picked up."""
    if not files:
        return "nothing"
    counts: dict[str, int] = {}
    for f in files:
        suffix = posixpath.splitext(f)[1].lower() or "(no suffix)"
        counts[suffix] = counts.get(suffix, 0) + 1
    parts = ", ".join(f"{s} ×{n}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{len(files)} file(s): {parts}"


def _examples(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    more = len(items) - limit
    return shown + (f" … and {more} more" if more > 0 else "")


def _list_images(root: Path, exts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Images and other files under ``root``; no image at all is an error naming what was found."""
    images, others = _split_images(_walk(root), exts)
    if not images:
        raise DataError(f"no images under {root} (found {_suffix_summary(others)})",
                        f"check data.root and data.extensions (now {', '.join(exts)})")
    return images, others


def _finish(df: pd.DataFrame, root: Path, source: str) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df.attrs["root"] = str(root)
    df.attrs["source"] = source
    return df


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
    ``df.attrs["skipped_files"]``.

    Args:
        root: Folder holding one subfolder per class.
        extensions: Image suffixes (case-insensitive); default ``DataConfig().extensions``.
        label_column: Name of the column that receives the class (subfolder) name.

    Returns:
        Columns ``path`` and ``label_column``, sorted by path; ``attrs["root"]``,
        ``attrs["source"] == "folder"`` and ``attrs["skipped_files"]`` set.

    Raises:
        DataError: The root is missing or not a folder, has no class subfolders, has images
            directly in it, or a class folder holds no images.
    """
    exts = _normalize_extensions(extensions)
    root_path = _abs_root(root)
    _check_root_dir(root_path)

    entries = sorted(p for p in os.listdir(root_path) if not p.startswith("."))
    class_dirs = [e for e in entries if (root_path / e).is_dir()]
    top_files = [e for e in entries if not (root_path / e).is_dir()]
    top_images, top_other = _split_images(top_files, exts)

    if top_images:
        raise DataError(
            f"{len(top_images)} image(s) lie directly in {root_path} instead of in a class subfolder "
            f"({_examples(top_images, 5)})",
            "for a folder of unlabeled images (a test set) set `unlabeled = true` in [data]; for labels "
            "kept elsewhere set data.manifest to a CSV/Parquet with path and label columns",
        )
    if not class_dirs:
        raise DataError(
            f"no class subfolders in {root_path} (found {_suffix_summary(top_other)})",
            "an ImageFolder root holds one subfolder per class (root/cat/1.jpg, root/dog/2.jpg); "
            "otherwise set data.manifest, data.pattern or `unlabeled = true`",
        )

    paths: list[str] = []
    labels: list[str] = []
    skipped = len(top_other)
    empty: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for cls in class_dirs:
        files = _walk(root_path / cls)
        images, others = _split_images(files, exts)
        skipped += len(others)
        if not images:
            empty[cls] = others
            continue
        counts[cls] = len(images)
        paths.extend(f"{cls}/{f}" for f in images)
        labels.extend([cls] * len(images))

    if empty:
        detail = "; ".join(f"{cls}: {_suffix_summary(others)}" for cls, others in empty.items())
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
    df = _finish(df, root_path, "folder")
    df.attrs["skipped_files"] = int(skipped)
    return df


# --------------------------------------------------------------------------------------------
# Table (CSV / Parquet)
# --------------------------------------------------------------------------------------------


def _read_table(path: Path, path_column: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"manifest {path} does not exist",
                        "check data.manifest (a relative path is relative to the recipe file)")
    try:
        if suffix == ".csv":
            # The path column is always text: a name like "0001" must not become the number 1.
            return pd.read_csv(path, dtype={path_column: str})
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        # pyarrow's ArrowInvalid and pandas' EmptyDataError are ValueErrors.
        raise DataError(f"cannot read manifest {path}: {exc}",
                        "check that the file is a valid CSV (UTF-8, with a header row) or Parquet file") from exc
    raise DataError(f"manifest {path} has an unsupported suffix {suffix or '(none)'!r}",
                    "use a .csv or .parquet file")


def _normalize_rel(raw: object, roots: Sequence[str]) -> str | None:
    """Turn one table path into a normalized POSIX path relative to the root.

    Returns:
        The relative path, ``""`` for an empty value, or ``None`` when it escapes the root.
    """
    if raw is None or (isinstance(raw, float) and raw != raw):
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


def _row_list(idx: Sequence[int], values: Sequence[object]) -> str:
    items = [f"row {i + 1} ({v!r})" for i, v in zip(idx, values, strict=True)]
    return _examples(items)


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
    Every other column is kept as read. Rows are numbered from 1 in messages, header excluded.

    Args:
        path: The ``.csv`` or ``.parquet`` file.
        root: Image root the paths are relative to; default the table's folder.
        path_column: Column holding the image path.
        label_column: Column holding the label; it must exist unless ``require_label`` is False.
        require_label: Whether a missing or empty ``label_column`` is an error.

    Returns:
        The manifest with ``attrs["root"]`` and ``attrs["source"] == "table"``.

    Raises:
        DataError: Unsupported suffix, unreadable file, missing columns, empty labels, empty
            paths, paths escaping the root, missing files or duplicate paths.
    """
    table_path = _abs_root(path)
    root_path = _abs_root(root) if root is not None else table_path.parent
    df = _read_table(table_path, path_column)
    columns = [str(c) for c in df.columns]

    if path_column not in df.columns:
        raise DataError(f"manifest {table_path} has no path column {path_column!r} (columns: {', '.join(columns)})",
                        "set data.path_column to the column that holds the image paths")
    if require_label and label_column not in df.columns:
        raise DataError(f"manifest {table_path} has no label column {label_column!r} (columns: {', '.join(columns)})",
                        "set data.label_column to the column that holds the class, or derive it in [targets]")
    if path_column != "path":
        if "path" in df.columns:
            raise DataError(f"manifest {table_path} has both {path_column!r} and 'path' columns",
                            "rename or drop the 'path' column, or set data.path_column = \"path\"")
        df = df.rename(columns={path_column: "path"})
    _check_root_dir(root_path)

    if require_label:
        empty_labels = [i for i, v in enumerate(df[label_column].tolist())
                        if v is None or (isinstance(v, float) and v != v) or str(v).strip() == ""]
        if empty_labels:
            raise DataError(
                f"manifest {table_path}: {len(empty_labels)} row(s) have no {label_column!r} value "
                f"(rows {_examples([str(i + 1) for i in empty_labels])})",
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
                        f"(rows {_examples([str(i + 1) for i in blank])})",
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
        raise DataError(f"manifest {table_path}: {len(dups)} duplicate path(s): {_examples(dups)}",
                        "each image must appear once; drop the repeated rows")

    rel_ok = [r for r in rel if r is not None]  # every None was rejected above; narrows the type
    missing = [r for r in rel_ok if not os.path.isfile(root_path / r)]
    if missing:
        raise DataError(
            f"manifest {table_path}: {len(missing)} of {len(rel)} image(s) not found under {root_path}: "
            f"{_examples(missing)}",
            "set data.root to the folder the paths are relative to, or remove the rows",
        )

    df["path"] = pd.Series(rel_ok, index=df.index, dtype=object).astype(str)
    df = _finish(df, root_path, "table")
    df.attrs["skipped_files"] = 0
    return df


# --------------------------------------------------------------------------------------------
# Pattern
# --------------------------------------------------------------------------------------------


def _maybe_int(values: list[str | None]) -> pd.Series | list[str | None]:
    """int64 when every value looks like an integer (ages, ids); otherwise unchanged.

    A column with any missing value (an optional group that did not take part) stays text,
    because int64 cannot hold a gap and a nullable Int64 would surprise downstream code.
    """
    if not values or any(v is None or not _INT_RE.fullmatch(v) for v in values):
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
    groups become columns; a column whose every value is an integer becomes int64.

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
    exts = _normalize_extensions(extensions)
    root_path = _abs_root(root)
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"data.pattern is not a valid regular expression: {exc}",
                        "fix the regex; named groups look like (?P<name>...)") from exc
    if "path" in regex.groupindex:
        raise DataError("data.pattern has a group named 'path', which is reserved for the image path",
                        "rename that group")
    _check_root_dir(root_path)

    images, others = _list_images(root_path, exts)

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
            f"{pattern!r} (the whole relative path must match): {_examples(unmatched)}",
            "fix the pattern (add `.*` where any text may follow), or move the files out of the root",
        )

    data: dict[str, object] = {"path": paths}
    for n in names:
        data[n] = _maybe_int(rows[n])
    df = pd.DataFrame(data)
    df = _finish(df, root_path, "pattern")
    df.attrs["skipped_files"] = len(others)
    df.attrs["unmatched_files"] = len(unmatched)
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
    exts = _normalize_extensions(extensions)
    root_path = _abs_root(root)
    _check_root_dir(root_path)
    images, others = _list_images(root_path, exts)
    df = _finish(pd.DataFrame({"path": images}), root_path, "unlabeled")
    df.attrs["skipped_files"] = len(others)
    return df


# --------------------------------------------------------------------------------------------
# Builtin datasets
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The clsctl cache: ``$CLSCTL_CACHE`` if set, else ``~/.cache/clsctl``."""
    env = os.environ.get("CLSCTL_CACHE")
    return _abs_root(env) if env else Path.home() / ".cache" / "clsctl"


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8×8 digits (values 0..16) and their classes, as scikit-learn ships them.

    The CSV inside the installed sklearn package is read directly because importing
    ``sklearn.datasets`` pulls in scipy and takes seconds; ``load_digits`` is the fallback
    should a future sklearn move the file.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is a dependency
        raise DataError("builtin:digits needs scikit-learn", "install scikit-learn") from exc
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def _write_digits(target: Path) -> None:
    """scikit-learn's 1797 bundled 8×8 digits as 32×32 PNGs in ImageFolder layout.

    Pixel values 0..16 are scaled to 0..255 and kept white-on-black (like MNIST); upscaling is
    nearest-neighbour so the images stay exactly the original data, only bigger. Files are
    ``<digit>/<index:04d>.png`` with the index into sklearn's order.
    """
    from PIL import Image

    images, classes = _digits_arrays()
    pixels = np.rint(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for cls in range(10):
        (target / str(cls)).mkdir()
    for index, (img, cls) in enumerate(zip(pixels, classes, strict=True)):
        big = img.repeat(4, axis=0).repeat(4, axis=1)  # 8×8 → 32×32, nearest-neighbour
        Image.fromarray(big, mode="L").save(target / str(int(cls)) / f"{index:04d}.png")


#: Builtin dataset name → function that writes it (ImageFolder layout) into an empty folder.
BUILTIN_DATASETS: dict[str, Callable[[Path], None]] = {"digits": _write_digits}


def _materialize(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder once, atomically: into a temp sibling, then ``os.replace`` it into place.

    A reader therefore sees either no folder or a complete one. Two processes may build at the
    same time; whichever renames second finds the folder present and discards its own copy.
    """
    marker = final / _COMPLETE_MARKER
    if marker.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Hidden name: a half-built sibling never shows up in a listing of the parent.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        (tmp / _COMPLETE_MARKER).write_text("complete\n", encoding="utf-8")
        try:
            os.replace(tmp, final)
        except OSError:
            if marker.is_file():
                return final  # another builder won the race; its copy is as good as ours
            # A folder without the marker is not ours (a manual copy or an old layout): replace it.
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def builtin_root(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ImageFolder root of a builtin dataset, written to the cache on first use.

    Args:
        name: Dataset name without the ``builtin:`` prefix (``digits``).
        cache_dir: Cache folder; default ``$CLSCTL_CACHE`` or ``~/.cache/clsctl``. The dataset
            lives in ``<cache>/builtin/<name>``.

    Returns:
        The dataset folder (complete; a marker file records completion).

    Raises:
        DataError: Unknown name.
    """
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown builtin dataset {name!r} (known: {', '.join(sorted(BUILTIN_DATASETS))})",
                        "use data.root = \"builtin:digits\", or point data.root at a folder")
    base = _abs_root(cache_dir) if cache_dir is not None else default_cache_dir()
    return _materialize(base / "builtin" / name, BUILTIN_DATASETS[name])


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
        if data.group_column not in df.columns:
            raise DataError(f"group column {data.group_column!r} not in the manifest "
                            f"(columns: {', '.join(map(str, df.columns))})",
                            "set data.group_column to one of those columns, or leave it unset")
        df["group"] = df[data.group_column]
    return df
