"""Outliers worth a look: images unlike the rest of their class by a few simple measures.

Each image is described by :data:`OUTLIER_FEATURES`: brightness and contrast from its channel
statistics, colourfulness, edge density and the extent of its content from its 32×32 layout
(:func:`layout_features`), and its shape, size and compressibility from its header. The score
(:func:`outlier_scores`) is a distance to the nearest images of the same class in those terms.
Such a score says "unlike the rest of its class", not "wrong".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from toolkit.imaging.phash import workspace

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LAYOUT_FEATURES", "OUTLIER_FEATURES", "OUTLIER_THRESHOLD", "layout_features", "outlier_scores"]

#: The per-image features the outlier score compares, each with the smallest spread it is measured
#: against: a feature that barely varies (every sketch 227×227) must not make a tiny difference
#: look enormous.
OUTLIER_FEATURES: dict[str, float] = {
    "brightness": 0.02,          # mean luma, 0..1
    "contrast": 0.02,            # mean over channels of the per-image std, 0..1
    "colorfulness": 0.02,        # Hasler-Süsstrunk colourfulness at 32×32, 0..1 scale
    "edge_density": 0.01,        # mean absolute luma step between neighbours at 32×32
    "content_width": 0.05,       # box around pixels unlike the border colour, share of width
    "content_height": 0.05,      # ... and of height
    "log_aspect": 0.05,          # log(width / height)
    "log_pixels": 0.1,           # log(width * height)
    "log_bytes_per_pixel": 0.1,  # how hard the file compresses: noise, detail, format
}
#: Outlier score (distance to the nearest same-class images, in units of the class's typical such
#: distance) above which an image is counted as an outlier.
OUTLIER_THRESHOLD = 3.0
#: The features :func:`layout_features` computes, in its column order.
LAYOUT_FEATURES = ("colorfulness", "edge_density", "content_width", "content_height")
# Neighbours an image is compared with, and the largest reference set per class (a seeded sample).
_OUTLIER_K = 5
_OUTLIER_REFERENCE = 10_000


def layout_features(tiny: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Layout descriptors for the outlier score from a stack of 32×32 box-filtered images.

    Args:
        tiny: ``B x 3 x 32 x 32`` float planes (0..255, whole numbers).
        grey: ``B x 32 x 32`` luma of the same images (0..255), as the perceptual hash uses it.

    Returns:
        ``B x 4``: colourfulness, edge density, content width, content height (see
        :data:`OUTLIER_FEATURES`). Whole-stack numpy calls with their stack-sized temporaries in
        workspaces: per image, call overhead and page faults, not arithmetic, would be the cost.
    """
    b, side = grey.shape[0], grey.shape[1]
    n = side * side
    # Hasler-Süsstrunk colourfulness from the opponent channels rg = R - G, yb = (R + G) / 2 - B.
    flat = tiny.reshape(b, 3, n)
    rg = np.subtract(flat[:, 0], flat[:, 1], out=workspace("feat_rg", (b, n), np.float64))
    yb = np.add(flat[:, 0], flat[:, 1], out=workspace("feat_yb", (b, n), np.float64))
    yb *= 0.5
    yb -= flat[:, 2]
    scale = 1.0 / (n * 255.0)
    m_rg, m_yb = rg.sum(axis=1) * scale, yb.sum(axis=1) * scale
    e_rg = np.einsum("ij,ij->i", rg, rg) * (scale / 255.0)
    e_yb = np.einsum("ij,ij->i", yb, yb) * (scale / 255.0)
    var = np.maximum(e_rg - m_rg * m_rg, 0.0) + np.maximum(e_yb - m_yb * m_yb, 0.0)
    colorfulness = np.sqrt(var) + 0.3 * np.sqrt(m_rg * m_rg + m_yb * m_yb)
    # Edge density: mean absolute luma step between horizontal, plus between vertical neighbours.
    step = workspace("feat_step", (b, side, side - 1), np.float64)
    across = np.abs(np.subtract(grey[:, :, 1:], grey[:, :, :-1], out=step), out=step).sum(axis=(1, 2))
    step = workspace("feat_step", (b, side - 1, side), np.float64)
    down = np.abs(np.subtract(grey[:, 1:], grey[:, :-1], out=step), out=step).sum(axis=(1, 2))
    edges = (across + down) / (side * (side - 1) * 255.0)
    # Content box: pixels that differ clearly (by a tenth of the range) from the typical border
    # colour (the background of a sketch, a product shot, a scan). A photo fills its frame; a
    # drawing or text often doesn't.
    border = np.sort(np.concatenate([grey[:, 0], grey[:, -1], grey[:, :, 0], grey[:, :, -1]], axis=1), axis=1)
    diff = workspace("feat_diff", grey.shape, np.float64)
    mask = workspace("feat_mask", grey.shape, np.bool_)
    np.subtract(grey, border[:, border.shape[1] // 2, None, None], out=diff)
    np.greater(np.abs(diff, out=diff), 25.5, out=mask)

    def extent(hit: np.ndarray) -> np.ndarray:  # B x side booleans -> share spanned by the hits
        first = hit.argmax(axis=1)
        last = side - 1 - hit[:, ::-1].argmax(axis=1)
        return np.where(hit.any(axis=1), (last - first + 1) / side, 0.0)

    return np.column_stack([colorfulness, edges, extent(mask.any(axis=1)), extent(mask.any(axis=2))])


def outlier_scores(images: pd.DataFrame, ok: np.ndarray, seed: int | None) -> tuple[np.ndarray, list[list[str]]]:
    """A k-nearest-neighbour outlier score within each class, and the features that drive it.

    Each feature of :data:`OUTLIER_FEATURES` is standardised over the whole set (median, and
    IQR / 1.349 but at least the feature's floor). An image's raw score is its mean Euclidean
    distance to its 5 nearest images of the same class; dividing by the class's median raw
    score makes it "how many times further from its class-mates than a typical image is". A
    distance to neighbours, unlike a distance to the class centre, does not flag the members of
    a legitimate sub-population (a second drawing style, a second camera) as long as there are
    a few of them. Classes under 10 images are scored against the whole set.

    Returns:
        ``(score, reasons)``: score is NaN for unreadable images; reasons name the two features
        furthest from the class median, as robust z-scores.
    """
    n = len(images)
    names = list(OUTLIER_FEATURES)
    raw = images[names].to_numpy(np.float64)
    score = np.full(n, np.nan)
    reasons: list[list[str]] = [[] for _ in range(n)]
    rows = np.flatnonzero(ok)
    if rows.size < 3:
        return score, reasons
    x = raw[rows]
    med = np.nanmedian(x, axis=0)
    x = np.where(np.isfinite(x), x, med)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    floors = np.array(list(OUTLIER_FEATURES.values()))
    z = ((x - np.median(x, axis=0)) / np.maximum((q75 - q25) / 1.349, floors)).astype(np.float32)
    labels = images["label"].astype(str).to_numpy(object)[rows] if images["label"].notna().any() \
        else np.full(rows.size, "", dtype=object)
    sizes = {c: int(np.sum(labels == c)) for c in set(labels.tolist())}
    pools = np.array([c if sizes[c] >= 10 else "\0all" for c in labels], dtype=object)
    rng = np.random.default_rng(0 if seed is None else seed)
    for pool in set(pools.tolist()):
        members = np.flatnonzero(pools == pool)
        reference = np.arange(rows.size) if pool == "\0all" else members
        if reference.size > _OUTLIER_REFERENCE:  # bounded work for huge classes: a seeded sample
            reference = np.sort(rng.choice(reference, size=_OUTLIER_REFERENCE, replace=False))
        knn = _knn_distance(z[members], z[reference], members, reference, _OUTLIER_K)
        typical = float(np.median(knn)) if knn.size else 0.0
        score[rows[members]] = knn / typical if typical > 0 else np.where(knn > 0, np.inf, 0.0)
        cmed = np.median(x[reference], axis=0)
        cmad = np.median(np.abs(x[reference] - cmed), axis=0) * 1.4826
        cz = (x[members] - cmed) / np.maximum(cmad, floors)
        for local, i in enumerate(rows[members]):
            top = np.argsort(-np.abs(cz[local]))[:2]
            reasons[i] = [f"{names[j]} z={cz[local, j]:+.1f}" for j in top]
    return score, reasons


def _knn_distance(q: np.ndarray, ref: np.ndarray, q_ids: np.ndarray, ref_ids: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each query row to its ``k`` nearest reference rows (itself excluded)."""
    out = np.zeros(len(q), np.float64)
    if len(ref) < 2:
        return out
    k = min(k, len(ref) - 1)
    ref_sq = (ref * ref).sum(axis=1)
    block = max(1, (1 << 22) // len(ref))
    for start in range(0, len(q), block):
        qb = q[start:start + block]
        d2 = (qb * qb).sum(axis=1)[:, None] + ref_sq[None, :] - 2.0 * (qb @ ref.T)
        # The image itself is not its own neighbour.
        same = q_ids[start:start + block, None] == ref_ids[None, :]
        d2 = np.where(same, np.inf, np.maximum(d2, 0.0))
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        out[start:start + len(qb)] = np.sqrt(nearest).mean(axis=1)
    return out
