"""The module an export traces: fold models × flip views, averaged as ``clsctl predict`` averages them.

Its input is one normalized batch ``[N, C, S, S]`` (what the batch normalizer hands the models); its
outputs are one probability tensor per head (``probs_<head>``) and, for a one-fold graph under
``mean_logit``, the views' mean logits per head (``logits_<head>``) so folds exported apart still combine
exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from toolkit.errors import ToolkitError, UsageError

INPUT_NAME = "image"
#: Views a graph can hold: tensor ops on the batch the identity view already has.
FLIP_VIEWS = ("identity", "hflip", "vflip")


def output_name(head: str, kind: str = "probs") -> str:
    """``probs_<head>``: the graph output of a head, as a C identifier (ONNX names are)."""
    return f"{kind}_" + re.sub(r"\W", "_", head)


def check_views(views: Sequence[str]) -> None:
    """Refuse views a graph cannot hold (they change the decoded image, not the batch)."""
    bad = [v for v in views if v not in FLIP_VIEWS]
    if bad:
        raise UsageError(f"--tta {','.join(bad)}: an export holds only flip views (hflip, vflip)",
                         "pass --tta none or --tta hflip (scale, fivecrop and trainaug change the decoded image)")


class AveragedFolds(nn.Module):
    """Softmax (or logits) of every fold model on every flip view, combined per head.

    Args:
        models: fold models in eval mode (same heads, same preprocessing).
        views: view names from :data:`FLIP_VIEWS`, identity first.
        head_sizes: logit columns of each head.
        combine: ``mean_prob`` (mean of softmaxes) or ``mean_logit`` (softmax of the mean logit).
        logits: also output the mean logits per head.
    """

    def __init__(self, models: Sequence[nn.Module], views: Sequence[str], head_sizes: Sequence[int],
                 combine: str, logits: bool = False) -> None:
        super().__init__()
        check_views(views)
        self.models = nn.ModuleList(models)
        self.views = list(views)
        self.head_sizes = [int(n) for n in head_sizes]
        self.combine = combine
        self.logits = logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = [x if v == "identity" else x.flip(-1 if v == "hflip" else -2) for v in self.views]
        outs = [model(view) for model in self.models for view in inputs]
        heads = [torch.stack(parts) for parts in zip(*(o.split(self.head_sizes, dim=-1) for o in outs), strict=True)]
        if self.combine == "mean_logit":
            mean_logits = [h.mean(dim=0) for h in heads]
            probs = [torch.softmax(m, dim=-1) for m in mean_logits]
        else:
            probs = [torch.softmax(h, dim=-1).mean(dim=0) for h in heads]
        if self.logits:
            return (*probs, *(h.mean(dim=0) for h in heads))
        return tuple(probs)


def export_onnx(module: nn.Module, path: str | Path, size: int, in_chans: int, output_names: Sequence[str],
                opset: int | None = None) -> None:
    """Trace ``module`` with ``torch.onnx.export`` (dynamo) into one self-contained ``.onnx`` file, batch size dynamic.

    Raises:
        ToolkitError: the exporter fails (the message names the first line of its error).
    """
    import warnings

    module = module.eval()
    # torch.export specializes dimensions of size 1: trace with two images so the batch stays dynamic.
    example = torch.zeros(2, in_chans, size, size)
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=list(output_names), opset_version=opset,
                              dynamic_shapes=({0: "batch"},),
                              # one file unless protobuf's 2 GB limit forces the weights beside it
                              external_data=params >= 2**31 - 2**27, verbose=False)
    except UsageError:
        raise
    except Exception as exc:  # the exporter raises many types (TorchExportError, ConversionError, ...)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"ONNX export failed: {type(exc).__name__}: {text[:240]}",
                           "try another --opset, or run with CLSCTL_DEBUG=1 and report the traceback") from exc
