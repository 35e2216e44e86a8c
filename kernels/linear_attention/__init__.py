"""Bidirectional (non-causal) normalised linear attention: EfficientViT's ReLU attention and its kin.

Layout ``[B, T, H, D]`` as every sequence op here: q, k ``[B, T, H, D]``, v ``[B, T, H, Dv]`` (any strides:
EfficientViT's per-head ``[B, H, T, 3d]`` split, permuted to this layout, is read in place). Returns
``[B, T, H, Dv]`` contiguous in v's dtype:

    o_t = (φ(q_t) · Σ_s φ(k_s) v_sᵀ) / (φ(q_t) · Σ_s φ(k_s) + eps),   φ = relu | elu+1 | identity,

with all arithmetic in fp32 whatever the input dtype or autocast (timm's LiteMLA does the same; eps 1e-5
is timm's value, the official code's 1e-15 breaks fp16/bf16 evaluation, mit-han-lab/efficientvit#15).
No scale: the normaliser cancels it. O(T·D·Dv) per head instead of softmax's O(T²·D).

Dispatch (kernels.common.use_triton): the Triton kernels (two forward, two backward; kernels/linear_attention/
triton.py) on CUDA tensors or under TRITON_INTERPRET=1, the fp32 PyTorch reference elsewhere.
"""
from __future__ import annotations

import torch

from kernels.common import use_triton
from kernels.linear_attention.reference import (
    FEATURE_MAPS,
    feature_map,
    linear_attention_quadratic_ref,
    linear_attention_ref,
)

__all__ = ["normalized_linear_attention", "relu_linear_attention", "linear_attention_ref",
           "linear_attention_quadratic_ref", "feature_map", "FEATURE_MAPS"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _validate(q, k, v, feature):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"linear attention: q and k must both be [B, T, H, D], got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"linear attention: v must be [B, T, H, Dv] with B, T, H of q {tuple(q.shape[:3])}, "
                         f"got {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOATS:
            raise ValueError(f"linear attention: {name} must be fp32/fp16/bf16, got {t.dtype}")
    if q.shape[-1] > 256 or v.shape[-1] > 256:
        raise ValueError(f"linear attention: head dims must be <= 256, got D={q.shape[-1]}, Dv={v.shape[-1]}")
    if feature not in FEATURE_MAPS:
        raise ValueError(f"linear attention: feature_map must be one of {FEATURE_MAPS}, got {feature!r}")


def normalized_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-5,
                                feature_map: str = "relu") -> torch.Tensor:
    """Bidirectional normalised linear attention with the feature map applied inside (see module doc)."""
    _validate(q, k, v, feature_map)
    if q.shape[1] == 0 or q.shape[0] == 0 or q.shape[2] == 0:
        return v.new_zeros(v.shape).contiguous()
    if not use_triton(q, k, v):
        return linear_attention_ref(q, k, v, eps, feature_map)
    from kernels.linear_attention.triton import LinearAttentionFn

    return LinearAttentionFn.apply(q, k, v, float(eps), feature_map)


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """EfficientViT's ReLU linear attention: ``normalized_linear_attention`` with φ = ReLU."""
    return normalized_linear_attention(q, k, v, eps, "relu")
