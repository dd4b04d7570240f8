"""The demo's two recipes, built from the recipe schema: the same training with and without augmentation.

They differ in one key (``aug.preset``), so the report can put the difference in CV score down to it.
The model is timm's ``test_resnet`` (0.4 M parameters, no pretrained weights, nothing downloaded): the
digits are 8×8 pictures upscaled to 32 px, and a tiny network reaches about 99% on them in a few epochs
on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.config import Recipe, recipe_from_dict, with_overrides

__all__ = ["CHANGED_KEY", "RECIPE_NAMES", "demo_recipes"]

#: The one key the second recipe changes, and its value in each recipe.
CHANGED_KEY = ("aug.preset", "none", "light")
#: The recipes' names, in the order :func:`demo_recipes` returns them.
RECIPE_NAMES = ("digits-base", "digits-aug")


def _base(root: Path, manifest: Path, epochs: int, batch_size: int) -> dict[str, Any]:
    return {
        "name": RECIPE_NAMES[0],
        "description": "clsctl demo: a tiny ResNet from scratch on scikit-learn's digits, no augmentation",
        "data": {"root": str(root), "manifest": str(manifest), "image_size": 32, "normalize": "imagenet",
                 # The decoded images sit in memory after the first epoch; loader processes would only add
                 # start-up time on a small CPU.
                 "num_workers": 0},
        "model": {"name": "test_resnet", "pretrained": False},
        # Digits are not mirror-symmetric: a flipped 2 is not a 2.
        "aug": {"preset": CHANGED_KEY[1], "hflip": False},
        "loss": {"name": "ce", "label_smoothing": 0.1},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
        "sched": {"name": "cosine", "warmup_epochs": 0},
        "train": {"epochs": epochs, "batch_size": batch_size, "seed": 0, "patience": None},
    }


def demo_recipes(root: Path, manifest: Path, *, epochs: int, batch_size: int) -> list[Recipe]:
    """The baseline recipe and the one that changes :data:`CHANGED_KEY`, both trained on ``manifest``'s folds.

    Args:
        root: Folder the manifest's paths are relative to.
        manifest: A split run's ``manifest.csv`` (its ``fold`` column gives the folds).
        epochs: Epochs per fold.
        batch_size: Images per training step.
    """
    base = recipe_from_dict(_base(root, manifest, epochs, batch_size), source="clsctl demo")
    key, _, value = CHANGED_KEY
    changed = with_overrides(base, {"name": RECIPE_NAMES[1], key: value,
                                    "description": "clsctl demo: the baseline with the light augmentation preset"})
    return [base, changed]
