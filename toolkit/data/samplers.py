"""Class-rebalancing samplers for imbalanced training sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def class_sampling_weights(labels: Sequence[int] | np.ndarray, mode: str, num_classes: int | None = None) -> np.ndarray:
    """Per-sample weights under which class c is drawn with probability ∝ n_c · w_c.

    ``balanced``: w_c = 1/n_c, every class equally often. ``sqrt``: w_c = 1/√n_c, so class c is drawn
    ∝ √n_c — a middle way that still shows the common classes more often. ``random``: all ones.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes or 0).astype(np.float64)
    if mode == "random":
        per_class = np.ones_like(counts)
    elif mode == "balanced":
        per_class = 1.0 / np.maximum(counts, 1.0)
    elif mode == "sqrt":
        per_class = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    else:
        raise ValueError(f"unknown sampler mode {mode!r}")
    return per_class[labels]


def class_balanced_sampler(labels: Sequence[int] | np.ndarray, mode: str, num_samples: int | None = None,
                           generator: torch.Generator | None = None) -> torch.utils.data.WeightedRandomSampler:
    """A ``WeightedRandomSampler`` (with replacement) for ``mode`` ``balanced`` or ``sqrt``.

    Under Accelerate/DDP the sampler's generator is synchronized across processes and batches are
    sharded, so every process sees its own part of one shared draw.
    """
    weights = torch.as_tensor(class_sampling_weights(labels, mode), dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=num_samples or len(weights),
                                                  replacement=True, generator=generator)
