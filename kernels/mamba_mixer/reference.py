"""Plain-PyTorch fp32 reference of Vim's bidirectional Mamba mixer (``bimamba_type="v2"``) after ``in_proj``.

It reads like the math, one direction at a time, built from the family references (causal_conv1d_ref,
selective_scan_ref: fp32, token loop), so it is the truth the fused Triton path is tested against:

    for direction d (0 = forward, 1 = backward, i.e. everything run from the last token to the first):
        xc_d  = SiLU(conv_d(x))                       causal conv; anti-causal for d = 1
        [dt_d | B_d | C_d] = W_x[d] xc_d
        delta_d = softplus(W_dt[d] dt_d + b_dt[d])
        y_d   = scan(xc_d, delta_d, A_d = -exp(A_log[d]), B_d, C_d) + D[d] xc_d, gated by SiLU(z)
    out = out_proj((y_0 + y_1) / 2)                   the sum without ``divide_out``

Stacked parameters (direction first): conv_weight [2, E, W], conv_bias [2, E], x_proj_weight [2, R + 2N, E],
dt_proj_weight [2, E, R], dt_proj_bias [2, E], A_log [2, E, N], D [2, E]; x, z [B, E, L]; out [B, L, dim].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.causal_conv1d.reference import causal_conv1d_ref
from kernels.selective_scan.reference import selective_scan_ref

__all__ = ["bimamba_inner_ref"]


def bimamba_inner_ref(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                      out_proj_weight, out_proj_bias=None, divide_out=True, scan=selective_scan_ref):
    """The mixer from x, z [B, E, L] to out [B, L, dim], in fp32; returns x's dtype.

    ``scan``: the selective-scan reference (the token loop; GPU tests at long L pass the vectorised
    ``selective_scan_torch``, which the scan's own tests check against the loop)."""
    f = torch.float32
    rank = dt_proj_weight.shape[-1]
    n = A_log.shape[-1]
    x32, z32 = x.to(f), z.to(f)
    ys = []
    for d, reverse in ((0, False), (1, True)):
        xc = causal_conv1d_ref(x32, conv_weight[d].to(f), None if conv_bias is None else conv_bias[d].to(f),
                               activation="silu", reverse=reverse)
        x_dbl = torch.matmul(x_proj_weight[d].to(f), xc)                        # [B, R + 2N, L]
        dt, B, C = x_dbl[:, :rank], x_dbl[:, rank:rank + n], x_dbl[:, rank + n:]
        delta = torch.matmul(dt_proj_weight[d].to(f), dt)                       # [B, E, L]
        ys.append(scan(xc, delta, -torch.exp(A_log[d].to(f)), B, C, D[d].to(f), z=z32,
                       delta_bias=dt_proj_bias[d].to(f), delta_softplus=True, reverse=reverse))
    y = ys[0] + ys[1]
    if divide_out:
        y = y / 2
    out = F.linear(y.transpose(1, 2), out_proj_weight.to(f),
                   None if out_proj_bias is None else out_proj_bias.to(f))
    return out.to(x.dtype)
