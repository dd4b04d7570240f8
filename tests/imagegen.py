"""Tiny generated image datasets that a small model can learn in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def make_imagefolder(root: Path, per_class: int = 12, size: int = 24, classes: dict | None = None, seed: int = 0) -> Path:
    """Write ``root/<class>/<i>.png``: noisy images whose dominant colour is the class."""
    rng = np.random.default_rng(seed)
    for name, colour in (classes or COLOURS).items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(colour, dtype=np.float32)[None, None, :]
            pixels = base * rng.uniform(0.6, 1.0) + rng.normal(0, 25, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def write_recipe(path: Path, root: Path, **sections: dict) -> Path:
    """A CPU-sized training recipe over ``root``; ``sections`` override keys per section."""
    import tomli_w

    recipe = {
        "data": {"root": str(root), "image_size": 32, "num_workers": 0, "normalize": "imagenet"},
        "split": {"folds": 3, "seed": 0},
        "model": {"name": "test_efficientnet_gn", "pretrained": False},
        "aug": {"preset": "light"},
        "optim": {"name": "adamw", "lr": 3e-3},
        "sched": {"name": "cosine", "warmup_epochs": 0},
        "train": {"epochs": 1, "batch_size": 8, "seed": 0, "deterministic": True},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    path.write_text(tomli_w.dumps(recipe))
    return path
