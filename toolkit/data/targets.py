"""Targets: derive label columns from a manifest and fix each target's class order.

``[targets]`` turns the columns a source provides into the columns a model learns:

* ``maps``: value → value (exact, or regex keys where the first full match wins),
* ``bins``: numeric column → interval labels (``<30``, ``30-59``, ``>=60``),
* ``combine``: several columns → one combined class (``wear_male_<30``).

They are applied in that order, so a combine can use maps and bins.

Class order decides which output index means which class, so it is a pure function of the
recipe and the data values, never of listing or row order:

* ``targets.classes`` for the label when given;
* a bin: the bin order; a map: the order in which target values first appear in ``values``;
* a combine: the cartesian product of its parts' orders, most significant part first, so
  ``index = ((i_0 * n_1) + i_1) * n_2 + i_2`` — every combination is a class, even one that no
  row has, so indices never depend on which rows exist;
* any other column: its distinct values as text, sorted.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from toolkit.config.schema import BinSpec, CombineSpec, MapSpec, TargetsConfig
from toolkit.errors import DataError, examples, is_missing

__all__ = [
    "apply_targets",
    "bin_labels",
    "check_classes",
    "class_order",
    "encode_labels",
    "map_order",
    "target_columns",
]


def _columns_text(df: pd.DataFrame) -> str:
    return ", ".join(map(str, df.columns))


def _require_column(df: pd.DataFrame, column: str, key: str) -> None:
    if column not in df.columns:
        raise DataError(f"{key}: column {column!r} is not in the manifest (columns: {_columns_text(df)})",
                        f"set {key} to one of those columns")


def _as_text(values: Sequence[object]) -> list[str | None]:
    """Values as the text a recipe writes them as; missing stays None.

    Integral floats print without ``.0`` because a column with a gap is read as float and the
    recipe says ``"1"``, not ``"1.0"``.
    """
    out: list[str | None] = []
    for v in values:
        if is_missing(v):
            out.append(None)
        elif isinstance(v, float | np.floating) and float(v).is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out


def _target_kinds(targets: TargetsConfig) -> dict[str, str]:
    """Derived column name → ``map``/``bin``/``combine``; one name may be defined once."""
    kinds: dict[str, str] = {}
    for kind, section in (("map", targets.maps), ("bin", targets.bins), ("combine", targets.combine)):
        for name in section:
            if name in kinds:
                raise DataError(f"target {name!r} is defined in both targets.{kinds[name]}s and targets.{kind}s",
                                "give each derived column its own name")
            kinds[name] = kind
    return kinds


# --------------------------------------------------------------------------------------------
# Bins
# --------------------------------------------------------------------------------------------


def _fmt_edge(x: float) -> str:
    """Compact edge text: 30.0 → ``30``, 58.5 → ``58.5``."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _checked_edges(name: str, spec: BinSpec) -> list[float]:
    try:
        edges = [float(e) for e in spec.edges]
    except (TypeError, ValueError) as exc:
        raise DataError(f"targets.bins.{name}.edges must be numbers, got {spec.edges!r}",
                        "write the edges as a list of numbers, e.g. [30, 60]") from exc
    if not edges:
        raise DataError(f"targets.bins.{name}.edges is empty", "give at least one boundary, e.g. [30, 60]")
    if any(not np.isfinite(e) for e in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
        raise DataError(f"targets.bins.{name}.edges must be finite and strictly increasing, got {spec.edges!r}",
                        "sort the edges and remove repeats")
    return edges


def bin_labels(name: str, spec: BinSpec) -> list[str]:
    """The labels of a bin target, in bin order.

    Default labels for integer edges ``[30, 60]`` are ``<30``, ``30-59``, ``>=60`` (a bin
    ``a-b`` holds a <= v < b+1, which reads naturally for ages and counts). When an inner bin has
    a fractional edge the upper end is written ``<b``: edges ``[30, 58.5]`` give ``<30``,
    ``30-<58.5``, ``>=58.5``.

    Args:
        name: The derived column name (for messages).
        spec: The bin spec.

    Returns:
        ``len(spec.edges) + 1`` labels.

    Raises:
        DataError: Bad edges, or ``labels`` of the wrong length or with repeats.
    """
    edges = _checked_edges(name, spec)
    if spec.labels is not None:
        labels = [str(lab) for lab in spec.labels]
        if len(labels) != len(edges) + 1:
            raise DataError(
                f"targets.bins.{name}.labels has {len(labels)} label(s) but {len(edges)} edge(s) make "
                f"{len(edges) + 1} bins",
                f"give exactly {len(edges) + 1} labels in targets.bins.{name}.labels, or leave it unset",
            )
        if len(set(labels)) != len(labels):
            raise DataError(f"targets.bins.{name}.labels repeats a label: {labels}",
                            "give every bin its own label")
        return labels
    out = [f"<{_fmt_edge(edges[0])}"]
    for lo, hi in itertools.pairwise(edges):
        if float(lo).is_integer() and float(hi).is_integer():
            out.append(f"{_fmt_edge(lo)}-{_fmt_edge(hi - 1)}")
        else:
            out.append(f"{_fmt_edge(lo)}-<{_fmt_edge(hi)}")
    out.append(f">={_fmt_edge(edges[-1])}")
    return out


def _apply_bin(df: pd.DataFrame, name: str, spec: BinSpec) -> list[str]:
    labels = bin_labels(name, spec)
    edges = _checked_edges(name, spec)
    _require_column(df, spec.column, f"targets.bins.{name}.column")
    raw = df[spec.column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        shown = [f"row {i + 1} ({raw.iloc[i]!r})" for i in bad]
        raise DataError(
            f"targets.bins.{name}: column {spec.column!r} has {bad.size} value(s) that are not numbers "
            f"(rows counted from 1): {examples(shown)}",
            "fix or drop those rows, or bin a numeric column",
        )
    # side="right": a value equal to an edge lands in the bin above it.
    idx = np.searchsorted(np.asarray(edges), values, side="right")
    return [labels[i] for i in idx]


# --------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------


def map_order(spec: MapSpec) -> list[str]:
    """Target values of a map in order of first appearance in ``values``."""
    return list(dict.fromkeys(str(v) for v in spec.values.values()))


def _apply_map(df: pd.DataFrame, name: str, spec: MapSpec) -> list[str]:
    key = f"targets.maps.{name}"
    if not spec.values:
        raise DataError(f"{key}.values is empty", f"list source → target values in {key}.values")
    _require_column(df, spec.column, f"{key}.column")
    mapping = {str(k): str(v) for k, v in spec.values.items()}
    text = _as_text(df[spec.column].tolist())

    lookup: dict[str, str] = {}
    if spec.regex:
        compiled = []
        for k, v in mapping.items():
            try:
                compiled.append((re.compile(k), v))
            except re.error as exc:
                raise DataError(f"{key}.values: key {k!r} is not a valid regular expression: {exc}",
                                "fix the regex, or set regex = false for exact keys") from exc
        # Resolve each distinct value once: manifests have many rows but few distinct values.
        for value in dict.fromkeys(t for t in text if t is not None):
            for rx, target in compiled:
                if rx.fullmatch(value):
                    lookup[value] = target
                    break
    else:
        lookup = mapping

    counts: dict[str, int] = {}
    out: list[str] = []
    for t in text:
        shown = "<missing>" if t is None else t
        if t is None or t not in lookup:
            counts[shown] = counts.get(shown, 0) + 1
            out.append("")
        else:
            out.append(lookup[t])
    if counts:
        unmapped = [f"{v!r} ×{n}" for v, n in sorted(counts.items())]
        raise DataError(
            f"{key}: {len(counts)} value(s) of column {spec.column!r} are not mapped: {examples(unmapped)} "
            f"(keys{' (regex, full match)' if spec.regex else ''}: {', '.join(map(repr, mapping))})",
            f"add those values to {key}.values" + ("" if spec.regex else ", or set regex = true to match patterns"),
        )
    return out


# --------------------------------------------------------------------------------------------
# Combine
# --------------------------------------------------------------------------------------------


def _part_order(df: pd.DataFrame, column: str, targets: TargetsConfig, seen: set[str]) -> list[str]:
    """Class order of one part of a combine (see the module docstring)."""
    if column in targets.combine:
        return _combine_order(df, column, targets, seen)
    if column in targets.maps:
        return map_order(targets.maps[column])
    if column in targets.bins:
        return bin_labels(column, targets.bins[column])
    if column == targets.label and targets.classes is not None:
        return [str(c) for c in targets.classes]
    return _sorted_values(df, column)


def _combine_order(df: pd.DataFrame, name: str, targets: TargetsConfig, seen: set[str] | None = None) -> list[str]:
    seen = set() if seen is None else seen
    if name in seen:
        raise DataError(f"targets.combine.{name} refers to itself through its columns",
                        "a combine may use maps, bins, other combines and manifest columns, without a cycle")
    seen = seen | {name}
    spec: CombineSpec = targets.combine[name]
    if not spec.columns:
        raise DataError(f"targets.combine.{name}.columns is empty", "list the columns to combine, most significant first")
    orders = []
    for col in spec.columns:
        _require_column(df, col, f"targets.combine.{name}.columns")
        orders.append(_part_order(df, col, targets, seen))
    classes = [spec.separator.join(parts) for parts in itertools.product(*orders)]
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise DataError(f"targets.combine.{name}: different combinations give the same class name "
                        f"({examples(dup)}) with separator {spec.separator!r}",
                        f"choose a separator that no part contains (targets.combine.{name}.separator)")
    return classes


def _apply_combine(df: pd.DataFrame, name: str, spec: CombineSpec) -> list[str]:
    if not spec.columns:
        raise DataError(f"targets.combine.{name}.columns is empty", "list the columns to combine, most significant first")
    parts = []
    for col in spec.columns:
        _require_column(df, col, f"targets.combine.{name}.columns")
        text = _as_text(df[col].tolist())
        missing = [i for i, t in enumerate(text) if t is None]
        if missing:
            raise DataError(f"targets.combine.{name}: column {col!r} is empty in {len(missing)} row(s) "
                            f"(rows {examples([str(i + 1) for i in missing])})",
                            "fill in or drop those rows")
        parts.append(text)
    return [spec.separator.join(p) for p in zip(*parts, strict=True)]  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def target_columns(targets: TargetsConfig) -> list[str]:
    """The columns a model is trained on: ``targets.heads`` if any, else ``[targets.label]``."""
    return list(targets.heads) if targets.heads else [targets.label]


def apply_targets(df: pd.DataFrame, targets: TargetsConfig, *, require_label: bool = True) -> pd.DataFrame:
    """Derive the ``[targets]`` columns: maps, then bins, then combines (each in recipe order).

    A derived column may replace a column of the same name (e.g. a map named ``label``).
    ``attrs["class_orders"]`` records the class order of every derived column.

    Args:
        df: The manifest; it is not modified.
        targets: The ``[targets]`` section.
        require_label: Whether the label column and every head must exist afterwards. With
            False (an unlabeled test set) derivations whose source columns are missing are
            skipped instead of failing.

    Returns:
        A new frame with the derived columns added.

    Raises:
        DataError: Missing source columns, unmapped values, non-numeric values to bin, bad
            bin labels, or (``require_label``) a missing label/head column.
    """
    _target_kinds(targets)  # one name, one definition: fail before deriving anything
    out = df.copy()
    orders: dict[str, list[str]] = dict(out.attrs.get("class_orders", {}))

    def present(columns: Sequence[str]) -> bool:
        return require_label or all(c in out.columns for c in columns)

    for name, mspec in targets.maps.items():
        if present([mspec.column]):
            out[name] = _apply_map(out, name, mspec)
            orders[name] = map_order(mspec)
    for name, bspec in targets.bins.items():
        if present([bspec.column]):
            out[name] = _apply_bin(out, name, bspec)
            orders[name] = bin_labels(name, bspec)
    for name, cspec in targets.combine.items():
        if present(cspec.columns):
            # Order first: it validates the parts and their classes before any row is built.
            order = _combine_order(out, name, targets)
            out[name] = _apply_combine(out, name, cspec)
            orders[name] = order

    if require_label:
        needed = list(dict.fromkeys([targets.label, *targets.heads]))
        absent = [c for c in needed if c not in out.columns]
        if absent:
            raise DataError(
                f"target column(s) {', '.join(map(repr, absent))} not in the manifest (columns: {_columns_text(out)})",
                "set targets.label / targets.heads to existing columns, or derive them in "
                "[targets.maps], [targets.bins] or [targets.combine]",
            )
    out.attrs["class_orders"] = orders
    return out


def _sorted_values(df: pd.DataFrame, column: str) -> list[str]:
    text = _as_text(df[column].tolist())
    missing = [i for i, t in enumerate(text) if t is None]
    if missing:
        raise DataError(f"column {column!r} is empty in {len(missing)} row(s) "
                        f"(rows {examples([str(i + 1) for i in missing])})",
                        "fill in or drop those rows before training on this column")
    return sorted({t for t in text if t is not None})


def class_order(df: pd.DataFrame, column: str, targets: TargetsConfig) -> list[str]:
    """The class list of a target column; a class's index is its position here.

    Args:
        df: The manifest (after :func:`apply_targets` for derived columns).
        column: The target column.
        targets: The ``[targets]`` section.

    Returns:
        ``targets.classes`` for the label if given; the bin/map/combine order for a derived
        column; otherwise the column's distinct values as text, sorted.

    Raises:
        DataError: The column is missing or empty in some rows, ``targets.classes`` repeats a
            class, or a value is not among the classes.
    """
    _target_kinds(targets)
    if column not in df.columns:
        raise DataError(f"target column {column!r} is not in the manifest (columns: {_columns_text(df)})",
                        "set targets.label / targets.heads to an existing column, or derive it in [targets]")
    if column == targets.label and targets.classes is not None:
        classes = [str(c) for c in targets.classes]
        if len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            raise DataError(f"targets.classes repeats {', '.join(map(repr, dup))}", "list each class once")
        source = "targets.classes"
    elif column in targets.combine:
        classes, source = _combine_order(df, column, targets), f"targets.combine.{column}"
    elif column in targets.maps:
        classes, source = map_order(targets.maps[column]), f"targets.maps.{column}"
    elif column in targets.bins:
        classes, source = bin_labels(column, targets.bins[column]), f"targets.bins.{column}"
    else:
        return _sorted_values(df, column)

    known = set(classes)
    present = _sorted_values(df, column)
    unknown = [v for v in present if v not in known]
    if unknown:
        raise DataError(f"column {column!r} has value(s) not in {source}: {examples([repr(u) for u in unknown])} "
                        f"(classes: {examples([repr(c) for c in classes], 30)})",
                        f"add them to {source}, or fix or drop those rows")
    return classes


def encode_labels(df: pd.DataFrame, column: str, classes: Sequence[str]) -> np.ndarray:
    """Class indices (int64) of a column's values, per ``classes``.

    Args:
        df: The manifest.
        column: The target column.
        classes: The class order (from :func:`class_order`).

    Returns:
        One int64 index per row.

    Raises:
        DataError: The column is missing, or some value is empty or not in ``classes``.
    """
    if column not in df.columns:
        raise DataError(f"target column {column!r} is not in the manifest (columns: {_columns_text(df)})",
                        "set targets.label / targets.heads to an existing column")
    index = {str(c): i for i, c in enumerate(classes)}
    text = _as_text(df[column].tolist())
    bad = sorted({"<missing>" if t is None else t for t in text if t is None or t not in index})
    if bad:
        raise DataError(f"column {column!r} has value(s) outside its classes: {examples([repr(b) for b in bad])} "
                        f"(classes: {examples([repr(c) for c in classes], 30)})",
                        "fix or drop those rows, or add the values to the class list (targets.classes)")
    return np.fromiter((index[t] for t in text), dtype=np.int64, count=len(text))  # type: ignore[index]


def check_classes(
    df: pd.DataFrame,
    column: str,
    min_count: int = 1,
    *,
    classes: Sequence[str] | None = None,
) -> dict[str, int]:
    """Check that every class has at least ``min_count`` rows.

    Args:
        df: The manifest.
        column: The target column.
        min_count: Smallest acceptable count (e.g. the number of folds for stratified k-fold).
        classes: The full class list; classes with no row at all count as 0 only when given
            (e.g. a combined label's unused combinations).

    Returns:
        Class → row count, in class order (``classes``, or sorted values).

    Raises:
        DataError: Listing the classes below ``min_count`` with their counts.
    """
    if column not in df.columns:
        raise DataError(f"column {column!r} is not in the manifest (columns: {_columns_text(df)})",
                        "name an existing column")
    text = _as_text(df[column].tolist())
    observed: dict[str, int] = {}
    for t in text:
        if t is not None:
            observed[t] = observed.get(t, 0) + 1
    order = [str(c) for c in classes] if classes is not None else sorted(observed)
    counts = {c: observed.get(c, 0) for c in order}
    for extra in sorted(set(observed) - set(counts)):
        counts[extra] = observed[extra]
    small = [f"{c!r}: {n}" for c, n in counts.items() if n < min_count]
    if small:
        raise DataError(
            f"{len(small)} class(es) of {column!r} have fewer than {min_count} image(s): {examples(small, 30)}",
            "add images to those classes, merge or drop them (targets.maps), or use fewer folds",
        )
    return counts
