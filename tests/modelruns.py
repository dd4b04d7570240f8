"""Train runs whose fold checkpoints are given models, written through the store like the trainer's.

Export and explanation read a run's checkpoints, records, manifest and out-of-fold table; none of it
depends on how the weights were found, so tests write a run around any model in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w

from toolkit.config.schema import ModelConfig
from toolkit.data.preprocessing import Preprocessing
from toolkit.models import ModelRecord, create_model, model_settings, save_checkpoint
from toolkit.store import Run, RunStore
from toolkit.store.tables import probability_frame


def model_run(runs: Path, data: Path, rows: pd.DataFrame, *, arch: str, classes: dict[str, list[str]],
              folds: Sequence[int] = (0, 1), size: int = 32, kwargs: dict[str, Any] | None = None,
              tta: dict[str, Any] | None = None, resize: str = "stretch", crop_pct: float = 1.0,
              build: Callable[[int], Any] | None = None, seed: int = 0, name: str = "model") -> Run:
    """A finished train run over ``rows`` (``path`` relative to ``data``, one column per head, ``fold``).

    Each fold's model is ``build(fold)`` or a fresh ``arch`` with seed ``seed + fold``; the out-of-fold
    table holds each fold model's softmax on its own rows only when ``oof`` columns are in ``rows``.
    """
    import torch

    heads = list(classes)
    recipe = {"data": {"root": str(data), "image_size": size}, "model": {"name": arch, "pretrained": False,
              "kwargs": dict(kwargs or {})}, "aug": {"resize": resize, "crop_pct": crop_pct},
              "train": {"epochs": 1, "seed": 0}}
    if len(heads) > 1:
        recipe["targets"] = {"heads": heads}
    if tta:
        recipe["tta"] = tta
    run = RunStore(runs).create("train", name=name, recipe=tomli_w.dumps(recipe),
                                extra={"folds": list(folds), "data_root": str(data)})
    run.write_manifest(rows)
    run.write_classes(heads, classes)
    cfg = ModelConfig(name=arch, pretrained=False, kwargs=dict(kwargs or {}), channels_last=False)
    prep = Preprocessing(image_size=size, eval_size=size, resize=resize, crop_pct=crop_pct)
    sizes = [len(classes[h]) for h in heads]
    per_fold = {}
    for k in folds:
        torch.manual_seed(seed + k)
        model = build(k) if build is not None else create_model(cfg, sizes if len(heads) > 1 else sizes[0],
                                                                heads if len(heads) > 1 else None)
        record = ModelRecord(arch=arch, heads=heads, classes=classes, preprocessing=prep, model=model_settings(cfg),
                             fold=k).with_best(0, 0.5 + 0.1 * k, "macro_f1")
        save_checkpoint(model, run.checkpoint_path(k), record)
        run.write_fold_done(k, {"fold": k})
        per_fold[str(k)] = {"fold": k, "best_score": 0.5 + 0.1 * k}
    run.update_summary({"metric": "macro_f1", "heads": heads, "classes": classes, "folds": per_fold})
    run.finish()
    return run


def write_oof(run: Run, rows: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> None:
    """Give a single-head run an out-of-fold table with these probabilities."""
    labels = np.array([classes.index(v) for v in rows["label"]])
    run.write_oof(probability_frame(rows["path"], rows["path"], {"label": probs}, {"label": classes},
                                    folds=rows["fold"].to_numpy(), labels={"label": labels}))
