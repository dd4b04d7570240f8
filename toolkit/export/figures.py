"""What ``clsctl explain`` draws: one PNG per image (the image, its heat map overlay, labels) and a page of them."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Figures are drawn this wide (inches at 100 dpi), images shown at most this many pixels on a side.
_WIDTH, _SHOWN = 6.4, 320


def _shown(image: np.ndarray, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image and map downscaled together so the longer side is at most ``_SHOWN`` px."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, _SHOWN / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        cam = cv2.resize(cam, size, interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image, cam


def explanation_png(image: np.ndarray, cam: np.ndarray, title: str, subtitle: str) -> bytes:
    """The image beside it with the heat map laid over it, under a two-line title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image, cam = _shown(image, cam)
    h, w = image.shape[:2]
    panel = _WIDTH / 2
    fig = Figure(figsize=(_WIDTH, panel * h / w + 0.75), dpi=100)
    FigureCanvasAgg(fig)
    cmap = "gray" if image.ndim == 2 else None
    left, right = fig.subplots(1, 2)
    left.imshow(image, cmap=cmap)
    right.imshow(image, cmap=cmap)
    overlay = right.imshow(cam, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(overlay, ax=right, fraction=0.046, pad=0.02)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9)
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout's notes on colorbars change nothing drawn
        fig.tight_layout()
        fig.savefig(buffer, format="png")
    return buffer.getvalue()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: .5em; }
figcaption { font-size: 12px; color: #555; max-width: 640px; }
img { max-width: 640px; }
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ about }}</p>
<div class="grid">
{% for item in items %}<figure><img src="{{ item.file }}" alt="{{ item.alt }}"><figcaption>{{ item.caption }}</figcaption></figure>
{% endfor %}</div>
</body></html>
"""


def explanation_page(title: str, about: str, items: Sequence[Mapping[str, Any]]) -> str:
    """The HTML page of a set of explanations: ``items`` have ``file`` (the PNG, relative), ``alt`` and ``caption``."""
    import jinja2

    env = jinja2.Environment(autoescape=True)
    return env.from_string(_PAGE).render(title=title, about=about, items=list(items))
