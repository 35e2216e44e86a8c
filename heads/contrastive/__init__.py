"""Contrastive heads for CLIP-style models: a tower's pooled features -> the shared embedding space, and the
learnable temperature (and SigLIP's bias) that turns cosine similarities into logits.

Initialisation follows open_clip: ``logit_scale`` stores log(1/0.07) and the model uses ``exp()``; SigLIP
starts from log(10) and a bias of -10. Heads know nothing of the registry or Lightning.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["ContrastiveProjection", "LogitScale"]

PROJECTIONS = ("linear", "mlp", "none")


class ContrastiveProjection(nn.Module):
    """Pooled tower features [B, in_features] -> embeddings [B, embed_dim].

    ``kind='linear'`` is CLIP's bias-free projection; ``'mlp'`` is open_clip's timm/HF ``mlp`` projection
    (Linear -> GELU -> Linear, hidden = (in + out) // 2); ``'none'`` passes through (in == out required).
    """

    def __init__(self, in_features: int, embed_dim: int, kind: str = "linear", bias: bool = False):
        super().__init__()
        if kind not in PROJECTIONS:
            raise ValueError(f"projection kind {kind!r} is not one of {PROJECTIONS}")
        if kind == "none" and in_features != embed_dim:
            raise ValueError(f"projection 'none' needs in_features == embed_dim, got {in_features} and {embed_dim}")
        self.in_features, self.embed_dim, self.kind = in_features, embed_dim, kind
        if kind == "linear":
            self.proj = nn.Linear(in_features, embed_dim, bias=bias)
            nn.init.normal_(self.proj.weight, std=in_features ** -0.5)
            if bias:
                nn.init.zeros_(self.proj.bias)
        elif kind == "mlp":
            hidden = (in_features + embed_dim) // 2
            self.proj = nn.Sequential(nn.Linear(in_features, hidden, bias=bias), nn.GELU(),
                                      nn.Linear(hidden, embed_dim, bias=bias))
        else:
            self.proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LogitScale(nn.Module):
    """Learnable temperature ``exp(logit_scale)`` (clamped at ``max_scale`` as CLIP does) and optional bias.

    Keys: ``logit_scale`` (and ``logit_bias`` for SigLIP), the names open_clip's CLIP uses.
    """

    def __init__(self, init_scale: float = 1 / 0.07, init_bias: float | None = None, max_scale: float = 100.0):
        super().__init__()
        self.max_scale = max_scale
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias))) if init_bias is not None else None

    def forward(self) -> torch.Tensor:
        """The multiplier of the cosine similarities (a 0-d tensor)."""
        return self.logit_scale.exp().clamp(max=self.max_scale)

    def bias(self) -> torch.Tensor | None:
        return self.logit_bias
