"""Plain-PyTorch depthwise conv1d: the readable truth for the Triton kernels (and the CPU path).

Causal (mamba's causal-conv1d): out[t] = bias + sum_k w[k] * x[t - (W-1) + k], zero outside [0, L).
Reverse (anti-causal, Vim's backward direction): out[t] = bias + sum_k w[k] * x[t + (W-1) - k],
i.e. flip(causal(flip(x))). Same (MambaVision): out[t] = bias + sum_k w[k] * x[t - W//2 + k], odd W.
Math in fp32 (fp64 for fp64 inputs, so gradcheck works), output in x's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d_ref", "same_conv1d_ref", "apply_activation"]


def apply_activation(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """None or SiLU (mamba spells it 'silu' or 'swish')."""
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def _depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               left: int, right: int) -> torch.Tensor:
    """fp32 (or fp64) depthwise conv1d (cross-correlation, like nn.Conv1d) after zero padding (left, right)."""
    d, w = weight.shape[0], weight.shape[-1]
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = F.pad(x.to(acc), (left, right))
    b = None if bias is None else bias.to(acc)
    return F.conv1d(xf, weight.reshape(d, 1, w).to(acc), b, groups=d)


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None, reverse: bool = False) -> torch.Tensor:
    """Causal depthwise conv over x [B, D, L] with weight [D, W] (or [D, 1, W]); reverse=True is anti-causal."""
    w = weight.shape[-1]
    if reverse:
        # out[t] = sum_k w[k] x[t + (W-1) - k]: correlate with the flipped kernel, padding on the right.
        y = _depthwise(x, weight.flip(-1), bias, 0, w - 1)
    else:
        y = _depthwise(x, weight, bias, w - 1, 0)
    return apply_activation(y, activation).to(x.dtype)


def same_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    activation: str | None = None) -> torch.Tensor:
    """Symmetric 'same' depthwise conv (odd W, padding W//2 on both sides), as MambaVision uses."""
    w = weight.shape[-1]
    if w % 2 != 1:
        raise ValueError(f"same_conv1d needs an odd kernel width, got {w}")
    y = _depthwise(x, weight, bias, w // 2, w // 2)
    return apply_activation(y, activation).to(x.dtype)
