"""Losses: a small registry from ``[loss]`` to a ``torch.nn.Module``.

Every loss is called as ``loss(logits, target)`` with ``logits`` of shape ``[N, C]`` and
``target`` either class indices (an integer tensor ``[N]``) or a soft-target matrix (a float
tensor ``[N, C]``, rows summing to 1, as MixUp/CutMix produce). It returns a scalar.

Conventions shared by all losses:

* **Label smoothing** (``loss.label_smoothing`` = ε) turns a hard target ``y`` into the
  distribution ``t = (1 - ε)·onehot(y) + ε/C``. Soft targets are used as given: timm's
  ``Mixup`` already smooths the targets it mixes, and smoothing them twice would be wrong, so
  a trainer that turns MixUp/CutMix on passes ``label_smoothing`` to ``Mixup`` instead.
* **Class weights** (``loss.class_weights``; computed from training counts, normalized to average
  1 over the classes) weight *samples*: sample n weighs ``s_n = Σ_c w_c y_nc`` with ``y`` its
  target before smoothing (one-hot, or the soft target as given), and the batch reduction is the
  weighted mean ``Σ_n s_n Σ_c t_nc ℓ_nc / Σ_n s_n``. For hard targets without smoothing that is
  exactly ``F.cross_entropy(weight=w)``. With smoothing it is not, on purpose: weighting each
  class's term (as ``F.cross_entropy(weight=w, label_smoothing=ε)`` does) rewards putting
  probability on heavily weighted classes for *every* sample — with a 3 % class weighted ~25×
  and ε = 0.1, its ε/C share of every sample's target pulls almost as hard as the true label and
  the model predicts the rare class everywhere (seen on facemask-3class: accuracy 0.39).
  Without weights the reduction is the plain mean over samples.
* Computation runs in float32 whatever the logits' dtype, so mixed precision does not
  underflow the log-probabilities.
* Weights are registered buffers (the module moves with ``.to(device)`` and pickles), and a
  forward call also moves them to the logits' device, because ``accelerate.prepare`` does not
  move loss modules.

Losses:

``ce``
    Cross-entropy with label smoothing; applies class weights when ``class_weights`` is set.
``weighted_ce``
    Cross-entropy with class weights; ``class_weights = "none"`` means ``inverse`` here.
``soft_ce``
    Soft-target cross-entropy ``-Σ_c t_c log softmax(z)_c``, the loss MixUp/CutMix needs.
    It computes the same value as ``ce``; it is what :func:`soft_target_variant` switches to, so
    the recorded recipe says that soft targets were optimised.
``focal``
    Focal loss (Lin et al., 2017) in its softmax form ``-Σ_c t_c (1 - p_c)^γ log p_c``.
    ``gamma = 0`` is cross-entropy. ``alpha`` is a scalar that multiplies the loss: with a
    softmax only target terms exist, so the binary α/(1-α) split has no multi-class analogue
    and α is a constant scale (kept to reproduce recipes that set it, e.g. 0.25, and to balance
    focal against other terms of a ``sum``). Per-class balance comes from ``class_weights``.
``soft_f1``
    ``1 - macro soft-F1`` over the batch, from softmax probabilities and the (unsmoothed)
    one-hot or soft targets: per class ``tp = Σ p·t``, ``fp = Σ p·(1-t)``, ``fn = Σ (1-p)·t``,
    ``F1 = 2tp / (2tp + fp + fn + eps)``. The mean runs over the classes that have target mass
    in the batch (a class absent from the batch has no F1 and would only add a constant);
    label-smoothed soft targets give every class some mass. Ignores ``class_weights`` and
    ``label_smoothing``: macro-F1 already weighs classes equally, and smoothing would keep a
    perfect prediction from scoring 1.
``sum``
    ``Σ_k weight_k · loss_k`` over ``loss.components``; each component is built from the same
    ``[loss]`` section with its own ``name``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.config.schema import LossComponent, LossConfig
from toolkit.errors import DataError, RecipeError, UsageError

__all__ = [
    "CrossEntropyLoss",
    "FocalLoss",
    "SoftF1Loss",
    "WeightedSumLoss",
    "class_weights",
    "create_loss",
    "list_losses",
    "multihead_loss",
    "needs_class_counts",
    "soft_target_variant",
]

CLASS_WEIGHT_METHODS: tuple[str, ...] = ("none", "inverse", "sqrt_inverse", "effective")


# --------------------------------------------------------------------------------------------
# Targets and reduction
# --------------------------------------------------------------------------------------------


def _target_matrix(target: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """A float32 ``[N, C]`` target distribution from class indices or soft targets."""
    if target.is_floating_point():
        if target.dim() != 2 or target.shape[1] != num_classes:
            raise ValueError(f"soft targets must have shape [N, {num_classes}], got {list(target.shape)}")
        return target.float()
    if target.dim() != 1:
        raise ValueError(f"class-index targets must have shape [N], got {list(target.shape)}")
    t = F.one_hot(target.long(), num_classes).float()
    if smoothing > 0:
        t = t * (1.0 - smoothing) + smoothing / num_classes
    return t


def _check_logits(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {list(logits.shape)}")
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"{target.shape[0]} targets for {logits.shape[0]} logits rows")


def _weight_on(weight: Tensor | None, logits: Tensor) -> Tensor | None:
    if weight is None:
        return None
    if weight.numel() != logits.shape[1]:
        raise DataError(f"the loss has {weight.numel()} class weights but the logits have {logits.shape[1]} classes",
                        "compute class_counts over the same class list as the model's outputs")
    return weight.to(logits.device)


def _reduce(terms: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Reduce per-class terms ``t_nc·ℓ_nc`` ``[N, C]`` to a scalar (see the module docstring)."""
    per_sample = terms.sum(dim=1)
    if weight is None:
        return per_sample.mean()
    s = target.float() @ weight if target.is_floating_point() else weight[target.long()]
    # Guard the denominator only against an all-zero target batch; it is ≥ min(w) otherwise.
    return (per_sample * s).sum() / s.sum().clamp_min(torch.finfo(torch.float32).tiny)


# --------------------------------------------------------------------------------------------
# Loss modules
# --------------------------------------------------------------------------------------------


class CrossEntropyLoss(nn.Module):
    """Cross-entropy for hard or soft targets, with optional label smoothing and class weights.

    Args:
        label_smoothing: ε applied to hard targets.
        weight: per-class weights ``[C]`` or None.
    """

    weight: Tensor | None

    def __init__(self, label_smoothing: float = 0.0, weight: Tensor | None = None) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else weight.detach().float().clone())

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits, target)
        logits = logits.float()
        weight = _weight_on(self.weight, logits)
        if weight is None and not target.is_floating_point():
            # Fused path for the common case; the same value as the explicit formula below.
            return F.cross_entropy(logits, target.long(), label_smoothing=self.label_smoothing)
        t = _target_matrix(target, logits.shape[1], self.label_smoothing)
        return _reduce(-t * F.log_softmax(logits, dim=1), target, weight)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, weighted={self.weight is not None}"


class FocalLoss(nn.Module):
    """Softmax focal loss ``-Σ_c t_c (1 - p_c)^γ log p_c`` (see the module docstring).

    Args:
        gamma: focusing parameter γ ≥ 0; 0 gives cross-entropy.
        alpha: scalar factor on the loss, or None for 1.
        label_smoothing: ε applied to hard targets.
        weight: per-class weights ``[C]`` or None.
    """

    weight: Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, label_smoothing: float = 0.0,
                 weight: Tensor | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else weight.detach().float().clone())

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits, target)
        logits = logits.float()
        weight = _weight_on(self.weight, logits)
        t = _target_matrix(target, logits.shape[1], self.label_smoothing)
        logp = F.log_softmax(logits, dim=1)
        terms = -t * logp
        if self.gamma != 0:
            # 1 - p as -expm1(log p) keeps precision when p is near 1; the floor keeps the
            # gradient of x**γ finite at x = 0 when γ < 1 (a saturated logit gives p == 1).
            one_minus_p = (-torch.expm1(logp)).clamp_min(1e-12)
            terms = terms * one_minus_p.pow(self.gamma)
        loss = _reduce(terms, target, weight)
        return loss * self.alpha if self.alpha is not None else loss

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, alpha={self.alpha}, label_smoothing={self.label_smoothing}, "
                f"weighted={self.weight is not None}")


class SoftF1Loss(nn.Module):
    """``1 - macro soft-F1`` over the batch (see the module docstring).

    Args:
        eps: added to each class's F1 denominator for stability.
    """

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits(logits, target)
        p = F.softmax(logits.float(), dim=1)
        t = _target_matrix(target, logits.shape[1], 0.0)
        tp = (p * t).sum(dim=0)
        fp = (p * (1 - t)).sum(dim=0)
        fn = ((1 - p) * t).sum(dim=0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        present = t.sum(dim=0) > 0
        return 1 - f1[present].mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class WeightedSumLoss(nn.Module):
    """``Σ_k weight_k · loss_k(logits, target)``.

    Args:
        losses: the component modules.
        weights: one weight per component.
        names: one name per component (for ``repr`` and logging).
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float], names: Sequence[str]) -> None:
        super().__init__()
        if not (len(losses) == len(weights) == len(names)):
            raise ValueError("losses, weights and names must have the same length")
        self.losses = nn.ModuleList(losses)
        self.weights = tuple(float(w) for w in weights)
        self.names = tuple(names)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        total = None
        for w, loss in zip(self.weights, self.losses, strict=True):
            term = w * loss(logits, target)
            total = term if total is None else total + term
        assert total is not None  # a sum has at least one component (checked in create_loss)
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{n}×{w:g}" for n, w in zip(self.names, self.weights, strict=True))


# --------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------


def class_weights(counts: Sequence[int], method: str = "inverse", beta: float = 0.999) -> Tensor:
    """Per-class loss weights from training counts, normalized to average 1 over the classes.

    Args:
        counts: training images per class, in class-index order.
        method: ``inverse`` (``N / (C·n_c)``), ``sqrt_inverse`` (``1 / sqrt(n_c)``),
            ``effective`` (Cui et al., 2019: ``(1 - β) / (1 - β^n_c)``) or ``none`` (all 1).
        beta: β of the effective-number weights, in ``[0, 1)``.

    Returns:
        A float32 tensor ``[C]``.

    Raises:
        DataError: a class has no training image (an empty class is a data problem: fix the
            class list or the split rather than train a class the model never sees).
        RecipeError: unknown method or β outside ``[0, 1)``.
    """
    counts = [int(c) for c in counts]
    if not counts:
        raise DataError("class weights need at least one class count", "check the training manifest")
    for i, c in enumerate(counts):
        if c <= 0:
            raise DataError(f"class index {i} has {c} training images, so it has no class weight",
                            "drop the class from the class list or fix the split so every class is in training")
    n_classes, total = len(counts), sum(counts)
    if method == "none":
        raw = [1.0] * n_classes
    elif method == "inverse":
        raw = [total / (n_classes * c) for c in counts]
    elif method == "sqrt_inverse":
        raw = [1.0 / math.sqrt(c) for c in counts]
    elif method == "effective":
        _check_beta(beta)
        # 1 - β^n as -expm1(n·log β): exact when β is close to 1 and n is large.
        raw = [(1.0 - beta) / -math.expm1(c * math.log(beta)) if beta > 0 else 1.0 for c in counts]
    else:
        raise RecipeError(f"unknown loss.class_weights {method!r}", f"choose one of: {', '.join(CLASS_WEIGHT_METHODS)}")
    mean = sum(raw) / n_classes
    return torch.tensor([r / mean for r in raw], dtype=torch.float32)


def _check_beta(beta: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise RecipeError(f"loss.effective_beta must be in [0, 1), got {beta}",
                          "use a value such as 0.99, 0.999 or 0.9999 (closer to 1 = stronger reweighting)")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LossEntry:
    build: Callable[[LossConfig, Tensor | None], nn.Module]
    help: str
    default_weights: str = "none"  # the class_weights used when the recipe says "none"
    takes_weights: bool = True


def _build_ce(cfg: LossConfig, weight: Tensor | None) -> nn.Module:
    return CrossEntropyLoss(label_smoothing=cfg.label_smoothing, weight=weight)


def _build_focal(cfg: LossConfig, weight: Tensor | None) -> nn.Module:
    return FocalLoss(gamma=cfg.gamma, alpha=cfg.alpha, label_smoothing=cfg.label_smoothing, weight=weight)


def _build_soft_f1(cfg: LossConfig, weight: Tensor | None) -> nn.Module:
    return SoftF1Loss()


_LOSSES: dict[str, _LossEntry] = {
    "ce": _LossEntry(_build_ce, "cross-entropy with label smoothing"),
    "weighted_ce": _LossEntry(_build_ce, "cross-entropy with class weights (default inverse)", default_weights="inverse"),
    "soft_ce": _LossEntry(_build_ce, "soft-target cross-entropy (MixUp/CutMix)"),
    "focal": _LossEntry(_build_focal, "focal loss (gamma, alpha)"),
    "soft_f1": _LossEntry(_build_soft_f1, "1 - differentiable macro-F1 over the batch", takes_weights=False),
}
_SUM = "sum"

# What a loss becomes when the targets are soft (MixUp/CutMix). Every loss here accepts soft
# targets; the switch makes the recorded recipe name what was optimised.
_SOFT_VARIANT: dict[str, str] = {"ce": "soft_ce", "weighted_ce": "soft_ce"}


def list_losses() -> list[str]:
    """The names ``loss.name`` accepts, sorted."""
    return sorted([*_LOSSES, _SUM])


def _entry(name: str, key: str) -> _LossEntry:
    if name in _LOSSES:
        return _LOSSES[name]
    close = difflib.get_close_matches(name, list_losses(), n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise RecipeError(f"unknown {key} {name!r}{suggestion}", f"choose one of: {', '.join(list_losses())}")


def _effective_weights(cfg: LossConfig, entry: _LossEntry) -> str:
    """The class-weight method a (non-sum) loss actually uses."""
    if not entry.takes_weights:
        return "none"
    return entry.default_weights if cfg.class_weights == "none" else cfg.class_weights


def _components(cfg: LossConfig) -> list[tuple[str, LossComponent]]:
    """``(key path, component)`` of a ``sum``, validated."""
    if not cfg.components:
        raise RecipeError("loss.name = \"sum\" needs loss.components",
                          "add e.g. components = [{ name = \"ce\", weight = 1.0 }, { name = \"soft_f1\", weight = 0.5 }]")
    out = []
    for i, comp in enumerate(cfg.components):
        key = f"loss.components[{i}]"
        if comp.name == _SUM:
            raise RecipeError(f"{key}.name = \"sum\": a sum cannot contain a sum",
                              "list the inner sum's components in the outer sum directly")
        _entry(comp.name, f"{key}.name")
        if not (math.isfinite(comp.weight) and comp.weight >= 0):
            raise RecipeError(f"{key}.weight must be a finite number ≥ 0, got {comp.weight}",
                              "use a non-negative weight, e.g. 1.0")
        out.append((key, comp))
    return out


def _validate(cfg: LossConfig) -> None:
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise RecipeError(f"loss.label_smoothing must be in [0, 1), got {cfg.label_smoothing}", "use e.g. 0.1, or 0 for none")
    if cfg.class_weights not in CLASS_WEIGHT_METHODS:
        raise RecipeError(f"unknown loss.class_weights {cfg.class_weights!r}",
                          f"choose one of: {', '.join(CLASS_WEIGHT_METHODS)}")
    if cfg.gamma < 0 or not math.isfinite(cfg.gamma):
        raise RecipeError(f"loss.gamma must be ≥ 0, got {cfg.gamma}", "use e.g. 2.0 (0 = cross-entropy)")
    if cfg.alpha is not None and not (math.isfinite(cfg.alpha) and cfg.alpha > 0):
        raise RecipeError(f"loss.alpha must be > 0 or unset, got {cfg.alpha}", "use e.g. 0.25, or remove the key")
    _check_beta(cfg.effective_beta)


def needs_class_counts(cfg: LossConfig) -> bool:
    """Whether :func:`create_loss` needs ``class_counts`` for this ``[loss]`` section.

    Raises:
        RecipeError: an unknown loss name or an invalid ``sum``.
    """
    if cfg.name == _SUM:
        return any(_effective_weights(cfg, _entry(c.name, key + ".name")) != "none" for key, c in _components(cfg))
    return _effective_weights(cfg, _entry(cfg.name, "loss.name")) != "none"


def soft_target_variant(cfg: LossConfig) -> LossConfig:
    """The ``[loss]`` section to train with when targets are soft (MixUp/CutMix on).

    ``ce`` and ``weighted_ce`` become ``soft_ce`` with the same class weights (``weighted_ce``'s
    implicit ``inverse`` is made explicit); ``soft_ce``, ``focal`` and ``soft_f1`` accept soft
    targets as they are. In a ``sum``, ``ce`` components become ``soft_ce`` and ``weighted_ce``
    components stay (they accept soft targets, and their implicit weights must survive).
    """
    if cfg.name == _SUM:
        comps = [replace(c, name="soft_ce") if c.name == "ce" else c for _, c in _components(cfg)]
        return replace(cfg, components=comps)
    entry = _entry(cfg.name, "loss.name")
    if cfg.name in _SOFT_VARIANT:
        return replace(cfg, name=_SOFT_VARIANT[cfg.name], class_weights=_effective_weights(cfg, entry))
    return cfg


def _create_one(cfg: LossConfig, name: str, key: str, class_counts: Sequence[int] | None) -> nn.Module:
    entry = _entry(name, key)
    method = _effective_weights(cfg, entry)
    weight = None
    if method != "none":
        if class_counts is None:
            raise UsageError(f"{key} = {name!r} with class weights {method!r} needs the training class counts",
                             "pass class_counts to create_loss (see needs_class_counts)")
        weight = class_weights(class_counts, method, cfg.effective_beta)
    return entry.build(cfg, weight)


def create_loss(cfg: LossConfig, class_counts: Sequence[int] | None = None) -> nn.Module:
    """Build the loss a ``[loss]`` section describes.

    Args:
        cfg: the ``[loss]`` section.
        class_counts: training images per class in class-index order; needed when
            :func:`needs_class_counts` says so, ignored otherwise.

    Returns:
        A module called as ``loss(logits [N, C], target)`` returning a scalar mean, where
        ``target`` is class indices ``[N]`` or soft targets ``[N, C]``.

    Raises:
        RecipeError: unknown ``loss.name`` (the message lists the valid names), an empty or
            nested ``sum``, or an out-of-range parameter.
        DataError: a class with zero training images when class weights are used.
        UsageError: class weights are needed and ``class_counts`` is None.
    """
    _validate(cfg)
    if cfg.name != _SUM:
        return _create_one(cfg, cfg.name, "loss.name", class_counts)
    comps = _components(cfg)
    losses = [_create_one(cfg, c.name, key + ".name", class_counts) for key, c in comps]
    return WeightedSumLoss(losses, [c.weight for _, c in comps], [c.name for _, c in comps])


def multihead_loss(logits: Tensor, targets: Tensor, criteria: Sequence[nn.Module], weights: Sequence[float],
                   head_sizes: Sequence[int]) -> Tensor:
    """The training loss of a (multi-head) model: ``Σ_h weight_h · loss_h`` over each head's logit columns.

    Args:
        logits: ``[N, Σ head_sizes]``, the heads' logits side by side.
        targets: Class indices ``[N]`` or ``[N, heads]``, or the soft targets ``[N, C]`` of
            MixUp/CutMix (single head only).
        criteria: One loss per head.
        weights: One weight per head.
        head_sizes: Logit columns of each head.
    """
    logits = logits.float()
    if targets.is_floating_point():  # MixUp/CutMix soft targets (single head)
        return weights[0] * criteria[0](logits, targets)
    if targets.ndim == 1:
        targets = targets[:, None]
    total = logits.new_zeros(())
    start = 0
    for h, crit in enumerate(criteria):
        n = head_sizes[h]
        total = total + weights[h] * crit(logits[:, start:start + n], targets[:, h])
        start += n
    return total
