"""Ensemble members: runs (out-of-fold + a prediction set) and plain prediction files, aligned by id.

A run member brings ``oof.parquet`` and, when asked, ``predictions/<NAME>.parquet``. A file member
brings test predictions only: a Parquet file of probabilities (``id`` + one column per class), or a
CSV submission — ``id,label`` (hard voting only) or ``id`` + one column per class.

Members must share one class list (same names; their column order may differ) and, for the
out-of-fold rows, the same ids with the same labels. Rows are matched by id, never by position.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.errors import DataError, RunError, UsageError, examples
from toolkit.store import Run, resolve_runs
from toolkit.store.tables import RESERVED_COLUMNS, read_table, release_freed_tables

FILE_SUFFIXES = (".parquet", ".pq", ".csv")


@dataclass
class Member:
    """One member. ``oof``/``test`` are DataFrames with ``id`` (+ ``path``), and class columns or ``label``.

    Once :func:`toolkit.ensemble.ensemble` has voted, their rows are in the aligned order of the first
    member and their class columns (in the common class order) are views of the voted matrices.
    """

    name: str
    source: str  # the run id, or the file's path
    run: object | None  # toolkit.store.Run for run members
    classes: list[str]
    oof: pd.DataFrame | None
    test: pd.DataFrame | None
    labels_only: bool = False  # a submission CSV with a label column
    parts: list | None = None  # a composed member: the runs it is made of (toolkit.ensemble.compose)

    @property
    def is_run(self) -> bool:
        return self.run is not None


def _single_head_classes(run: Run) -> list[str]:
    heads, classes = run.read_classes()
    if len(heads) > 1:
        raise UsageError(f"run {run.id} is a multi-head run ({', '.join(heads)})",
                         "ensemble single-head runs; for multi-head runs ensemble one head's predictions as files")
    return list(classes[heads[0]])


def common_prediction_set(runs: Sequence, wanted: str | None) -> str | None:
    """The prediction set every run has: ``wanted`` (an error if a run lacks it), or the newest common one."""
    if not runs:
        return None
    sets = [r.prediction_sets() for r in runs]
    if wanted is not None:
        lacking = [r.id for r, s in zip(runs, sets, strict=True) if wanted not in s]
        if lacking:
            have = sorted(set.intersection(*(set(s) for s in sets)))
            raise DataError(f"prediction set {wanted!r} is missing from run(s) {examples(lacking)}",
                            f"run `clsctl predict RUN DATA --name {wanted}` for them"
                            + (f"; sets every run has: {', '.join(have)}" if have else ""))
        return wanted
    common = set.intersection(*(set(s) for s in sets))
    if not common:
        return None
    return max(common, key=lambda n: (max(s[n] for s in sets), n))


def _file_member(path: Path, name: str) -> Member:
    frame = read_table(path, first_column_text=True, keep_default_na=False, what="prediction file",
                       hint="pass a Parquet prediction file or a submission CSV")
    if path.suffix.lower() == ".csv":
        id_col = frame.columns[0]
        frame = frame.rename(columns={id_col: "id"})
        answer = [c for c in frame.columns if c != "id"]
        if len(answer) == 1:
            labels = frame[answer[0]].astype(str)
            return Member(name, str(path), None, sorted(labels.unique()),
                          None, pd.DataFrame({"id": frame["id"].astype(str), "label": labels}), labels_only=True)
        classes = [str(c) for c in answer]
    else:
        if "id" not in frame.columns:
            raise DataError(f"{path} has no `id` column (columns: {examples([str(c) for c in frame.columns])})",
                            "pass a predictions/<name>.parquet written by clsctl predict, or a table with id + classes")
        classes = [str(c) for c in frame.columns if c not in RESERVED_COLUMNS]
    if not classes:
        raise DataError(f"{path} has no class columns", "one probability column per class is needed")
    frame = frame.copy()
    frame["id"] = frame["id"].astype(str)
    return Member(name, str(path), None, classes, None, frame)


def _run_member(run: Run, name: str, prediction_set: str | None) -> Member:
    classes = _single_head_classes(run)
    if not run.has_oof():
        raise RunError(f"run {run.id} has no oof.parquet", "ensemble runs whose folds finished (k-fold train runs)")
    oof = run.read_oof()
    test = run.read_predictions(prediction_set) if prediction_set is not None else None
    return Member(name, run.id, run, classes, oof, test)


def is_file_ref(ref: str | os.PathLike[str]) -> bool:
    path = Path(os.path.expanduser(os.fspath(ref)))
    return path.is_file() and path.suffix.lower() in FILE_SUFFIXES


def _glob_skip_reason(run: Run) -> str | None:
    """Why a run matched by a glob is left out (None: it is a member)."""
    if run.kind != "train":
        return f"a `{run.kind}` run (name it explicitly to include it)"
    if run.info.get("status") != "finished":
        return f"status {run.info.get('status')}"
    if not run.has_oof():
        return "no oof.parquet"
    return None


def load_members(refs: Sequence[str | os.PathLike[str]], runs_root: str | Path | None = None,
                 predictions: str | None = None) -> tuple[list[Member], str | None, list[str]]:
    """Resolve arguments into members (runs, globs of runs, prediction files), in argument order.

    A glob (``runs/*``) picks finished train runs with out-of-fold predictions and skips the rest
    (earlier ensembles included, so re-running an ensemble over ``runs/*`` never feeds on itself); a run
    named explicitly is always a member, and an error when it cannot be one.

    Returns:
        The members, the prediction set name used for the run members (None: none in common), and one
        line per run a glob skipped.
    """
    if not refs:
        raise UsageError("no members given", "pass runs (folders, ids, globs like runs/*) and/or prediction files")
    resolved: list[tuple[str, object]] = []
    seen_runs: set[str] = set()
    skipped: list[str] = []
    for ref in refs:
        if is_file_ref(ref):
            resolved.append(("file", Path(os.path.expanduser(os.fspath(ref))).absolute()))
            continue
        is_glob = any(ch in os.fspath(ref) for ch in "*?[")  # what resolve_runs expands as a glob
        for run in resolve_runs([ref], runs_root):
            if run.id in seen_runs:
                continue
            reason = _glob_skip_reason(run) if is_glob else None
            if reason is None and not is_glob and run.kind not in ("train", "ensemble"):
                raise RunError(f"run {run.id} is a `{run.kind}` run", "ensemble train or ensemble runs")
            if reason is not None:
                skipped.append(f"{run.id}: {reason}")
                continue
            seen_runs.add(run.id)
            resolved.append(("run", run))
    runs = [obj for kind, obj in resolved if kind == "run"]
    name = common_prediction_set(runs, predictions)
    members: list[Member] = []
    used: set[str] = set()
    for kind, obj in resolved:
        base = (obj.name or obj.id) if kind == "run" else obj.stem  # type: ignore[union-attr]
        label = base if base not in used else (obj.id if kind == "run" else str(obj))  # type: ignore[union-attr]
        used.add(label)
        members.append(_run_member(obj, label, name) if kind == "run" else _file_member(obj, label))  # type: ignore[arg-type]
    if not members:
        detail = f" (skipped: {examples(skipped)})" if skipped else ""
        raise UsageError(f"none of the arguments is a train/ensemble run or a prediction file{detail}",
                         "pass run folders, ids or globs, or .parquet/.csv prediction files")
    return members, name, skipped


# --------------------------------------------------------------------------- checks and alignment
def check_classes(members: Sequence[Member]) -> list[str]:
    """The common class list (the first run member's order); a mismatch names what differs."""
    ref = next((m for m in members if m.is_run), next((m for m in members if not m.labels_only), members[0]))
    classes = list(ref.classes)
    for m in members:
        if m.labels_only:
            unknown = sorted(set(m.classes) - set(classes))
            if unknown and m is not ref:
                raise DataError(f"member {m.name} predicts class(es) {examples(unknown)} that {ref.name} does not have",
                                f"the classes are {', '.join(classes)}")
            continue
        if set(m.classes) != set(classes) or len(m.classes) != len(classes):
            only_m = sorted(set(m.classes) - set(classes))
            only_ref = sorted(set(classes) - set(m.classes))
            raise DataError(f"members have different class lists: {m.name} has {only_m or 'none'} that {ref.name} "
                            f"lacks, and lacks {only_ref or 'none'}",
                            "ensemble runs trained on the same classes")
    if all(m.labels_only for m in members):
        classes = sorted(set().union(*(m.classes for m in members)))
    return classes


def align_ids(frames: Sequence[tuple[str, pd.DataFrame]], what: str) -> list[np.ndarray]:
    """Row positions in each frame for the first frame's id order.

    Raises:
        DataError: duplicate ids, or ids that one member has and another lacks (both are named).
    """
    ref_name, ref = frames[0]
    out = []
    ref_ids = ref["id"].astype(str).tolist()
    ref_set = set(ref_ids)
    for name, frame in frames:
        ids = frame["id"].astype(str)
        dup = ids[ids.duplicated()].tolist()
        if dup:
            raise DataError(f"{what} of {name} repeats id(s) {examples(dup)}", "each row needs a unique id")
        pos = {k: i for i, k in enumerate(ids)}
        missing = [i for i in ref_ids if i not in pos]
        extra = [i for i in ids if i not in ref_set]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{name} lacks {len(missing)} id(s) {ref_name} has: {examples(missing)}")
            if extra:
                parts.append(f"{name} has {len(extra)} id(s) {ref_name} lacks: {examples(extra)}")
            raise DataError(f"{what} rows do not align: " + "; ".join(parts),
                            "ensemble runs trained on the same images with every fold finished "
                            "(and predictions of the same image set)")
        out.append(np.array([pos[i] for i in ref_ids], dtype=np.int64))
    return out


def member_matrix(member: Member, frame: pd.DataFrame, order: np.ndarray, classes: list[str]) -> np.ndarray:
    """Probabilities ``[N, C]`` in ``classes`` order, or class indices ``[N]`` for a label-only member.

    float32 when every class column is float32 (as the store writes them): the same numbers as a
    float64 copy in half the memory, and every vote widens them before it sums. Anything else
    (calibrated or CSV probabilities) comes back as float64.
    """
    if member.labels_only:
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[v] for v in frame["label"].iloc[order].astype(str)], dtype=np.int64)
    columns = [frame[c] for c in classes]
    dtype = np.float32 if all(col.dtype == np.float32 for col in columns) else np.float64
    out = np.empty((len(order), len(classes)), dtype=dtype)
    for j, col in enumerate(columns):
        # one column at a time: gathering whole rows first would copy the table once more
        out[:, j] = col.to_numpy(dtype=dtype)[order]
    return out


def extract_matrices(members: Sequence[Member], which: str, orders: Sequence[np.ndarray],
                     classes: list[str]) -> list[np.ndarray]:
    """Each member's :func:`member_matrix` of its ``oof`` or ``test`` table, in the aligned row order.

    Each table is then rebuilt in that row order (index reset) around its matrix: the class columns
    become views of the matrix instead of a second copy of the same numbers (a 500-class table holds
    2 KB per row, as much as the matrix). Each table is replaced as soon as its matrix is taken, so at
    most one member is held twice at a time.
    """
    out = []
    for member, order in zip(members, orders, strict=True):
        frame = getattr(member, which)
        matrix = member_matrix(member, frame, order, classes)
        setattr(member, which, _aligned_table(member, frame, order, None if member.labels_only else matrix, classes))
        del frame
        release_freed_tables()
        out.append(matrix)
    return out


def _aligned_table(member: Member, frame: pd.DataFrame, order: np.ndarray, matrix: np.ndarray | None,
                   classes: list[str]) -> pd.DataFrame:
    own = set() if matrix is None else set(member.classes)
    rest = frame[[c for c in frame.columns if c not in own]].iloc[order].reset_index(drop=True)
    if matrix is None:
        return rest
    return pd.concat([rest, pd.DataFrame(matrix, columns=classes, copy=False)], axis=1)


def check_labels(members: Sequence[Member], orders: Sequence[np.ndarray]) -> np.ndarray:
    """The OOF labels (class names) per row; members that disagree on a row's label are an error."""
    # the label column alone: taking whole rows would copy every probability column
    labels = members[0].oof["label"].iloc[orders[0]].astype(str).to_numpy()
    for m, order in zip(members[1:], orders[1:], strict=True):
        other = m.oof["label"].iloc[order].astype(str).to_numpy()
        bad = np.flatnonzero(other != labels)
        if bad.size:
            ids = members[0].oof["id"].iloc[orders[0]].astype(str).to_numpy()
            shown = [f"{ids[i]} ({labels[i]} vs {other[i]})" for i in bad]
            raise DataError(f"out-of-fold labels differ between {members[0].name} and {m.name} on {bad.size} row(s): "
                            f"{examples(shown)}", "ensemble runs trained on the same labels")
    return labels


def calibrate_member(member: Member, method: str, *, record: bool = True) -> dict[str, object] | None:
    """Rescale a run member's out-of-fold and prediction probabilities with its run's calibration.

    The calibration is the run's own (fitted on its out-of-fold rows, recorded in its summary.json on
    first use). Returns what was applied, or None for a member that is not a run (nothing to fit on).
    """
    if not member.is_run or member.labels_only:
        return None
    from toolkit.calibration import apply_calibration, apply_crossfit
    from toolkit.train.results import run_calibration

    heads, _ = member.run.read_classes()  # type: ignore[union-attr]
    # record=False: the caller writes nothing, so a first-use fit is not saved into the member run either
    calib = run_calibration(member.run, record=record)[heads[0]]  # type: ignore[arg-type]
    # out-of-fold rows: each fold with the parameters fitted without it; prediction rows: all-row ones
    oof = member.oof
    if oof is not None:
        folds = oof["fold"].to_numpy(dtype=np.int64) if "fold" in oof.columns else None
        oof[member.classes] = apply_crossfit(oof[member.classes].to_numpy(dtype=np.float64), folds, calib, method)
    if member.test is not None:
        member.test[member.classes] = apply_calibration(member.test[member.classes].to_numpy(dtype=np.float64),
                                                        calib, method)
    fitted = calib[method]
    return {"method": method, **{k: v for k, v in fitted.items() if k not in ("after", "per_fold")},
            "before": calib["before"], "after": fitted["after"]}
