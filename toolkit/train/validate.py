"""Check a recipe before any data is read or any compute is spent."""

from __future__ import annotations

import difflib

from toolkit.config.schema import Recipe
from toolkit.errors import RecipeError

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt", "none")


def _choice(key: str, value: str, valid: list[str] | tuple[str, ...]) -> None:
    if value in valid:
        return
    close = difflib.get_close_matches(value, list(valid), n=1)
    raise RecipeError(f"{key}: unknown value `{value}`",
                      f"did you mean `{close[0]}`?" if close else f"choose one of {', '.join(valid)}")


def validate_recipe(recipe: Recipe) -> None:
    """Every name in the recipe resolves: model, optimizer, scheduler, loss, metric, augmentations.

    Raises:
        RecipeError: naming the key and the nearest valid value.
    """
    import timm
    import timm.optim

    from toolkit.data.transforms import validate_aug
    from toolkit.metrics import metric_direction
    from toolkit.models.factory import check_model_name
    from toolkit.train.losses import create_loss

    check_model_name(recipe.model.name)
    _choice("optim.name", recipe.optim.name.lower(), timm.optim.list_optimizers())
    _choice("sched.name", recipe.sched.name, SCHEDULERS)
    metric_direction(recipe.train.metric)
    create_loss(recipe.loss, [1] * 2)
    validate_aug(recipe)
    t = recipe.train
    for key, value, low in (("train.epochs", t.epochs, 1), ("train.batch_size", t.batch_size, 1),
                            ("train.grad_accum", t.grad_accum, 1), ("data.image_size", recipe.data.image_size, 8)):
        if value < low:
            raise RecipeError(f"{key} = {value} is too small", f"use a value of at least {low}")
    heads = recipe.targets.heads
    if recipe.targets.head_weights is not None and len(recipe.targets.head_weights) != len(heads):
        raise RecipeError(f"targets.head_weights has {len(recipe.targets.head_weights)} values for {len(heads)} heads",
                          "give one weight per entry of targets.heads")
    if (recipe.aug.mixup_alpha > 0 or recipe.aug.cutmix_alpha > 0) and len(heads) > 1:
        raise RecipeError("aug.mixup_alpha / aug.cutmix_alpha work with one head only", "turn them off for multi-head recipes")
    if (recipe.aug.mixup_alpha > 0 or recipe.aug.cutmix_alpha > 0) and t.batch_size % 2:
        raise RecipeError(f"train.batch_size = {t.batch_size}: MixUp/CutMix pair images, so it must be even",
                          f"set train.batch_size = {t.batch_size + 1}")
    if recipe.split.holdout is not None and not 0 < recipe.split.holdout < 1:
        raise RecipeError(f"split.holdout = {recipe.split.holdout} must lie between 0 and 1", "e.g. split.holdout = 0.2")
