"""The torch Dataset over a manifest: decode with the one image loader, transform, return targets."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from toolkit.imaging.decode import load_image_array


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
        tensor = as_tensor(self.transform(image=image)["image"])
        return tensor, torch.as_tensor(self.targets[index]), index


def as_tensor(image: Any) -> torch.Tensor:
    """A transform's output as a tensor: uint8 HWC arrays stay uint8 HWC (see :class:`BatchNormalize`)."""
    if isinstance(image, torch.Tensor):
        return image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C")  # cached arrays are read-only; torch wants to own writable memory
    return torch.from_numpy(array)


class BatchNormalize:
    """uint8 ``[..., H, W, C]`` batches to normalized float ``[..., C, H, W]``, on the batch's device.

    Data loaders hand over uint8 images (a quarter of the bytes of float ones) and this normalizes a
    whole batch in one vectorized pass, instead of each image in a loader worker. The arithmetic is
    albumentations' ``Normalize`` on uint8 images (``(x - 255 mean) * 1/(255 std)`` in float32, with
    the constants rounded as it rounds them), so the floats are bit-identical to the per-image pipeline.
    With ``channels_last`` the 4-D result keeps the HWC memory layout (a free permute, no copy);
    float batches (already normalized) pass through unchanged.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = True) -> None:
        m = np.array(mean, dtype=np.float32) * 255.0
        d = np.reciprocal(np.array(std, dtype=np.float32) * 255.0)
        self.mean = torch.from_numpy(m)
        self.scale = torch.from_numpy(d)
        self.channels_last = channels_last

    def __call__(self, batch: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        if batch.is_floating_point():
            return batch if device is None else batch.to(device, non_blocking=True)
        if device is not None:
            batch = batch.to(device, non_blocking=True)
        c = batch.shape[-1]
        if c != len(self.mean):
            raise ValueError(f"images have {c} channel(s) but the normalization has {len(self.mean)}")
        x = batch.movedim(-1, -3).to(torch.float32)  # keeps the HWC strides: channels-last for 4-D batches
        if not self.channels_last:
            x = x.contiguous()
        shape = (c, 1, 1)
        x.sub_(self.mean.to(x.device).view(shape)).mul_(self.scale.to(x.device).view(shape))
        return x
