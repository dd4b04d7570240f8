"""The fold's optimizer: timm's factory, with torch's fused update where the optimizer has one."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from toolkit.config.schema import OptimConfig

# Keys a recipe may set in optim.kwargs that choose the update's implementation itself.
_IMPLEMENTATION_KEYS = ("fused", "foreach")


def fused_supported(opt_name: str, model: torch.nn.Module) -> bool:
    """Whether ``opt_name`` resolves to a torch optimizer with a fused update for these parameters.

    torch picks the per-tensor loop by default on the CPU: for resnet18's 11 M parameters an AdamW
    step there takes ~18 ms against ~6.5 ms fused (2 threads), a tenth of a 32-px batch. The fused
    kernels exist for CPU and CUDA floating-point parameters only (timm's own optimizers have none).
    """
    from timm.optim import get_optimizer_class

    try:
        opt_class = get_optimizer_class(opt_name, bind_defaults=False)
    except (ValueError, KeyError, AttributeError, TypeError):
        return False
    if not (isinstance(opt_class, type) and opt_class.__module__.startswith("torch.optim")):
        return False
    try:
        if "fused" not in inspect.signature(opt_class.__init__).parameters:
            return False
    except (TypeError, ValueError):
        return False
    params = list(model.parameters())
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def create_optimizer(model: torch.nn.Module, opt: OptimConfig) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` from the recipe's ``[optim]``; fused when supported and not set.

    ``optim.kwargs`` keeps the last word: ``fused = false`` or ``foreach = true`` there is used as written.
    """
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = dict(opt.kwargs)
    if not any(k in kwargs for k in _IMPLEMENTATION_KEYS) and fused_supported(opt.name, model):
        kwargs["fused"] = True
    return create_optimizer_v2(model, opt=opt.name, lr=opt.lr, weight_decay=opt.weight_decay,
                               momentum=opt.momentum, layer_decay=opt.layer_decay, **kwargs)
