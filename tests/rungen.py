"""Train and ensemble runs made of constructed numbers, written through the store like real ones.

The report reads runs; what it shows must not depend on a model having been trained, so tests and
the report benchmark build run folders directly: a recipe, per-epoch metrics, per-fold summaries and
an out-of-fold table whose rows are exactly the probabilities given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from toolkit.calibration import log_probs, softmax
from toolkit.metrics import classification_metrics, cv_summary
from toolkit.store import Run, RunStore
from toolkit.store.tables import probability_frame

BASE_RECIPE: dict[str, Any] = {
    "name": "synthetic",
    "data": {"root": "data", "image_size": 32},
    "model": {"name": "resnet18", "pretrained": False},
    "loss": {"name": "ce", "label_smoothing": 0.0},
    "optim": {"name": "adamw", "lr": 1e-3},
    "train": {"epochs": 3, "metric": "macro_f1"},
}


def probabilities(labels: np.ndarray, n_classes: int, accuracy: float, seed: int) -> np.ndarray:
    """Rows whose argmax is the label for about ``accuracy`` of them, another class for the rest."""
    rng = np.random.default_rng(seed)
    n = labels.shape[0]
    pred = labels.copy()
    wrong = rng.random(n) > accuracy
    pred[wrong] = (labels[wrong] + rng.integers(1, n_classes, wrong.sum())) % n_classes
    probs = rng.random((n, n_classes)) * 0.5
    probs[np.arange(n), pred] += 1.0 + rng.random(n)
    return probs / probs.sum(axis=1, keepdims=True)


def imbalanced(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact log-posteriors of two-dimensional Gaussian classes with priors 85 / 10 / 5 %: the argmax is
    the Bayes rule for accuracy, so it under-predicts the rare classes that macro-F1 weighs equally."""
    rng = np.random.default_rng(seed)
    prior, mu = np.array([0.85, 0.10, 0.05]), np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    y = rng.choice(3, size=n, p=prior)
    x = mu[y] + rng.normal(size=(n, 2))
    return log_probs(softmax(np.log(prior) - 0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(-1))), y


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with dotted keys (``"loss.name"``) replaced."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        if section:
            out.setdefault(section, {})[key] = value
        else:
            out[key] = value
    return out


def train_run(root: Path, name: str, *, classes: Sequence[str], labels: np.ndarray, probs: np.ndarray,
              folds: np.ndarray, recipe: Mapping[str, Any] | None = None, paths: Sequence[str] | None = None,
              epochs: int = 3, data_root: str | None = None, parents: Sequence[str] = ()) -> Run:
    """A finished k-fold train run with these OOF probabilities."""
    classes = [str(c) for c in classes]
    recipe = dict(recipe or BASE_RECIPE)
    run = RunStore(root).create("train", name=name, recipe=tomli_w.dumps(recipe), parents=parents,
                                extra={"folds": sorted(int(k) for k in np.unique(folds)),
                                       **({"data_root": data_root} if data_root else {})})
    ids = list(paths) if paths is not None else [f"img/{i:06d}.png" for i in range(labels.shape[0])]
    per_fold: dict[str, Any] = {}
    for k in np.unique(folds):
        rows = folds == k
        scores = classification_metrics(labels[rows], probs[rows], classes)
        per_fold[str(int(k))] = {"fold": int(k), "best_epoch": epochs - 1, "best_score": scores["macro_f1"],
                                 "epochs_run": epochs, "metrics": scores}
        for epoch in range(epochs):
            # A curve that rises to the fold's final score, so charts have something to draw.
            share = (epoch + 1) / epochs
            run.append_metrics({"fold": int(k), "epoch": epoch, "train_loss": 1.5 - share, "val_loss": 1.6 - share,
                                "macro_f1": scores["macro_f1"] * share, "accuracy": scores["accuracy"] * share,
                                "lr": 1e-3 * (1 - epoch / epochs) + 1e-6})
    run.write_oof(probability_frame(ids, ids, {"label": probs}, {"label": classes}, folds=folds,
                                    labels={"label": labels}))
    run.update_summary({"metric": recipe.get("train", {}).get("metric", "macro_f1"), "heads": ["label"],
                        "classes": {"label": classes}, "folds": per_fold,
                        "cv": cv_summary([v["metrics"] for v in per_fold.values()]),
                        "oof": classification_metrics(labels, probs, classes), "oof_rows": int(labels.shape[0])})
    run.finish()
    return run
