"""Callbacks: everything the training loop does besides training, on a short list of hooks.

The loop calls each hook by name on every callback, in list order, with keywords (Lightning
Fabric's ``call("hook", **kw)``)::

    on_fold_start(trainer, state)            the fold's state is built (and restored, when resuming)
    on_step_end(trainer, state, updated)     after every batch; ``updated``: the optimizer stepped
    on_epoch_end(trainer, state, row, val)   after validation; ``row`` is the metrics row, ``val`` the
                                             validation result (metrics, probs, index, targets)
    on_fold_end(trainer, state, result)      the fold is finished (``result`` is done.json)

``trainer`` is the running :class:`toolkit.train.trainer.Trainer` (its ``recipe``, ``accelerator``,
``data``, ``folder`` — the run, which writes every run file — and ``progress``); ``state`` is the
fold's :class:`~toolkit.train.state.FoldState`. A callback stops training by setting ``state.should_stop = True`` (the fold ends after the current
epoch, and counts as finished); setting ``trainer.stop_training = True`` as well ends the run there, leaving
the folds after it untrained (a sweep's pruning). What :meth:`Callback.state_dict` returns is saved as JSON beside
Accelerate's state after every epoch and handed back to :meth:`Callback.load_state_dict` on resume.

The built-in callbacks, in the order the trainer runs them: :class:`BestCheckpoint`,
:class:`EMAUpdate`, :class:`MetricsLog`, :class:`Trackers`, :class:`EarlyStopping`,
:class:`ProgressReport`; the caller's own callbacks come after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from toolkit.progress import Progress, Task

if TYPE_CHECKING:
    from toolkit.config.schema import Recipe
    from toolkit.store import Run
    from toolkit.train.state import FoldState

HOOKS = ("on_fold_start", "on_step_end", "on_epoch_end", "on_fold_end")


class Callback:
    """Base class: override the hooks you need; every hook receives the trainer and the fold state."""

    @property
    def state_key(self) -> str:
        """The name this callback's saved state is kept under (the class name, unless overridden)."""
        return type(self).__name__

    def on_fold_start(self, trainer: Any, state: FoldState) -> None:
        """The fold's state is ready; on resume it already holds the saved counters."""

    def on_step_end(self, trainer: Any, state: FoldState, updated: bool) -> None:
        """A batch is done (``updated``: its gradients were applied, not only accumulated)."""

    def on_epoch_end(self, trainer: Any, state: FoldState, row: dict[str, Any], val: dict[str, Any]) -> None:
        """An epoch is trained and validated; ``state.improved`` says whether it is the best so far."""

    def on_fold_end(self, trainer: Any, state: FoldState, result: dict[str, Any]) -> None:
        """The fold has finished (all epochs, or stopped)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state to save with the fold's training state (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when a fold resumes."""


class BestCheckpoint(Callback):
    """On every new best epoch: the checkpoint (``model.safetensors`` + ``model.json``), the fold's
    out-of-fold probabilities and ``best.json``. Main process only."""

    def on_epoch_end(self, trainer: Any, state: FoldState, row: dict[str, Any], val: dict[str, Any]) -> None:
        if not state.improved or not trainer.accelerator.is_main_process:
            return
        from toolkit.models import save_checkpoint
        from toolkit.train.results import fold_oof_frame

        run, k = trainer.folder, state.fold
        record = state.record.with_best(state.epoch, float(state.best), trainer.recipe.train.metric)
        save_checkpoint(trainer.accelerator.unwrap_model(state.eval_model), run.checkpoint_path(k), record)
        run.write_oof(fold_oof_frame(trainer.data, k, state.val_rows, val), fold=k)
        run.write_fold_best(k, state.epoch, val["metrics"])


class EMAUpdate(Callback):
    """Update the exponential moving average of the weights (``state.ema``) after every optimizer step."""

    def on_step_end(self, trainer: Any, state: FoldState, updated: bool) -> None:
        if updated and state.ema is not None:
            state.ema.update(state.model, step=state.num_updates)


class MetricsLog(Callback):
    """Append each epoch's row to ``metrics.csv`` and log the epoch's one-line summary."""

    def on_epoch_end(self, trainer: Any, state: FoldState, row: dict[str, Any], val: dict[str, Any]) -> None:
        if trainer.accelerator.is_main_process:
            trainer.folder.append_metrics(row)
        trainer.progress.log(epoch_line(row, trainer.recipe.train.metric))


class Trackers(Callback):
    """Send each epoch's numbers to Accelerate's trackers (``train.log_with``), as ``fold<k>/<name>``.

    The step is ``fold × train.epochs + epoch``: one step counter shared by every fold that only grows
    (folds train in increasing order), because wandb drops a step lower than one it has seen, which a
    per-fold epoch count would do from fold 1 on. ``fold<k>/epoch`` keeps the epoch itself.
    """

    # the fold is in the tag; the row count and the best-epoch flag chart nothing
    SKIPPED = frozenset({"fold", "n", "best"})

    def on_epoch_end(self, trainer: Any, state: FoldState, row: dict[str, Any], val: dict[str, Any]) -> None:
        step = state.fold * trainer.recipe.train.epochs + state.epoch
        trainer.accelerator.log({f"fold{state.fold}/{key}": v for key, v in row.items()
                                 if isinstance(v, int | float) and key not in self.SKIPPED}, step=step)


class EarlyStopping(Callback):
    """Stop a fold after ``patience`` epochs without a new best selection score.

    The epochs since the best one follow from the fold's counters, so nothing extra is saved.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer: Any, state: FoldState, row: dict[str, Any], val: dict[str, Any]) -> None:
        if state.epoch - state.best_epoch >= self.patience:
            state.should_stop = True
            trainer.progress.log(f"fold {state.fold}: early stop after epoch {state.epoch} "
                                 f"({self.patience} epochs without gain)")


class ProgressReport(Callback):
    """Bars for the folds, the epochs of a fold and the batches of an epoch (lines when not on a terminal).

    Args:
        progress: Where to report.
        folds: The folds this run trains, in order.
        epochs: Epochs per fold.
        every: Batches between plain progress lines (``train.log_every``).
    """

    def __init__(self, progress: Progress, folds: Sequence[int], epochs: int, every: int) -> None:
        self.progress, self.folds, self.epochs, self.every = progress, list(folds), epochs, every
        self.fold_task: Task | None = None
        self.epoch_task: Task | None = None
        self.batch_task: Task | None = None

    def on_fold_start(self, trainer: Any, state: FoldState) -> None:
        if self.fold_task is None and len(self.folds) > 1:
            self.fold_task = self.progress.task("folds", len(self.folds))
            self.fold_task.advance(self.folds.index(state.fold) if state.fold in self.folds else 0)
        self.epoch_task = self.progress.task(f"fold {state.fold}", self.epochs)
        self.epoch_task.advance(state.epoch + 1)  # epochs restored by resume

    def on_step_end(self, trainer: Any, state: FoldState, updated: bool) -> None:
        if self.batch_task is None:
            epoch = state.epoch + 2  # the epoch in training, counted from 1
            self.batch_task = self.progress.task(f"fold {state.fold} epoch {epoch}/{self.epochs}",
                                                 len(state.train_loader), every=self.every)
        self.batch_task.advance(1, f"loss {state.train_loss:.4f} {state.images_per_second:.0f} img/s")

    def on_epoch_end(self, trainer: Any, state: FoldState, row: dict[str, Any], val: dict[str, Any]) -> None:
        if self.batch_task is not None:
            self.batch_task.close()
            self.batch_task = None
        if self.epoch_task is not None:
            self.epoch_task.advance(1)

    def on_fold_end(self, trainer: Any, state: FoldState, result: dict[str, Any]) -> None:
        if self.epoch_task is not None:
            self.epoch_task.close()
            self.epoch_task = None
        if self.fold_task is not None:
            self.fold_task.advance(1)
            if state.fold == self.folds[-1]:
                self.fold_task.close()
                self.fold_task = None


def epoch_line(row: dict[str, Any], metric: str) -> str:
    """One line per epoch: losses, the selection metric, accuracy and macro-F1 (each once), speed, ``*`` if best."""
    shown = [f"fold {row['fold']} epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}",
             f"val_loss {row.get('val_loss', float('nan')):.4f}"]
    for key in dict.fromkeys((metric, "accuracy", "macro_f1")):
        if key in row:
            shown.append(f"{key} {row[key]:.4f}")
    shown.append(f"{row['train_img_s']:.0f} img/s {row['seconds']:.1f}s" + (" *" if row.get("best") else ""))
    return " | ".join(shown)


def default_callbacks(recipe: Recipe, progress: Progress, folds: Sequence[int]) -> list[Callback]:
    """The trainer's own callbacks for a recipe, in the order they run."""
    tcfg = recipe.train
    callbacks: list[Callback] = [BestCheckpoint()]
    if tcfg.ema:
        callbacks.append(EMAUpdate())
    callbacks.append(MetricsLog())
    if tcfg.log_with:
        callbacks.append(Trackers())
    if tcfg.patience is not None:
        callbacks.append(EarlyStopping(tcfg.patience))
    callbacks.append(ProgressReport(progress, folds, tcfg.epochs, tcfg.log_every))
    return callbacks


def start_trackers(accelerator: Any, run: Run, recipe: Recipe) -> None:
    """Start ``train.log_with``'s trackers: files in the run's ``trackers/``, the project named after the
    recipe (so a recipe's runs sit side by side in wandb and MLflow) and each run named by its id."""
    from toolkit.config.schema import recipe_to_dict
    from toolkit.store import slugify

    folder = run.trackers_dir()
    if accelerator.is_main_process:  # the one process that writes the run folder and the trackers
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.project_configuration.logging_dir = str(folder)
    accelerator.init_trackers(
        (slugify(recipe.name) if recipe.name else "") or "clsctl", config=_flat_config(recipe_to_dict(recipe)),
        init_kwargs={"wandb": {"name": run.id, "dir": str(folder)}, "mlflow": {"run_name": run.id}})


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
