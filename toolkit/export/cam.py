"""Class activation maps of any timm model, through the ``grad-cam`` package (pytorch-grad-cam, MIT).

The layer a map is read from depends on the family:

* **token models** (ViT, DeiT, EVA, BEiT: ``blocks``, ``patch_embed`` and ``num_prefix_tokens``): the
  ``norm1`` of the last block. Its output still reaches the class token through that block's attention;
  after the last block only the class token feeds the head, so a later layer would get no gradient on
  the patches. The tokens are reshaped to the patch grid after dropping the model's own prefix tokens
  (class, distillation and register tokens alike).
* **everything else** (CNNs, hybrid models): the output of ``forward_features``, the last stage, tapped
  by a wrapper that runs ``forward_head`` on it (timm's ``forward`` is exactly these two calls).

Maps come back in the model's input geometry (``[N, S, S]``, 0..1); :func:`to_original` draws one back
on the image as the file holds it, undoing the eval pipeline's resize, crop or letterbox.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.errors import UsageError
from toolkit.models.factory import MultiHeadModel

#: ``--method`` names → pytorch-grad-cam classes.
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "eigencam": "EigenCAM"}


class FeatureTap(nn.Module):
    """``forward_head(tap(forward_features(x)))``: the model's own forward, with a module to hook in between."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if isinstance(model, MultiHeadModel):
            pooled = model.backbone.forward_head(self.tap(model.backbone.forward_features(x)))
            feats = model.dropout(pooled)
            return torch.cat([head(feats) for head in model.heads], dim=1)
        return model.forward_head(self.tap(model.forward_features(x)))


@dataclass
class CamLayer:
    """Where a map is read: ``module`` is what to call, ``layer`` the hooked layer, ``reshape`` its tokens → NCHW."""

    module: nn.Module
    layer: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    family: str


def cam_layer(model: nn.Module) -> CamLayer:
    """The layer to read maps from, chosen by the model's family (see the module docstring)."""
    inner = model.backbone if isinstance(model, MultiHeadModel) else model
    blocks = getattr(inner, "blocks", None)
    if (hasattr(inner, "patch_embed") and hasattr(inner, "num_prefix_tokens") and isinstance(blocks, nn.Sequential | nn.ModuleList)
            and len(blocks) and hasattr(blocks[-1], "norm1")):
        return CamLayer(model, blocks[-1].norm1, token_reshape(int(inner.num_prefix_tokens)), "tokens")
    if not hasattr(inner, "forward_features") or not hasattr(inner, "forward_head"):
        raise UsageError(f"`{type(inner).__name__}` has no forward_features/forward_head to read a map from",
                         "explain works on timm models")
    tap = FeatureTap(model).eval()
    prefix = int(getattr(inner, "num_prefix_tokens", 0) or 0)
    return CamLayer(tap, tap.tap, feature_reshape(int(getattr(inner, "num_features", 0)), prefix), "features")


def token_reshape(prefix: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``[B, prefix + h·w, C]`` tokens → ``[B, C, h, w]`` (square inputs give a square patch grid)."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise UsageError(f"{patches.shape[1]} patch tokens after {prefix} prefix token(s) make no square grid",
                             "explain needs a square patch grid")
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def feature_reshape(channels: int, prefix: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Feature maps as NCHW: NHWC ones (Swin-like) are permuted, token sequences laid on their grid."""
    tokens = token_reshape(prefix)

    def reshape(x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            return tokens(x)
        if x.ndim == 4 and channels and x.shape[-1] == channels and x.shape[1] != channels:
            return x.permute(0, 3, 1, 2)
        return x

    return reshape


@dataclass
class Maps:
    """Maps of one batch: ``maps`` ``[N, S, S]`` in 0..1 (input geometry) and the model's ``logits`` ``[N, C]``."""

    maps: np.ndarray
    logits: np.ndarray


def compute_maps(model: nn.Module, x: torch.Tensor, targets: Sequence[int], method: str = "gradcam") -> Maps:
    """Maps of ``targets`` (logit columns, one per image) for a normalized batch ``x``.

    The hooks are removed before this returns, whatever happens. ``eigencam`` is class-agnostic: the
    first principal component of the layer's activations, the same map for any target.

    Raises:
        UsageError: an unknown method.
    """
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not one of {', '.join(METHODS)}", "e.g. --method gradcam")
    where = cam_layer(model)
    cam = getattr(pytorch_grad_cam, METHODS[method])(model=where.module, target_layers=[where.layer],
                                                     reshape_transform=where.reshape)
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        logits = cam.outputs.detach().float().cpu().numpy()
    finally:
        cam.activations_and_grads.release()
    model.zero_grad(set_to_none=True)
    return Maps(maps=np.nan_to_num(np.asarray(maps, dtype=np.float32)), logits=logits)


# --------------------------------------------------------------------------- geometry
def input_geometry(transform: Any, height: int, width: int) -> np.ndarray:
    """The affine map from model-input pixels to image pixels of an eval pipeline, ``[[ax, bx], [ay, by]]``.

    An image whose pixels hold their own coordinates goes through the pipeline; where each output pixel
    came from is then read off it. Every eval resize (stretch, crop, letterbox, an intermediate size) is a
    scale and a shift per axis, fitted here on the pixels that came from the image (not from padding).
    Coordinates are continuous: a pixel ``i`` spans ``[i, i + 1)``; the map is ``src = a * (u + 0.5) + b``.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    grid = np.stack([(xs + 0.5) / width, (ys + 0.5) / height, np.ones_like(xs)], axis=-1)
    out = np.asarray(transform(image=grid)["image"], dtype=np.float64)
    s = out.shape[0]
    valid = out[..., 2] > 0.999
    if not valid.any():
        raise UsageError("the eval pipeline keeps nothing of the image", "check the run's preprocessing")
    u = np.broadcast_to(np.arange(out.shape[1])[None, :] + 0.5, valid.shape)[valid]
    v = np.broadcast_to(np.arange(s)[:, None] + 0.5, valid.shape)[valid]
    ax, bx = np.polyfit(u, out[..., 0][valid] * width, 1) if np.ptp(u) > 0 else (width / out.shape[1], 0.0)
    ay, by = np.polyfit(v, out[..., 1][valid] * height, 1) if np.ptp(v) > 0 else (height / s, 0.0)
    return np.array([[ax, bx], [ay, by]])


def to_original(cam: np.ndarray, geometry: np.ndarray, loaded: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """A map in input geometry drawn on the original image (``[H, W]``); 0 where the model saw nothing.

    Args:
        cam: ``[S, S]`` map.
        geometry: :func:`input_geometry` of the image as loaded (``loaded`` = its ``(H, W)``).
        loaded: size of the image the pipeline got (the decoded cache may have downscaled it).
        original: size of the image file.
    """
    import cv2

    (ax, bx), (ay, by) = geometry
    (h1, w1), (h0, w0) = loaded, original
    kx, ky = w1 / w0, h1 / h0
    # For each original pixel X: loaded x = (X + 0.5)·kx; model u = (x - b)/a - 0.5.
    inverse = np.array([[kx / ax, 0.0, (0.5 * kx - bx) / ax - 0.5],
                        [0.0, ky / ay, (0.5 * ky - by) / ay - 0.5]], dtype=np.float64)
    return cv2.warpAffine(cam.astype(np.float32), inverse, (w0, h0),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
