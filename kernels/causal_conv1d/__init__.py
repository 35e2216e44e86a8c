"""Depthwise conv1d for Mamba-style mixers: causal (mamba's causal-conv1d), anti-causal, and 'same'.

``causal_conv1d`` follows ``causal_conv1d_fn`` (x [B, D, L], weight [D, W], left padding W-1 truncated to
L, optional SiLU); ``reverse=True`` gives flip(causal(flip(x))) without copies, for the backward direction of
a bidirectional block. ``same_conv1d`` is MambaVision's symmetric conv (F.conv1d with padding W//2, odd W).
Both take the Triton path on CUDA tensors (or under TRITON_INTERPRET=1) and the PyTorch reference elsewhere.
"""
from __future__ import annotations

import torch

from kernels.common import use_triton
from kernels.causal_conv1d.reference import causal_conv1d_ref, same_conv1d_ref

__all__ = ["causal_conv1d", "same_conv1d", "causal_conv1d_ref", "same_conv1d_ref"]

_MAX_WIDTH = 8


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           activation: str | None) -> tuple[torch.Tensor, bool]:
    """Validate shapes; returns the weight as [D, W] and whether SiLU is fused."""
    if x.dim() != 3:
        raise ValueError(f"x must be [B, D, L], got shape {tuple(x.shape)}")
    d = x.shape[1]
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight.reshape(weight.shape[0], weight.shape[2])
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"weight must be [D, W] or [D, 1, W] with D={d}, got shape {tuple(weight.shape)}")
    if not 1 <= weight.shape[1] <= _MAX_WIDTH:
        raise ValueError(f"kernel width must be in 1..{_MAX_WIDTH}, got {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"bias must be [D] with D={d}, got shape {tuple(bias.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return weight, activation is not None


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, reverse: bool = False) -> torch.Tensor:
    """out[t] = act(bias + sum_k w[k] x[t-(W-1)+k]); reverse=True: act(bias + sum_k w[k] x[t+(W-1)-k])."""
    w2, silu = _check(x, weight, bias, activation)
    if use_triton(x, w2, bias):
        from kernels.causal_conv1d.triton import conv1d_depthwise_triton

        return conv1d_depthwise_triton(x, w2, bias, "reverse" if reverse else "causal", silu)
    return causal_conv1d_ref(x, w2, bias, activation, reverse)


def same_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                activation: str | None = None) -> torch.Tensor:
    """'same'-padded depthwise conv, = act(F.conv1d(x, w, b, padding=W//2, groups=D)) for odd W."""
    w2, silu = _check(x, weight, bias, activation)
    if w2.shape[1] % 2 != 1:
        raise ValueError(f"same_conv1d needs an odd kernel width, got {w2.shape[1]}")
    if use_triton(x, w2, bias):
        from kernels.causal_conv1d.triton import conv1d_depthwise_triton

        return conv1d_depthwise_triton(x, w2, bias, "same", silu)
    return same_conv1d_ref(x, w2, bias, activation)
