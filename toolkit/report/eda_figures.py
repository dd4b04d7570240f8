"""The PNG figures of ``clsctl eda``: each function returns PNG bytes, the caller writes them.

matplotlib figures come from :func:`toolkit.report.html.new_figure` (its object API and the Agg
canvas, never ``pyplot``). Image grids are composed with Pillow, which is faster and keeps
thumbnails pixel-exact.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from toolkit.report.html import figure_png, new_figure

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "bar_counts",
    "brightness",
    "channel_means",
    "grid",
    "histogram",
    "nearest_distance",
    "pairs_strip",
    "sizes",
]

_MAX_BARS = 40
_TILE = 96
_CAPTION = 14
_BLUE = "#3b6ea8"


def bar_counts(counts: dict[str, int], title: str) -> bytes:
    """Horizontal bars, one per value, largest first (the 40 largest when there are more)."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = items[:_MAX_BARS]
    fig = new_figure(7, max(2.0, 0.8 + 0.28 * len(shown)))
    ax = fig.add_subplot()
    names = [k if len(k) <= 30 else k[:29] + "…" for k, _ in shown][::-1]
    values = [v for _, v in shown][::-1]
    bars = ax.barh(range(len(values)), values, color=_BLUE)
    ax.set_yticks(range(len(values)), names, fontsize=8)
    ax.bar_label(bars, fontsize=7, padding=2)
    suffix = f" (largest {_MAX_BARS} of {len(items)})" if len(items) > _MAX_BARS else ""
    ax.set_title(f"{title}{suffix}", fontsize=10)
    ax.set_xlabel("images")
    ax.margins(x=0.12)
    return figure_png(fig)


def histogram(values: np.ndarray, title: str, integer: bool = False) -> bytes:
    """A histogram of a numeric column (integer bins when the values are small counts)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    fig = new_figure(6, 3)
    ax = fig.add_subplot()
    if v.size:
        if integer and v.max() - v.min() <= 60:
            bins: Any = np.arange(v.min() - 0.5, v.max() + 1.5)
        else:
            bins = 30
        ax.hist(v, bins=bins, color=_BLUE)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("count")
    return figure_png(fig)


def sizes(width: np.ndarray, height: np.ndarray, aspect: np.ndarray) -> bytes:
    """Width, height and aspect-ratio histograms side by side."""
    fig = new_figure(11, 3)
    for k, (v, name) in enumerate(((width, "width (px)"), (height, "height (px)"), (aspect, "aspect ratio (w/h)"))):
        ax = fig.add_subplot(1, 3, k + 1)
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=30 if v.max() > v.min() else 1, color=_BLUE)
        ax.set_title(name, fontsize=10)
    return figure_png(fig)


def brightness(good: pd.DataFrame, label: str | None) -> bytes:
    """Per-image mean luma, overall and (up to 10 classes) per class."""
    fig = new_figure(7, 3.2)
    ax = fig.add_subplot()
    values = good["brightness"].to_numpy(np.float64)
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(values, bins=bins, color="#cccccc", label="all")
    if label and 1 < good["label"].nunique() <= 10:
        for c, sub in good.groupby("label"):
            ax.hist(sub["brightness"].to_numpy(np.float64), bins=bins, histtype="step", label=str(c))
        ax.legend(fontsize=7, ncols=2)
    ax.set_xlabel("mean luma (0 = black, 1 = white)")
    ax.set_ylabel("images")
    ax.set_title("brightness", fontsize=10)
    return figure_png(fig)


def channel_means(good: pd.DataFrame) -> bytes:
    """Distributions of the per-image mean of each colour channel."""
    fig = new_figure(7, 3)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    for ch, color in (("r", "#d04040"), ("g", "#40a040"), ("b", "#4060d0")):
        ax.hist(good[f"mean_{ch}"].to_numpy(np.float64), bins=bins, histtype="step", color=color,
                label=ch.upper(), linewidth=1.5)
    ax.legend(fontsize=8)
    ax.set_xlabel("per-image channel mean (0..1)")
    ax.set_ylabel("images")
    ax.set_title("channel means", fontsize=10)
    return figure_png(fig)


def nearest_distance(counts: np.ndarray, max_distance: int) -> bytes:
    """Histogram of each sampled image's hash distance to its nearest other image."""
    fig = new_figure(7, 3)
    ax = fig.add_subplot()
    counts = np.asarray(counts)
    last = int(np.max(np.flatnonzero(counts))) + 1 if counts.any() else 33
    ax.bar(np.arange(last), counts[:last], color=_BLUE, width=0.9)
    ax.axvline(max_distance + 0.5, color="#d04040", linestyle="--", label=f"near-duplicate limit ({max_distance})")
    ax.legend(fontsize=8)
    ax.set_xlabel("bits to the nearest other image (perceptual hash, plain or mirrored)")
    ax.set_ylabel("sampled images")
    ax.set_title("nearest-neighbour hash distance", fontsize=10)
    return figure_png(fig)


def _tile(image: Image.Image | None) -> Image.Image:
    tile = Image.new("RGB", (_TILE, _TILE), (235, 235, 235))
    if image is None:
        ImageDraw.Draw(tile).text((8, _TILE // 2 - 6), "unreadable", fill=(160, 0, 0))
        return tile
    im = image if image.size[0] <= _TILE and image.size[1] <= _TILE else image.copy()
    if im is not image:
        im.thumbnail((_TILE, _TILE))
    tile.paste(im, ((_TILE - im.size[0]) // 2, (_TILE - im.size[1]) // 2))
    return tile


def grid(tiles: Sequence[tuple[Image.Image | None, str]], columns: int = 8, captions: bool = True) -> bytes:
    """Thumbnails in rows of ``columns``, each with its (shortened) name under it."""
    n = max(1, len(tiles))
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    cell_w, cell_h = _TILE + 4, _TILE + 4 + (_CAPTION if captions else 0)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (image, name) in enumerate(tiles):
        x, y = (k % cols) * cell_w + 2, (k // cols) * cell_h + 2
        sheet.paste(_tile(image), (x, y))
        if captions:
            text = name.rsplit("/", 1)[-1]
            draw.text((x, y + _TILE + 1), text if len(text) <= 16 else text[:15] + "…", fill=(60, 60, 60))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def pairs_strip(examples: Sequence[tuple[Image.Image | None, Image.Image | None, str]]) -> bytes:
    """Duplicate pairs side by side, four pairs a row, each captioned with kind/distance/labels."""
    per_row = 4
    cell_w, cell_h = 2 * _TILE + 12, _TILE + 4 + _CAPTION
    rows = math.ceil(max(1, len(examples)) / per_row)
    sheet = Image.new("RGB", (per_row * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (a, b, caption) in enumerate(examples):
        x, y = (k % per_row) * cell_w + 2, (k // per_row) * cell_h + 2
        sheet.paste(_tile(a), (x, y))
        sheet.paste(_tile(b), (x + _TILE + 2, y))
        draw.text((x, y + _TILE + 1), caption[:34], fill=(60, 60, 60))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
