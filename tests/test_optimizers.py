"""The fold optimizer: torch's fused update where one exists, and the recipe's word over it."""

from __future__ import annotations

import pytest
import timm
import torch

from toolkit.config.schema import OptimConfig
from toolkit.train.optimizers import create_optimizer, fused_supported


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return timm.create_model("test_resnet", num_classes=3)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "momentum"])
def test_torch_optimizers_get_the_fused_update(model: torch.nn.Module, name: str) -> None:
    optimizer = create_optimizer(model, OptimConfig(name=name))
    assert optimizer.defaults["fused"] is True
    assert len(optimizer.param_groups) == 2  # timm's split: no weight decay on norms and biases


def test_timm_optimizers_are_left_as_they_are(model: torch.nn.Module) -> None:
    assert not fused_supported("lamb", model)
    assert "fused" not in create_optimizer(model, OptimConfig(name="lamb")).defaults


def test_recipe_kwargs_choose_the_implementation(model: torch.nn.Module) -> None:
    optimizer = create_optimizer(model, OptimConfig(name="adamw", kwargs={"foreach": True}))
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
    assert not create_optimizer(model, OptimConfig(name="adamw", kwargs={"fused": False})).defaults["fused"]


def test_fused_step_matches_the_per_tensor_step() -> None:
    """The fused kernel computes AdamW's update to float rounding (from the same gradients)."""
    torch.manual_seed(0)
    a = timm.create_model("test_resnet", num_classes=3)
    b = timm.create_model("test_resnet", num_classes=3)
    b.load_state_dict(a.state_dict())
    fused = create_optimizer(a, OptimConfig(name="adamw", lr=1e-2))
    plain = create_optimizer(b, OptimConfig(name="adamw", lr=1e-2, kwargs={"fused": False, "foreach": False}))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    for _ in range(3):
        fused.step()
        plain.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
