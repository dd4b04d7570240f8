"""The torch Dataset over a manifest: decode with the one image loader, transform, return targets."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from toolkit.data.images import load_image_array


class ImageDataset(torch.utils.data.Dataset):
    """Images by absolute path with integer targets (``[N]``, or ``[N, heads]`` for multi-head).

    Items are ``(image tensor, target, index)``; the index lets predictions be matched to manifest rows
    whatever the loader's order. With ``seed`` set, each item's augmentation is seeded from
    ``(seed, epoch, index)``: the same epoch sees the same augmentations whatever the worker count or
    whether training was resumed, which is what makes resumed runs end with identical metrics.
    """

    def __init__(self, paths: Sequence[str], targets: np.ndarray | None, transform: Any, *,
                 seed: int | None = None, loader: Callable[[str], np.ndarray] = load_image_array) -> None:
        self.paths = list(paths)
        n = len(self.paths)
        self.targets = np.full(n, -1, dtype=np.int64) if targets is None else np.asarray(targets, dtype=np.int64)
        if len(self.targets) != n:
            raise ValueError(f"{n} paths but {len(self.targets)} targets")
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of an epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = self.loader(self.paths[index])
        if self.seed is not None and hasattr(self.transform, "set_random_state"):
            mixed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
            # One numpy and one Python generator shared by every step (set_random_seed would build a pair
            # per step, 5x slower, and give each step the same stream, so their draws would be correlated).
            self.transform.set_random_state(np.random.default_rng(mixed), random.Random(mixed))
            random.seed(mixed)  # timm's RandAugment policies draw from Python's module-level generator
        tensor = self.transform(image=image)["image"]
        return tensor, torch.as_tensor(self.targets[index]), index
