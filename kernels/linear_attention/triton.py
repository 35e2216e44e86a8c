"""Triton bidirectional normalised linear attention, forward and backward (fp32 math, any strides).

Non-causal linear attention needs no scan: every query sees the same per-(batch, head) state
``KV = Σ_s φ(k_s) v_sᵀ`` [D, Dv] and normaliser ``z = Σ_s φ(k_s)`` [D]. So two small kernels each way:

- forward: ``_state_kernel`` reduces KV, z over the tokens (grid: (batch·head, split); each program sums a
  contiguous range of token tiles into fp32 partials, which the wrapper adds -- deterministic, no atomics,
  and enough programs when batch·head is small); ``_apply_kernel`` computes
  o = φ(q) KV / (φ(q)·z + eps) per token tile (grid: (tiles, batch·head)).
- backward (with dnum = do / den, dden = -(do·o) / den, o saved by the forward: one dot with the state per
  tile, not two; two [D, Dv] fp32 state operands split for tf32x3 needed 256 KB of shared memory at
  D = Dv = 128): ``_bwd_q_kernel`` writes
  dq = (dnum KVᵀ + dden zᵀ) ⊙ φ'(q) and reduces dKV = φ(q)ᵀ dnum, dz = φ(q)ᵀ dden as split partials;
  ``_bwd_kv_kernel`` writes dk = (v dKVᵀ + dz) ⊙ φ'(k) and dv = φ(k) dKV.

The feature map φ is fused (``FEAT`` 0 relu, 1 elu+1, 2 identity); padded rows and columns are zeroed after
φ (elu(0)+1 = 1 would otherwise leak into the sums). Inputs are read in their dtype through their strides
(a permuted view needs no copy) and converted to fp32; the math is fp32 (timm computes LiteMLA in fp32),
outputs are cast back to the input dtype. Base offsets are int64. Dots are fp32-accurate: three-pass TF32 on the
tensor cores on a GPU (``tf32x3``; with plain FMA dots the D = 128 fp32 GPU test ran past 200 s without a
verdict), exact IEEE in the interpreter.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.common import interpreting

__all__ = ["LinearAttentionFn", "FEATURE_CODES"]

FEATURE_CODES = {"relu": 0, "elu1": 1, "none": 2}
BT = 64  # tokens per tile
LARGE_STATE = 128 * 128  # BD * BDV from which tiles shrink to fit Hopper's 227 KB of shared memory


@triton.jit
def _phi(x, FEAT: tl.constexpr):
    if FEAT == 0:
        return tl.maximum(x, 0.0)
    elif FEAT == 1:
        return tl.where(x > 0, x + 1.0, tl.exp(x))
    else:
        return x


@triton.jit
def _dphi(x, FEAT: tl.constexpr):
    if FEAT == 0:
        return tl.where(x > 0, 1.0, 0.0)
    elif FEAT == 1:
        return tl.where(x > 0, 1.0, tl.exp(x))
    else:
        return tl.full(x.shape, 1.0, tl.float32)


@triton.jit
def _load_tile(base, t, rows_ok, cols, cols_ok, s_row, s_col):
    """A [tokens, columns] tile read through its strides, in fp32 (zeros outside the masks)."""
    mask = rows_ok[:, None] & cols_ok[None, :]
    return tl.load(base + t[:, None] * s_row + cols[None, :] * s_col, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _features(x, rows_ok, cols_ok, FEAT: tl.constexpr):
    """φ(x) with padded rows and columns zeroed (elu(0)+1 = 1 would otherwise leak into the sums)."""
    return tl.where(rows_ok[:, None] & cols_ok[None, :], _phi(x, FEAT), 0.0)


@triton.jit
def _load_state(kv_ptr, z_ptr, i_bh, od, ov, md, mv, D, DV):
    """One (batch, head)'s [D, DV] state and [D] normaliser (or their gradients)."""
    kv = tl.load(kv_ptr + i_bh * D * DV + od[:, None] * DV + ov[None, :], mask=md[:, None] & mv[None, :], other=0.0)
    z = tl.load(z_ptr + i_bh * D + od, mask=md, other=0.0)
    return kv, z


@triton.jit
def _state_kernel(k_ptr, v_ptr, kv_ptr, z_ptr, skb, skt, skh, skd, svb, svt, svh, svd,
                  T, H, D, DV, TILES_PER_SPLIT, NSPLIT,
                  BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, FEAT: tl.constexpr,
                  PREC: tl.constexpr):
    i_bh = tl.program_id(0).to(tl.int64)
    i_s = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    od, ov, ot = tl.arange(0, BD), tl.arange(0, BDV), tl.arange(0, BT)
    md, mv = od < D, ov < DV
    k_base = k_ptr + i_b * skb + i_h * skh
    v_base = v_ptr + i_b * svb + i_h * svh
    kv = tl.zeros([BD, BDV], dtype=tl.float32)
    z = tl.zeros([BD], dtype=tl.float32)
    for i in range(0, TILES_PER_SPLIT):
        t = ((i_s * TILES_PER_SPLIT + i) * BT + ot).to(tl.int64)
        mt = t < T
        k = _features(_load_tile(k_base, t, mt, od, md, skt, skd), mt, md, FEAT)
        v = _load_tile(v_base, t, mt, ov, mv, svt, svd)
        kv += tl.dot(tl.trans(k), v, input_precision=PREC)
        z += tl.sum(k, axis=0)
    part = i_bh * NSPLIT + i_s
    tl.store(kv_ptr + part * D * DV + od[:, None] * DV + ov[None, :], kv, mask=md[:, None] & mv[None, :])
    tl.store(z_ptr + part * D + od, z, mask=md)


@triton.jit
def _apply_kernel(q_ptr, kv_ptr, z_ptr, o_ptr, sqb, sqt, sqh, sqd, T, H, D, DV, eps,
                  BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, FEAT: tl.constexpr,
                  PREC: tl.constexpr):
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    od, ov = tl.arange(0, BD), tl.arange(0, BDV)
    md, mv = od < D, ov < DV
    t = (i_t * BT + tl.arange(0, BT)).to(tl.int64)
    mt = t < T
    kv, z = _load_state(kv_ptr, z_ptr, i_bh, od, ov, md, mv, D, DV)
    q = _features(_load_tile(q_ptr + i_b * sqb + i_h * sqh, t, mt, od, md, sqt, sqd), mt, md, FEAT)
    num = tl.dot(q, kv, input_precision=PREC)
    den = tl.sum(q * z[None, :], axis=1) + eps
    o = num / den[:, None]
    o_base = o_ptr + (i_b * T * H + i_h) * DV
    tl.store(o_base + t[:, None] * (H * DV) + ov[None, :], o.to(o_ptr.dtype.element_ty),
             mask=mt[:, None] & mv[None, :])


@triton.jit
def _bwd_q_kernel(q_ptr, do_ptr, o_ptr, kv_ptr, z_ptr, dq_ptr, dkv_ptr, dz_ptr,
                  sqb, sqt, sqh, sqd, sob, sot, soh, sod, T, H, D, DV, eps, TILES_PER_SPLIT, NSPLIT,
                  BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, FEAT: tl.constexpr,
                  PREC: tl.constexpr):
    i_bh = tl.program_id(0).to(tl.int64)
    i_s = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    od, ov, ot = tl.arange(0, BD), tl.arange(0, BDV), tl.arange(0, BT)
    md, mv = od < D, ov < DV
    kv, z = _load_state(kv_ptr, z_ptr, i_bh, od, ov, md, mv, D, DV)
    q_base = q_ptr + i_b * sqb + i_h * sqh
    do_base = do_ptr + i_b * sob + i_h * soh
    o_base = o_ptr + (i_b * T * H + i_h) * DV
    dq_base = dq_ptr + (i_b * T * H + i_h) * D
    dkv = tl.zeros([BD, BDV], dtype=tl.float32)
    dz = tl.zeros([BD], dtype=tl.float32)
    for i in range(0, TILES_PER_SPLIT):
        t = ((i_s * TILES_PER_SPLIT + i) * BT + ot).to(tl.int64)
        mt = t < T
        mq = mt[:, None] & md[None, :]
        x = _load_tile(q_base, t, mt, od, md, sqt, sqd)
        q = _features(x, mt, md, FEAT)
        do = _load_tile(do_base, t, mt, ov, mv, sot, sod)
        o = _load_tile(o_base, t, mt, ov, mv, H * DV, 1)
        den = tl.sum(q * z[None, :], axis=1) + eps
        dnum = do / den[:, None]
        dden = -tl.sum(do * o, axis=1) / den
        dphi = tl.dot(dnum, tl.trans(kv), input_precision=PREC) + dden[:, None] * z[None, :]
        dq = dphi * _dphi(x, FEAT)
        tl.store(dq_base + t[:, None] * (H * D) + od[None, :], dq.to(dq_ptr.dtype.element_ty), mask=mq)
        dkv += tl.dot(tl.trans(q), dnum, input_precision=PREC)
        dz += tl.sum(q * dden[:, None], axis=0)
    part = i_bh * NSPLIT + i_s
    tl.store(dkv_ptr + part * D * DV + od[:, None] * DV + ov[None, :], dkv, mask=md[:, None] & mv[None, :])
    tl.store(dz_ptr + part * D + od, dz, mask=md)


@triton.jit
def _bwd_kv_kernel(k_ptr, v_ptr, dkv_ptr, dz_ptr, dk_ptr, dv_ptr,
                   skb, skt, skh, skd, svb, svt, svh, svd, T, H, D, DV,
                   BT: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr, FEAT: tl.constexpr,
                   PREC: tl.constexpr):
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    od, ov = tl.arange(0, BD), tl.arange(0, BDV)
    md, mv = od < D, ov < DV
    t = (i_t * BT + tl.arange(0, BT)).to(tl.int64)
    mt = t < T
    mk = mt[:, None] & md[None, :]
    mtv = mt[:, None] & mv[None, :]
    dkv, dz = _load_state(dkv_ptr, dz_ptr, i_bh, od, ov, md, mv, D, DV)
    x = _load_tile(k_ptr + i_b * skb + i_h * skh, t, mt, od, md, skt, skd)
    k = _features(x, mt, md, FEAT)
    v = _load_tile(v_ptr + i_b * svb + i_h * svh, t, mt, ov, mv, svt, svd)
    dk = (tl.dot(v, tl.trans(dkv), input_precision=PREC) + dz[None, :]) * _dphi(x, FEAT)
    dv = tl.dot(k, dkv, input_precision=PREC)
    tl.store(dk_ptr + (i_b * T * H + i_h) * D + t[:, None] * (H * D) + od[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=mk)
    tl.store(dv_ptr + (i_b * T * H + i_h) * DV + t[:, None] * (H * DV) + ov[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=mtv)


def _precision() -> str:
    return "ieee" if interpreting() else "tf32x3"


def _blocks(D: int, DV: int) -> tuple[int, int, int, dict]:
    """(BD, BDV, tokens per tile, launch options). A [128, 128] fp32 state split into tf32x3 operands takes
    128 KB of shared memory per dot: there the tiles hold 32 tokens and the loops are not pipelined (the
    backward's dq kernel asked for 256 KB at 64 tokens on the H200; 192 KB at 32, compiled for sm_90 by
    benchmarks/kernel_resources.py, which also shows 4 warps spilling 0.6-19.7 KB per thread at this size and 8
    warps 0-1.6 KB: a launch option to time on the H200 before it changes)."""
    BD, BDV = max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(DV))
    if BD * BDV < LARGE_STATE:
        return BD, BDV, BT, {}
    return BD, BDV, BT // 2, ({} if interpreting() else dict(num_stages=1))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(T: int, BH: int, bt: int, device: torch.device) -> tuple[int, int]:
    """(tiles per split, number of splits): enough programs to fill the GPU when batch·head is small."""
    n_tiles = triton.cdiv(T, bt)
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 1
    target = 4 * sms
    splits = max(1, min(n_tiles, triton.cdiv(target, BH)))
    per = triton.cdiv(n_tiles, splits)
    return per, triton.cdiv(n_tiles, per)


def _reduce_state(k, v, feat: int):
    B, T, H, D = k.shape
    DV = v.shape[-1]
    BD, BDV, bt, opts = _blocks(D, DV)
    per, ns = _splits(T, B * H, bt, k.device)
    kv = torch.empty(B * H, ns, D, DV, device=k.device, dtype=torch.float32)
    z = torch.empty(B * H, ns, D, device=k.device, dtype=torch.float32)
    _state_kernel[(B * H, ns)](k, v, kv, z, *k.stride(), *v.stride(), T, H, D, DV, per, ns,
                               BT=bt, BD=BD, BDV=BDV, FEAT=feat, PREC=_precision(), **opts)
    return kv.sum(1), z.sum(1)


class LinearAttentionFn(torch.autograd.Function):
    """o = φ(q) KV / (φ(q)·z + eps) over [B, T, H, D]; saves q, k, v and the fp32 state (D·(Dv+1) per head)."""

    @staticmethod
    def forward(ctx, q, k, v, eps: float, feature: str):
        B, T, H, D = q.shape
        DV = v.shape[-1]
        feat = FEATURE_CODES[feature]
        kv, z = _reduce_state(k, v, feat)
        o = torch.empty(B, T, H, DV, device=v.device, dtype=v.dtype)
        BD, BDV, bt, opts = _blocks(D, DV)
        _apply_kernel[(triton.cdiv(T, bt), B * H)](q, kv, z, o, *q.stride(), T, H, D, DV, float(eps),
                                                   BT=bt, BD=BD, BDV=BDV, FEAT=feat, PREC=_precision(), **opts)
        ctx.save_for_backward(q, k, v, o, kv, z)
        ctx.eps, ctx.feat = float(eps), feat
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, kv, z = ctx.saved_tensors
        B, T, H, D = q.shape
        DV = v.shape[-1]
        BD, BDV, bt, opts = _blocks(D, DV)
        per, ns = _splits(T, B * H, bt, q.device)
        dq = torch.empty(B, T, H, D, device=q.device, dtype=q.dtype)
        dkv = torch.empty(B * H, ns, D, DV, device=q.device, dtype=torch.float32)
        dz = torch.empty(B * H, ns, D, device=q.device, dtype=torch.float32)
        _bwd_q_kernel[(B * H, ns)](q, do, o, kv, z, dq, dkv, dz, *q.stride(), *do.stride(), T, H, D, DV, ctx.eps,
                                   per, ns, BT=bt, BD=BD, BDV=BDV, FEAT=ctx.feat, PREC=_precision(), **opts)
        dkv, dz = dkv.sum(1).contiguous(), dz.sum(1).contiguous()
        dk = torch.empty(B, T, H, D, device=k.device, dtype=k.dtype)
        dv = torch.empty(B, T, H, DV, device=v.device, dtype=v.dtype)
        _bwd_kv_kernel[(triton.cdiv(T, bt), B * H)](k, v, dkv, dz, dk, dv, *k.stride(), *v.stride(), T, H, D, DV,
                                                    BT=bt, BD=BD, BDV=BDV, FEAT=ctx.feat, PREC=_precision(), **opts)
        return dq, dk, dv, None, None
