"""Create timm models from a recipe's ``[model]`` section (hub or local pretrained weights, multi-head).

Pretrained weights come from the hub or from ``model.pretrained_file``. When the hub cannot be
reached we fail at once with the fix, instead of letting the download retry for most of a minute.
Checkpoints and their record live in :mod:`toolkit.models.checkpoint`.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from toolkit.config.schema import ModelConfig
from toolkit.errors import DataError, RecipeError, ToolkitError

_TRUE = ("1", "true", "yes", "on")


class MultiHeadModel(nn.Module):
    """One backbone, one linear head per target; ``forward`` returns the heads' logits concatenated.

    Concatenated logits keep the trainer, ``gather_for_metrics`` and the checkpoint format the same as
    for a single head; ``head_sizes`` says where each head's columns are.
    """

    def __init__(self, backbone: nn.Module, head_names: Sequence[str], head_sizes: Sequence[int],
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_names = list(head_names)
        self.head_sizes = list(head_sizes)
        self.dropout = nn.Dropout(drop_rate)
        features = backbone.num_features
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in head_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.dropout(self.backbone(x))
        return torch.cat([head(feats) for head in self.heads], dim=1)

    def split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """Split concatenated logits into one tensor per head."""
        return list(torch.split(logits, self.head_sizes, dim=1))


def _hub_host(name: str) -> tuple[str, int] | None:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown tag: let create_model report it
        return None
    if cfg is None:
        return None
    if getattr(cfg, "hf_hub_id", None):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        parsed = urlparse(endpoint)
        return parsed.hostname or "huggingface.co", parsed.port or 443
    url = getattr(cfg, "url", None)
    if url:
        parsed = urlparse(url)
        return parsed.hostname or "", parsed.port or 443
    return None


def check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Raise a clear error if ``name``'s pretrained weights cannot be downloaded right now.

    With ``HF_HUB_OFFLINE`` set, hub downloads are off; weights already in the local cache still load,
    so that case is left to timm, which then fails at once rather than after retries.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return
    host = _hub_host(name)
    if host is None:
        return
    try:
        with socket.create_connection(host, timeout=timeout):
            pass
    except OSError as exc:
        raise ToolkitError(
            f"pretrained weights for `{name}` need {host[0]}, which cannot be reached ({exc.__class__.__name__})",
            "set model.pretrained_file = \"path/to/weights.safetensors\", or model.pretrained = false, "
            "or set HF_HUB_OFFLINE=1 to use weights already in the local cache") from None


def check_model_name(name: str) -> None:
    """Raise a RecipeError naming the closest timm models when ``name`` is not one."""
    import timm

    base = name.split(".")[0]
    if timm.is_model(base):
        return
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(f'`{c}`' for c in close)}?" if close else "`timm.list_models('*pattern*')` lists them"
    raise RecipeError(f"model.name: timm has no model `{name}`", hint)


def create_model(cfg: ModelConfig, num_classes: int | Sequence[int], head_names: Sequence[str] | None = None) -> nn.Module:
    """Build the model for a recipe.

    Args:
        cfg: the recipe's ``[model]`` section.
        num_classes: classes of the single head, or one count per head.
        head_names: names of the heads for a multi-head model (same length as ``num_classes``).

    Raises:
        RecipeError: unknown model name.
        DataError: ``pretrained_file`` does not exist.
        ToolkitError: pretrained weights cannot be had (offline hub).
    """
    import timm

    check_model_name(cfg.name)
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    kwargs["in_chans"] = cfg.in_chans
    if cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    pretrained = cfg.pretrained
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file)
        if not path.is_file():
            raise DataError(f"model.pretrained_file {path} does not exist",
                            "check the path (relative paths are relative to the recipe file)")
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
    elif pretrained:
        check_hub_reachable(cfg.name)

    multi = head_names is not None and len(head_names) > 0
    sizes = list(num_classes) if isinstance(num_classes, Sequence) else [int(num_classes)]
    try:
        if multi:
            backbone = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0, **kwargs)
            model: nn.Module = MultiHeadModel(backbone, list(head_names or []), sizes, cfg.drop_rate)
        else:
            model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=sizes[0],
                                      drop_rate=cfg.drop_rate, **kwargs)
    except ToolkitError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        if cfg.pretrained_file:
            # Whatever the file holds, the loaders fail in their own ways (KeyError, IndexError, SafetensorError).
            raise DataError(f"could not load model.pretrained_file {cfg.pretrained_file} into `{cfg.name}`: {text}",
                            "check that the file holds weights for this architecture") from None
        if pretrained and isinstance(exc, OSError | RuntimeError | ValueError):
            raise ToolkitError(f"could not get pretrained weights for `{cfg.name}`: {text}",
                               "set model.pretrained_file to a local weights file, or model.pretrained = false") from None
        raise
    if pretrained and cfg.head_init == "zero":
        zero_heads(model)
    return model


def zero_heads(model: nn.Module) -> None:
    """Set the classifier head(s) to zero, as BiT (Kolesnikov et al., 2020) does for transfer.

    timm initializes a new head with a spread sized to its few outputs; on the large features of a
    pretrained backbone that gives logits of several units, a first loss of ~6.7 instead of ln(3) for
    lite0 with 3 classes, and a first epoch spent undoing it. A zero head predicts the uniform
    distribution; its gradient is not zero (features times the error), so it learns from the first step.
    """
    heads = list(model.heads) if isinstance(model, MultiHeadModel) else [model.get_classifier()]
    with torch.no_grad():
        for head in heads:
            for param in head.parameters():
                param.zero_()


def model_data_config(model: nn.Module) -> dict[str, Any]:
    """The pretrained preprocessing timm knows for this model (mean, std, input size, interpolation)."""
    import timm

    inner = model.backbone if isinstance(model, MultiHeadModel) else model
    try:
        return dict(timm.data.resolve_model_data_config(inner))
    except Exception:  # models without a pretrained config: fall back to ImageNet statistics
        return {"mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD}
