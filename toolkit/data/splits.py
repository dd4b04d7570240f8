"""Folds without leakage: grouped, stratified k-fold (or one holdout) plus the audit that proves it.

Conventions (the trainer reads them):

* ``fold == k`` means the row is held out (validation) in fold ``k``; folds are ``0..K-1``.
* A holdout split has one fold: validation rows get ``0``, training rows ``-1`` ("never held out").

How folds are made (scikit-learn does the assignment, shuffled and seeded, so a seed always
gives the same folds for the same manifest in the same row order):

* ``stratify`` and ``group``: :class:`~sklearn.model_selection.StratifiedGroupKFold`.
* ``stratify`` only: :class:`~sklearn.model_selection.StratifiedKFold`.
* ``group`` only: :class:`~sklearn.model_selection.GroupKFold` (shuffled).
* neither: :class:`~sklearn.model_selection.KFold`.

A holdout fraction ``f`` is written as a fraction ``m/K`` with a small denominator
(``0.2 = 1/5``, ``0.3 = 3/10``, ``0.25 = 1/4``) and the validation set is the union of the
first ``m`` folds of the K-fold split above. Every fold keeps the class shares and never
splits a group, so their union does too; a random group shuffle (``GroupShuffleSplit``)
would keep groups whole but let a rare class drift.

Rows whose group value is missing are each treated as their own group (with a warning):
dropping them would silently lose data, and lumping them into one giant "unknown" group
would make one fold swallow all of them.

The audit (:func:`audit_leakage`) checks two kinds of leakage: a group present in more than
one fold, and a pair of duplicate images (from ``toolkit.imaging.duplicates`` or an eda run's
``hashes.parquet``) whose two images land in different folds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from toolkit.errors import DataError, ToolkitError, UsageError

if TYPE_CHECKING:
    from toolkit.store.run import Run

__all__ = [
    "LeakageError",
    "SplitResult",
    "SplitWarning",
    "assign_folds",
    "audit_leakage",
    "fold_report",
    "load_duplicate_pairs",
    "make_split",
    "read_source",
    "write_manifest",
]

StrPath = str | os.PathLike[str]

#: Column the fold assignment is written to.
FOLD_COLUMN = "fold"
#: Fold value of rows that are never held out (the training part of a holdout split).
TRAIN_ONLY = -1
# Largest denominator tried when turning a holdout fraction into m/K folds; more folds cost
# time in StratifiedGroupKFold (it scores every fold for every group) and buy no precision
# that matters for a validation set.
_HOLDOUT_MAX_FOLDS = 20
_SHOWN = 10


class SplitWarning(UserWarning):
    """A split that could be made, but not as well as asked (a class too rare for every fold)."""


class LeakageError(ToolkitError):
    """``--strict`` found leakage: a group or a duplicate pair across folds."""

    exit_code = 1


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _columns(df: pd.DataFrame) -> str:
    return ", ".join(map(str, df.columns)) or "none"


def _require_columns(df: pd.DataFrame, names: Sequence[str], what: str, option: str) -> None:
    missing = [n for n in names if n not in df.columns]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DataError(
            f"{what} column{plural} {', '.join(map(repr, missing))} not in the manifest "
            f"(columns: {_columns(df)})",
            f"pass one of those columns to {option}",
        )


def _py(value: Any) -> Any:
    """A plain Python value for JSON: numpy scalars unwrapped, everything else as is."""
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__.split(".")[0] == "numpy":
        return item()
    return value


def _label_text(value: Any) -> str:
    return str(_py(value))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT


def _examples(items: Sequence[Any], limit: int = _SHOWN) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _group_codes(values: pd.Series, column: str, notes: list[str]) -> np.ndarray:
    """Integer group ids; each row with a missing group becomes a group of its own."""
    # Sorted codes number groups as np.unique would: folds then equal scikit-learn's own split of the
    # raw column (StratifiedGroupKFold(k, shuffle=True, random_state=seed)), so numbers quoted
    # elsewhere for "fold 0" are comparable.
    codes, _ = pd.factorize(values.astype(str).where(values.notna()), sort=True, use_na_sentinel=True)
    codes = codes.astype(np.int64)
    missing = codes < 0
    n_missing = int(missing.sum())
    if n_missing:
        start = int(codes.max()) + 1 if n_missing < len(codes) else 0
        codes[missing] = np.arange(start, start + n_missing, dtype=np.int64)
        notes.append(f"{n_missing} row(s) have no value in group column {column!r}: each is treated as "
                      "its own group")
    return codes


def _strata(df: pd.DataFrame, stratify: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer stratum per row and the stratum names (a combined key for several columns)."""
    # Several columns stratify on their combination, like a combined 18-class label.
    key = df[stratify[0]] if len(stratify) == 1 else df[list(stratify)].astype(str).agg("_".join, axis=1)
    # A missing label is a stratum of its own rather than an error: the split is still valid,
    # and the label check belongs to whoever trains on it.
    codes, uniques = pd.factorize(key, sort=True, use_na_sentinel=False)
    names = ["<missing>" if _is_missing(u) else _label_text(u) for u in uniques]
    return codes.astype(np.int64), names


def _kfold(n: int, k: int, strata: np.ndarray | None, groups: np.ndarray | None, seed: int,
           notes: list[str]) -> np.ndarray:
    """Fold index 0..k-1 of every row from the scikit-learn splitter that fits the options."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if strata is not None and np.bincount(strata).max() < k:
        # scikit-learn refuses to stratify when every class is smaller than k; the split
        # itself is still possible, only stratification is meaningless.
        notes.append(f"every class has fewer than {k} rows: folds are made without stratification")
        strata = None
    if strata is None:
        splitter: Any = (GroupKFold(k, shuffle=True, random_state=seed) if groups is not None
                         else KFold(k, shuffle=True, random_state=seed))
    else:
        splitter = (StratifiedGroupKFold(k, shuffle=True, random_state=seed) if groups is not None
                    else StratifiedKFold(k, shuffle=True, random_state=seed))
    folds = np.full(n, TRAIN_ONLY, dtype=np.int64)
    with warnings.catch_warnings():
        # scikit-learn's "least populated class" warning is replaced by our own, which says
        # which class and which folds (see _coverage_notes).
        warnings.simplefilter("ignore", UserWarning)
        for index, (_, test) in enumerate(splitter.split(np.zeros((n, 1)), strata, groups)):
            folds[test] = index
    _fill_empty_folds(folds, k, groups)
    return folds


def _fill_empty_folds(folds: np.ndarray, k: int, groups: np.ndarray | None) -> None:
    """Move one whole group into any fold left empty, so every fold has a validation set.

    The greedy group assignment can in principle leave a fold without rows when groups are
    few; the trainer cannot score an empty fold, so a small group from the fold holding the
    most groups is moved there (keeping groups whole).
    """
    units = groups if groups is not None else np.arange(len(folds))
    for empty in range(k):
        if (folds == empty).any():
            continue
        per_fold = {f: np.unique(units[folds == f]) for f in range(k)}
        donor = max(per_fold, key=lambda f: len(per_fold[f]))
        if len(per_fold[donor]) < 2:
            return  # cannot happen with at least k groups, checked by the caller
        sizes = {g: int((units == g).sum()) for g in per_fold[donor]}
        smallest = min(sizes, key=lambda g: (sizes[g], g))
        folds[units == smallest] = empty


def _coverage_notes(folds: np.ndarray, strata: np.ndarray, names: list[str], groups: np.ndarray | None,
                    k: int, holdout: bool) -> list[str]:
    """Say, per class, which validation sets lack it and which training sets never see it."""
    notes: list[str] = []
    valid_folds = [0] if holdout else list(range(k))
    for code, name in enumerate(names):
        rows = strata == code
        members = int(rows.sum())
        in_folds = set(np.unique(folds[rows]).tolist())
        absent = [f for f in valid_folds if f not in in_folds]
        n_groups = len(np.unique(groups[rows])) if groups is not None else members
        where = f"{members} row(s) in {n_groups} group(s)" if groups is not None else f"{members} member(s)"
        if absent:
            if holdout:
                notes.append(f"class {name!r} has {where}: it is absent from the validation set")
            else:
                reason = f" < {k} folds" if n_groups < k else ""
                fold_list = ", ".join(map(str, absent))
                notes.append(f"class {name!r} has {where}{reason}: it is absent from the validation of "
                             f"{len(absent)} fold(s) (fold {fold_list})")
        only_valid = in_folds <= set(valid_folds) and len(in_folds) == 1
        if only_valid:
            fold = next(iter(in_folds))
            if holdout:
                notes.append(f"class {name!r} has {where}: all of them are in the validation set, so "
                             "training never sees it")
            else:
                notes.append(f"class {name!r} has {where}, all in fold {fold}: the model of fold {fold} "
                             "never sees it in training")
    return notes


def _holdout_fraction(frac: float, n_units: int) -> tuple[int, int]:
    """``(m, K)`` with ``m/K`` close to ``frac`` and ``2 <= K <= n_units``."""
    max_den = min(max(_HOLDOUT_MAX_FOLDS, math.ceil(1 / min(frac, 1 - frac))), n_units)
    approx = Fraction(frac).limit_denominator(max_den)
    m, k = approx.numerator, approx.denominator
    if m == 0:  # too small for this many groups: the smallest non-empty validation set
        m, k = 1, max_den
    elif m == k:  # too large: the largest validation set that still leaves training rows
        m, k = max_den - 1, max_den
    if k < 2:
        m, k = 1, 2
    return m, k


# --------------------------------------------------------------------------------------------
# Assigning folds
# --------------------------------------------------------------------------------------------


def assign_folds(
    df: pd.DataFrame,
    *,
    folds: int = 5,
    group: str | None = None,
    stratify: str | Sequence[str] | None = "label",
    holdout: float | None = None,
    seed: int = 42,
) -> pd.Series:
    """Assign every row a fold: grouped, stratified, deterministic for a seed.

    Args:
        df: The manifest.
        folds: Number of folds K (at least 2). Ignored when ``holdout`` is given.
        group: Column whose values never straddle two folds (person, photo, patient).
        stratify: Column (or columns, stratified on their combination) whose class shares
            every fold keeps; ``None`` for plain (group) k-fold.
        holdout: Instead of K folds, one validation set of about this fraction of the rows
            (strictly between 0 and 1): validation rows get fold 0, training rows -1.
        seed: Seed of the shuffle.

    Returns:
        int64 Series named ``fold``, aligned to ``df.index``. ``attrs["warnings"]`` lists what
        could not be done as asked (also issued as :class:`SplitWarning`), ``attrs["folds"]``
        the number of folds made and, for a holdout, ``attrs["holdout_folds"]`` the ``(m, K)``
        used.

    Raises:
        DataError: Empty manifest, a missing column (the message lists the columns), or fewer
            groups (rows, when ungrouped) than folds.
        UsageError: ``folds < 2`` or ``holdout`` not strictly between 0 and 1.
    """
    if holdout is not None:
        if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 < holdout < 1:
            raise UsageError(f"holdout must be a fraction strictly between 0 and 1, not {holdout!r}",
                             "e.g. --holdout 0.2 for a 20% validation set")
    elif isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise UsageError(f"folds must be an integer of at least 2, not {folds!r}",
                         "e.g. --folds 5, or --holdout 0.2 for a single train/valid split")
    if len(df) == 0:
        raise DataError("the manifest is empty: there are no rows to split",
                        "check the source: it lists no images")
    strat_cols = [stratify] if isinstance(stratify, str) else list(stratify or [])
    if group is not None:
        _require_columns(df, [group], "group", "--group")
    _require_columns(df, strat_cols, "stratify", "--stratify")

    notes: list[str] = []
    groups = _group_codes(df[group], group, notes) if group is not None else None
    n_units = len(np.unique(groups)) if groups is not None else len(df)
    unit = "groups" if groups is not None else "rows"
    strata, names = _strata(df, strat_cols) if strat_cols else (None, [])

    if holdout is None:
        k = int(folds)
        if n_units < k:
            where = f" in column {group!r}" if group is not None else ""
            raise DataError(f"{n_units} {unit}{where} cannot fill {k} folds: each fold needs at least one",
                            f"use --folds {max(n_units, 2)} or fewer" if n_units >= 2
                            else "add data: a split needs at least two groups")
        assigned = _kfold(len(df), k, strata, groups, seed, notes)
        made = k
    else:
        if n_units < 2:
            raise DataError(f"{n_units} {unit} cannot make a holdout split: it needs at least two",
                            "add data, or split on a finer group column")
        m, k = _holdout_fraction(float(holdout), n_units)
        base = _kfold(len(df), k, strata, groups, seed, notes)
        assigned = np.where(base < m, 0, TRAIN_ONLY).astype(np.int64)
        made = 1
        if abs(m / k - holdout) > 0.02:
            notes.append(f"holdout {holdout:g} is approximated by {m}/{k} = {m / k:.3f} of the {unit} "
                         f"(only {n_units} {unit})")
    if strata is not None:
        notes.extend(_coverage_notes(assigned, strata, names, groups, made, holdout is not None))

    for note in notes:
        warnings.warn(note, SplitWarning, stacklevel=2)
    result = pd.Series(assigned, index=df.index, name=FOLD_COLUMN, dtype="int64")
    result.attrs["warnings"] = notes
    result.attrs["folds"] = made
    if holdout is not None:
        result.attrs["holdout_folds"] = [m, k]
    return result


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _crossing_groups(df: pd.DataFrame, group: str, fold_col: str) -> list[Any]:
    present = df[[group, fold_col]].dropna(subset=[group])  # a missing group is its own group
    per_group = present.groupby(group, sort=True, observed=True)[fold_col].nunique()
    return [_py(g) for g in per_group.index[per_group > 1]]


def _count_block(sub: pd.DataFrame, label: str | None, classes: list[Any], group: str | None) -> dict[str, Any]:
    block: dict[str, Any] = {"n": len(sub)}
    if group is not None:
        block["groups"] = int(sub[group].nunique(dropna=True)) + int(sub[group].isna().sum())
    if label is not None:
        counts = sub[label].value_counts(dropna=False)
        n = max(len(sub), 1)
        block["counts"] = {_label_text(c): int(counts.get(c, 0)) for c in classes}
        block["share"] = {_label_text(c): int(counts.get(c, 0)) / n for c in classes}
    return block


def fold_report(
    df: pd.DataFrame,
    fold_col: str = FOLD_COLUMN,
    label: str | None = "label",
    group: str | None = None,
) -> dict[str, Any]:
    """Per-fold counts and class shares, the worst share deviation, and groups across folds.

    Validation folds are the fold values ``>= 0``; rows with fold ``-1`` (the training part of
    a holdout split) are summarised under ``train_only``.

    Args:
        df: The manifest with a fold column.
        fold_col: The fold column.
        label: The class column; ``None`` for no class statistics.
        group: The group column, for group counts and ``groups_crossing``.

    Returns:
        A JSON-able dict: ``n_rows``, ``n_folds``, ``classes`` (most frequent first),
        ``overall`` and one entry per fold in ``folds`` (``n``, ``groups``, ``counts``,
        ``share`` per class), ``train_only`` (or ``None``), ``max_deviation`` (``value`` = the
        largest absolute difference between a class's share in a validation fold and its
        overall share, with its ``class`` and ``fold``), ``missing`` (``{fold, class}`` for
        every class absent from a validation fold), ``groups_crossing`` (groups in more than
        one fold, ``-1`` included) and ``warnings``.

    Raises:
        DataError: A named column is not in ``df``.
    """
    _require_columns(df, [fold_col], "fold", "fold_col")
    if label is not None:
        _require_columns(df, [label], "label", "--label")
    if group is not None:
        _require_columns(df, [group], "group", "--group")

    classes: list[Any] = []
    if label is not None:
        counts = df[label].value_counts(dropna=False)
        # Most frequent first (ties by name) so tables read from the common to the rare class.
        classes = sorted(counts.index, key=lambda c: (-int(counts[c]), _label_text(c)))
    fold_values = sorted(int(v) for v in pd.unique(df[fold_col]) if int(v) >= 0)
    overall = _count_block(df, label, classes, group)
    per_fold = []
    for value in fold_values:
        block = {"fold": value, **_count_block(df[df[fold_col] == value], label, classes, group)}
        per_fold.append(block)
    train_rows = df[df[fold_col] < 0]
    train_only = _count_block(train_rows, label, classes, group) if len(train_rows) else None

    max_dev: dict[str, Any] | None = None
    missing: list[dict[str, Any]] = []
    notes: list[str] = []
    if label is not None and per_fold:
        best = (-1.0, "", -1)
        for block in per_fold:
            for name, share in block["share"].items():
                dev = abs(share - overall["share"][name])
                if dev > best[0]:
                    best = (dev, name, block["fold"])
                if block["counts"][name] == 0:
                    missing.append({"fold": block["fold"], "class": name})
        max_dev = {"value": best[0], "class": best[1], "fold": best[2]}
        by_class: dict[str, list[int]] = {}
        for item in missing:
            by_class.setdefault(item["class"], []).append(item["fold"])
        for name, absent in by_class.items():
            notes.append(f"class {name!r} ({overall['counts'][name]} row(s)) is absent from the validation "
                         f"of fold(s) {', '.join(map(str, absent))}")

    crossing = _crossing_groups(df, group, fold_col) if group is not None else []
    return {
        "n_rows": len(df),
        "n_folds": len(fold_values),
        "label": label,
        "group": group,
        "classes": [_label_text(c) for c in classes],
        "overall": overall,
        "folds": per_fold,
        "train_only": train_only,
        "max_deviation": max_dev,
        "missing": missing,
        "groups_crossing": crossing,
        "warnings": notes,
    }


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
    text = "" if _is_missing(raw) else str(raw).replace("\\", "/")
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
    _require_columns(df, [fold_col], "fold", "fold_col")
    if group is not None:
        _require_columns(df, [group], "group", "--group")
    crossing_groups = _crossing_groups(df, group, fold_col) if group is not None else []

    duplicates: dict[str, Any] | None = None
    if duplicate_pairs is not None:
        _require_columns(df, ["path"], "path", "the manifest")
        missing = [c for c in ("a", "b") if c not in duplicate_pairs.columns]
        if missing:
            raise DataError(f"duplicate pair table has no column(s) {', '.join(missing)} "
                            f"(columns: {_columns(duplicate_pairs)})",
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
                leaks.append({"a": pa, "b": pb, "kind": None if _is_missing(kind) else _py(kind),
                              "distance": None if _is_missing(dist) else _py(dist),
                              "fold_a": fa, "fold_b": fb})
        duplicates = {"pairs": len(duplicate_pairs), "matched": matched,
                      "unmatched": len(duplicate_pairs) - matched, "crossing": leaks}

    findings = len(crossing_groups) + (len(duplicates["crossing"]) if duplicates else 0)
    return {"group": group, "groups_crossing": crossing_groups, "duplicates": duplicates,
            "findings": findings, "ok": findings == 0}


# --------------------------------------------------------------------------------------------
# Reading and writing manifests, duplicate lists
# --------------------------------------------------------------------------------------------


def write_manifest(df: pd.DataFrame, path: StrPath) -> Path:
    """Write a manifest as CSV or Parquet (by suffix), atomically.

    Args:
        df: The manifest; the index is not written.
        path: ``.csv``, ``.parquet`` or ``.pq`` file.

    Returns:
        The written path.

    Raises:
        UsageError: Any other suffix.
    """
    from toolkit.store.atomic import atomic_write_bytes, atomic_write_text

    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".csv":
        atomic_write_text(target, df.to_csv(index=False, lineterminator="\n"))
    elif suffix in (".parquet", ".pq"):
        out = df.copy()
        # pandas stores attrs as JSON in the Parquet metadata; keep only what JSON can hold.
        out.attrs = json.loads(json.dumps(df.attrs, default=str))
        buffer = io.BytesIO()
        out.to_parquet(buffer, index=False)
        atomic_write_bytes(target, buffer.getvalue())
    else:
        raise UsageError(f"cannot write a manifest to {target}: unknown suffix {suffix or '(none)'!r}",
                         "use a .csv or .parquet file name")
    return target


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype={"path": str, "a": str, "b": str})
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path}: {exc}", "check that it is a valid CSV or Parquet file") from exc
    raise DataError(f"{path} has an unsupported suffix {suffix or '(none)'!r}", "use a .csv or .parquet file")


def _guess_root(table: Path) -> Path | None:
    """The folder a table's paths are relative to: its own folder, its parent or a subfolder.

    Checks a sample of relative paths; returns the first candidate under which all exist.
    """
    try:
        paths = _read_table(table)
    except DataError:
        return None
    if "path" not in paths.columns:
        return None
    sample = [str(p).replace("\\", "/") for p in paths["path"].dropna().head(25)]
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


def read_source(
    source: StrPath,
    *,
    root: StrPath | None = None,
    label: str = "label",
    require_label: bool = True,
) -> pd.DataFrame:
    """Read what ``clsctl split`` splits: an ImageFolder directory or a CSV/Parquet manifest.

    For a table without ``root``, the root is the table's folder when its paths resolve there,
    else its parent folder or one of its subfolders, whichever holds a sample of the paths.

    Args:
        source: ImageFolder root, or a ``.csv``/``.parquet`` manifest with a ``path`` column.
        root: Image root for a table (ignored for a folder).
        label: The label column (ImageFolder: the column the class folder name goes to).
        require_label: For a table, whether ``label`` must be present and filled.

    Returns:
        The manifest with ``attrs["root"]``.

    Raises:
        DataError: The source does not exist or cannot be read.
        UsageError: ``root`` given with a folder source.
    """
    from toolkit.data.sources import manifest_from_folder, manifest_from_table

    src = Path(source)
    if src.is_dir():
        if root is not None and Path(root).resolve() != src.resolve():
            raise UsageError(f"--root {root} was given with an ImageFolder source {src}",
                             "--root is for a manifest table; for a folder, pass the folder itself")
        return manifest_from_folder(src, label_column=label)
    if not src.exists():
        raise DataError(f"{src} does not exist", "pass an ImageFolder directory or a CSV/Parquet manifest")
    if root is None:
        guessed = _guess_root(src)
        root = guessed if guessed is not None else None
    return manifest_from_table(src, root, label_column=label, require_label=require_label)


def _pairs_from_hashes(hashes: pd.DataFrame) -> pd.DataFrame:
    try:
        from toolkit.imaging.duplicates import duplicate_pairs
    except ImportError:
        duplicate_pairs = None
    if duplicate_pairs is not None:
        return duplicate_pairs(hashes)
    # Without the duplicates module only byte-identical files can be paired. A chain a-b, b-c
    # per identical set is enough for the audit: if any two members differ in fold, some
    # neighbouring pair does.
    if "sha1" not in hashes.columns or "path" not in hashes.columns:
        raise DataError(f"hash table has no 'path' and 'sha1' columns (columns: {_columns(hashes)})",
                        "pass the hashes.parquet an eda run wrote, or a pair table with columns a, b")
    rows = []
    for _, paths in hashes.dropna(subset=["sha1"]).groupby("sha1", sort=True)["path"]:
        ordered = sorted(map(str, paths))
        rows += [(x, y, "exact", 0) for x, y in zip(ordered, ordered[1:], strict=False)]
    return pd.DataFrame(rows, columns=["a", "b", "kind", "distance"])


def load_duplicate_pairs(
    df: pd.DataFrame,
    *,
    hashes: StrPath | None = None,
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
        DataError: The file is missing or has neither layout.
        UsageError: Hashes must be computed but ``toolkit.imaging.duplicates`` is not installed.
    """
    if hashes is not None:
        path = Path(hashes)
        if path.is_dir():
            path = path / "hashes.parquet"
        if not path.is_file():
            raise DataError(f"{path} does not exist",
                            "pass the folder of an eda run (it writes hashes.parquet), or use --dedup")
        table = _read_table(path)
        if {"a", "b"} <= set(table.columns):
            return table
        return _pairs_from_hashes(table)
    try:
        from toolkit.imaging.duplicates import duplicate_pairs, image_hashes
    except ImportError as exc:
        raise UsageError("--dedup needs toolkit.imaging.duplicates, which this installation lacks",
                         "pass --hashes <eda run>/hashes.parquet instead") from exc
    root = df.attrs.get("root")
    if root is None:
        raise UsageError("the manifest does not say where its images are (no root)",
                         "read it with read_source or a toolkit.data.sources function")
    table = image_hashes(df["path"].astype(str).tolist(), root, workers=workers)
    return duplicate_pairs(table)


# --------------------------------------------------------------------------------------------
# The whole split, recorded as a run
# --------------------------------------------------------------------------------------------


@dataclass
class SplitResult:
    """What :func:`make_split` did: the manifest, where it went, and what the checks found."""

    manifest: pd.DataFrame
    run: Run
    written: list[Path]
    report: dict[str, Any]
    audit: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    strict_failure: str | None = None


def _strict_message(audit: dict[str, Any]) -> str:
    parts = []
    groups = audit["groups_crossing"]
    if groups:
        parts.append(f"{len(groups)} group(s) in more than one fold ({_examples(groups)})")
    dup = audit["duplicates"]
    if dup and dup["crossing"]:
        pairs = [f"{p['a']} (fold {p['fold_a']}) ~ {p['b']} (fold {p['fold_b']})" for p in dup["crossing"]]
        parts.append(f"{len(pairs)} duplicate pair(s) split across folds: {_examples(pairs, 5)}")
    return "leakage: " + "; ".join(parts)


def make_split(
    source: StrPath,
    *,
    root: StrPath | None = None,
    label: str = "label",
    folds: int = 5,
    group: str | None = None,
    stratify: str | Sequence[str] | None = "label",
    holdout: float | None = None,
    seed: int = 42,
    out: StrPath | None = None,
    dedup: bool = False,
    hashes: StrPath | None = None,
    strict: bool = False,
    name: str | None = None,
    runs: StrPath | None = None,
) -> SplitResult:
    """Read a source, assign folds, audit them, and record it all as a run of kind ``split``.

    The run folder gets ``manifest.csv`` (the source's columns plus ``fold``), run.json the
    parameters (under ``params``) and the image ``root``, and ``summary.json`` the fold report
    (``report``), the audit (``audit``) and the warnings. With ``strict`` and any finding the
    run is marked failed and :attr:`SplitResult.strict_failure` says why (the caller raises).

    Args:
        source: ImageFolder directory or CSV/Parquet manifest.
        root: Image root for a table source (see :func:`read_source`).
        label: The label column.
        folds: Number of folds.
        group: Group column.
        stratify: Column(s) to stratify on; ``None`` for none.
        holdout: Validation fraction for a single holdout split instead of folds.
        seed: Seed of the fold assignment.
        out: Extra copy of the manifest (``.csv`` or ``.parquet``).
        dedup: Compute duplicate pairs and audit them.
        hashes: An eda hashes file/run folder or a pair table to audit (instead of ``dedup``).
        strict: Treat any audit finding as a failure.
        name: Run name.
        runs: Runs folder.

    Returns:
        The :class:`SplitResult`.

    Raises:
        UsageError: ``dedup`` and ``hashes`` together, or an unsupported ``out`` suffix.
        DataError: See :func:`read_source` and :func:`assign_folds`.
    """
    from toolkit.store import RunStore, manifest_fingerprint

    if dedup and hashes is not None:
        raise UsageError("--dedup and --hashes were both given", "use --dedup to compute, or --hashes FILE")
    if out is not None and Path(out).suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise UsageError(f"--out {out} must end in .csv or .parquet", "e.g. --out folds.csv")
    strat_cols = [stratify] if isinstance(stratify, str) else list(stratify or [])
    df = read_source(source, root=root, label=label, require_label=label in strat_cols)
    label_col = label if label in df.columns else None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SplitWarning)
        fold = assign_folds(df, folds=folds, group=group, stratify=strat_cols or None, holdout=holdout,
                            seed=seed)
    notes = list(fold.attrs.get("warnings", []))
    for item in caught:  # re-issue anything else (the SplitWarnings are in ``notes``)
        if not issubclass(item.category, SplitWarning):
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    if group is None and "group" in df.columns:
        notes.append("the manifest has a 'group' column but no --group was given: groups may straddle folds")
    if FOLD_COLUMN in df.columns:
        notes.append(f"the source's own {FOLD_COLUMN!r} column was replaced")
    df = df.assign(**{FOLD_COLUMN: fold})
    pairs = load_duplicate_pairs(df, hashes=hashes) if (dedup or hashes is not None) else None

    report = fold_report(df, label=label_col, group=group)
    audit = audit_leakage(df, group=group, duplicate_pairs=pairs)
    image_root = str(df.attrs.get("root", ""))
    params = {"source": str(Path(source).absolute()), "root": image_root, "label": label, "folds": folds,
              "group": group, "stratify": strat_cols or None, "holdout": holdout, "seed": seed,
              "dedup": dedup, "hashes": str(hashes) if hashes is not None else None, "strict": strict,
              "out": str(out) if out is not None else None}
    if holdout is not None:
        params["holdout_folds"] = fold.attrs.get("holdout_folds")
    run = RunStore(runs).create("split", name=name, seed=seed,
                                data_fingerprint=manifest_fingerprint(df, image_root or None),
                                extra={"params": params, "root": image_root})
    written: list[Path] = []
    failure: str | None = None
    with run.activate():
        written.append(write_manifest(df, run.file("manifest.csv")))
        if out is not None:
            written.append(write_manifest(df, out))
        run.update_summary(report=report, audit=audit, warnings=notes,
                           manifest=[str(p) for p in written])
        if strict and not audit["ok"]:
            failure = _strict_message(audit)
            run.fail(failure)
    return SplitResult(manifest=df, run=run, written=written, report=report, audit=audit,
                       warnings=notes, strict_failure=failure)
