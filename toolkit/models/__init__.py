"""Models: the timm factory (hub or local weights), the multi-head wrapper, and the checkpoint record."""

from toolkit.models.checkpoint import (
    FoldModel,
    ModelRecord,
    load_checkpoint,
    load_fold_model,
    model_settings,
    read_record,
    save_checkpoint,
    unreadable_weights,
)
from toolkit.models.factory import MultiHeadModel, check_hub_reachable, create_model, model_data_config

__all__ = ["FoldModel", "ModelRecord", "MultiHeadModel", "check_hub_reachable", "create_model", "load_checkpoint",
           "load_fold_model", "model_data_config", "model_settings", "read_record", "save_checkpoint",
           "unreadable_weights"]
