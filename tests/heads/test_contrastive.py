"""Contrastive heads: projections and the learnable temperature (open_clip's initialisation and clamp)."""
from __future__ import annotations

import math

import pytest
import torch

from heads.contrastive import ContrastiveProjection, LogitScale


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projection_maps_width_and_trains(kind):
    proj = ContrastiveProjection(12, 8, kind)
    x = torch.randn(5, 12, requires_grad=True)
    y = proj(x)
    assert y.shape == (5, 8)
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())


def test_linear_projection_is_bias_free_like_clip():
    proj = ContrastiveProjection(12, 8)
    assert [n for n, _ in proj.named_parameters()] == ["proj.weight"]
    assert ContrastiveProjection(12, 8, bias=True).proj.bias is not None


def test_none_projection_passes_through_and_checks_width():
    x = torch.randn(3, 8)
    assert torch.equal(ContrastiveProjection(8, 8, "none")(x), x)
    with pytest.raises(ValueError, match="in_features == embed_dim"):
        ContrastiveProjection(12, 8, "none")
    with pytest.raises(ValueError, match="not one of"):
        ContrastiveProjection(12, 8, "conv")


def test_logit_scale_init_exp_and_clamp():
    ls = LogitScale()
    assert ls.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert ls().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert ls.bias() is None
    with torch.no_grad():
        ls.logit_scale.fill_(10.0)  # exp(10) > 100: CLIP clamps the multiplier at 100
    assert ls().item() == pytest.approx(100.0)
    siglip = LogitScale(10.0, -10.0)
    assert siglip().item() == pytest.approx(10.0, rel=1e-5) and siglip.bias().item() == -10.0
