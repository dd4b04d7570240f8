"""The preprocessing record: everything that decides which pixels a model sees, in one value.

A checkpoint carries one (``model.json``), so prediction, export and explanations rebuild the eval
transform and the image loader of a fold from the record alone, never from a whole recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from toolkit.config.schema import Recipe


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input.

    Attributes:
        image_size: Side length in training.
        eval_size: Side length for validation and prediction.
        resize: ``stretch``, ``center_crop``, ``letterbox`` or ``random_resized_crop``.
        crop_pct: Share of the resized image kept by the center crop.
        scale: Area range of ``random_resized_crop`` in training.
        intermediate_size: Shorter side every image is resized to first (None: no such step).
        mean, std: Per-channel normalization in 0..1 units.
        in_chans: Input channels of the model.
        cache: Whether images are read through the decoded cache.
        cache_dir: The decoded cache's folder (None: the default under ``$CLSCTL_CACHE``).
        cache_disk_gb: The decoded cache's disk budget in GiB (None: unbounded).
    """

    image_size: int
    eval_size: int
    resize: str = "stretch"
    crop_pct: float = 1.0
    scale: tuple[float, float] = (0.08, 1.0)
    intermediate_size: int | None = None
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    in_chans: int = 3
    cache: bool = True
    cache_dir: str | None = field(default=None, compare=False)  # where, not what: two folders give equal pixels
    cache_disk_gb: float | None = field(default=None, compare=False)  # how much disk, not which pixels

    @classmethod
    def from_recipe(cls, recipe: Recipe, mean: Sequence[float], std: Sequence[float]) -> Preprocessing:
        """The record of a recipe, with the mean/std its normalization resolved to."""
        data, aug = recipe.data, recipe.aug
        return cls(image_size=int(data.image_size), eval_size=int(data.eval_size or data.image_size),
                   resize=aug.resize, crop_pct=float(aug.crop_pct), scale=(float(aug.scale[0]), float(aug.scale[1])),
                   intermediate_size=None if aug.intermediate_size is None else int(aug.intermediate_size),
                   mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                   in_chans=int(recipe.model.in_chans), cache=bool(data.cache), cache_dir=data.cache_dir,
                   cache_disk_gb=None if data.cache_disk_gb is None else float(data.cache_disk_gb))

    @property
    def cache_side(self) -> int:
        """The largest shorter side any transform of this record can use without upscaling cached pixels."""
        size = max(self.image_size, self.eval_size)
        side = size / min(self.crop_pct, 1.0)
        if self.resize == "random_resized_crop":
            # a crop of area fraction s spans about √s of the side before it is resized up to `size`
            side = max(side, size / math.sqrt(max(min(self.scale), 0.05)))
        return int(math.ceil(side))

    def image_loader(self, ram_mb: float = 0) -> Callable[[str], np.ndarray]:
        """The function that reads images for this record: the decoded cache, or a plain decode.

        Training and prediction both read through it, so they see the same pixels.
        """
        from toolkit.imaging.cache import image_loader

        return image_loader(self.cache_side if self.cache else None, self.cache_dir, ram_mb, self.cache_disk_gb)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        out = asdict(self)
        out["scale"], out["mean"], out["std"] = list(self.scale), list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], fallback: Preprocessing | None = None) -> Preprocessing:
        """Rebuild a record; keys it lacks (older files) come from ``fallback``, else the defaults."""
        base = fallback.to_dict() if fallback is not None else {}
        merged = {**base, **{k: v for k, v in values.items() if k in cls.__dataclass_fields__ and v is not None}}
        if "eval_size" not in merged:
            merged["eval_size"] = merged["image_size"]
        for key in ("scale", "mean", "std"):
            if key in merged:
                merged[key] = tuple(float(v) for v in merged[key])
        return cls(**merged)


def make_image_loader(recipe: Recipe, ram_mb: float | None = None) -> Callable[[str], np.ndarray]:
    """The image loader of a recipe (``ram_mb`` defaults to its ``data.cache_ram_mb``).

    The loader depends only on sizes and cache settings, so no normalization needs to be resolved.
    """
    record = Preprocessing.from_recipe(recipe, mean=(0.0,), std=(1.0,))
    return record.image_loader(recipe.data.cache_ram_mb if ram_mb is None else ram_mb)
