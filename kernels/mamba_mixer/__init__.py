"""Vim's bidirectional Mamba mixer after ``in_proj`` as one op: conv+SiLU, x_proj, dt_proj, gated scan of both
directions, merge and out_proj (mamba_ssm's ``mamba_inner_fn``, for the v2 bidirectional block).

``bimamba_inner(..., variant=)`` picks the path:

- ``"fused"``: the Triton path of ``kernels.mamba_mixer.triton`` (one conv pass and one scan launch for both
  directions, batched projections, no B/C copies, the merge folded into out_proj);
- ``"unfused"``: the family ops one direction at a time (``mamba_direction``: causal_conv1d, two GEMMs,
  selective_scan), then the mean; on CUDA these are the separate Triton kernels, elsewhere their PyTorch paths;
- ``"reference"``: ``bimamba_inner_ref``, the plain fp32 PyTorch truth;
- ``"auto"`` (default): fused where the Triton path runs (CUDA tensors, or ``TRITON_INTERPRET=1``), else unfused.

Parameters are stacked direction first (index 0 forward, 1 backward): conv_weight [2, E, W] (or [2, E, 1, W]),
conv_bias [2, E], x_proj_weight [2, R+2N, E], dt_proj_weight [2, E, R], dt_proj_bias [2, E], A_log [2, E, N],
D [2, E]; x, z [B, E, L]; out_proj_weight [dim, E]; returns [B, L, dim]. ``variant_scan`` / ``seg`` / ``chunk``
/ ``autotune`` / ``layout`` / ``tile`` are the selective scan's launch choices (see ``kernels.selective_scan``;
``layout="token"``: the scan forward's token-parallel tiles, on the fused and the unfused path);
``channels_last`` the fused path's activation layout (``kernels.mamba_mixer.triton.bimamba_inner_triton``). x
and z may have any strides: channel-last views of in_proj's [B, L, 2E] output feed the fused inference path
without copies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.causal_conv1d import causal_conv1d
from kernels.common import use_triton
from kernels.mamba_mixer.reference import bimamba_inner_ref
from kernels.selective_scan import selective_scan
from kernels.selective_scan.options import check_layout

__all__ = ["bimamba_inner", "bimamba_inner_ref", "mamba_direction", "VARIANTS"]

VARIANTS = ("auto", "fused", "unfused", "reference")


def mamba_direction(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                    reverse=False, **scan_options):
    """One direction of the unfused mixer on [B, E, L]: conv -> SiLU -> x_proj -> dt_proj -> scan gated by
    SiLU(z); the backward direction by ``reverse=True`` (no flipped copies). Returns [B, E, L]."""
    rank, n = dt_proj_weight.shape[-1], A_log.shape[-1]
    x = causal_conv1d(x, conv_weight, conv_bias, activation="silu", reverse=reverse)
    x_dbl = torch.matmul(x_proj_weight, x)                        # [B, R + 2N, L]
    dt = torch.matmul(dt_proj_weight, x_dbl[:, :rank])            # [B, E, L]; bias goes to the scan, once
    B = x_dbl[:, rank:rank + n].contiguous()
    C = x_dbl[:, rank + n:].contiguous()
    A = -torch.exp(A_log.float())
    return selective_scan(x, dt, A, B, C, D.float(), z=z, delta_bias=dt_proj_bias.float(), delta_softplus=True,
                          reverse=reverse, **scan_options)


def _check(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, out_proj_weight,
           out_proj_bias):
    """Shapes of the stacked parameters against x; returns conv_weight as [2, E, W]."""
    if x.dim() != 3:
        raise ValueError(f"bimamba_inner: x must be [B, E, L], got shape {tuple(x.shape)}")
    if z.shape != x.shape:
        raise ValueError(f"bimamba_inner: z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    e = x.shape[1]
    if conv_weight.dim() == 4 and conv_weight.shape[2] == 1:          # stacked nn.Conv1d weights [2, E, 1, W]
        conv_weight = conv_weight.flatten(2)
    if A_log.dim() != 3 or A_log.shape[:2] != (2, e):
        raise ValueError(f"bimamba_inner: A_log must be [2, E={e}, N], got {tuple(A_log.shape)}")
    n = A_log.shape[2]
    if dt_proj_weight.dim() != 3 or dt_proj_weight.shape[:2] != (2, e):
        raise ValueError(f"bimamba_inner: dt_proj_weight must be [2, E={e}, R], got {tuple(dt_proj_weight.shape)}")
    r = dt_proj_weight.shape[2]
    want = {"conv_weight": (conv_weight, (2, e, conv_weight.shape[-1])), "conv_bias": (conv_bias, (2, e)),
            "x_proj_weight": (x_proj_weight, (2, r + 2 * n, e)), "dt_proj_bias": (dt_proj_bias, (2, e)),
            "D": (D, (2, e)), "out_proj_weight": (out_proj_weight, (out_proj_weight.shape[0], e))}
    for name, (t, shape) in want.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"bimamba_inner: {name} must be {shape} (direction first), got {tuple(t.shape)}")
    if out_proj_bias is not None and tuple(out_proj_bias.shape) != (out_proj_weight.shape[0],):
        raise ValueError(f"bimamba_inner: out_proj_bias must be [{out_proj_weight.shape[0]}], "
                         f"got {tuple(out_proj_bias.shape)}")
    return conv_weight


def bimamba_inner(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                  out_proj_weight, out_proj_bias=None, *, divide_out=True, variant="auto", variant_scan=None,
                  seg=None, chunk=None, autotune=None, layout=None, tile=None, channels_last=None):
    """out [B, L, dim] = out_proj(mean (or sum, ``divide_out=False``) of both directions' gated scans)."""
    choice = (variant or "auto").lower()
    if choice not in VARIANTS:
        raise ValueError(f"bimamba_inner: variant must be one of {VARIANTS}, got {variant!r}")
    conv_weight = _check(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                         out_proj_weight, out_proj_bias)
    params = (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    if choice == "auto":
        choice = "fused" if use_triton(x, z, *params) else "unfused"
    check_layout(layout, tile)
    if choice == "reference":
        return bimamba_inner_ref(x, z, *params, out_proj_weight, out_proj_bias, divide_out)
    scan_options = dict(variant=variant_scan, seg=seg, chunk=chunk, autotune=autotune, layout=layout, tile=tile)
    if choice == "fused":
        if not use_triton(x, z, *params):
            raise ValueError("bimamba_inner: variant='fused' needs CUDA tensors (or TRITON_INTERPRET=1); "
                             "use variant='unfused' or 'reference' on the CPU")
        from kernels.mamba_mixer.triton import bimamba_inner_triton

        return bimamba_inner_triton(x, z, *params, out_proj_weight, out_proj_bias, divide_out, **scan_options,
                                    channels_last=channels_last)
    ys = [mamba_direction(x, z, *(p[d] if p is not None else None for p in params), reverse=bool(d),
                          **scan_options) for d in range(2)]
    y = torch.lerp(ys[0], ys[1], 0.5) if divide_out else ys[0] + ys[1]
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
