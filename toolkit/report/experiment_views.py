"""The per-run views of the experiment report: curves, per-class recall, confusion, top losses, calibration.

Everything here is computed from what the store reads (``metrics.csv``, ``oof.parquet``,
``summary.json``) and returned as plain values and escaped markup for the page template. Images are
read through the run's recorded data root and embedded as small JPEG ``data:`` URIs, so the page is
one file; an image that cannot be read is named as missing, never shown as a broken picture.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import ImageError
from toolkit.metrics import metric_direction
from toolkit.report.charts import Series, heatmap_png, line_chart, reliability_chart
from toolkit.report.entries import Entry, HeadRows

if TYPE_CHECKING:
    from markupsafe import Markup

__all__ = ["HeadView", "RunView", "Thumbnails", "head_view", "run_curves", "ensemble_view", "headline"]

THUMB_SIDE = 112
#: At most this many classes get a confusion table with one cell per pair; more get a picture.
TABLE_CLASSES = 25
#: Up to this many classes the confusion matrix is drawn as a picture (one pixel a cell at most).
PICTURE_CLASSES = 600
TOP_LOSSES = 12
CONFUSED_PAIRS = 15


class Thumbnails:
    """Small JPEG ``data:`` URIs of images, read once each."""

    def __init__(self) -> None:
        self.cache: dict[Path, tuple[str | None, str | None]] = {}

    def __call__(self, root: Path | None, path: str) -> tuple[str | None, str | None]:
        """The URI, or None and why the image could not be shown."""
        if root is None:
            return None, "the run records no image folder"
        full = (root / path) if not Path(path).is_absolute() else Path(path)
        if full not in self.cache:
            from PIL import Image

            from toolkit.imaging.decode import load_image

            try:
                image = load_image(full)
            except (ImageError, OSError) as exc:
                reason = exc.reason if isinstance(exc, ImageError) else str(exc)
                self.cache[full] = (None, reason or "unreadable")
            else:
                image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=80)
                self.cache[full] = ("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None)
        return self.cache[full]


@dataclass
class HeadView:
    """One head of one run, scored on its OOF rows."""

    head: str
    classes: list[str]
    rows: int
    recall: dict[str, float]
    support: dict[str, int]
    confusion: list[list[float]] | None = None  # row-normalised, for a table
    confusion_png: str | None = None  # data URI, for many classes
    confused: list[dict[str, Any]] = field(default_factory=list)
    top_losses: list[dict[str, Any]] = field(default_factory=list)
    reliability: Markup | None = None
    ece: float | None = None

    @property
    def confused_rows(self) -> list[tuple[str, str, int, str]]:
        """The most-confused pairs as table rows."""
        return [(c["true"], c["pred"], c["count"], f"{c['share']:.3f}") for c in self.confused]


@dataclass
class RunView:
    """Everything the page shows in one run's section."""

    entry: Entry
    anchor: str
    heads: list[HeadView] = field(default_factory=list)
    curves: list[Markup] = field(default_factory=list)
    ensemble: dict[str, Any] | None = None
    explanations: list[dict[str, Any]] = field(default_factory=list)
    headline: list[tuple[str, str]] = field(default_factory=list)
    link: str | None = None
    calibration: list[dict[str, Any]] = field(default_factory=list)  # toolkit.report.records
    decision: dict[str, Any] | None = None
    composition: dict[str, Any] | None = None


def head_view(rows: HeadRows, *, root: Path | None, thumbs: Thumbnails, top_losses: int = TOP_LOSSES) -> HeadView:
    """Score one head's OOF rows and pick what the page shows of them."""
    known = rows.labels >= 0
    labels, probs = rows.labels[known], rows.probs[known]
    paths = [p for p, k in zip(rows.paths, known, strict=True) if k]
    n_classes = len(rows.classes)
    if labels.size == 0:
        return HeadView(rows.head, rows.classes, 0, {}, {})
    pred = probs.argmax(axis=1)
    # Counts by bincount, not a C×C table through sklearn: with thousands of classes that table is
    # most of the report's time and memory.
    support = np.bincount(labels, minlength=n_classes)
    hits = np.bincount(labels[pred == labels], minlength=n_classes)
    recall = np.divide(hits, support, out=np.zeros(n_classes), where=support > 0)
    view = HeadView(rows.head, rows.classes, int(labels.size),
                    {c: float(r) for c, r in zip(rows.classes, recall, strict=True)},
                    {c: int(n) for c, n in zip(rows.classes, support, strict=True)})
    wrong = pred != labels
    pair_counts = np.bincount(labels[wrong] * n_classes + pred[wrong], minlength=n_classes * n_classes)
    if n_classes <= TABLE_CLASSES:
        counts = pair_counts.reshape(n_classes, n_classes) + np.diag(hits)
        view.confusion = (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).round(3).tolist()
    elif n_classes <= PICTURE_CLASSES:
        from toolkit.report.html import data_uri

        counts = (pair_counts.reshape(n_classes, n_classes) + np.diag(hits)).astype(np.float64)
        view.confusion_png = data_uri(heatmap_png(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)))
    top = np.flatnonzero(pair_counts)
    if top.size > CONFUSED_PAIRS:
        top = top[np.argpartition(-pair_counts[top], CONFUSED_PAIRS - 1)[:CONFUSED_PAIRS]]
    for flat in sorted(top, key=lambda f: (-pair_counts[f], f)):
        i, j = divmod(int(flat), n_classes)
        view.confused.append({"true": rows.classes[i], "pred": rows.classes[j], "count": int(pair_counts[flat]),
                              "share": float(pair_counts[flat] / max(support[i], 1))})
    confidence = probs[np.arange(labels.size), pred]
    given = probs[np.arange(labels.size), labels]
    mistakes = np.flatnonzero(wrong)
    # The largest losses: the lowest probability of the given label among the wrong rows.
    for r in mistakes[np.argsort(given[mistakes], kind="stable")][:top_losses]:
        uri, missing = thumbs(root, paths[r])
        view.top_losses.append({"path": paths[r], "label": rows.classes[labels[r]], "pred": rows.classes[pred[r]],
                                "p_pred": float(confidence[r]), "p_label": float(given[r]), "thumb": uri,
                                "missing": missing})
    view.reliability, ece = reliability_chart(confidence, pred == labels, title=f"reliability, {rows.head}")
    view.ece = None if math.isnan(ece) else float(ece)
    return view


def run_curves(entry: Entry, metric: str) -> list[Markup]:
    """Loss, metric and learning-rate charts over epochs, one line per fold (train loss dashed)."""
    frame = entry.curves()
    if frame is None or "epoch" not in frame.columns or "fold" not in frame.columns:
        return []
    charts = []
    groups = [(int(k), g.sort_values("epoch")) for k, g in frame.groupby("fold")]

    def series(column: str, label: str, dashed: bool = False) -> list[Series]:
        return [Series(f"fold {k} {label}".strip(), g["epoch"].tolist(), g[column].astype(float).tolist(), dashed, k)
                for k, g in groups if column in g.columns]
    losses = series("train_loss", "train", dashed=True) + series("val_loss", "val")
    if losses:
        charts.append(line_chart(losses, title=f"{entry.id}: loss", x_label="epoch", y_label="loss"))
    if metric in frame.columns:
        charts.append(line_chart(series(metric, ""), title=f"{entry.id}: {metric}", x_label="epoch", y_label=metric))
    if "lr" in frame.columns:
        charts.append(line_chart(series("lr", ""), title=f"{entry.id}: learning rate", x_label="epoch",
                                 y_label="lr", log_y=True))
    return charts


def ensemble_view(entry: Entry, metric: str) -> dict[str, Any] | None:
    """Members, weights, the selection path and the per-class gain over the best member."""
    summary = entry.summary
    members = [m for m in summary.get("members") or [] if isinstance(m, Mapping)]
    if not members:
        return None
    rows = []
    for m in members:
        oof = m.get("oof") if isinstance(m.get("oof"), Mapping) else {}
        rows.append({"name": str(m.get("name", "")), "source": str(m.get("source", "")),
                     "weight": m.get("weight"), "score": oof.get(metric)})
    # Members record their OOF accuracy, macro-F1 and balanced accuracy: rank them by the report's
    # metric when they have it, else by the ensemble's own metric.
    if not any(isinstance(r["score"], int | float) for r in rows):
        metric = str(summary.get("metric") or "macro_f1")
        for r, m in zip(rows, members, strict=True):
            oof = m.get("oof") if isinstance(m.get("oof"), Mapping) else {}
            r["score"] = oof.get(metric)
    scored = [r for r in rows if isinstance(r["score"], int | float)]
    sign = 1.0 if metric in ("accuracy", "macro_f1", "balanced_accuracy") or _max_is_better(metric) else -1.0
    best = max(scored, key=lambda r: sign * r["score"]) if scored else None
    gain: list[dict[str, Any]] = []
    per_class = summary.get("per_class") if isinstance(summary.get("per_class"), Mapping) else {}
    if best is not None and per_class:
        mine = per_class.get("ensemble") or {}
        theirs = (per_class.get("members") or {}).get(best["name"]) or {}
        for c in per_class.get("classes") or []:
            if c in mine and c in theirs:
                gain.append({"class": str(c), "best_member": float(theirs[c]), "ensemble": float(mine[c]),
                             "gain": float(mine[c]) - float(theirs[c])})
        gain.sort(key=lambda g: g["gain"])
    path = []
    for bag in summary.get("selection") or []:
        for step in bag.get("path") or [] if isinstance(bag, Mapping) else []:
            if isinstance(step, Mapping):
                path.append({"step": step.get("step"), "member": str(step.get("member", "")),
                             "score": step.get("score")})
        break  # the first bag's path; later bags repeat the procedure on other halves
    return {"members": rows, "best": best["name"] if best else None, "gain": gain, "path": path,
            "vote": summary.get("vote"), "weights_from": summary.get("weights_from"),
            "crossfit": summary.get("crossfit_score")}


def _max_is_better(metric: str) -> bool:
    try:
        return metric_direction(metric) == "max"
    except Exception:  # noqa: BLE001 - a metric name this release does not know ranks as larger-is-better
        return True


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def headline(entry: Entry) -> list[tuple[str, str]]:
    """The few numbers that say what an EDA, split, clean or predict run found."""
    s = entry.summary
    out: list[tuple[str, str]] = []
    if entry.kind == "eda":
        images = s.get("images") or {}
        out += [("images", _number(images.get("total"))), ("unreadable", _number(images.get("unreadable")))]
        label = (s.get("targets") or {}).get(s.get("label_column") or "label")
        if isinstance(label, Mapping):
            counts = label.get("counts") if isinstance(label.get("counts"), Mapping) else label
            out.append(("classes", _number(len(counts))))
        dup = s.get("duplicates") or {}
        pairs = dup.get("pairs")
        conflicts = dup.get("label_conflicts")
        out += [("duplicate pairs", _number(sum(v for v in pairs.values() if isinstance(v, int))
                                            if isinstance(pairs, Mapping) else pairs)),
                ("label conflicts", _number(conflicts.get("count") if isinstance(conflicts, Mapping) else conflicts))]
        out.append(("outliers", _number((s.get("outliers") or {}).get("count"))))
    elif entry.kind == "split":
        params = entry.info.get("params") or {}
        audit = s.get("audit") or {}
        out += [("folds", _number(params.get("folds"))), ("group", _number(params.get("group"))),
                ("leakage audit", "clean" if audit.get("ok") else "LEAKAGE" if audit else "n/a")]
        out += [("warning", str(w)) for w in (s.get("warnings") or [])[:5]]
    elif entry.kind == "clean":
        for head, h in (s.get("heads") or {}).items():
            if isinstance(h, Mapping):
                out += [(f"{head}: flagged", f"{h.get('issues')} of {h.get('rows')} ({h.get('filter_by')})"),
                        (f"{head}: label health", _number(h.get("score")))]
        out.append(("duplicate label conflicts", _number(s.get("conflicts"))))
        applied = s.get("apply")
        if isinstance(applied, Mapping):
            out.append(("applied", f"{applied.get('mode')}: {applied.get('changed')} row(s) changed, "
                                   f"{applied.get('rows_before')} → {applied.get('rows_after')} rows"))
    else:
        out += [(str(k), _number(v)) for k, v in s.items() if isinstance(v, int | float | str)][:8]
    if entry.kind in ("eda", "split") and isinstance(s.get("shortcuts"), Mapping):
        findings = [f for f in s["shortcuts"].get("findings") or [] if isinstance(f, Mapping)]
        out.append(("shortcuts", "none flagged" if not findings else
                    f"{len(findings)} flagged; strongest: {findings[0].get('feature')} "
                    f"(strength {_number(findings[0].get('strength'))})"))
    return [(k, v) for k, v in out if v not in ("None", "")]


def weakest_classes(views: Sequence[tuple[str, HeadView]], top: int) -> tuple[list[str], list[list[float | None]], str]:
    """Per-class recall, runs × classes, weakest classes (lowest mean recall) first.

    Returns:
        The classes shown (at most ``top``), a row per class of each run's recall (None where a run
        lacks the class), and the CSV of every class.
    """
    order: dict[str, None] = {}
    for _, v in views:
        order.update(dict.fromkeys(v.classes))
    classes = list(order)
    table = [[v.recall.get(c) for _, v in views] for c in classes]
    mean = [float(np.mean([x for x in row if x is not None])) if any(x is not None for x in row) else math.inf
            for row in table]
    order = sorted(range(len(classes)), key=lambda i: (mean[i], classes[i]))
    lines = ["class," + ",".join(_csv(name) for name, _ in views)]
    lines += [_csv(classes[i]) + "," + ",".join("" if x is None else f"{x:.6f}" for x in table[i]) for i in order]
    shown = order[:top]
    return [classes[i] for i in shown], [table[i] for i in shown], "\n".join(lines) + "\n"


def _csv(text: str) -> str:
    # Quote every field that could break a row; a formula prefix is defused for spreadsheets.
    value = "'" + text if text[:1] in ("=", "+", "-", "@") else text
    return '"' + value.replace('"', '""') + '"' if any(ch in value for ch in ',"\n\r') else value


def image_root(entry: Entry, by_id: Mapping[str, Entry], _seen: set[str] | None = None) -> Path | None:
    """The folder a run's image paths are relative to: its own record, else a parent's (an ensemble's members)."""
    root = entry.info.get("data_root")
    if root:
        return Path(str(root))
    if entry.kind == "train" and entry.run is not None:
        try:
            from toolkit.data.training import run_image_root

            return run_image_root(entry.run)
        except Exception:  # noqa: BLE001 - an old run whose data moved: shown as missing images, not a crash
            return None
    seen = _seen if _seen is not None else {entry.id}
    for pid in entry.parents:
        if pid in seen:
            continue  # parents that point at each other (a damaged folder) must not recurse forever
        seen.add(pid)
        parent = by_id.get(pid)
        if parent is None:
            parent = _outside_parent(entry, pid)
        if parent is not None:
            found = image_root(parent, by_id, seen)
            if found is not None:
                return found
    return None


def _outside_parent(entry: Entry, pid: str) -> Entry | None:
    """A parent run that is not in the report but sits beside the run in its runs folder."""
    from toolkit.errors import ToolkitError
    from toolkit.store import Run, is_run_dir

    folder = entry.path.parent / pid
    if not is_run_dir(folder):
        return None
    try:
        run = Run(folder)
        info = dict(run.info)
    except (ToolkitError, OSError, ValueError):
        return None
    return Entry(id=pid, kind=str(info.get("kind") or ""), status="", path=folder, run=run, info=info,
                 parents=[str(p) for p in info.get("parents") or []])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def explanation_cards(entry: Entry, limit: int = TOP_LOSSES) -> list[dict[str, Any]]:
    """The run's top-loss Grad-CAM pictures (``clsctl explain --top-losses``) as captioned ``data:`` URIs.

    Only PNG files inside the explanation folder are embedded: the index is read from the run folder
    and is not trusted to name files elsewhere.
    """
    if entry.run is None or entry.kind != "train":
        return []
    from toolkit.errors import ToolkitError
    from toolkit.report.html import data_uri
    from toolkit.store.exports import read_explanations

    try:
        folder = entry.run.explain_dir()
        index = read_explanations(folder)
    except (ToolkitError, OSError, ValueError, TypeError, KeyError):
        return []
    if not index:
        return []
    cards = []
    inside = folder.resolve()
    for item in index.get("items", [])[:limit]:
        if not isinstance(item, Mapping):
            continue
        png = Path(str(item.get("png", ""))).resolve()
        try:
            if not png.is_relative_to(inside) or not png.is_file():
                continue
            data = png.read_bytes()
        except OSError:
            continue
        if not data.startswith(_PNG_SIGNATURE):
            continue
        cards.append({"uri": data_uri(data), "path": str(item.get("path", "")), "label": str(item.get("label", "")),
                      "pred": str(item.get("pred", "")), "p_label": _prob(item.get("prob_label")),
                      "p_pred": _prob(item.get("prob_pred"))})
    return cards


def _prob(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else ""
