"""PyTorch references for bidirectional (non-causal) normalised linear attention with a fused feature map.

Layout ``[B, T, H, D]`` (kernels' convention): q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]``. With φ the feature
map (ReLU for EfficientViT, elu+1, or none) and every token attending to every token:

    o_t = (φ(q_t) · Σ_s φ(k_s) v_sᵀ) / (φ(q_t) · Σ_s φ(k_s) + eps)

computed in fp32 (timm's LiteMLA casts to float and disables autocast; the bf16 sums overflow or lose the
normaliser otherwise, mit-han-lab/efficientvit#15, #110) and returned in v's dtype.

- ``linear_attention_ref``: the linear-time form, state ``KV = Σ φ(k) vᵀ`` [D, Dv] and ``z = Σ φ(k)`` [D]
  per (batch, head); the CPU path of the public op (autograd through torch ops).
- ``linear_attention_quadratic_ref``: the T x T form ``A = φ(q) φ(k)ᵀ``, ``o = A v / (A 1 + eps)`` -- the
  readable truth for tests, and EfficientViT's own fallback when T <= D.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["FEATURE_MAPS", "feature_map", "linear_attention_ref", "linear_attention_quadratic_ref"]

FEATURE_MAPS = ("relu", "elu1", "none")


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    """φ(x): ``relu`` max(x, 0); ``elu1`` elu(x) + 1 (> 0, Katharopoulos et al. 2020); ``none`` identity."""
    if kind == "relu":
        return F.relu(x)
    if kind == "elu1":
        return F.elu(x) + 1.0
    if kind == "none":
        return x
    raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {kind!r}")


def linear_attention_ref(q, k, v, eps: float = 1e-5, feature: str = "relu") -> torch.Tensor:
    """Linear-time fp32 form over ``[B, T, H, D]``; returns ``[B, T, H, Dv]`` in v's dtype."""
    dtype = v.dtype
    with torch.autocast(v.device.type, enabled=False):  # fp32 even inside a caller's autocast region
        q, k = feature_map(q.float(), feature), feature_map(k.float(), feature)
        v = v.float()
        kv = torch.einsum("bthd,bthe->bhde", k, v)             # Σ_s φ(k_s) v_sᵀ
        z = k.sum(dim=1)                                        # Σ_s φ(k_s)   [B, H, D]
        num = torch.einsum("bthd,bhde->bthe", q, kv)
        den = torch.einsum("bthd,bhd->bth", q, z).unsqueeze(-1) + eps
        return (num / den).to(dtype)


def linear_attention_quadratic_ref(q, k, v, eps: float = 1e-5, feature: str = "relu") -> torch.Tensor:
    """The same function through the explicit T x T score matrix (O(T²); tests and tiny T)."""
    dtype = v.dtype
    with torch.autocast(v.device.type, enabled=False):
        q, k = feature_map(q.float(), feature), feature_map(k.float(), feature)
        a = torch.einsum("bthd,bshd->bhts", q, k)               # A_ts = φ(q_t)·φ(k_s)
        num = torch.einsum("bhts,bshe->bthe", a, v.float())
        den = a.sum(-1).transpose(1, 2).unsqueeze(-1) + eps      # [B, T, H, 1]
        return (num / den).to(dtype)
