"""What a recipe may hold: the range of every number in it, and the rules that tie keys together.

The loader checks each value against :data:`LIMITS` as it reads a file, so an error names the file it is
in; :func:`check_values` checks a whole recipe however it was built (a file, ``--set``, Python), before
any data is read or any run folder exists. Neither needs torch: a value that cannot train fails in the
time it takes to read the recipe, not as a crash deep inside timm or albumentations.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from toolkit.config.schema import Recipe
from toolkit.errors import RecipeError


@dataclass(frozen=True)
class Range:
    """Bounds of a number, or of every item of a list of numbers, and the length such a list must have."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    length: int | None = None
    example: str | None = None

    def rule(self) -> str:
        """``> 0 and ≤ 1``: the bounds as a reader writes them."""
        parts = [f"{sign} {_number(bound)}" for sign, bound in (("≥", self.ge), (">", self.gt), ("≤", self.le),
                                                                 ("<", self.lt)) if bound is not None]
        return " and ".join(parts)

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds."""
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_SEED = Range(ge=0, le=2**32 - 1, example="42")  # numpy and scikit-learn take seeds in [0, 2**32)
_SHARE = Range(ge=0, lt=1)

#: The range of every numeric recipe key (``[]`` stands for any item of a list of tables). A list of
#: numbers has each item checked; ``length`` fixes how many it holds.
LIMITS: dict[str, Range] = {
    "data.image_size": Range(ge=8, example="224"),
    "data.eval_size": Range(ge=8, example="256"),
    "data.mean": Range(length=3, example="[0.485, 0.456, 0.406]"),
    "data.std": Range(gt=0, length=3, example="[0.229, 0.224, 0.225]"),  # pixels are divided by it
    "data.num_workers": Range(ge=0),
    "data.cache_ram_mb": Range(ge=0),
    "data.cache_disk_gb": Range(gt=0, example="50"),
    "targets.head_weights": Range(ge=0),
    "split.folds": Range(ge=2, example="5"),
    "split.holdout": Range(gt=0, lt=1, example="0.2"),
    "split.seed": _SEED,
    "model.drop_rate": _SHARE,
    "model.drop_path_rate": _SHARE,
    "aug.crop_pct": Range(gt=0, le=1, example="0.875"),
    "aug.scale": Range(gt=0, le=1, length=2, example="[0.5, 1.0]"),
    "aug.intermediate_size": Range(ge=8, example="64"),
    "aug.mixup_alpha": Range(ge=0),
    "aug.cutmix_alpha": Range(ge=0),
    "aug.mix_prob": Range(ge=0, le=1),
    "loss.label_smoothing": _SHARE,
    "loss.effective_beta": _SHARE,
    "loss.gamma": Range(ge=0),
    "loss.alpha": Range(ge=0, le=1),
    "loss.components[].weight": Range(ge=0),
    "optim.lr": Range(gt=0, example="1e-3"),
    "optim.weight_decay": Range(ge=0, example="0.05"),
    "optim.momentum": _SHARE,
    "optim.layer_decay": Range(gt=0, example="0.75"),
    "sched.warmup_epochs": Range(ge=0),
    "sched.warmup_lr": Range(ge=0),
    "sched.min_lr": Range(ge=0),
    "sched.decay_epochs": Range(gt=0),
    "sched.decay_rate": Range(gt=0),
    "train.epochs": Range(ge=1),
    "train.batch_size": Range(ge=1),
    "train.seed": _SEED,
    "train.grad_accum": Range(ge=1),
    "train.grad_clip": Range(gt=0, example="1.0"),
    "train.patience": Range(ge=1),
    "train.epoch_samples": Range(ge=1),
    "train.ema_decay": Range(ge=0, le=1),
    "train.log_every": Range(ge=1),
    "sweep.trials": Range(ge=1, example="20"),
    "sweep.timeout": Range(gt=0, example="3600"),
    "sweep.seed": _SEED,
    "sweep.startup_trials": Range(ge=0),
    "sweep.warmup_epochs": Range(ge=0),
    "sweep.p_threshold": Range(gt=0, lt=1, example="0.1"),
    "sweep.heartbeat": Range(ge=1, example="60"),
    "sweep.retries": Range(ge=0),
}

_INDEX = re.compile(r"\[\d+\]")


def template(key: str) -> str:
    """``loss.components[2].weight`` → ``loss.components[].weight``: the key :data:`LIMITS` knows it by."""
    return _INDEX.sub("[]", key)


def range_error(key: str, value: Any) -> RecipeError | None:
    """The error for ``value`` at ``key`` when it is out of range (``key`` as the user wrote it), else None."""
    limit = LIMITS.get(template(key))
    if limit is None or value is None:
        return None
    hint = f"e.g. {key} = {limit.example}" if limit.example else f"`clsctl recipe keys {key.split('.')[0]}` lists each range"
    if isinstance(value, list):
        if limit.length is not None and len(value) != limit.length:
            return RecipeError(f"`{key}` holds {len(value)} value(s); it takes {limit.length}", hint)
        items = list(enumerate(value))
    else:
        items = [(None, value)]
    for i, item in items:
        if isinstance(item, int | float) and not isinstance(item, bool) and not limit.holds(item):
            where = key if i is None else f"{key}[{i}]"
            return RecipeError(f"`{where}` = {_number(item)} is out of range: it must be {limit.rule()}", hint)
    return None


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of every value in a recipe, lists of tables and tables of tables included."""
    for f in dataclasses.fields(node):
        key, value = f"{prefix}.{f.name}" if prefix else f.name, getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, key)
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                yield from _leaves(item, f"{key}[{i}]")
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            for name, item in value.items():
                yield from _leaves(item, f"{key}.{name}")
        else:
            yield key, value


def check_values(recipe: Recipe) -> None:
    """Every number finite and in range, and the keys that depend on each other agreeing.

    Raises:
        RecipeError: Naming the key (or keys) and how to fix it.
    """
    for key, value in _leaves(recipe):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise RecipeError(f"`{key}` = {item} is not a finite number", f"write a number for {key}")
        error = range_error(key, value)
        if error is not None:
            raise error
    data, aug, t, targets = recipe.data, recipe.aug, recipe.train, recipe.targets
    if recipe.model.in_chans != 3:
        raise RecipeError(f"`model.in_chans` = {recipe.model.in_chans}: clsctl reads every image as RGB, so the "
                          "model takes 3 channels", "remove model.in_chans (grey images are read as three equal channels)")
    if aug.scale[0] > aug.scale[1]:
        raise RecipeError(f"`aug.scale` = {aug.scale}: the smallest crop area comes first",
                          f"write aug.scale = [{aug.scale[1]}, {aug.scale[0]}]")
    if (data.mean is None) != (data.std is None):
        given, missing = ("data.mean", "data.std") if data.std is None else ("data.std", "data.mean")
        raise RecipeError(f"`{given}` is set without `{missing}`: explicit normalization needs both",
                          "set both, e.g. mean = [0.485, 0.456, 0.406] and std = [0.229, 0.224, 0.225]")
    if data.normalize == "dataset" and data.mean is None and not data.stats_file:
        raise RecipeError('data.normalize = "dataset" needs `data.stats_file`',
                          "point data.stats_file at the eda.json that `clsctl eda` wrote for the training data")
    heads = targets.heads
    if targets.head_weights is not None and len(targets.head_weights) != len(heads):
        raise RecipeError(f"`targets.head_weights` has {len(targets.head_weights)} value(s) for {len(heads)} "
                          "`targets.heads`", "give one weight per entry of targets.heads")
    mixing = aug.mixup_alpha > 0 or aug.cutmix_alpha > 0
    if mixing and len(heads) > 1:
        raise RecipeError("`aug.mixup_alpha` / `aug.cutmix_alpha` work with one head only, and `targets.heads` "
                          f"names {len(heads)}", "turn MixUp/CutMix off for multi-head recipes")
    if mixing and t.batch_size % 2:
        raise RecipeError(f"`train.batch_size` = {t.batch_size}: MixUp/CutMix (`aug.mixup_alpha`, `aug.cutmix_alpha`) "
                          "pair images, so it must be even", f"set train.batch_size = {t.batch_size + 1}")
