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
        try:
            return cls._from_json(meta, fallback)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # a value of the wrong shape (edited or damaged by hand): report the file, not the Python error
            raise RunError(f"model.json is malformed ({_first_line(exc)})",
                           "the file is damaged or was edited; retrain the fold") from None

    @classmethod
    def _from_json(cls, meta: Mapping[str, Any], fallback: Recipe | None) -> ModelRecord:
        heads = meta["heads"]
        if not isinstance(heads, list) or not heads:
            raise TypeError(f"heads must be a list of target names, not {heads!r:.60}")
        heads = [str(h) for h in heads]
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
    """Read the weights and the raw ``model.json`` written by :func:`save_checkpoint`; never unpickles.

    Raises:
        DataError: The checkpoint does not exist.
        RunError: It is not a safetensors file (truncated, empty, replaced), or ``model.json`` is not a JSON object.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist", "train the fold first, or check the run folder")
    meta_path = path.with_suffix(".json")
    meta = _read_record_json(meta_path) if meta_path.is_file() else {}
    try:
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors raises its own SafetensorError, and OSError for unreadable files
        raise RunError(f"{_where(path)} is not a safetensors checkpoint: {_first_line(exc)}",
                       "the file is damaged or was replaced; retrain the fold (nothing in it was run)") from None


def unreadable_weights(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as weights without running code from it; None when it can.

    A ``.safetensors`` file needs a valid header; anything else must load with ``torch.load(weights_only=True)``
    (tensors and plain containers only), as timm and Accelerate load it. Archives written by ``torch.save``
    are memory-mapped, so checking a large file reads little of it.
    """
    import pickle
    import warnings
    import zipfile

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
            return None
        import torch

        with warnings.catch_warnings():  # torch's note on unusual pickle protocols adds nothing to the answer
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        return "it is a pickle that would run code or build objects other than tensors (refused: nothing in it ran)"
    except Exception as exc:  # the loaders' own error types: SafetensorError, RuntimeError, EOFError, IndexError...
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _where(path: Path) -> str:
    """``folds/0/model.safetensors`` for a file in a run folder (the run's own layout), else the path."""
    parts = path.parts
    return "/".join(parts[-3:]) if len(parts) >= 3 and parts[-3] == "folds" else str(path)


def _read_record_json(path: Path) -> dict[str, Any]:
    """``model.json`` as a dict; RunError naming it when it is not JSON or not an object."""
    try:
        meta = read_json(path)
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RunError(f"{_where(path)} is not valid JSON: {_first_line(exc)}",
                       "the file is damaged or was edited; retrain the fold") from None
    if not isinstance(meta, dict):
        raise RunError(f"{_where(path)} holds a JSON {type(meta).__name__}, not the checkpoint record",
                       "the file is damaged or was edited; retrain the fold")
    return meta


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
    meta = _read_record_json(meta_path)
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

