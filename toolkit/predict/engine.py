"""Inference: rebuild a run's fold models and run every TTA view over a set of images.

Each image is decoded once; every pipeline a view needs runs on it in the data loader, and every fold
model sees every view of the batch. Under ``accelerate launch`` the images are sharded over the
processes and gathered back with ``gather_for_metrics``; mixed precision comes from Accelerate's
autocast. On CUDA a batch that runs out of memory is retried in halves.
"""

from __future__ import annotations

import contextlib
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from toolkit.config.schema import AugConfig
from toolkit.data.dataset import BatchNormalize, as_tensor
from toolkit.data.training import parse_fold_selection
from toolkit.errors import RunError, ToolkitError, UsageError
from toolkit.imaging.decode import load_image_array
from toolkit.metrics import is_better
from toolkit.models.checkpoint import FoldModel, ModelRecord, preprocessing_key
from toolkit.predict.tta import Pipeline, View, apply_op, view_sizes
from toolkit.progress import NullProgress, Progress, as_progress
from toolkit.runtime import make_accelerator, predict_loader_workers
from toolkit.store import Run


# --------------------------------------------------------------------------- runs → models
@dataclass(frozen=True)
class FoldStatus:
    """How far each fold of a train run got.

    Attributes:
        folds: every fold the run trains (``run.json``), or has a checkpoint or a done record of.
        finished: folds with a done record and a checkpoint: the only ones predict uses.
        unfinished: folds without a done record: stopped mid-training (their checkpoint is the best
            epoch *so far*) or never started.
        lost: folds with a done record whose checkpoint is gone.
    """

    folds: list[int]
    finished: list[int]
    unfinished: list[int]
    lost: list[int]


def fold_status(run: Run) -> FoldStatus:
    """Which folds of ``run`` finished, which did not, and which lost their checkpoint."""
    checkpoints = set(run.checkpoint_folds())
    folds = sorted({int(k) for k in run.info.get("folds") or []} | checkpoints)
    done = {k for k in folds if run.read_fold_done(k) is not None}
    return FoldStatus(folds=folds, finished=sorted(done & checkpoints), unfinished=sorted(set(folds) - done),
                      lost=sorted(done - checkpoints))


def _fold_problems(run: Run, status: FoldStatus, folds: Sequence[int]) -> tuple[str, str]:
    """What keeps ``folds`` from being predicted with, and how to fix it; empty strings when nothing does."""
    unfinished = [k for k in folds if k in status.unfinished]
    lost = [k for k in folds if k in status.lost]
    what, how = [], []
    if unfinished:
        started = [k for k in unfinished if k in set(run.checkpoint_folds())]
        detail = f"; {_listed(started)} only {'has' if len(started) == 1 else 'have'} a mid-training checkpoint" \
            if started else ""
        what.append(f"{_listed(unfinished)} did not finish (run {run.status}{detail})")
        training = run.status == "running" and not run.stale
        how.append("wait for the training to finish" if training else f"`clsctl train --resume {run.id}` finishes them")
    if lost:
        where = f"folds/{lost[0]}/model.safetensors is" if len(lost) == 1 else "folds/<k>/model.safetensors are"
        what.append(f"{_listed(lost)} finished but {where} missing")
        how.append("retrain the run to get it back")
    if status.finished:
        how.append(f"or `--folds {','.join(map(str, status.finished))}` predicts with the finished fold(s) only")
    return "; ".join(what), ", ".join(how)


def _listed(folds: Sequence[int]) -> str:
    return ("fold " if len(folds) == 1 else "folds ") + ", ".join(map(str, folds))


def select_folds(run: Run, spec: str | int | None, status: FoldStatus | None = None) -> list[int]:
    """``all`` → every fold; ``best`` → the best fold by the run's selection score; ``K``/``0,2``.

    Only finished folds are predicted with: a fold that stopped mid-training has a checkpoint, but of
    the best epoch *so far*, and averaging over the folds that happen to exist changes the model
    silently. So ``all`` and ``best`` refuse a run with an unfinished fold or a missing checkpoint, and
    so does a list that names one; a list of finished folds is how to predict with fewer.

    Raises:
        RunError: the run has no checkpoints, or ``all``/``best`` meet a fold that is not finished.
        UsageError: a fold that does not exist or is not finished was named.
    """
    status = status or fold_status(run)
    if not run.checkpoint_folds():
        raise RunError(f"run {run.id} has no fold checkpoints (folds/<k>/model.safetensors)",
                       "predict from a train run whose folds finished (clsctl ensemble combines other runs)")
    text = "all" if spec is None else str(spec).strip().lower()
    if text in ("all", "best"):
        what, how = _fold_problems(run, status, status.folds)
        if what:
            raise RunError(f"run {run.id}: {what}", how)
    else:
        chosen = parse_fold_selection(text, status.folds)
        what, how = _fold_problems(run, status, chosen)
        if what:
            raise UsageError(f"--folds {spec}: {what}", how)
        return chosen
    if text == "all":
        return list(status.finished)
    summary = run.summary
    metric = summary.get("metric") or "macro_f1"
    best, best_score = None, None
    for k in status.finished:
        score = (summary.get("folds", {}).get(str(k)) or {}).get("best_score")
        if score is None:
            continue
        if best is None or is_better(metric, float(score), best_score):
            best, best_score = k, float(score)
    if best is None:
        raise RunError(f"run {run.id}: summary.json has no fold scores to pick the best fold from",
                       "pass --folds all or a fold number")
    return [best]


def pipelines_for(views: Sequence[View], record: ModelRecord, aug: AugConfig) -> list[tuple[Pipeline, Any]]:
    """The distinct decode-side pipelines the views need, built from the checkpoint's preprocessing record.

    They stop before normalization (uint8 HWC); the batch normalizer of the record finishes the job.
    ``aug`` (the run's ``[aug]`` section) is only read by ``trainaug`` views.
    """
    from toolkit.data.transforms import eval_pipeline, train_pipeline

    prep = record.preprocessing
    seen: dict[str, tuple[Pipeline, Any]] = {}
    for view in views:
        pipe = view.pipeline
        if pipe.key in seen:
            continue
        if pipe.kind == "train":
            seen[pipe.key] = (pipe, train_pipeline(aug, prep, to_tensor=False))
        else:
            seen[pipe.key] = (pipe, eval_pipeline(prep, size=pipe.size, to_tensor=False))
    return list(seen.values())


def check_input_sizes(model: torch.nn.Module, sizes: Sequence[int], trained: int, in_chans: int,
                      device: torch.device | str = "cpu", name: str = "the model") -> None:
    """Raise a clear error when the model cannot take an input size a view needs (fixed-size ViTs)."""
    for size in sizes:
        if size == trained:
            continue
        try:
            with torch.inference_mode():
                model(torch.zeros(1, in_chans, size, size, device=device))
        except Exception as exc:  # timm raises AssertionError/RuntimeError for a fixed input size
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"{name} takes a fixed input size ({trained} px); a scale view needs {size} px ({text})",
                             "drop the scale: views (hflip, vflip, fivecrop and trainaug keep the trained size)") from None


# --------------------------------------------------------------------------- data
class ViewDataset(torch.utils.data.Dataset):
    """Decode each image once and run every pipeline on it; items are ``({key: tensor}, index)``.

    Tensors are what the pipelines give (uint8 ``[H, W, C]`` from :func:`pipelines_for`, normalized per
    batch by the caller). ``trainaug`` pipelines produce ``[passes, ...]``, each pass seeded from (seed, pass, the
    image's path), so the same image gets the same augmented copies in every run and every process.
    """

    def __init__(self, paths: Sequence[str], pipelines: Sequence[tuple[Pipeline, Any]], seed: int = 0,
                 loader: Any = None) -> None:
        self.paths = list(paths)
        self.pipelines = list(pipelines)
        self.seed = int(seed)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        image = (self.loader or load_image_array)(self.paths[index])
        out: dict[str, torch.Tensor] = {}
        for pipe, transform in self.pipelines:
            if pipe.kind != "train":
                out[pipe.key] = as_tensor(transform(image=image)["image"])
                continue
            tag = zlib.crc32(os.path.basename(self.paths[index]).encode())
            copies = []
            for p in range(pipe.passes):
                seed = int(np.random.SeedSequence([self.seed, p, tag]).generate_state(1)[0])
                transform.set_random_state(np.random.default_rng(seed), random.Random(seed))  # as in training
                random.seed(seed)  # timm's RandAugment draws from Python's generator
                copies.append(as_tensor(transform(image=image)["image"]))
            out[pipe.key] = torch.stack(copies)
        return out, index


# --------------------------------------------------------------------------- combining
def softmax_heads(logits: np.ndarray | torch.Tensor, sizes: Sequence[int]) -> list:
    """Softmax of each head's slice of concatenated logits (last axis)."""
    parts, start = [], 0
    for n in sizes:
        piece = logits[..., start:start + n]
        if isinstance(piece, torch.Tensor):
            parts.append(torch.softmax(piece.float(), dim=-1))
        else:
            shifted = piece - piece.max(axis=-1, keepdims=True)
            e = np.exp(shifted)
            parts.append(e / e.sum(axis=-1, keepdims=True))
        start += n
    return parts


def combine_views(logits: np.ndarray, sizes: Sequence[int], combine: str, axes: tuple[int, ...]) -> list[np.ndarray]:
    """Average over ``axes`` (folds, views): of probabilities (``mean_prob``) or of logits (``mean_logit``).

    Returns:
        One probability array per head.
    """
    if combine == "mean_logit":
        return softmax_heads(logits.mean(axis=axes), sizes)
    if combine != "mean_prob":
        raise UsageError(f"--combine {combine!r} is not mean_prob or mean_logit", "use --combine mean_prob or mean_logit")
    return [p.mean(axis=axes) for p in softmax_heads(logits, sizes)]


def _merge_passes(outs: torch.Tensor, sizes: Sequence[int], combine: str) -> torch.Tensor:
    """[passes, B, C] → [B, C]: a multi-pass view as one view (log of mean probability, or mean logit)."""
    if outs.shape[0] == 1:
        return outs[0]
    if combine == "mean_logit":
        return outs.mean(dim=0)
    probs = [p.mean(dim=0) for p in softmax_heads(outs, sizes)]
    # log p is a logit whose softmax is p again, so later steps treat every view alike.
    return torch.cat([torch.log(p.clamp_min(1e-12)) for p in probs], dim=-1)


# --------------------------------------------------------------------------- the loop
class SingleProcess:
    """What :class:`Inference` uses of an ``accelerate.Accelerator``, for one process in float32 on one device.

    The reference an ONNX export is checked against: no autocast and no sharding, whatever
    ``accelerate launch`` or the GPU would pick, and no process-wide Accelerate state to conflict with.
    """

    num_processes = 1
    is_main_process = True

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        yield

    def prepare_data_loader(self, loader: Any) -> Any:
        return loader

    def gather_for_metrics(self, values: Any) -> Any:
        return values

    def wait_for_everyone(self) -> None:
        pass


class Inference:
    """Runs fold models × views over images; see :meth:`run`."""

    def __init__(self, accelerator=None, *, batch_size: int = 64, workers: int | None = None,  # noqa: ANN001
                 progress: Progress | bool | None = None, channels_last: bool = False) -> None:
        self.accelerator = accelerator if accelerator is not None else make_accelerator()
        self.batch_size = max(1, int(batch_size))
        self.chunk = self.batch_size
        self.workers = predict_loader_workers(workers, self.accelerator.num_processes, self.accelerator.device.type)
        self.progress = as_progress(progress) if self.accelerator.is_main_process else NullProgress()
        self.channels_last = channels_last
        self.images_seen = 0

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """model(x) in chunks of at most ``self.chunk`` rows; on CUDA out-of-memory the chunk halves."""
        outs, i = [], 0
        while i < len(x):
            part = x[i:i + self.chunk]
            if self.channels_last:
                part = part.contiguous(memory_format=torch.channels_last)
            try:
                with self.accelerator.autocast():
                    y = model(part)
            except torch.cuda.OutOfMemoryError:
                if self.chunk <= 1:
                    raise ToolkitError("out of GPU memory with a batch of one image",
                                       "use a smaller model or image size, or free the GPU") from None
                self.chunk = max(1, self.chunk // 2)
                torch.cuda.empty_cache()
                self.progress.log(f"out of GPU memory: retrying with {self.chunk} images per forward pass")
                continue
            outs.append(y.float())
            i += len(part)
        return torch.cat(outs)

    def _view_logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], view: View, size: int,
                     sizes: Sequence[int], combine: str) -> torch.Tensor:
        x = batch[view.pipeline.key]
        if view.pipeline.kind == "train":
            n, b = x.shape[1], x.shape[0]
            flat = x.transpose(0, 1).reshape(n * b, *x.shape[2:])
        else:
            b = x.shape[0]
            if self.channels_last:  # crops and flips of a channels-last batch stay channels-last (a no-op
                x = x.contiguous(memory_format=torch.channels_last)  # for batches BatchNormalize made)
            passes = [apply_op(op, x, size) for op in view.ops]
            n = len(passes)
            flat = passes[0] if n == 1 else torch.cat(passes)
        out = self._forward(model, flat)
        return _merge_passes(out.reshape(n, b, -1), sizes, combine)

    @torch.inference_mode()
    def run(self, models: Sequence[FoldModel], views: Sequence[View], paths: Sequence[str], aug: AugConfig,
            seed: int = 0, combine: str = "mean_prob", title: str = "predict") -> np.ndarray:
        """Logits of every fold model and view for every image.

        Args:
            models: fold models sharing one preprocessing record.
            views: the TTA views (identity first).
            paths: absolute image paths.
            aug: the run's ``[aug]`` section (the train transform of ``trainaug`` views).
            seed: the run's seed (``trainaug`` copies are seeded from it and each image's name).
            combine: how a multi-pass view merges its passes.
            title: progress bar text.

        Returns:
            ``float32 [folds, views, N, C]`` logits, where C is the sum of the head sizes. Multi-pass views
            under ``mean_prob`` hold log-probabilities (their softmax is the passes' mean probability).
            Every process gets the full array.
        """
        if not models:
            raise UsageError("no fold models to predict with", "pass --folds all or a fold number")
        keys = {preprocessing_key(m.record) for m in models}
        if len(keys) > 1:
            raise RunError("the selected folds were trained with different preprocessing",
                           "predict them separately with --folds K")
        record = models[0].record
        prep = record.preprocessing
        size, trained = prep.eval_size, prep.image_size
        sizes = record.head_sizes
        accelerator = self.accelerator
        for m in models:
            m.model.to(self.device)
        check_input_sizes(models[0].model, view_sizes(views, size, trained), trained, prep.in_chans,
                          self.device, f"`{record.arch}`")
        # The same loader as training (the decoded cache downscales big images first), so that the
        # identity view sees exactly the validation pixels.
        dataset = ViewDataset(paths, pipelines_for(views, record, aug), seed=seed,
                              loader=prep.image_loader(0))  # one read per image: no in-memory tier
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers > 0 else None)
        loader = accelerator.prepare_data_loader(loader)
        normalize = BatchNormalize(prep.mean, prep.std, channels_last=self.channels_last)
        n_total = sum(sizes)
        out = np.zeros((len(models), len(views), len(paths), n_total), dtype=np.float32)
        filled = np.zeros(len(paths), dtype=bool)
        bar = self.progress.task(title, len(paths))
        try:
            for batch, index in loader:
                batch = {key: normalize(x, self.device) for key, x in batch.items()}
                per_fold = []
                for m in models:
                    per_fold.append(torch.stack([self._view_logits(m.model, batch, v, size, sizes, combine)
                                                 for v in views], dim=1))  # [B, V, C]
                stacked = torch.stack(per_fold, dim=1)  # [B, F, V, C]
                stacked, index = accelerator.gather_for_metrics((stacked.contiguous(), index))
                rows = index.cpu().numpy()
                out[:, :, rows, :] = stacked.cpu().numpy().transpose(1, 2, 0, 3)
                filled[rows] = True
                bar.advance(len(rows))
                self.images_seen += len(rows)
        finally:
            bar.close()
        if not filled.all():  # a sharding bug would otherwise leave silent zeros
            raise ToolkitError(f"{int((~filled).sum())} image(s) got no prediction", "report this with CLSCTL_DEBUG=1")
        return out

