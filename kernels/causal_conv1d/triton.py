"""Triton depthwise conv1d (causal, anti-causal and 'same') with a fused SiLU, forward and backward.

One kernel pair serves all three variants: the input index of tap k at output t is ``t + OFF + STEP*k``
(causal: OFF = -(W-1), STEP = 1; reverse: OFF = W-1, STEP = -1; same: OFF = -(W//2), STEP = 1), so the
reverse conv reads x in place instead of flipping copies. Grid (batch, D-blocks, L-blocks); each program
reads its [BLOCK_D, BLOCK_L + W - 1] window through W shifted loads (the overlap hits L1/L2, so DRAM sees
each element about once). The backward recomputes the pre-activation (no saved activations), writes dx
and per-program fp32 partial sums of dweight/dbias that are summed afterwards (deterministic, no atomics).
All math in fp32; base offsets in int64.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["conv1d_depthwise_triton", "DepthwiseConv1dFn"]


@triton.jit
def _conv_fwd_kernel(
    X, Wt, Bias, Y,
    D, L,
    sxb, sxd, sxl,
    syb, syd, syl,
    W: tl.constexpr, OFF: tl.constexpr, STEP: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < D
    x_rows = X + pid_b * sxb + offs_d.to(tl.int64)[:, None] * sxd

    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(Bias + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(W):
        src = offs_l + (OFF + STEP * k)
        m = mask_d[:, None] & ((src >= 0) & (src < L))[None, :]
        xv = tl.load(x_rows + src.to(tl.int64)[None, :] * sxl, mask=m, other=0.0).to(tl.float32)
        wk = tl.load(Wt + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    if SILU:
        acc = acc * tl.sigmoid(acc)
    y_ptrs = Y + pid_b * syb + offs_d.to(tl.int64)[:, None] * syd + offs_l.to(tl.int64)[None, :] * syl
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask_d[:, None] & (offs_l < L)[None, :])


@triton.jit
def _pre_activation_grad(x_rows, DYrows, Wt, Bias, t, offs_d, mask_d, L, sxl, sdyl,
                         W: tl.constexpr, OFF: tl.constexpr, STEP: tl.constexpr,
                         HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """dL/d(pre-activation) at output positions t (zero where t is outside [0, L))."""
    valid = mask_d[:, None] & ((t >= 0) & (t < L))[None, :]
    g = tl.load(DYrows + t.to(tl.int64)[None, :] * sdyl, mask=valid, other=0.0).to(tl.float32)
    if SILU:
        pre = tl.zeros(g.shape, dtype=tl.float32)
        if HAS_BIAS:
            pre += tl.load(Bias + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
        for k in tl.static_range(W):
            src = t + (OFF + STEP * k)
            m = mask_d[:, None] & ((src >= 0) & (src < L))[None, :]
            xv = tl.load(x_rows + src.to(tl.int64)[None, :] * sxl, mask=m, other=0.0).to(tl.float32)
            wk = tl.load(Wt + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
            pre += wk[:, None] * xv
        sig = tl.fdiv(1.0, 1.0 + tl.exp2(-pre * 1.4426950408889634))   # tl.sigmoid's IEEE division costs ~4x
        g = g * sig * (1.0 + pre * (1.0 - sig))
    return g


@triton.jit
def _conv_bwd_kernel(
    X, Wt, Bias, DY, DX, DWp, DBp,
    D, L, n_lblocks,
    sxb, sxd, sxl,
    sdyr, sdyb, sdyd, sdyl,
    sdxb, sdxd, sdxl,
    W: tl.constexpr, OFF: tl.constexpr, STEP: tl.constexpr,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, DIRS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # dx[s] = sum_k w[k] g[s - OFF - STEP*k];  dw[k] = sum_t g[t] x[t + OFF + STEP*k];  db = sum_t g[t]
    # DIRS 2: a second conv of the same x in the mirrored mode (-OFF, -STEP; weight, bias and dy of direction
    # 1 at +D W, +D and +sdyr), its input gradient added into dx: a bidirectional block's two convs in one pass.
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < D
    mask_l = offs_l < L
    x_rows = X + pid_b * sxb + offs_d.to(tl.int64)[:, None] * sxd
    n_parts = tl.num_programs(0) * n_lblocks
    part = pid_b * n_lblocks + pid_l

    dx = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for r in tl.static_range(DIRS):
        off = OFF * (1 - 2 * r)
        step = STEP * (1 - 2 * r)
        w_r = Wt + r * D * W
        b_r = Bias + r * D
        dy_rows = DY + r * sdyr + pid_b * sdyb + offs_d.to(tl.int64)[:, None] * sdyd
        g_own = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        for k in tl.static_range(W):
            t = offs_l - (off + step * k)
            g = _pre_activation_grad(x_rows, dy_rows, w_r, b_r, t, offs_d, mask_d, L, sxl, sdyl,
                                     W, off, step, HAS_BIAS, SILU)
            if off + step * k == 0:  # every mode has one tap at offset 0: reuse its g for dweight/dbias
                g_own = g
            wk = tl.load(w_r + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
            dx += wk[:, None] * g
        row = r * n_parts + part
        for k in tl.static_range(W):
            src = offs_l + (off + step * k)
            m = mask_d[:, None] & ((src >= 0) & (src < L) & mask_l)[None, :]
            xv = tl.load(x_rows + src.to(tl.int64)[None, :] * sxl, mask=m, other=0.0).to(tl.float32)
            tl.store(DWp + (row * D + offs_d) * W + k, tl.sum(g_own * xv, axis=1), mask=mask_d)
        if HAS_BIAS:
            tl.store(DBp + row * D + offs_d, tl.sum(g_own, axis=1), mask=mask_d)
    dx_ptrs = DX + pid_b * sdxb + offs_d.to(tl.int64)[:, None] * sdxd + offs_l.to(tl.int64)[None, :] * sdxl
    tl.store(dx_ptrs, dx.to(DX.dtype.element_ty), mask=mask_d[:, None] & mask_l[None, :])


def _blocks(d: int, length: int) -> tuple[int, int, int]:
    """Tile sizes: long L blocks for coalescing, ~2K elements per program, 4 warps."""
    block_l = min(128, max(16, triton.next_power_of_2(length)))
    block_d = max(1, min(triton.next_power_of_2(d), 2048 // block_l))
    return block_d, block_l, 4


def _offsets(width: int, mode: str) -> tuple[int, int]:
    if mode == "causal":
        return -(width - 1), 1
    if mode == "reverse":
        return width - 1, -1
    if mode == "same":
        return -(width // 2), 1
    raise ValueError(f"unknown conv mode {mode!r}")


# The launchers are opaque custom ops, so torch.compile traces DepthwiseConv1dFn around them instead of stepping
# into Triton's launch code.
@torch.library.custom_op("speedzoo::depthwise_conv1d_fwd", mutates_args=())
def _fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], mode: str,
         silu: bool) -> torch.Tensor:
    bsz, d, length = x.shape
    width = weight.shape[1]
    off, step = _offsets(width, mode)
    y = torch.empty_like(x)
    block_d, block_l, warps = _blocks(d, length)
    grid = (bsz, triton.cdiv(d, block_d), triton.cdiv(length, block_l))
    _conv_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, y, d, length,
        *x.stride(), *y.stride(),
        W=width, OFF=off, STEP=step, HAS_BIAS=bias is not None, SILU=silu,
        BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps,
    )
    return y


@_fwd.register_fake
def _(x, weight, bias, mode, silu):
    return torch.empty_like(x)


def _bwd_blocks(d: int, length: int) -> tuple[int, int, int]:
    """The backward's tiles: 512 elements per program, 4 per thread at 4 warps, and BLOCK_L of 32 or 64 tokens
    with the least padding past L (ties: the longer). sm_90 then keeps the W x W recomputation of the
    pre-activation in registers (117 / 208 per thread for one / two directions, ``benchmarks.kernel_resources``
    style compile), where the 2048-element tiles of ``_blocks`` spilled 0.5 KB (one direction) to 8 KB (two);
    at Vim-micro's L = 65 they also padded to 128 tokens, 32-token blocks pad to 96."""
    block_l = min((64, 32), key=lambda b: (triton.cdiv(length, b) * b, -b))
    block_d = max(1, min(triton.next_power_of_2(d), 512 // block_l))
    return block_d, block_l, 4


def conv_bwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dy: torch.Tensor, mode: str,
             silu: bool, dirs: int = 1) -> list[torch.Tensor]:
    """Launch the backward: ``dirs`` 1 (weight [D, W], dy [B, D, L]) or 2 (weight [2, D, W], bias [2, D], dy
    [2, B, D, L]: ``mode`` for direction 0 and its mirror for direction 1, dx their sum). Returns (dx, dweight
    fp32 of weight's shape, dbias fp32 or an empty tensor without a bias)."""
    bsz, d, length = x.shape
    width = weight.shape[-1]
    off, step = _offsets(width, mode)
    block_d, block_l, warps = _bwd_blocks(d, length)
    n_l = triton.cdiv(length, block_l)
    dx = torch.empty_like(x)
    dw_part = torch.empty((dirs, bsz * n_l, d, width), device=x.device, dtype=torch.float32)
    db_part = torch.empty((dirs, bsz * n_l, d), device=x.device, dtype=torch.float32) if bias is not None else dw_part
    sdy = dy.stride() if dirs == 2 else (0, *dy.stride())
    grid = (bsz, triton.cdiv(d, block_d), n_l)
    _conv_bwd_kernel[grid](
        x, weight, bias if bias is not None else weight, dy, dx, dw_part, db_part,
        d, length, n_l,
        *x.stride(), *sdy, *dx.stride(),
        W=width, OFF=off, STEP=step, HAS_BIAS=bias is not None, SILU=silu, DIRS=dirs,
        BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps,
    )
    dw = dw_part.sum(1).view(weight.shape)
    db = db_part.sum(1).view(bias.shape) if bias is not None else x.new_empty(0, dtype=torch.float32)
    return [dx, dw, db]


@torch.library.custom_op("speedzoo::depthwise_conv1d_bwd", mutates_args=())
def _bwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dy: torch.Tensor, mode: str,
         silu: bool) -> list[torch.Tensor]:
    """(dx, dweight fp32, dbias fp32 or an empty tensor without a bias)."""
    return conv_bwd(x, weight, bias, dy, mode, silu)


def _bwd_fake(x, weight, bias):
    """What both backward ops return, as shapes: (dx like x, dweight and dbias fp32, dbias empty without a bias)."""
    f32 = dict(dtype=torch.float32, device=x.device)
    return [torch.empty_like(x), torch.empty(weight.shape, **f32),
            torch.empty(bias.shape if bias is not None else (0,), **f32)]


@_bwd.register_fake
def _(x, weight, bias, dy, mode, silu):
    return _bwd_fake(x, weight, bias)


@torch.library.custom_op("speedzoo::bidirectional_conv1d_bwd", mutates_args=())
def _bwd_both(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dy: torch.Tensor,
              silu: bool) -> list[torch.Tensor]:
    """Backward of a causal conv (direction 0) and an anti-causal one (direction 1) of the same x, weight [2, D, W],
    bias [2, D] or None, dy [2, B, D, L] (any strides): (dx summed over both, dweight, dbias fp32) in one kernel."""
    return conv_bwd(x, weight, bias, dy, "causal", silu, dirs=2)


@_bwd_both.register_fake
def _(x, weight, bias, dy, silu):
    return _bwd_fake(x, weight, bias)


class DepthwiseConv1dFn(torch.autograd.Function):
    """Autograd wrapper: x [B, D, L], weight [D, W] (contiguous), bias [D] or None."""

    @staticmethod
    def forward(ctx, x, weight, bias, mode, silu):
        weight_c = weight.contiguous()
        bias_c = bias.contiguous() if bias is not None else None
        ctx.save_for_backward(x, weight_c, bias_c)
        ctx.mode, ctx.silu = mode, silu
        ctx.w_dtype = weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        return _fwd(x, weight_c, bias_c, mode, silu)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = _bwd(x, weight, bias, dy, ctx.mode, ctx.silu)
        dw = dw.to(ctx.w_dtype)
        db = db.to(ctx.b_dtype) if bias is not None else None
        return dx, dw, db, None, None


def conv1d_depthwise_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            mode: str, silu: bool) -> torch.Tensor:
    """Triton path of the public ops; ``mode`` is 'causal', 'reverse' or 'same'."""
    return DepthwiseConv1dFn.apply(x, weight, bias, mode, silu)
