"""The one trainer: the same recipe on a laptop CPU, one GPU with mixed precision, or many GPUs.

It reads like Accelerate's complete CV example: one ``prepare``, ``accumulate``,
``gather_for_metrics``, ``save_state``/``load_state``. One run folder holds every fold::

    folds/<k>/model.safetensors   best weights (+ model.json: classes, preprocessing, architecture)
    folds/<k>/state/              last full Accelerate state (resume)
    folds/<k>/oof.parquet         the best epoch's validation probabilities
    folds/<k>/done.json           written when the fold has finished
    oof.parquet, metrics.csv, summary.json

Only the main process writes. Hooks (``on_epoch_end`` ...) are a short list, called with keywords.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from toolkit.config.schema import Recipe
from toolkit.data.training import bad_images_error, load_training_data, parse_fold_selection
from toolkit.errors import RunError, TrainingError
from toolkit.runtime import cores, mixed_precision, single_threaded_worker, train_loader_workers, use_cpu
from toolkit.train.validate import validate_recipe

Hook = Callable[..., None]


# --------------------------------------------------------------------------- state kept across resume
@dataclass
class FoldProgress:
    """What early stopping and resume need, saved with Accelerate's state."""

    epoch: int = -1  # last completed epoch
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics rows of this fold
    num_updates: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "history": self.history, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------- small helpers
def _seed_everything(seed: int, deterministic: bool) -> None:
    from accelerate.utils import set_seed

    set_seed(seed, deterministic=deterministic)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _seed_epoch(seed: int) -> None:
    """Seed every global generator at an epoch's start, so an epoch does not depend on the ones before
    it (dropout, MixUp's draws); resumed runs then replay exactly."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fold_seed(seed: int, fold: int, epoch: int = 0) -> int:
    return int(np.random.SeedSequence([seed, fold, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


def _flat(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _swap_dir(tmp: Path, final: Path) -> None:
    """Replace directory ``final`` by ``tmp`` so that a crash never leaves neither."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _state_dir(fold_dir: Path) -> Path | None:
    for name in ("state", "state.old"):  # state.old survives a crash in the middle of a swap
        candidate = fold_dir / name
        if candidate.is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Train every selected fold of a recipe into one run folder."""

    def __init__(self, recipe: Recipe, *, runs_root: str | Path | None = None, name: str | None = None,
                 folds: str | None = "all", resume: str | Path | None = None, hooks: dict[str, Hook] | None = None,
                 progress: bool | None = None) -> None:
        self.recipe = recipe
        self.runs_root = runs_root
        self.name = name or recipe.name
        self.fold_spec = folds
        self.resume = resume
        self.hooks = hooks or {}
        self.progress = progress

    # -- hooks: a short list, called with keywords (on_fold_start, on_epoch_end, on_fold_end, on_run_end)
    def call(self, hook: str, **kwargs: Any) -> None:
        fn = self.hooks.get(hook)
        if fn is not None:
            fn(trainer=self, **kwargs)

    def run(self):  # noqa: ANN201 - returns toolkit.store.Run
        """Train; return the run. Marks the run failed/interrupted when training does not finish."""
        from accelerate import Accelerator
        from accelerate.utils import broadcast_object_list

        from toolkit.store import RunStore
        from toolkit.store.fingerprint import manifest_fingerprint

        recipe = self.recipe
        validate_recipe(recipe)  # a bad name fails before any data is read or any run folder exists

        cpu = use_cpu()
        self.accelerator = accelerator = Accelerator(
            mixed_precision=mixed_precision(recipe.train.precision),
            gradient_accumulation_steps=recipe.train.grad_accum,
            log_with=recipe.train.log_with or None,
            cpu=cpu,
            step_scheduler_with_optimizer=False,
        )
        self.data = data = load_training_data(recipe)
        selected = parse_fold_selection(self.fold_spec, data.fold_ids)

        store = RunStore(self.runs_root)
        if self.resume is not None:
            run = store.open(self.resume)
            if run.kind != "train":
                raise RunError(f"--resume {self.resume}: run {run.id} is a `{run.kind}` run", "pass a train run")
        path_holder: list[Any] = [None]
        if accelerator.is_main_process:
            if self.resume is None:
                fingerprint = manifest_fingerprint(data.df, data.root)
                run = store.create("train", name=self.name, recipe=recipe, seed=recipe.train.seed,
                                   data_fingerprint=fingerprint,
                                   extra={"folds": selected, "heads": data.heads,
                                          "num_processes": accelerator.num_processes})
            path_holder = [str(run.path)]
        if accelerator.num_processes > 1:
            broadcast_object_list(path_holder)
        from toolkit.store import Run

        self.run_obj = run = Run(path_holder[0])
        if accelerator.is_main_process:
            if self.resume is not None:
                run.update_info(status="running", error=None, ended=None, resumed=True, pid=os.getpid())
            run.write_json("classes.json", {"heads": data.heads, "classes": data.classes})
            self._write_manifest(run)

        if recipe.train.log_with:
            from toolkit.config.loader import recipe_to_dict

            accelerator.init_trackers(run.id, config=_flat_config(recipe_to_dict(recipe)))

        self._warm_cache(run)
        if accelerator.is_main_process:
            with run.activate():
                self._train_folds(run, selected)
        else:
            self._train_folds(run, selected)
        if recipe.train.log_with:
            accelerator.end_training()
        return run

    def _warm_cache(self, run) -> None:  # noqa: ANN001
        """Decode every image missing from the decoded cache on all of this process's cores, before epoch 1.

        Each process takes its share of the files. Files that cannot be decoded stop the run here, all of
        them named, instead of at the first batch that holds one.
        """
        from toolkit.imaging.cache import DecodedImageCache, make_image_loader, warm_cache

        accelerator, data = self.accelerator, self.data
        cache = make_image_loader(self.recipe, ram_mb=0)
        if not isinstance(cache, DecodedImageCache):
            return
        paths = [str(data.root / p) for p in data.df["path"]]
        rank, world = accelerator.process_index, accelerator.num_processes
        def started(missing: int, processes: int) -> None:
            share = f" in each of {world} ranks" if world > 1 else ""
            accelerator.print(f"decoded cache: decoding {missing} image(s) on {processes} processes{share} "
                              "before the first epoch…", flush=True)

        result = warm_cache(cache, paths[rank::world], cores() // max(1, world), on_start=started)
        errors = result.errors
        if world > 1:
            from accelerate.utils import gather_object

            errors = gather_object(errors)
        if errors:
            raise bad_images_error(errors, data.root, "undecodable")
        if result.decoded:
            accelerator.print(f"decoded cache: {result.decoded} image(s) decoded in {result.seconds:.1f} s "
                              f"({result.already} already cached)")
        if accelerator.is_main_process:
            run.update_info(cache_warm={"decoded": result.decoded, "already": result.already,
                                        "seconds": round(result.seconds, 3), "processes": result.processes})
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ folds
    def _write_manifest(self, run) -> None:  # noqa: ANN001
        df = self.data.df.copy()
        df["fold"] = self.data.folds
        from toolkit.store.atomic import atomic_writer

        with atomic_writer(run.file("manifest.csv"), "w") as fh:
            df.to_csv(fh, index=False)

    def _train_folds(self, run, selected: Sequence[int]) -> None:  # noqa: ANN001
        accelerator = self.accelerator
        fold_results: dict[int, dict[str, Any]] = {}
        for k in selected:
            fold_dir = run.file(f"folds/{k}")
            done = fold_dir / "done.json"
            if done.is_file():
                from toolkit.store.atomic import read_json

                fold_results[k] = read_json(done)
                accelerator.print(f"fold {k}: already finished, skipped")
                continue
            fold_results[k] = self._train_fold(run, k)
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self._write_oof_and_summary(run, fold_results)
        accelerator.wait_for_everyone()
        self.call("on_run_end", run=run, results=fold_results)

    def _loaders(self, k: int):  # noqa: ANN202
        from toolkit.data.dataset import BatchNormalize, ImageDataset
        from toolkit.data.transforms import build_transform, resolve_normalization
        from toolkit.imaging.cache import make_image_loader

        recipe, data = self.recipe, self.data
        mean, std = resolve_normalization(recipe.data, self.model_cfg)
        self.mean, self.std = mean, std
        # Loaders hand over uint8 HWC batches; the training process normalizes each batch in one pass.
        self.normalize = BatchNormalize(mean, std, channels_last=recipe.model.channels_last)
        train_rows = np.flatnonzero(data.folds != k)
        val_rows = np.flatnonzero(data.folds == k)
        paths = [str(data.root / p) for p in data.df["path"]]
        seed = _fold_seed(recipe.train.seed, k)
        workers = train_loader_workers(recipe.data.num_workers, self.accelerator.num_processes,
                               self.accelerator.device.type != "cpu")
        loader = make_image_loader(recipe, ram_mb=recipe.data.cache_ram_mb / max(1, workers))  # a copy per worker
        train_ds = ImageDataset([paths[i] for i in train_rows], data.targets[train_rows],
                                build_transform(recipe, train=True, mean=mean, std=std, to_tensor=False),
                                seed=seed, loader=loader)
        val_ds = ImageDataset([paths[i] for i in val_rows], data.targets[val_rows],
                              build_transform(recipe, train=False, mean=mean, std=std, to_tensor=False), loader=loader)
        common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=single_threaded_worker if workers > 0 else None)
        self.generator = torch.Generator()
        tcfg = recipe.train
        sampler = None
        if tcfg.sampler != "random":  # rebalance on the first head (the label of single-head models)
            from toolkit.data.samplers import class_balanced_sampler

            sampler = class_balanced_sampler(data.targets[train_rows, 0], tcfg.sampler, tcfg.epoch_samples,
                                             self.generator)
        drop_last = len(train_ds) > tcfg.batch_size  # no tiny last batch (BatchNorm, MixUp need pairs)
        train_dl = torch.utils.data.DataLoader(train_ds, batch_size=tcfg.batch_size, shuffle=sampler is None,
                                               sampler=sampler, drop_last=drop_last, generator=self.generator, **common)
        val_dl = torch.utils.data.DataLoader(val_ds, batch_size=recipe.train.batch_size * 2, shuffle=False, **common)
        return train_rows, val_rows, train_dl, val_dl

    def _train_fold(self, run, k: int) -> dict[str, Any]:  # noqa: ANN001, C901
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        from toolkit.models import create_model, model_data_config
        from toolkit.train.losses import create_loss

        accelerator, recipe, data = self.accelerator, self.recipe, self.data
        tcfg = recipe.train
        accelerator.free_memory()
        _seed_everything(_fold_seed(tcfg.seed, k), tcfg.deterministic)

        sizes = [len(data.classes[h]) for h in data.heads]
        model = create_model(recipe.model, sizes if data.multi_head else sizes[0],
                             data.heads if data.multi_head else None)
        self.model_cfg = model_data_config(model)
        if recipe.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train_rows, val_rows, train_dl, val_dl = self._loaders(k)
        if accelerator.is_main_process and not run.file("transforms.json").is_file():
            from toolkit.data.transforms import pipeline_record

            run.write_json("transforms.json", pipeline_record(recipe, mean=self.mean, std=self.std))
        self.mixup = None
        loss_cfg = recipe.loss
        if recipe.aug.mixup_alpha > 0 or recipe.aug.cutmix_alpha > 0:
            from timm.data import Mixup

            from toolkit.train.losses import soft_target_variant

            # timm's Mixup smooths the targets it mixes; the loss then takes them as they are.
            self.mixup = Mixup(mixup_alpha=recipe.aug.mixup_alpha, cutmix_alpha=recipe.aug.cutmix_alpha,
                               prob=recipe.aug.mix_prob, label_smoothing=recipe.loss.label_smoothing,
                               num_classes=sizes[0])
            loss_cfg = soft_target_variant(recipe.loss)
        criteria = [create_loss(loss_cfg, data.class_counts(train_rows, h)) for h in range(len(data.heads))]
        self.val_criteria = [create_loss(recipe.loss, data.class_counts(train_rows, h)) for h in range(len(data.heads))]
        head_weights = list(recipe.targets.head_weights or [1.0] * len(data.heads))

        opt = recipe.optim
        optimizer = create_optimizer_v2(model, opt=opt.name, lr=opt.lr, weight_decay=opt.weight_decay,
                                        momentum=opt.momentum, layer_decay=opt.layer_decay, **opt.kwargs)
        updates_per_epoch = max(1, math.ceil(len(train_dl) / max(1, accelerator.num_processes) / tcfg.grad_accum))
        scheduler = None
        if recipe.sched.name != "none":
            s = recipe.sched
            scheduler, _ = create_scheduler_v2(
                optimizer, sched=s.name, num_epochs=tcfg.epochs, decay_epochs=s.decay_epochs, decay_rate=s.decay_rate,
                min_lr=s.min_lr, warmup_lr=s.warmup_lr, warmup_epochs=s.warmup_epochs,
                plateau_mode=_direction(tcfg.metric),
                step_on_epochs=s.name == "plateau", updates_per_epoch=updates_per_epoch, **s.kwargs)
        model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, train_dl, val_dl)
        if recipe.model.compile:
            model = torch.compile(model)
        criteria = [c.to(accelerator.device) for c in criteria]
        self.ema = None
        if tcfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(accelerator.unwrap_model(model), decay=tcfg.ema_decay)
        progress = FoldProgress()
        self.scheduler = scheduler
        self.fold_progress = progress

        fold_dir = run.file(f"folds/{k}")
        state = _state_dir(fold_dir)
        if state is not None:
            # Accelerate loads model/optimizer/RNG with weights_only=True; our own state is JSON, so
            # resuming never unpickles arbitrary objects (custom objects would be unpickled in full).
            accelerator.load_state(str(state))
            from toolkit.store.atomic import read_json

            saved = read_json(state / "progress.json")
            if self.ema is not None:
                from safetensors.torch import load_file

                self.ema.module.load_state_dict(load_file(str(state / "ema.safetensors")))
            progress.load_state_dict(saved["progress"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            accelerator.print(f"fold {k}: resumed after epoch {progress.epoch}")
            if accelerator.is_main_process:
                _restore_metrics(run, k, progress.history)
        self.call("on_fold_start", fold=k, train_rows=train_rows, val_rows=val_rows)

        meta = self._checkpoint_meta(k)
        for epoch in range(progress.epoch + 1, tcfg.epochs):
            t0 = time.perf_counter()
            _seed_epoch(_fold_seed(tcfg.seed, k, epoch + 1))
            self.generator.manual_seed(_fold_seed(tcfg.seed, k, epoch + 1000))
            # The prepared loader re-announces its own epoch counter to the dataset on every __iter__;
            # setting it here keeps augmentation streams tied to the real epoch (resume depends on it).
            if hasattr(train_dl, "set_epoch"):
                train_dl.set_epoch(epoch)
            else:
                train_dl.dataset.set_epoch(epoch)
            train_loss, seen = self._train_epoch(model, optimizer, scheduler, train_dl, criteria, head_weights,
                                                 progress, k, epoch)
            train_s = time.perf_counter() - t0
            eval_model = self.ema.module if self.ema is not None and tcfg.ema_validate else model
            val = self._validate(eval_model, val_dl, self.val_criteria, head_weights)
            score = val["metrics"][tcfg.metric] if tcfg.metric in val["metrics"] else val["metrics"]["val_loss"]
            if scheduler is not None:
                scheduler.step(epoch + 1, score)
            improved = progress.best is None or _better(tcfg.metric, score, progress.best)
            row = {"fold": k, "epoch": epoch, "train_loss": train_loss, **_flat("", val["metrics"]),
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                   "train_img_s": seen / max(train_s, 1e-9), "train_s": train_s, "data_wait_s": self.data_wait,
                   "best": improved}
            row.update({f"recall_{c}": v for c, v in val["metrics"].get("per_class_recall", {}).items()})
            progress.epoch = epoch
            progress.history.append(row)
            if improved:
                progress.best, progress.best_epoch, progress.bad_epochs = float(score), epoch, 0
                if accelerator.is_main_process:
                    from toolkit.models import save_checkpoint

                    meta.update(epoch=epoch, score=float(score), metric=tcfg.metric)
                    save_checkpoint(accelerator.unwrap_model(eval_model), fold_dir / "model.safetensors", meta)
                    self._write_fold_oof(fold_dir, k, val_rows, val)
                    from toolkit.store.atomic import atomic_write_json

                    atomic_write_json(fold_dir / "best.json", {"epoch": epoch, "metrics": val["metrics"]})
            else:
                progress.bad_epochs += 1
            self._save_state(fold_dir)
            if accelerator.is_main_process:
                run.append_metrics(row)
            if tcfg.log_with:
                accelerator.log({f"fold{k}/{key}": v for key, v in row.items() if isinstance(v, int | float)},
                                step=epoch)
            accelerator.print(_epoch_line(row, tcfg.metric))
            self.call("on_epoch_end", fold=k, epoch=epoch, row=row)
            if tcfg.patience is not None and progress.bad_epochs >= tcfg.patience:
                accelerator.print(f"fold {k}: early stop after epoch {epoch} ({tcfg.patience} epochs without gain)")
                break

        result = self._fold_result(fold_dir, k, progress)
        if accelerator.is_main_process:
            from toolkit.store.atomic import atomic_write_json

            atomic_write_json(fold_dir / "done.json", result)
        self.call("on_fold_end", fold=k, result=result)
        return result

    def _checkpoint_meta(self, k: int) -> dict[str, Any]:
        recipe, data = self.recipe, self.data
        return {
            "arch": recipe.model.name, "fold": k, "heads": data.heads,
            "classes": data.classes if data.multi_head else data.classes[data.heads[0]],
            "num_classes": [len(data.classes[h]) for h in data.heads] if data.multi_head else len(data.classes[data.heads[0]]),
            "in_chans": recipe.model.in_chans, "image_size": recipe.data.image_size,
            "eval_size": recipe.data.eval_size or recipe.data.image_size,
            "mean": list(self.mean), "std": list(self.std), "resize": recipe.aug.resize, "crop_pct": recipe.aug.crop_pct,
            "weights": "ema" if recipe.train.ema and recipe.train.ema_validate else "raw",
            "multi_head": data.multi_head,
        }

    def _fold_result(self, fold_dir: Path, k: int, progress: FoldProgress) -> dict[str, Any]:
        from toolkit.store.atomic import read_json

        best = read_json(fold_dir / "best.json") if (fold_dir / "best.json").is_file() else {"metrics": {}}
        return {"fold": k, "best_epoch": progress.best_epoch, "best_score": progress.best,
                "epochs_run": progress.epoch + 1, "metrics": best["metrics"]}

    def _save_state(self, fold_dir: Path) -> None:
        accelerator = self.accelerator
        tmp = fold_dir / "state.tmp"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            from toolkit.store.atomic import atomic_write_json

            if self.ema is not None:
                from safetensors.torch import save_file

                ema_state = {k: v.detach().cpu().contiguous() for k, v in self.ema.module.state_dict().items()}
                save_file(ema_state, str(tmp / "ema.safetensors"))
            scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
            atomic_write_json(tmp / "progress.json", {"progress": self.fold_progress.state_dict(), "scheduler": scheduler})
            _swap_dir(tmp, fold_dir / "state")
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ epochs
    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, criteria, weights) -> torch.Tensor:  # noqa: ANN001
        logits = logits.float()
        if targets.is_floating_point():  # MixUp/CutMix soft targets (single head)
            return weights[0] * criteria[0](logits, targets)
        if targets.ndim == 1:
            targets = targets[:, None]
        total = logits.new_zeros(())
        start = 0
        for h, crit in enumerate(criteria):
            n = len(self.data.classes[self.data.heads[h]])
            total = total + weights[h] * crit(logits[:, start:start + n], targets[:, h])
            start += n
        return total

    def _train_epoch(self, model, optimizer, scheduler, loader, criteria, weights, progress: FoldProgress,  # noqa: ANN001
                     k: int, epoch: int) -> tuple[float, int]:
        accelerator, tcfg = self.accelerator, self.recipe.train
        model.train()
        total, count, seen = 0.0, 0, 0
        bar = _Progress(self.progress, accelerator, f"fold {k} epoch {epoch + 1}/{tcfg.epochs}", len(loader),
                        tcfg.log_every)
        t0 = time.perf_counter()
        self.data_wait = 0.0  # seconds spent waiting for batches: the loader's share of the epoch
        waited = time.perf_counter()
        for step, (images, targets, _) in enumerate(loader):
            self.data_wait += time.perf_counter() - waited
            images = self.normalize(images)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets.reshape(len(targets), -1)[:, 0])
            with accelerator.accumulate(model):
                loss = self._loss(model(images), targets, criteria, weights)
                finite = accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all()
                if not bool(finite):
                    raise TrainingError(
                        f"non-finite loss in fold {k}, epoch {epoch}, step {step}; the last good checkpoint is kept",
                        "lower optim.lr, set train.grad_clip, or use train.precision = \"no\"/\"bf16\" instead of fp16")
                accelerator.backward(loss)
                if tcfg.grad_clip is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    progress.num_updates += 1
                    if scheduler is not None:
                        scheduler.step_update(progress.num_updates)
                    if self.ema is not None:
                        self.ema.update(model, step=progress.num_updates)
            n = images.shape[0]
            total += float(loss.detach()) * n
            count += n
            seen += n * accelerator.num_processes
            bar.update(loss=total / max(count, 1), img_s=seen / max(time.perf_counter() - t0, 1e-9))
            waited = time.perf_counter()
        bar.close()
        mean_loss = torch.tensor([total, count], device=accelerator.device, dtype=torch.float64)
        mean_loss = accelerator.reduce(mean_loss, reduction="sum")
        return float(mean_loss[0] / max(mean_loss[1], 1)), seen

    @torch.inference_mode()
    def _validate(self, model, loader, criteria, weights) -> dict[str, Any]:  # noqa: ANN001
        from toolkit.metrics import classification_metrics, multihead_metrics

        accelerator, data = self.accelerator, self.data
        model.eval()
        logits_all, targets_all, index_all = [], [], []
        for images, targets, index in loader:
            images = self.normalize(images)
            with accelerator.autocast():
                logits = model(images).float()
            logits, targets, index = accelerator.gather_for_metrics((logits, targets, index))
            logits_all.append(logits.cpu())
            targets_all.append(targets.cpu())
            index_all.append(index.cpu())
        logits = torch.cat(logits_all)
        targets = torch.cat(targets_all)
        index = torch.cat(index_all).numpy()
        val_loss = float(self._loss(logits, targets, [c.cpu() for c in criteria], weights))
        targets = targets.reshape(len(targets), -1).numpy()
        probs, start = [], 0
        for h in data.heads:
            n = len(data.classes[h])
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

    # ------------------------------------------------------------------ outputs
    def _oof_frame(self, k: int, val_rows: np.ndarray, val: dict[str, Any]) -> pd.DataFrame:
        data = self.data
        rows = val_rows[val["index"]]
        out = pd.DataFrame({"id": [data.ids[i] for i in rows], "path": data.df["path"].to_numpy()[rows],
                            "fold": k})
        for h_i, h in enumerate(data.heads):
            classes = data.classes[h]
            label = np.asarray(classes, dtype=object)[data.targets[rows, h_i]]
            pred = np.asarray(classes, dtype=object)[val["probs"][h_i].argmax(1)]
            if data.multi_head:
                out[f"label:{h}"] = label
                out[f"pred:{h}"] = pred
                for c_i, c in enumerate(classes):
                    out[f"{h}:{c}"] = val["probs"][h_i][:, c_i].astype(np.float32)
            else:
                out["label"] = label
                out["pred"] = pred
                for c_i, c in enumerate(classes):
                    out[c] = val["probs"][h_i][:, c_i].astype(np.float32)
        return out

    def _write_fold_oof(self, fold_dir: Path, k: int, val_rows: np.ndarray, val: dict[str, Any]) -> None:
        from toolkit.store.atomic import atomic_writer

        frame = self._oof_frame(k, val_rows, val)
        with atomic_writer(fold_dir / "oof.parquet") as fh:
            frame.to_parquet(fh, index=False)

    def _write_oof_and_summary(self, run, results: dict[int, dict[str, Any]]) -> None:  # noqa: ANN001
        from toolkit.metrics import classification_metrics, cv_summary, multihead_metrics
        from toolkit.store.atomic import atomic_writer

        data, recipe = self.data, self.recipe
        frames = [pd.read_parquet(run.file(f"folds/{k}/oof.parquet")) for k in sorted(results)
                  if run.file(f"folds/{k}/oof.parquet").is_file()]
        summary: dict[str, Any] = {
            "metric": recipe.train.metric, "heads": data.heads, "classes": data.classes,
            "folds": {str(k): v for k, v in results.items()},
            "cv": cv_summary([v["metrics"] for v in results.values() if v.get("metrics")]),
        }
        if frames:
            oof = pd.concat(frames, ignore_index=True)
            order = {rid: i for i, rid in enumerate(data.ids)}
            oof = oof.iloc[np.argsort([order[r] for r in oof["id"]], kind="stable")].reset_index(drop=True)
            with atomic_writer(run.file("oof.parquet")) as fh:
                oof.to_parquet(fh, index=False)
            if data.multi_head:
                y = {h: np.array([data.classes[h].index(v) for v in oof[f"label:{h}"]]) for h in data.heads}
                p = {h: oof[[f"{h}:{c}" for c in data.classes[h]]].to_numpy() for h in data.heads}
                summary["oof"] = multihead_metrics(y, p, data.classes, combine=data.heads)
            else:
                classes = data.classes[data.heads[0]]
                y = np.array([classes.index(v) for v in oof["label"]])
                summary["oof"] = classification_metrics(y, oof[classes].to_numpy(), classes)
            summary["oof_rows"] = len(oof)
        run.update_summary(summary)


# --------------------------------------------------------------------------- module helpers
def _direction(metric: str) -> str:
    from toolkit.metrics import metric_direction

    return metric_direction(metric)


def _better(metric: str, new: float, best: float) -> bool:
    from toolkit.metrics import is_better

    return is_better(metric, new, best)


def _restore_metrics(run, fold: int, history: list[dict[str, Any]]) -> None:  # noqa: ANN001
    """On resume, make metrics.csv hold exactly this fold's saved history (no duplicated or lost rows)."""
    from toolkit.store.atomic import atomic_writer

    path = run.file("metrics.csv")
    rows = [r for r in run.read_metrics(as_frame=False) if str(r.get("fold")) != str(fold)] if path.is_file() else []
    frame = pd.DataFrame([*rows, *history])
    with atomic_writer(path, "w") as fh:
        frame.to_csv(fh, index=False)


def _flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, int | float | str | bool):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _epoch_line(row: dict[str, Any], metric: str) -> str:
    shown = [f"fold {row['fold']} epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}",
             f"val_loss {row.get('val_loss', float('nan')):.4f}"]
    for key in dict.fromkeys((metric, "accuracy", "macro_f1")):
        if key in row:
            shown.append(f"{key} {row[key]:.4f}")
    shown.append(f"{row['train_img_s']:.0f} img/s {row['seconds']:.1f}s" + (" *" if row.get("best") else ""))
    return " | ".join(shown)


class _Progress:
    """A rich bar on a terminal; a plain line every ``every`` steps otherwise. Main process only."""

    def __init__(self, enabled: bool | None, accelerator, title: str, total: int, every: int) -> None:  # noqa: ANN001
        import sys

        self.active = accelerator.is_main_process
        self.tty = sys.stdout.isatty() if enabled is None else enabled
        self.title, self.total, self.every, self.step = title, total, max(1, every), 0
        self.bar = None
        if self.active and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
            self.task = self.bar.add_task(title, total=total, info="")
            self.bar.start()

    def update(self, loss: float, img_s: float) -> None:
        if not self.active:
            return
        self.step += 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=f"loss {loss:.4f} {img_s:.0f} img/s")
        elif self.step % self.every == 0:
            print(f"{self.title} step {self.step}/{self.total} loss {loss:.4f} {img_s:.0f} img/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(recipe: Recipe, **kwargs: Any):  # noqa: ANN201
    """Train a recipe (see :class:`Trainer` for the keyword arguments); return the run."""
    return Trainer(recipe, **kwargs).run()


def resume_recipe(run_ref: str | Path, runs_root: str | Path | None = None) -> Recipe:
    """The recipe a run was started with (what ``--resume`` continues)."""
    from toolkit.config import load_recipe
    from toolkit.store import RunStore

    run = RunStore(runs_root).open(run_ref)
    path = run.file("recipe.toml")
    if not path.is_file():
        raise RunError(f"run {run.id} has no recipe.toml", "it cannot be resumed; start a new run")
    return load_recipe(path)
