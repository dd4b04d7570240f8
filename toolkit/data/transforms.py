"""Train and eval transforms built from one recipe, so predict/TTA can never drift from training.

Both pipelines share the resize and normalization steps; the train pipeline adds the augmentation
preset, the optional flip and the recipe's extra albumentations transforms. Eval is what predict
uses: it is derived here and nowhere else.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from toolkit.config.schema import AugConfig, DataConfig, Recipe
from toolkit.data.preprocessing import Preprocessing
from toolkit.errors import DataError, RecipeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _preset_none() -> list[Any]:
    return []


def _preset_light() -> list[Any]:
    import albumentations as A

    return [
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ]


def _preset_medium() -> list[Any]:
    import albumentations as A

    return [
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10, p=0.3),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.3),
    ]


def _preset_sketch() -> list[Any]:
    import albumentations as A

    # Stroke width varies between artists; erosion thickens dark strokes on a light page, dilation thins them.
    return [
        A.OneOf([A.Morphological(scale=(2, 3), operation="erosion"),
                 A.Morphological(scale=(2, 3), operation="dilation")], p=0.4),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), fill=255, p=0.7),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15),
                        fill=255, p=0.3),
    ]


def _preset_face() -> list[Any]:
    import albumentations as A

    return [
        A.CLAHE(clip_limit=(1, 3), p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        A.Affine(scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), rotate=(-8, 8), p=0.5),
    ]


PRESETS: dict[str, Callable[[], list[Any]]] = {
    "none": _preset_none,
    "light": _preset_light,
    "medium": _preset_medium,
    "sketch": _preset_sketch,
    "face": _preset_face,
}


def list_presets() -> list[str]:
    """Names of the augmentation presets."""
    return sorted(PRESETS)


def transform_from_spec(spec: dict[str, Any], key: str = "aug.transforms") -> Any:
    """Build one albumentations transform from ``{ name = "CLAHE", p = 0.3, ... }``.

    Raises:
        RecipeError: unknown transform or argument, or a value albumentations rejects.
    """
    import difflib

    import albumentations as A

    spec = dict(spec)
    name = spec.pop("name", None)
    if not isinstance(name, str):
        raise RecipeError(f"`{key}` entry {spec} has no `name`", 'write { name = "CLAHE", p = 0.3 }')
    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
        close = difflib.get_close_matches(name, [n for n in dir(A) if n[:1].isupper()], n=1)
        hint = f"did you mean `{close[0]}`?" if close else "see albumentations' list of transforms"
        raise RecipeError(f"`{key}`: albumentations has no transform `{name}`", hint)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in spec if k not in params]
        if unknown:
            valid = [p for p in params if p not in ("self", "args", "kwargs")]
            raise RecipeError(f"`{key}`: {name} has no argument `{unknown[0]}`", f"valid arguments: {', '.join(valid)}")
    try:
        return cls(**spec)
    except Exception as exc:  # albumentations validates with pydantic: turn its message into one line
        first = str(exc).strip().splitlines()
        raise RecipeError(f"`{key}`: {name}({', '.join(f'{k}={v!r}' for k, v in spec.items())}) is invalid: "
                          f"{' '.join(first[:3])}", "check the argument values in albumentations' documentation") from None


def resolve_normalization(data: DataConfig, model_cfg: dict[str, Any] | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0..1 units) from ``data.normalize``, explicit ``data.mean/std`` winning."""
    if data.mean is not None or data.std is not None:
        if data.mean is None or data.std is None or len(data.mean) != len(data.std):
            raise RecipeError("data.mean and data.std must both be set, with one value per channel",
                              "set both, e.g. mean = [0.5, 0.5, 0.5] and std = [0.5, 0.5, 0.5]")
        return tuple(data.mean), tuple(data.std)
    if data.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if data.normalize == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if data.normalize == "model":
        cfg = model_cfg or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    # "dataset": the statistics `clsctl eda` measured and wrote to eda.json
    if not data.stats_file:
        raise RecipeError('data.normalize = "dataset" needs data.stats_file', 'point it at the eda.json of `clsctl eda`')
    return read_dataset_stats(data.stats_file)


def read_dataset_stats(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std (0..1 units) that ``clsctl eda`` wrote to an ``eda.json``.

    Raises:
        DataError: The file is missing, is not JSON, or lacks three finite means and three positive stds.
    """
    import math

    path = Path(path)
    try:
        stats = json.loads(path.read_bytes())["stats"]
        mean, std = [float(m) for m in stats["mean"]], [float(s) for s in stats["std"]]
    except FileNotFoundError:
        raise DataError(f"data.stats_file {path} does not exist", "run `clsctl eda` on the training data first") from None
    except IsADirectoryError:
        raise DataError(f"data.stats_file {path} is a folder", "point it at the eda.json inside it") from None
    except (KeyError, TypeError, ValueError):  # not JSON, not UTF-8, or not the layout eda writes
        raise DataError(f"data.stats_file {path} has no stats.mean / stats.std",
                        "use the eda.json written by `clsctl eda`") from None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        # a std of 0 (one flat colour in a channel) would divide the pixels by zero
        raise DataError(f"data.stats_file {path}: mean {mean} / std {std} are not 3 finite means and 3 positive stds",
                        "run `clsctl eda` again on the training data, or set data.normalize = \"imagenet\"")
    return tuple(mean), tuple(std)


def _timm_auto_augment(spec: str, size: int, mean: Sequence[float]) -> Any:
    """timm's RandAugment / AutoAugment / AugMix policy, as one albumentations step on uint8 images."""
    import re

    import albumentations as A
    import numpy as np
    from PIL import Image
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    # timm skips sections it does not know; a typo would then silently train without the intended policy.
    if spec.startswith("rand"):
        bad = [part for part in spec.split("-")[1:] if not re.fullmatch(r"(mstd|mmax|inc|m|n|w|p|t)[\d.]+", part)]
        if bad:
            raise RecipeError(f"aug.randaugment: `{spec}` has unknown part(s) {bad}",
                              "parts are m<magnitude>, n<ops>, mstd<std>, mmax<max>, inc<0|1>, w<weights>, p<prob>")
    hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(int(round(255 * m)) for m in mean)}
    try:
        if spec.startswith("rand"):
            policy = rand_augment_transform(spec, hparams)
        elif spec.startswith("augmix"):
            policy = augment_and_mix_transform(spec, hparams)
        else:
            policy = auto_augment_transform(spec, hparams)
    except (AssertionError, KeyError, ValueError) as exc:
        raise RecipeError(f"aug.randaugment: timm cannot parse `{spec}` ({exc})",
                          'e.g. "rand-m9-mstd0.5-inc1", "original", "augmix-m5-w4-d2"') from None

    def apply(image: Any, **_: Any) -> Any:
        # timm's policies draw from Python's `random` (seeded per sample by the dataset) and from numpy's
        # global generator (RandAugment picks its ops there): seed the latter from the former.
        import random

        np.random.seed(random.getrandbits(32))
        return np.asarray(policy(Image.fromarray(image)))

    return A.Lambda(image=apply, name=f"timm:{spec}")


def _resize_steps(prep: Preprocessing, size: int, train: bool) -> list[Any]:
    """The record's resize to ``size``, after its fixed intermediate size when it has one."""
    import albumentations as A

    if not prep.intermediate_size:
        return _final_resize(prep, size, train)
    if prep.intermediate_size < 1:
        raise RecipeError(f"aug.intermediate_size must be a positive number of pixels, not {prep.intermediate_size}",
                          "e.g. aug.intermediate_size = 64, at or below most images' shorter side")
    # Every image passes through the same shorter side, so its native resolution (and the JPEG blocks an
    # area filter averages away when shrinking) no longer tells its source. Bilinear when enlarging: the
    # area filter enlarges by repeating pixels, blocks only small images would show.
    through = A.SmallestMaxSize(max_size=int(prep.intermediate_size), interpolation=1, area_for_downscale="image")
    return [through, *_final_resize(prep, size, train)]


def _final_resize(prep: Preprocessing, size: int, train: bool) -> list[Any]:
    import albumentations as A

    if prep.resize == "random_resized_crop":
        if train:
            return [A.RandomResizedCrop(size=(size, size), scale=tuple(prep.scale))]
        pre = max(size, round(size / prep.crop_pct))
        return [A.SmallestMaxSize(max_size=pre), A.CenterCrop(size, size)]
    if prep.resize == "center_crop":
        pre = max(size, round(size / prep.crop_pct))
        return [A.SmallestMaxSize(max_size=pre), A.CenterCrop(size, size)]
    if prep.resize == "letterbox":
        return [A.LongestMaxSize(max_size=size), A.PadIfNeeded(size, size, border_mode=0, fill=0)]
    if prep.crop_pct < 1.0:
        pre = round(size / prep.crop_pct)
        return [A.Resize(pre, pre), A.CenterCrop(size, size)]
    return [A.Resize(size, size)]


def build_transform(recipe: Recipe, *, train: bool, mean: Sequence[float], std: Sequence[float],
                    size: int | None = None, to_tensor: bool = True) -> Any:
    """The albumentations pipeline of a recipe for training (``train=True``) or evaluation/prediction.

    ``to_tensor=False`` stops before normalization and yields uint8 HWC images: what the trainer's and
    predict's data loaders produce (they normalize whole batches with
    :class:`toolkit.data.dataset.BatchNormalize`, which gives the same floats) and what previews show.
    """
    prep = Preprocessing.from_recipe(recipe, mean, std)
    if train:
        return train_pipeline(recipe.aug, prep, size=size, to_tensor=to_tensor)
    return eval_pipeline(prep, size=size, to_tensor=to_tensor)


def eval_pipeline(prep: Preprocessing, *, size: int | None = None, to_tensor: bool = True) -> Any:
    """The eval pipeline of a preprocessing record: resize (and crop) to ``size`` (default its eval size)."""
    steps = list(_resize_steps(prep, size or prep.eval_size, train=False))
    return _compose(steps, prep, to_tensor)


def train_pipeline(aug: AugConfig, prep: Preprocessing, *, size: int | None = None, to_tensor: bool = True) -> Any:
    """The train pipeline: the record's resize, then the augmentation of ``aug`` (flip, preset, policies)."""
    import albumentations as A

    size = size or prep.image_size
    steps = list(_resize_steps(prep, size, train=True))
    if aug.preset not in PRESETS:
        import difflib

        close = difflib.get_close_matches(aug.preset, PRESETS, n=1)
        raise RecipeError(f"aug.preset: no preset `{aug.preset}` (presets: {', '.join(list_presets())})",
                          f"did you mean `{close[0]}`?" if close else "choose one of the presets")
    if aug.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps += PRESETS[aug.preset]()
    if aug.randaugment:
        steps.append(_timm_auto_augment(aug.randaugment, size, prep.mean))
    steps += [transform_from_spec(s, f"aug.transforms[{i}]") for i, s in enumerate(aug.transforms)]
    return _compose(steps, prep, to_tensor)


def _compose(steps: list[Any], prep: Preprocessing, to_tensor: bool) -> Any:
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    if to_tensor:
        steps += [A.Normalize(mean=tuple(prep.mean), std=tuple(prep.std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


def validate_aug(recipe: Recipe) -> None:
    """Build the train pipeline once so a bad preset or transform fails before any data is read."""
    build_transform(recipe, train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def pipeline_record(recipe: Recipe, *, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """Both built pipelines in albumentations' own serialization, for ``transforms.json`` in a run.

    ``load_pipeline`` rebuilds them without the recipe; timm policies are stored by their spec string.
    """
    import albumentations as A

    return {"format": 1, "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "train_size": recipe.data.image_size,
            "train": A.to_dict(build_transform(recipe, train=True, mean=mean, std=std)),
            "eval": A.to_dict(build_transform(recipe, train=False, mean=mean, std=std))}


def _lambda_names(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["__name__"]] if node.get("__class_fullname__") == "Lambda" and "__name__" in node else []
        return found + [n for v in node.values() for n in _lambda_names(v)]
    if isinstance(node, list):
        return [n for v in node for n in _lambda_names(v)]
    return []


def load_pipeline(record: dict[str, Any] | str | Path, which: str = "eval") -> Any:
    """Rebuild the ``train`` or ``eval`` pipeline saved by ``pipeline_record`` (a dict or a path to it)."""
    import albumentations as A

    if not isinstance(record, dict):
        path = Path(record)
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read the saved pipeline {path} ({exc})", "the run folder is incomplete; re-train") from None
    if which not in ("train", "eval"):
        raise ValueError(f"which must be 'train' or 'eval', not {which!r}")
    tree = record[which]
    extra = {}
    for name in _lambda_names(tree):
        if not name.startswith("timm:"):
            raise DataError(f"saved pipeline step `{name}` cannot be rebuilt", "rebuild it from the run's recipe")
        # timm policies exist only in the train pipeline, built at the train size
        extra[name] = _timm_auto_augment(name[len("timm:"):], record["train_size"], record["mean"])
    return A.from_dict(tree, nonserializable=extra or None)
