"""What the experiment report knows of one run folder (or EDA folder), read through the store.

An :class:`Entry` is built for any run kind — train, ensemble, clean, split, predict — and for an
``clsctl eda`` output folder (it holds ``eda.json``, not ``run.json``). Whatever a folder lacks
(no recipe in an ensemble, no summary in a run still training, a damaged file) becomes an empty
field and a note, never an exception: a report over fifty runs must not die on the one that broke.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import ToolkitError
from toolkit.report.compare import flatten_recipe
from toolkit.store import Run, is_run_dir, resolve_runs
from toolkit.store.provenance import parse_iso

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EDA_JSON", "Entry", "HeadRows", "load_entries"]

EDA_JSON = "eda.json"


@dataclass
class HeadRows:
    """One head of a run's OOF table: given labels, probabilities and folds, in class order."""

    head: str
    classes: list[str]
    labels: np.ndarray  # class index per row, -1 where the label is not in the class list
    probs: np.ndarray
    folds: np.ndarray | None
    paths: list[str]
    ids: list[str]


@dataclass
class Entry:
    """One run (or EDA folder) as the report shows it."""

    id: str
    kind: str
    status: str
    path: Path
    run: Run | None = None
    name: str | None = None
    parents: list[str] = field(default_factory=list)
    started: str | None = None
    seconds: float | None = None
    recipe: dict[str, Any] | None = None  # flat dotted keys → values
    summary: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _oof: Any = None
    _curves: Any = None

    # ------------------------------------------------------------------ headline fields
    @property
    def label(self) -> str:
        """The run's id (its name is the id's end)."""
        return self.id

    @property
    def metric(self) -> str | None:
        """The run's own selection metric."""
        value = self.summary.get("metric") or (self.recipe or {}).get("train.metric")
        return str(value) if value else None

    @property
    def heads(self) -> list[str]:
        return [str(h) for h in self.summary.get("heads") or []]

    @property
    def classes(self) -> dict[str, list[str]]:
        return {str(h): [str(c) for c in cs] for h, cs in (self.summary.get("classes") or {}).items()}

    @property
    def model(self) -> str:
        if self.kind == "ensemble":
            members = self.summary.get("members") or []
            vote = self.summary.get("vote") or self.info.get("vote") or ""
            return f"ensemble of {len(members)}" + (f" ({vote})" if vote else "")
        return str((self.recipe or {}).get("model.name") or "")

    @property
    def image_size(self) -> str:
        value = (self.recipe or {}).get("data.image_size")
        return "" if value is None else str(value)

    @property
    def loss(self) -> str:
        recipe = self.recipe or {}
        name = recipe.get("loss.name")
        if name is None:
            return ""
        smoothing = recipe.get("loss.label_smoothing") or 0
        return f"{name} ls={smoothing:g}" if smoothing and name in ("ce", "weighted_ce", "soft_ce") else str(name)

    @property
    def epochs(self) -> str:
        planned = (self.recipe or {}).get("train.epochs")
        curves = self.curves()
        ran = None
        if curves is not None and "epoch" in curves.columns and len(curves):
            ran = int(curves.groupby("fold")["epoch"].max().max()) + 1 if "fold" in curves.columns else None
        if planned is None:
            return "" if ran is None else str(ran)
        return str(planned) if ran in (None, planned) else f"{ran}/{planned}"

    @property
    def folds(self) -> list[int]:
        done = self.summary.get("folds")
        if isinstance(done, Mapping) and done:
            return sorted(int(k) for k in done)
        return [int(k) for k in self.info.get("folds") or []]

    def cv(self, metric: str) -> tuple[float, float, int] | None:
        """Mean, sample std and number of folds of ``metric``; from the metrics so far when unfinished.

        A run still training (or killed) has no CV summary yet; each fold then counts with the epoch
        its checkpoint kept (the last row marked ``best``), not its best value of ``metric``, which
        under another selection metric may be an epoch no checkpoint holds.
        """
        item = (self.summary.get("cv") or {}).get(metric)
        if isinstance(item, Mapping) and "mean" in item:
            return float(item["mean"]), float(item.get("std") or 0.0), int(item.get("n") or 0)
        curves = self.curves()
        if curves is None or metric not in curves.columns or "fold" not in curves.columns or not len(curves):
            return None
        kept = curves
        if "best" in curves.columns:
            marked = curves["best"].astype(str).str.lower().isin(("true", "1", "1.0"))
            kept = curves[marked]
        values = kept.groupby("fold")[metric].last().dropna()
        if values.empty:
            return None
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, int(len(values))

    def oof_value(self, metric: str) -> float | None:
        oof = self.summary.get("oof") or {}
        # Multi-head runs record {"heads": ..., "combined": ...}; the combined label is the run's answer.
        value = oof.get(metric) if metric in oof else (oof.get("combined") or {}).get(metric)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def split_folds(self) -> int | None:
        """How many folds the run's split has (trained or not)."""
        value = (self.recipe or {}).get("split.folds")
        return int(value) if isinstance(value, int) and value > 1 else None

    @property
    def partial(self) -> bool:
        """Whether the numbers come from a run that has not finished."""
        return not self.summary.get("cv") and self.kind == "train"

    # ------------------------------------------------------------------ tables
    def curves(self) -> pd.DataFrame | None:
        """``metrics.csv`` of a train run (one row per fold and epoch), or None."""
        if self._curves is None and self.run is not None and self.kind == "train":
            try:
                frame = self.run.read_metrics(as_frame=True)
            except (ToolkitError, OSError, ValueError) as exc:
                self.notes.append(f"metrics.csv unreadable: {exc}")
                frame = None
            self._curves = frame if frame is not None and len(frame) else False
        return self._curves if self._curves is not False else None

    def oof(self) -> pd.DataFrame | None:
        """The run's ``oof.parquet``, or None."""
        if self._oof is None:
            self._oof = False
            if self.run is not None and self.kind in ("train", "ensemble") and self.run.has_oof():
                try:
                    self._oof = self.run.read_oof()
                except (ToolkitError, OSError, ValueError) as exc:
                    self.notes.append(f"oof.parquet unreadable: {exc}")
        return self._oof if self._oof is not False else None

    def release(self) -> None:
        """Drop the cached OOF table (it can be hundreds of megabytes for many classes)."""
        self._oof = None

    def head_rows(self, head: str) -> HeadRows | None:
        """One head's OOF rows, or None when the run has none."""
        frame = self.oof()
        classes = self.classes.get(head)
        if frame is None or not classes:
            return None
        multi = len(self.heads) > 1
        label_col = f"label:{head}" if multi else "label"
        cols = [f"{head}:{c}" if multi else c for c in classes]
        if label_col not in frame.columns or any(c not in frame.columns for c in cols):
            self.notes.append(f"oof.parquet lacks the columns of head {head}")
            return None
        index = {c: i for i, c in enumerate(classes)}
        labels = frame[label_col].astype(str).map(index).fillna(-1).to_numpy(dtype=np.int64)
        probs = frame[cols].to_numpy(dtype=np.float64)
        folds = frame["fold"].to_numpy(dtype=np.int64) if "fold" in frame.columns else None
        paths = frame["path"].astype(str).tolist() if "path" in frame.columns else frame["id"].astype(str).tolist()
        return HeadRows(head, list(classes), labels, probs, folds, paths, frame["id"].astype(str).tolist())

    @property
    def html(self) -> Path | None:
        """The run's own page (an EDA's ``eda.html``, a clean run's ``gallery.html``), if it has one."""
        for name in ("eda.html", "gallery.html"):
            if (self.path / name).is_file():
                return self.path / name
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _status(run: Run) -> str:
    status = str(run.info.get("status") or "unknown")
    if status == "running" and run.stale:
        return "stopped"  # run.json says running but its process is gone: killed without a trace
    return status


def _seconds(info: Mapping[str, Any], status: str) -> float | None:
    value = info.get("duration_s")
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    started = parse_iso(info.get("started"))
    if started is None or status != "running":
        return None  # a run killed without a trace has no end time: its wall time is unknown
    return max(0.0, time.time() - started.timestamp())


def _from_run(run: Run) -> Entry:
    try:
        info = dict(run.info)
    except (ToolkitError, OSError, ValueError) as exc:
        # One damaged folder must not take the report of every other run down with it.
        return Entry(id=run.id, kind="unknown", status="unreadable", path=run.path, notes=[str(exc)])
    status = _status(run)
    entry = Entry(id=run.id, kind=str(info.get("kind") or "unknown"), status=status, path=run.path, run=run,
                  name=info.get("name"), parents=[str(p) for p in info.get("parents") or []],
                  started=info.get("started"), seconds=_seconds(info, status), info=info)
    try:
        entry.summary = dict(run.summary)
    except (ToolkitError, OSError, ValueError) as exc:
        entry.notes.append(f"summary.json unreadable: {exc}")
    # The resolved recipe as written, not re-validated: a key a later release renamed must not hide
    # the run from the report.
    try:
        text = run.recipe_text
        entry.recipe = flatten_recipe(tomllib.loads(text)) if text is not None else None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        entry.notes.append(f"recipe.toml unreadable: {exc}")
        text = ""
    if text is None and entry.kind == "train":
        entry.notes.append("the run has no recipe.toml")
    if info.get("error"):
        entry.notes.append(str(info["error"]))
    if entry.kind == "sweep" and entry.summary.get("trials") is not None:
        from toolkit.report.sweep import sweep_note

        entry.notes.append(sweep_note(entry.summary, run.sweep_report_path))
    return entry


def _from_eda(folder: Path) -> Entry:
    data = _read_json(folder / EDA_JSON)
    stamp = os.path.getmtime(folder / EDA_JSON)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    return Entry(id=folder.name, kind="eda", status="finished" if data else "unreadable", path=folder.absolute(),
                 started=started, summary=data, notes=[] if data else [f"{EDA_JSON} unreadable"])


def _is_eda_dir(folder: Path) -> bool:
    return folder.is_dir() and (folder / EDA_JSON).is_file() and not is_run_dir(folder)


def load_entries(refs: Sequence[str | os.PathLike[str]], runs_root: str | os.PathLike[str] | None = None) -> list[Entry]:
    """The runs and EDA folders named by ``refs`` (folders, ids, name suffixes, globs), in order.

    Raises:
        RunError: A name that is neither a run, an EDA folder nor a glob matching any.
    """
    entries: list[Entry] = []
    seen: set[Path] = set()
    run_refs: list[str | os.PathLike[str]] = []
    for ref in refs:
        text = os.path.expanduser(os.fspath(ref))
        # A glob may match EDA folders as well as runs: expand it here so they are not dropped.
        matches = sorted(glob.glob(text)) if any(c in text for c in "*?[") else []
        eda = [Path(m) for m in matches or [text] if _is_eda_dir(Path(m))]
        for folder in eda:
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                entries.append(_from_eda(folder))
        runs = [m for m in matches if is_run_dir(m)]
        if runs:
            run_refs.extend(runs)
        elif not eda:
            run_refs.append(ref)  # resolve_runs looks under the runs root too, or says what is missing
    for run in resolve_runs(run_refs, root=runs_root) if run_refs else []:
        if run.path.resolve() in seen:
            continue
        seen.add(run.path.resolve())
        entries.append(_from_run(run))
    return entries
