"""RMSNorm / LayerNorm over the last dim with the fused residual add of Mamba-style blocks.

Semantics of mamba_ssm's ``rms_norm_fn`` / ``layer_norm_fn``: if ``residual`` is given, s = x + residual
(in fp32), else s = x; y = norm(s) * weight (+ bias) in x's dtype. With ``prenorm=True`` the op returns
``(y, residual_out)`` where residual_out = s, in fp32 when ``residual_in_fp32``, else in the residual's dtype
(x's dtype without a residual); gradients flowing into residual_out are added to those of x and residual.
Triton path on CUDA tensors (or under TRITON_INTERPRET=1), the PyTorch reference elsewhere and for widths
above ``MAX_WIDTH``.
"""
from __future__ import annotations

import torch

from kernels.common import use_triton
from kernels.norm.reference import layer_norm_ref, residual_out_dtype, rms_norm_ref

__all__ = ["rms_norm", "layer_norm", "rms_norm_ref", "layer_norm_ref"]

_MAX_WIDTH = 16384  # one row per tile in registers; wider rows take the reference path


def _norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms):
    n = x.shape[-1]
    if tuple(weight.shape) != (n,):
        raise ValueError(f"weight must be [{n}] for inputs of width {n}, got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be [{n}] for inputs of width {n}, got shape {tuple(bias.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} must equal x's {tuple(x.shape)}")
    if not use_triton(x, weight, bias, residual) or n > _MAX_WIDTH or x.numel() == 0:
        ref = rms_norm_ref if is_rms else layer_norm_ref
        return ref(x, weight, bias, residual, eps, prenorm, residual_in_fp32)
    from kernels.norm.triton import norm_triton

    res_dtype = residual_out_dtype(x, residual, residual_in_fp32) if prenorm else None
    if prenorm and residual is None and res_dtype == x.dtype:
        # The residual stream is x itself: return it as is, autograd adds its gradient to x's.
        return norm_triton(x, weight, bias, None, eps, is_rms, None), x
    return norm_triton(x, weight, bias, residual, eps, is_rms, res_dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             residual: torch.Tensor | None = None, eps: float = 1e-5, prenorm: bool = False,
             residual_in_fp32: bool = False):
    """y = s * rsqrt(mean(s^2) + eps) * w (+ b), s = x (+ residual); prenorm=True also returns s."""
    return _norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms=True)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               residual: torch.Tensor | None = None, eps: float = 1e-5, prenorm: bool = False,
               residual_in_fp32: bool = False):
    """y = (s - mean) * rsqrt(var + eps) * w (+ b), s = x (+ residual); prenorm=True also returns s."""
    return _norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms=False)
