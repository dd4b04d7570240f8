"""``clsctl clean``: label issues of a k-fold run (or, with ``--quick``, of a folder), written as a clean run.

A clean run (kind ``clean``, parent: the train run) holds ``label_issues.csv`` (one row per image),
``label_conflicts.csv`` (duplicate images whose labels disagree — the cheapest errors to fix),
``summary.json`` (health score, noise rate per class, overlapping class pairs) and, with ``--apply``,
``clean_manifest.csv``: the source manifest with the suspects dropped or relabelled, to train on.
The source manifest is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from toolkit.clean.labels import DEFAULT_FILTER, QUICK_FILTER, LabelIssues, find_label_issues
from toolkit.errors import DataError, RunError, UsageError, examples
from toolkit.progress import Progress, as_progress
from toolkit.store import Run, RunStore
from toolkit.store.files import Folder, RunFiles

APPLY_MODES = ("drop", "relabel")


@dataclass
class CleanResult:
    """What a clean found and where it wrote it.

    Attributes:
        heads: The label issues of each target.
        conflicts: Duplicate pairs whose labels disagree (``a``, ``b``, ``kind``, ``distance``,
            ``label_a``, ``label_b``), or None when not searched.
        root: The folder the image paths are relative to.
        folder: Where the files are (the clean run, or ``--out``).
        run: The clean run (None with ``--out``); ``source``: the train run it cleaned, if any.
        files: Written files by kind.
        applied: With ``--apply``: mode, thresholds, counts and the new manifest's path.
        extra: Further findings tables by kind (``outliers``, ``near_duplicates`` of ``--quick``).
    """

    heads: list[LabelIssues]
    conflicts: pd.DataFrame | None
    root: Path
    folder: RunFiles
    run: Run | None = None
    source: Run | None = None
    files: dict[str, Path] = field(default_factory=dict)
    applied: dict[str, Any] | None = None
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)

    def issues_table(self) -> pd.DataFrame:
        """Every head's table in one frame (a ``head`` column when there are several heads)."""
        if len(self.heads) == 1:
            return self.heads[0].table
        frames = []
        for h in self.heads:
            t = h.table.drop(columns=h.classes).copy()  # class columns differ per head
            t.insert(0, "head", h.head)
            frames.append(t)
        return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- reading a train run
def _oof_heads(run: Run) -> tuple[list[str], dict[str, list[str]], pd.DataFrame, pd.DataFrame]:
    """Heads, classes, the run's manifest and its out-of-fold table aligned to the manifest's rows.

    Raises:
        RunError: The run is not a finished k-fold train run with out-of-fold rows for every image.
    """
    if run.kind != "train":
        raise RunError(f"run {run.id} is a `{run.kind}` run", "clean a train run (or a folder with --quick)")
    heads, classes = run.read_classes()
    manifest = run.read_manifest()
    if manifest is None:
        raise RunError(f"run {run.id} has no manifest.csv", "clean a run trained by clsctl train")
    if not run.has_oof():
        raise RunError(f"run {run.id} has no out-of-fold probabilities",
                       "train every fold of a k-fold split (`clsctl train --recipe R.toml --folds all`)")
    oof = run.read_oof()
    position = {p: i for i, p in enumerate(oof["path"].astype(str))}
    missing = [p for p in manifest["path"] if p not in position]
    if missing:
        raise RunError(f"run {run.id} has out-of-fold probabilities for {len(manifest) - len(missing)} of "
                       f"{len(manifest)} images (none for {examples(missing, 3)})",
                       "train every fold of a k-fold split (`clsctl train --recipe R.toml --folds all`); a holdout "
                       "split leaves its training rows unscored")
    oof = oof.iloc[[position[p] for p in manifest["path"]]].reset_index(drop=True)
    return heads, classes, manifest, oof


def _head_issues(oof: pd.DataFrame, heads: Sequence[str], classes: dict[str, list[str]], filter_by: str,
                 paths: Sequence[str]) -> list[LabelIssues]:
    multi = len(heads) > 1
    out = []
    for h in heads:
        names = classes[h]
        label_col = f"label:{h}" if multi else "label"
        index = {c: i for i, c in enumerate(names)}
        given = oof[label_col].astype(str)
        unknown = sorted(set(given) - set(index))
        if unknown:
            raise RunError(f"out-of-fold labels {examples(unknown)} of `{h}` are not in the run's classes",
                           "the run folder is inconsistent; retrain it")
        probs = oof[[f"{h}:{c}" if multi else c for c in names]].to_numpy(dtype=np.float64)
        out.append(find_label_issues(given.map(index).to_numpy(), probs, names, ids=oof["id"].astype(str).tolist(),
                                     paths=paths, head=h, filter_by=filter_by))
    return out


# --------------------------------------------------------------------------- duplicates with other labels
def label_conflicts(df: pd.DataFrame, root: str | os.PathLike[str], label_columns: Sequence[str],
                    workers: int | None = None) -> pd.DataFrame:
    """Exact, pixel-equal and near-duplicate image pairs whose labels differ.

    Uses the same hashing as ``clsctl eda`` and ``clsctl split --dedup``. A pair conflicts when any of
    ``label_columns`` differs; ``label_a`` / ``label_b`` show those columns joined with ``/``.
    """
    from toolkit.imaging.duplicates import duplicate_pairs
    from toolkit.imaging.hashing import image_hashes

    paths = df["path"].astype(str).tolist()
    pairs = duplicate_pairs(image_hashes(paths, root, workers=workers))
    columns = ["a", "b", "kind", "distance", "label_a", "label_b"]
    if pairs.empty:
        return pd.DataFrame(columns=columns)
    labels = df[list(label_columns)].astype(str).agg("/".join, axis=1)
    by_path = dict(zip(paths, labels, strict=True))
    pairs = pairs.assign(label_a=pairs["a"].map(by_path), label_b=pairs["b"].map(by_path))
    return pairs[pairs["label_a"] != pairs["label_b"]][columns].reset_index(drop=True)


# --------------------------------------------------------------------------- apply
def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in APPLY_MODES:
        raise UsageError(f"--apply {mode!r} is not one of {', '.join(APPLY_MODES)}", "use --apply drop or --apply relabel")


def _acted(issues: LabelIssues, min_quality: float | None) -> np.ndarray:
    mask = issues.table["is_label_issue"].to_numpy(dtype=bool, copy=True)
    if min_quality is not None:
        mask &= issues.table["label_quality"].to_numpy() < min_quality
    return mask


def apply_fix(manifest: pd.DataFrame, heads: Sequence[LabelIssues], mode: str,
              min_quality: float | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The manifest with the suspects dropped or relabelled (a copy; the input is not changed).

    Args:
        manifest: The source manifest, rows in the order of the issue tables.
        heads: The label issues; each head's column in ``manifest`` is what ``relabel`` rewrites.
        mode: ``drop`` or ``relabel``.
        min_quality: Act only on suspects whose label quality is below this (default: every suspect).

    Raises:
        UsageError: An unknown mode or a quality outside 0..1.
        DataError: ``relabel`` of a target that is not a column of the manifest.
    """
    _check_mode(mode)
    if min_quality is not None and not 0.0 <= min_quality <= 1.0:
        raise UsageError(f"--min-quality {min_quality} is outside 0..1", "label quality is a probability, e.g. 0.2")
    out = manifest.copy()
    per_head = {h.head: _acted(h, min_quality) for h in heads}
    if mode == "drop":
        keep = ~np.logical_or.reduce(list(per_head.values()))
        out = out[keep].reset_index(drop=True)
        changed = int((~keep).sum())
    else:
        changed = 0
        for h in heads:
            if h.head not in out.columns:
                raise DataError(f"cannot relabel `{h.head}`: it is not a column of the source manifest",
                                "use --apply drop, or relabel the columns it is derived from by hand")
            mask = per_head[h.head]
            out.loc[mask, h.head] = h.table.loc[mask, "suggested_label"].to_numpy()
            changed += int(mask.sum())
    return out, {"mode": mode, "min_quality": min_quality, "rows_before": len(manifest), "rows_after": len(out),
                 "changed": changed, "per_head": {k: int(v.sum()) for k, v in per_head.items()}}


# --------------------------------------------------------------------------- the command
def _open_output(kind_name: str | None, out: str | os.PathLike[str] | None, runs_root: str | os.PathLike[str] | None,
                 parents: Sequence[Run], extra: dict[str, Any]) -> tuple[RunFiles, Run | None]:
    if out is not None:
        folder = Folder(out)
        folder.path.mkdir(parents=True, exist_ok=True)
        return folder, None
    run = RunStore(runs_root).create("clean", name=kind_name or "clean", parents=list(parents), extra=extra)
    return run, run


def _write(result: CleanResult, summary: dict[str, Any], manifest: pd.DataFrame | None,
           apply: str | None, min_quality: float | None) -> None:
    """Write the files; inside a clean run, its status records how the writing ended."""
    if result.run is not None:
        with result.run.activate():
            _write_files(result, summary, manifest, apply, min_quality)
    else:
        _write_files(result, summary, manifest, apply, min_quality)


def _write_files(result: CleanResult, summary: dict[str, Any], manifest: pd.DataFrame | None,
                 apply: str | None, min_quality: float | None) -> None:
    folder = result.folder
    result.files["label_issues"] = folder.write_label_issues(result.issues_table())
    if result.conflicts is not None:
        result.files["conflicts"] = folder.write_findings("conflicts", result.conflicts)
    for kind, frame in result.extra.items():
        result.files[kind] = folder.write_findings(kind, frame)
    if apply is not None and manifest is not None:
        fixed, applied = apply_fix(manifest, result.heads, apply, min_quality)
        result.files["clean_manifest"] = path = folder.write_clean_manifest(fixed)
        applied.update(manifest=str(path), root=str(result.root))
        result.applied = applied
        summary["apply"] = applied
    folder.update_summary(summary)
    result.files["summary"] = folder.summary_path


def _summary(heads: Sequence[LabelIssues], conflicts: pd.DataFrame | None, source: str) -> dict[str, Any]:
    return {"source": source, "heads": {h.head: h.health for h in heads},
            "conflicts": None if conflicts is None else int(len(conflicts))}


def clean_run(run: str | os.PathLike[str] | Run, *, runs_root: str | os.PathLike[str] | None = None,
              out: str | os.PathLike[str] | None = None, name: str | None = None, filter_by: str | None = None,
              duplicates: bool = True, apply: str | None = None, min_quality: float | None = None,
              workers: int | None = None) -> CleanResult:
    """Find the label issues of a k-fold train run from its out-of-fold probabilities.

    Args:
        run: A train run (folder, id or name suffix) whose every image has an out-of-fold row.
        runs_root: Where run ids are looked up and the clean run is created.
        out: Write into this folder instead of a new clean run.
        name: The clean run's name (default: ``clean``).
        filter_by: cleanlab's ``filter_by`` method (default ``prune_by_noise_rate``).
        duplicates: Also list duplicate images whose labels disagree (hashes every image once).
        apply: ``drop`` or ``relabel`` the suspects into ``clean_manifest.csv``.
        min_quality: With ``apply``: act only on suspects whose label quality is below this.
        workers: Processes for hashing.

    Raises:
        RunError: Not a train run, or out-of-fold rows missing for some images.
        UsageError: Unknown ``filter_by`` or ``apply``.
    """
    from toolkit.data.training import run_image_root

    source = run if isinstance(run, Run) else RunStore(runs_root).open(run)
    heads, classes, manifest, oof = _oof_heads(source)
    _check_mode(apply)  # before any work
    paths = manifest["path"].astype(str).tolist()
    issues = _head_issues(oof, heads, classes, filter_by or DEFAULT_FILTER, paths)
    root = run_image_root(source)
    conflicts = label_conflicts(manifest, root, heads, workers) if duplicates else None
    folder, clean = _open_output(name, out, runs_root, [source], {"source": source.id})
    result = CleanResult(heads=issues, conflicts=conflicts, root=root, folder=folder, run=clean, source=source)
    summary = _summary(issues, conflicts, source.id)
    _write(result, summary, manifest, apply, min_quality)
    return result


def clean_source(source: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                 label: str = "label", group: str | None = None, backbone: str = "tf_efficientnet_lite0",
                 pretrained_file: str | os.PathLike[str] | None = None, pretrained: bool = True,
                 image_size: int = 224, folds: int = 5,
                 seed: int = 0, runs_root: str | os.PathLike[str] | None = None,
                 out: str | os.PathLike[str] | None = None, name: str | None = None,
                 filter_by: str | None = None, duplicates: bool = True, apply: str | None = None,
                 min_quality: float | None = None, workers: int | None = None,
                 progress: Progress | bool | None = None) -> CleanResult:
    """``clean --quick``: label issues of a folder or manifest without a trained run.

    Every image is embedded once by a frozen pretrained backbone (cached on disk); a cross-validated
    logistic regression and a k-nearest-neighbour vote on the embeddings give the out-of-fold
    probabilities cleanlab needs; a row is flagged when the filter flags it in both. Outliers and
    near-duplicates in embedding space are listed too.

    Args:
        source: A folder (ImageFolder) or a CSV/Parquet manifest, as for ``clsctl split``.
        root: The image folder of a manifest (default: found next to it).
        label: The label column.
        group: A column that ties images together; the cross-validation keeps each group in one fold.
        backbone, pretrained_file, image_size: The embedding model (timm name, local weights, side).
        pretrained: False embeds with a seeded random backbone (for tests; labels are then barely learnable).
        folds, seed: The cross-validation.
        filter_by: cleanlab's ``filter_by`` method, run on each of the two classifiers (default
            ``low_self_confidence``; see :data:`toolkit.clean.labels.QUICK_FILTER`).
        runs_root, out, name, duplicates, apply, min_quality, workers: As for :func:`clean_run`.
        progress: Where the embedding pass reports.
    """
    from toolkit.clean.quick import quick_probabilities
    from toolkit.data.sources import manifest_from_path, row_ids

    _check_mode(apply)
    df = manifest_from_path(source, root=root, label_column=label, require_label=True, group=group)
    if label not in df.columns:
        raise DataError(f"{source} has no `{label}` column", "pass --label with the name of the class column")
    image_root = Path(df.attrs["root"])
    quick = quick_probabilities(df, image_root, label=label, backbone=backbone, pretrained=pretrained,
                                pretrained_file=pretrained_file,
                                image_size=image_size, folds=folds, group="group" if group else None, seed=seed,
                                workers=workers, progress=as_progress(progress))
    paths = df["path"].astype(str).tolist()
    issues = [find_label_issues(quick.labels, quick.probs, quick.classes, ids=row_ids(df), paths=paths, head=label,
                                filter_by=filter_by or QUICK_FILTER, agree=list(quick.members.values()))]
    conflicts = label_conflicts(df, image_root, [label], workers) if duplicates else None
    folder, clean = _open_output(name, out, runs_root, [], {"source": str(Path(source).absolute()), "quick": {
        "backbone": backbone, "pretrained_file": str(pretrained_file) if pretrained_file else None,
        "image_size": image_size, "folds": folds, "seed": seed}})
    result = CleanResult(heads=issues, conflicts=conflicts, root=image_root, folder=folder, run=clean,
                         extra={"outliers": quick.outliers, "near_duplicates": quick.near_duplicates})
    summary = _summary(issues, conflicts, str(Path(source).absolute()))
    summary["quick"] = {"oof_accuracy": quick.accuracy,
                        "oof_accuracy_by_classifier": {k: float((p.argmax(1) == quick.labels).mean())
                                                       for k, p in quick.members.items()},
                        "seconds": quick.seconds, "outliers": int(quick.outliers["is_outlier"].sum()),
                        "near_duplicates": len(quick.near_duplicates)}
    manifest = df.drop(columns=["group"]) if group and "group" in df.columns and group != "group" else df
    _write(result, summary, manifest, apply, min_quality)
    return result
