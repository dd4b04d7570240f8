"""The study page of a sweep run (``report.html``): the trials, the metric against each parameter, which
parameters mattered, and the curves of the trials, pruned ones dashed. Drawn from ``summary.json`` alone,
so a study that ran on many machines renders wherever its sweep run is."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from toolkit.report.charts import ZOOM_HINT, ZOOM_SCRIPT, Series, line_chart
from toolkit.report.html import data_uri, figure_png, new_figure, render_page, table
from toolkit.store import Run
from toolkit.store.atomic import atomic_write_text

if TYPE_CHECKING:
    from toolkit.config.schema import Recipe
    from toolkit.sweep import SweepResult

_COLOURS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "failed": "#d62728", "running": "#7f7f7f",
            "waiting": "#7f7f7f"}
_MAX_CURVES = 40

_PAGE = """{% extends "page.html" %}
{% block title %}Study {{ s.study }}{% endblock %}
{% block body %}
<h1>Study {{ s.study }}</h1>
<p>{{ s.metric }} ({{ s.direction }}), sampler {{ s.sampler }}, pruner {{ s.pruner }}, folds {{ s.folds }};
{{ counts }}. Storage: <code>{{ storage }}</code>.</p>
{% if best %}<p><b>Best: trial {{ best.number }}</b>, {{ s.metric }} {{ "%.4f"|format(best.value) }}
(run <code>{{ best.run }}</code>). Changed from the base recipe: {{ changes }}.
Retrain it on every fold: <code>clsctl train --recipe {{ best_toml }}</code></p>
{% if baseline %}<p>The recipe's own values (trial {{ baseline.number }}) scored
{{ "%.4f"|format(baseline.value) }}: the best trial is {{ "%+.4f"|format(baseline.gain) }} on them.</p>{% endif %}
{% endif %}
{% if pruning %}<p>{{ pruning }}</p>{% endif %}
<h2>Trials</h2>
{{ trials }}
<h2>{{ s.metric }} against each parameter</h2>
{% if scatter %}<img src="{{ scatter }}" alt="metric against each parameter">
<p class="note">Blue: complete trials; orange: pruned trials at the score they had when stopped.</p>
{% else %}<p class="note">No trial has a score yet.</p>{% endif %}
<h2>Parameter importances</h2>
{% if importances %}{{ importances }}<p class="note">Optuna's importance evaluator over the completed trials: the share
of the metric's variation each parameter explains.</p>{% else %}<p class="note">Needs two or more completed trials
that differ.</p>{% endif %}
<h2>Curves</h2>
{{ curves }}
<p class="note">What each trial reported at each step (an epoch, or a fold with the Wilcoxon pruner); pruned trials
are dashed and end where they were stopped. {{ zoom_hint }}</p>
<script>{{ zoom }}</script>
{% endblock %}
"""


def _v(value: Any) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _scatter(summary: dict[str, Any]) -> str | None:
    """One panel per parameter: the metric of each scored trial against the value it tried."""
    keys = list(summary["space"])
    points = [(r, r["value"] if r["value"] is not None else (r.get("pruned_at") or {}).get("value"))
              for r in summary["trials"]]
    points = [(r, v) for r, v in points if isinstance(v, int | float) and math.isfinite(v)]
    if not points or not keys:
        return None
    fig = new_figure(min(4.0 * len(keys), 16.0), 3.2)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        values = [r["params"].get(key) for r, _ in points]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)
        labels = sorted({str(x) for x in values}) if not numeric else []
        xs = values if numeric else [labels.index(str(x)) for x in values]
        ax.scatter(xs, [v for _, v in points], c=[_COLOURS.get(r["state"], "#7f7f7f") for r, _ in points], s=18)
        if numeric and "log" in summary["space"][key] and all(x > 0 for x in values):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(key, fontsize=9)
        if i == 0:
            ax.set_ylabel(summary["metric"], fontsize=9)
        ax.tick_params(labelsize=8)
    return data_uri(figure_png(fig))


def _curves(summary: dict[str, Any]) -> Any:
    rows = [r for r in summary["trials"] if r["curve"]][-_MAX_CURVES:]
    series = [Series(f"trial {r['number']} ({r['state']})", [c[0] for c in r["curve"]], [c[1] for c in r["curve"]],
                     dashed=r["state"] == "pruned") for r in rows]
    return line_chart(series, title=f"{summary['metric']} reported per step", x_label="step", y_label=summary["metric"],
                      width=900, height=320)


def sweep_note(summary: dict[str, Any], page: Path) -> str:
    """One line on a sweep run for ``clsctl report``: the study's counts, its best trial and its page."""
    counts = ", ".join(f"{n} {state}" for state, n in (summary.get("counts") or {}).items() if n) or "no trials"
    best = summary.get("best")
    said = f"study {summary.get('study')}: {counts}"
    if best:
        said += f"; best trial {best['number']} {summary.get('metric')} {best['value']:.4f} (run {best['run']})"
    return said + (f"; study page {page}" if page.is_file() else "")


def render_sweep_report(run: Run) -> Path:
    """Write the study page of a sweep run from its ``summary.json``; return its path."""
    s = run.summary
    keys = list(s["space"])
    header = ["#", "state", s["metric"], *keys, "run", "host", "seconds", "note"]
    rows = []
    for r in sorted(s["trials"], key=lambda r: r["number"]):
        note = ["the recipe's own values"] if r.get("baseline") else []
        if r.get("retry_of") is not None:
            note.append(f"retry of {r['retry_of']}")
        if r.get("pruned_at"):
            p = r["pruned_at"]
            at = f"fold {p['fold']}" + (f" epoch {p['epoch'] + 1}" if p.get("epoch") is not None else "")
            note.append(f"pruned after {at}")
        if r.get("error"):
            note.append(str(r["error"])[:120])
        rows.append([r["number"], r["state"], _v(r["value"]), *(_v(r["params"].get(k)) for k in keys), r["run"] or "",
                     r["host"] or "", _v(r["duration_s"]), "; ".join(note)])
    best = s.get("best")
    changes = "; ".join(f"{c['key']}: {_v(c['base'])} → {_v(c['value'])}" for c in (best or {}).get("changes", []))
    pruning = s.get("pruning") or {}
    said = ""
    if pruning.get("pruned"):
        said = f"{pruning['pruned']} trial(s) pruned by the {pruning['by']} pruner"
        if "epochs_saved" in pruning:
            total = pruning["epochs_trained"] + pruning["epochs_saved"]
            said += f": {pruning['epochs_saved']} of {total} epochs not trained"
    importances = table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in s["importances"].items()],
                        numeric=[1]) if s.get("importances") else None
    html = render_page(_PAGE, s=s, counts=", ".join(f"{n} {state}" for state, n in s["counts"].items() if n),
                       storage=run.info.get("storage", ""), best=best, baseline=(best or {}).get("baseline"),
                       changes=changes or "nothing",
                       best_toml=str(run.best_recipe_path), pruning=said,
                       trials=table(header, rows, numeric=[0, 2, len(keys) + 5]), scatter=_scatter(s),
                       importances=importances, curves=_curves(s), zoom=Markup(ZOOM_SCRIPT), zoom_hint=ZOOM_HINT)
    atomic_write_text(run.sweep_report_path, html)
    return run.sweep_report_path


def sweep(recipe: Recipe, **options: Any) -> SweepResult:
    """``clsctl sweep`` end to end: run the study (:func:`toolkit.sweep.run_sweep`), then draw its page.

    Args:
        recipe: The recipe with its ``[sweep]`` section.
        **options: Passed to :func:`toolkit.sweep.run_sweep`.

    Returns:
        The result, with ``files["report"]`` added.
    """
    from toolkit.sweep import run_sweep

    result = run_sweep(recipe, **options)
    result.files["report"] = render_sweep_report(result.run)
    return result
