"""Test-time augmentation views, parsed from a spec such as ``hflip,scale:1.15``.

A *view* is one way of looking at an image; its prediction is averaged with the others. Views are
split in two halves so that each image is decoded once however many views there are:

* a **pipeline** runs in the data loader on the decoded image: the run's eval transform at the
  trained size (``base``), the eval transform at another size (``scale:<f>``, and the larger image
  ``fivecrop`` cuts from), or the recipe's train transform under fixed seeds (``trainaug:<n>``);
* a **tensor op** runs on the batch on the device: a flip, a corner or center crop.

Every view spec item becomes one view. A view with several passes (``fivecrop``: five crops,
``trainaug:<n>``: n augmented copies) averages its passes first, so each listed view weighs the
same as the identity view in the final mean.

The identity view is always included, first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from toolkit.errors import UsageError

#: Views one can list after ``--tta`` (``scale`` and ``trainaug`` take a parameter).
VIEW_NAMES = ("hflip", "vflip", "scale:<f>", "fivecrop", "trainaug:<n>")

#: fivecrop cuts its crops from the image resized to size / FIVECROP_PCT (the classic 224/256 ratio).
FIVECROP_PCT = 0.875

_HINT = "e.g. --tta hflip,scale:1.15 (views: " + ", ".join(VIEW_NAMES) + "; or auto)"


@dataclass(frozen=True)
class Pipeline:
    """A decode-side transform. ``kind`` is ``eval`` (at ``size``) or ``train`` (``passes`` seeded copies)."""

    kind: str
    size: int | None = None  # None: the trained size
    passes: int = 1

    @property
    def key(self) -> str:
        """Name of the pipeline's output in a batch."""
        if self.kind == "train":
            return f"train{self.passes}"
        return "base" if self.size is None else f"size{self.size}"


@dataclass(frozen=True)
class View:
    """One TTA view: a pipeline plus the tensor ops of its passes.

    Attributes:
        name: the spec item (``identity``, ``hflip``, ``scale:1.15`` ...).
        pipeline: what the data loader produces for it.
        ops: one op per pass: ``none``, ``hflip``, ``vflip`` or ``crop:<tl|tr|bl|br|c>``.
    """

    name: str
    pipeline: Pipeline
    ops: tuple[str, ...] = field(default=("none",))

    @property
    def passes(self) -> int:
        """Forward passes this view costs per image."""
        return len(self.ops) if self.pipeline.kind != "train" else self.pipeline.passes


def _scale_size(size: int, factor: float) -> int:
    return max(1, round(size * factor))


def parse_tta(spec: str | Sequence[str] | None) -> list[str]:
    """Normalize a TTA spec into its list of view names (identity first, duplicates dropped).

    Args:
        spec: ``"hflip,scale:1.15"``, a list of items, or None/"" / "none" for no TTA.

    Raises:
        UsageError: an unknown view or a bad parameter (the message lists the valid views).
    """
    if spec is None:
        items: list[str] = []
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",")]
    else:
        items = [str(s).strip() for s in spec]
    out = ["identity"]
    for raw in items:
        item = raw.lower().replace(" ", "")
        if item in ("", "none", "identity"):
            continue
        if item == "auto":
            raise UsageError("`auto` cannot be combined with other views", "pass --tta auto on its own")
        if item in ("hflip", "vflip", "fivecrop"):
            name = item
        elif m := re.fullmatch(r"scale:([0-9]*\.?[0-9]+)", item):
            factor = float(m.group(1))
            if not 0.1 <= factor <= 4.0 or factor == 1.0:
                raise UsageError(f"--tta {raw}: the scale factor must be between 0.1 and 4 and not 1", _HINT)
            name = f"scale:{factor:g}"
        elif m := re.fullmatch(r"trainaug:([0-9]+)", item):
            n = int(m.group(1))
            if not 1 <= n <= 64:
                raise UsageError(f"--tta {raw}: trainaug needs between 1 and 64 passes", _HINT)
            name = f"trainaug:{n}"
        else:
            raise UsageError(f"--tta: unknown view {raw!r}", _HINT)
        if name not in out:
            out.append(name)
    return out


def build_views(names: Sequence[str], size: int) -> list[View]:
    """Turn view names (from :func:`parse_tta`) into views for a model evaluated at ``size`` px."""
    views = []
    for name in names:
        if name == "identity":
            views.append(View(name, Pipeline("eval")))
        elif name in ("hflip", "vflip"):
            views.append(View(name, Pipeline("eval"), (name,)))
        elif name.startswith("scale:"):
            views.append(View(name, Pipeline("eval", _scale_size(size, float(name.split(":")[1])))))
        elif name == "fivecrop":
            pre = max(size, round(size / FIVECROP_PCT))
            views.append(View(name, Pipeline("eval", pre), ("crop:tl", "crop:tr", "crop:bl", "crop:br", "crop:c")))
        elif name.startswith("trainaug:"):
            n = int(name.split(":")[1])
            views.append(View(name, Pipeline("train", None, n), tuple("none" for _ in range(n))))
        else:  # parse_tta already rejected anything else
            raise UsageError(f"unknown TTA view {name!r}", _HINT)
    return views


def view_sizes(views: Sequence[View], size: int, train_size: int | None = None) -> list[int]:
    """Input side lengths the model will see (for checking that it accepts them).

    Args:
        views: the views.
        size: the eval size (identity, flips and crops).
        train_size: the training size (``trainaug`` views); default ``size``.
    """
    sizes = []
    for v in views:
        if v.pipeline.kind == "train":
            side = train_size or size
        elif v.ops[0].startswith("crop:") or v.pipeline.size is None:
            side = size
        else:
            side = v.pipeline.size
        if side not in sizes:
            sizes.append(side)
    return sizes


def apply_op(op: str, x, size: int):  # noqa: ANN001, ANN201 - torch tensors; torch is imported lazily
    """Apply one tensor op to a batch ``[B, C, H, W]``."""
    if op == "none":
        return x
    if op == "hflip":
        return x.flip(-1)
    if op == "vflip":
        return x.flip(-2)
    if op.startswith("crop:"):
        h, w = x.shape[-2], x.shape[-1]
        where = op.split(":")[1]
        top = {"tl": 0, "tr": 0, "bl": h - size, "br": h - size, "c": (h - size) // 2}[where]
        left = {"tl": 0, "tr": w - size, "bl": 0, "br": w - size, "c": (w - size) // 2}[where]
        return x[..., top:top + size, left:left + size]
    raise ValueError(f"unknown tensor op {op!r}")


def spec_slug(names: Sequence[str]) -> str:
    """A file-name friendly form of a view list: ``hflip_scale1.15`` (empty for identity only)."""
    return "_".join(n.replace(":", "") for n in names if n != "identity")


#: The fixed candidate list of ``--tta auto``: cheap views that keep the model's input size close
#: to the trained one. Each entry is (policy name, views besides identity).
AUTO_POLICIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("none", ()),
    ("hflip", ("hflip",)),
    ("vflip", ("vflip",)),
    ("hflip,vflip", ("hflip", "vflip")),
    ("scale:0.9", ("scale:0.9",)),
    ("scale:1.1", ("scale:1.1",)),
    ("scale:0.9,scale:1.1", ("scale:0.9", "scale:1.1")),
    ("hflip,scale:0.9,scale:1.1", ("hflip", "scale:0.9", "scale:1.1")),
)
