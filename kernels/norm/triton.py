"""Triton RMSNorm / LayerNorm with a fused residual add (mamba_ssm's layer_norm_fn semantics), fwd + bwd.

Rows of width N are processed as [BLOCK_M, BLOCK_N] tiles (several rows per program when N is small, e.g.
192, so a program still moves a few KiB), fp32 math. The forward writes y, optionally the residual stream
s = x + residual, and per-row rstd (and mean for LayerNorm). The backward runs a fixed number of programs
that loop over row tiles, recompute xhat from the saved inputs (no saved normalized activations), write dx
(+ the gradient flowing into residual_out) and keep fp32 partial sums of dweight/dbias in registers; the
[programs, N] partials are summed afterwards (deterministic, no atomics). Row offsets are int64.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["NormFn", "norm_triton"]



@triton.jit
def _norm_fwd_kernel(
    X, R, Wt, Bias, Y, RO, Mean, Rstd,
    M, N, sx, sr, sy, sro, eps,
    IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_RES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask_m = rows < M
    mask_n = cols < N
    mask = mask_m[:, None] & mask_n[None, :]

    x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(R + rows[:, None] * sr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if STORE_RES:
        tl.store(RO + rows[:, None] * sro + cols[None, :], x.to(RO.dtype.element_ty), mask=mask)
    if IS_RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / N
        tl.store(Mean + rows, mean, mask=mask_m)
        xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(Rstd + rows, rstd, mask=mask_m)

    w = tl.load(Wt + cols, mask=mask_n, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(Bias + cols, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * sy + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    X, R, Wt, DY, DRO, DX, DR, DWp, DBp, Mean, Rstd,
    M, N, sx, sr, sdy, sdro, sdx, sdr,
    IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_DRO: tl.constexpr, HAS_BIAS: tl.constexpr,
    STORE_DR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    mask_n = cols < N
    w = tl.load(Wt + cols, mask=mask_n, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_tiles = tl.cdiv(M, BLOCK_M)
    for tile in range(pid, n_tiles, n_prog):
        rows = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask_m = rows < M
        mask = mask_m[:, None] & mask_n[None, :]
        x = tl.load(X + rows[:, None] * sx + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            x += tl.load(R + rows[:, None] * sr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(Rstd + rows, mask=mask_m, other=0.0)
        if IS_RMS:
            xhat = x * rstd[:, None]
        else:
            mean = tl.load(Mean + rows, mask=mask_m, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + rows[:, None] * sdy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / N
        if IS_RMS:
            dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(wdy, axis=1) / N
            dx = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if HAS_DRO:
            dx += tl.load(DRO + rows[:, None] * sdro + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * sdx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if STORE_DR:
            tl.store(DR + rows[:, None] * sdr + cols[None, :], dx.to(DR.dtype.element_ty), mask=mask)
    tl.store(DWp + pid.to(tl.int64) * N + cols, tl.sum(dw_acc, axis=0), mask=mask_n)
    if HAS_BIAS:
        tl.store(DBp + pid.to(tl.int64) * N + cols, tl.sum(db_acc, axis=0), mask=mask_n)


def _config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): about 4K elements per tile, one row per tile from N = 4096 up."""
    block_n = triton.next_power_of_2(n)
    block_m = max(1, min(16, 4096 // block_n))
    warps = min(16, max(4, block_m * block_n // 1024))
    return block_m, block_n, warps


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    t = t.reshape(-1, n)
    return t if t.stride(-1) == 1 else t.contiguous()


def _bwd_programs(device: torch.device, n_tiles: int) -> int:
    if device.type == "cuda":
        return max(1, min(n_tiles, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(n_tiles, 4))


# The launchers are opaque custom ops, so torch.compile traces NormFn around them instead of stepping into
# Triton's launch code. Absent optional outputs are empty tensors (custom ops return tensors only).
@torch.library.custom_op("speedzoo::norm_fwd", mutates_args=())
def _fwd(x2: torch.Tensor, r2: Optional[torch.Tensor], w: torch.Tensor, b: Optional[torch.Tensor], eps: float,
         is_rms: bool, res_dtype: Optional[torch.dtype]) -> list[torch.Tensor]:
    """Rows [m, n] -> (y, residual_out or empty, mean (empty for RMS), rstd)."""
    m, n = x2.shape
    y = torch.empty((m, n), device=x2.device, dtype=x2.dtype)
    ro = torch.empty((m, n), device=x2.device, dtype=res_dtype) if res_dtype is not None else None
    rstd = torch.empty((m,), device=x2.device, dtype=torch.float32)
    mean = torch.empty((m,), device=x2.device, dtype=torch.float32) if not is_rms else rstd
    block_m, block_n, warps = _config(n)
    _norm_fwd_kernel[(triton.cdiv(m, block_m),)](
        x2, r2 if r2 is not None else x2, w, b if b is not None else w, y, ro if ro is not None else y,
        mean, rstd, m, n, x2.stride(0), r2.stride(0) if r2 is not None else 0, y.stride(0),
        ro.stride(0) if ro is not None else 0, eps,
        IS_RMS=is_rms, HAS_RES=r2 is not None, HAS_BIAS=b is not None, STORE_RES=ro is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    empty = x2.new_empty(0, dtype=torch.float32)
    return [y, ro if ro is not None else empty, mean if not is_rms else empty.clone(), rstd]


@_fwd.register_fake
def _(x2, r2, w, b, eps, is_rms, res_dtype):
    m, n = x2.shape
    f32 = dict(dtype=torch.float32, device=x2.device)
    ro = torch.empty((m, n), dtype=res_dtype, device=x2.device) if res_dtype is not None else torch.empty(0, **f32)
    return [torch.empty_like(x2), ro, torch.empty((0,) if is_rms else (m,), **f32), torch.empty((m,), **f32)]


@torch.library.custom_op("speedzoo::norm_bwd", mutates_args=())
def _bwd(xs: torch.Tensor, r2: Optional[torch.Tensor], w: torch.Tensor, has_bias: bool, dy2: torch.Tensor,
         dro2: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor, is_rms: bool,
         r_dtype: Optional[torch.dtype]) -> list[torch.Tensor]:
    """(dx, dresidual or empty, dweight fp32, dbias fp32 or empty); ``r2`` is the residual to re-add (or None)."""
    m, n = xs.shape
    dx = torch.empty((m, n), device=xs.device, dtype=dy2.dtype)
    dr = torch.empty((m, n), device=xs.device, dtype=r_dtype) if r_dtype is not None else None
    block_m, block_n, warps = _config(n)
    programs = _bwd_programs(xs.device, triton.cdiv(m, block_m))
    dw_part = torch.empty((programs, n), device=xs.device, dtype=torch.float32)
    db_part = torch.empty((programs, n), device=xs.device, dtype=torch.float32) if has_bias else None
    _norm_bwd_kernel[(programs,)](
        xs, r2 if r2 is not None else xs, w, dy2, dro2 if dro2 is not None else dy2, dx,
        dr if dr is not None else dx, dw_part, db_part if db_part is not None else dw_part,
        mean if not is_rms else rstd, rstd,
        m, n, xs.stride(0), r2.stride(0) if r2 is not None else 0, dy2.stride(0),
        dro2.stride(0) if dro2 is not None else 0, dx.stride(0), dr.stride(0) if dr is not None else 0,
        IS_RMS=is_rms, HAS_RES=r2 is not None, HAS_DRO=dro2 is not None, HAS_BIAS=has_bias,
        STORE_DR=dr is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    empty = xs.new_empty(0, dtype=torch.float32)
    return [dx, dr if dr is not None else empty, dw_part.sum(0),
            db_part.sum(0) if db_part is not None else empty.clone()]


@_bwd.register_fake
def _(xs, r2, w, has_bias, dy2, dro2, mean, rstd, is_rms, r_dtype):
    m, n = xs.shape
    f32 = dict(dtype=torch.float32, device=xs.device)
    dr = torch.empty((m, n), dtype=r_dtype, device=xs.device) if r_dtype is not None else torch.empty(0, **f32)
    return [torch.empty((m, n), dtype=dy2.dtype, device=xs.device), dr, torch.empty((n,), **f32),
            torch.empty((n,) if has_bias else (0,), **f32)]


class NormFn(torch.autograd.Function):
    """y = norm(x + residual) * w + b; with ``res_dtype`` set, also returns the residual stream x + residual."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, is_rms, res_dtype):
        shape, n = x.shape, x.shape[-1]
        x2 = _rows(x, n)
        r2 = _rows(residual, n) if residual is not None else None
        w = weight.contiguous()
        b = bias.contiguous() if bias is not None else None
        y, ro, mean, rstd = _fwd(x2, r2, w, b, float(eps), bool(is_rms), res_dtype)
        ro = ro if res_dtype is not None else None
        # The backward re-reads the pre-norm sum: from residual_out when it holds it exactly (fp32),
        # otherwise recomputed as x + residual in fp32, exactly as the forward formed it.
        reuse_ro = r2 is not None and ro is not None and ro.dtype == torch.float32
        if reuse_ro:
            ctx.save_for_backward(ro, None, w, b, mean, rstd)
        else:
            ctx.save_for_backward(x2, r2, w, b, mean, rstd)
        ctx.meta = (shape, is_rms, x.dtype, residual.dtype if residual is not None else None,
                    weight.dtype, bias.dtype if bias is not None else None)
        ctx.set_materialize_grads(False)
        y = y.view(shape)
        return (y, ro.view(shape)) if ro is not None else y

    @staticmethod
    def backward(ctx, dy, dro=None):
        xs, r2, w, b, mean, rstd = ctx.saved_tensors
        shape, is_rms, x_dtype, r_dtype, w_dtype, b_dtype = ctx.meta
        n = xs.shape[1]
        if dy is None:
            dy = torch.zeros(shape, device=xs.device, dtype=x_dtype)
        dy2 = _rows(dy, n)
        dro2 = _rows(dro, n) if dro is not None else None
        dx, dr, dw, db = _bwd(xs, r2, w, b is not None, dy2, dro2, mean, rstd, bool(is_rms), r_dtype)
        return (dx.view(shape), dw.to(w_dtype), db.to(b_dtype) if b is not None else None,
                dr.view(shape) if r_dtype is not None else None, None, None, None)


def norm_triton(x, weight, bias, residual, eps, is_rms, res_dtype):
    """Triton path of the public norms; ``res_dtype`` None means residual_out is not materialized."""
    return NormFn.apply(x, weight, bias, residual, eps, is_rms, res_dtype)
