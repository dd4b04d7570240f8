"""The data loaders of one fold: train and validation rows, pipelines, workers, sampler, generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from toolkit.data.dataset import BatchNormalize, ImageDataset
from toolkit.data.preprocessing import Preprocessing
from toolkit.data.training import TrainingData
from toolkit.data.transforms import eval_pipeline, train_pipeline
from toolkit.runtime import single_threaded_worker, train_loader_workers

if TYPE_CHECKING:
    from toolkit.config.schema import Recipe


def fold_seed(seed: int, fold: int, epoch: int = 0) -> int:
    """A seed for ``(seed, fold, epoch)``: folds and epochs draw independent streams."""
    return int(np.random.SeedSequence([seed, fold, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def keeps_last_batch(samples: int, batch_size: int, *, paired: bool) -> bool:
    """Whether an epoch of ``samples`` in steps of ``batch_size`` images (all processes together) keeps its
    last, partial step.

    A small last batch makes a noisy step on a few images (one image breaks BatchNorm), so it is dropped.
    On small data, though, dropping it throws away a large share of every epoch (100 rows in batches of 64
    would train on 64), so a last batch of at least half a batch is kept; under MixUp/CutMix, which pair
    the images of a batch, only when it holds an even number.
    """
    last = samples % batch_size
    if samples <= batch_size or last == 0:
        return True  # one batch holds everything, or there is no partial batch
    return 2 * last >= batch_size and not (paired and last % 2)


@dataclass
class FoldLoaders:
    """What :func:`fold_loaders` builds (the loaders are not prepared by Accelerate yet)."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    generator: torch.Generator
    normalize: BatchNormalize


def fold_loaders(recipe: Recipe, data: TrainingData, fold: int, prep: Preprocessing, *, num_processes: int,
                 on_gpu: bool) -> FoldLoaders:
    """Build the train and validation loaders of ``fold``.

    Loaders hand over uint8 HWC batches; the training process normalizes each batch in one pass
    (``normalize``). Each training item's augmentation is seeded from the fold's seed, the epoch and
    the row, so a resumed epoch sees the same pixels.

    Args:
        recipe: The recipe (``[data]``, ``[aug]`` and ``[train]`` are read).
        data: The manifest, targets and folds.
        fold: The fold held out for validation.
        prep: The preprocessing record (sizes, mean/std, cache settings).
        num_processes: Processes training together (each gets its share of the loader workers).
        on_gpu: Whether the model runs on a GPU (the CPU cores are then free for decoding).
    """
    tcfg = recipe.train
    normalize = BatchNormalize(prep.mean, prep.std, channels_last=recipe.model.channels_last)
    train_rows = np.flatnonzero(data.folds != fold)
    val_rows = np.flatnonzero(data.folds == fold)
    paths = [str(data.root / p) for p in data.df["path"]]
    seed = fold_seed(tcfg.seed, fold)
    workers = train_loader_workers(recipe.data.num_workers, num_processes, on_gpu)
    loader = prep.image_loader(ram_mb=recipe.data.cache_ram_mb / max(1, workers))  # a copy per worker
    train_ds = ImageDataset([paths[i] for i in train_rows], data.targets[train_rows],
                            train_pipeline(recipe.aug, prep, to_tensor=False), seed=seed, loader=loader)
    val_ds = ImageDataset([paths[i] for i in val_rows], data.targets[val_rows], eval_pipeline(prep, to_tensor=False),
                          loader=loader)
    common: dict[str, Any] = dict(num_workers=workers, pin_memory=torch.cuda.is_available(),
                                  persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                                  worker_init_fn=single_threaded_worker if workers > 0 else None)
    generator = torch.Generator()
    sampler = None
    if tcfg.sampler != "random":  # rebalance on the first head (the label of single-head models)
        from toolkit.data.samplers import class_balanced_sampler

        sampler = class_balanced_sampler(data.targets[train_rows, 0], tcfg.sampler, tcfg.epoch_samples, generator)
    paired = recipe.aug.mixup_alpha > 0 or recipe.aug.cutmix_alpha > 0
    samples = len(sampler) if sampler is not None else len(train_ds)
    # Accelerate deals each process its own batches: the epoch ends on a partial step of all of them together.
    drop_last = not keeps_last_batch(samples, tcfg.batch_size * num_processes, paired=paired)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=tcfg.batch_size, shuffle=sampler is None,
                                           sampler=sampler, drop_last=drop_last, generator=generator, **common)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=tcfg.batch_size * 2, shuffle=False, **common)
    return FoldLoaders(train_rows, val_rows, train_dl, val_dl, generator, normalize)
