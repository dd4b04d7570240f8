"""A picture of what the model will see: a grid of training-augmented samples from a recipe."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from toolkit.config.schema import Recipe
from toolkit.errors import DataError, UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["aug_preview", "preview_from_path"]


MIN_TILE = 96  # px a preview tile is shown at, at least


def aug_preview(recipe: Recipe, manifest: pd.DataFrame, out: str | Path, *, n: int = 16, seed: int = 0,
                columns: int | None = None, views: int = 1) -> Path:
    """Write a PNG grid of ``n`` seeded samples, each through the recipe's train pipeline ``views`` times.

    Args:
        recipe: the recipe whose ``[aug]`` and ``[data]`` sections build the pipeline.
        manifest: a manifest DataFrame (``attrs["root"]`` set) to sample from.
        out: the PNG to write.
        n: how many source images.
        seed: sampling and augmentation seed.
        columns: images per row; default: ``views + 1`` (the eval view first, then train views) when
            ``views > 1``, else about √n.
        views: augmented views per source image.

    Raises:
        UsageError: ``n`` or ``views`` below 1.
        DataError: No images.
    """
    from toolkit.data.preprocessing import make_image_loader

    _check_counts(n, views)
    from toolkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

    if len(manifest) == 0:
        raise DataError("no images to preview", "point DATA at a folder with images")
    root = Path(manifest.attrs["root"])
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(manifest), size=min(n, len(manifest)), replace=False)
    train_tf = build_transform(recipe, train=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, to_tensor=False)
    eval_tf = build_transform(recipe, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, to_tensor=False)
    load = make_image_loader(recipe, ram_mb=0)
    size = recipe.data.image_size
    label_col = recipe.targets.label if recipe.targets.label in manifest.columns else None
    tiles: list[tuple[np.ndarray, str]] = []
    for i, row in enumerate(rows):
        path = str(root / manifest["path"].iloc[row])
        image = load(path)
        caption = str(manifest[label_col].iloc[row]) if label_col else Path(path).name
        if views > 1:
            tiles.append((eval_tf(image=image)["image"], f"{caption} (eval)"))
        for v in range(views):
            train_tf.set_random_seed(int(np.random.SeedSequence([seed, i, v]).generate_state(1)[0]))
            tiles.append((train_tf(image=image)["image"], caption))
    columns = columns or (views + 1 if views > 1 else max(1, int(np.ceil(np.sqrt(len(tiles))))))
    # small inputs are shown enlarged (nearest neighbour: each model pixel a visible block, nothing
    # smoothed that the model does not see), so a 32-px tile and its caption can be read
    shown = max(size, MIN_TILE)
    pad, text_h = 4, 14
    cell_w, cell_h = shown + pad, shown + pad + text_h
    n_rows = int(np.ceil(len(tiles) / columns))
    canvas = Image.new("RGB", (columns * cell_w + pad, n_rows * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (tile, caption) in enumerate(tiles):
        x, y = pad + (k % columns) * cell_w, pad + (k // columns) * cell_h
        canvas.paste(Image.fromarray(tile).resize((shown, shown), Image.Resampling.NEAREST), (x, y))
        draw.text((x, y + shown + 1), caption[: shown // 6], fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from toolkit.store.atomic import atomic_writer

    with atomic_writer(out) as fh:
        canvas.save(fh, format="PNG")
    return out


def _check_counts(n: int, views: int) -> None:
    for option, value in (("--n", n), ("--views", views)):
        if value < 1:
            raise UsageError(f"{option} {value}: the preview shows at least one", f"e.g. {option} 4")


def preview_from_path(data: str | os.PathLike[str], out: str | Path, *, recipe: str | Path | None = None,
                      overrides: Sequence[str] = (), n: int = 16, seed: int = 0,
                      views: int = 1) -> tuple[Path, int]:
    """``clsctl aug preview``: the grid of :func:`aug_preview` for the images a path holds.

    Args:
        data: An ImageFolder, a folder of unlabeled images or a manifest table (see
            :func:`toolkit.data.sources.manifest_from_path`; the recipe's image extensions apply).
        out: The PNG to write.
        recipe: The recipe file; None for the defaults.
        overrides: ``--set`` overrides of the recipe.
        n: How many source images.
        seed: Sampling and augmentation seed.
        views: Augmented views per source image.

    Returns:
        ``(the PNG written, how many source images it shows)``.

    Raises:
        RecipeError: The recipe cannot be loaded, or a value in it is out of range.
        UsageError: ``n`` or ``views`` below 1.
        DataError: No images, or whatever the source finds wrong.
    """
    from toolkit.config import check_values, load_recipe
    from toolkit.data.sources import manifest_from_path

    _check_counts(n, views)
    resolved = load_recipe(recipe, list(overrides))
    check_values(resolved)  # before any image is read: sizes and crops the pipeline divides by
    manifest = manifest_from_path(data, extensions=resolved.data.extensions, label_column=resolved.targets.label)
    return aug_preview(resolved, manifest, out, n=n, seed=seed, views=views), min(n, len(manifest))
