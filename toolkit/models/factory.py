"""Create timm models from a recipe's ``[model]`` section (hub or local pretrained weights, multi-head).

Pretrained weights come from the hub or from ``model.pretrained_file``. When the hub cannot be
reached we fail at once with the fix, instead of letting the download retry for most of a minute.
Checkpoints and their record live in :mod:`toolkit.models.checkpoint`.
"""

from __future__ import annotations

import difflib
import os
import threading
import urllib.error
import urllib.request
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


def _weights_url(name: str) -> str | None:
    """The URL timm would fetch ``name``'s pretrained weights from first; None when it cannot be told."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown tag: let create_model report it
        return None
    if cfg is None:
        return None
    repo = getattr(cfg, "hf_hub_id", None)
    if repo:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        repo, _, revision = repo.partition("@")
        filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
        return f"{endpoint}/{repo}/resolve/{revision or 'main'}/{filename}"
    return getattr(cfg, "url", None) or None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is already an answer; following it to a CDN would only test the CDN."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _ask(url: str, timeout: float) -> BaseException | None:
    """None when the server at ``url`` answers a HEAD request (below HTTP 500), else what went wrong."""
    opener = urllib.request.build_opener(_NoRedirect)  # keeps the proxy settings of the environment
    outcome: list[BaseException | None] = [TimeoutError(f"no answer within {timeout:g} s")]

    def probe() -> None:
        try:
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome[0] = None
        except urllib.error.HTTPError as exc:
            # The hub answered: a redirect (to the CDN that serves the file), or a 404 that makes timm try its
            # next file name. A 5xx or a proxy asking for credentials means nothing will be downloaded.
            failed = exc.code >= 500 or exc.code == 407
            outcome[0] = ConnectionError(f"HTTP {exc.code} {exc.reason}") if failed else None
        except urllib.error.URLError as exc:  # refused, unknown host, TLS
            outcome[0] = exc.reason if isinstance(exc.reason, BaseException) else exc
        except (OSError, ValueError) as exc:  # a socket timeout, a malformed HF_ENDPOINT
            outcome[0] = exc

    # A thread bounds the whole probe: the socket timeout does not cover a name lookup that hangs.
    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0]


def check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Raise a clear error if ``name``'s pretrained weights cannot be downloaded right now.

    The server is asked for the weights file itself (HEAD, through any configured proxy) and must answer
    within ``timeout`` seconds: a network that takes the connection and then says nothing (a dead proxy,
    a captive portal, a firewall) would otherwise keep the hub client retrying for minutes.
    With ``HF_HUB_OFFLINE`` set, hub downloads are off; weights already in the local cache still load,
    so that case is left to :func:`toolkit.train.validate.check_pretrained`.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return
    url = _weights_url(name)
    if url is None:
        return
    problem = _ask(url, timeout)
    if problem is not None:
        host = urlparse(url).hostname or url
        why = " ".join(str(problem).split()) or problem.__class__.__name__
        raise ToolkitError(
            f"pretrained weights for `{name}` cannot be downloaded from {host} ({why})",
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
