"""Prediction tables and submission files.

The probability table's layout is the store's (:func:`toolkit.store.tables.probability_frame`). The
submission CSV is
``id,label`` with the predicted class name, unless a sample submission is given: then its ids
(first column), row order and column names are taken exactly:

* one column per class → the probabilities of those classes;
* a single column named after a class → that class's probability (binary competitions);
* a single other column → the predicted class: its name, or its index when the sample's column
  holds integers (competitions that number their classes).

Ids are matched on the prediction ids, or on file names, relative paths or stems, whichever covers
the sample best. Missing or extra ids, unknown class names and a class-list mismatch are errors
that list the offending rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit.errors import DataError, examples
from toolkit.store.tables import read_table


def read_sample(path: str | Path) -> pd.DataFrame:
    """Read a sample submission; the id column (the first) is kept as text ("0001" stays "0001")."""
    # Any suffix is read as CSV: competitions ship sample submissions as .csv, .txt or with no suffix.
    sample = read_table(path, first_column_text=True, keep_default_na=False, fmt="csv", what="sample submission",
                        hint="pass the competition's sample_submission.csv (a CSV with a header row)")
    if sample.shape[1] < 2:
        raise DataError(f"sample submission {path} has {sample.shape[1]} column(s)",
                        "a submission has an id column and at least one answer column")
    return sample


def _match_keys(ids: Sequence[str], paths: Sequence[str] | None) -> dict[str, list[str]]:
    keys = {"id": [str(i) for i in ids]}
    if paths is not None:
        keys["file name"] = [Path(str(p)).name for p in paths]
        keys["path"] = [str(p) for p in paths]
        keys["stem"] = [Path(str(p)).stem for p in paths]
    return {k: v for k, v in keys.items() if len(set(v)) == len(v)}


def sample_ids_among(sample: pd.DataFrame, ids: Sequence[str], paths: Sequence[str] | None,
                     rows: Sequence[int]) -> list[str]:
    """The sample's ids that name the images at ``rows`` of ``ids``/``paths``, matched on the key (id, file
    name, path or stem) that :func:`align_to_sample` would match the whole set on; in the sample's order."""
    wanted = sample[sample.columns[0]].astype(str).tolist()
    keys = _match_keys(ids, paths)
    if not keys:
        return []
    best = max(keys.values(), key=lambda values: len(set(wanted).intersection(values)))
    named = {best[i] for i in rows}
    return [i for i in wanted if i in named]


def align_to_sample(sample: pd.DataFrame, ids: Sequence[str], paths: Sequence[str] | None,
                    where: str = "sample submission") -> np.ndarray:
    """Row of the predictions for each sample row, in the sample's order.

    Raises:
        DataError: duplicate sample ids, sample ids without a prediction, or predictions not in the sample.
    """
    id_col = sample.columns[0]
    wanted = sample[id_col].astype(str).tolist()
    ser = pd.Series(wanted)
    dup = sorted(set(ser[ser.duplicated()]))
    if dup:
        raise DataError(f"{where}: {len(dup)} id(s) appear more than once: {examples(dup)}",
                        "each id must appear once")
    keys = _match_keys(ids, paths)
    if not keys:
        raise DataError(f"{where}: the prediction ids are not unique", "give every image a unique id")
    wanted_set = set(wanted)
    best = max(keys, key=lambda k: len(wanted_set.intersection(keys[k])))
    key = keys[best]
    pos = {k: i for i, k in enumerate(key)}
    missing = [i for i in wanted if i not in pos]
    extra = [k for k in key if k not in wanted_set]
    problems = []
    if missing:
        rows = [f"row {n + 2} ({i})" for n, i in enumerate(wanted) if i not in pos]
        problems.append(f"{len(missing)} id(s) have no prediction: {examples(rows)}")
    if extra:
        problems.append(f"{len(extra)} predicted image(s) are not in it (matched by {best}): {examples(extra)}")
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems),
                        "predict the same image set the sample lists (its first column holds the ids)")
    return np.array([pos[i] for i in wanted], dtype=np.int64)


def build_submission(ids: Sequence[str], paths: Sequence[str] | None, probs: np.ndarray, classes: list[str],
                     sample: pd.DataFrame | None = None, labels: np.ndarray | None = None,
                     where: str = "sample submission") -> pd.DataFrame:
    """The submission table.

    Args:
        ids: prediction ids, one per row of ``probs``.
        paths: relative image paths (for matching sample ids on file names); optional.
        probs: scores ``[N, C]`` in ``classes`` order (the argmax is the predicted class).
        classes: class names.
        sample: a sample submission (see the module docstring) or None for ``id,label``.
        labels: predicted class indices, when they are not the argmax of ``probs`` (hard voting).
        where: how errors name the sample.

    Raises:
        DataError: see :func:`align_to_sample`; unknown class names in the header, or a header that
            does not cover the class list.
    """
    pred = np.asarray(labels) if labels is not None else np.asarray(probs).argmax(axis=1)
    names = np.asarray(classes, dtype=object)
    if sample is None:
        return pd.DataFrame({"id": [str(i) for i in ids], "label": names[pred]})
    order = align_to_sample(sample, ids, paths, where)
    id_col = sample.columns[0]
    out = pd.DataFrame({id_col: sample[id_col].astype(str).to_numpy()})
    answer = [str(c) for c in sample.columns[1:]]
    if len(answer) == 1 and answer[0] not in classes:
        column = sample[sample.columns[1]]
        numeric = pd.api.types.is_integer_dtype(column.dtype)
        out[sample.columns[1]] = pred[order] if numeric else names[pred[order]]
        return out
    unknown = [c for c in answer if c not in classes]
    if unknown:
        raise DataError(f"{where}: header names class(es) the predictions do not have: {examples(unknown)}",
                        f"the classes are {', '.join(classes)}")
    if len(answer) > 1:
        lacking = [c for c in classes if c not in answer]
        if lacking:
            raise DataError(f"{where}: class-list mismatch: the header lacks {examples(lacking)} "
                            f"(it has {', '.join(answer)})", "the sample and the run must have the same classes")
    index = {c: i for i, c in enumerate(classes)}
    p = np.asarray(probs)
    for c in sample.columns[1:]:
        out[c] = p[order, index[str(c)]]
    return out
