"""The one trainer: the same recipe on a laptop CPU, one GPU with mixed precision, or many GPUs.

It reads like Accelerate's complete CV example: one ``prepare``, ``accumulate``,
``gather_for_metrics``, ``save_state``/``load_state``. Each fold's objects live in one
:class:`~toolkit.train.state.FoldState`; checkpoints, metrics, trackers, early stopping, EMA updates
and progress are callbacks (:mod:`toolkit.train.callbacks`). One run folder holds every fold::

    folds/<k>/model.safetensors   best weights (+ model.json: the checkpoint record)
    folds/<k>/state/              last full training state (resume); removed when the fold finishes
    folds/<k>/oof.parquet         the best epoch's validation probabilities
    folds/<k>/best.json, done.json
    oof.parquet, metrics.csv, summary.json, manifest.csv, classes.json, transforms.json

Only the main process writes, and every file is written through the run's store methods.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toolkit.config.schema import Recipe
from toolkit.data.training import bad_images_error, load_training_data, parse_fold_selection, skip_bad_images
from toolkit.errors import RunError, TrainingError, UsageError
from toolkit.metrics import is_better
from toolkit.progress import NullProgress, Progress, as_progress
from toolkit.runtime import cores, make_accelerator
from toolkit.store import Run, RunStatus, RunStore, default_runs_root, run_holding
from toolkit.store.atomic import no_room
from toolkit.train.callbacks import HOOKS, Callback, default_callbacks, start_trackers
from toolkit.train.loaders import fold_loaders, fold_seed
from toolkit.train.optimizers import create_optimizer
from toolkit.train.results import write_oof_and_summary
from toolkit.train.state import FoldState
from toolkit.train.steps import evaluate, flat_metrics, train_epoch
from toolkit.train.validate import check_pretrained, check_recipe, validate_recipe


class Trainer:
    """Train every selected fold of a recipe into one run folder.

    Args:
        recipe: The resolved recipe.
        runs_root: Folder of run folders (default ``$CLSCTL_RUNS`` or ``./runs``).
        name: Run name (default the recipe's).
        folds: ``all``, one fold, or a list such as ``0,2``; None is every fold for a new run and the
            recorded folds on resume.
        resume: A run (folder, id or name) to continue: finished folds are skipped, an unfinished
            fold continues from its last saved epoch. Training holds the run's lock throughout, so a
            second trainer on the same run fails at once.
        callbacks: More callbacks, run after the built-in ones (see :mod:`toolkit.train.callbacks`).
        progress: Where progress goes; None prints plain lines, False shows nothing. Only the main
            process reports.
        parents: Runs a new run is made from besides the one holding its manifest (a sweep names itself).

    While it runs, callbacks read ``recipe``, ``accelerator``, ``data`` (the manifest, heads, classes
    and folds), ``folds`` (the folds this run trains), ``folder`` (the run, whose methods write every
    run file), ``progress`` and ``callbacks`` from the trainer. A callback that sets ``stop_training`` (and
    ``state.should_stop``) ends the run after the current epoch: the folds after it are left untrained.
    """

    def __init__(self, recipe: Recipe, *, runs_root: str | Path | None = None, name: str | None = None,
                 folds: str | None = None, resume: str | Path | Run | None = None,
                 callbacks: Sequence[Callback] = (), progress: Progress | bool | None = None,
                 parents: Sequence[str | Run] = ()) -> None:
        self.recipe = recipe
        self.parents = list(parents)
        self.stop_training = False
        self.runs_root = runs_root
        self.name = name or recipe.name
        self.fold_spec = folds
        self.resume = resume
        self.extra_callbacks = list(callbacks)
        self.requested_progress = progress
        self.callbacks: list[Callback] = []
        self.progress: Progress = NullProgress()
        self._warned_batchnorm = False
        self.bad_images: list[dict[str, str]] | None = None  # rows skipped as unreadable (on_bad_image = "skip")

    def call(self, hook: str, **kwargs: Any) -> None:
        """Call ``hook`` on every callback, in order, with the trainer and ``kwargs``."""
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r}; hooks are {', '.join(HOOKS)}")
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(trainer=self, **kwargs)

    # ------------------------------------------------------------------ the run
    def run(self) -> Run:
        """Train; return the run. Marks the run failed/interrupted when training does not finish.

        A Ctrl-C or SIGTERM leaves with a note on the exception naming the command that resumes the run,
        and a write that finds no room (full disk, quota, ``ulimit -f``) fails as a :class:`TrainingError`
        saying what to free; what was written before it stays whole.
        """
        recipe = self.recipe
        check_recipe(recipe)
        validate_recipe(recipe)  # a bad name fails before any data is read or any run folder exists
        check_pretrained(recipe.model)  # and so do weights that cannot be had

        # Accelerate refuses a file-writing tracker (TensorBoard) without a logging folder when it is
        # built; the run's own trackers/ folder is set once the run exists, before the trackers start.
        trackers = {"log_with": recipe.train.log_with, "project_dir": "."} if recipe.train.log_with else {}
        self.accelerator = accelerator = make_accelerator(
            recipe.train.precision, gradient_accumulation_steps=recipe.train.grad_accum,
            step_scheduler_with_optimizer=False, **trackers)
        self.progress = as_progress(self.requested_progress) if accelerator.is_main_process else NullProgress()
        # The run's lock is held until training ends, however it ends (the OS drops it if the process dies).
        with contextlib.ExitStack() as held:
            resumed = self._resumed_run(held)
            self.data = load_training_data(recipe)
            self.folds = self._fold_selection(resumed)
            # Before a new run's folder exists, or a resumed run is marked running: an undecodable image
            # then leaves no run behind, and a Ctrl-C leaves a resumed run as it was (interrupted).
            warmed = self._check_images()
            self.folder = run = self._open_run(resumed, held)
            self.callbacks = [*default_callbacks(recipe, self.progress, self.folds), *self.extra_callbacks]
            try:
                if accelerator.is_main_process:
                    with run.activate(), _no_room_explained(run):
                        self._start(warmed)
                        self._train_folds()
                else:
                    self._start(warmed)
                    self._train_folds()
            except (KeyboardInterrupt, SystemExit) as exc:
                if accelerator.is_main_process and _status(run) is RunStatus.INTERRUPTED:
                    exc.add_note(f"resume with `{resume_command(run)}`")
                raise
            if recipe.train.log_with:
                accelerator.end_training()
        return run

    def _resumed_run(self, held: contextlib.ExitStack) -> Run | None:
        """The run to resume, locked before any data is read so a second trainer fails at once; None if new."""
        if self.resume is None:
            return None
        run = RunStore(self.runs_root).open(self.resume)
        if run.kind != "train":
            raise RunError(f"--resume {self.resume}: run {run.id} is a `{run.kind}` run", "pass a train run")
        self._lock(run, held)
        return run

    def _lock(self, run: Run, held: contextlib.ExitStack) -> None:
        """Hold ``run``'s lock on the main process (the one that writes) until ``held`` closes."""
        accelerator = self.accelerator
        refused: list[Any] = [None]
        if accelerator.is_main_process:
            try:
                held.enter_context(run.lock())
            except RunError as exc:
                refused = [(exc.message, exc.hint)]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            # Every rank stops, not only the main one: the others would wait for it forever.
            broadcast_object_list(refused)
        if refused[0] is not None:
            raise RunError(*refused[0])

    def _fold_selection(self, resumed: Run | None) -> list[int]:
        """The folds to train: as asked for a new run; on resume the run's own, or more of them if asked.

        A resume may add folds (fold 0 first to try a recipe, then ``--resume RUN --folds all`` for the
        full CV in the same run) but never drop one: ``oof.parquet`` and ``summary.json`` cover every fold
        a run records, so a narrower ``--folds`` would either rewrite them without folds already trained
        or leave the recorded ones unfinished. It is refused, naming the folds to pass.
        """
        available = self.data.fold_ids
        if resumed is None:
            return parse_fold_selection(self.fold_spec, available)
        recorded = resumed.info.get("folds")
        if recorded is None:  # runs written before the selection was recorded trained what they were given
            return parse_fold_selection(self.fold_spec, available)
        recorded = [int(k) for k in recorded]
        gone = [k for k in recorded if k not in available]
        if gone:
            raise RunError(f"run {resumed.id} trains fold(s) {recorded}, but the data now has folds {available}",
                           "the data or its split changed since the run started; start a new run")
        if self.fold_spec is None:
            return recorded
        chosen = parse_fold_selection(self.fold_spec, available)
        dropped = [k for k in recorded if k not in chosen]
        if dropped:
            wider = ",".join(str(k) for k in sorted({*recorded, *chosen}))
            raise UsageError(f"--folds {self.fold_spec}: run {resumed.id} trains folds {recorded}, and a resume "
                             f"cannot drop fold(s) {dropped}",
                             f"drop --folds to resume folds {recorded}, or pass --folds {wider} to add folds")
        return chosen

    def _open_run(self, resumed: Run | None, held: contextlib.ExitStack) -> Run:
        """Create the run folder (or take the resumed one) on the main process, locked; every process gets it."""
        if resumed is not None:
            return resumed
        from accelerate.utils import broadcast_object_list

        from toolkit.store.fingerprint import manifest_fingerprint

        accelerator, data, recipe = self.accelerator, self.data, self.recipe
        path_holder: list[Any] = [None]
        if accelerator.is_main_process:
            source = run_holding(recipe.data.manifest)
            run = RunStore(self.runs_root).create(
                "train", name=self.name, recipe=recipe, seed=recipe.train.seed,
                parents=[*([source] if source is not None else []), *self.parents],
                data_fingerprint=manifest_fingerprint(data.df, data.root),
                extra={"folds": self.folds, "heads": data.heads, "data_root": str(data.root),
                       "num_processes": accelerator.num_processes})
            held.enter_context(run.lock())  # a new folder: nobody else can hold it yet
            path_holder = [str(run.path)]
        if accelerator.num_processes > 1:
            broadcast_object_list(path_holder)
        return Run(path_holder[0])

    def _start(self, warmed: dict[str, Any] | None) -> None:
        """Record what this session adds to the run and start the trackers (inside the run's lifecycle)."""
        accelerator, data, recipe, run = self.accelerator, self.data, self.recipe, self.folder
        if accelerator.is_main_process:
            if self.resume is not None:
                run.update_info(resumed=True, pid=os.getpid(), folds=self.folds)
                run.remove_stale_temp_files()  # what a kill -9 in the middle of a write left
            if warmed is not None:
                run.update_info(cache_warm=warmed)
            if self.bad_images is not None:
                run.update_info(bad_images={"skipped": len(self.bad_images), "files": self.bad_images})
            run.write_classes(data.heads, data.classes)
            manifest = data.df.copy()
            manifest["fold"] = data.folds
            run.write_manifest(manifest)
        if recipe.train.log_with:
            start_trackers(accelerator, run, recipe)

    def _check_images(self) -> dict[str, Any] | None:
        """Decode every image once before epoch 1: find every unreadable one, and fill the decoded cache.

        Each process takes its share of the files, and decodes on all of its cores at once what the cache
        lacks (:func:`~toolkit.imaging.cache.check_images`). Unreadable files stop the run here, all of them
        named, instead of at the first batch that holds one; with ``data.on_bad_image = "skip"`` their rows
        are dropped instead (``self.bad_images``, recorded in ``run.json``).

        Returns:
            What was done, for ``run.json`` (``cache_warm``); None when the recipe reads no decoded cache.
        """
        from toolkit.data.preprocessing import make_image_loader
        from toolkit.imaging.cache import DecodedImageCache, check_images

        accelerator, data, progress = self.accelerator, self.data, self.progress
        loader = make_image_loader(self.recipe, ram_mb=0)  # the loader needs sizes only, not mean/std
        paths = [str(data.root / p) for p in data.df["path"]]
        rank, world = accelerator.process_index, accelerator.num_processes

        def started(missing: int, processes: int) -> None:
            share = f" in each of {world} ranks" if world > 1 else ""
            progress.log(f"decoded cache: decoding {missing} image(s) on {processes} processes{share} "
                         "before the first epoch…")

        result = check_images(paths[rank::world], loader, cores() // max(1, world), on_start=started)
        errors = result.errors
        if world > 1:
            from accelerate.utils import gather_object

            found = dict(gather_object(errors))  # rank by rank: back into manifest order below
            errors = [(p, found[p]) for p in paths if p in found]
        if errors and self.recipe.data.on_bad_image == "fail":
            raise bad_images_error(errors, data.root, "unreadable")
        if self.recipe.data.on_bad_image == "skip":
            self.bad_images = []
            if errors:
                self.data, self.bad_images = skip_bad_images(data, errors, self.folds)
                listed = "; ".join(f"{b['path']}: {b['reason']}" for b in self.bad_images[:3])
                progress.log(f"skipped {len(errors)} unreadable image(s) (data.on_bad_image = \"skip\"; "
                             f"listed in run.json): {listed}{' …' if len(errors) > 3 else ''}")
        if result.decoded:
            progress.log(f"decoded cache: {result.decoded} image(s) decoded in {result.seconds:.1f} s "
                         f"({result.already} already cached)")
        accelerator.wait_for_everyone()
        if not isinstance(loader, DecodedImageCache):
            return None
        return {"decoded": result.decoded, "already": result.already, "seconds": round(result.seconds, 3),
                "processes": result.processes}

    def _train_folds(self) -> None:
        accelerator, run = self.accelerator, self.folder
        results: dict[int, dict[str, Any]] = {}
        for k in self.folds:
            if self.stop_training:
                self.progress.log(f"fold {k}: not trained (a callback stopped the run)")
                continue
            done = run.read_fold_done(k)
            if done is not None:
                results[k] = done
                self.progress.log(f"fold {k}: already finished, skipped")
                if accelerator.is_main_process and not self.recipe.train.keep_state:
                    run.remove_fold_state(k)  # a kill between done.json and the removal left it behind
                continue
            results[k] = self._train_fold(k)
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_oof_and_summary(run, self.data, self.recipe, results)
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ one fold
    def _train_fold(self, k: int) -> dict[str, Any]:
        """Train fold ``k`` from its start or its saved state; return its result (``done.json``)."""
        accelerator, recipe, run = self.accelerator, self.recipe, self.folder
        tcfg = recipe.train
        state = self._fold_state(k)
        if run.fold_state_dir(k) is not None:
            self._load_state(state)
        elif self.resume is not None and accelerator.is_main_process and any(
                str(row.get("fold")) == str(k) for row in run.read_metrics(as_frame=False)):
            run.replace_fold_metrics(k, [])  # a kill before the fold's first saved state had logged an epoch
        self.call("on_fold_start", state=state)

        for epoch in range(state.epoch + 1, tcfg.epochs):
            t0 = time.perf_counter()
            _seed_epoch(fold_seed(tcfg.seed, k, epoch + 1))
            state.generator.manual_seed(fold_seed(tcfg.seed, k, epoch + 1000))
            # The prepared loader re-announces its own epoch counter to the dataset on every __iter__;
            # setting it here keeps augmentation streams tied to the real epoch (resume depends on it).
            if hasattr(state.train_loader, "set_epoch"):
                state.train_loader.set_epoch(epoch)
            else:
                state.train_loader.dataset.set_epoch(epoch)
            train_loss, seen = train_epoch(accelerator, state, epoch, tcfg.grad_clip, self.call, tcfg.nonfinite)
            train_s = time.perf_counter() - t0
            val = evaluate(accelerator, state, self.data)
            score = val["metrics"][tcfg.metric] if tcfg.metric in val["metrics"] else val["metrics"]["val_loss"]
            if state.scheduler is not None:
                state.scheduler.step(epoch + 1, score)
            state.improved = state.best is None or is_better(tcfg.metric, score, state.best)
            row = {"fold": k, "epoch": epoch, "train_loss": train_loss, **flat_metrics(val["metrics"]),
                   "lr": state.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                   "train_img_s": seen / max(train_s, 1e-9), "train_s": train_s, "data_wait_s": state.data_wait,
                   "best": state.improved}
            row.update({f"recall_{c}": v for c, v in val["metrics"].get("per_class_recall", {}).items()})
            if tcfg.nonfinite == "skip":
                row["nonfinite_skipped"] = state.epoch_skipped
            state.epoch = epoch
            state.history.append(row)
            if state.improved:
                state.best, state.best_epoch = float(score), epoch
            self.call("on_epoch_end", state=state, row=row, val=val)
            self._save_state(state)
            if state.should_stop:
                break

        best = run.read_fold_best(k) or {"metrics": {}}
        result = {"fold": k, "best_epoch": state.best_epoch, "best_score": state.best,
                  "epochs_run": state.epoch + 1, "metrics": best["metrics"]}
        if tcfg.nonfinite == "skip":
            result["nonfinite_skipped"] = state.nonfinite_skipped
            if state.nonfinite_skipped:
                self.progress.log(f"fold {k}: skipped {state.nonfinite_skipped} batch(es) with a non-finite loss")
        if accelerator.is_main_process:
            run.write_fold_done(k, result)
        self.call("on_fold_end", state=state, result=result)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and not tcfg.keep_state:
            run.remove_fold_state(k)  # done.json makes resume skip the fold; its state is dead weight
        return result

    def _fold_state(self, k: int) -> FoldState:
        """Build fold ``k``'s model, loaders, losses, optimizer and scheduler, and ``prepare`` them.

        The order of these steps is the order of their random draws: changing it changes the weights.
        """
        from timm.scheduler import create_scheduler_v2

        from toolkit.data.preprocessing import Preprocessing
        from toolkit.data.transforms import pipeline_record, resolve_normalization
        from toolkit.metrics import metric_direction
        from toolkit.models import ModelRecord, create_model, model_data_config, model_settings
        from toolkit.train.losses import create_loss, soft_target_variant

        accelerator, recipe, data, run = self.accelerator, self.recipe, self.data, self.folder
        tcfg = recipe.train
        accelerator.free_memory()
        _seed_everything(fold_seed(tcfg.seed, k), tcfg.deterministic)

        sizes = [len(data.classes[h]) for h in data.heads]
        model = create_model(recipe.model, sizes if data.multi_head else sizes[0],
                             data.heads if data.multi_head else None)
        model_cfg = model_data_config(model)
        if recipe.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        mean, std = resolve_normalization(recipe.data, model_cfg)
        prep = Preprocessing.from_recipe(recipe, mean, std)
        loaders = fold_loaders(recipe, data, k, prep, num_processes=accelerator.num_processes,
                               on_gpu=accelerator.device.type != "cpu")
        self._warn_few_batchnorm_updates(k, model, math.ceil(len(loaders.train) / accelerator.num_processes),
                                         len(loaders.train_rows))
        if accelerator.is_main_process and run.read_transforms() is None:
            run.write_transforms(pipeline_record(recipe, mean=mean, std=std))
        mixup = None
        loss_cfg = recipe.loss
        if recipe.aug.mixup_alpha > 0 or recipe.aug.cutmix_alpha > 0:
            from timm.data import Mixup

            # timm's Mixup smooths the targets it mixes; the loss then takes them as they are.
            mixup = Mixup(mixup_alpha=recipe.aug.mixup_alpha, cutmix_alpha=recipe.aug.cutmix_alpha,
                          prob=recipe.aug.mix_prob, label_smoothing=recipe.loss.label_smoothing, num_classes=sizes[0])
            loss_cfg = soft_target_variant(recipe.loss)
        heads = range(len(data.heads))
        criteria = [create_loss(loss_cfg, data.class_counts(loaders.train_rows, h)) for h in heads]
        val_criteria = [create_loss(recipe.loss, data.class_counts(loaders.train_rows, h)) for h in heads]

        optimizer = create_optimizer(model, recipe.optim)
        updates_per_epoch = max(1, math.ceil(len(loaders.train) / max(1, accelerator.num_processes) / tcfg.grad_accum))
        scheduler = None
        if recipe.sched.name != "none":
            s = recipe.sched
            scheduler, _ = create_scheduler_v2(
                optimizer, sched=s.name, num_epochs=tcfg.epochs, decay_epochs=s.decay_epochs, decay_rate=s.decay_rate,
                min_lr=s.min_lr, warmup_lr=s.warmup_lr, warmup_epochs=s.warmup_epochs,
                plateau_mode=metric_direction(tcfg.metric),
                step_on_epochs=s.name == "plateau", updates_per_epoch=updates_per_epoch, **s.kwargs)
        model, optimizer, train_dl, val_dl = accelerator.prepare(model, optimizer, loaders.train, loaders.val)
        if recipe.model.compile:
            model = torch.compile(model)
        criteria = [c.to(accelerator.device) for c in criteria]
        ema = None
        if tcfg.ema:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(accelerator.unwrap_model(model), decay=tcfg.ema_decay)
        validate_ema = tcfg.ema and tcfg.ema_validate
        record = ModelRecord(arch=recipe.model.name, heads=list(data.heads), classes=data.classes, preprocessing=prep,
                             model=model_settings(recipe.model), fold=k, weights="ema" if validate_ema else "raw")
        return FoldState(fold=k, model=model, optimizer=optimizer, scheduler=scheduler, train_loader=train_dl,
                         val_loader=val_dl, generator=loaders.generator, normalize=loaders.normalize,
                         criteria=criteria, val_criteria=val_criteria,
                         head_weights=list(recipe.targets.head_weights or [1.0] * len(data.heads)), head_sizes=sizes,
                         train_rows=loaders.train_rows, val_rows=loaders.val_rows, record=record, mixup=mixup,
                         ema=ema, validate_ema=validate_ema)

    def _warn_few_batchnorm_updates(self, k: int, model: torch.nn.Module, batches: int, rows: int) -> None:
        """Say once per run when BatchNorm gets two updates or fewer per epoch: its running statistics, which
        validation uses, then hardly leave their initial values and the validation scores mean little."""
        if self._warned_batchnorm or batches > 2 or not self.accelerator.is_main_process:
            return
        if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return
        self._warned_batchnorm = True
        smaller = max(2, 2 ** int(math.log2(max(2, rows // 8))))
        self.progress.log(f"warning: fold {k} trains {rows} rows in {batches} "
                          f"batch(es) of at most {self.recipe.train.batch_size}: BatchNorm's running statistics, "
                          f"which validation uses, move {batches} time(s) per epoch and validation scores mean "
                          f"little — lower train.batch_size (e.g. {smaller})")

    # ------------------------------------------------------------------ saved state (resume)
    def _save_state(self, state: FoldState) -> None:
        """Save Accelerate's state, the EMA weights, the fold's counters and the callbacks' state.

        It is written to a staging folder and swapped in whole, so a failure (or a kill) leaves the previous
        epoch's state as it was.

        Raises:
            TrainingError: The state could not be written (a full disk, most often).
        """
        accelerator, run = self.accelerator, self.folder
        tmp = run.staged_state_dir(state.fold, clear=accelerator.is_main_process)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
        except Exception as exc:
            # torch.save and safetensors raise their own types; their text may still say the disk is full.
            found = no_room(exc)
            if found is not None:
                raise _no_room_error(run, found[0], found[1] or str(tmp)) from exc
            raise TrainingError(f"could not save the training state of fold {state.fold} in {tmp}: "
                                f"{type(exc).__name__}: {_first_line(exc)}",
                                f"check the free space on that disk; `{resume_command(run)}` continues from the "
                                "last saved epoch, whose state is intact") from exc
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if state.ema is not None:
                from safetensors.torch import save_file

                weights = {k: v.detach().cpu().contiguous() for k, v in state.ema.module.state_dict().items()}
                save_file(weights, str(run.ema_weights_path(tmp)))
            scheduler = state.scheduler.state_dict() if state.scheduler is not None else None
            callbacks = {cb.state_key: saved for cb in self.callbacks if (saved := cb.state_dict())}
            run.write_state_counters(tmp, {"progress": state.state_dict(), "scheduler": scheduler,
                                           "callbacks": callbacks})
            run.commit_state_dir(state.fold)
        accelerator.wait_for_everyone()

    def _load_state(self, state: FoldState) -> None:
        """Continue fold ``state.fold`` from its saved state; ``metrics.csv`` gets exactly its saved rows."""
        saved_dir = self.folder.fold_state_dir(state.fold)
        # Accelerate loads model/optimizer/RNG with weights_only=True; our own state is JSON, so
        # resuming never unpickles arbitrary objects (custom objects would be unpickled in full).
        self.accelerator.load_state(str(saved_dir))
        saved = self.folder.read_state_counters(saved_dir)
        if state.ema is not None:
            from safetensors.torch import load_file

            state.ema.module.load_state_dict(load_file(str(self.folder.ema_weights_path(saved_dir))))
        state.load_state_dict(saved["progress"])
        if state.scheduler is not None and saved.get("scheduler") is not None:
            state.scheduler.load_state_dict(saved["scheduler"])
        for callback in self.callbacks:
            if callback.state_key in saved.get("callbacks", {}):
                callback.load_state_dict(saved["callbacks"][callback.state_key])
        self.progress.log(f"fold {state.fold}: resumed after epoch {state.epoch}")
        if self.accelerator.is_main_process:
            self.folder.replace_fold_metrics(state.fold, state.history)


# --------------------------------------------------------------------------- helpers
def resume_command(run: Run) -> str:
    """The command that continues ``run``: ``--runs`` is named when the run is outside the default runs folder."""
    command = f"clsctl train --resume {shlex.quote(run.id)}"
    if run.path.parent.resolve() != default_runs_root().resolve():
        command += f" --runs {shlex.quote(str(run.path.parent))}"
    return command


def _status(run: Run) -> RunStatus | None:
    try:
        return run.refresh().status
    except (RunError, OSError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _no_room_error(run: Run, code: int, path: str | None) -> TrainingError:
    """What a write that found no room means for the run, and what to do about it."""
    resume = f"`{resume_command(run)}` continues from the last saved epoch (what was written before is intact)"
    if code == errno.EFBIG:
        what = f"the file size limit (ulimit -f) cut short the write of {path}" if path else \
            "the file size limit (ulimit -f) cut short a write"
        return TrainingError(what, f"raise it (`ulimit -f unlimited`), then {resume}")
    what = "disk quota exceeded" if code == errno.EDQUOT else "disk full: no space left on device"
    return TrainingError(f"{what}{f' writing {path}' if path else ''}",
                         f"free space on the disk that holds {run.path.parent} (runs you no longer need; finished "
                         f"folds keep folds/<k>/state/ only with train.keep_state = true), then {resume}")


@contextlib.contextmanager
def _no_room_explained(run: Run) -> Iterator[None]:
    """Turn a write that found no room into a :class:`TrainingError` naming the file and what to free."""
    try:
        yield
    except TrainingError:
        raise
    except Exception as exc:
        found = no_room(exc)
        if found is None:
            raise
        raise _no_room_error(run, *found) from exc


def _seed_everything(seed: int, deterministic: bool) -> None:
    from accelerate.utils import set_seed

    set_seed(seed, deterministic=deterministic)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _seed_epoch(seed: int) -> None:
    """Seed every global generator at an epoch's start, so an epoch does not depend on the ones before
    it (dropout, MixUp's draws); resumed runs then replay exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
