"""Models: timm factory (pretrained from the hub or a local file) and the multi-head wrapper."""

from toolkit.models.factory import (
    MultiHeadModel,
    check_hub_reachable,
    create_model,
    load_checkpoint,
    model_data_config,
    save_checkpoint,
)

__all__ = ["MultiHeadModel", "check_hub_reachable", "create_model", "load_checkpoint", "model_data_config",
           "save_checkpoint"]
