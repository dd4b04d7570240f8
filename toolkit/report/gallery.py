"""The label-issue gallery: the images whose labels look wrong, one card each, on a static page.

:func:`render_label_gallery` writes into one folder:

* ``gallery.html``: notes from the caller, then the suspects, most suspicious first (thumbnail,
  given and suggested label, label quality, the most likely classes with the given and suggested
  ones marked), then duplicate pairs whose labels disagree, side by side.
* ``thumbs/000000.png``, ``thumbs/000001.png``, ...: one thumbnail per image shown, and
  ``thumbs/unreadable.png`` for images that cannot be decoded.

Thumbnail names are generated, never derived from the image's path, so any file name (spaces,
``#``, ``?``, quotes, non-ASCII) gives a link that works from disk. Like every report page, the
page has no scripts and loads nothing from the network; every label, class name and path goes
through autoescape.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import DataError, ImageError, UsageError
from toolkit.imaging.decode import load_image
from toolkit.report.html import PageFiles, environment, render_page
from toolkit.store.atomic import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

__all__ = ["CONFLICT_COLUMNS", "ISSUE_COLUMNS", "THUMB_SIDE", "render_label_gallery"]

#: Columns the issues table must have, besides one probability column per class.
ISSUE_COLUMNS = ("path", "label", "suggested_label", "label_quality", "is_label_issue", "rank")
#: Columns the conflicts table must have.
CONFLICT_COLUMNS = ("a", "b", "kind", "distance", "label_a", "label_b")
#: Longest side of a thumbnail, in pixels.
THUMB_SIDE = 176

# With dozens of classes a full probability table per card would bury the two that matter; the
# most likely few, plus the given and suggested classes wherever they rank, tell the story.
_SHOWN_CLASSES = 5
_KINDS = {"exact": "identical files", "pixel": "identical pixels", "near": "near duplicates",
          "near_flip": "mirrored near duplicates"}
_THUMB_NAME = re.compile(r"\d{6}\.png")
_PLACEHOLDER = "thumbs/unreadable.png"

_TEMPLATE = r"""{% extends "page.html" %}
{% block title %}{{ title }}{% endblock %}
{% block style %}
.notes { margin: .3em 0 1em; padding-left: 1.2em; }
.legend span { padding: 0 4px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 262px; border: 1px solid #ddd; border-radius: 4px; padding: 8px; box-sizing: border-box; }
.card p { margin: .3em 0; overflow-wrap: anywhere; }
.thumb { display: block; margin: 0 auto; width: 176px; height: 176px; object-fit: contain;
         background: #f6f6f6; image-rendering: pixelated; }
.rank { color: #666; font-weight: bold; }
.given { background: #fde2dd; } .sugg { background: #dcf3df; }
.probs { width: 100%; font-size: .85em; margin: .2em 0 0; }
.probs td { border: none; padding: 1px 3px; overflow-wrap: anywhere; }
.probs td.cls { width: 45%; }
.bar { width: 35%; } .bar span, .qbar span { display: block; height: .8em; background: #7a9cc6; }
.qbar { display: inline-block; width: 80px; background: #eee; vertical-align: middle; }
.qbar span { background: #c67a7a; }
tr.given td, tr.sugg td { font-weight: bold; }
.pair { width: 376px; } .pair .sides { display: flex; gap: 8px; }
.pair figure { margin: 0; width: 176px; }
.pair figcaption { font-size: .85em; overflow-wrap: anywhere; }
.small { font-size: .85em; }
{% endblock %}
{% block body %}<h1>{{ title }}</h1>
{% if notes %}<ul class="notes">{% for line in notes %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}
<nav><a href="#suspects">suspects</a>{% if pairs is not none %}<a href="#conflicts">duplicates with different labels</a>{% endif %}</nav>

<h2 id="suspects">Suspected label issues</h2>
<p>{{ n_flagged }} of {{ n_images }} images are flagged as label issues
{%- if n_flagged %}; {% if cards|length < n_flagged %}the {{ cards|length }} most suspicious are{% else %}all are{% endif %} shown, most suspicious first{% endif %}.
Label quality runs from 0 (the label is surely wrong) to 1.</p>
{% if cards %}
<p class="legend small">In each card: <span class="given">given label</span> <span class="sugg">suggested label</span>;
the bars are the predicted probability of each class.</p>
<div class="cards">
{% for c in cards %}
<div class="card suspect">
<img class="thumb" src="{{ c.thumb }}" alt="{{ c.path }}" title="{{ c.path }}">
{% if c.unreadable %}<p class="warn small">unreadable: {{ c.unreadable }}</p>{% endif %}
<p><span class="rank">#{{ c.rank }}</span> <code class="path">{{ c.path }}</code></p>
<p><span class="given">given: <b class="label">{{ c.label }}</b></span><br>
<span class="sugg">suggested: <b class="suggested">{{ c.suggested }}</b></span></p>
<p class="small">label quality <b>{{ c.quality }}</b> <span class="qbar"><span style="width: {{ c.quality_width }}"></span></span></p>
<table class="probs">
{% for p in c.probs %}<tr class="{{ p.role }}"><td class="cls">{{ p.name }}</td><td class="bar"><span style="width: {{ p.width }}"></span></td><td class="n">{{ p.value }}</td></tr>
{% endfor %}
</table>
{% if c.more %}<p class="note small">and {{ c.more }} less likely {{ "class" if c.more == 1 else "classes" }}</p>{% endif %}
</div>
{% endfor %}
</div>
{% endif %}

{% if pairs is not none %}
<h2 id="conflicts">Duplicates with different labels</h2>
<p>{{ n_pairs }} pairs of duplicate images carry different labels
{%- if n_pairs %}; {% if pairs|length < n_pairs %}the first {{ pairs|length }} are{% else %}all are{% endif %} shown, closest first{% endif %}.
At least one label of each pair is wrong, or the two images should not both be in the data.</p>
{% if pairs %}
<div class="cards">
{% for p in pairs %}
<div class="card pair">
<div class="sides">
{% for side in p.sides %}
<figure><img class="thumb" src="{{ side.thumb }}" alt="{{ side.path }}" title="{{ side.path }}">
<figcaption>{% if side.unreadable %}<span class="warn">unreadable: {{ side.unreadable }}</span><br>{% endif %}
<code class="path">{{ side.path }}</code><br>label <b class="label">{{ side.label }}</b></figcaption></figure>
{% endfor %}
</div>
<p class="note small">{{ p.kind }}, distance {{ p.distance }}</p>
</div>
{% endfor %}
</div>
{% endif %}
{% endif %}
{% endblock %}
"""


def _finite(x: Any) -> float | None:
    """A cell as a float, or None when it is missing or not a number."""
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _number(x: Any, digits: int = 3) -> str:
    value = _finite(x)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _width(x: Any) -> str:
    """A CSS width for a share in 0..1 (clipped; unknown values draw no bar)."""
    value = _finite(x)
    return "0%" if value is None else f"{100 * min(max(value, 0.0), 1.0):.1f}%"


def _text(x: Any) -> str:
    """A cell as text: missing values empty, whole floats (a rank read back as 3.0) without decimals."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _placeholder_png() -> bytes:
    """A grey tile with a cross: what a card shows for an image that cannot be decoded."""
    from PIL import Image, ImageDraw, ImageFont

    side = THUMB_SIDE
    tile = Image.new("RGB", (side, side), (236, 236, 236))
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, side - 1, side - 1), outline=(190, 190, 190), width=2)
    draw.line((24, 24, side - 25, side - 25), fill=(200, 80, 80), width=5)
    draw.line((24, side - 25, side - 25, 24), fill=(200, 80, 80), width=5)
    font = ImageFont.load_default(size=side // 9)
    draw.text((side // 2, side - 10), "unreadable", fill=(90, 90, 90), anchor="mb", font=font)
    return _png(tile)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _Thumbnails:
    """Thumbnails written on first use, one per distinct path, under generated names."""

    def __init__(self, files: PageFiles, root: Path) -> None:
        self.files, self.root = files, root
        self.seen: dict[str, tuple[str, str | None]] = {}
        self.written: set[str] = set()
        self.count = 0

    def __call__(self, path: str) -> tuple[str, str | None]:
        """The thumbnail's URL relative to the page, and why the image could not be read (or None)."""
        if path not in self.seen:
            from PIL import Image

            try:
                image = load_image(self.root / path)
            except (ImageError, OSError) as e:
                # A card still needs a picture: a broken <img> would hide which file is at fault.
                reason = e.reason if isinstance(e, ImageError) else str(e)
                if _PLACEHOLDER not in self.written:
                    self.files.write(_PLACEHOLDER, _placeholder_png())
                    self.written.add(_PLACEHOLDER)
                self.seen[path] = (_PLACEHOLDER, reason)
            else:
                image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
                name = f"thumbs/{self.count:06d}.png"
                self.files.write(name, _png(image))
                self.written.add(name)
                self.count += 1
                self.seen[path] = (name, None)
        return self.seen[path]

    def prune(self) -> None:
        """Remove thumbnails an earlier gallery in this folder wrote and this one does not use."""
        folder = self.files.folder / "thumbs"
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            own = _THUMB_NAME.fullmatch(entry.name) or f"thumbs/{entry.name}" == _PLACEHOLDER
            if own and f"thumbs/{entry.name}" not in self.written and entry.is_file():
                entry.unlink()


def _check_columns(df: pd.DataFrame, needed: Sequence[str], what: str, hint: str | None = None) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"the {what} table has no column(s) {', '.join(map(repr, missing))}",
                        hint or f"it needs {', '.join(needed)}")


def _probabilities(row: pd.Series, classes: Sequence[str], given: str, suggested: str) -> tuple[list[dict], int]:
    """The classes a card lists (most likely first, given and suggested always in) and how many it leaves out."""
    values = []
    for name in classes:
        try:
            p = float(row[name])
        except (TypeError, ValueError):
            p = math.nan
        values.append((name, p))
    order = sorted(values, key=lambda item: -item[1] if not math.isnan(item[1]) else math.inf)
    shown = order[:_SHOWN_CLASSES]
    shown += [item for item in order[_SHOWN_CLASSES:] if item[0] in (given, suggested)]
    rows = []
    for name, p in shown:
        role = "given" if name == given else "sugg" if name == suggested else ""
        rows.append({"name": name, "value": _number(p), "width": _width(p), "role": role})
    return rows, len(values) - len(shown)


def render_label_gallery(issues: pd.DataFrame, classes: Sequence[str], root: str | os.PathLike[str],
                         out_dir: str | os.PathLike[str], *, top: int = 100, title: str = "Label issues",
                         conflicts: pd.DataFrame | None = None, notes: Sequence[str] = ()) -> Path:
    """Write ``gallery.html`` and its thumbnails: the suspected label issues, most suspicious first.

    Args:
        issues: One row per image: ``path`` (relative to ``root``), ``label``, ``suggested_label``,
            ``label_quality`` (0..1, low is suspicious), ``is_label_issue``, ``rank`` (1 is the most
            suspicious) and one probability column per class, named as the class.
        classes: The class names, in the order of the probability columns.
        root: The folder the image paths are relative to.
        out_dir: The folder of the page (created); thumbnails go into its ``thumbs/``.
        top: The most cards shown: the flagged rows of lowest rank, and as many duplicate pairs.
        title: The page's title and heading.
        conflicts: Duplicate pairs whose labels disagree: ``a``, ``b`` (paths relative to ``root``),
            ``kind`` (``exact``, ``pixel``, ``near`` or ``near_flip``), ``distance``, ``label_a``,
            ``label_b``. ``None`` leaves the section out; an empty table says there are none.
        notes: Short lines shown under the title (a health score, noise rates).

    Returns:
        The path of ``gallery.html``.

    Raises:
        UsageError: ``top`` is below 1.
        DataError: A table lacks a column it needs, or ``issues`` has no column for a class.
    """
    if top < 1:
        raise UsageError(f"top must be at least 1, not {top}")
    _check_columns(issues, ISSUE_COLUMNS, "label issues")
    _check_columns(issues, list(classes), "label issues", "it needs one probability column per class, named as the class")
    if conflicts is not None:
        _check_columns(conflicts, CONFLICT_COLUMNS, "conflicts")

    out = Path(out_dir)
    files = PageFiles(out)
    thumbs = _Thumbnails(files, Path(root))

    # eq(True): a missing flag (None, NaN) counts as not flagged, whatever the column's dtype.
    flagged = issues[issues["is_label_issue"].eq(True)]
    chosen = flagged.sort_values(["rank", "label_quality"], kind="stable").head(top)
    cards = []
    for _, row in chosen.iterrows():
        path, given, suggested = _text(row["path"]), _text(row["label"]), _text(row["suggested_label"])
        thumb, unreadable = thumbs(path)
        probs, more = _probabilities(row, classes, given, suggested)
        cards.append({"path": path, "label": given, "suggested": suggested, "rank": _text(row["rank"]),
                      "quality": _number(row["label_quality"]), "quality_width": _width(row["label_quality"]),
                      "thumb": thumb, "unreadable": unreadable, "probs": probs, "more": more})

    pairs = None
    if conflicts is not None:
        # Identical files first, then by distance: the surest conflicts lead.
        rank_kind = conflicts["kind"].map({k: i for i, k in enumerate(_KINDS)}).fillna(len(_KINDS))
        order = conflicts.assign(_kind=rank_kind).sort_values(["_kind", "distance"], kind="stable").head(top)
        pairs = []
        for _, row in order.iterrows():
            sides = []
            for path_col, label_col in (("a", "label_a"), ("b", "label_b")):
                path = _text(row[path_col])
                thumb, unreadable = thumbs(path)
                sides.append({"path": path, "label": _text(row[label_col]), "thumb": thumb, "unreadable": unreadable})
            kind = _text(row["kind"])
            pairs.append({"sides": sides, "kind": _KINDS.get(kind, kind), "distance": _text(row["distance"])})

    html = render_page(_TEMPLATE, environment(), title=title, notes=[str(n) for n in notes],
                       n_images=len(issues), n_flagged=len(flagged), cards=cards, pairs=pairs,
                       n_pairs=0 if conflicts is None else len(conflicts))
    page = out / "gallery.html"
    atomic_write_text(page, html)
    thumbs.prune()
    return page
