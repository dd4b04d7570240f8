"""The state of one fold in training: every object the loop works on, and the counters resume restores.

One :class:`FoldState` is built per fold and handed to every callback hook. Its counters (the last
completed epoch, the best score so far, the metrics history, the optimizer-update count) are what
``state_dict`` saves beside Accelerate's state; the model, optimizer and loaders are saved by
Accelerate itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from toolkit.models.checkpoint import ModelRecord

# The keys of FoldState that state_dict saves (and load_state_dict restores) for resume.
_SAVED = ("epoch", "best", "best_epoch", "history", "num_updates", "nonfinite_skipped")


@dataclass
class FoldState:
    """Everything about the fold being trained.

    Attributes:
        fold: The fold held out for validation.
        model: The prepared model (wrapped by Accelerate, possibly compiled).
        optimizer: The prepared optimizer.
        scheduler: timm's scheduler, or None.
        train_loader, val_loader: The prepared data loaders.
        generator: The generator that shuffles (or samples) the training rows; reseeded each epoch.
        normalize: Turns a uint8 batch into the model's normalized float input.
        criteria: Training loss per head (soft-target variants under MixUp/CutMix).
        val_criteria: Validation loss per head.
        head_weights: Weight of each head's loss in the total.
        head_sizes: Logit columns of each head, in head order.
        mixup: timm's ``Mixup``, or None.
        ema: timm's ``ModelEmaV3`` of the weights, or None.
        validate_ema: Validate and checkpoint the EMA weights instead of the raw ones.
        train_rows, val_rows: Manifest rows trained on and held out.
        record: The checkpoint record of this fold (``model.json`` without the best epoch).
        epoch: The last completed epoch (-1 before the first).
        best, best_epoch: The best selection score so far and its epoch.
        improved: Whether the epoch that just ended set a new best.
        history: The metrics rows of this fold so far.
        num_updates: Optimizer updates so far (the scheduler's and the EMA's step).
        nonfinite_skipped: Batches of the fold skipped for a non-finite loss (``train.nonfinite = "skip"``).
        epoch_skipped: Those of the current epoch.
        step: Batches done in the current epoch.
        train_loss: The running mean training loss of the current epoch.
        images_per_second: Training throughput of the current epoch so far, all processes together.
        data_wait: Seconds of the current epoch spent waiting for batches.
        should_stop: Set by a callback to end the fold after the current epoch.
    """

    fold: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    val_loader: Any
    generator: torch.Generator
    normalize: Any
    criteria: list[torch.nn.Module]
    val_criteria: list[torch.nn.Module]
    head_weights: list[float]
    head_sizes: list[int]
    train_rows: np.ndarray
    val_rows: np.ndarray
    record: ModelRecord
    mixup: Any = None
    ema: Any = None
    validate_ema: bool = False
    epoch: int = -1
    best: float | None = None
    best_epoch: int = -1
    improved: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    num_updates: int = 0
    nonfinite_skipped: int = 0
    epoch_skipped: int = 0
    step: int = 0
    train_loss: float = 0.0
    images_per_second: float = 0.0
    data_wait: float = 0.0
    should_stop: bool = False

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and checkpointed: the EMA's or the model's own."""
        return self.ema.module if self.ema is not None and self.validate_ema else self.model

    def state_dict(self) -> dict[str, Any]:
        """The counters resume needs, as JSON-ready values."""
        return {key: getattr(self, key) for key in _SAVED}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters saved by :meth:`state_dict` (keys this version does not keep are ignored)."""
        for key in _SAVED:
            if key in state:
                setattr(self, key, state[key])
