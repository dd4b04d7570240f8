"""The checkpoint record: what a fold's ``model.safetensors`` holds, and ``model.json`` beside it.

``model.json`` names the architecture, the heads and their classes, and one preprocessing record
(sizes, resize mode, crop, scale, mean/std, cache side), so one call — :func:`load_fold_model` —
rebuilds a fold's model and its eval pipeline with no recipe. Weights are safetensors (nothing is
ever unpickled), laid out so a single-head checkpoint loads straight into
``timm.create_model(arch, pretrained=True, num_classes=N, pretrained_cfg_overlay=dict(file=..., num_classes=N))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.data.preprocessing import Preprocessing
from toolkit.errors import DataError, RunError
from toolkit.store.atomic import atomic_write_bytes, atomic_write_json, read_json

if TYPE_CHECKING:
    import torch
    from torch import nn

    from toolkit.config.schema import ModelConfig, Recipe
    from toolkit.store import Run

# model.json keys that are not the preprocessing record's own fields.
_MODEL_KEYS = ("name", "kwargs", "drop_rate", "drop_path_rate", "in_chans", "channels_last")


@dataclass(frozen=True)
class ModelRecord:
    """``model.json``: everything needed to rebuild a fold's model and feed it.

    Attributes:
        arch: The timm architecture name.
        heads: Target names (one for a single-head model).
        classes: Class list per head, in logit order.
        preprocessing: How images become input.
        model: The recipe's ``[model]`` keys that shape the network (kwargs, dropout, channels).
        fold: The fold the weights were validated on.
        weights: ``raw``, or ``ema`` when the EMA weights were validated and saved.
        epoch, score, metric: The best epoch, its selection score and the metric's name.
    """

    arch: str
    heads: list[str]
    classes: dict[str, list[str]]
    preprocessing: Preprocessing
    model: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None
    weights: str = "raw"
    epoch: int | None = None
    score: float | None = None
    metric: str | None = None

    @property
    def multi_head(self) -> bool:
        return len(self.heads) > 1

    @property
    def head_sizes(self) -> list[int]:
        """Logit columns of each head, in head order."""
        return [len(self.classes[h]) for h in self.heads]

    def with_best(self, epoch: int, score: float, metric: str) -> ModelRecord:
        """This record with the best epoch and its score."""
        return dataclasses.replace(self, epoch=epoch, score=score, metric=metric)

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` layout (the flat keys older readers know, plus ``preprocessing`` and ``model``)."""
        prep = self.preprocessing
        single = not self.multi_head
        return {
            "arch": self.arch, "fold": self.fold, "heads": list(self.heads),
            "classes": list(self.classes[self.heads[0]]) if single else {h: list(self.classes[h]) for h in self.heads},
            "num_classes": self.head_sizes[0] if single else self.head_sizes,
            "in_chans": prep.in_chans, "image_size": prep.image_size, "eval_size": prep.eval_size,
            "mean": list(prep.mean), "std": list(prep.std), "resize": prep.resize, "crop_pct": prep.crop_pct,
            "weights": self.weights, "multi_head": self.multi_head,
            "preprocessing": prep.to_dict(), "model": dict(self.model),
            **({"epoch": self.epoch, "score": self.score, "metric": self.metric} if self.epoch is not None else {}),
        }

    @classmethod
    def from_json(cls, meta: Mapping[str, Any], fallback: Recipe | None = None) -> ModelRecord:
        """Read ``model.json``; keys that files written by older releases lack come from ``fallback``.

        Args:
            meta: The parsed JSON.
            fallback: The run's recipe, consulted only for keys the file lacks (scale, cache, model kwargs).

        Raises:
            RunError: The file lacks what no fallback can give (architecture, classes, mean/std, size).
        """
        missing = [k for k in ("arch", "heads", "classes", "mean", "std", "image_size") if k not in meta]
        if missing:
            raise RunError(f"model.json lacks {', '.join(missing)}",
                           "the checkpoint was not written by clsctl train; retrain the fold")
        heads = [str(h) for h in meta["heads"]]
        raw = meta["classes"]
        classes = {h: [str(c) for c in raw[h]] for h in heads} if isinstance(raw, dict) else {heads[0]: [str(c) for c in raw]}
        base = None
        if fallback is not None:
            base = Preprocessing.from_recipe(fallback, mean=meta["mean"], std=meta["std"])
        flat = {k: meta[k] for k in ("image_size", "eval_size", "mean", "std", "resize", "crop_pct", "in_chans")
                if k in meta}
        prep = Preprocessing.from_dict({**flat, **dict(meta.get("preprocessing") or {})}, fallback=base)
        model = dict(meta.get("model") or {})
        if not model and fallback is not None:
            model = model_settings(fallback.model)
        model.setdefault("name", str(meta["arch"]))
        model.setdefault("in_chans", prep.in_chans)
        return cls(arch=str(meta["arch"]), heads=heads, classes=classes, preprocessing=prep, model=model,
                   fold=meta.get("fold"), weights=str(meta.get("weights", "raw")), epoch=meta.get("epoch"),
                   score=meta.get("score"), metric=meta.get("metric"))


def model_settings(cfg: ModelConfig) -> dict[str, Any]:
    """The ``[model]`` keys that shape the network, as stored in ``model.json`` (no weight sources)."""
    values = {k: getattr(cfg, k) for k in _MODEL_KEYS if hasattr(cfg, k)}
    values["kwargs"] = dict(values.get("kwargs") or {})
    return values


def save_checkpoint(model: nn.Module, path: str | Path, record: ModelRecord | Mapping[str, Any]) -> None:
    """Write ``model.safetensors`` and ``model.json`` beside it, both atomically."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # safetensors refuses tensors that share memory; tied weights are cloned so each key stands alone.
    seen: dict[int, str] = {}
    for key, value in list(state.items()):
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        if ptr in seen and ptr != -1:
            state[key] = value.clone()
        seen[ptr] = key
    atomic_write_bytes(path, save(state, metadata={"format": "pt"}))
    meta = record.to_json() if isinstance(record, ModelRecord) else dict(record)
    atomic_write_json(path.with_suffix(".json"), meta)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the weights and the raw ``model.json`` written by :func:`save_checkpoint`; never unpickles."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist", "train the fold first, or check the run folder")
    meta_path = path.with_suffix(".json")
    meta = read_json(meta_path) if meta_path.is_file() else {}
    return load_file(str(path)), meta


@dataclass
class FoldModel:
    """One fold's model, in eval mode, and its record."""

    fold: int
    model: nn.Module
    record: ModelRecord


def read_record(run: Run, fold: int) -> ModelRecord:
    """The checkpoint record of a run's fold (older files completed from the run's recipe)."""
    meta_path = run.checkpoint_path(fold).with_suffix(".json")
    if not meta_path.is_file():
        raise RunError(f"run {run.id} fold {fold} has no model.json", "train the fold to the end")
    meta = read_json(meta_path)
    fallback = None
    if not meta.get("preprocessing") or not meta.get("model"):
        fallback = run.read_recipe() if run.recipe_path.is_file() else None
    try:
        return ModelRecord.from_json(meta, fallback=fallback)
    except RunError as exc:
        raise RunError(f"run {run.id} fold {fold}: {exc.message}", exc.hint) from None


def load_fold_model(run: Run, fold: int) -> FoldModel:
    """Rebuild fold ``fold``'s model of a run (no pretrained download), load its weights, set eval mode."""
    import torch

    from toolkit.config.schema import ModelConfig
    from toolkit.models.factory import create_model

    record = read_record(run, fold)
    state, _ = load_checkpoint(run.checkpoint_path(fold))
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in record.model.items() if k in known})
    cfg = dataclasses.replace(cfg, name=record.arch, pretrained=False, pretrained_file=None)
    sizes = record.head_sizes
    model = create_model(cfg, sizes if record.multi_head else sizes[0], record.heads if record.multi_head else None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunError(f"run {run.id} fold {fold}: the checkpoint does not fit `{cfg.name}`: {first}",
                       "model.json and the weights disagree; retrain the fold") from None
    model.eval()
    if record.model.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return FoldModel(fold, model, record)


def preprocessing_key(record: ModelRecord) -> tuple[Any, ...]:
    """Folds whose records share this key share one data pass in prediction."""
    return (record.preprocessing, tuple(record.head_sizes))

