"""Fold assignment: grouped, stratified k-fold (or one holdout), and the report of how balanced it is.

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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from toolkit.errors import DataError, UsageError, is_missing

__all__ = [
    "FOLD_COLUMN",
    "TRAIN_ONLY",
    "SplitWarning",
    "assign_folds",
    "columns_text",
    "fold_report",
    "groups_across_folds",
    "plain_value",
    "require_columns",
]

#: Column the fold assignment is written to.
FOLD_COLUMN = "fold"
#: Fold value of rows that are never held out (the training part of a holdout split).
TRAIN_ONLY = -1
# Largest denominator tried when turning a holdout fraction into m/K folds; more folds cost
# time in StratifiedGroupKFold (it scores every fold for every group) and buy no precision
# that matters for a validation set.
_HOLDOUT_MAX_FOLDS = 20


class SplitWarning(UserWarning):
    """A split that could be made, but not as well as asked (a class too rare for every fold)."""


def columns_text(df: pd.DataFrame) -> str:
    """The column names of a table, as an error message lists them (``none`` for no column)."""
    return ", ".join(map(str, df.columns)) or "none"


def require_columns(df: pd.DataFrame, names: Sequence[str], what: str, option: str) -> None:
    """Raise a :class:`DataError` naming the ``what`` columns missing from ``df`` and the ``option`` that set them."""
    missing = [n for n in names if n not in df.columns]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DataError(
            f"{what} column{plural} {', '.join(map(repr, missing))} not in the manifest "
            f"(columns: {columns_text(df)})",
            f"pass one of those columns to {option}",
        )


def plain_value(value: Any) -> Any:
    """A plain Python value for JSON: numpy scalars unwrapped, everything else as is."""
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__.split(".")[0] == "numpy":
        return item()
    return value


def _label_text(value: Any) -> str:
    return str(plain_value(value))


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
    names = ["<missing>" if is_missing(u) else _label_text(u) for u in uniques]
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
        require_columns(df, [group], "group", "--group")
    require_columns(df, strat_cols, "stratify", "--stratify")

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


def groups_across_folds(df: pd.DataFrame, group: str, fold_col: str = FOLD_COLUMN) -> list[Any]:
    """The values of ``group`` whose rows lie in more than one fold.

    A row without a group value is a group of its own, so it never crosses.
    """
    present = df[[group, fold_col]].dropna(subset=[group])
    per_group = present.groupby(group, sort=True, observed=True)[fold_col].nunique()
    return [plain_value(g) for g in per_group.index[per_group > 1]]


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
    require_columns(df, [fold_col], "fold", "fold_col")
    if label is not None:
        require_columns(df, [label], "label", "--label")
    if group is not None:
        require_columns(df, [group], "group", "--group")

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

    crossing = groups_across_folds(df, group, fold_col) if group is not None else []
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
