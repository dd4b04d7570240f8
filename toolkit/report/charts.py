"""Inline SVG charts and a PNG heatmap for the one-file experiment report (opens from disk, no network).

We write our own small SVG because matplotlib is too slow per figure for 30 runs × 5 folds and
inlining a third-party JavaScript charting library would copy code we did not write into every report.
Every text (titles, series and axis names) is escaped, so a run or class name never becomes markup.
Each chart carries ``data-zoom="1"``; :data:`ZOOM_SCRIPT`, inlined once at the end of the page, makes
all of them zoomable, and :data:`ZOOM_HINT` is a caption that tells the reader how.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

from toolkit.calibration import ECE_BINS, reliability_bins, top_label_ece

__all__ = ["ZOOM_HINT", "ZOOM_SCRIPT", "Series", "heatmap_png", "line_chart", "reliability_chart"]

# matplotlib's tab10: ten colours most readers tell apart; the eleventh series reuses the first.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
            "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

# The font size, and its average glyph width: the SVG cannot measure text, and legend rows must wrap.
_FONT, _CHAR_W = 11, 6.2
_LEGEND_ROW, _NAME_MAX, _MARKERS_UP_TO = 16, 48, 30
_GRID, _AXIS, _INK = "#e6e6e6", "#888888", "#333333"
# The accuracy bars are translucent so the share-of-rows bar behind them stays visible.
_BAR_PAINT = f'fill="{_COLOURS[0]}" fill-opacity="0.7" stroke="#ffffff"'

# Heatmap ends: white for 0, a dark blue for 1 (the ends of matplotlib's "Blues"); grey marks a NaN.
_WHITE, _DARK = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])

ZOOM_HINT = "Wheel to zoom, drag to pan, double-click to reset."

#: Inline once, in a ``<script>`` at the end of the page: makes every ``svg[data-zoom]`` zoomable.
ZOOM_SCRIPT = """\
(function () {
  "use strict";
  if (typeof document === "undefined") { return; }
  var MAX_ZOOM = 40;
  function clamp(v, lo, hi) { return Math.min(Math.max(v, lo), hi); }
  Array.prototype.forEach.call(document.querySelectorAll("svg[data-zoom]"), function (svg) {
    var base = svg.viewBox && svg.viewBox.baseVal;
    if (!base || !(base.width > 0) || !(base.height > 0)) { return; }
    var home = {x: base.x, y: base.y, w: base.width, h: base.height}, box = home, drag = null;
    function show(next) {
      box = {w: next.w, h: next.h, x: clamp(next.x, home.x, home.x + home.w - next.w),
             y: clamp(next.y, home.y, home.y + home.h - next.h)};
      svg.setAttribute("viewBox", [box.x, box.y, box.w, box.h].map(function (v) { return v.toFixed(2); }).join(" "));
    }
    svg.style.cursor = "grab"; svg.style.userSelect = "none";
    svg.addEventListener("wheel", function (evt) {
      var m = svg.getScreenCTM(), p = svg.createSVGPoint();
      // Zooming out of an unzoomed chart does nothing, so let that wheel scroll the page instead.
      if (!m || (evt.deltaY > 0 && box.w >= home.w)) { return; }
      evt.preventDefault();
      p.x = evt.clientX; p.y = evt.clientY; p = p.matrixTransform(m.inverse());
      var k = Math.exp((evt.deltaMode ? 16 : 1) * evt.deltaY * 0.002);
      var w = clamp(box.w * k, home.w / MAX_ZOOM, home.w), h = clamp(box.h * k, home.h / MAX_ZOOM, home.h);
      show({x: p.x - (p.x - box.x) * w / box.w, y: p.y - (p.y - box.y) * h / box.h, w: w, h: h});
    }, {passive:false});
    svg.addEventListener("pointerdown", function (evt) {
      var m = svg.getScreenCTM();
      if (evt.button !== 0 || !m || !m.a || !m.d) { return; }
      drag = {x: evt.clientX, y: evt.clientY, box: box, sx: 1 / m.a, sy: 1 / m.d};
      svg.setPointerCapture(evt.pointerId); evt.preventDefault();
    });
    svg.addEventListener("pointermove", function (evt) {
      if (!drag) { return; }
      show({x: drag.box.x - (evt.clientX - drag.x) * drag.sx, y: drag.box.y - (evt.clientY - drag.y) * drag.sy,
            w: drag.box.w, h: drag.box.h});
    });
    ["pointerup", "pointercancel"].forEach(function (type) { svg.addEventListener(type, function () { drag = null; }); });
    svg.addEventListener("dblclick", function (evt) { evt.preventDefault(); show(home); });
  });
})();
"""


@dataclass(frozen=True)
class Series:
    """One line of a :func:`line_chart`.

    Attributes:
        name: The legend text.
        x: The x values.
        y: The y values, as many as ``x``; a NaN or None leaves a gap in the line.
        dashed: Draw the line dashed (validation next to a solid training curve, say).
        colour: Index into the colour cycle, so related lines (one fold's train and validation loss)
            share a colour; None takes the series' position.
    """

    name: str
    x: Sequence[float]
    y: Sequence[float | None]
    dashed: bool = False
    colour: int | None = None


class _Frame:
    """The plot area in SVG units and the data range it shows."""

    def __init__(self, box: tuple[float, float, float, float], x_range: tuple[float, float],
                 y_range: tuple[float, float]) -> None:
        self.left, self.top, self.width, self.height = box
        self.right, self.bottom = self.left + self.width, self.top + self.height
        (self.x0, self.x1), (self.y0, self.y1) = x_range, y_range

    def sx(self, x: np.ndarray) -> np.ndarray:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.width

    def sy(self, y: np.ndarray) -> np.ndarray:
        return self.bottom - (y - self.y0) / (self.y1 - self.y0) * self.height

    def note(self, text: str) -> str:
        """A grey note in the middle of the plot area (for a chart with nothing to draw)."""
        return (f'<text x="{_num(self.left + self.width / 2)}" y="{_num(self.top + self.height / 2)}" '
                f'text-anchor="middle" fill="{_AXIS}">{escape(text)}</text>')


def _num(v: float) -> str:
    """A coordinate with one decimal, which is finer than a screen pixel and keeps the file small."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


# (mantissa, penalty): steps of 2.5 need one more decimal, so they win only on a clearly tighter fit.
_STEPS = ((1.0, 0.0), (2.0, 0.0), (5.0, 0.0), (2.5, 0.1))


def _nice_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Four to six evenly spaced round values from at most ``lo`` to at least ``hi``, and their labels."""
    # A range of one value (a constant series, a single point) is widened so it can be drawn.
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi), 1e-300):
        lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(lo) * 0.1 or 1.0)
    span = hi - lo
    top = math.floor(math.log10(span))
    best: tuple[float, float, int, int, int] | None = None
    for exponent in range(top - 2, top + 2):
        for mantissa, penalty in _STEPS:
            step = mantissa * 10.0**exponent
            first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
            count = last - first + 1
            score = (last - first) * step / span - 1 + penalty + 0.05 * abs(count - 5)
            if 4 <= count <= 6 and (best is None or score < best[0]):
                best = (score, step, first, count, max(0, -exponent) + (mantissa == 2.5))
    # Consecutive candidate steps differ by at most 2x, so one always covers the span in 3 or 4 steps.
    assert best is not None
    _, step, first, count, decimals = best
    # An integer times the step: exact zero (never -0) and no drift from repeated addition.
    values = [(first + i) * step for i in range(count)]
    return values, [f"{v:.{decimals}f}" for v in values]


def _log_axis(lo: float, hi: float) -> tuple[float, float, tuple[list[float], list[str]]]:
    """The range and ticks of a log10 axis over [lo, hi] (in log units), labelled in original units."""
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo)
    for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        values = [m * 10.0**e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas]
        inside = [v for v in values if lo <= math.log10(v) <= hi]
        if len(inside) >= 4:
            inside = inside[:: math.ceil(len(inside) / 6)]
            return lo, hi, ([math.log10(v) for v in inside], [f"{v:g}" for v in inside])
    # Less than a factor of ~2 between the ends: round values in original units, placed on the log scale.
    values, labels = _nice_ticks(10.0**lo, 10.0**hi)
    kept = [(math.log10(v), s) for v, s in zip(values, labels, strict=True) if v > 0]
    return min(lo, kept[0][0]), max(hi, kept[-1][0]), ([p for p, _ in kept], [s for _, s in kept])


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" data-zoom="1" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="{_FONT}" fill="{_INK}">',
            f'<title>{escape(title)}</title><text x="8" y="16" font-weight="bold">{escape(title)}</text>']


def _axes(frame: _Frame, x_ticks: tuple[list[float], list[str]], y_ticks: tuple[list[float], list[str]],
          x_label: str, y_label: str) -> list[str]:
    """Gridlines, tick labels, the plot frame and the axis labels."""
    xs, ys = frame.sx(np.asarray(x_ticks[0])), frame.sy(np.asarray(y_ticks[0]))
    bottom = frame.bottom
    grid = "".join(f"M{_num(x)} {_num(frame.top)}V{_num(bottom)}" for x in xs)
    grid += "".join(f"M{_num(frame.left)} {_num(y)}H{_num(frame.right)}" for y in ys)
    out = [f'<path d="{grid}" stroke="{_GRID}" fill="none"/>',
           f'<rect x="{_num(frame.left)}" y="{_num(frame.top)}" width="{_num(frame.width)}" '
           f'height="{_num(frame.height)}" stroke="{_AXIS}" fill="none"/>']
    out += [f'<text x="{_num(x)}" y="{_num(bottom + 14)}" text-anchor="middle">{escape(s)}</text>'
            for x, s in zip(xs, x_ticks[1], strict=True)]
    out += [f'<text x="{_num(frame.left - 4)}" y="{_num(y + 4)}" text-anchor="end">{escape(s)}</text>'
            for y, s in zip(ys, y_ticks[1], strict=True)]
    out.append(f'<text x="{_num(frame.left + frame.width / 2)}" y="{_num(bottom + 30)}" '
               f'text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(12 {_num(frame.top + frame.height / 2)}) rotate(-90)" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    return out


def _legend(entries: Sequence[tuple[str, str, str]], top: float, width: int) -> tuple[list[str], int]:
    """Legend items ``(label, colour, "line" | "dashed" | "box")`` in rows wrapped at ``width``; their height.

    A long label is shortened, with the full one as its hover text.
    """
    out: list[str] = []
    x, y, rows = 8.0, top + 11, 1 if entries else 0
    for label, colour, kind in entries:
        shown = label if len(label) <= _NAME_MAX else label[: _NAME_MAX - 1] + "…"
        item_w = 22 + len(shown) * _CHAR_W + 14
        if x > 8 and x + item_w > width:
            x, y, rows = 8.0, y + _LEGEND_ROW, rows + 1
        if kind == "box":
            out.append(f'<rect x="{_num(x)}" y="{_num(y - 8)}" width="16" height="9" fill="{colour}"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dashed" else ""
            out.append(f'<path d="M{_num(x)} {_num(y - 4)}h16" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{_num(x + 22)}" y="{_num(y)}"><title>{escape(label)}</title>{escape(shown)}</text>')
        x += item_w
    return out, rows * _LEGEND_ROW


def _prepared(s: Series, log_y: bool) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """x and y as floats (log10 of y on a log axis) and the index runs of drawable points."""
    x = np.asarray(s.x, dtype=np.float64)
    y = np.asarray([np.nan if v is None else v for v in s.y], dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"series {s.name!r}: x and y must be 1-D and as long as each other")
    if log_y:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(y > 0, np.log10(np.where(y > 0, y, 1.0)), np.nan)
    idx = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if idx.size else []
    return x, y, runs


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               width: int = 520, height: int = 260, log_y: bool = False) -> Markup:
    """A line chart as an inline, zoomable ``<svg>``: one line per series, with a legend below.

    Args:
        series: The lines, coloured in turn from a cycle of ten colours; one with no drawable point is
            listed in the legend as "(no data)".
        title: Shown above the plot and as the svg's ``<title>``.
        x_label: The x axis label.
        y_label: The y axis label.
        width: The svg width in pixels.
        height: The height of title, plot and axis labels; legend rows add to it.
        log_y: Plot log10 of y; values at or below zero count as missing. Ticks show original units.

    Returns:
        The ``<svg>`` element, safe to insert into a page as it is.
    """
    prepared = [_prepared(s, log_y) for s in series]
    points = [(x[np.concatenate(runs)], y[np.concatenate(runs)]) for x, y, runs in prepared if runs]
    all_x = np.concatenate([p[0] for p in points]) if points else np.array([0.0, 1.0])
    all_y = np.concatenate([p[1] for p in points]) if points else np.array([0.0, 1.0])
    x_ticks = _nice_ticks(float(all_x.min()), float(all_x.max()))
    if log_y and points:
        y0, y1, y_ticks = _log_axis(float(all_y.min()), float(all_y.max()))
    else:
        y_ticks = _nice_ticks(float(all_y.min()), float(all_y.max()))
        y0, y1 = y_ticks[0][0], y_ticks[0][-1]
    frame = _Frame((58, 26, width - 58 - 14, height - 26 - 40), (x_ticks[0][0], x_ticks[0][-1]), (y0, y1))
    entries = [(s.name if p[2] else f"{s.name} (no data)",
                 _COLOURS[(k if s.colour is None else s.colour) % len(_COLOURS)],
                "dashed" if s.dashed else "line") for k, (s, p) in enumerate(zip(series, prepared, strict=True))]
    legend, legend_h = _legend(entries, height, width)
    out = _svg_open(width, height + legend_h, title)
    out += _axes(frame, x_ticks, y_ticks, x_label, y_label)
    if not points:
        out.append(frame.note("no data"))
    for (x, y, runs), s, (_, colour, _) in zip(prepared, series, entries, strict=True):
        if not runs:
            continue
        px, py = frame.sx(x), frame.sy(y)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<g stroke="{colour}" fill="{colour}"><title>{escape(s.name)}</title>')
        out += [f'<polyline points="{" ".join(f"{_num(px[i])},{_num(py[i])}" for i in run)}" fill="none" '
                f'stroke-width="1.6"{dash}/>' for run in runs]
        # Markers show where the measurements are; on long curves they would only blur the line, but
        # a point between two gaps draws no line, so it keeps its marker.
        few = sum(len(run) for run in runs) <= _MARKERS_UP_TO
        out += [f'<circle cx="{_num(px[i])}" cy="{_num(py[i])}" r="2.4"/>'
                for run in runs if few or len(run) == 1 for i in run]
        out.append("</g>")
    out += [*legend, "</svg>"]
    return Markup("".join(out))


def reliability_chart(confidence: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS, title: str,
                      width: int = 300, height: int = 300) -> tuple[Markup, float]:
    """A reliability diagram as an inline, zoomable ``<svg>``, and the expected calibration error.

    Args:
        confidence: The top-label probability of each row, in [0, 1].
        correct: Whether each row's top label is right.
        bins: The number of equal-width bins over [0, 1].
        title: Shown above the plot and as the svg's ``<title>``.
        width: The svg width in pixels.
        height: The height of title, plot and axis labels; the legend adds to it.

    Returns:
        The ``<svg>`` (bars of accuracy per non-empty bin over a faint bar of each bin's share of
        rows, and the diagonal of perfect calibration) and the ECE (NaN without rows).
    """
    stats = reliability_bins(confidence, correct, bins)
    ticks = _nice_ticks(0.0, 1.0)
    frame = _Frame((46, 26, width - 46 - 12, height - 26 - 40), (0.0, 1.0), (0.0, 1.0))
    legend, legend_h = _legend([("accuracy", _COLOURS[0], "box"), ("share of rows", "#d0d0d0", "box"),
                                ("calibrated", _AXIS, "dashed")], height, width)
    out = _svg_open(width, height + legend_h, title)
    out += _axes(frame, ticks, ticks, "confidence", "accuracy")
    ece = top_label_ece(confidence, correct, bins)
    if stats is None:
        out.append(frame.note("no rows"))
    else:
        count, acc, conf = stats
        share = count / count.sum()
        edges = np.linspace(0.0, 1.0, bins + 1)
        left, right = frame.sx(edges[:-1]), frame.sx(edges[1:])
        for b in np.flatnonzero(count):
            tip = (f"{edges[b]:.2f}–{edges[b + 1]:.2f}: {int(count[b])} rows, "
                   f"accuracy {acc[b]:.3f}, mean confidence {conf[b]:.3f}")
            for value, paint in ((share[b], 'fill="#d0d0d0"'), (acc[b], _BAR_PAINT)):
                top = frame.sy(np.array(value))
                out.append(f'<rect x="{_num(left[b])}" y="{_num(top)}" width="{_num(right[b] - left[b])}" '
                           f'height="{_num(frame.bottom - top)}" {paint}><title>{tip}</title></rect>')
        out.append(f'<text x="{_num(frame.left + 6)}" y="{_num(frame.top + 14)}">'
                   f"ECE {ece:.3f} · {int(count.sum())} rows</text>")
    out.append(f'<path d="M{_num(frame.left)} {_num(frame.bottom)}L{_num(frame.right)} {_num(frame.top)}" '
               f'stroke="{_AXIS}" stroke-dasharray="4 3"/>')
    out += [*legend, "</svg>"]
    return Markup("".join(out)), ece


def heatmap_png(matrix: np.ndarray, *, cell: int = 0, max_side: int = 600) -> bytes:
    """A PNG of a matrix, one square per entry, white for 0 to dark blue for 1.

    Args:
        matrix: A 2-D array drawn as given (the caller normalises a confusion matrix); values outside
            [0, 1] are clipped and NaN is grey.
        cell: The side of each square in pixels; 0 picks the largest that keeps the image side within
            ``max_side``, but never under 1 pixel (so more than ``max_side`` rows make a larger image).
        max_side: The longest image side wanted when ``cell`` is 0.

    Returns:
        The PNG file's bytes.
    """
    # Pillow is only needed here; importing it lazily keeps the SVG charts' import light.
    from PIL import Image

    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or values.size == 0 or cell < 0 or max_side < 1:
        raise ValueError(f"need a non-empty 2-D matrix, cell >= 0, max_side >= 1; got {values.shape}, {cell}, {max_side}")
    side = cell or max(1, max_side // max(values.shape))
    level = np.clip(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)[..., None]
    rgb = np.rint(_WHITE + level * (_DARK - _WHITE)).astype(np.uint8)
    rgb[np.isnan(values)] = (200, 200, 200)
    if side > 1:
        rgb = np.repeat(np.repeat(rgb, side, axis=0), side, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
