"""One training epoch and one validation pass over a fold's :class:`~toolkit.train.state.FoldState`.

The epoch is Accelerate's idiom: ``accumulate``, ``backward``, ``clip_grad_norm_``, and
``gather_for_metrics`` in validation, so the same code runs on a CPU, one GPU or many.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from toolkit.data.training import TrainingData
from toolkit.errors import TrainingError
from toolkit.metrics import classification_metrics, multihead_metrics
from toolkit.train.losses import multihead_loss
from toolkit.train.state import FoldState

if TYPE_CHECKING:
    from accelerate import Accelerator


def train_epoch(accelerator: Accelerator, state: FoldState, epoch: int, grad_clip: float | None,
                call: Callable[..., None], nonfinite: str = "stop") -> tuple[float, int]:
    """Train one epoch; call ``on_step_end`` after every batch.

    Args:
        nonfinite: What a batch with a non-finite loss does: ``stop`` raises, ``skip`` leaves the weights
            untouched by it (no backward; when it is the batch that would apply an accumulated update, that
            update is dropped) and counts it in ``state.epoch_skipped`` and ``state.nonfinite_skipped``.

    Returns:
        The mean training loss over all processes (skipped batches left out), and the images seen by all processes.

    Raises:
        TrainingError: The loss turned non-finite and ``nonfinite`` is ``stop``, or every batch of the epoch
            was skipped (the last good checkpoint is kept either way).
    """
    model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
    model.train()
    total, count, seen = 0.0, 0, 0
    started = time.perf_counter()
    state.step, state.train_loss, state.images_per_second = 0, 0.0, 0.0
    state.data_wait = 0.0  # seconds spent waiting for batches: the loader's share of the epoch
    state.epoch_skipped = 0
    waited = time.perf_counter()
    for step, (images, targets, _) in enumerate(state.train_loader):
        state.data_wait += time.perf_counter() - waited
        images = state.normalize(images)
        if state.mixup is not None:
            images, targets = state.mixup(images, targets.reshape(len(targets), -1)[:, 0])
        updated = False
        with accelerator.accumulate(model):
            loss = multihead_loss(model(images), targets, state.criteria, state.head_weights, state.head_sizes)
            # Every process decides alike, so none waits in backward for the others.
            finite = bool(accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())
            if not finite and nonfinite != "skip":
                raise TrainingError(
                    f"non-finite loss in fold {state.fold}, epoch {epoch}, step {step}; the last good checkpoint is kept",
                    "lower optim.lr, set train.grad_clip, or use train.precision = \"no\"/\"bf16\" instead of fp16; "
                    "train.nonfinite = \"skip\" skips such batches instead")
            if finite:
                accelerator.backward(loss)
                if grad_clip is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                updated = accelerator.sync_gradients
                if updated:
                    state.num_updates += 1
                    if scheduler is not None:
                        scheduler.step_update(state.num_updates)
            else:
                state.epoch_skipped += 1
                state.nonfinite_skipped += 1
            optimizer.zero_grad(set_to_none=True)
        n = images.shape[0]
        if finite:
            total += float(loss.detach()) * n
            count += n
        seen += n * accelerator.num_processes
        state.step = step + 1
        state.train_loss = total / max(count, 1)
        state.images_per_second = seen / max(time.perf_counter() - started, 1e-9)
        call("on_step_end", state=state, updated=updated)
        waited = time.perf_counter()
    if state.step and state.epoch_skipped == state.step:
        raise TrainingError(f"every batch of fold {state.fold}, epoch {epoch} had a non-finite loss "
                            f"({state.epoch_skipped} skipped): the weights themselves are no longer finite",
                            "lower optim.lr or set train.grad_clip and train again; the last good checkpoint is kept")
    mean_loss = torch.tensor([total, count], device=accelerator.device, dtype=torch.float64)
    mean_loss = accelerator.reduce(mean_loss, reduction="sum")
    return float(mean_loss[0] / max(mean_loss[1], 1)), seen


@torch.inference_mode()
def evaluate(accelerator: Accelerator, state: FoldState, data: TrainingData) -> dict[str, Any]:
    """Validate ``state.eval_model`` on the held-out rows.

    Returns:
        ``metrics`` (the selection metric among them; ``val_loss``; for several heads the combined
        label's metrics and ``<head>/<metric>``), ``probs`` (one ``[N, C]`` array per head), ``index``
        (each row's position among the fold's validation rows) and ``targets`` (``[N, heads]``).
    """
    model = state.eval_model
    model.eval()
    logits_all, targets_all, index_all = [], [], []
    for images, targets, index in state.val_loader:
        images = state.normalize(images)
        with accelerator.autocast():
            logits = model(images).float()
        logits, targets, index = accelerator.gather_for_metrics((logits, targets, index))
        logits_all.append(logits.cpu())
        targets_all.append(targets.cpu())
        index_all.append(index.cpu())
    logits = torch.cat(logits_all)
    targets = torch.cat(targets_all)
    index = torch.cat(index_all).numpy()
    val_loss = float(multihead_loss(logits, targets, [c.cpu() for c in state.val_criteria], state.head_weights,
                                    state.head_sizes))
    targets = targets.reshape(len(targets), -1).numpy()
    probs, start = [], 0
    for n in state.head_sizes:
        probs.append(torch.softmax(logits[:, start:start + n], dim=1).numpy())
        start += n
    if data.multi_head:
        per_head = multihead_metrics({h: targets[:, i] for i, h in enumerate(data.heads)},
                                     dict(zip(data.heads, probs, strict=True)), data.classes, combine=data.heads)
        # The combined label (e.g. mask × gender × age) is what competitions score, so it drives selection.
        metrics = dict(per_head["combined"])
        for h in data.heads:
            for key, value in per_head["heads"][h].items():
                if isinstance(value, float | int):
                    metrics[f"{h}/{key}"] = value
            metrics[f"{h}/per_class_recall"] = per_head["heads"][h].get("per_class_recall", {})
    else:
        metrics = classification_metrics(targets[:, 0], probs[0], data.classes[data.heads[0]])
    metrics["val_loss"] = val_loss
    return {"metrics": metrics, "probs": probs, "index": index, "targets": targets}


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a metrics dict as floats (what a metrics row holds)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out
