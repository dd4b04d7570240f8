"""What every report page shares: the Jinja2 environment, the page skeleton and style, tables, figures.

A page must open from disk anywhere (an archive, a laptop offline, a CI artifact): no external
scripts (the experiment report inlines one small zoom handler of its own), no web fonts, no external
style sheets, and every image and link is a path relative to the page or a
``data:`` URI. Pages extend the skeleton (``{% extends "page.html" %}``) and fill its ``title`` and
``body`` blocks, and may add their own rules after the shared ones in its ``style`` block; values
are escaped (autoescape), and a name a template does not know is an error, never an empty cell.

Figures are matplotlib ``Figure`` objects drawn on the Agg canvas, never ``pyplot``: no global
backend is switched, no window can open, and nothing leaks between figures.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2
    from markupsafe import Markup
    from matplotlib.figure import Figure

__all__ = [
    "PAGE_STYLE",
    "PageFiles",
    "data_uri",
    "environment",
    "figure_png",
    "new_figure",
    "pct",
    "render_page",
    "table",
]

#: The style sheet of every page, inlined into its ``<head>``.
PAGE_STYLE = """\
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: .92em; } .warn { color: #a33; }
code { background: #f4f4f4; padding: 0 3px; }
nav a { margin-right: .8em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{% block title %}{% endblock %}</title>
<style>
{{ page_style }}{% block style %}{% endblock %}</style>
</head>
<body>
{% block body %}{% endblock %}
</body>
</html>
"""


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal (``12.5%``), ``n/a`` for None."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], numeric: Collection[int] = ()) -> Markup:
    """An HTML table: a header row, then one row per item (every cell escaped).

    Args:
        header: The column titles.
        rows: The cells of each row, as many as titles.
        numeric: Indices of the columns aligned right as numbers.

    Returns:
        The ``<table>`` element, safe to insert into a page.
    """
    from markupsafe import Markup, escape

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{escape(c)}</td>' if k in numeric else f"<td>{escape(c)}</td>"
                                    for k, c in enumerate(row)) + "</tr>" for row in rows)
    return Markup(f"<table><tr>{head}</tr>\n{body}</table>")


def environment(templates: Mapping[str, str] | None = None) -> jinja2.Environment:
    """The Jinja2 environment of the report pages.

    Autoescaping, undefined names as errors, block tags that leave no blank lines; the skeleton
    ``page.html`` and the helpers :func:`pct` and :func:`table` are available to every template.

    Args:
        templates: More named templates (e.g. parts a page includes).
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.DictLoader({"page.html": _PAGE, **(templates or {})}),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.globals.update(page_style=PAGE_STYLE, pct=pct, table=table)
    return env


def render_page(source: str, env: jinja2.Environment | None = None, **context: Any) -> str:
    """Render a page template (one that extends ``page.html``) to a complete HTML document."""
    return (env or environment()).from_string(source).render(**context)


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, for a page that must be one file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class PageFiles:
    """The files a page links to, written next to it: each atomically, each name recorded.

    Args:
        folder: The page's folder (created).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names: list[str] = []

    def write(self, name: str, data: bytes) -> str:
        """Write ``data`` as ``name`` (a path relative to the folder) and return the name to link."""
        from toolkit.store.atomic import atomic_write_bytes

        atomic_write_bytes(self.folder / name, data)
        self.names.append(name)
        return name

    def add(self, name: str) -> str:
        """Record a file written by other means (a table) and return its name."""
        self.names.append(name)
        return name


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure of ``width`` × ``height`` inches at 100 dpi, outside ``pyplot``."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def figure_png(fig: Figure) -> bytes:
    """Lay a figure out and draw it as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    # One tight_layout pass: the constrained engine re-measures every text several times and
    # costs more than the drawing itself.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a crowded figure keeps its default margins
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
