"""Triton chunked gated linear attention, forward and backward, shared with the gated delta rule.

Design: one kernel per direction, state kept on chip.

- Grid ``(cdiv(V, BV), B * H)``: a program owns one (batch, head, V-block) and keeps the fp32 state block
  ``S [K, BV]`` in registers while it walks the chunks of C tokens sequentially (fla writes every chunk state
  to HBM and reads it back in a second kernel; here the forward reads q, k, v once and writes o once).
  Per chunk: A = causal (q k^T) with decays (tl.dot), o = scale * ((q * e^b) S + A v), S <- e^{b_C} S +
  (k * e^{b_C - b})^T v, where b is the chunk-local inclusive cumsum of the log gates (precomputed in fp32 by
  the wrapper, 4 bytes per gate).
- Gates: ``GATE`` 0 none, 1 scalar per head (decay matrix exp(b_t - b_s) formed with the exponent masked, so
  exact for any gate strength), 2 per key channel. For per-channel gates the intra-chunk matrix factors as
  (q e^{b}) (k e^{-b})^T only while e^{-b} stays finite: when max |b| in the chunk is < 40 (checked at run
  time per chunk) that tl.dot path runs; otherwise an exact elementwise path forms column s of A from
  exp(b_t - b_s) (masked before exp), like fla's diagonal sub-blocks. Normal gates (logsigmoid/16) always
  take the dot path; extreme gates (< -0.6 per token on average) take the slow exact one.
- ``DELTA``: the gated delta rule in WY form reuses the same walk with v replaced per chunk by
  v_new = U - W S (U, W from the wrapper's UT transform), see kernels/delta_rule.
- Backward ``fused`` walks chunks in reverse with dS [K, BV] on chip; chunk-start states come from
  the forward (stored only when a gradient is needed, fp32). It writes dq, dk partial per V-block (summed by
  the wrapper), dv, dh0, and for gates the chunk-end term sum(dS * S_next); the gate gradient is then
  d b_t = q_t*dq_t - k_t*dk_t (+ that term at the chunk's last row), which the cumsum's autograd turns
  into dg (the reverse-cumsum identity of fla, derived in kernels/gla/__init__.py).
  ``bwd_layout="chunked"``: a dS-only walk (``_bwd_dh_kernel``) stores dS per chunk, then the same gradient
  code runs for all chunks at once; ``"split"`` (the default): the same walk, then fla's layout
  (``_split_dv_kernel``, ``_split_dqk_kernel``). See chunk_scan_bwd.
- fp32 inputs use IEEE fp32 dots; bf16/fp16 inputs cast dot operands to that dtype (fp32 accumulate).
  Base offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.common import interpreting

__all__ = ["chunk_scan_fwd", "chunk_scan_bwd", "ChunkScanFn", "FAST_LIMIT"]

NUM_STAGES = 2  # software pipelining of the chunk loop on the GPU
# the split backward's K block, V block and warps: the largest tiles that compile for sm_90 without spills
# at K = V = 128 (benchmarks/kernel_resources.py; 64 x 64 on 4 warps spilled 0.9-2.1 KB per thread)
SPLIT_BK, SPLIT_BV, SPLIT_WARPS = 32, 64, 8
FAST_LIMIT = 40.0  # max |b| inside a chunk for the factored per-channel path (e^40 ~ 2e17, safe in fp32)


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """DOT 0: IEEE fp32; 1: bf16 operands; 2: fp16 operands (fp32 accumulation throughout).

    3 / 4: bf16 / fp16 rounding of the operands, then an fp32 dot: the interpreter's low-precision tl.dot
    returns garbage (Triton 3.6), so interpreter runs emulate the GPU's operand rounding this way.
    """
    if DOT == 0:
        return tl.dot(a, b, input_precision="ieee")
    elif DOT == 1:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT == 2:
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    elif DOT == 3:
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float16).to(tl.float32), b.to(tl.float16).to(tl.float32), input_precision="ieee")


@triton.jit
def _program_tile(H, K, V, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """This program's (V-block, batch·head) and its index vectors: grid axis 0 is the V-block, axis 1 b·H + h."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    ok = tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    return i_v, i_bh, i_bh // H, i_bh % H, tl.arange(0, C), ok, ov, ok < K, ov < V


@triton.jit
def _gate_base(b_ptr, i_b, i_h, TP, H, K, GATE: tl.constexpr):
    """Start of this (batch, head)'s chunk-local cumulative log gates: [B, Tp, H] (GATE 1) or [B, Tp, H, K]."""
    if GATE == 2:
        base = b_ptr + (i_b * TP * H + i_h) * K
    else:
        base = b_ptr + i_b * TP * H + i_h
    return base


@triton.jit
def _chunk_gates(g_base, t, c, okb, mkb, H, K, C: tl.constexpr, GATE: tl.constexpr):
    """Gates of chunk c (on key channels okb for GATE 2): (b at the rows t, b at the chunk's last row); GATE 1
    gives one value per row."""
    if GATE == 2:
        b = tl.load(g_base + t[:, None] * (H * K) + okb[None, :], mask=mkb[None, :], other=0.0)
        bl = tl.load(g_base + (c * C + C - 1) * (H * K) + okb, mask=mkb, other=0.0)
    else:
        b = tl.load(g_base + t * H)
        bl = tl.load(g_base + (c * C + C - 1) * H)
    return b, bl


@triton.jit
def _load_state(ptr, i_bh, ok, ov, mkv, K, V, BK: tl.constexpr, BV: tl.constexpr, PRESENT: tl.constexpr):
    """This program's [BK, BV] block of a [B, H, K, V] state (h0 or dh_T) in fp32; zeros when not given."""
    if PRESENT:
        S = tl.load(ptr + i_bh * K * V + ok[:, None] * V + ov[None, :], mask=mkv, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
    return S


@triton.jit
def _ds_step(dS, qg, do, bl, scale, GATE: tl.constexpr, DOT: tl.constexpr):
    """dS of the previous chunk's end: decay through this chunk, plus this chunk's queries' contribution."""
    if GATE == 1:
        dS = dS * tl.exp(bl)
    if GATE == 2:
        dS = dS * tl.exp(bl)[:, None]
    return dS + scale * _dot(tl.trans(qg), do, DOT)


@triton.jit
def _bwd_dh_kernel(
    q_ptr, b_ptr, do_ptr, dht_ptr, dh_ptr, dh0_ptr,
    T, TP, H, K, V, NT, scale,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, DOT: tl.constexpr,
):
    """The backward's only sequential part (chunk-parallel variant): dS at every chunk's end, walking the
    chunks in reverse; one (V-block, batch·head) per program, as the forward."""
    i_v, i_bh, i_b, i_h, rows, ok, ov, mk, mv = _program_tile(H, K, V, C, BK, BV)
    mkv = mk[:, None] & mv[None, :]
    q_base = q_ptr + (i_b * T * H + i_h) * K
    do_base = do_ptr + (i_b * T * H + i_h) * V
    g_base = _gate_base(b_ptr, i_b, i_h, TP, H, K, GATE)
    dS = _load_state(dht_ptr, i_bh, ok, ov, mkv, K, V, BK, BV, HAS_DHT)
    for cc in range(0, NT):
        c = NT - 1 - cc
        t = c * C + rows
        mt = t < T
        tl.store(dh_ptr + ((i_bh * NT + c) * K + ok[:, None]) * V + ov[None, :], dS, mask=mkv)
        q = tl.load(q_base + t[:, None] * (H * K) + ok[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        q = q.to(tl.float32)
        do = tl.load(do_base + t[:, None] * (H * V) + ov[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        do = do.to(tl.float32)
        if GATE == 0:
            bl = 0.0
            qg = q
        elif GATE == 1:
            b, bl = _chunk_gates(g_base, t, c, ok, mk, H, K, C, GATE)
            qg = q * tl.exp(b)[:, None]
        else:
            b, bl = _chunk_gates(g_base, t, c, ok, mk, H, K, C, GATE)
            qg = q * tl.exp(b)
        dS = _ds_step(dS, qg, do, bl, scale, GATE, DOT)
    if STORE_DH0:
        tl.store(dh0_ptr + i_bh * K * V + ok[:, None] * V + ov[None, :], dS, mask=mkv)


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, w_ptr, h0_ptr, o_ptr, ht_ptr, st_ptr, vn_ptr,
    T, TP, H, K, V, NT, scale,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, STORE_ST: tl.constexpr, DOT: tl.constexpr,
    LIMIT: tl.constexpr,
):
    i_v, i_bh, i_b, i_h, rows, ok, ov, mk, mv = _program_tile(H, K, V, C, BK, BV)
    causal = rows[:, None] >= rows[None, :]
    q_base = q_ptr + (i_b * T * H + i_h) * K
    k_base = k_ptr + (i_b * T * H + i_h) * K
    o_base = o_ptr + (i_b * T * H + i_h) * V
    if DELTA:
        v_base = v_ptr + (i_b * TP * H + i_h) * V
        w_base = w_ptr + (i_b * TP * H + i_h) * K
    else:
        v_base = v_ptr + (i_b * T * H + i_h) * V
    g_base = _gate_base(b_ptr, i_b, i_h, TP, H, K, GATE)
    S = _load_state(h0_ptr, i_bh, ok, ov, mk[:, None] & mv[None, :], K, V, BK, BV, HAS_H0)
    for c in range(0, NT):
        t = c * C + rows
        mt = t < T
        mqk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        q = tl.load(q_base + t[:, None] * (H * K) + ok[None, :], mask=mqk, other=0.0).to(tl.float32)
        k = tl.load(k_base + t[:, None] * (H * K) + ok[None, :], mask=mqk, other=0.0).to(tl.float32)
        if STORE_ST:
            tl.store(st_ptr + ((i_bh * NT + c) * K + ok[:, None]) * V + ov[None, :], S,
                     mask=mk[:, None] & mv[None, :])
        if DELTA:
            u = tl.load(v_base + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0).to(tl.float32)
            w = tl.load(w_base + t[:, None] * (H * K) + ok[None, :], mask=mqk, other=0.0).to(tl.float32)
            v = u - _dot(w, S, DOT)
            if STORE_ST:
                tl.store(vn_ptr + (i_b * TP * H + i_h) * V + t[:, None] * (H * V) + ov[None, :], v, mask=mtv)
        else:
            v = tl.load(v_base + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0).to(tl.float32)
        if GATE == 0:
            A = tl.where(causal, _dot(q, tl.trans(k), DOT), 0.0)
            o = _dot(q, S, DOT) + _dot(A, v, DOT)
            S = S + _dot(tl.trans(k), v, DOT)
        elif GATE == 1:
            b, bl = _chunk_gates(g_base, t, c, ok, mk, H, K, C, GATE)
            dec = tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
            A = _dot(q, tl.trans(k), DOT) * dec
            o = _dot(q * tl.exp(b)[:, None], S, DOT) + _dot(A, v, DOT)
            S = S * tl.exp(bl) + _dot(tl.trans(k * tl.exp(bl - b)[:, None]), v, DOT)
        else:
            b, bl = _chunk_gates(g_base, t, c, ok, mk, H, K, C, GATE)
            qg = q * tl.exp(b)
            if tl.max(tl.abs(b)) < LIMIT:
                A = tl.where(causal, _dot(qg, tl.trans(k * tl.exp(-b)), DOT), 0.0)
            else:
                A = tl.zeros([C, C], dtype=tl.float32)
                for s in range(0, C):
                    ts = c * C + s
                    ks = tl.load(k_base + ts * (H * K) + ok, mask=mk & (ts < T), other=0.0).to(tl.float32)
                    bs = tl.load(g_base + ts * (H * K) + ok, mask=mk, other=0.0)
                    e = tl.exp(tl.where(rows[:, None] >= s, b - bs[None, :], float("-inf")))
                    a = tl.sum(q * ks[None, :] * e, 1)
                    A = tl.where(rows[None, :] == s, a[:, None], A)
            o = _dot(qg, S, DOT) + _dot(A, v, DOT)
            S = S * tl.exp(bl)[:, None] + _dot(tl.trans(k * tl.exp(bl[None, :] - b)), v, DOT)
        tl.store(o_base + t[:, None] * (H * V) + ov[None, :], (o * scale).to(o_ptr.dtype.element_ty), mask=mtv)
    if STORE_HT:
        tl.store(ht_ptr + i_bh * K * V + ok[:, None] * V + ov[None, :], S, mask=mk[:, None] & mv[None, :])


@triton.jit
def _bwd_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, w_ptr, st_ptr, do_ptr, dht_ptr,
    dq_ptr, dk_ptr, dv_ptr, dw_ptr, dh0_ptr, dgl_ptr, dh_ptr,
    T, TP, H, K, V, NT, scale,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, DOT: tl.constexpr, LIMIT: tl.constexpr,
    PARALLEL: tl.constexpr,
):
    """Gradients of the chunks. Fused (PARALLEL=0): one program walks all chunks in reverse carrying dS.
    Chunk-parallel (PARALLEL=1, not with DELTA): grid axis 2 is the chunk, dS comes from _bwd_dh_kernel."""
    i_v, i_bh, i_b, i_h, rows, ok, ov, mk, mv = _program_tile(H, K, V, C, BK, BV)
    n_bh = tl.num_programs(1).to(tl.int64)
    mkv = mk[:, None] & mv[None, :]
    causal = rows[:, None] >= rows[None, :]
    q_base = q_ptr + (i_b * T * H + i_h) * K
    k_base = k_ptr + (i_b * T * H + i_h) * K
    do_base = do_ptr + (i_b * T * H + i_h) * V
    # dq, dk: [NV, B, T, H, K] partial sums over V-blocks
    dq_base = dq_ptr + (i_v * (n_bh // H) * T * H + i_b * T * H + i_h) * K
    dk_base = dk_ptr + (i_v * (n_bh // H) * T * H + i_b * T * H + i_h) * K
    if DELTA:
        v_base = v_ptr + (i_b * TP * H + i_h) * V
        w_base = w_ptr + (i_b * TP * H + i_h) * K
        dv_base = dv_ptr + (i_b * TP * H + i_h) * V
        dw_base = dw_ptr + (i_v * (n_bh // H) * TP * H + i_b * TP * H + i_h) * K
    else:
        v_base = v_ptr + (i_b * T * H + i_h) * V
        dv_base = dv_ptr + (i_b * T * H + i_h) * V
    g_base = _gate_base(b_ptr, i_b, i_h, TP, H, K, GATE)
    dS = _load_state(dht_ptr, i_bh, ok, ov, mkv, K, V, BK, BV, HAS_DHT)
    for cc in range(0, 1 if PARALLEL else NT):
        c = tl.program_id(2) if PARALLEL else NT - 1 - cc
        if PARALLEL:
            dS = tl.load(dh_ptr + ((i_bh * NT + c) * K + ok[:, None]) * V + ov[None, :], mask=mkv, other=0.0)
        t = c * C + rows
        mt = t < T
        mqk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        q = tl.load(q_base + t[:, None] * (H * K) + ok[None, :], mask=mqk, other=0.0).to(tl.float32)
        k = tl.load(k_base + t[:, None] * (H * K) + ok[None, :], mask=mqk, other=0.0).to(tl.float32)
        do = tl.load(do_base + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0).to(tl.float32)
        Sc = tl.load(st_ptr + ((i_bh * NT + c) * K + ok[:, None]) * V + ov[None, :], mask=mkv, other=0.0)
        v = tl.load(v_base + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0).to(tl.float32)
        if DELTA:
            w = tl.load(w_base + t[:, None] * (H * K) + ok[None, :], mask=mqk, other=0.0).to(tl.float32)
        dA = tl.where(causal, _dot(do, tl.trans(v), DOT), 0.0) * scale
        if GATE == 0:
            A = tl.where(causal, _dot(q, tl.trans(k), DOT), 0.0)
            dq = scale * _dot(do, tl.trans(Sc), DOT) + _dot(dA, k, DOT)
            dk = _dot(tl.trans(dA), q, DOT) + _dot(v, tl.trans(dS), DOT)
            kd = k
            qg = q
            bl = 0.0
        elif GATE == 1:
            b, bl = _chunk_gates(g_base, t, c, ok, mk, H, K, C, GATE)
            dec = tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
            A = _dot(q, tl.trans(k), DOT) * dec
            dA = dA * dec
            dq = scale * tl.exp(b)[:, None] * _dot(do, tl.trans(Sc), DOT) + _dot(dA, k, DOT)
            kd = k * tl.exp(bl - b)[:, None]
            qg = q * tl.exp(b)[:, None]
            dk = _dot(tl.trans(dA), q, DOT) + tl.exp(bl - b)[:, None] * _dot(v, tl.trans(dS), DOT)
        else:
            b, bl = _chunk_gates(g_base, t, c, ok, mk, H, K, C, GATE)
            eb = tl.exp(b)
            qg = q * eb
            kd = k * tl.exp(bl[None, :] - b)
            dq = scale * eb * _dot(do, tl.trans(Sc), DOT)
            dk = _dot(v, tl.trans(dS), DOT) * tl.exp(bl[None, :] - b)
            if tl.max(tl.abs(b)) < LIMIT:
                ken = k * tl.exp(-b)
                A = tl.where(causal, _dot(qg, tl.trans(ken), DOT), 0.0)
                dq += eb * _dot(dA, ken, DOT)
                dk += tl.exp(-b) * _dot(tl.trans(dA), qg, DOT)
            else:
                A = tl.zeros([C, C], dtype=tl.float32)
                for s in range(0, C):
                    ts = c * C + s
                    ks = tl.load(k_base + ts * (H * K) + ok, mask=mk & (ts < T), other=0.0).to(tl.float32)
                    bs = tl.load(g_base + ts * (H * K) + ok, mask=mk, other=0.0)
                    e = tl.exp(tl.where(rows[:, None] >= s, b - bs[None, :], float("-inf")))
                    a = tl.sum(q * ks[None, :] * e, 1)
                    A = tl.where(rows[None, :] == s, a[:, None], A)
                    da = tl.sum(tl.where(rows[None, :] == s, dA, 0.0), 1)  # column s of dA
                    dq += da[:, None] * ks[None, :] * e
                    dks = tl.sum(da[:, None] * q * e, 0)
                    dk += tl.where(rows[:, None] == s, dks[None, :], 0.0)
        dv = scale * _dot(tl.trans(A), do, DOT) + _dot(kd, dS, DOT)
        if GATE == 1:
            Sn = Sc * tl.exp(bl) + _dot(tl.trans(kd), v, DOT)
            tl.store(dgl_ptr + (i_v * n_bh + i_bh) * NT + c, tl.sum(tl.sum(dS * Sn, 1), 0))
        if GATE == 2:
            Sn = Sc * tl.exp(bl)[:, None] + _dot(tl.trans(kd), v, DOT)
            tl.store(dgl_ptr + ((i_v * n_bh + i_bh) * NT + c) * K + ok, tl.sum(dS * Sn, 1), mask=mk)
        if not PARALLEL:
            dS = _ds_step(dS, qg, do, bl, scale, GATE, DOT)
        if DELTA:
            dS = dS - _dot(tl.trans(w), dv, DOT)
            dw = -_dot(dv, tl.trans(Sc), DOT)
            tl.store(dw_base + t[:, None] * (H * K) + ok[None, :], dw, mask=mqk)
        tl.store(dq_base + t[:, None] * (H * K) + ok[None, :], dq, mask=mqk)
        tl.store(dk_base + t[:, None] * (H * K) + ok[None, :], dk, mask=mqk)
        tl.store(dv_base + t[:, None] * (H * V) + ov[None, :], dv, mask=mtv)
    if STORE_DH0:
        tl.store(dh0_ptr + i_bh * K * V + ok[:, None] * V + ov[None, :], dS, mask=mkv)


@triton.jit
def _split_dv_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, st_ptr, dh_ptr, do_ptr, dv_ptr, dgl_ptr,
    T, TP, H, K, V, NT, scale,
    C: tl.constexpr, BKS: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DOT: tl.constexpr,
):
    """Split backward, part 1: one program per (V-block, batch·head, chunk) forms dv = A^T do + kd dS and the
    chunk-end gate term sum(dS * S_end), looping over K-blocks of BKS (A and kd need every key channel)."""
    i_v, i_bh, i_b, i_h, rows, _, ov, _, mv = _program_tile(H, K, V, C, BKS, BV)
    c = tl.program_id(2)
    n_bh = tl.num_programs(1).to(tl.int64)
    t = c * C + rows
    mt = t < T
    mtv = mt[:, None] & mv[None, :]
    causal = rows[:, None] >= rows[None, :]
    q_base = q_ptr + (i_b * T * H + i_h) * K
    k_base = k_ptr + (i_b * T * H + i_h) * K
    g_base = _gate_base(b_ptr, i_b, i_h, TP, H, K, GATE)
    v = tl.load(v_ptr + (i_b * T * H + i_h) * V + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0)
    v = v.to(tl.float32)
    do = tl.load(do_ptr + (i_b * T * H + i_h) * V + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0)
    do = do.to(tl.float32)
    A = tl.zeros([C, C], dtype=tl.float32)
    dv = tl.zeros([C, BV], dtype=tl.float32)
    end_term = tl.sum(tl.zeros([1], dtype=tl.float32), 0)
    for kb in range(0, tl.cdiv(K, BKS)):
        okb = kb * BKS + tl.arange(0, BKS)
        mkb = okb < K
        mqk = mt[:, None] & mkb[None, :]
        q = tl.load(q_base + t[:, None] * (H * K) + okb[None, :], mask=mqk, other=0.0).to(tl.float32)
        k = tl.load(k_base + t[:, None] * (H * K) + okb[None, :], mask=mqk, other=0.0).to(tl.float32)
        state = ((i_bh * NT + c) * K + okb[:, None]) * V + ov[None, :]
        mkv = mkb[:, None] & mv[None, :]
        dS = tl.load(dh_ptr + state, mask=mkv, other=0.0)
        if GATE == 0:
            A += _dot(q, tl.trans(k), DOT)
            kd = k
        else:
            b, bl = _chunk_gates(g_base, t, c, okb, mkb, H, K, C, GATE)
            if GATE == 1:
                A += _dot(q, tl.trans(k), DOT)
                kd = k * tl.exp(bl - b)[:, None]
            else:
                A += _dot(q * tl.exp(b), tl.trans(k * tl.exp(-b)), DOT)
                kd = k * tl.exp(bl[None, :] - b)
        dv += _dot(kd, dS, DOT)
        if GATE != 0:
            Sc = tl.load(st_ptr + state, mask=mkv, other=0.0)
            if GATE == 1:
                Sn = Sc * tl.exp(bl) + _dot(tl.trans(kd), v, DOT)
                end_term += tl.sum(tl.sum(dS * Sn, 1), 0)
            else:
                Sn = Sc * tl.exp(bl)[:, None] + _dot(tl.trans(kd), v, DOT)
                tl.store(dgl_ptr + ((i_v * n_bh + i_bh) * NT + c) * K + okb, tl.sum(dS * Sn, 1), mask=mkb)
    if GATE == 1:
        bt = tl.load(g_base + t * H)
        A = A * tl.exp(tl.where(causal, bt[:, None] - bt[None, :], float("-inf")))
        tl.store(dgl_ptr + (i_v * n_bh + i_bh) * NT + c, end_term)
    else:
        A = tl.where(causal, A, 0.0)
    dv += scale * _dot(tl.trans(A), do, DOT)
    tl.store(dv_ptr + (i_b * T * H + i_h) * V + t[:, None] * (H * V) + ov[None, :], dv, mask=mtv)


@triton.jit
def _split_dqk_kernel(
    q_ptr, k_ptr, v_ptr, b_ptr, st_ptr, dh_ptr, do_ptr, dq_ptr, dk_ptr,
    T, TP, H, K, V, NT, scale,
    C: tl.constexpr, BKS: tl.constexpr, BVS: tl.constexpr, GATE: tl.constexpr, DOT: tl.constexpr,
):
    """Split backward, part 2: one program per (K-block, batch·head, chunk) forms dq and dk on its key
    channels, looping over V-blocks of BVS for dA = do v^T and the state terms (no partial sums to add)."""
    i_k = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    i_b = i_bh // H
    i_h = i_bh % H
    rows = tl.arange(0, C)
    t = c * C + rows
    mt = t < T
    okb = i_k * BKS + tl.arange(0, BKS)
    mkb = okb < K
    mqk = mt[:, None] & mkb[None, :]
    causal = rows[:, None] >= rows[None, :]
    dA = tl.zeros([C, C], dtype=tl.float32)
    dq = tl.zeros([C, BKS], dtype=tl.float32)
    dk = tl.zeros([C, BKS], dtype=tl.float32)
    for vb in range(0, tl.cdiv(V, BVS)):
        ov = vb * BVS + tl.arange(0, BVS)
        mv = ov < V
        mtv = mt[:, None] & mv[None, :]
        v = tl.load(v_ptr + (i_b * T * H + i_h) * V + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0)
        do = tl.load(do_ptr + (i_b * T * H + i_h) * V + t[:, None] * (H * V) + ov[None, :], mask=mtv, other=0.0)
        v = v.to(tl.float32)
        do = do.to(tl.float32)
        state = ((i_bh * NT + c) * K + okb[:, None]) * V + ov[None, :]
        mkv = mkb[:, None] & mv[None, :]
        Sc = tl.load(st_ptr + state, mask=mkv, other=0.0)
        dS = tl.load(dh_ptr + state, mask=mkv, other=0.0)
        dA += _dot(do, tl.trans(v), DOT)
        dq += _dot(do, tl.trans(Sc), DOT)
        dk += _dot(v, tl.trans(dS), DOT)
    dA = tl.where(causal, dA, 0.0) * scale
    q = tl.load(q_ptr + (i_b * T * H + i_h) * K + t[:, None] * (H * K) + okb[None, :], mask=mqk, other=0.0)
    k = tl.load(k_ptr + (i_b * T * H + i_h) * K + t[:, None] * (H * K) + okb[None, :], mask=mqk, other=0.0)
    q = q.to(tl.float32)
    k = k.to(tl.float32)
    if GATE == 0:
        dq = scale * dq + _dot(dA, k, DOT)
        dk = dk + _dot(tl.trans(dA), q, DOT)
    else:
        g_base = _gate_base(b_ptr, i_b, i_h, TP, H, K, GATE)
        b, bl = _chunk_gates(g_base, t, c, okb, mkb, H, K, C, GATE)
        if GATE == 1:
            dA = dA * tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
            dq = scale * tl.exp(b)[:, None] * dq + _dot(dA, k, DOT)
            dk = tl.exp(bl - b)[:, None] * dk + _dot(tl.trans(dA), q, DOT)
        else:
            eb = tl.exp(b)
            dq = scale * eb * dq + eb * _dot(dA, k * tl.exp(-b), DOT)
            dk = tl.exp(bl[None, :] - b) * dk + tl.exp(-b) * _dot(tl.trans(dA), q * eb, DOT)
    dq_base = dq_ptr + (i_b * T * H + i_h) * K
    dk_base = dk_ptr + (i_b * T * H + i_h) * K
    tl.store(dq_base + t[:, None] * (H * K) + okb[None, :], dq, mask=mqk)
    tl.store(dk_base + t[:, None] * (H * K) + okb[None, :], dk, mask=mqk)


def _dot_mode(dtype: torch.dtype) -> int:
    mode = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[dtype]
    return mode + 2 if mode and interpreting() else mode


def _blocks(K: int, V: int, bwd: bool):
    """Block sizes and warps: one K block (K <= 256), V split so the fp32 state tiles fit in registers."""
    BK = max(16, triton.next_power_of_2(K))
    if bwd:
        BV = 32 if BK >= 128 else 64
    else:
        BV = 64 if BK <= 128 else 32
    BV = min(BV, max(16, triton.next_power_of_2(V)))
    warps = 8 if BK >= 128 else 4
    return BK, BV, warps


def _launch_opts(warps: int) -> dict:
    return {} if interpreting() else dict(num_warps=warps, num_stages=NUM_STAGES)


def chunk_scan_fwd(q, k, v, b, w, h0, scale, C, gate, delta, need_ht, store_states):
    """Launch the forward; q, k [B,T,H,K], v [B,T,H,V] (or U [B,Tp,H,V] fp32 with delta), b/w fp32 padded.

    Returns (o, ht or None, states [B,H,NT,K,V] fp32 or None, v_new [B,Tp,H,V] fp32 or None): with delta
    and stored states the forward also keeps v_new = U - W S, which the backward reads instead of
    recomputing it (at K = 128 the recomputing backward gave NaN in dq, dk, dg on the H200).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = max(1, triton.cdiv(T, C))
    TP = NT * C
    BK, BV, warps = _blocks(K, V, bwd=False)
    o = torch.empty(B, T, H, V, device=q.device, dtype=q.dtype)
    ht = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32) if need_ht else None
    st = torch.empty(B, H, NT, K, V, device=q.device, dtype=torch.float32) if store_states else None
    vn = torch.zeros(B, TP, H, V, device=q.device, dtype=torch.float32) if store_states and delta else None
    dummy = o
    grid = (triton.cdiv(V, BV), B * H)
    _fwd_kernel[grid](
        q, k, v, b if b is not None else dummy, w if w is not None else dummy, h0 if h0 is not None else dummy,
        o, ht if ht is not None else dummy, st if st is not None else dummy, vn if vn is not None else dummy,
        T, TP, H, K, V, NT, float(scale),
        C=C, BK=BK, BV=BV, GATE=gate, DELTA=delta, HAS_H0=h0 is not None, STORE_HT=need_ht,
        STORE_ST=store_states, DOT=_dot_mode(q.dtype), LIMIT=FAST_LIMIT, **_launch_opts(warps))
    return o, ht, st, vn


def _dh_walk(q, b, do, dht, dh0, scale, C, gate, NT):
    """dS at every chunk's end, [B, H, NT, K, V] fp32 (and dh0 filled when given): _bwd_dh_kernel."""
    B, T, H, K = q.shape
    V = do.shape[-1]
    dh = torch.empty(B, H, NT, K, V, device=q.device, dtype=torch.float32)
    BK, BV, warps = _blocks(K, V, bwd=False)
    _bwd_dh_kernel[(triton.cdiv(V, BV), B * H)](
        q, b if b is not None else dh, do, dht if dht is not None else dh, dh, dh0 if dh0 is not None else dh,
        T, NT * C, H, K, V, NT, float(scale), C=C, BK=BK, BV=BV, GATE=gate, HAS_DHT=dht is not None,
        STORE_DH0=dh0 is not None, DOT=_dot_mode(q.dtype), **_launch_opts(warps))
    return dh


def split_blocks(K: int, V: int) -> tuple[int, int]:
    """The split backward's (K block, V block) for these head sizes."""
    return min(SPLIT_BK, max(16, triton.next_power_of_2(K))), min(SPLIT_BV, max(16, triton.next_power_of_2(V)))


def _split_bwd(q, k, v, b, st, do, dht, scale, C, gate, need_dh0):
    """The split backward: dS walk, then dv (+ gate end terms) per (V-block, chunk) and dq, dk per
    (K-block, chunk), each looping over the other dimension in blocks."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = max(1, triton.cdiv(T, C))
    f32 = dict(device=q.device, dtype=torch.float32)
    dh0 = torch.empty(B, H, K, V, **f32) if need_dh0 else None
    dh = _dh_walk(q, b, do, dht, dh0, scale, C, gate, NT)
    BKS, BVS = split_blocks(K, V)
    NV = triton.cdiv(V, BVS)
    dq = torch.empty(B, T, H, K, **f32)
    dk = torch.empty(B, T, H, K, **f32)
    dv = torch.empty(B, T, H, V, **f32)
    dgl = torch.empty(NV, B, H, NT, K if gate == 2 else 1, **f32) if gate else None
    common = (T, NT * C, H, K, V, NT, float(scale))
    _split_dv_kernel[(NV, B * H, NT)](
        q, k, v, b if b is not None else dh, st, dh, do, dv, dgl if dgl is not None else dh, *common,
        C=C, BKS=BKS, BV=BVS, GATE=gate, DOT=_dot_mode(q.dtype), **_launch_opts(SPLIT_WARPS))
    _split_dqk_kernel[(triton.cdiv(K, BKS), B * H, NT)](
        q, k, v, b if b is not None else dh, st, dh, do, dq, dk, *common,
        C=C, BKS=BKS, BVS=BVS, GATE=gate, DOT=_dot_mode(q.dtype), **_launch_opts(SPLIT_WARPS))
    return dq, dk, dv, None, dh0, dgl.sum(0) if dgl is not None else None


def chunk_scan_bwd(q, k, v, b, w, st, do, dht, scale, C, gate, delta, need_dh0, layout="split", block_v=None):
    """Launch the backward (with delta, v is the forward's v_new); returns (dq, dk, dv, dw, dh0, dgl) in fp32
    (dq, dk summed over V-blocks).

    ``layout`` (checked by kernels.gla.options): ``split`` (GLA's default; fla's layout): a dS-only walk over
    the chunks (_bwd_dh_kernel), then dv per (V-block, chunk) and dq, dk per (K-block, chunk), each looping
    over the other dimension in blocks; per-channel gates past the fast path's limit fall back to ``chunked``.
    ``fused`` (the delta rule's only one: its dv feeds dS): one program per (V-block, batch·head) walks every
    chunk in reverse (few programs, each a long dependent chain). ``chunked``: the same dS walk, then one
    program per (V-block, batch·head, chunk) forms all gradients (its [C, K] tiles spill at K = 128 on sm_90;
    each V-block recomputes q k^T). On the H200 at B 8, T 4096, H 16, D 128, forward + backward took
    4.1 / 6.1 / 7.4 ms (simple GLA) and 7.6 / 14.1 / 16.8 ms (GLA) for split / chunked / fused
    (benchmarks/results/linear_attention.md). ``block_v`` replaces the V block of fused and chunked."""
    variant = layout
    if variant == "split" and gate == 2 and float(b.abs().amax()) >= FAST_LIMIT:
        variant = "chunked"  # the exact path for extreme per-channel gates lives in _bwd_kernel
    if variant == "split":
        return _split_bwd(q, k, v, b, st, do, dht, scale, C, gate, need_dh0)
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = max(1, triton.cdiv(T, C))
    TP = NT * C
    BK, BV, warps = _blocks(K, V, bwd=True)
    if block_v is not None:
        BV = min(block_v, max(16, triton.next_power_of_2(V)))
    NV = triton.cdiv(V, BV)
    f32 = dict(device=q.device, dtype=torch.float32)
    dq = torch.empty(NV, B, T, H, K, **f32)
    dk = torch.empty(NV, B, T, H, K, **f32)
    # delta mode: U, W have padding rows the kernel never reads (zero gradient), so start from zeros
    dv = torch.zeros(B, TP, H, V, **f32) if delta else torch.empty(B, T, H, V, **f32)
    dw = torch.zeros(NV, B, TP, H, K, **f32) if delta else None
    dh0 = torch.empty(B, H, K, V, **f32) if need_dh0 else None
    dgl = torch.empty(NV, B, H, NT, K if gate == 2 else 1, **f32) if gate else None
    dummy = dq
    parallel = variant == "chunked"
    dh = _dh_walk(q, b, do, dht, dh0, scale, C, gate, NT) if parallel else None
    _bwd_kernel[(NV, B * H, NT) if parallel else (NV, B * H)](
        q, k, v, b if b is not None else dummy, w if w is not None else dummy, st, do,
        dht if dht is not None else dummy,
        dq, dk, dv, dw if dw is not None else dummy, dh0 if dh0 is not None else dummy,
        dgl if dgl is not None else dummy, dh if dh is not None else dummy,
        T, TP, H, K, V, NT, float(scale),
        C=C, BK=BK, BV=BV, GATE=gate, DELTA=delta, HAS_DHT=dht is not None and not parallel,
        STORE_DH0=need_dh0 and not parallel, DOT=_dot_mode(q.dtype), LIMIT=FAST_LIMIT, PARALLEL=parallel,
        **_launch_opts(warps))
    dq, dk = dq.sum(0), dk.sum(0)
    if dw is not None:
        dw = dw.sum(0)
    if dgl is not None:
        dgl = dgl.sum(0)
    return dq, dk, dv, dw, dh0, dgl


class ChunkScanFn(torch.autograd.Function):
    """Autograd around the two kernels.

    Inputs: q, k [B,T,H,K]; v [B,T,H,V] (GLA) or U [B,Tp,H,V] fp32 (delta); b: chunk-local cumsum of the log
    gates, fp32 [B,Tp,H] (gate 1) or [B,Tp,H,K] (gate 2) or None; w: W [B,Tp,H,K] fp32 (delta) or None;
    h0 [B,H,K,V] or None; ``bwd_layout`` / ``bwd_block_v``: see chunk_scan_bwd. Outputs (o, ht). The gradient for b is d b_t = sum(q_t dq_t - k_t dk_t) plus, at
    each chunk's last row, sum(dS_end * S_end); torch's cumsum backward turns it into dg.
    """

    @staticmethod
    def forward(ctx, q, k, v, b, w, h0, scale, C, gate, delta, need_ht, bwd_layout="split", bwd_block_v=None):
        need_grad = any(ctx.needs_input_grad[:6])
        o, ht, st, vn = chunk_scan_fwd(q, k, v, b, w, h0, scale, C, gate, delta, need_ht, store_states=need_grad)
        if need_grad:
            ctx.save_for_backward(q, k, vn if delta else v, b, w, h0, st)
        ctx.cfg = (scale, C, gate, delta, bwd_layout, bwd_block_v)
        if ht is None:
            return o, None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, b, w, h0, st = ctx.saved_tensors
        scale, C, gate, delta, layout, block_v = ctx.cfg
        dq, dk, dv, dw, dh0, dgl = chunk_scan_bwd(
            q, k, v, b, w, st, do.contiguous(), dht.contiguous() if dht is not None else None,
            scale, C, gate, delta, need_dh0=h0 is not None, layout=layout, block_v=block_v)
        db = None
        if b is not None and ctx.needs_input_grad[3]:
            B, T, H, K = q.shape
            NT = st.shape[2]
            TP = NT * C
            red = (q.float() * dq - k.float() * dk)
            if gate == 1:
                red = red.sum(-1)
            db = torch.zeros(b.shape, device=b.device, dtype=torch.float32)
            db[:, :T] = red
            ends = db.view(B, NT, C, *b.shape[2:])[:, :, C - 1]  # [B, NT, H(, K)]
            tail = dgl.permute(0, 2, 1, 3)  # [B, NT, H, K or 1]
            ends += tail if gate == 2 else tail[..., 0]
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), db, dw, dh0.to(h0.dtype) if h0 is not None else None,
                None, None, None, None, None, None, None)
