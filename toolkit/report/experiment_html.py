"""The experiment report page: one HTML file, no server, no network, printable.

Charts are inline SVG (:mod:`toolkit.report.charts`), thumbnails and the confusion pictures are
``data:`` URIs, the per-class CSV is both a ``data:`` link and a file next to the page, and the
only script is the small inline zoom handler of the charts. Every run id, class name, recipe value
and path goes through autoescape; nothing read from a run folder is ever executed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from toolkit.errors import UsageError
from toolkit.report.charts import ZOOM_HINT, ZOOM_SCRIPT
from toolkit.report.experiment import ExperimentReport, build_report, format_duration
from toolkit.report.experiment_views import (
    RunView,
    Thumbnails,
    ensemble_view,
    explanation_cards,
    head_view,
    headline,
    image_root,
    run_curves,
    weakest_classes,
)
from toolkit.report.html import environment, render_page
from toolkit.report.records import calibration_blocks, composition_view, decision_view

__all__ = ["render_experiment", "report_runs", "write_report"]

_TEMPLATE = r"""{% extends "page.html" %}
{% block title %}clsctl report: {{ runs|length }} run(s), {{ metric }}{% endblock %}
{% block style %}
td.v-better { color: #176b2c; font-weight: 600; } td.v-worse { color: #a33; font-weight: 600; }
.flag { color: #a33; font-weight: 600; }
.status-failed, .status-stopped, .status-interrupted { color: #a33; } .status-running { color: #a60; }
svg.chart { max-width: 100%; height: auto; border: 1px solid #eee; margin: 4px; background: #fff; }
.charts { display: flex; flex-wrap: wrap; }
.losses { display: flex; flex-wrap: wrap; gap: 8px; }
.loss { width: 150px; font-size: 12px; border: 1px solid #ddd; padding: 4px; overflow-wrap: anywhere; }
.loss img { display: block; width: 112px; height: 112px; object-fit: contain; margin: 0 auto; }
.loss.cam { width: 320px; } .loss.cam img { width: 310px; height: auto; }
.missing { width: 112px; height: 112px; margin: 0 auto; background: #eee; color: #a33; display: flex;
           align-items: center; justify-content: center; text-align: center; font-size: 11px; }
table.cm td { text-align: right; min-width: 2.5em; }
section.run { border-top: 2px solid #ccc; margin-top: 2em; page-break-inside: avoid; }
@media print { nav, .hint { display: none; } svg.chart { break-inside: avoid; } }
{% endblock %}
{% block body %}
{% macro calibration(b) %}<p class="note">Recorded calibration ({{ b.note }}){{ ":" if b.rows else "." }}</p>
{% if b.rows %}{{ table(b.header, b.rows) }}{% endif %}{% endmacro %}
<h1>clsctl report</h1>
<p class="note">{{ runs|length }} run(s), ranked by <b>{{ metric }}</b> (CV mean over folds, else OOF);
written {{ written }}. Significance: fold-paired delta with a Nadeau–Bengio corrected t interval and a paired
bootstrap over shared OOF rows ({{ resamples }} resamples), both 95%; a delta is called better or worse only when
every interval excludes 0.</p>
<nav><a href="#leaderboard">leaderboard</a><a href="#changes">what changed</a><a href="#classes">per class</a>
<a href="#runs">runs</a>{% if others %}<a href="#others">eda, split, clean</a>{% endif %}</nav>

<h2 id="leaderboard">Leaderboard</h2>
<table>
<tr><th>#</th><th>run</th><th>kind</th><th>status</th><th>model</th><th>size</th><th>loss</th><th>epochs</th>
<th>folds</th><th>CV {{ metric }}</th><th>CV accuracy</th><th>OOF {{ metric }}</th><th>decision</th><th>time</th>
<th>vs baseline</th></tr>
{% for r in board %}
<tr><td class="n">{{ loop.index }}</td><td><a href="#{{ r.anchor }}">{{ r.run }}</a></td><td>{{ r.kind }}</td>
<td class="status-{{ r.status }}">{{ r.status }}</td><td>{{ r.model }}</td><td class="n">{{ r.image_size }}</td>
<td>{{ r.loss }}</td><td class="n">{{ r.epochs }}</td><td class="n">{{ r.folds }}</td>
<td class="n">{{ r.cv_text }}</td><td class="n">{{ r.acc_text }}</td><td class="n">{{ r.oof_text }}</td>
<td class="decision">{{ r.decision }}</td><td class="n">{{ r.time }}</td><td class="v-{{ r.verdict_class }}">{{ r.verdict }}</td></tr>
{% endfor %}
</table>

<h2 id="changes">What changed, and is it real</h2>
{% if not changes %}<p class="note">No run has a baseline to compare with.</p>{% endif %}
{% for c in changes %}
<h3>{{ c.run }} <span class="note">vs {{ c.baseline }} ({{ c.reason }})</span>
{% if c.flagged %}<span class="flag">changed {{ c.diff|length }} keys at once</span>{% endif %}</h3>
{% if c.diff %}
<table><tr><th>key</th><th>{{ c.baseline }}</th><th>{{ c.run }}</th></tr>
{% for k in c.diff %}<tr><td><code>{{ k[0] }}</code></td><td>{{ k[1] }}</td><td>{{ k[2] }}</td></tr>{% endfor %}
</table>
{% elif not c.comparable %}<p class="note">No recipe on one side (an ensemble has none): members and weights are below.</p>
{% else %}<p class="note">Same resolved recipe.</p>{% endif %}
<p>CV {{ metric }} delta: <b>{{ c.delta }}</b>.
{% if c.sig %} On {{ c.sig.rows }} shared OOF rows ({{ c.sig.scored_as }}): delta {{ c.sig.delta }}, fold-paired
{{ c.sig.folds }}; bootstrap {{ c.sig.boot }} → <b class="v-{{ c.sig.verdict_class }}">{{ c.sig.verdict }}</b>
{% if c.sig.note %}<span class="note">({{ c.sig.note }})</span>{% endif %}
{% else %} <span class="note">No shared OOF rows: significance not computed.</span>{% endif %}</p>
{% endfor %}

<h2 id="classes">Per-class recall, weakest first</h2>
{% for g in class_groups %}
<h3>{{ g.title }}</h3>
<p class="note">{{ g.shown }} of {{ g.total }} classes (lowest mean recall over the runs first).
<a download="{{ g.csv_name }}" href="{{ g.csv_uri }}">All classes as CSV</a>{% if g.csv_file %} (also written to
<code>{{ g.csv_file }}</code>){% endif %}.</p>
<table><tr><th>class</th>{% for name in g.runs %}<th>{{ name }}</th>{% endfor %}</tr>
{% for row in g.rows %}<tr><td>{{ row.cls }}</td>{% for cell in row.cells %}<td class="n" style="{{ cell.style }}">{{ cell.text }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% else %}<p class="note">No run has OOF rows.</p>{% endfor %}

<h2 id="runs">Runs</h2>
<p class="note hint">{{ zoom_hint }}</p>
{% for v in views %}
<section class="run" id="{{ v.anchor }}">
<h3>{{ v.entry.id }} <span class="note">{{ v.entry.kind }}, {{ v.entry.status }}</span></h3>
{% for n in v.entry.notes %}<p class="warn">{{ n }}</p>{% endfor %}
{% if v.curves %}<div class="charts">{% for svg in v.curves %}{{ svg }}{% endfor %}</div>{% endif %}
{% if v.ensemble %}
<h4>Members ({{ v.ensemble.vote }} vote, weights {{ v.ensemble.weights_from }})</h4>
{{ table(["member", "source", "weight", "OOF " ~ metric], v.ensemble.member_rows, numeric=[2, 3]) }}
{% if v.ensemble.path %}<h4>Selection path</h4>{{ table(["step", "member added", "score"], v.ensemble.path_rows, numeric=[0, 2]) }}{% endif %}
{% if v.ensemble.gain %}<h4>Recall per class: ensemble vs best member ({{ v.ensemble.best }})</h4>
{{ table(["class", "best member", "ensemble", "gain"], v.ensemble.gain_rows, numeric=[1, 2, 3]) }}{% endif %}
{% endif %}
{% if v.composition %}{% set c = v.composition %}
<h4>Composed: {{ c.into }} = {{ c.formula }}</h4>
<p class="note">The combined probability is the product of the parts' (attributes independent given the image),
class names joined by <code>{{ c.separator }}</code>; parts {{ c.calibrated }}{% if c.prediction_set %}; prediction
set {{ c.prediction_set }}{% endif %}.</p>
{{ table(c.header, c.rows, numeric=[3, 4, 5, 6]) }}
{% endif %}
{% if v.decision %}{% set d = v.decision %}
<h4>Decision: {{ d.applied }}</h4>
{% if d.tuned %}<p>Per-class offsets tuned for {{ d.metric }} are added to the log scores before the argmax.</p>
{% elif d.refused %}<p class="warn">Offsets for {{ d.metric }} were asked for and refused; the labels are the argmax.</p>
{% else %}<p class="note">No tuned decision was asked for.</p>{% endif %}
{% if d.note %}<p class="note">{{ d.note }}</p>{% endif %}
{% if d.scores %}{{ table(["macro-F1", "argmax", "tuned", "gain"], d.scores, numeric=[1, 2, 3]) }}{% endif %}
{% if d.per_fold %}{{ table(["fold", "argmax", "tuned", "gain"], d.per_fold, numeric=[1, 2, 3]) }}{% endif %}
{% if d.offsets %}<p>Offsets (natural-log units; classes without one are left out):</p>
{{ table(["class", "offset"], d.offsets, numeric=[1]) }}
{% if d.more_offsets %}<p class="note">and {{ d.more_offsets }} more.</p>{% endif %}{% endif %}
{% endif %}
{% for h in v.heads %}
<h4>{% if v.heads|length > 1 %}{{ h.head }}: {% endif %}confusion (row-normalised, {{ h.rows }} OOF rows)</h4>
{% if h.confusion %}
<table class="cm"><tr><th>true \ predicted</th>{% for c in h.classes %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in h.confusion %}<tr><th>{{ h.classes[loop.index0] }}</th>{% for x in row %}<td style="background: rgba(31,80,160,{{ '%.3f'|format(x) }}); color: {{ '#fff' if x > 0.55 else '#222' }}">{{ '%.2f'|format(x) }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% elif h.confusion_png %}<img src="{{ h.confusion_png }}" alt="confusion matrix of {{ h.classes|length }} classes">{% endif %}
{% if h.confused %}<p>Most confused:</p>{{ table(["true", "predicted", "rows", "share of true"], h.confused_rows, numeric=[2, 3]) }}{% endif %}
<h4>Top losses: the most confidently wrong OOF rows</h4>
{% if not h.top_losses %}<p class="note">No wrong rows.</p>{% endif %}
<div class="losses">{% for t in h.top_losses %}<div class="loss">
{% if t.thumb %}<img src="{{ t.thumb }}" alt="{{ t.path }}" title="{{ t.path }}">{% else %}<div class="missing">missing: {{ t.missing }}</div>{% endif %}
<div>{{ t.path }}</div><div>given <b>{{ t.label }}</b> ({{ '%.3f'|format(t.p_label) }})</div>
<div>predicted <b>{{ t.pred }}</b> ({{ '%.3f'|format(t.p_pred) }})</div></div>{% endfor %}</div>
{% if loop.first and v.explanations %}<h4>Where the model looked: Grad-CAM of the top losses (clsctl explain)</h4>
<div class="losses">{% for x in v.explanations %}<div class="loss cam"><img src="{{ x.uri }}" alt="{{ x.path }}" title="{{ x.path }}">
<div>{{ x.path }}</div><div>given <b>{{ x.label }}</b> ({{ x.p_label }})</div><div>predicted <b>{{ x.pred }}</b> ({{ x.p_pred }})</div></div>{% endfor %}</div>{% endif %}
<h4>Calibration{% if h.ece is not none %}: ECE {{ '%.4f'|format(h.ece) }}{% endif %}</h4>
{{ h.reliability }}
{% for b in v.calibration if b.head == h.head %}{{ calibration(b) }}{% endfor %}
{% endfor %}
{% if not v.heads %}{% for b in v.calibration %}<h4>Calibration{% if b.head %}, {{ b.head }}{% endif %}</h4>
{{ calibration(b) }}{% endfor %}{% endif %}
</section>
{% endfor %}

{% if others %}<h2 id="others">EDA, split and clean runs</h2>
{% for v in others %}<section class="run" id="{{ v.anchor }}"><h3>{{ v.entry.id }} <span class="note">{{ v.entry.kind }},
{{ v.entry.status }}</span></h3>
{% for n in v.entry.notes %}<p class="warn">{{ n }}</p>{% endfor %}
{% if v.headline %}{{ table(["", ""], v.headline) }}{% endif %}
{% if v.link %}<p><a href="{{ v.link }}">its own page</a></p>{% endif %}</section>
{% endfor %}{% endif %}
<script>{{ zoom_script }}</script>
{% endblock %}
"""


def _f(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def _interval(i: Any) -> str:
    if i is None:
        return "n/a"
    return f"{i.delta:+.4f} [{i.low:+.4f}, {i.high:+.4f}] (n={i.n})"


def _link(target: Path, page: Path) -> str:
    try:
        rel = os.path.relpath(target.absolute(), page.absolute().parent)
    except ValueError:  # another drive: an absolute file URI still opens from disk
        return target.absolute().as_uri()
    return urllib.parse.quote(Path(rel).as_posix())


def _recall_style(x: float | None) -> str:
    if x is None:
        return ""
    # Red for weak recall, fading to white at 1.0: the eye lands on the classes that need work.
    return f"background: rgba(200,40,40,{max(0.0, min(1.0, 1.0 - x)) * 0.6:.3f})"


def render_experiment(report: ExperimentReport, target: Path) -> tuple[str, dict[str, tuple[Path, str]]]:
    """The page's HTML, and the extra files to write next to it (name → (path, text))."""
    by_id = {e.id: e for e in report.entries}
    thumbs = Thumbnails()
    # Anchors by position: two EDA folders (or runs of two runs folders) may share a name.
    anchors = {id(e): f"run-{i}" for i, e in enumerate(report.entries)}
    views: list[RunView] = []
    others: list[RunView] = []
    for e in report.entries:
        view = RunView(entry=e, anchor=anchors[id(e)])
        if e.kind in ("train", "ensemble"):
            view.curves = run_curves(e, report.metric)
            root = image_root(e, by_id)
            for head in e.heads:
                rows = e.head_rows(head)
                if rows is not None:
                    view.heads.append(head_view(rows, root=root, thumbs=thumbs))
            view.calibration = calibration_blocks(e)
            if e.kind == "ensemble":
                view.ensemble = _ensemble_rows(ensemble_view(e, report.metric))
                view.decision, view.composition = decision_view(e), composition_view(e)
            view.explanations = explanation_cards(e)
            e.release()  # every comparison is made; the page needs only the view from here on
            views.append(view)
        else:
            view.headline = headline(e)
            view.link = _link(e.html, target) if e.html is not None else None
            others.append(view)

    board = []
    for row in report.leaderboard():
        cv, acc, sig = row["cv"], row["cv_accuracy"], row["verdict"]
        board.append({**row, "anchor": anchors[id(row["entry"])],
                      "cv_text": "" if cv is None else f"{cv[0]:.4f} ± {cv[1]:.4f}" + (" (so far)" if row["partial"] else ""),
                      "acc_text": "" if acc is None else f"{acc[0]:.4f} ± {acc[1]:.4f}",
                      "oof_text": _f(row["oof"]), "time": format_duration(row["seconds"]), "verdict": row["versus"],
                      "verdict_class": sig.replace(" ", "-") if sig else ""})

    changes = []
    for e in report.entries:
        c = report.changes.get(e.id)
        if c is None or c.baseline is None:
            continue
        s = c.significance
        changes.append({"run": c.run, "baseline": c.baseline, "reason": c.reason, "flagged": c.flagged,
                        "diff": [(k, _value(a), _value(b)) for k, a, b in c.keys], "comparable": c.comparable,
                        "delta": _signed(c.delta),
                        "sig": None if s is None else {"rows": s.rows, "scored_as": s.scored_as, "delta": _signed(s.delta),
                                                       "folds": _interval(s.folds), "boot": _interval(s.bootstrap),
                                                       "verdict": s.verdict, "verdict_class": s.verdict.replace(" ", "-"),
                                                       "note": s.note}})

    extra: dict[str, tuple[Path, str]] = {}
    class_groups = []
    groups: dict[tuple[str, tuple[str, ...]], list[tuple[str, Any]]] = {}
    for v in views:
        for h in v.heads:
            if h.rows:
                groups.setdefault((h.head, tuple(h.classes)), []).append((v.entry.id, h))
    for n, ((head, classes), members) in enumerate(groups.items()):
        shown, table, csv = weakest_classes(members, report.top_classes)
        suffix = "" if len(groups) == 1 else f"-{n + 1}"
        name = f"{target.stem}-per-class{suffix}.csv"
        csv_file = None
        if len(classes) > report.top_classes:
            extra[f"per_class{suffix}"] = (target.with_name(name), csv)
            csv_file = name
        class_groups.append({
            "title": f"{head}: {len(members)} run(s)", "shown": len(shown), "total": len(classes), "csv_name": name,
            "csv_uri": "data:text/csv;base64," + base64.b64encode(csv.encode("utf-8")).decode("ascii"),
            "csv_file": csv_file, "runs": [m[0] for m in members],
            "rows": [{"cls": c, "cells": [{"text": _f(x, 3), "style": _recall_style(x)} for x in row]}
                     for c, row in zip(shown, table, strict=True)]})

    page = render_page(_TEMPLATE, environment(), runs=report.entries, metric=report.metric, board=board,
                       changes=changes, class_groups=class_groups, views=views, others=others,
                       written=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                       resamples=report.resamples, zoom_hint=ZOOM_HINT,
                       zoom_script=Markup(ZOOM_SCRIPT))
    return page, extra


def _value(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _ensemble_rows(view: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if view is None:
        return None
    return {**view,
            "member_rows": [(m["name"], m["source"], _f(m["weight"], 3) if isinstance(m["weight"], int | float) else "",
                             _f(m["score"]) if isinstance(m["score"], int | float) else "") for m in view["members"]],
            "path_rows": [(p["step"], p["member"], _f(p["score"]) if isinstance(p["score"], int | float) else "")
                          for p in view["path"]],
            "gain_rows": [(g["class"], _f(g["best_member"], 3), _f(g["ensemble"], 3), f"{g['gain']:+.3f}")
                          for g in view["gain"]]}


def _check_out(target: Path) -> None:
    if target.is_dir():
        raise UsageError(f"--out {target} is a folder", f"name a file, e.g. --out {target / 'report.html'}")
    if target.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {target} does not end in .html", "e.g. --out report.html")
    if not target.parent.is_dir():
        raise UsageError(f"--out {target}: folder {target.parent} does not exist", "create it first, or pick another path")


def write_report(report: ExperimentReport, out: str | os.PathLike[str] | None = None) -> Path:
    """Render the report into one HTML file (default ``report.html`` in the current folder).

    Raises:
        UsageError: ``out`` is a folder or does not end in ``.html``.
    """
    from toolkit.store.atomic import atomic_write_text

    target = Path(out) if out is not None else Path("report.html")
    _check_out(target)
    report.out = target
    page, extra = render_experiment(report, target)
    atomic_write_text(target, page)
    report.files["html"] = target
    for name, (path, text) in extra.items():
        atomic_write_text(path, text)
        report.files[name] = path
    return target


def report_runs(refs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None,
                **options: Any) -> ExperimentReport:
    """:func:`~toolkit.report.experiment.build_report` with ``options``, then :func:`write_report` to ``out``.

    The output path is checked before any run is read, so a bad ``--out`` costs nothing.
    """
    _check_out(Path(out) if out is not None else Path("report.html"))
    report = build_report(refs, **options)
    write_report(report, out)
    return report
