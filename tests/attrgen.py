"""Constructed per-attribute runs in the mask competition's layout: mask × gender × age, 18 combined classes.

Each row is a person's photo with three attributes; a single-attribute run is written through the store
like a trained one (:mod:`rungen`), with out-of-fold probabilities whose accuracy is given, so that
composition can be checked against the product rule without training a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from rungen import BASE_RECIPE, merged, probabilities, train_run

from toolkit.store import Run

PARTS = {"mask": ["wear", "incorrect", "normal"], "gender": ["male", "female"], "age": ["<30", "30-59", ">=60"]}
# The competition's shares: five of seven photos wear a mask; few people are 60 or over.
SHARES = {"mask": [5 / 7, 1 / 7, 1 / 7], "gender": [0.4, 0.6], "age": [0.47, 0.45, 0.08]}
COMBINED = "label18"


def attribute_rows(people: int = 60, photos: int = 7, folds: int = 3, seed: int = 0) -> pd.DataFrame:
    """One row per photo: ``path``, each attribute, ``fold`` (a person's photos share one fold)."""
    rng = np.random.default_rng(seed)
    rows = []
    for person in range(people):
        gender = rng.choice(PARTS["gender"], p=SHARES["gender"])
        age = rng.choice(PARTS["age"], p=SHARES["age"])
        for k in range(photos):
            mask = "wear" if k < 5 else ("incorrect" if k == 5 else "normal")
            rows.append({"path": f"images/{person:06d}_{gender}_{age}/photo{k}.jpg", "mask": mask, "gender": gender,
                         "age": age, "fold": person % folds})
    return pd.DataFrame(rows)


def recipe(label: str) -> dict:
    """A run's recipe: trained on ``label``, with the combined label defined as the competition's."""
    return merged(BASE_RECIPE, {"targets": {"label": label,
                                            "combine": {COMBINED: {"columns": list(PARTS), "separator": "_"}}}})


def attribute_run(root: Path, rows: pd.DataFrame, part: str, accuracy: float, seed: int,
                  folds: np.ndarray | None = None) -> Run:
    """A finished single-attribute run over ``rows`` (its own ``folds`` when given)."""
    classes = PARTS[part]
    labels = np.array([classes.index(v) for v in rows[part]])
    probs = probabilities(labels, len(classes), accuracy, seed)
    return train_run(root, part, classes=classes, labels=labels, probs=probs,
                     folds=rows["fold"].to_numpy() if folds is None else folds, recipe=recipe(part),
                     paths=rows["path"].tolist())


def attribute_runs(root: Path, rows: pd.DataFrame, accuracy: Mapping[str, float] | None = None) -> dict[str, Run]:
    """One run per attribute on the same rows and folds."""
    accuracy = accuracy or {"mask": 0.9, "gender": 0.85, "age": 0.7}
    return {part: attribute_run(root, rows, part, accuracy[part], seed=i) for i, part in enumerate(PARTS)}
