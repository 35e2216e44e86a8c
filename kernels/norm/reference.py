"""Plain-PyTorch RMSNorm / LayerNorm with the fused residual add of mamba_ssm's layer_norm_fn / rms_norm_fn.

    s = x + residual                 (if residual is given; in fp32)
    LayerNorm: y = (s - mean(s)) / sqrt(var(s) + eps) * w + b
    RMSNorm:   y = s / sqrt(mean(s^2) + eps) * w + b
Returns y in x's dtype, and with prenorm=True also residual_out = s (fp32 if residual_in_fp32, else the
residual's dtype when a residual is given, else x's dtype), which the next block adds its output to.
"""
from __future__ import annotations

import torch

__all__ = ["rms_norm_ref", "layer_norm_ref", "residual_out_dtype"]


def residual_out_dtype(x: torch.Tensor, residual: torch.Tensor | None, residual_in_fp32: bool) -> torch.dtype:
    """Dtype of the residual stream returned with prenorm=True (as in mamba_ssm)."""
    if residual_in_fp32:
        return torch.float32
    return residual.dtype if residual is not None else x.dtype


def _norm_ref(x, weight, bias, residual, eps, prenorm, residual_in_fp32, rms):
    acc = torch.promote_types(x.dtype, torch.float32)  # fp32 math; fp64 stays fp64 for gradcheck
    s = x.to(acc)
    if residual is not None:
        s = s + residual.to(acc)
    if rms:
        xhat = s * torch.rsqrt(s.square().mean(dim=-1, keepdim=True) + eps)
    else:
        mean = s.mean(dim=-1, keepdim=True)
        var = (s - mean).square().mean(dim=-1, keepdim=True)
        xhat = (s - mean) * torch.rsqrt(var + eps)
    y = xhat * weight.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    y = y.to(x.dtype)
    if not prenorm:
        return y
    return y, s.to(residual_out_dtype(x, residual, residual_in_fp32))


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, eps: float = 1e-5, prenorm: bool = False,
                 residual_in_fp32: bool = False):
    """RMSNorm over the last dim with optional fused residual add; see the module docstring."""
    return _norm_ref(x, weight, bias, residual, eps, prenorm, residual_in_fp32, rms=True)


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, eps: float = 1e-5, prenorm: bool = False,
                   residual_in_fp32: bool = False):
    """LayerNorm over the last dim with optional fused residual add; see the module docstring."""
    return _norm_ref(x, weight, bias, residual, eps, prenorm, residual_in_fp32, rms=False)
