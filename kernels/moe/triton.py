"""Triton expert MLP: grouped GEMMs over expert-sorted slots with the gather, activation and combine fused.

Slots (token, choice) are sorted by expert (:func:`kernels.moe.permute.permute_tokens`); row r of the sorted
order is slot ``order[r]`` of token ``tok[r] = order[r] // k``. Forward, three launches:

1. GEMM 1 ``h[r] = act(x[tok[r]] @ w1[e] + b1[e])``: the x rows are gathered inside the kernel (no [T*k, d]
   copy); bias and activation (two accumulators, gate and up, for SwiGLU) in the epilogue; the
   pre-activation is stored too when a backward will need it.
2. GEMM 2 ``out[order[r]] = h[r] @ w2[e] + b2[e]``: written straight to its slot's row (a scatter, no
   conflicts: every slot is one row), ungated.
3. Combine ``y[t] = sum_j gates[t, j] * out[t*k + j]`` over the valid slots, fp32.

Why per-slot outputs and a k-way reduce instead of an fp32 atomic scatter-add in GEMM 2's epilogue: the result
is deterministic (atomics make bf16 training runs irreproducible), it needs neither a zeroed fp32 [T, d] buffer
nor a cast pass, and the per-slot outputs are saved for the backward, where dgates[t, j] = <dy[t], out[t*k+j]>
is then one cheap reduction instead of a GEMM. The extra traffic (k*d values per token) is small beside the
GEMMs at k <= 2..8.

Backward, six launches (h and the pre-activation are saved, not recomputed: recomputing GEMM 1 would add a
third of the forward's FLOPs to every backward, while the saved [T*k, H] tensors are what a dense MLP of the
same width keeps anyway):
dgates by the combine's reduction; ``dpre[r] = gate[r] * (dy[tok[r]] @ w2[e]^T) * act'(pre[r])`` (dy gathered
in the kernel, gate and activation derivative in the epilogue); ``dx`` per slot ``dpre[r] @ w1[e]^T``
scattered to slot rows then reduced over k like the forward's combine; ``dw1[e] = x[tok]^T dpre`` and
``dw2[e] = h^T (gate * dy[tok])`` over each expert's rows (grouped X^T Y, gathers fused, bias gradients as
column sums in the same loop). Every GEMM accumulates in fp32; bf16/fp16 inputs go to tl.dot as they are,
fp32 inputs with IEEE precision (no TF32), so fp32 means fp32 (kernels.gla.triton's ``_dot``, which also
emulates the low-precision dots in the interpreter, whose own bf16 tl.dot returns garbage in Triton 3.6).

Tile schedule without a host sync: the grouped GEMMs launch cdiv(T*k, BLOCK_M) + E M-tiles (an upper bound
on sum_e cdiv(count_e, BLOCK_M)); each program reads the E counts, finds its (expert, M-tile) by a prefix sum
of per-expert tile counts and exits when past the last. So the grid is a function of shapes only and the op
is CUDA-graph friendly. Launch configs are autotuned per (K, N, E) on the GPU; ``autotune=False`` and the
interpreter use one fixed config.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.common import interpreting
from kernels.gla.triton import _dot, _dot_mode
from kernels.moe.permute import sort_slots

__all__ = ["ExpertMLPFn", "expert_mlp_triton"]

_ACT_CODES = {"gelu": 0, "relu": 1, "silu": 2, "swiglu": 3}


@triton.jit
def _act_fwd(p, ACT: tl.constexpr):
    if ACT == 0:
        return 0.5 * p * (1.0 + tl.math.erf(p * 0.7071067811865476))
    elif ACT == 1:
        return tl.maximum(p, 0.0)
    else:
        return p * tl.sigmoid(p)


@triton.jit
def _act_grad(p, ACT: tl.constexpr):
    """d act / d p for gelu (exact), relu, silu."""
    if ACT == 0:
        cdf = 0.5 * (1.0 + tl.math.erf(p * 0.7071067811865476))
        return cdf + p * 0.3989422804014327 * tl.exp(-0.5 * p * p)
    elif ACT == 1:
        return tl.where(p > 0.0, 1.0, 0.0)
    else:
        s = tl.sigmoid(p)
        return s * (1.0 + p * (1.0 - s))


@triton.jit
def _find_tile(Counts, Offsets, pid_m, E, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """(expert, first sorted row, end row) of M-tile ``pid_m``; expert >= E when pid_m is past the last tile."""
    ar = tl.arange(0, BLOCK_E)
    cnt = tl.load(Counts + ar, mask=ar < E, other=0).to(tl.int32)
    tiles = (cnt + BLOCK_M - 1) // BLOCK_M
    cum = tl.cumsum(tiles, 0)
    expert = tl.sum((cum <= pid_m).to(tl.int32), 0)
    first_tile = tl.sum(tl.where(ar == expert, cum - tiles, 0), 0)
    e = tl.minimum(expert, E - 1)
    start = tl.load(Offsets + e).to(tl.int32) + (pid_m - first_tile) * BLOCK_M
    end = tl.load(Offsets + e + 1).to(tl.int32)
    return expert, start, end


@triton.jit
def _gmm_kernel(
    A, B, C, Bias, Pre, IdxA, IdxC, Scale, Counts, Offsets,
    K, N, E, sa_m, sa_k, sb_e, sb_k, sb_n, sc_m, s_bias, sp_m,
    GATHER_A: tl.constexpr, SCATTER_C: tl.constexpr, HAS_BIAS: tl.constexpr, EPI: tl.constexpr,
    ACT: tl.constexpr, GLU: tl.constexpr, STORE_PRE: tl.constexpr, DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """C[rows of one expert tile] = epilogue(A[rows] @ B[e]). EPI 0: plain (+ bias); 1: + bias, activation
    (ACT 3: SwiGLU over columns n and N + n of B), pre-activation stored when STORE_PRE; 2: the backward of
    the activation, rows scaled by Scale (the gates), C = dpre (width 2N for SwiGLU)."""
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(0) // n_tiles_n  # the N tiles of one M tile run side by side: the gathered rows stay in L2
    pid_n = tl.program_id(0) % n_tiles_n
    expert, start, end = _find_tile(Counts, Offsets, pid_m, E, BLOCK_M, BLOCK_E)
    if expert >= E:
        return
    rows = start + tl.arange(0, BLOCK_M)
    mask_m = rows < end
    if GATHER_A:
        a_rows = tl.load(IdxA + rows, mask=mask_m, other=0).to(tl.int64)
    else:
        a_rows = rows.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = cols < N
    kk = tl.arange(0, BLOCK_K)
    a_ptr = A + a_rows[:, None] * sa_m + kk[None, :] * sa_k
    b_ptr = B + expert.to(tl.int64) * sb_e + kk[:, None] * sb_k + cols[None, :] * sb_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GLU:
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + kk) < K
        a = tl.load(a_ptr, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptr, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = acc + _dot(a, b, DOT)
        if GLU:
            b_up = tl.load(b_ptr + N * sb_n, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc_up = acc_up + _dot(a, b_up, DOT)
        a_ptr += BLOCK_K * sa_k
        b_ptr += BLOCK_K * sb_k
    rows64 = rows.to(tl.int64)
    mask = mask_m[:, None] & mask_n[None, :]
    if HAS_BIAS:
        bias_ptr = Bias + expert.to(tl.int64) * s_bias + cols
        acc += tl.load(bias_ptr, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GLU:
            acc_up += tl.load(bias_ptr + N, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if EPI == 1:
        if STORE_PRE:
            pre_ptr = Pre + rows64[:, None] * sp_m + cols[None, :]
            tl.store(pre_ptr, acc.to(Pre.dtype.element_ty), mask=mask)
            if GLU:
                tl.store(pre_ptr + N, acc_up.to(Pre.dtype.element_ty), mask=mask)
        if GLU:
            out = acc * tl.sigmoid(acc) * acc_up
        else:
            out = _act_fwd(acc, ACT)
    elif EPI == 2:
        gate = tl.load(Scale + rows, mask=mask_m, other=0.0).to(tl.float32)
        acc = acc * gate[:, None]
        pre_ptr = Pre + rows64[:, None] * sp_m + cols[None, :]
        p = tl.load(pre_ptr, mask=mask, other=0.0).to(tl.float32)
        if ACT == 3:
            up = tl.load(pre_ptr + N, mask=mask, other=0.0).to(tl.float32)
            s = tl.sigmoid(p)
            c_ptr = C + rows64[:, None] * sc_m + cols[None, :]
            tl.store(c_ptr, (acc * up * s * (1.0 + p * (1.0 - s))).to(C.dtype.element_ty), mask=mask)
            out = acc * p * s  # d up; stored N columns further on below
            cols = cols + N
        else:
            out = acc * _act_grad(p, ACT)
    else:
        out = acc
    if SCATTER_C:
        c_rows = tl.load(IdxC + rows, mask=mask_m, other=0).to(tl.int64)
    else:
        c_rows = rows64
    tl.store(C + c_rows[:, None] * sc_m + cols[None, :], out.to(C.dtype.element_ty), mask=mask)


@triton.jit
def _gxty_kernel(
    A, B, Out, DBias, IdxA, IdxB, Scale, Offsets,
    M, N, sa_m, sa_k, sb_m, sb_n, so_e, so_m, so_n, s_db,
    GATHER_A: tl.constexpr, GATHER_B: tl.constexpr, SCALE_B: tl.constexpr, HAS_DBIAS: tl.constexpr,
    DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Out[e] = sum over expert e's sorted rows r of A[r]^T B[r] ([M, N]); DBias[e] = sum_r B[r] (pid_m 0)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.program_id(2)
    start = tl.load(Offsets + e).to(tl.int32)
    end = tl.load(Offsets + e + 1).to(tl.int32)
    mcols = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ncols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_mc = mcols < M
    mask_nc = ncols < N
    rr = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_K):
        r = r0 + rr
        mask_r = r < end
        if GATHER_A:
            a_rows = tl.load(IdxA + r, mask=mask_r, other=0).to(tl.int64)
        else:
            a_rows = r.to(tl.int64)
        if GATHER_B:
            b_rows = tl.load(IdxB + r, mask=mask_r, other=0).to(tl.int64)
        else:
            b_rows = r.to(tl.int64)
        at = tl.load(A + a_rows[None, :] * sa_m + mcols[:, None] * sa_k, mask=mask_mc[:, None] & mask_r[None, :],
                     other=0.0)
        b = tl.load(B + b_rows[:, None] * sb_m + ncols[None, :] * sb_n, mask=mask_r[:, None] & mask_nc[None, :],
                    other=0.0)
        if SCALE_B:
            g = tl.load(Scale + r, mask=mask_r, other=0.0).to(tl.float32)
            bf = b.to(tl.float32) * g[:, None]
            b = bf.to(b.dtype)
        else:
            bf = b.to(tl.float32)
        acc = acc + _dot(at, b, DOT)
        if HAS_DBIAS:
            db += tl.sum(bf, 0)
    out_ptr = Out + e.to(tl.int64) * so_e + mcols[:, None] * so_m + ncols[None, :] * so_n
    tl.store(out_ptr, acc.to(Out.dtype.element_ty), mask=mask_mc[:, None] & mask_nc[None, :])
    if HAS_DBIAS:
        if pid_m == 0:
            tl.store(DBias + e.to(tl.int64) * s_db + ncols, db, mask=mask_nc)


@triton.jit
def _combine_kernel(Out, Idx, Gates, Y, T, D, so_m, sy_m, HAS_GATE: tl.constexpr, K: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Y[t] = sum_j [expert_idx[t, j] >= 0] * gates[t, j] * Out[t*K + j] in fp32 (no gate: the dx reduce)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_t = t < T
    mask_d = cols < D
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for j in tl.static_range(K):
        s = t * K + j
        e = tl.load(Idx + s, mask=mask_t, other=-1)
        valid = mask_t & (e >= 0)
        o = tl.load(Out + s.to(tl.int64)[:, None] * so_m + cols[None, :], mask=valid[:, None] & mask_d[None, :],
                    other=0.0).to(tl.float32)
        if HAS_GATE:
            o = o * tl.load(Gates + s, mask=valid, other=0.0).to(tl.float32)[:, None]
        acc += o
    tl.store(Y + t.to(tl.int64)[:, None] * sy_m + cols[None, :], acc.to(Y.dtype.element_ty),
             mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def _dgate_kernel(Out, Idx, DY, DG, S, D, so_m, sdy_m, K: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """DG[s] = <dy[s // K], Out[s]> for valid slots, 0 for dropped ones (fp32)."""
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = s < S
    e = tl.load(Idx + s, mask=mask_s, other=-1)
    valid = mask_s & (e >= 0)
    t = (s // K).to(tl.int64)
    acc = tl.zeros((BLOCK_S,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (cols < D)[None, :]
        o = tl.load(Out + s.to(tl.int64)[:, None] * so_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.load(DY + t[:, None] * sdy_m + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(o * g, 1)
    tl.store(DG + s, acc, mask=mask_s)


# Launch configurations. The grouped GEMMs' M block is also their scheduling unit (a tile never straddles
# two experts), so smaller M blocks waste less on the last partial tile of each expert. The sets are small on
# purpose: every config of every kernel variant compiles on first use, and benchmarks/moe.py must finish in
# three minutes with its autotuning.
def _gmm_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in ((128, 128, 64, 8, 3), (64, 128, 64, 4, 4), (128, 64, 64, 8, 3),
                                     (128, 256, 64, 8, 3), (64, 64, 64, 4, 3))]


def _gxty_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in ((128, 128, 64, 8, 3), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3),
                                     (64, 64, 64, 4, 3))]


def _epilogue_tiles(EPI, ACT, GLU) -> int:
    """fp32 [BLOCK_M, BLOCK_N] tiles an epilogue keeps live: 0 for the plain GEMMs (no limit), 2 for SwiGLU."""
    if EPI == 0:
        return 0
    return 2 if GLU or (EPI == 2 and ACT == 3) else 1


def _prune_gmm(configs, named_args, **kwargs):
    """Drop configs whose activation epilogue spills: at most 64 fp32 accumulator values per thread times the
    tiles the epilogue keeps. ptxas for sm_90 (Triton 3.6, 16-byte aligned args): gelu's forward spills at
    128x128 on 4 warps (172 B) and 128x256 on 8 (308 B), its backward at 1.4 KB there; SwiGLU spills at
    128x128 on 8 warps and 128x64 on 4 (16-116 B); every config kept here compiles without spills."""
    tiles = _epilogue_tiles(kwargs.get("EPI", 0), kwargs.get("ACT", 0), kwargs.get("GLU", False))
    if not tiles:
        return configs
    keep = [c for c in configs
            if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * tiles <= 64 * 32 * c.num_warps]
    return keep or configs[-1:]


_GMM_KEY = ["K", "N", "E", "GATHER_A", "SCATTER_C", "EPI", "ACT", "GLU"]
_GXTY_KEY = ["M", "N", "GATHER_A", "GATHER_B"]
_gmm_tuned = triton.autotune(_gmm_configs(), key=_GMM_KEY, prune_configs_by={"early_config_prune": _prune_gmm})(
    _gmm_kernel)
_gxty_tuned = triton.autotune(_gxty_configs(), key=_GXTY_KEY)(_gxty_kernel)

# The interpreter's tiles: tl.dot's minimum, so the CPU tests run in seconds.
_FIXED_CPU = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}


def _fixed(configs, prune=None, **flags):
    """The one config of an untuned launch: the interpreter's tiles, or the first (spill-free) of the tuned set."""
    if interpreting():
        return _FIXED_CPU
    c = (prune(configs, None, **flags) if prune else configs)[0]
    return dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)


def _gmm(A, B, C, *, K, N, E, counts, offsets, sa, sb, sc_m, idx_a=None, idx_c=None, bias=None, pre=None,
         scale=None, epi=0, act=0, store_pre=False, autotune=True):
    """One grouped GEMM launch over the (expert, M-tile) pairs (see the module docstring)."""
    rows = A.shape[0] if idx_a is None else idx_a.shape[0]
    dummy = counts
    args = (A, B, C, bias if bias is not None else A, pre if pre is not None else A,
            idx_a if idx_a is not None else dummy, idx_c if idx_c is not None else dummy,
            scale if scale is not None else A, counts, offsets,
            K, N, E, sa[0], sa[1], sb[0], sb[1], sb[2], sc_m, bias.stride(0) if bias is not None else 0,
            pre.stride(0) if pre is not None and pre.numel() else 0)
    flags = dict(GATHER_A=idx_a is not None, SCATTER_C=idx_c is not None, HAS_BIAS=bias is not None, EPI=epi,
                 ACT=act, GLU=epi == 1 and act == 3, STORE_PRE=store_pre, DOT=_dot_mode(A.dtype),
                 BLOCK_E=max(2, triton.next_power_of_2(E)))

    def grid(m):
        return (triton.cdiv(N, m["BLOCK_N"]) * (triton.cdiv(rows, m["BLOCK_M"]) + E),)

    if autotune and not interpreting():
        _gmm_tuned[grid](*args, **flags)
    else:
        cfg = _fixed(_gmm_configs(), _prune_gmm, **flags)
        _gmm_kernel[grid(cfg)](*args, **flags, **cfg)


def _gxty(A, B, out, *, M, N, offsets, sa, sb, idx_a=None, idx_b=None, scale=None, dbias=None, autotune=True):
    """Per-expert A^T B over each expert's sorted rows into out [E, M, N] (and column sums into dbias)."""
    E = out.shape[0]
    dummy = offsets
    args = (A, B, out, dbias if dbias is not None else out, idx_a if idx_a is not None else dummy,
            idx_b if idx_b is not None else dummy, scale if scale is not None else out, offsets,
            M, N, sa[0], sa[1], sb[0], sb[1], out.stride(0), out.stride(1), out.stride(2),
            dbias.stride(0) if dbias is not None else 0)
    flags = dict(GATHER_A=idx_a is not None, GATHER_B=idx_b is not None, SCALE_B=scale is not None,
                 HAS_DBIAS=dbias is not None, DOT=_dot_mode(A.dtype))

    def grid(m):
        return triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(N, m["BLOCK_N"]), E

    if autotune and not interpreting():
        _gxty_tuned[grid](*args, **flags)
    else:
        cfg = _fixed(_gxty_configs())
        _gxty_kernel[grid(cfg)](*args, **flags, **cfg)


def _combine(out, expert_idx, gates, T, D, dtype):
    """The k-way reduce of per-slot rows (gated when ``gates`` is given) into [T, D] of ``dtype``."""
    y = torch.empty(T, D, device=out.device, dtype=dtype)
    if T == 0:
        return y
    k = expert_idx.shape[1]
    bt, bd = (16, 16) if interpreting() else (32, min(256, triton.next_power_of_2(D)))
    _combine_kernel[(triton.cdiv(T, bt), triton.cdiv(D, bd))](
        out, expert_idx, gates if gates is not None else out, y, T, D, out.stride(0), y.stride(0),
        HAS_GATE=gates is not None, K=k, BLOCK_T=bt, BLOCK_D=bd)
    return y


def _slots(expert_idx, order):
    k = expert_idx.shape[1]
    return (order // k).to(torch.int32), order.to(torch.int32)


@torch.library.custom_op("speedzoo::moe_expert_mlp_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, order: torch.Tensor,
            counts: torch.Tensor, offsets: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor],
            w2: torch.Tensor, b2: Optional[torch.Tensor], act: int, save: bool,
            autotune: bool) -> list[torch.Tensor]:
    """[y, pre (empty unless save), h, out]: h in sorted-row order, out in slot order."""
    T, d = x.shape
    E, H, W = w1.shape[0], w2.shape[1], w1.shape[2]
    n_slots = expert_idx.numel()
    tok, slot = _slots(expert_idx, order)
    h = torch.empty(n_slots, H, device=x.device, dtype=x.dtype)
    pre = torch.empty(n_slots if save else 0, W, device=x.device, dtype=x.dtype)
    out = torch.empty(n_slots, d, device=x.device, dtype=x.dtype)
    common = dict(E=E, counts=counts, offsets=offsets, autotune=autotune)
    _gmm(x, w1, h, K=d, N=H, sa=(x.stride(0), x.stride(1)), sb=w1.stride(), sc_m=h.stride(0), idx_a=tok,
         bias=b1, pre=pre if save else None, epi=1, act=act, store_pre=save, **common)
    _gmm(h, w2, out, K=H, N=d, sa=(h.stride(0), h.stride(1)), sb=w2.stride(), sc_m=out.stride(0), idx_c=slot,
         bias=b2, **common)
    y = _combine(out, expert_idx, gates, T, d, x.dtype)
    return [y, pre, h, out]


@_fwd_op.register_fake
def _(x, expert_idx, gates, order, counts, offsets, w1, b1, w2, b2, act, save, autotune):
    n_slots = expert_idx.numel()
    new = dict(device=x.device, dtype=x.dtype)
    return [torch.empty_like(x), torch.empty(n_slots if save else 0, w1.shape[2], **new),
            torch.empty(n_slots, w2.shape[1], **new), torch.empty(n_slots, x.shape[1], **new)]


@torch.library.custom_op("speedzoo::moe_expert_mlp_bwd", mutates_args=())
def _bwd_op(dy: torch.Tensor, x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, order: torch.Tensor,
            counts: torch.Tensor, offsets: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, pre: torch.Tensor,
            h: torch.Tensor, out: torch.Tensor, act: int, has_b1: bool, has_b2: bool,
            autotune: bool) -> list[torch.Tensor]:
    """[dx, dgates fp32, dw1, db1 fp32 (or empty), dw2, db2 fp32 (or empty)]."""
    T, d = x.shape
    E, H, W = w1.shape[0], w2.shape[1], w1.shape[2]
    n_slots = expert_idx.numel()
    tok, slot = _slots(expert_idx, order)
    gate_sorted = gates.reshape(-1)[order].float()
    f32 = dict(device=x.device, dtype=torch.float32)
    dgates = torch.empty(n_slots, **f32)
    if n_slots:
        bs, bd = (16, 16) if interpreting() else (64, min(128, triton.next_power_of_2(d)))
        _dgate_kernel[(triton.cdiv(n_slots, bs),)](out, expert_idx, dy, dgates, n_slots, d, out.stride(0),
                                                   dy.stride(0), K=expert_idx.shape[1], BLOCK_S=bs, BLOCK_D=bd)
    common = dict(E=E, counts=counts, offsets=offsets, autotune=autotune)
    dpre = torch.empty(n_slots, W, device=x.device, dtype=x.dtype)
    # dpre = gate * (dy[tok] @ w2[e]^T) * act'(pre): B[k, n] = w2[e, n, k]
    _gmm(dy, w2, dpre, K=d, N=H, sa=(dy.stride(0), dy.stride(1)), sb=(w2.stride(0), w2.stride(2), w2.stride(1)),
         sc_m=dpre.stride(0), idx_a=tok, pre=pre, scale=gate_sorted, epi=2, act=act, **common)
    # dx per slot = dpre @ w1[e]^T (B[k, n] = w1[e, n, k]), scattered to slot rows, then summed over k
    dxs = torch.empty(n_slots, d, device=x.device, dtype=x.dtype)
    _gmm(dpre, w1, dxs, K=W, N=d, sa=(dpre.stride(0), dpre.stride(1)),
         sb=(w1.stride(0), w1.stride(2), w1.stride(1)), sc_m=dxs.stride(0), idx_c=slot, **common)
    dx = _combine(dxs, expert_idx, None, T, d, x.dtype)
    dw1 = torch.empty_like(w1)
    db1 = torch.empty(E if has_b1 else 0, W, **f32)
    _gxty(x, dpre, dw1, M=d, N=W, offsets=offsets, sa=(x.stride(0), x.stride(1)), sb=(dpre.stride(0), 1),
          idx_a=tok, dbias=db1 if has_b1 else None, autotune=autotune)
    dw2 = torch.empty_like(w2)
    db2 = torch.empty(E if has_b2 else 0, d, **f32)
    _gxty(h, dy, dw2, M=H, N=d, offsets=offsets, sa=(h.stride(0), h.stride(1)), sb=(dy.stride(0), dy.stride(1)),
          idx_b=tok, scale=gate_sorted, dbias=db2 if has_b2 else None, autotune=autotune)
    return [dx, dgates.view(expert_idx.shape), dw1, db1, dw2, db2]


@_bwd_op.register_fake
def _(dy, x, expert_idx, gates, order, counts, offsets, w1, w2, pre, h, out, act, has_b1, has_b2, autotune):
    f32 = dict(device=x.device, dtype=torch.float32)
    E = w1.shape[0]
    return [torch.empty_like(x), torch.empty(expert_idx.shape, **f32), torch.empty_like(w1),
            torch.empty(E if has_b1 else 0, w1.shape[2], **f32), torch.empty_like(w2),
            torch.empty(E if has_b2 else 0, x.shape[1], **f32)]


class ExpertMLPFn(torch.autograd.Function):
    """Triton forward and backward of the expert MLP; saves the pre-activation, h and the per-slot outputs."""

    @staticmethod
    def forward(ctx, x, expert_idx, gates, w1, b1, w2, b2, activation, autotune):
        perm = sort_slots(expert_idx, w1.shape[0])
        act = _ACT_CODES[activation]
        save = any(ctx.needs_input_grad[i] for i in (0, 2, 3, 4, 5, 6))
        y, pre, h, out = torch.ops.speedzoo.moe_expert_mlp_fwd(x, expert_idx, gates, perm.order, perm.counts,
                                                               perm.offsets, w1, b1, w2, b2, act, save, autotune)
        if save:
            ctx.save_for_backward(x, expert_idx, gates, perm.order, perm.counts, perm.offsets, w1, w2, pre, h, out)
        ctx.meta = (act, b1 is not None, b2 is not None, autotune, gates.dtype,
                    b1.dtype if b1 is not None else None, b2.dtype if b2 is not None else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, expert_idx, gates, order, counts, offsets, w1, w2, pre, h, out = ctx.saved_tensors
        act, has_b1, has_b2, autotune, g_dtype, b1_dtype, b2_dtype = ctx.meta
        dx, dgates, dw1, db1, dw2, db2 = torch.ops.speedzoo.moe_expert_mlp_bwd(
            dy.contiguous(), x, expert_idx, gates, order, counts, offsets, w1, w2, pre, h, out, act, has_b1,
            has_b2, autotune)
        return (dx, None, dgates.to(g_dtype), dw1, db1.to(b1_dtype) if has_b1 else None, dw2,
                db2.to(b2_dtype) if has_b2 else None, None, None)


def expert_mlp_triton(x, expert_idx, gates, w1, w2, b1=None, b2=None, activation="gelu", autotune=None):
    """The Triton path on validated inputs (made contiguous here); ``autotune`` None means on (off in the
    interpreter)."""
    tune = bool(autotune is None or autotune) and not interpreting()
    c = [t.contiguous() if t is not None else None for t in (x, expert_idx, gates, w1, b1, w2, b2)]
    return ExpertMLPFn.apply(*c, activation, tune)
