"""The shortcut audit: do file properties or names predict the label?

A model learns whatever separates the classes most cheaply. In scraped and assembled data sets that is
often not the object: one class was saved as PNG and the others as JPEG, one came from a source with
larger images, file names carry the class. The test set rarely shares the shortcut, so validation
looks great and the leaderboard does not. :func:`audit_shortcuts` measures, on what ``clsctl eda``
already knows of every image (or what ``clsctl split`` reads from the file headers), how much each
feature of :mod:`toolkit.data.shortcut_features` tells about the label:

* **Per feature, the strength of its best rule.** For each class ``c``, a rule is learned on the
  training folds -- "call an image ``c`` when its value is more common in ``c`` than in the other
  classes" -- and scored on the held-out fold. The strength is the pooled out-of-fold true-positive
  rate minus false-positive rate (Youden's J): 0 is a coin toss, 1 means the feature alone singles
  the class out. Out of fold, because in-sample any feature with many values "predicts" the label.
  The values behind the rule are listed with their purity ("PNG: 229 images, 100% A").
* **A metadata model**: cross-validated naive Bayes on the (binned) file features together, without
  class priors so every class counts alike, which catches several weak features that add up. Its
  balanced accuracy is compared with chance (1 / classes, also what the majority rule scores) and its
  accuracy with the majority rule's; its strength is the balanced accuracy rescaled so that chance is
  0 and perfect is 1. Names are left out of it: a pixel model never sees them, and they are audited
  token by token (the tokens of one family, file names or folders, are reported as one finding).

Everything is numpy on a few integer codes per image, so the audit costs eda well under a second.
scikit-learn is not used on purpose: importing it (scipy.stats comes with it) took 1.4 s of CPU on the
reference machine, a fifth of eda's whole time on the shared sets, where the audit must add under a
tenth.

Folds are stratified (and grouped when a group column is given, balanced as scikit-learn's
``StratifiedGroupKFold`` does; :func:`_own_folds`), or the split's own folds, which also gives every
strength per fold.

A feature (or the model) is **flagged** when its strength is at least :data:`MIN_STRENGTH` and its
z-score clears the Bonferroni bar for :data:`ALPHA` over every test made (one per feature and
class, and the model). A fold's z-score divides its strength by the standard error it has when the
feature is independent of the label, ``sqrt(q (1 - q) (1 / n_c + 1 / n_rest))`` for a rule that calls
a share ``q`` of the fold's images ``c`` (for the model, the root of the summed per-class recall
variances over K); ``n`` counts groups, not images, when a group column is given, because a group's
images share their file properties and label. The audit's z-score is the mean of its folds' (see
:func:`_combined_z` for why not the pooled one). On label-independent metadata
(``tests/test_shortcuts.py``: 2000 seeds, 60-400 images, 2-6 classes, grouped or not) it raised no
false alarm; the largest z-score was 3.38 (99th percentile 2.57) against bars of 3.33-3.75.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.data.shortcut_features import Feature, file_features, fmt_number, min_support, name_features

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ALPHA", "MIN_STRENGTH", "audit_shortcuts", "shortcuts_skipped"]

#: Smallest strength (out-of-fold TPR - FPR, or rescaled balanced accuracy) that is flagged.
MIN_STRENGTH = 0.2
#: Chance of one false alarm or more per audit on label-independent data (Bonferroni over the tests).
ALPHA = 0.01
# Folds of the audit's own cross-validation (eda; ``split`` uses its folds). Few: a fold's z-score grows
# with the square root of its images, and the folds' z-scores are averaged (see :func:`_combined_z`).
_FOLDS = 3
# A fold judges a class only with this many units (images, or groups) of it and of the others: the
# normal approximation of a z-score over one or two groups would be no approximation at all.
_MIN_UNITS = 5
# Laplace-style smoothing of the per-value counts of a rule.
_SMOOTHING = 0.5
# Values listed under a finding.
_SHOWN_VALUES = 3

_LEVERS = {
    "format": "decoding turns every file into the same RGB pixels, but JPEG artefacts survive it: set "
              "`aug.intermediate_size` below most images' shorter side (the area downscale averages the "
              "8×8 blocks away), or re-encode every image the same way",
    "bytes_per_pixel": "compression quality shows as artefacts: set `aug.intermediate_size` below most "
                       "images' shorter side, or re-encode every image at one quality",
    "mode": "palette, alpha and grey files are decoded to RGB alike, but grey stays grey: add "
            '`{ name = "ToGray", p = 0.2 }` to `aug.transforms`',
    "grayscale": 'grey images stay grey after decoding: add `{ name = "ToGray", p = 0.2 }` to `aug.transforms` so '
                 "colour stops telling the class",
    "exif_orientation": "the loader applies the rotation; check that this class's rotated images look upright and "
                        "where they came from",
    "aspect": "stretching shows as distortion and letterboxing as bars: `aug.resize = \"random_resized_crop\"` "
              "or `\"center_crop\"` hides most of the shape",
    "name": "the model never sees file names, so this is no shortcut for it; but the classes were named or "
            "collected apart: check that test names do not carry the class, and what else differs between sources",
}
_SIZE_KEYS = ("width", "height", "pixels")


def shortcuts_skipped(reason: str) -> dict[str, Any]:
    """The ``shortcuts`` section of an audit that did not run, and why."""
    return {"skipped": reason, "findings": [], "metadata_model": None}


# --------------------------------------------------------------------------- folds and counts


def _own_folds(y: np.ndarray, groups: np.ndarray | None, seed: int) -> np.ndarray:
    """Stratified (group) k-fold assignment of the audit's own cross-validation, seeded.

    Without groups, each class is shuffled and dealt round the folds. With groups, the largest group
    first (ties in seeded random order), each goes to the fold where its classes have the smallest
    share so far, as :class:`~sklearn.model_selection.StratifiedGroupKFold` balances them (scikit-learn
    itself is not imported: its import alone costs eda more than the whole audit may).
    """
    rng = np.random.default_rng(seed)
    n_classes = int(y.max()) + 1
    if groups is None:
        k = min(_FOLDS, int(np.bincount(y).max()))
        folds = np.empty(y.size, np.int64)
        for c in range(n_classes):
            rows = rng.permutation(np.flatnonzero(y == c))
            folds[rows] = (np.arange(rows.size) + int(rng.integers(k))) % k
        return folds
    _, g = np.unique(groups, return_inverse=True)
    per_group = np.zeros((int(g.max()) + 1, n_classes))
    np.add.at(per_group, (g, y), 1)
    k = min(_FOLDS, per_group.shape[0])
    order = rng.permutation(per_group.shape[0])
    order = order[np.argsort(-per_group[order].sum(1), kind="stable")]
    weight = 1.0 / np.maximum(per_group.sum(0), 1)
    load = np.zeros((k, n_classes))
    fold_of_group = np.empty(per_group.shape[0], np.int64)
    for group in order:
        counts = per_group[group]
        cost = (load * weight) @ counts + 1e-9 * load.sum(1)  # then the fold with fewest images
        best = int(np.argmin(cost))
        fold_of_group[group] = best
        load[best] += counts
    return fold_of_group[g]


def _fold_units(y: np.ndarray, folds: np.ndarray, groups: np.ndarray | None, n_folds: int,
                n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent units of each class, and of the other classes, in each held-out fold (folds × classes).

    Images; or groups when grouped, because a group's images share their file properties and label.
    """
    held = folds >= 0
    f, c = folds[held], y[held]
    if groups is None:
        pos = np.zeros((n_folds, n_classes))
        np.add.at(pos, (f, c), 1)
        return pos, pos.sum(1, keepdims=True) - pos
    g = groups[held].astype(np.int64)
    n_groups = int(g.max()) + 1 if g.size else 1
    pair = f.astype(np.int64) * n_groups + g                      # a group within a fold
    triple = np.unique(pair * n_classes + c)                      # ... and a class present in it
    t_pair, t_class = triple // n_classes, triple % n_classes
    t_fold = t_pair // n_groups
    pos = np.zeros((n_folds, n_classes))
    np.add.at(pos, (t_fold, t_class), 1)
    pairs, first, classes_in = np.unique(t_pair, return_index=True, return_counts=True)
    groups_in_fold = np.bincount(pairs // n_groups, minlength=n_folds).astype(np.float64)
    # A group counts among "the other classes" of c unless c is the only class it holds.
    only = np.zeros((n_folds, n_classes))
    single = classes_in == 1
    np.add.at(only, (pairs[single] // n_groups, t_class[first[single]]), 1)
    return pos, groups_in_fold[:, None] - only


def _combined_z(effect: np.ndarray, se: np.ndarray) -> np.ndarray:
    """The mean over folds of each fold's z-score (folds × classes → classes; NaN folds left out).

    Each fold's z is honest: its rule was learned without its images. Pooling the folds' counts
    is not: every fold's rule was learned on the other folds' images, so a chance pattern of the
    whole set reappears in every fold, and the pooled z of pure noise reached 5 on a set of 100
    images. The mean of the folds' z-scores is at most as spread as one fold's whatever their
    correlation, so it keeps the stated false-alarm rate (at some cost in power).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(se > 0, effect / np.where(se > 0, se, 1), np.where(np.isfinite(se), 0.0, np.nan))
    valid = np.isfinite(z)
    counted = valid.sum(0)
    return np.where(counted > 0, np.where(valid, z, 0).sum(0) / np.maximum(counted, 1), 0.0)


def _rule_counts(codes: np.ndarray, y: np.ndarray, folds: np.ndarray, n_codes: int, n_classes: int,
                 n_folds: int) -> tuple[np.ndarray, ...]:
    """Out-of-fold confusion counts of every class's rule, per fold: ``tp, fp, pos, neg`` (folds × classes).

    Rows of fold -1 (the training part of a holdout split) only ever train.
    """
    slot = np.where(folds < 0, n_folds, folds)
    flat = (slot * n_codes + codes) * n_classes + y
    counts = np.bincount(flat, minlength=(n_folds + 1) * n_codes * n_classes).reshape(n_folds + 1, n_codes, n_classes)
    train = counts.sum(0)[None] - counts[:n_folds]                       # F, V, K
    in_class = train.sum(1, keepdims=True)                               # F, 1, K
    rest = train.sum(2, keepdims=True) - train                           # F, V, K
    rest_total = in_class.sum(2, keepdims=True) - in_class               # F, 1, K
    p_in = (train + _SMOOTHING) / (in_class + _SMOOTHING * n_codes)
    p_out = (rest + _SMOOTHING) / (rest_total + _SMOOTHING * n_codes)
    # Call an image c when its value is more common in c; a value the training folds never saw says
    # nothing, and neither does a class they do not hold.
    predict = (p_in > p_out) & (train.sum(2, keepdims=True) > 0) & (in_class > 0)
    held = counts[:n_folds]
    tp = (held * predict).sum(1)
    fp = ((held.sum(2, keepdims=True) - held) * predict).sum(1)
    pos = held.sum(1)
    neg = held.sum((1, 2))[:, None] - pos
    return tp, fp, pos, neg


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.maximum(b, 1), np.nan)


# --------------------------------------------------------------------------- per feature


def _range(values: Sequence[float | None] | np.ndarray) -> list[float | None]:
    """``[lowest, highest]`` of the finite per-fold values (``[None, None]`` when there are none)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return [round(min(finite), 4), round(max(finite), 4)] if finite else [None, None]


def _test_feature(feature: Feature, y: np.ndarray, folds: np.ndarray, n_folds: int, n_classes: int,
                  groups: np.ndarray | None) -> dict[str, Any] | None:
    """Strength, z-score and per-fold strength of a feature's rule for every class (None: one class only)."""
    defined = feature.codes >= 0
    codes, yy, ff = feature.codes[defined], y[defined], folds[defined]
    if np.unique(yy).size < 2:
        return None
    tp, fp, pos, neg = _rule_counts(codes, yy, ff, len(feature.values), n_classes, n_folds)
    strength = np.nan_to_num(_ratio(tp.sum(0), pos.sum(0)) - _ratio(fp.sum(0), neg.sum(0)), nan=0.0)
    per_fold = _ratio(tp, pos) - _ratio(fp, neg)
    share = _ratio(tp + fp, pos + neg)
    u_pos, u_rest = _fold_units(yy, ff, None if groups is None else groups[defined], n_folds, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(share * (1 - share) * (1 / u_pos + 1 / u_rest))
    se[(u_pos < _MIN_UNITS) | (u_rest < _MIN_UNITS)] = np.nan  # too few to judge: the fold is left out
    return {"strength": strength, "z": _combined_z(per_fold, se), "per_fold": per_fold, "images": int(defined.sum())}


def _values_shown(feature: Feature, y: np.ndarray, c: int, n_classes: int) -> list[dict[str, Any]]:
    """The values the whole set's rule calls class ``c``, most images of ``c`` first, with their purity."""
    defined = feature.codes >= 0
    table = np.zeros((len(feature.values), n_classes), np.int64)
    np.add.at(table, (feature.codes[defined], y[defined]), 1)
    in_class, total = table[:, c], table.sum(1)
    rest = total - in_class
    p_in = (in_class + _SMOOTHING) / (in_class.sum() + _SMOOTHING * len(total))
    p_out = (rest + _SMOOTHING) / (rest.sum() + _SMOOTHING * len(total))
    chosen = [v for v in np.argsort(-in_class, kind="stable") if p_in[v] > p_out[v] and total[v] > 0]
    return [{"value": feature.values[v], "images": int(total[v]), "share": round(float(in_class[v] / total[v]), 4)}
            for v in chosen[:_SHOWN_VALUES]]


def _lever(feature: Feature, suggested_size: int | None) -> str:
    if feature.kind == "name":
        return _LEVERS["name"]
    if feature.key in _SIZE_KEYS:
        size = f" (e.g. `--set aug.intermediate_size={suggested_size}`, the shorter side of the smallest tenth)" \
            if suggested_size else ""
        return ("native resolution survives any resize to `data.image_size`: resize every image through one "
                f"fixed size with `aug.intermediate_size`{size}")
    return _LEVERS.get(feature.key, "")


def _finding(feature: Feature, result: dict[str, Any], flagged: np.ndarray, classes: list[str], y: np.ndarray,
             suggested_size: int | None) -> dict[str, Any]:
    strength, z = result["strength"], result["z"]
    order = [int(c) for c in np.argsort(-strength, kind="stable") if flagged[c]]
    c = order[0]
    name = classes[c]
    values = _values_shown(feature, y, c, len(classes))
    overall = float(np.mean(y[feature.codes >= 0] == c))
    shown = "; ".join(f"{v['value']}: {v['images']} images, {100 * v['share']:.0f}% {name}" for v in values)
    summary = (f"{feature.label} singles out class {name} (strength {strength[c]:.2f}): {shown} "
               f"({100 * overall:.0f}% of all images are {name})")
    medians = None
    if feature.raw is not None:  # a quantity: where the class lies, beside the bins the rule picked
        defined = feature.codes >= 0
        here, rest = feature.raw[defined & (y == c)], feature.raw[defined & (y != c)]
        medians = {"class": fmt_number(np.median(here)), "rest": fmt_number(np.median(rest))}
        summary += (f"; median {medians['class']} ({fmt_number(np.min(here))}–{fmt_number(np.max(here))}) in {name}, "
                    f"{medians['rest']} elsewhere")
    if feature.kind == "name":
        summary += "; names only, which the model never sees"
    per_fold = result["per_fold"][:, c]
    return {
        "feature": feature.key, "label": feature.label, "kind": feature.kind,
        "strength": round(float(strength[c]), 4), "z": round(float(z[c]), 2), "class": name,
        "class_share": round(overall, 4), "values": values, "medians": medians,
        "other_classes": [{"class": classes[k], "strength": round(float(strength[k]), 4)} for k in order[1:]],
        "per_fold": [None if not np.isfinite(v) else round(float(v), 4) for v in per_fold],
        "fold_range": _range(per_fold), "images": result["images"], "summary": summary, "lever": _lever(feature, suggested_size),
        "family": feature.family,
    }


_FAMILIES = {"name_tokens": "file-name tokens", "folder_tokens": "folder-name tokens"}


def _merge_tokens(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One finding per token family: ten digits that each name their class are one fact about the names."""
    out: list[dict[str, Any]] = []
    families: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        family = finding.pop("family", None)
        if family is None:
            out.append(finding)
        else:
            families.setdefault(family, []).append(finding)
    for family, items in families.items():
        items.sort(key=lambda f: -f["strength"])
        top = items[0]
        values = [{**f["values"][0], "class": f["class"]} for f in items if f["values"]]
        classes = list(dict.fromkeys(f["class"] for f in items))
        shown = "; ".join(f"{v['value']}: {v['images']} images, {100 * v['share']:.0f}% {v['class']}" for v in values[:4])
        more = f"; and {len(values) - 4} more tokens" if len(values) > 4 else ""
        out.append({**top, "feature": family, "label": _FAMILIES[family], "tokens": [f["feature"] for f in items],
                    "values": values[:20],
                    "other_classes": [{"class": c, "strength": max(f["strength"] for f in items if f["class"] == c)}
                                      for c in classes[1:]],
                    "summary": (f"{_FAMILIES[family]} single out {len(classes)} class(es) (strongest {top['strength']:.2f}): "
                                f"{shown}{more}; names only, which the model never sees")})
    return out


# --------------------------------------------------------------------------- the metadata model


def _metadata_model(features: list[Feature], y: np.ndarray, folds: np.ndarray, n_folds: int, n_classes: int,
                    groups: np.ndarray | None, seed: int) -> dict[str, Any]:
    """Cross-validated balanced accuracy of naive Bayes on the file features together."""
    chance = 1.0 / n_classes
    majority = float(np.bincount(y, minlength=n_classes).max() / y.size)
    base: dict[str, Any] = {"model": "naive Bayes on the binned file features, class-balanced",
                            "features": [f.key for f in features], "chance": round(chance, 4),
                            "majority_accuracy": round(majority, 4)}
    if not features:
        return {**base, "fitted": False, "rows": int(y.size), "balanced_accuracy": round(chance, 4),
                "accuracy": round(majority, 4), "skill": 0.0, "z": 0.0, "per_fold": [],
                "note": "every image has the same file properties: they cannot tell the classes apart"}
    held = folds >= 0
    slot = np.where(held, folds, n_folds)
    # Ties (no feature seen in training) go to a random class, not always the first.
    scores = np.random.default_rng(seed).uniform(0, 1e-9, (y.size, n_classes))
    for feature in features:
        n_codes = len(feature.values)
        defined = feature.codes >= 0
        flat = ((slot * n_codes + feature.codes) * n_classes + y)[defined]
        counts = np.bincount(flat, minlength=(n_folds + 1) * n_codes * n_classes).reshape(n_folds + 1, n_codes,
                                                                                           n_classes)
        train = counts.sum(0)[None] - counts[:n_folds]
        # log P(value | class) without the class prior, so every class counts alike (balanced accuracy);
        # a value the training folds never saw adds nothing.
        log_p = np.log((train + _SMOOTHING) / (train.sum(1, keepdims=True) + _SMOOTHING * n_codes))
        log_p *= train.sum(2, keepdims=True) > 0
        rows = np.flatnonzero(defined & held)
        scores[rows] += log_p[folds[rows], feature.codes[rows]]
    yy, pp, ff = y[held], scores[held].argmax(1), folds[held]
    present = np.unique(yy)
    bacc = float(np.mean([np.mean(pp[yy == c] == c) for c in present]))
    chance = 1.0 / present.size
    # Per fold: balanced accuracy against its chance, and the standard error of that difference
    # when the predictions ignore the labels (the root of the summed per-class recall variances over K).
    u_pos, _ = _fold_units(yy, ff, None if groups is None else groups[held], n_folds, n_classes)
    per_fold, effect, se = [], np.full((n_folds, 1), np.nan), np.full((n_folds, 1), np.nan)
    for f in range(n_folds):
        sel = ff == f
        here = np.unique(yy[sel])
        if here.size < 2:
            per_fold.append(None)
            continue
        recall = np.array([np.mean(pp[sel][yy[sel] == c] == c) for c in here])
        per_fold.append(round(float(recall.mean()), 4))
        # Judged on the classes with enough units in the fold: a recall's expectation is the share of
        # images called that class whatever the labels, so their mean excess over it is the effect.
        share = np.bincount(pp[sel], minlength=n_classes)[here] / sel.sum()
        judged = u_pos[f, here] >= _MIN_UNITS
        if judged.sum() >= 2:
            effect[f, 0] = float(np.mean(recall[judged] - share[judged]))
            se[f, 0] = np.sqrt(np.sum(share[judged] * (1 - share[judged]) / u_pos[f, here][judged])) / judged.sum()
    skill = (bacc - chance) / (1 - chance)
    return {**base, "fitted": True, "rows": int(held.sum()), "balanced_accuracy": round(bacc, 4),
            "chance": round(chance, 4), "accuracy": round(float(np.mean(pp == yy)), 4), "skill": round(skill, 4),
            "z": round(float(_combined_z(effect, se)[0]), 2), "per_fold": per_fold}


# --------------------------------------------------------------------------- the audit


def _suggested_size(table: pd.DataFrame) -> int | None:
    """The shorter side of the smallest tenth of the images: an ``aug.intermediate_size`` that few images reach up to."""
    short = np.fmin(table["width"].astype("float64").to_numpy(), table["height"].astype("float64").to_numpy())
    short = short[np.isfinite(short)]
    return int(max(1, np.percentile(short, 10))) if short.size else None


def audit_shortcuts(table: pd.DataFrame, *, folds: Sequence[int] | np.ndarray | None = None,
                    group: str | None = "group", names: bool = True, seed: int = 0) -> dict[str, Any]:
    """Find file properties and names that predict the label.

    Args:
        table: One row per image: ``path``, ``label``, ``format``, ``mode``, ``width``, ``height``,
            ``bytes``; ``grayscale``, ``exif_orientation`` and the ``group`` column when present (the
            per-image table of eda, or the header table of :func:`toolkit.data.shortcut_features.file_properties`).
            Rows without a label are left out.
        folds: The fold of each row (``split``'s, -1 = training only); None makes stratified (group) folds.
        group: The group column: folds and standard errors count groups. None or absent: ungrouped.
        names: Whether to test file-name and folder tokens (not when the label was parsed from the path).
        seed: Seed of the audit's own folds and of the model.

    Returns:
        The ``shortcuts`` section: ``findings`` (flagged features, strongest first: ``feature``, ``label``,
        ``kind``, ``strength``, ``z``, ``class``, ``values``, ``per_fold``, ``summary``, ``lever``...),
        ``metadata_model`` (``balanced_accuracy``, ``chance``, ``accuracy``, ``majority_accuracy``,
        ``skill``, ``z``, ``per_fold``, ``flagged``), ``features`` (every feature tested, strongest
        first), ``criteria``, ``images``, ``classes``, ``folds``, ``grouped``, ``names_tested``,
        ``suggested_intermediate_size``, ``skipped`` (None, or why nothing was tested), ``seconds``.
    """
    started = time.perf_counter()
    labelled = table["label"].notna().to_numpy(bool)
    table = table[labelled].reset_index(drop=True)
    fold_array = None if folds is None else np.asarray(folds, dtype=np.int64)[labelled]
    labels = table["label"].astype(str).to_numpy()
    classes, counts = np.unique(labels, return_counts=True)
    rare = [str(c) for c, n in zip(classes, counts, strict=True) if n < 2]
    if rare:  # a class of one image cannot be both trained on and held out
        keep = ~np.isin(labels, rare)
        table, labels = table[keep].reset_index(drop=True), labels[keep]
        fold_array = None if fold_array is None else fold_array[keep]
        classes = np.array([c for c in classes if c not in rare])
    if classes.size < 2:
        return shortcuts_skipped("fewer than two classes with two images or more")
    class_list = [str(c) for c in classes]
    y = np.searchsorted(classes, labels).astype(np.int64)
    groups = None
    if group is not None and group in table.columns:
        column = table[group]
        # A missing group is a group of its own, as the split treats it.
        text = column.astype(str).where(column.notna(), [f"\0row{i}" for i in range(len(column))])
        groups = np.unique(text.to_numpy(dtype=object), return_inverse=True)[1]
    if fold_array is None:
        fold_array = _own_folds(y, groups, seed)
    n_folds = int(fold_array.max()) + 1 if (fold_array >= 0).any() else 0
    if n_folds < 1:
        return shortcuts_skipped("no held-out fold")

    support = min_support(y.size)
    files = file_features(table, support)
    features = files + (name_features(table["path"].astype(str).tolist(), labels.tolist(), support) if names else [])
    results = [(f, _test_feature(f, y, fold_array, n_folds, classes.size, groups)) for f in features]
    results = [(f, r) for f, r in results if r is not None]
    tests = sum(classes.size for _ in results) + 1
    z_bar = NormalDist().inv_cdf(1 - ALPHA / tests)
    suggested = _suggested_size(table)

    findings, tested = [], []
    for feature, result in results:
        flagged = (result["strength"] >= MIN_STRENGTH) & (result["z"] >= z_bar)
        best = int(np.argmax(result["strength"]))
        tested.append({"feature": feature.key, "kind": feature.kind, "strength": round(float(result["strength"][best]), 4),
                       "class": class_list[best], "z": round(float(result["z"][best]), 2), "flagged": bool(flagged.any())})
        if flagged.any():
            findings.append(_finding(feature, result, flagged, class_list, y, suggested))

    model = _metadata_model(files, y, fold_array, n_folds, classes.size, groups, seed)
    model["flagged"] = bool(model["skill"] >= MIN_STRENGTH and model["z"] >= z_bar)
    if model["flagged"]:
        chance = model["chance"]
        skills = [None if b is None else round((b - chance) / (1 - chance), 4) for b in model["per_fold"]]
        findings.append({
            "feature": "metadata_model", "label": "file properties together (metadata model)", "kind": "file",
            "strength": model["skill"], "z": model["z"], "class": None, "values": [], "per_fold": skills,
            "fold_range": _range(skills),
            "summary": (f"a model on the file properties alone reaches balanced accuracy {model['balanced_accuracy']:.2f} "
                        f"(chance {model['chance']:.2f}; accuracy {model['accuracy']:.2f} against the majority rule's "
                        f"{model['majority_accuracy']:.2f})"),
            "lever": "see the single features above; resize through `aug.intermediate_size` and normalise "
                     "colour so that no file property survives into the pixels",
        })
    findings = _merge_tokens(findings)
    findings.sort(key=lambda f: -f["strength"])
    tested.sort(key=lambda f: -f["strength"])
    return {
        "skipped": None, "images": int(y.size), "classes": classes.size, "left_out_classes": rare,
        "folds": n_folds, "fold_source": "given" if folds is not None else "stratified" + (" group" if groups is not None else ""),
        "grouped": groups is not None, "names_tested": names,
        "criteria": {"min_strength": MIN_STRENGTH, "alpha": ALPHA, "tests": tests, "z": round(z_bar, 2),
                     "min_support": support},
        "suggested_intermediate_size": suggested,
        "findings": findings, "metadata_model": model, "features": tested,
        "seconds": round(time.perf_counter() - started, 3),
    }
