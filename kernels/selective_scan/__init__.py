"""Mamba-1 selective scan: the public ops.

``selective_scan`` takes the Triton path on CUDA tensors (or under ``TRITON_INTERPRET=1``) and the
vectorised PyTorch path (``selective_scan_torch``) elsewhere; ``SPEEDZOO_KERNELS`` overrides the choice (see
``kernels.common``). Both paths compute the same math as mamba_ssm's ``selective_scan_ref``, plus ``reverse``
(scan from the last token to the first without flipped copies) for bidirectional blocks. On the GPU the
Triton path picks a sequential or a chunk-parallel (along L) kernel set by occupancy; the keyword arguments
``variant=`` / ``seg=`` / ``chunk=`` / ``autotune=`` force a choice (see ``kernels.selective_scan.triton.scan_plan``).
"""
from __future__ import annotations

import torch

from kernels.common import use_triton
from kernels.selective_scan.options import check_layout, check_plan_args, chunk_size_for
from kernels.selective_scan.reference import (
    selective_scan_torch,
    selective_scan_ref,
    selective_state_update_ref,
)

__all__ = ["selective_scan", "selective_state_update", "selective_scan_ref", "selective_scan_torch",
           "selective_state_update_ref"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_bc(name: str, t: torch.Tensor, batch: int, dim: int, n: int, L: int | None) -> None:
    tail = (n,) if L is None else (n, L)
    if t.dim() == len(tail) + 1:
        if tuple(t.shape) != (batch, *tail):
            raise ValueError(f"selective_scan: {name} must be {(batch, *tail)} or grouped "
                             f"{(batch, 'G', *tail)}, got {tuple(t.shape)}")
    elif t.dim() == len(tail) + 2:
        g = t.shape[1]
        if t.shape[0] != batch or tuple(t.shape[2:]) != tail or g < 1 or dim % g != 0:
            raise ValueError(f"selective_scan: grouped {name} must be {(batch, 'G', *tail)} with G dividing "
                             f"D={dim}, got {tuple(t.shape)}")
    else:
        raise ValueError(f"selective_scan: {name} must have {len(tail) + 1} or {len(tail) + 2} dims, "
                         f"got shape {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise ValueError(f"selective_scan: {name} must be fp32/fp16/bf16, got {t.dtype}")


def _check_vec(name: str, t: torch.Tensor | None, dim: int) -> None:
    if t is None:
        return
    if t.shape != (dim,):
        raise ValueError(f"selective_scan: {name} must have shape ({dim},), got {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise ValueError(f"selective_scan: {name} must be float32, got {t.dtype}")


def _validate(u, delta, A, B, C, D, z, delta_bias, L_dim: bool = True) -> None:
    if u.dim() != (3 if L_dim else 2):
        raise ValueError(f"selective_scan: u must be [B, D{', L' if L_dim else ''}], got {tuple(u.shape)}")
    if u.dtype not in _FLOATS:
        raise ValueError(f"selective_scan: u must be fp32/fp16/bf16, got {u.dtype}")
    batch, dim = u.shape[:2]
    L = u.shape[2] if L_dim else None
    for name, t in (("delta", delta), ("z", z)):
        if t is None:
            continue
        if t.shape != u.shape:
            raise ValueError(f"selective_scan: {name} must have u's shape {tuple(u.shape)}, got {tuple(t.shape)}")
        if t.dtype != u.dtype:
            raise ValueError(f"selective_scan: {name} must have u's dtype {u.dtype}, got {t.dtype}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be [D={dim}, N], got {tuple(A.shape)}")
    if A.dtype != torch.float32:
        raise ValueError(f"selective_scan: A must be real float32, got {A.dtype}")
    n = A.shape[1]
    if n < 1 or n > 256:
        raise ValueError(f"selective_scan: state size N must be in [1, 256], got {n}")
    _check_bc("B", B, batch, dim, n, L)
    _check_bc("C", C, batch, dim, n, L)
    _check_vec("D", D, dim)
    _check_vec("delta_bias", delta_bias, dim)
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}")


def _check_choices(n_state, variant, seg, chunk, layout=None, tile=None) -> None:
    """The Triton-path keywords are checked on every path, so a typo fails on the CPU as on the GPU."""
    check_plan_args(variant, seg)
    chunk_size_for(n_state, chunk)
    check_layout(layout, tile)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                   return_last_state=False, *, variant=None, seg=None, chunk=None, autotune=None, layout=None,
                   tile=None):
    """y = selective scan of u (mamba_ssm semantics); returns y, or (y, last_state) when asked.

    u, delta, z: [B, D, L]; A: [D, N] fp32; B, C: [B, N, L] or [B, G, N, L]; D, delta_bias: [D] fp32.
    Output in u's dtype; last_state [B, D, N] fp32 carries no gradient.

    Triton-path choices (the reference path ignores them; None lets the heuristic decide): ``variant``
    "sequential" | "chunked" | "auto" (chunk-parallel along L when batch x channel blocks cannot fill the
    GPU), ``seg`` tokens per segment of the chunked variant, ``chunk`` tokens per stored state = backward
    tile (4..64, default 16, or 8 above 16 states), ``autotune`` (default True on the GPU) the launch
    configuration per shape, ``layout`` of the forward's tiles ("channel", "token": lanes along L, one program
    per few channels, for grids that the channel layout leaves empty; "lane": the channel layout's passes with
    one channel per lane and B / C broadcast from fp32 transposed copies; "auto" = "channel" for now) and ``tile``
    the token layout's (tokens per thread, groups, channels, warps).
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    _check_choices(A.shape[1], variant, seg, chunk, layout, tile)
    if not use_triton(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                    return_last_state)
    from kernels.selective_scan.triton import selective_scan_triton

    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
    y, last = selective_scan_triton(
        u.contiguous(), delta.contiguous(), A.contiguous(), B4.contiguous(), C4.contiguous(),
        D.contiguous() if D is not None else None, z.contiguous() if z is not None else None,
        delta_bias.contiguous() if delta_bias is not None else None, delta_softplus, reverse, variant, seg, chunk,
        autotune, layout, tile)
    return (y, last) if return_last_state else y


def selective_state_update(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One decoding step: returns (y [B, D] in u's dtype, new_state [B, D, N] fp32); differentiable."""
    _validate(u, delta, A, B, C, D, z, delta_bias, L_dim=False)
    batch, dim = u.shape
    if state.shape != (batch, dim, A.shape[1]):
        raise ValueError(f"selective_state_update: state must be {(batch, dim, A.shape[1])}, got {tuple(state.shape)}")
    return selective_state_update_ref(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
