"""Losses: each against a value worked out by hand with plain Python math on a tiny example."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from toolkit.config.schema import LossComponent, LossConfig
from toolkit.errors import DataError, RecipeError, UsageError
from toolkit.train.losses import (
    CrossEntropyLoss,
    class_weights,
    create_loss,
    list_losses,
    multihead_loss,
    needs_class_counts,
    soft_target_variant,
)

# Two samples, three classes; class 1 is absent from the hard targets on purpose.
LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]]
HARD = [0, 2]
ONE_HOT = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
SOFT = [[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]  # what MixUp of two one-hot rows looks like
COUNTS = [1, 2, 4]


def logits(requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(LOGITS, requires_grad=requires_grad)


def hard() -> torch.Tensor:
    return torch.tensor(HARD)


def soft(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)


# --- plain-Python references --------------------------------------------------------------------


def py_softmax(row: list[float]) -> list[float]:
    m = max(row)
    exps = [math.exp(v - m) for v in row]
    s = sum(exps)
    return [e / s for e in exps]


def py_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def py_targets(labels: list[int], n_classes: int, smoothing: float = 0.0) -> list[list[float]]:
    return [[(1 - smoothing) * (c == y) + smoothing / n_classes for c in range(n_classes)] for y in labels]


def py_terms(rows: list[list[float]], targets: list[list[float]], gamma: float = 0.0) -> list[list[float]]:
    """t_c · (1 - p_c)^γ · (-log p_c) per sample and class."""
    out = []
    for z, t in zip(rows, targets, strict=True):
        logp = py_log_softmax(z)
        out.append([tc * (1 - math.exp(lp)) ** gamma * -lp for tc, lp in zip(t, logp, strict=True)])
    return out


def py_mean_loss(terms: list[list[float]]) -> float:
    return sum(sum(r) for r in terms) / len(terms)


def py_weighted_loss(terms: list[list[float]], targets: list[list[float]], w: list[float]) -> float:
    """Sample-weighted mean: sample n weighs Σ_c w_c·y_nc, y its target before smoothing."""
    s = [sum(w[c] * t[c] for c in range(len(w))) for t in targets]
    return sum(sn * sum(row) for sn, row in zip(s, terms, strict=True)) / sum(s)


def py_soft_f1(rows: list[list[float]], targets: list[list[float]], eps: float = 1e-7) -> float:
    probs = [py_softmax(z) for z in rows]
    f1s = []
    for c in range(len(rows[0])):
        mass = sum(t[c] for t in targets)
        if mass == 0:
            continue
        tp = sum(p[c] * t[c] for p, t in zip(probs, targets, strict=True))
        fp = sum(p[c] * (1 - t[c]) for p, t in zip(probs, targets, strict=True))
        fn = sum((1 - p[c]) * t[c] for p, t in zip(probs, targets, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn + eps))
    return 1 - sum(f1s) / len(f1s)


INVERSE = [12 / 7, 6 / 7, 3 / 7]  # counts 1:2:4 → 1/n ∝ 4:2:1, scaled to mean 1


def effective_ref(counts: list[int], beta: float) -> list[float]:
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    return [r * len(raw) / sum(raw) for r in raw]


def value(loss: torch.nn.Module, target: torch.Tensor) -> float:
    return float(loss(logits(), target))


# --- cross-entropy --------------------------------------------------------------------------------


def test_ce_without_smoothing_hard_and_soft():
    expected = (-py_log_softmax(LOGITS[0])[0] - py_log_softmax(LOGITS[1])[2]) / 2
    # ℓ_0 = log(e^2 + 1 + e^-1) - 2 ≈ 0.1699, ℓ_1 = log(e^0.5 + e + 1) - 0 ≈ 1.6802
    by_hand = (math.log(math.exp(2) + 1 + math.exp(-1)) - 2 + math.log(math.exp(0.5) + math.e + 1)) / 2
    assert expected == pytest.approx(by_hand) and expected == pytest.approx(0.92506, abs=1e-5)
    loss = create_loss(LossConfig(name="ce", label_smoothing=0.0))
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-6)
    assert value(loss, soft(ONE_HOT)) == pytest.approx(expected, rel=1e-6)


def test_ce_with_smoothing_hard_and_soft():
    t = py_targets(HARD, 3, 0.1)
    expected = py_mean_loss(py_terms(LOGITS, t))
    loss = create_loss(LossConfig(name="ce", label_smoothing=0.1))
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-6)
    # Soft targets are taken as given (MixUp already smoothed them): the smoothed matrix gives
    # the same value, a plain one-hot matrix is not smoothed a second time.
    assert value(loss, soft(t)) == pytest.approx(expected, rel=1e-6)
    unsmoothed = py_mean_loss(py_terms(LOGITS, ONE_HOT))
    assert value(loss, soft(ONE_HOT)) == pytest.approx(unsmoothed, rel=1e-6)
    assert abs(expected - unsmoothed) > 1e-2


def test_soft_ce_on_soft_targets():
    expected = py_mean_loss(py_terms(LOGITS, SOFT))
    loss = create_loss(LossConfig(name="soft_ce", label_smoothing=0.1))
    assert value(loss, soft(SOFT)) == pytest.approx(expected, rel=1e-6)
    # hard targets with smoothing work too
    assert value(loss, hard()) == pytest.approx(py_mean_loss(py_terms(LOGITS, py_targets(HARD, 3, 0.1))), rel=1e-6)


# --- class weights ---------------------------------------------------------------------------------


def test_class_weights_methods():
    assert class_weights(COUNTS, "inverse").tolist() == pytest.approx(INVERSE, rel=1e-6)
    raw = [1 / math.sqrt(n) for n in COUNTS]
    assert class_weights(COUNTS, "sqrt_inverse").tolist() == pytest.approx([r * 3 / sum(raw) for r in raw], rel=1e-6)
    assert class_weights(COUNTS, "effective", beta=0.9).tolist() == pytest.approx(effective_ref(COUNTS, 0.9), rel=1e-6)
    # β → 0 means every sample is its own "effective" sample: no reweighting
    assert class_weights(COUNTS, "effective", beta=0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # large counts with β close to 1 stay accurate and finite
    big = class_weights([100_000, 10], "effective", beta=0.9999).tolist()
    assert big == pytest.approx(effective_ref([100_000, 10], 0.9999), rel=1e-5)


def test_empty_class_is_a_data_error():
    with pytest.raises(DataError, match="class index 1"):
        class_weights([3, 0, 2], "inverse")
    with pytest.raises(DataError, match="class index 1"):
        create_loss(LossConfig(name="weighted_ce"), [3, 0, 2])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_ce_inverse(smoothing):
    t = py_targets(HARD, 3, smoothing)
    expected = py_weighted_loss(py_terms(LOGITS, t), ONE_HOT, INVERSE)  # weights from the unsmoothed label
    loss = create_loss(LossConfig(name="weighted_ce", class_weights="inverse", label_smoothing=smoothing), COUNTS)
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-6)
    # soft targets are taken as given: their own mass decides the sample weight
    assert value(loss, soft(t)) == pytest.approx(py_weighted_loss(py_terms(LOGITS, t), t, INVERSE), rel=1e-6)
    if smoothing == 0.0:
        # hand form: (w0·ℓ0 + w2·ℓ1) / (w0 + w2), which is torch's own weighted mean
        l0, l1 = -py_log_softmax(LOGITS[0])[0], -py_log_softmax(LOGITS[1])[2]
        assert expected == pytest.approx((INVERSE[0] * l0 + INVERSE[2] * l1) / (INVERSE[0] + INVERSE[2]))
        assert value(loss, hard()) == pytest.approx(
            float(F.cross_entropy(logits(), hard(), weight=torch.tensor(INVERSE))), rel=1e-6)


def test_weighted_ce_effective_on_soft_targets():
    w = effective_ref(COUNTS, 0.9)
    expected = py_weighted_loss(py_terms(LOGITS, SOFT), SOFT, w)
    loss = create_loss(LossConfig(name="weighted_ce", class_weights="effective", effective_beta=0.9), COUNTS)
    assert value(loss, soft(SOFT)) == pytest.approx(expected, rel=1e-6)
    t = py_targets(HARD, 3, 0.1)
    assert value(loss, hard()) == pytest.approx(py_weighted_loss(py_terms(LOGITS, t), ONE_HOT, w), rel=1e-6)


def test_weighted_ce_defaults_to_inverse_and_ce_takes_weights():
    plain = create_loss(LossConfig(name="weighted_ce", label_smoothing=0.0), COUNTS)
    ce_inv = create_loss(LossConfig(name="ce", class_weights="inverse", label_smoothing=0.0), COUNTS)
    expected = py_weighted_loss(py_terms(LOGITS, ONE_HOT), ONE_HOT, INVERSE)
    assert value(plain, hard()) == pytest.approx(expected, rel=1e-6)
    assert value(ce_inv, hard()) == pytest.approx(expected, rel=1e-6)


def test_class_counts_required_when_weighted():
    with pytest.raises(UsageError, match="class counts"):
        create_loss(LossConfig(name="weighted_ce"))
    with pytest.raises(DataError, match="3 class weights but the logits have 4"):
        create_loss(LossConfig(name="weighted_ce"), COUNTS)(torch.zeros(2, 4), torch.tensor([0, 1]))


# --- focal -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_gamma0_is_ce(smoothing):
    t = py_targets(HARD, 3, smoothing)
    expected = py_mean_loss(py_terms(LOGITS, t))
    loss = create_loss(LossConfig(name="focal", gamma=0.0, label_smoothing=smoothing))
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-6)
    assert value(loss, soft(t)) == pytest.approx(expected, rel=1e-6)
    ce = create_loss(LossConfig(name="ce", label_smoothing=smoothing))
    assert value(loss, soft(SOFT)) == pytest.approx(value(ce, soft(SOFT)), rel=1e-6)


def test_focal_gamma2_fixed_example():
    # sample 0: p_0 = e^2/(e^2+1+e^-1); sample 1: p_2 = 1/(e^0.5+e+1)
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    p1 = 1 / (math.exp(0.5) + math.exp(1) + 1)
    expected = ((1 - p0) ** 2 * -math.log(p0) + (1 - p1) ** 2 * -math.log(p1)) / 2
    assert expected == pytest.approx(py_mean_loss(py_terms(LOGITS, ONE_HOT, gamma=2.0)))
    loss = create_loss(LossConfig(name="focal", gamma=2.0, label_smoothing=0.0))
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-6)
    assert value(loss, soft(ONE_HOT)) == pytest.approx(expected, rel=1e-6)
    # soft targets: every class with target mass contributes its focal term
    assert value(loss, soft(SOFT)) == pytest.approx(py_mean_loss(py_terms(LOGITS, SOFT, gamma=2.0)), rel=1e-6)
    # alpha scales the loss
    scaled = create_loss(LossConfig(name="focal", gamma=2.0, alpha=0.25, label_smoothing=0.0))
    assert value(scaled, hard()) == pytest.approx(0.25 * expected, rel=1e-6)


def test_focal_with_class_weights_and_smoothing():
    t = py_targets(HARD, 3, 0.1)
    expected = py_weighted_loss(py_terms(LOGITS, t, gamma=2.0), ONE_HOT, INVERSE)
    loss = create_loss(LossConfig(name="focal", gamma=2.0, class_weights="inverse", label_smoothing=0.1), COUNTS)
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-6)
    assert value(loss, soft(t)) == pytest.approx(py_weighted_loss(py_terms(LOGITS, t, gamma=2.0), t, INVERSE), rel=1e-6)


def test_smoothing_does_not_pull_every_sample_towards_the_heavy_class():
    # Every sample is of the light class 0 and the model predicts it; the rare class 2 weighs 25x.
    weighted = CrossEntropyLoss(label_smoothing=0.1, weight=torch.tensor([0.1, 0.4, 2.5]))
    z = torch.zeros(8, 3, requires_grad=True)
    weighted(z, torch.zeros(8, dtype=torch.long)).backward()
    # The gradient raises the true class and lowers both others equally: no pull towards class 2.
    g = z.grad[0]
    assert g[0] < 0 and g[1] == pytest.approx(float(g[2]), abs=1e-7)


# --- soft F1 ---------------------------------------------------------------------------------------


def test_soft_f1_perfect_predictions_near_zero():
    loss = create_loss(LossConfig(name="soft_f1"))
    y = torch.tensor([0, 1, 2, 1])
    perfect = F.one_hot(y, 3).float() * 50.0
    assert float(loss(perfect, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(perfect, F.one_hot(y, 3).float())) == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot((y + 1) % 3, 3).float() * 50.0
    assert float(loss(wrong, y)) == pytest.approx(1.0, abs=1e-6)


def test_soft_f1_fixed_example():
    # hard targets: class 1 has no target mass and is left out of the mean
    p = [py_softmax(z) for z in LOGITS]
    f1_0 = 2 * p[0][0] / (2 * p[0][0] + p[1][0] + (1 - p[0][0]) + 1e-7)
    f1_2 = 2 * p[1][2] / (2 * p[1][2] + p[0][2] + (1 - p[1][2]) + 1e-7)
    expected = 1 - (f1_0 + f1_2) / 2
    assert expected == pytest.approx(py_soft_f1(LOGITS, ONE_HOT))
    # label smoothing does not apply to soft_f1
    loss = create_loss(LossConfig(name="soft_f1", label_smoothing=0.1))
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-5)
    assert value(loss, soft(ONE_HOT)) == pytest.approx(expected, rel=1e-5)
    assert value(loss, soft(SOFT)) == pytest.approx(py_soft_f1(LOGITS, SOFT), rel=1e-5)


# --- sum -------------------------------------------------------------------------------------------


def test_sum_is_weighted_sum():
    cfg = LossConfig(name="sum", label_smoothing=0.1, gamma=2.0,
                     components=[LossComponent("ce", 1.0), LossComponent("soft_f1", 0.5), LossComponent("focal", 2.0)])
    loss = create_loss(cfg)
    t = py_targets(HARD, 3, 0.1)
    expected = (py_mean_loss(py_terms(LOGITS, t)) + 0.5 * py_soft_f1(LOGITS, ONE_HOT)
                + 2.0 * py_mean_loss(py_terms(LOGITS, t, gamma=2.0)))
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-5)
    expected_soft = (py_mean_loss(py_terms(LOGITS, SOFT)) + 0.5 * py_soft_f1(LOGITS, SOFT)
                     + 2.0 * py_mean_loss(py_terms(LOGITS, SOFT, gamma=2.0)))
    assert value(loss, soft(SOFT)) == pytest.approx(expected_soft, rel=1e-5)


def test_sum_components_share_class_weights():
    cfg = LossConfig(name="sum", label_smoothing=0.0, components=[LossComponent("weighted_ce", 1.0),
                                                                  LossComponent("ce", 1.0)])
    assert needs_class_counts(cfg)
    loss = create_loss(cfg, COUNTS)
    expected = py_weighted_loss(py_terms(LOGITS, ONE_HOT), ONE_HOT, INVERSE) + py_mean_loss(py_terms(LOGITS, ONE_HOT))
    assert value(loss, hard()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("components", "match"), [
    ([], "needs loss.components"),
    ([LossComponent("sum", 1.0)], r"components\[0\].*cannot contain a sum"),
    ([LossComponent("ce", 1.0), LossComponent("dice", 1.0)], r"loss.components\[1\].name 'dice'"),
    ([LossComponent("ce", -1.0)], r"components\[0\].weight"),
])
def test_bad_sum(components, match):
    with pytest.raises(RecipeError, match=match):
        create_loss(LossConfig(name="sum", components=components))


# --- registry and config ---------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    assert list_losses() == ["ce", "focal", "soft_ce", "soft_f1", "sum", "weighted_ce"]
    with pytest.raises(RecipeError) as err:
        create_loss(LossConfig(name="focall"))
    text = str(err.value)
    assert "loss.name" in text and "'focall'" in text and "did you mean 'focal'" in text
    for name in list_losses():
        assert name in err.value.hint


@pytest.mark.parametrize(("cfg", "match"), [
    (LossConfig(label_smoothing=1.0), "label_smoothing"),
    (LossConfig(label_smoothing=-0.1), "label_smoothing"),
    (LossConfig(name="weighted_ce", class_weights="effective", effective_beta=1.0), "effective_beta"),
    (LossConfig(name="focal", gamma=-1.0), "gamma"),
    (LossConfig(name="focal", alpha=0.0), "alpha"),
])
def test_bad_parameters(cfg, match):
    with pytest.raises(RecipeError, match=match):
        create_loss(cfg, COUNTS)


def test_needs_class_counts():
    assert not needs_class_counts(LossConfig(name="ce"))
    assert needs_class_counts(LossConfig(name="ce", class_weights="sqrt_inverse"))
    assert needs_class_counts(LossConfig(name="weighted_ce"))
    assert needs_class_counts(LossConfig(name="focal", class_weights="effective"))
    assert not needs_class_counts(LossConfig(name="soft_f1", class_weights="inverse"))
    assert not needs_class_counts(LossConfig(name="sum", components=[LossComponent("ce"), LossComponent("soft_f1")]))
    with pytest.raises(RecipeError, match="loss.name"):
        needs_class_counts(LossConfig(name="nope"))


def test_soft_target_variant():
    v = soft_target_variant(LossConfig(name="ce", label_smoothing=0.2))
    assert (v.name, v.class_weights, v.label_smoothing) == ("soft_ce", "none", 0.2)
    v = soft_target_variant(LossConfig(name="weighted_ce"))
    assert (v.name, v.class_weights) == ("soft_ce", "inverse")
    v = soft_target_variant(LossConfig(name="weighted_ce", class_weights="effective"))
    assert (v.name, v.class_weights) == ("soft_ce", "effective")
    for name in ("focal", "soft_f1", "soft_ce"):
        cfg = LossConfig(name=name)
        assert soft_target_variant(cfg) == cfg
    v = soft_target_variant(LossConfig(name="sum", components=[LossComponent("ce", 1.0), LossComponent("weighted_ce", 0.5)]))
    assert [(c.name, c.weight) for c in v.components] == [("soft_ce", 1.0), ("weighted_ce", 0.5)]
    # the variant computes what the original did on soft targets
    orig = create_loss(LossConfig(name="weighted_ce"), COUNTS)
    var = create_loss(soft_target_variant(LossConfig(name="weighted_ce")), COUNTS)
    assert value(var, soft(SOFT)) == pytest.approx(value(orig, soft(SOFT)), rel=1e-6)


# --- robustness -------------------------------------------------------------------------------------

ALL_CONFIGS = [
    LossConfig(name="ce"),
    LossConfig(name="ce", class_weights="sqrt_inverse"),
    LossConfig(name="weighted_ce", class_weights="effective"),
    LossConfig(name="soft_ce"),
    LossConfig(name="focal", gamma=2.0, alpha=0.25, class_weights="inverse"),
    LossConfig(name="focal", gamma=0.5),  # γ < 1: (1-p)^γ has an unbounded slope at p = 1
    LossConfig(name="soft_f1"),
    LossConfig(name="sum", components=[LossComponent("ce", 1.0), LossComponent("soft_f1", 0.5),
                                       LossComponent("focal", 1.0)]),
]


@pytest.mark.parametrize("cfg", ALL_CONFIGS, ids=lambda c: f"{c.name}-{c.class_weights}-{c.gamma}")
@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_finite_gradients(cfg, scale, kind):
    # rows that are right, wrong and tied, at ordinary and saturating magnitudes
    base = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, -1.0], [0.0, 0.0, 1.0], [1.0, 1.0, -1.0]])
    x = (base * scale).requires_grad_(True)
    y = torch.tensor([0, 2, 2, 1])
    target = y if kind == "hard" else torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.0, 0.8], [0.0, 1.0, 0.0]])
    loss = create_loss(cfg, COUNTS)
    out = loss(x, target)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0  # the loss actually depends on the logits


def test_low_precision_logits_are_computed_in_float32():
    loss = create_loss(LossConfig(name="focal", label_smoothing=0.0))
    out = loss(logits().to(torch.bfloat16), hard())
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(py_mean_loss(py_terms(LOGITS, ONE_HOT, gamma=2.0)), rel=1e-2)


def test_pickles_and_keeps_weights_as_buffers():
    loss = create_loss(LossConfig(name="weighted_ce"), COUNTS)
    assert dict(loss.named_buffers())["weight"].tolist() == pytest.approx(INVERSE)
    assert list(loss.parameters()) == []
    clone = pickle.loads(pickle.dumps(loss))
    assert value(clone, hard()) == pytest.approx(value(loss, hard()))
    summed = create_loss(LossConfig(name="sum", components=[LossComponent("weighted_ce"), LossComponent("soft_f1")]), COUNTS)
    assert value(pickle.loads(pickle.dumps(summed)), hard()) == pytest.approx(value(summed, hard()))


def test_bad_target_shapes():
    loss = create_loss(LossConfig(name="ce"))
    with pytest.raises(ValueError, match="soft targets"):
        loss(logits(), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="targets for"):
        loss(logits(), torch.tensor([0, 1, 2]))


def test_multihead_loss_weights_each_heads_columns():
    # Head a: the first three columns (targets 0, 2); head b: the last two (targets 1, 0).
    z = torch.tensor([[2.0, 0.0, -1.0, 0.3, -0.2], [0.5, 1.0, 0.0, -1.0, 1.5]])
    targets = torch.tensor([[0, 1], [2, 0]])
    ce = CrossEntropyLoss()
    total = multihead_loss(z, targets, [ce, ce], [1.0, 0.5], [3, 2])
    expected = F.cross_entropy(z[:, :3], targets[:, 0]) + 0.5 * F.cross_entropy(z[:, 3:], targets[:, 1])
    assert torch.allclose(total, expected)
    # one head with a flat target vector, and MixUp's soft targets, take the single-head path
    assert torch.allclose(multihead_loss(logits(), hard(), [ce], [2.0], [3]), 2 * F.cross_entropy(logits(), hard()))
    soft_ce = create_loss(LossConfig(name="soft_ce"))
    assert torch.allclose(multihead_loss(logits(), soft(SOFT), [soft_ce], [1.0], [3]), soft_ce(logits(), soft(SOFT)))
