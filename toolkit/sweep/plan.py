"""What a sweep will do, checked in full before a study, a storage or a run folder exists.

:func:`plan_sweep` needs neither optuna nor torch: the space, the metric and direction, the trial count
or time budget, the folds and the pruner that fits them. :func:`check_names` then resolves every name the
trials can take (models, losses, presets) through timm and the registries, as ``clsctl train`` does
before its first epoch, so no trial is spent on a name that cannot train. :func:`make_sampler` and
:func:`make_pruner` build Optuna's objects for a plan.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from toolkit.config.schema import Recipe, recipe_to_dict
from toolkit.errors import RecipeError, UsageError
from toolkit.store import slugify
from toolkit.sweep.space import Param, base_recipe, parse_space, trial_recipe
from toolkit.train.validate import check_recipe

if TYPE_CHECKING:
    import optuna

#: How each pruner hears from a trial: the score after every epoch, or after every fold.
REPORTS = {"median": "epochs", "hyperband": "epochs", "wilcoxon": "folds", "none": None}


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep.

    Attributes:
        recipe: The recipe as given, ``[sweep]`` included (the sweep run records it).
        base: The recipe every trial starts from (without ``[sweep]``).
        params: The searched keys.
        study: The study's name.
        metric: What a trial is scored by; ``direction`` is ``maximize`` or ``minimize``.
        trials: Finished trials the study stops at (None: until ``timeout``).
        timeout: Seconds this invocation starts trials for (None: no limit).
        folds: The folds each trial trains (``--folds`` syntax).
        report: ``epochs``, ``folds`` or None (see :data:`REPORTS`).
    """

    recipe: Recipe
    base: Recipe
    params: list[Param]
    study: str
    metric: str
    direction: str
    trials: int | None
    timeout: float | None
    folds: str
    report: str | None

    @property
    def grid(self) -> bool:
        """Whether the grid sampler enumerates the space."""
        return self.recipe.sweep.sampler == "grid"

    def signature(self) -> dict[str, Any]:
        """What a study must have been started with for another invocation to join it."""
        return {"metric": self.metric, "direction": self.direction, "grid": self.grid, "folds": self.folds,
                "space": {p.key: p.as_dict() for p in self.params}, "base": _portable(self.base)}


def _portable(recipe: Recipe) -> dict[str, Any]:
    """The recipe without its file paths, which differ between machines that work on one study."""
    raw = recipe_to_dict(recipe)
    for section in dataclasses.fields(recipe):
        value = getattr(recipe, section.name)
        if dataclasses.is_dataclass(value) and section.name in raw:
            for f in dataclasses.fields(value):
                if f.metadata.get("path"):
                    raw[section.name].pop(f.name, None)
    return raw


def _fold_count(recipe: Recipe, folds: str) -> int | None:
    """How many folds ``folds`` selects, when the recipe alone tells (None for ``all`` over a precomputed split)."""
    spec = folds.strip().lower()
    if spec == "all":
        return 1 if recipe.split.holdout is not None else recipe.split.folds
    return len(spec.split(","))


def _check_folds(recipe: Recipe) -> str:
    folds = recipe.sweep.folds.strip()
    if folds.lower() != "all":
        parts = [p.strip() for p in folds.split(",")]
        if not parts or not all(p.isdigit() for p in parts):
            raise RecipeError(f"sweep.folds = {folds!r} is not `all`, a fold number or a list such as `0,2`",
                              'e.g. sweep.folds = "0" (fast) or "all" (CV-scored trials)')
    if recipe.sweep.pruner == "wilcoxon":
        count = _fold_count(recipe, folds)
        if count is not None and count < 2:
            raise RecipeError(f"sweep.pruner = \"wilcoxon\" compares trials fold by fold, and sweep.folds = {folds!r} "
                              f"trains {count} fold", 'set sweep.folds = "all" (k-fold), or use the median pruner')
        # The signed-rank test over n folds can reach no p-value below 1/2^n: fewer folds could never prune.
        threshold = recipe.sweep.p_threshold
        if count is not None and 0.5**count > threshold:
            needed = next(n for n in range(count, 64) if 0.5**n <= threshold)
            raise RecipeError(f"sweep.pruner = \"wilcoxon\" over {count} folds can never prune at sweep.p_threshold = "
                              f"{threshold} (the smallest p-value of {count} folds is {0.5**count:g})",
                              f"train {needed} or more folds (split.folds), raise sweep.p_threshold, or use the median "
                              "pruner")
    return folds


def plan_sweep(recipe: Recipe, *, study: str | None = None, trials: int | None = None,
               timeout: float | None = None) -> SweepPlan:
    """Check a sweep and say what it will do; nothing heavy is imported and nothing is written.

    Args:
        recipe: The recipe with its ``[sweep]`` section.
        study: The study's name (default the recipe's name, else ``sweep``).
        trials: Overrides ``sweep.trials``.
        timeout: Overrides ``sweep.timeout`` (seconds).

    Raises:
        RecipeError: The space, the metric, the folds or the base recipe cannot be used.
        UsageError: The trial count or the study name cannot be used, or the command runs under
            ``accelerate launch`` with several processes.
    """
    from toolkit.metrics import metric_direction

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("clsctl sweep is one worker process, not a multi-process `accelerate launch`",
                         'for trials on several GPUs pass --launch "accelerate launch --multi_gpu --num_processes N"; '
                         "for one trial per GPU run `clsctl sweep` once per GPU on one study")
    cfg = recipe.sweep
    params = parse_space(recipe)
    base = base_recipe(recipe)
    check_recipe(base)
    metric = cfg.metric or recipe.train.metric
    try:
        natural = "maximize" if metric_direction(metric) == "max" else "minimize"
    except RecipeError as exc:
        raise RecipeError(f"sweep.metric: {exc.message}", exc.hint) from None
    if cfg.direction not in ("auto", natural):
        raise RecipeError(f"sweep.direction = \"{cfg.direction}\", but {metric} is better when "
                          f"{'larger' if natural == 'maximize' else 'smaller'}",
                          f'remove sweep.direction (or set it to "{natural}")')
    trials = cfg.trials if trials is None else trials
    timeout = cfg.timeout if timeout is None else timeout
    if trials is not None and trials < 1:
        raise UsageError(f"--trials {trials}: a study needs at least one trial", "e.g. --trials 20")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout {timeout}: the time budget must be above 0 seconds", "e.g. --timeout 3600")
    if trials is None and timeout is None:
        raise RecipeError("sweep.trials and sweep.timeout are both unset: the sweep would never end",
                          "set sweep.trials = 20, or pass --timeout SECONDS")
    folds = _check_folds(recipe)
    if cfg.sampler == "grid":
        for p in params:
            p.grid()  # a float range without a step has no grid: say so before anything starts
    name = study or recipe.name or "sweep"
    if not slugify(name):
        raise UsageError(f"--study {name!r} has no usable characters", "use letters, digits, '-', '_' or '.'")
    return SweepPlan(recipe=recipe, base=base, params=params, study=name, metric=metric, direction=natural,
                     trials=trials, timeout=timeout, folds=folds, report=REPORTS[cfg.pruner])


def check_names(plan: SweepPlan) -> None:
    """Every name a trial can take resolves (timm models, optimizers, losses, presets), and the weights exist.

    Raises:
        RecipeError: naming the space entry (or base key) and the nearest valid value.
        DataError, ToolkitError: The pretrained weights cannot be had.
    """
    from toolkit.train.validate import check_pretrained, validate_recipe

    validate_recipe(plan.base)
    for p in plan.params:
        for value in p.choices:
            if not isinstance(value, str):
                continue
            try:
                validate_recipe(trial_recipe(plan.base, {p.key: value}))
            except RecipeError as exc:
                raise RecipeError(f'sweep.space."{p.key}": value {value!r}: {exc.message}', exc.hint) from None
    if not any(p.key.startswith("model.") for p in plan.params):
        check_pretrained(plan.base.model)


def make_sampler(plan: SweepPlan, existing: int = 0) -> optuna.samplers.BaseSampler:
    """Optuna's sampler for ``sweep.sampler``; TPE assumes the trials still running score badly
    (``constant_liar``), so parallel workers do not all try the same point.

    Args:
        plan: The sweep.
        existing: Trials the study already has. A seeded sampler starts from ``seed + existing``: the same
            seed would otherwise draw the first invocation's points again when a study is continued.
    """
    import optuna

    cfg = plan.recipe.sweep
    seed = None if cfg.seed is None else (cfg.seed + existing) % 2**32
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid() for p in plan.params}, seed=seed)
    if cfg.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.startup_trials,
                                            warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials, constant_liar=True)


def pruner_settings(plan: SweepPlan) -> dict[str, Any]:
    """What :func:`make_pruner` needs, JSON-ready: a trial's own processes build the same pruner from it."""
    cfg = plan.recipe.sweep
    return {"pruner": cfg.pruner, "startup_trials": cfg.startup_trials, "warmup_epochs": cfg.warmup_epochs,
            "p_threshold": cfg.p_threshold}


def make_pruner(plan: SweepPlan | dict[str, Any]) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``sweep.pruner``, from a plan or its :func:`pruner_settings`."""
    import optuna

    cfg = pruner_settings(plan) if isinstance(plan, SweepPlan) else plan
    if cfg["pruner"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg["startup_trials"], n_warmup_steps=cfg["warmup_epochs"])
    if cfg["pruner"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, cfg["warmup_epochs"]))
    if cfg["pruner"] == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=cfg["p_threshold"])
    return optuna.pruners.NopPruner()
