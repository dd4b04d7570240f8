"""The static ``eda.html`` page: one Jinja2 template rendered from the ``eda.json`` content.

The page extends the shared skeleton of :mod:`toolkit.report.html`: it opens from disk anywhere,
and every image and link is a path relative to the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from toolkit.report.html import environment, pct, render_page, table

if TYPE_CHECKING:
    from markupsafe import Markup

__all__ = ["render_eda_html"]

_TEMPLATE = r"""{% extends "page.html" %}
{% block title %}eda: {{ r.root }}{% endblock %}
{% block body %}<h1>Data report</h1>
<p><code>{{ r.root }}</code> ({{ r.source or "manifest" }}), made {{ r.created }} in {{ r.timing.seconds }} s
({{ r.timing.images_per_second }} images/s). Files: <a href="eda.json">eda.json</a>,
<a href="hashes.parquet">hashes.parquet</a>, <a href="duplicates.parquet">duplicates.parquet</a>,
<a href="images.parquet">images.parquet</a>.</p>
<nav><a href="#overview">overview</a><a href="#targets">classes</a>{% if r.attributes %}<a href="#attributes">attributes</a>{% endif %}
{% if r.groups %}<a href="#groups">groups</a>{% endif %}<a href="#images">images</a><a href="#stats">stats</a>
<a href="#shortcuts">shortcuts</a><a href="#thumbs">thumbnails</a><a href="#outliers">outliers</a><a href="#duplicates">duplicates</a>
<a href="#unreadable">unreadable</a></nav>

<h2 id="overview">Overview</h2>
<table>
<tr><th>images</th><td class="n">{{ r.images.total }}</td></tr>
<tr><th>readable</th><td class="n">{{ r.images.readable }}</td></tr>
<tr><th>unreadable</th><td class="n {% if r.images.unreadable %}warn{% endif %}">{{ r.images.unreadable }}</td></tr>
{% if r.label_column %}{% set t = r.targets[r.label_column] %}
<tr><th>classes</th><td class="n">{{ t.n_classes }}</td></tr>
<tr><th>imbalance (largest / smallest)</th><td class="n">{{ t.imbalance_ratio }} ({{ t.largest }} / {{ t.smallest }})</td></tr>
{% else %}<tr><th>labels</th><td>none (unlabeled images)</td></tr>{% endif %}
<tr><th>grayscale-looking</th><td class="n">{{ r.grayscale.count }} ({{ pct(r.grayscale.share) }})</td></tr>
<tr><th>mean (R, G, B)</th><td>{{ fmt3(r.stats.mean) }}</td></tr>
<tr><th>std (R, G, B)</th><td>{{ fmt3(r.stats.std) }}</td></tr>
<tr><th>duplicate pairs</th><td>exact {{ r.duplicates.pairs.exact }}, pixel-equal {{ r.duplicates.pairs.pixel }},
 near {{ r.duplicates.pairs.near }}, mirrored {{ r.duplicates.pairs.near_flip }} (in {{ r.duplicates.groups }} groups)</td></tr>
<tr><th>outliers (score &gt; {{ r.outliers.threshold }})</th><td class="n">{{ r.outliers.count }}</td></tr>
{% set sc = r.get("shortcuts") %}{% if sc and not sc.skipped %}
<tr><th>shortcuts (metadata that predicts the label)</th><td class="{% if sc.findings %}warn{% endif %}">{% if sc.findings %}{{ sc.findings|length }}: {{ sc.findings[0].label }} (strength {{ "%.2f"|format(sc.findings[0].strength) }}){% else %}none found{% endif %}</td></tr>{% endif %}
</table>

<h2 id="targets">Classes and categorical columns</h2>
{% for name, t in r.targets.items() %}
<h3>{{ name }}: {{ t.n_classes }} values, imbalance {{ t.imbalance_ratio }}</h3>
<img src="{{ t.plot }}" alt="counts of {{ name }}">
{% else %}<p class="note">No label or categorical column.</p>{% endfor %}

{% if r.attributes %}
<h2 id="attributes">Attributes</h2>
{% for name, a in r.attributes.items() %}
{% if a.kind == "numeric" %}
<h3>{{ name }}</h3>
<p class="note">min {{ a.summary.min }}, median {{ a.summary.median }}, mean {{ a.summary.mean }}, max {{ a.summary.max }} ({{ a.summary.count }} values)</p>
<img src="{{ a.plot }}" alt="histogram of {{ name }}">
{% else %}<p><b>{{ name }}</b>: identifier-like, {{ a.n_unique }} distinct values.</p>{% endif %}
{% endfor %}
{% endif %}

{% if r.groups %}
<h2 id="groups">Groups</h2>
<p>{{ r.groups.n_groups }} groups; images per group: median {{ r.groups.images_per_group.median }},
max {{ r.groups.images_per_group.max }}. Groups with more than one label: {{ r.groups.mixed_label_groups }}.</p>
<img src="{{ r.groups.plot }}" alt="images per group">
{{ table(["largest groups", "images"], r.groups.largest, numeric=[1]) }}
{% endif %}

<h2 id="images">Images: size, format, mode, colour</h2>
<img src="{{ r.sizes.plot }}" alt="sizes">
<table><tr><th></th><th>min</th><th>p5</th><th>median</th><th>p95</th><th>max</th></tr>
{% for k in ["width", "height", "aspect_ratio"] %}{% set s = r.sizes[k] %}
<tr><th>{{ k }}</th><td class="n">{{ s.min }}</td><td class="n">{{ s.p5 }}</td><td class="n">{{ s.median }}</td><td class="n">{{ s.p95 }}</td><td class="n">{{ s.max }}</td></tr>{% endfor %}
</table>
<p>Most common sizes: {% for w, h, n in r.sizes.common %}{{ w }}×{{ h }} ({{ n }}){% if not loop.last %}, {% endif %}{% endfor %}</p>
{{ table(["file format", "images"], r.file_formats.items(), numeric=[1]) }}
{{ table(["stored mode", "images"], r.image_modes.items(), numeric=[1]) }}
<h3>Grayscale-looking images (red = green = blue everywhere)</h3>
{{ table(["class", "grayscale", "share"], grayscale_rows(r.grayscale.per_class), numeric=[1, 2]) }}

<h2 id="stats">Pixel statistics</h2>
<p>Per-channel mean and standard deviation over all pixels of every readable image, each downscaled
(box filter) so its long side is at most {{ r.stats.max_side }} px; {{ r.stats.pixels }} pixels of {{ r.stats.images }} images,
in 0..1 units. Use them with <code>[data] normalize = "dataset"</code> and <code>stats_file = ".../eda.json"</code>.</p>
<table><tr><th></th><th>R</th><th>G</th><th>B</th></tr>
<tr><th>mean</th>{% for v in r.stats.mean or [] %}<td class="n">{{ "%.4f"|format(v) }}</td>{% endfor %}</tr>
<tr><th>std</th>{% for v in r.stats.std or [] %}<td class="n">{{ "%.4f"|format(v) }}</td>{% endfor %}</tr></table>
<img src="{{ r.brightness.plot }}" alt="brightness"> <img src="{{ r.channel_plot }}" alt="channel means">

<h2 id="shortcuts">Shortcuts: file properties and names that predict the label</h2>
{% if not sc or sc.skipped %}<p class="note">Not audited{% if sc %}: {{ sc.skipped }}{% endif %}.</p>
{% else %}
<p class="note">A model learns whatever separates the classes most cheaply: a format, a size, a colour mode that
came with one class's source reaches it through the pixels, and a test set from elsewhere lacks it. Each feature's
strength is the out-of-fold true-positive minus false-positive rate of the rule "call an image class c when its
value is more common in c" (0: no better than chance, 1: the feature alone singles c out), over
{{ sc.folds }} {{ sc.fold_source }} folds of {{ sc.images }} images{% if sc.grouped %} (groups kept whole, and counted
as the independent units){% endif %}. Flagged: strength at least {{ sc.criteria.min_strength }} and a z-score over
{{ sc.criteria.z }} (a {{ pct(sc.criteria.alpha) }} chance of any false alarm over {{ sc.criteria.tests }} tests).
Name features (file names, folders) are not seen by the model; they say the classes were named or collected apart.
{% if not sc.names_tested %}Names were not tested: the label is parsed from them.{% endif %}</p>
{% if sc.findings %}
<p class="warn">{{ sc.findings|length }} feature(s) predict the label well beyond chance, strongest first:</p>
{{ table(["feature", "kind", "strength", "what", "per fold", "what to do"], finding_rows(sc.findings), numeric=[2]) }}
{% else %}<p>No file property or name predicts the label beyond chance.</p>{% endif %}
{% set m = sc.metadata_model %}
<p>Metadata model ({{ m.model }}; features: {{ m.features|join(", ") or "none varies" }}; {{ m.rows }} images):
balanced accuracy {{ "%.3f"|format(m.balanced_accuracy) }} against chance {{ "%.3f"|format(m.chance) }};
accuracy {{ "%.3f"|format(m.accuracy) }} against the majority rule's {{ "%.3f"|format(m.majority_accuracy) }}.
{% if m.get("note") %}{{ m.note|capitalize }}.{% endif %}</p>
<h3>Every feature tested</h3>
{{ table(["feature", "kind", "best class", "strength", "z", "flagged"], feature_rows(sc.features[:25]), numeric=[3, 4]) }}
{% if sc.features|length > 25 %}<p class="note">… and {{ sc.features|length - 25 }} more in eda.json.</p>{% endif %}
{% endif %}

<h2 id="thumbs">Thumbnails</h2>
<p class="note">{% if r.settings.seed is none %}The first {{ r.settings.thumbs }} images of each class, by path.{% else %}{{ r.settings.thumbs }} images of each class drawn with seed {{ r.settings.seed }}.{% endif %}</p>
{% for c, f in r.thumbnails.items() %}<h3>{{ c }}</h3><img src="{{ f }}" alt="thumbnails of {{ c }}">{% endfor %}

<h2 id="outliers">Outliers worth a look</h2>
<p class="note">{{ r.outliers.method }}. Features: {{ r.outliers.features|join(", ") }}.
{{ r.outliers.count }} images score above {{ r.outliers.threshold }}. Such a score says "unlike the rest of its class
by these simple measures", not "wrong": look at them.</p>
{% if r.outliers.plot %}<img src="{{ r.outliers.plot }}" alt="top outliers">{% endif %}
{{ table(["path", "class", "score", "why"], outlier_rows(r.outliers["items"][:30]), numeric=[2]) }}

<h2 id="duplicates">Duplicates</h2>{% set d = r.duplicates %}
<p>Exact (same bytes): {{ d.pairs.exact }} pairs; pixel-equal (same decoded pixels, other bytes): {{ d.pairs.pixel }};
near (perceptual hash within {{ d.max_distance }} of 64 bits): {{ d.pairs.near }}; mirrored near copies: {{ d.pairs.near_flip }}.
They form {{ d.groups }} groups holding {{ d.images_in_groups }} images.
{% if d.same_group_share is not none %}{{ pct(d.same_group_share) }} of near pairs lie within one group.{% endif %}</p>
<p class="note">Near pairs are look-alikes by layout: on line drawings or centred objects on plain backgrounds
different images can match. The plot shows how far each image is from its nearest other image; true copies
sit at 0–4 bits, apart from the bulk.</p>
<img src="{{ d.plot }}" alt="nearest hash distance">
{% if d.examples %}<h3>Examples</h3><img src="{{ d.examples }}" alt="duplicate examples">{% endif %}
<h3>Pairs whose labels differ (likely label errors): {{ d.label_conflicts.count }}</h3>
{{ pair_table(d.label_conflicts["items"][:50]) }}
<h3>Pairs whose groups differ (leak risk in a grouped split): {{ d.group_conflicts.count }}</h3>
{{ pair_table(d.group_conflicts["items"][:50]) }}
<h3>Largest duplicate groups</h3>
{{ table(["size", "labels", "paths (first 10)"], group_rows(d.largest_groups[:10]), numeric=[0]) }}

<h2 id="unreadable">Unreadable files: {{ r.unreadable|length }}</h2>
{% if r.unreadable %}{{ table(["path", "reason"], unreadable_rows(r.unreadable)) }}
{% else %}<p>None: every file decoded.</p>{% endif %}
{% endblock %}
"""


def _pair_table(items: Sequence[Mapping[str, Any]]) -> Markup:
    """Duplicate pairs: paths, kind, bits, and both labels / groups when the pairs carry them."""
    from markupsafe import Markup

    if not items:
        return Markup('<p class="note">None.</p>')
    labels, groups = "label_a" in items[0], "group_a" in items[0]
    header = ["a", "b", "kind", "bits"] + (["labels"] if labels else []) + (["groups"] if groups else [])
    rows = [[p["a"], p["b"], p["kind"], p["distance"]]
            + ([f"{p['label_a']} / {p['label_b']}"] if "label_a" in p else [])
            + ([f"{p['group_a']} / {p['group_b']}"] if "group_a" in p else []) for p in items]
    return table(header, rows, numeric=[3])


def _fmt3(v: list[float] | None) -> str:
    return "n/a" if not v else ", ".join(f"{x:.4f}" for x in v)


def _grayscale_rows(per_class: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    return [[c, g["count"], pct(g["share"])] for c, g in per_class.items()]


def _outlier_rows(items: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    return [[o["path"], o["label"], o["score"], "; ".join(o["reasons"])] for o in items]


def _group_rows(groups: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    return [[g["size"], "".join(f"{k} {v} " for k, v in (g["labels"] or {}).items()), ", ".join(g["paths"])]
            for g in groups]


def _finding_rows(findings: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    return [[f["label"], f["kind"], f"{f['strength']:.2f}", f["summary"],
             " ".join("–" if v is None else f"{v:.2f}" for v in f["per_fold"]), f["lever"]] for f in findings]


def _feature_rows(features: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    return [[f["feature"], f["kind"], f["class"], f"{f['strength']:.2f}", f"{f['z']:.1f}", "yes" if f["flagged"] else ""]
            for f in features]


def _unreadable_rows(items: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    return [[u["path"], u["reason"]] for u in items]


def render_eda_html(report: dict[str, Any]) -> str:
    """Render the EDA page from the ``eda.json`` content.

    Args:
        report: What :func:`toolkit.report.eda.run_eda` returns.

    Returns:
        A complete HTML document (UTF-8 text) whose images and links are relative paths.
    """
    env = environment()
    env.globals.update(fmt3=_fmt3, pair_table=_pair_table, grayscale_rows=_grayscale_rows,
                       outlier_rows=_outlier_rows, group_rows=_group_rows, unreadable_rows=_unreadable_rows,
                       finding_rows=_finding_rows, feature_rows=_feature_rows)
    return render_page(_TEMPLATE, env, r=report)
