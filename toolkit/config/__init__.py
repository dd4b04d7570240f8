"""Recipes: TOML files parsed into frozen dataclasses, with ``extends`` and ``--set`` overrides."""

from toolkit.config.checks import LIMITS, check_values
from toolkit.config.loader import (
    get_value,
    iter_keys,
    load_recipe,
    parse_override,
    recipe_from_dict,
    with_overrides,
)
from toolkit.config.schema import (
    SECTIONS,
    AugConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    SchedConfig,
    SplitConfig,
    TargetsConfig,
    TrainConfig,
    TTAConfig,
    recipe_to_dict,
    recipe_to_toml,
)

__all__ = [
    "LIMITS", "SECTIONS", "AugConfig", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig", "Recipe", "SchedConfig",
    "SplitConfig", "TTAConfig", "TargetsConfig", "TrainConfig", "check_values", "get_value", "iter_keys", "load_recipe",
    "parse_override", "recipe_from_dict", "recipe_to_dict", "recipe_to_toml", "with_overrides",
]
