"""``clsctl report``: the leaderboard of runs, what each changed against its baseline, and whether it is real.

:func:`build_report` reads the runs (:mod:`toolkit.report.entries`), ranks them by one metric, picks
each run's baseline and diffs their resolved recipes, and scores the delta on shared OOF rows with
the intervals of :mod:`toolkit.report.compare`; :mod:`toolkit.report.experiment_html` renders the
one-file HTML page.

Baselines, in order: ``--baseline`` when given; else the run's parents in the report (the best of
them for an ensemble, whose parents are its members; through a ``clean`` run to the run it
cleaned, so a retrained run is set against its source); else the best run of the report.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolkit.errors import UsageError
from toolkit.metrics import METRICS, metric_direction
from toolkit.progress import Progress, as_progress
from toolkit.report.compare import Significance, align, compare_paired, recipe_diff
from toolkit.report.entries import Entry, load_entries
from toolkit.report.records import decision_marker

__all__ = ["Change", "ExperimentReport", "build_report", "format_duration"]

#: Kinds that have a score on OOF rows.
SCORED_KINDS = ("train", "ensemble")


@dataclass
class Change:
    """One run against its baseline: the recipe keys that differ and the metric delta."""

    run: str
    baseline: str | None
    reason: str  # "given", "parent", "best", or "" for the baseline itself
    keys: list[tuple[str, Any, Any]] = field(default_factory=list)
    delta: float | None = None
    significance: Significance | None = None
    comparable: bool = True  # False when one side has no recipe (an ensemble)

    @property
    def flagged(self) -> bool:
        """Several keys changed at once: the delta cannot be put on any one of them."""
        return len(self.keys) > 1


@dataclass
class ExperimentReport:
    """Everything the terminal and the HTML page show."""

    metric: str
    entries: list[Entry]
    changes: dict[str, Change]
    top_classes: int
    resamples: int = 1000
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def scored(self) -> list[Entry]:
        return [e for e in self.entries if e.kind in SCORED_KINDS]

    def score(self, entry: Entry) -> float | None:
        """The ranking number: the CV mean of the metric, else its OOF value."""
        cv = entry.cv(self.metric)
        return cv[0] if cv is not None else entry.oof_value(self.metric)

    def best(self) -> Entry | None:
        """The top finished run: a run still training, or killed, is no one's baseline."""
        ranked = [e for e in self.scored if self.score(e) is not None and e.status == "finished"]
        return ranked[0] if ranked else None

    def leaderboard(self) -> list[dict[str, Any]]:
        """One row per run, in ranking order, with the fields both renderers show."""
        rows = []
        for e in self.entries:
            cv = e.cv(self.metric)
            acc = e.cv("accuracy")
            change = self.changes.get(e.id)
            rows.append({
                "entry": e, "run": e.id, "kind": e.kind, "status": e.status, "model": e.model, "image_size": e.image_size,
                "loss": e.loss, "epochs": e.epochs, "folds": len(e.folds) or "",
                "cv": cv, "cv_accuracy": acc, "oof": e.oof_value(self.metric), "decision": decision_marker(e),
                "seconds": e.seconds,
                "partial": e.partial and cv is not None, "verdict": change.significance.verdict
                if change is not None and change.significance is not None else "",
                "baseline": change.baseline if change is not None else None, "versus": _versus(change),
            })
        return rows


def format_duration(seconds: float | None) -> str:
    """A wall time as ``42s``, ``7m 36s`` or ``2h 05m``; empty when unknown."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _versus(change: Change | None) -> str:
    """The leaderboard's "vs baseline" cell, the same in the terminal and on the page."""
    if change is None:
        return ""
    if change.baseline is None:
        return "baseline"
    sig = change.significance
    if sig is not None and sig.delta is not None:
        return f"{sig.delta:+.4f} {sig.verdict}"  # on the shared OOF rows, like its intervals
    return "" if change.delta is None else f"{change.delta:+.4f} CV, no shared rows"


def _rank(entries: list[Entry], metric: str) -> list[Entry]:
    sign = -1.0 if metric_direction(metric) == "max" else 1.0

    def key(e: Entry) -> tuple[int, int, int, float, str]:
        cv = e.cv(metric)
        value = cv[0] if cv is not None else e.oof_value(metric)
        kind_order = 0 if e.kind in SCORED_KINDS else 1
        # Numbers of a run still training (or killed) are partial: they rank below every finished run.
        unfinished = 0 if e.status == "finished" else 1
        return (kind_order, unfinished, 0 if value is not None else 1, sign * value if value is not None else 0.0, e.id)
    return sorted(entries, key=key)


def _pick_metric(entries: Sequence[Entry], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in METRICS:
            raise UsageError(f"--metric {wanted!r} is not a metric clsctl records",
                             f"choose one of: {', '.join(sorted(METRICS))}")
        return wanted
    used = Counter(e.metric for e in entries if e.kind in SCORED_KINDS and e.metric in METRICS)
    return used.most_common(1)[0][0] if used else "macro_f1"


def _baseline_of(entry: Entry, by_id: dict[str, Entry], report: ExperimentReport,
                 given: Entry | None) -> tuple[Entry | None, str]:
    if given is not None:
        return (None, "") if given.id == entry.id else (given, "given")
    candidates: list[Entry] = []
    frontier, seen = list(entry.parents), {entry.id}
    while frontier:  # a clean run stands between a retrained run and its source: look through it
        pid = frontier.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        parent = by_id.get(pid)
        if parent is None:
            continue
        if parent.kind in SCORED_KINDS:
            candidates.append(parent)
        else:
            frontier.extend(parent.parents)
    if candidates:
        return _rank(candidates, report.metric)[0], "parent"
    best = report.best()
    if best is None or best.id == entry.id:
        return None, ""
    return best, "best"


def _head_columns(entry: Entry, head: str) -> tuple[str, str]:
    """The label column and the class-column prefix of one head in a run's OOF table."""
    return (f"label:{head}", f"{head}:") if len(entry.heads) > 1 else ("label", "")


def _significance(entry: Entry, base: Entry, metric: str, resamples: int) -> Significance | None:
    a, b = base.oof(), entry.oof()
    if a is None or b is None or not entry.heads or not base.heads:
        return None
    if len(entry.heads) == 1 and len(base.heads) == 1:
        # A single-head table is `label` + bare class columns whatever the head is called (an ensemble
        # writes `label`, a run trained on `targets.label = "species"` calls its head `species`).
        classes = entry.classes.get(entry.heads[0])
        same = classes is not None and classes == base.classes.get(base.heads[0])
        head = None
    else:
        shared = [h for h in entry.heads if h in base.heads and entry.classes.get(h) == base.classes.get(h)]
        if not shared or len(entry.heads) == 1 or len(base.heads) == 1:
            return None
        head, classes, same = shared[0], entry.classes[shared[0]], True
    if not same or classes is None:
        return None
    label, prefix = _head_columns(entry, head) if head is not None else ("label", "")
    if label not in a.columns or label not in b.columns:
        return None
    pair = align(a, b, classes, label=label, prefix=prefix)
    if pair.rows == 0:
        return None
    split = max(x for x in (entry.split_folds, base.split_folds, 0) if x is not None) or None
    sig = compare_paired(metric, pair, resamples=resamples, split_folds=split)
    if head is not None:  # a multi-head run is compared on one head; say which
        sig = replace(sig, note="; ".join(n for n in (f"head {head}", sig.note) if n))
    return sig


def build_report(refs: Sequence[str | os.PathLike[str]], *, runs_root: str | os.PathLike[str] | None = None,
                 baseline: str | None = None, metric: str | None = None, top_classes: int = 20,
                 resamples: int = 1000, progress: Progress | bool | None = None) -> ExperimentReport:
    """Read the runs, rank them, and set each against its baseline.

    Args:
        refs: Run folders, ids, name suffixes or globs, and EDA folders.
        runs_root: Where ids and suffixes are looked up.
        baseline: The run every other run is compared with (added to the report if not among ``refs``).
        metric: The ranking metric; default the selection metric most of the runs used.
        top_classes: How many of the weakest classes the per-class views show.
        resamples: Bootstrap resamples per comparison.
        progress: Progress display (see :func:`toolkit.progress.as_progress`).

    Returns:
        The report (not yet written; see :func:`write_report`).

    Raises:
        RunError: A ref that names no run.
        UsageError: An unknown metric or a bad ``top_classes``.
    """
    if top_classes < 1:
        raise UsageError(f"--top-classes {top_classes} must be at least 1", "e.g. --top-classes 20")
    if resamples < 1:
        raise UsageError(f"--resamples {resamples} must be at least 1", "e.g. --resamples 1000")
    entries = load_entries(refs, runs_root)
    given = None
    if baseline is not None:
        found = load_entries([baseline], runs_root)
        given = next((e for e in entries if e.path == found[0].path), None)
        if given is None:
            given = found[0]
            entries.append(given)
    chosen = _pick_metric(entries, metric)
    report = ExperimentReport(metric=chosen, entries=_rank(entries, chosen), changes={}, top_classes=top_classes,
                              resamples=resamples)
    by_id = {e.id: e for e in report.entries}
    scored = report.scored
    tracker = as_progress(progress)
    task = tracker.task("comparing runs", total=len(scored))
    try:
        for entry in scored:
            base, reason = _baseline_of(entry, by_id, report, given)
            change = Change(run=entry.id, baseline=base.id if base is not None else None, reason=reason)
            if base is not None:
                if entry.recipe is not None and base.recipe is not None:
                    change.keys = recipe_diff(base.recipe, entry.recipe)
                else:
                    change.comparable = False
                mine, theirs = report.score(entry), report.score(base)
                if mine is not None and theirs is not None:
                    change.delta = mine - theirs
                change.significance = _significance(entry, base, chosen, resamples)
            report.changes[entry.id] = change
            task.advance()
    finally:
        task.close()
    return report
