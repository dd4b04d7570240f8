"""Check a recipe before any data is read or any compute is spent.

:func:`check_recipe` needs nothing heavy (no torch, no timm): a recipe that names no data or asks for
impossible values fails in the time it takes to read it. :func:`validate_recipe` resolves every name
through timm and the registries; :func:`check_pretrained` makes sure the pretrained weights can be had
before the data is read and decoded. All of them run before a run folder is created, so a recipe error
never leaves a failed run behind.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from toolkit.config.checks import check_values
from toolkit.config.schema import ModelConfig, Recipe
from toolkit.data.training import check_data_source
from toolkit.data.transforms import read_dataset_stats
from toolkit.errors import DataError, RecipeError, ToolkitError

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt", "none")


def _choice(key: str, value: str, valid: list[str] | tuple[str, ...]) -> None:
    if value in valid:
        return
    close = difflib.get_close_matches(value, list(valid), n=1)
    raise RecipeError(f"{key}: unknown value `{value}`",
                      f"did you mean `{close[0]}`?" if close else f"choose one of {', '.join(valid)}")


def check_recipe(recipe: Recipe) -> None:
    """The checks that need no heavy library: a data source, every value's range, the keys that depend on
    each other, and the dataset statistics ``normalize = "dataset"`` reads.

    Raises:
        RecipeError: naming the key and how to fix it.
        DataError: ``data.stats_file`` cannot be used.
    """
    check_data_source(recipe.data)
    check_values(recipe)
    check_trackers(recipe.train.log_with)
    if recipe.data.normalize == "dataset" and recipe.data.mean is None and recipe.data.stats_file:
        read_dataset_stats(recipe.data.stats_file)


# The module each tracker of train.log_with needs. Accelerate quietly leaves out a tracker whose package
# is missing, so a run asked to log would log nowhere without this check.
_TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_trackers(names: list[str]) -> None:
    """Every tracker of ``train.log_with`` is installed (looked up, not imported).

    Raises:
        RecipeError: naming the tracker and the extra that installs it.
    """
    import importlib.util

    for name in names:
        modules = _TRACKER_MODULES.get(name, (name,))
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise RecipeError(f"train.log_with names {name}, but the {modules[0]} package is not installed",
                              f"install it with `uv sync --extra {name}` (or pip install {modules[0]}), "
                              f"or remove {name} from train.log_with")


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

    check_values(recipe)  # the builders below assume values in range (a crop_pct of 0 divides by it)
    check_model_name(recipe.model.name)
    _choice("optim.name", recipe.optim.name.lower(), timm.optim.list_optimizers())
    _choice("sched.name", recipe.sched.name, SCHEDULERS)
    metric_direction(recipe.train.metric)
    create_loss(recipe.loss, [1] * 2)
    validate_aug(recipe)


def check_pretrained(cfg: ModelConfig) -> None:
    """Fail now, not after the data is decoded, when the pretrained weights cannot be had.

    ``model.pretrained_file`` must exist; hub weights need the hub to be reachable, or, with
    ``HF_HUB_OFFLINE`` set, to be in the local hub cache already.

    Raises:
        DataError: ``model.pretrained_file`` does not exist or holds no weights that load without running code.
        ToolkitError: The hub cannot be reached, or offline weights are not cached.
    """
    from toolkit.models import check_hub_reachable, unreadable_weights

    if cfg.pretrained_file:
        if not Path(cfg.pretrained_file).is_file():
            raise DataError(f"model.pretrained_file {cfg.pretrained_file} does not exist",
                            "check the path (relative paths are relative to the recipe file)")
        problem = unreadable_weights(cfg.pretrained_file)
        if problem is not None:
            raise DataError(f"model.pretrained_file {cfg.pretrained_file} holds no weights: {problem}",
                            "point it at a .safetensors file or a PyTorch state dict saved with torch.save")
        return
    if not cfg.pretrained:
        return
    check_hub_reachable(cfg.name)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") and not _hub_weights_cached(cfg.name):
        raise ToolkitError(f"pretrained weights for `{cfg.name}` are not in the local hub cache and HF_HUB_OFFLINE is set",
                           "set model.pretrained_file = \"path/to/weights.safetensors\", or model.pretrained = false, "
                           "or unset HF_HUB_OFFLINE to download them")


def _hub_weights_cached(name: str) -> bool:
    """Whether timm would find ``name``'s hub weights in the local cache (True when it cannot be told)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
        from huggingface_hub import try_to_load_from_cache
    except Exception:  # unknown tag or no huggingface_hub: timm reports it when it builds the model
        return True
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return True  # weights from a plain URL: timm's own download cache decides
    repo, _, revision = repo.partition("@")
    # timm asks for the named file, else model.safetensors before pytorch_model.bin
    names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors", "pytorch_model.bin"]
    return any(isinstance(try_to_load_from_cache(repo, n, revision=revision or None), str) for n in names)
