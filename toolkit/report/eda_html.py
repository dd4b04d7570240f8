"""The static ``eda.html`` page: one Jinja2 template rendered from the ``eda.json`` content.

The page must open from disk anywhere (an archive, a laptop offline, a CI artifact): no scripts,
no web fonts, no external style sheets, and every image and link is a path relative to the page.
"""

from __future__ import annotations

from typing import Any

__all__ = ["render_eda_html"]

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>eda: {{ r.root }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: .92em; } .warn { color: #a33; }
code { background: #f4f4f4; padding: 0 3px; }
nav a { margin-right: .8em; }
</style>
</head>
<body>
<h1>Data report</h1>
<p><code>{{ r.root }}</code> ({{ r.source or "manifest" }}), made {{ r.created }} in {{ r.timing.seconds }} s
({{ r.timing.images_per_second }} images/s). Files: <a href="eda.json">eda.json</a>,
<a href="hashes.parquet">hashes.parquet</a>, <a href="duplicates.parquet">duplicates.parquet</a>,
<a href="images.parquet">images.parquet</a>.</p>
<nav><a href="#overview">overview</a><a href="#targets">classes</a>{% if r.attributes %}<a href="#attributes">attributes</a>{% endif %}
{% if r.groups %}<a href="#groups">groups</a>{% endif %}<a href="#images">images</a><a href="#stats">stats</a>
<a href="#thumbs">thumbnails</a><a href="#outliers">outliers</a><a href="#duplicates">duplicates</a>
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
<table><tr><th>largest groups</th><th>images</th></tr>
{% for g, n in r.groups.largest %}<tr><td>{{ g }}</td><td class="n">{{ n }}</td></tr>{% endfor %}</table>
{% endif %}

<h2 id="images">Images: size, format, mode, colour</h2>
<img src="{{ r.sizes.plot }}" alt="sizes">
<table><tr><th></th><th>min</th><th>p5</th><th>median</th><th>p95</th><th>max</th></tr>
{% for k in ["width", "height", "aspect_ratio"] %}{% set s = r.sizes[k] %}
<tr><th>{{ k }}</th><td class="n">{{ s.min }}</td><td class="n">{{ s.p5 }}</td><td class="n">{{ s.median }}</td><td class="n">{{ s.p95 }}</td><td class="n">{{ s.max }}</td></tr>{% endfor %}
</table>
<p>Most common sizes: {% for w, h, n in r.sizes.common %}{{ w }}×{{ h }} ({{ n }}){% if not loop.last %}, {% endif %}{% endfor %}</p>
<table><tr><th>file format</th><th>images</th></tr>
{% for k, n in r.file_formats.items() %}<tr><td>{{ k }}</td><td class="n">{{ n }}</td></tr>{% endfor %}</table>
<table><tr><th>stored mode</th><th>images</th></tr>
{% for k, n in r.image_modes.items() %}<tr><td>{{ k }}</td><td class="n">{{ n }}</td></tr>{% endfor %}</table>
<h3>Grayscale-looking images (red = green = blue everywhere)</h3>
<table><tr><th>class</th><th>grayscale</th><th>share</th></tr>
{% for c, g in r.grayscale.per_class.items() %}<tr><td>{{ c }}</td><td class="n">{{ g.count }}</td><td class="n">{{ pct(g.share) }}</td></tr>{% endfor %}</table>

<h2 id="stats">Pixel statistics</h2>
<p>Per-channel mean and standard deviation over all pixels of every readable image, each downscaled
(box filter) so its long side is at most {{ r.stats.max_side }} px; {{ r.stats.pixels }} pixels of {{ r.stats.images }} images,
in 0..1 units. Use them with <code>[data] normalize = "dataset"</code> and <code>stats_file = ".../eda.json"</code>.</p>
<table><tr><th></th><th>R</th><th>G</th><th>B</th></tr>
<tr><th>mean</th>{% for v in r.stats.mean or [] %}<td class="n">{{ "%.4f"|format(v) }}</td>{% endfor %}</tr>
<tr><th>std</th>{% for v in r.stats.std or [] %}<td class="n">{{ "%.4f"|format(v) }}</td>{% endfor %}</tr></table>
<img src="{{ r.brightness.plot }}" alt="brightness"> <img src="{{ r.channel_plot }}" alt="channel means">

<h2 id="thumbs">Thumbnails</h2>
<p class="note">{% if r.settings.seed is none %}The first {{ r.settings.thumbs }} images of each class, by path.{% else %}{{ r.settings.thumbs }} images of each class drawn with seed {{ r.settings.seed }}.{% endif %}</p>
{% for c, f in r.thumbnails.items() %}<h3>{{ c }}</h3><img src="{{ f }}" alt="thumbnails of {{ c }}">{% endfor %}

<h2 id="outliers">Outliers worth a look</h2>
<p class="note">{{ r.outliers.method }}. Features: {{ r.outliers.features|join(", ") }}.
{{ r.outliers.count }} images score above {{ r.outliers.threshold }}. Such a score says "unlike the rest of its class
by these simple measures", not "wrong": look at them.</p>
{% if r.outliers.plot %}<img src="{{ r.outliers.plot }}" alt="top outliers">{% endif %}
<table><tr><th>path</th><th>class</th><th>score</th><th>why</th></tr>
{% for o in r.outliers["items"][:30] %}<tr><td>{{ o.path }}</td><td>{{ o.label }}</td><td class="n">{{ o.score }}</td><td>{{ o.reasons|join("; ") }}</td></tr>{% endfor %}</table>

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
<table><tr><th>size</th><th>labels</th><th>paths (first 10)</th></tr>
{% for g in d.largest_groups[:10] %}<tr><td class="n">{{ g.size }}</td><td>{% if g.labels %}{% for k, v in g.labels.items() %}{{ k }} {{ v }} {% endfor %}{% endif %}</td><td>{{ g.paths|join(", ") }}</td></tr>{% endfor %}</table>

<h2 id="unreadable">Unreadable files: {{ r.unreadable|length }}</h2>
{% if r.unreadable %}<table><tr><th>path</th><th>reason</th></tr>
{% for u in r.unreadable %}<tr><td>{{ u.path }}</td><td>{{ u.reason }}</td></tr>{% endfor %}</table>
{% else %}<p>None: every file decoded.</p>{% endif %}
</body>
</html>
"""

_PAIR_TABLE = r"""{% if items %}<table><tr><th>a</th><th>b</th><th>kind</th><th>bits</th>{% if "label_a" in items[0] %}<th>labels</th>{% endif %}{% if "group_a" in items[0] %}<th>groups</th>{% endif %}</tr>
{% for p in items %}<tr><td>{{ p.a }}</td><td>{{ p.b }}</td><td>{{ p.kind }}</td><td class="n">{{ p.distance }}</td>{% if "label_a" in p %}<td>{{ p.label_a }} / {{ p.label_b }}</td>{% endif %}{% if "group_a" in p %}<td>{{ p.group_a }} / {{ p.group_b }}</td>{% endif %}</tr>{% endfor %}</table>{% else %}<p class="note">None.</p>{% endif %}"""


def render_eda_html(report: dict[str, Any]) -> str:
    """Render the EDA page from the ``eda.json`` content.

    Args:
        report: What :func:`toolkit.data.eda.run_eda` returns.

    Returns:
        A complete HTML document (UTF-8 text) whose images and links are relative paths.
    """
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    pair_template = env.from_string(_PAIR_TABLE)

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def fmt3(v: list[float] | None) -> str:
        return "n/a" if not v else ", ".join(f"{x:.4f}" for x in v)

    def pair_table(items: list[dict[str, Any]]) -> Markup:
        return Markup(pair_template.render(items=items))

    return env.from_string(_TEMPLATE).render(r=report, pct=pct, fmt3=fmt3, pair_table=pair_table)
