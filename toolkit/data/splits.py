"""The ``split`` run: read a source, assign folds, audit them for leakage, and record it all.

The parts live in their own modules: :mod:`toolkit.data.folds` assigns the folds and reports their
balance, :mod:`toolkit.data.leakage` audits them (groups or duplicate images across folds),
:mod:`toolkit.data.shortcuts` audits each fold for file properties and names that predict the label,
and :func:`toolkit.data.sources.manifest_from_path` decides what the source is. :func:`make_split` runs
them in order and writes the manifest with its ``fold`` column into a run folder of kind ``split``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from toolkit.data.folds import FOLD_COLUMN, SplitWarning, assign_folds, fold_report
from toolkit.data.leakage import LeakageError, audit_leakage, leakage_message, load_duplicate_pairs
from toolkit.data.shortcut_features import file_properties
from toolkit.data.shortcuts import audit_shortcuts, shortcuts_skipped
from toolkit.data.sources import manifest_from_path
from toolkit.errors import UsageError, examples
from toolkit.store.tables import CSV_SUFFIXES, PARQUET_SUFFIXES, write_table

if TYPE_CHECKING:
    from toolkit.store.run import Run

__all__ = [
    "SplitResult",
    "audit_split_shortcuts",
    "make_split",
    "read_source",
    "shortcut_notes",
    "write_manifest",
]

StrPath = str | os.PathLike[str]
# A flagged shortcut whose per-fold strength spans this much is reported as uneven across folds.
_UNEVEN_SHORTCUT = 0.3


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
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
        raise UsageError(f"cannot write a manifest to {target}: unknown suffix {suffix or '(none)'!r}",
                         "use a .csv or .parquet file name")
    return write_table(df, target)


def read_source(
    source: StrPath,
    *,
    root: StrPath | None = None,
    label: str = "label",
    require_label: bool = True,
) -> pd.DataFrame:
    """Read what ``clsctl split`` splits: an ImageFolder directory or a CSV/Parquet manifest.

    The source is decided by :func:`toolkit.data.sources.manifest_from_path`: for a table without
    ``root``, the root is the table's folder when its paths resolve there, else its parent folder or
    one of its subfolders, whichever holds a sample of the paths.

    Args:
        source: ImageFolder root, or a ``.csv``/``.parquet`` manifest with a ``path`` column.
        root: Image root for a table (a folder source takes none).
        label: The label column (ImageFolder: the column the class folder name goes to).
        require_label: Whether the source must give labels: a table's ``label`` must be present
            and filled, and a folder must be an ImageFolder (else a folder without class
            subfolders is read as unlabeled images).

    Returns:
        The manifest with ``attrs["root"]``.

    Raises:
        DataError: The source does not exist or cannot be read.
        UsageError: ``root`` given with a folder source.
    """
    return manifest_from_path(source, root=root, label_column=label, require_label=require_label)


@dataclass
class SplitResult:
    """What :func:`make_split` did: the manifest, where it went, and what the checks found.

    ``shortcuts`` is the shortcut audit over the split's folds (see :func:`audit_split_shortcuts`).
    """

    manifest: pd.DataFrame
    run: Run
    written: list[Path]
    report: dict[str, Any]
    audit: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    shortcuts: dict[str, Any] | None = None


def audit_split_shortcuts(df: pd.DataFrame, *, label: str | None, group: str | None,
                          fold_col: str = FOLD_COLUMN) -> dict[str, Any]:
    """The shortcut audit of :mod:`toolkit.data.shortcuts` over a split's own folds.

    File properties come from the headers (:func:`toolkit.data.shortcut_features.file_properties`,
    no pixel decoded), so grey-looking pixels are not tested here (``clsctl eda`` tests them). Each
    finding's ``per_fold`` strength is its rule learned on the other folds and scored on that fold:
    a shortcut only some folds hold makes their scores differ for a reason that is not the model.

    Returns:
        The ``shortcuts`` section (``skipped`` says why when there is no label).
    """
    if label is None or label not in df.columns:
        return shortcuts_skipped("no label column")
    root = df.attrs.get("root")
    if root is None:
        return shortcuts_skipped("the manifest does not say where its images are")
    paths = df["path"].astype(str).tolist()
    table = file_properties(paths, root)
    table.insert(0, "path", paths)
    table.insert(1, "label", df[label].to_numpy(object))
    if group is not None:
        table["group"] = df[group].to_numpy(object)
    return audit_shortcuts(table, folds=df[fold_col].to_numpy(), group="group" if group is not None else None)


def shortcut_notes(section: dict[str, Any]) -> list[str]:
    """Warnings for the flagged shortcuts whose strength differs a lot between folds (a spread of 0.3 or more)."""
    notes = []
    for finding in section["findings"]:
        low, high = finding["fold_range"]
        if low is not None and high - low >= _UNEVEN_SHORTCUT:
            notes.append(f"the shortcut '{finding['label']}' is uneven across folds (strength {low:.2f}–{high:.2f}): "
                         "fold scores will differ with it, not with the model")
    return notes


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
    shortcuts: bool = True,
) -> SplitResult:
    """Read a source, assign folds, audit them, and record it all as a run of kind ``split``.

    The run folder gets ``manifest.csv`` (the source's columns plus ``fold``), run.json the
    parameters (under ``params``) and the image ``root``, and ``summary.json`` the fold report
    (``report``), the audit (``audit``), the shortcut audit per fold (``shortcuts``) and the
    warnings. With ``strict`` and any leakage the run is marked failed and a
    :class:`~toolkit.data.leakage.LeakageError` raised (shortcuts only warn); its ``result`` is
    the :class:`SplitResult`, so the caller can still show the folds.

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
        shortcuts: Audit the folds for file properties and names that predict the label (reads every
            file's header).

    Returns:
        The :class:`SplitResult`.

    Raises:
        UsageError: ``dedup`` and ``hashes`` together, or an unsupported ``out`` suffix.
        DataError: See :func:`read_source` and :func:`assign_folds`.
        LeakageError: ``strict`` and the audit found leakage (after the run is recorded as failed).
    """
    from toolkit.store import RunStore, manifest_fingerprint

    if dedup and hashes is not None:
        raise UsageError("--dedup and --hashes were both given", "use --dedup to compute, or --hashes FILE")
    if out is not None and Path(out).suffix.lower() not in (*CSV_SUFFIXES, *PARQUET_SUFFIXES):
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
    ignored = df.attrs.get("ignored_dirs") or []
    if ignored:
        notes.append(f"left out {len(ignored)} eda output folder(s) inside the image root, not data: "
                     f"{examples(ignored)} (move them out of the data)")
    df = df.assign(**{FOLD_COLUMN: fold})
    pairs = load_duplicate_pairs(df, hashes=hashes) if (dedup or hashes is not None) else None

    report = fold_report(df, label=label_col, group=group)
    audit = audit_leakage(df, group=group, duplicate_pairs=pairs)
    shortcut_section = (audit_split_shortcuts(df, label=label_col, group=group) if shortcuts
                        else shortcuts_skipped("turned off"))
    notes += shortcut_notes(shortcut_section)
    image_root = str(df.attrs.get("root", ""))
    params = {"source": str(Path(source).absolute()), "root": image_root, "label": label, "folds": folds,
              "group": group, "stratify": strat_cols or None, "holdout": holdout, "seed": seed,
              "dedup": dedup, "hashes": str(hashes) if hashes is not None else None, "strict": strict,
              "out": str(out) if out is not None else None, "shortcuts": shortcuts}
    if holdout is not None:
        params["holdout_folds"] = fold.attrs.get("holdout_folds")
    run = RunStore(runs).create("split", name=name, seed=seed,
                                data_fingerprint=manifest_fingerprint(df, image_root or None),
                                extra={"params": params, "root": image_root})
    written: list[Path] = []
    failure: str | None = None
    with run.activate():
        written.append(run.write_manifest(df))
        if out is not None:
            written.append(write_manifest(df, out))
        run.update_summary(report=report, audit=audit, shortcuts=shortcut_section, warnings=notes,
                           manifest=[str(p) for p in written])
        if strict and not audit["ok"]:
            failure = leakage_message(audit)
            run.fail(failure)
    result = SplitResult(manifest=df, run=run, written=written, report=report, audit=audit,
                         warnings=notes, shortcuts=shortcut_section)
    if failure is not None:
        raise LeakageError(failure, "use --group on the column that ties images together, or remove the duplicates "
                           "(clsctl eda lists them); run without --strict to keep this split anyway", result)
    return result
