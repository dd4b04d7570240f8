"""Training in one call: from a recipe (or a recipe file, or a run to resume) to a finished run.

Nothing heavy is imported until the recipe has passed the checks that need no heavy library, so a
recipe that names no data fails at once rather than after torch has loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.config.schema import Recipe
from toolkit.errors import RunError, UsageError
from toolkit.progress import Progress
from toolkit.train.validate import check_pretrained, check_recipe

if TYPE_CHECKING:
    from toolkit.store import Run
    from toolkit.train.callbacks import Callback


def train(recipe: Recipe, *, runs_root: str | Path | None = None, name: str | None = None, folds: str | None = None,
          resume: str | Path | Run | None = None, callbacks: Sequence[Callback] = (),
          progress: Progress | bool | None = None, parents: Sequence[str | Run] = ()) -> Run:
    """Train every selected fold of ``recipe`` into one run folder; return the run.

    Args:
        recipe: The resolved recipe.
        runs_root: Folder of run folders (default ``$CLSCTL_RUNS`` or ``./runs``).
        name: Run name (default the recipe's).
        folds: ``all``, one fold, or a list such as ``0,2``. None: every fold for a new run, the run's
            recorded folds on resume (an explicit selection must include those; it adds the others).
        resume: A run (folder, id or name) to continue.
        callbacks: Callbacks run after the built-in ones, e.g. a sweep's pruning
            (see :class:`toolkit.train.callbacks.Callback`).
        progress: Where progress goes; None prints plain lines, False shows nothing.
        parents: Runs a new run records as its parents (a sweep's trials name the sweep run).

    Raises:
        RecipeError: The recipe names no data, or a value or name in it is invalid.
        DataError: The data cannot be used as asked.
        RunError: The run to resume is in use by another process, or is not a train run.
        UsageError: ``folds`` would drop folds the resumed run records.
        TrainingError: Training cannot go on (e.g. a non-finite loss).
    """
    check_recipe(recipe)
    # Before the trainer's imports (Accelerate, the augmentation and optimizer registries): weights that
    # cannot be had, with no network, fail after timm alone has loaded.
    check_pretrained(recipe.model)
    if resume is not None:
        _check_resumable(resume, runs_root, progress)
    from toolkit.train.trainer import Trainer

    return Trainer(recipe, runs_root=runs_root, name=name, folds=folds, resume=resume, callbacks=callbacks,
                   progress=progress, parents=parents).run()


def _check_resumable(resume: str | Path | Run, runs_root: str | Path | None, progress: Progress | bool | None) -> None:
    """Refuse a saved state that cannot be loaded safely before the run is touched; warn about what is skipped."""
    import os

    from toolkit.progress import as_progress
    from toolkit.store import RunStore
    from toolkit.train.resume import check_saved_states

    run = RunStore(runs_root).open(resume)
    if run.kind != "train":
        return  # the trainer refuses it, naming the kind
    notes = check_saved_states(run)
    if notes and os.environ.get("RANK", "0") == "0":  # under `accelerate launch` one process reports
        shown = as_progress(progress)
        for note in notes:
            shown.log(f"warning: {note}")


def resume_recipe(run_ref: str | Path, runs_root: str | Path | None = None) -> Recipe:
    """The recipe a run was started with (what ``--resume`` continues).

    Raises:
        RunError: No such run, it is not a train run, or it has no ``recipe.toml``.
    """
    from toolkit.store import RunStore

    run = RunStore(runs_root).open(run_ref)
    if run.kind != "train":
        hint = "pass a train run"
        if run.kind == "split":  # the likely intent: train on the folds it assigned
            hint = f"to train on its folds: clsctl train --recipe R.toml --set data.manifest={run.path / 'manifest.csv'}"
        raise RunError(f"--resume {run_ref}: run {run.id} is a `{run.kind}` run; --resume continues train runs", hint)
    if not run.recipe_path.is_file():
        raise RunError(f"run {run.id} has no recipe.toml", "it cannot be resumed; start a new run")
    return run.read_recipe()


def run_training(recipe_path: str | Path | None, overrides: Sequence[str] = (), *, folds: str | None = None,
                 name: str | None = None, resume: str | Path | None = None, runs_root: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), progress: Progress | bool | None = None) -> Run:
    """What ``clsctl train`` does: load the recipe (or the resumed run's own) and train it.

    Args:
        recipe_path: The recipe file; must be None when resuming.
        overrides: ``section.key=value`` overrides; must be empty when resuming.
        folds, name, runs_root, callbacks, progress: As for :func:`train`.
        resume: A run (folder, id or name) to continue with its own recipe.

    Raises:
        UsageError: No recipe given, or a recipe given together with ``resume``.
    """
    from toolkit.config.loader import load_recipe

    if resume is not None:
        if recipe_path is not None or overrides:
            raise UsageError("--resume continues a run with its own recipe", "drop --recipe and --set when resuming")
        recipe = resume_recipe(resume, runs_root)
    else:
        if recipe_path is None:
            raise UsageError("no recipe given", "pass --recipe R.toml (recipes/quickstart.toml is a start)")
        recipe = load_recipe(recipe_path, list(overrides))
    return train(recipe, runs_root=runs_root, name=name, folds=folds, resume=resume, callbacks=callbacks,
                 progress=progress)
