"""Triton selective scan (Mamba-1), forward and backward, and the autograd Function that ties them.

Design (one pass over the inputs, memory-bound in principle):

- Grid ``(cdiv(D, BLOCK_D), batch)``: a program owns BLOCK_D channels of one sequence and keeps their
  ``[BLOCK_D, N]`` fp32 state in registers while it walks L in tiles of BLOCK_L tokens. Each tile loads
  u / delta / z as ``[BLOCK_L, BLOCK_D]`` blocks and B / C as ``[BLOCK_L, N]`` blocks (shared by
  the program's channels: BLOCK_D must divide the channels of a group).
- Inside a tile the decays ``exp2(Δ A log2e)`` and inputs ``Δ u B`` form token-major ``[BLOCK_L, N, BLOCK_D]``
  tensors (Triton's default layout then puts lanes on channels/states and keeps tokens in-thread) and one
  ``tl.associative_scan`` over the token axis gives every state of the tile; the state carried in from the
  previous tile enters as ``prod(decay) * h_prev``. One exp per (channel, state, token): the minimum.
- ``reverse=True`` only changes the addresses (token ``L-1-p`` at scan step ``p``), so a bidirectional block
  needs no flipped copies.
- Forward stores the state at the start of every CHUNK tokens (fp32, N per channel per chunk) when a
  gradient is needed. Backward walks the chunks from last to first with one channel per lane and the
  chunk's tokens inside the thread, looping over the N states: per state it recomputes the chunk's states
  from the stored start state (one in-thread scan), then runs the adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}``
  as an in-thread reverse scan over (a, prod, g) triples, so the one-step shift needs no extra exp or load.
  (An earlier backward scanned [CHUNK, N, BLOCK_D] tiles at once; its scans crossed lanes and warps and it
  took 17x the forward's time at Vim's training shape.) Channel-summed gradients (dB, dC) are reduced over
  the program's channels and added to fp32 buffers with atomics; dA, dD and d(delta_bias) are accumulated
  per program and added once at the end.

Chunk-parallel variant (``scan_plan`` picks it when batch x channel blocks cannot fill the GPU: Vim at high
resolution has B=8, D=384 -> 96 programs of one warp for 132 SMs, each walking ~6000 tokens). L is cut into
segments of SEG tokens (a multiple of CHUNK); every kernel above runs over grid (channel blocks, segments,
batch) on its segment, with constexpr switches instead of separate kernels:

- forward pass 1 (``EMIT_Y=False``): scan each segment from h = 0; store its end state and ΣΔ (fp32). The
  segment's decay product is exp(A ΣΔ) because A is constant in time, so [B, n_seg, D] floats suffice, not N
  per channel. Reads u, Δ, B only.
- pass 2 (``_combine_kernel``): S_c = exp(A ΣΔ_{c-1}) S_{c-1} + h_end_{c-1}, one associative scan over all
  segments of a (channel, state) pair held in registers (log depth, no chain of dependent global loads);
  also the last state.
- pass 3 (``HAS_H0``): rescan each segment from S_c, writing y (D skip, z gate) and the backward's chunk
  states exactly as the sequential kernel does.

  Why rescan rather than "pass 1 writes y without the carry, pass 3 adds <C_t, exp(A cumΔ_t) ⊙ S_c>": the
  carry term needs exp(A cumΔ_t) for every (token, state), i.e. the same N exps per token as the rescan, and
  the partial y must stay fp32 before the gate (write + read 8 B per element) while the rescan only re-reads
  u and Δ (4 B in bf16; B is shared by all channels). Fused moves more bytes for no fewer exps.

  Traffic at (B, D, L, N) = (8, 384, 6085, 16) bf16, SEG 288 (22 segments): [B, D, L] tensor 37.4 MB, B or C
  1.6 MB, per-segment state 4.3 MB. Pass 1 reads 76.3 MB and writes 4.6 MB; pass 2 moves 9 MB; pass 3 reads
  119.6 MB and writes 37.4 MB (+37.6 MB chunk states when a gradient is needed): ~247 MB = 58 us at the
  4.27 TB/s copy rate (minimum traffic 153 MB = 36 us). Exps: 2 x 299 M ex2 at ~4.2 T/s (132 SMs x 16 MUFU
  per clock) = ~0.14 ms, so the forward is bounded by the special-function units at roughly 0.15-0.25 ms,
  against 0.578 ms for mamba_ssm's CUDA kernel.
- backward pass A (``CARRY_ONLY``): each segment's adjoint from a zero carry, storing only the carry it
  passes to the previous segment (a_first g_first) and ΣΔ; reads Δ, C, dout, z (~114 MB at the shape above)
  and does N exps per token. Pass B: the same combine kernel, scanning segments last to first
  (carry_c = P_{c+1} carry_{c+1} + local_{c+1}). Pass C (``HAS_CARRY``): the sequential backward restricted to
  the segment, starting from the true carry and the forward's stored chunk states.

Token-parallel forward (``layout="token"``, ``_tp_walk``, shared by ``_tp_fwd_kernel`` and the fused mixer's
``_biscan_tp_kernel``): the channel layout puts lanes on channels, so at Vim-1024 (B=8, E=384) its sequential grid
is ~192 one-warp programs for 132 SMs. Here one program owns BD in {1, 2, 4} channels of one sequence and all N
states over all L; a tile of TPT x G tokens is [TPT, BD, NP, G] with token g TPT + k at [k, .., g]: Triton's
default layout gives lanes and warps to G and keeps the TPT consecutive tokens in each thread, so the scan is an
in-thread scan per group, one scan of the G group maps across lanes and warps (an exclusive prefix written as an
inclusive scan over (all-but-last, last) pairs, ``_prefix_combine``) and one FMA per element. 2 x 8 x 384 = 6,144
programs of 4-16 warps at Vim-1024. Chunk states are stored with a masked store at every CHUNK-th token (tiles
may be longer than the chunk), at the channel layout's addresses: the backward is unchanged. Forward only; the
chunk-parallel segmentation does not apply (the grid is already full).

Importing this module compiles nothing; kernels are jit-compiled on first call.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.common import interpreting
from kernels.selective_scan.options import (
    CHUNKS,
    LAYOUTS,
    VARIANTS,
    check_layout,
    check_plan_args,
    chunk_size_for,
    lane_variant,
    split_lane_variant,
)

__all__ = ["selective_scan_triton", "SelectiveScanFn", "chunk_size_for", "scan_plan", "sm_count", "CHUNKS",
           "VARIANTS", "LAYOUTS", "TOKEN_TILES", "lane_bc"]

LOG2E = 1.4426950408889634


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    """(a1, b1) is the earlier segment, (a2, b2) the later one: x -> a2 (a1 x + b1) + b2."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _adjoint_combine(a_late, q_late, g_late, a_early, q_early, g_early):
    """Reverse-scan combine for g_t = c_t + a_{t+1} g_{t+1}.

    A segment [i..j] is (a_i, prod_{i<r<=j} a_r, sum_s prod_{i<r<=s} a_r c_s). Triton's reverse scan passes the
    accumulated later segment first and the earlier element second.
    """
    t = q_early * a_late
    return a_early, t * q_late, g_early + t * g_late


@triton.jit
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(w), w = e^-|x| in (0, 1], with log1p(w) = 2 atanh(s), s = w / (2 + w)
    <= 1/3, as its series in s^2 to s^14 / 15 (truncation < 2e-9 relative; the fp32 rounding of x log2(e) in
    the exponent dominates, ~2e-6 at |x| = 30). Why not tl.log(1 + tl.exp(x)): on sm_90 its log and exp lower to
    range-checked polynomials, ~38 instructions per element against ~15 here (one ex2, one approximate division,
    FMAs), paid per channel and token in every scan pass; and it loses all digits below x ~ -17."""
    w = tl.exp2(-tl.abs(x) * 1.4426950408889634)
    s = tl.fdiv(w, 2.0 + w)
    s2 = s * s
    q = 1.0 / 15.0
    q = q * s2 + 1.0 / 13.0
    q = q * s2 + 1.0 / 11.0
    q = q * s2 + 1.0 / 9.0
    q = q * s2 + 1.0 / 7.0
    q = q * s2 + 1.0 / 5.0
    q = q * s2 + 1.0 / 3.0
    q = q * s2 + 1.0
    return tl.maximum(x, 0.0) + 2.0 * s * q


@triton.jit
def _silu(x):
    """x sigmoid(x) as x / (1 + 2^(-x log2 e)) by one ex2 and an approximate division (tl.sigmoid adds range
    checks); x very negative: the denominator is inf and the result -0."""
    return tl.fdiv(x, 1.0 + tl.exp2(-x * 1.4426950408889634))


@triton.jit
def _delta(dt_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Load a tile of Δ at ``offs`` (bias broadcast to it): returns (pre-softplus x, Δ); padding gets Δ = 0
    (identity step)."""
    return _delta_tile(tl.load(dt_ptr + offs, mask=mask, other=0.0).to(tl.float32), mask, bias, HAS_BIAS, SOFTPLUS)


@triton.jit
def _delta_tile(x, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """``_delta`` on a tile already loaded (fp32)."""
    if HAS_BIAS:
        x = x + bias
    if SOFTPLUS:
        dt = _softplus(x)
    else:
        dt = x
    return x, tl.where(mask, dt, 0.0)


@triton.jit
def _load_t(ptr, offs_t, mask_t):
    """A [CHUNK, BLOCK_D] fp32 tile from offsets laid out [BLOCK_D, CHUNK] (``_store_t`` writes one back).

    Why transposed: the backward keeps a tile's tokens inside the thread and one channel per lane, but Triton's
    coalescing pass lays the lanes of a load or store along its most contiguous axis, and on ties along axis 0.
    With tokens contiguous in memory (E-major) it put 16 lanes on the tokens of [CHUNK, BLOCK_D] tiles, and the
    layout spread to the whole kernel: its in-thread scans crossed lanes (sm_90: ~59 shuffles per element, ~300
    spill loads per state loop). So the kernel multiplies token (and state) indices by ``one``, a runtime 1 that
    is never specialised, which leaves every axis equally (non-)contiguous, and puts channels on axis 0 of the
    memory tiles: lanes go to channels and ``tl.trans`` hands the compute layout the tile for free."""
    return tl.trans(tl.load(ptr + offs_t, mask=mask_t, other=0.0).to(tl.float32))


@triton.jit
def _store_t(ptr, offs_t, val, mask_t):
    tl.store(ptr + offs_t, tl.trans(val).to(ptr.dtype.element_ty), mask=mask_t)


@triton.jit
def _scan_tile(u, dt, Bt, A2, h, offs_l, BLOCK_L: tl.constexpr):
    """One token-major tile of the recurrence from the carried-in state h [NP, BD]: the states of every token
    hs [BL, NP, BD] (one exp per channel, state and token; one associative scan over the tile's tokens) and
    the state after the tile. u, dt [BL, BD], Bt [BL, NP]; A2 = A log2(e) [NP, BD]."""
    a = tl.exp2(dt[:, None, :] * A2[None, :, :])                                   # [BL, NP, BD]
    b = (dt * u)[:, None, :] * Bt[:, :, None]
    a_s, b_s = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine)
    hs = a_s * h[None, :, :] + b_s
    return hs, tl.sum(tl.where(offs_l[:, None, None] == BLOCK_L - 1, hs, 0.0), axis=0)


# --------------------------------------------------------------------------------------------------------
# lane forward layout ("lane"): one channel per lane, the tile's tokens and all N states in-thread

@triton.jit
def _lane_rows(row, mask_d, N: tl.constexpr, NP: tl.constexpr, K: tl.constexpr):
    """Offsets [BD, NP/K, K] of N consecutive values per channel (``row`` [BD]) and their mask.

    Lane-layout tiles are channel-major: Triton's coalescer gives lanes to the contiguous axis first, then to
    the other axes in index order, so a contiguous axis no longer than one 16-B vector (K = 4 fp32) leaves
    all lanes to the channels on axis 0: vector accesses straight in the compute layout, no conversion."""
    n = tl.arange(0, NP // K)[None, :, None] * K + tl.arange(0, K)[None, None, :]
    return row[:, None, None] + n, mask_d[:, None, None] & (n < N)


@triton.jit
def _lane_state(ptr, row, mask_d, N: tl.constexpr, NP: tl.constexpr):
    """Load [BD, NP] states at ptr + row + n (h0 of pass 3)."""
    K: tl.constexpr = 4 if NP >= 4 else NP
    off, m = _lane_rows(row, mask_d, N, NP, K)
    return tl.reshape(tl.load(ptr + off, mask=m, other=0.0), [row.shape[0], NP])


@triton.jit
def _lane_put(ptr, row, h, mask_d, N: tl.constexpr, NP: tl.constexpr):
    """Store [BD, NP] states at ptr + row + n."""
    K: tl.constexpr = 4 if NP >= 4 else NP
    off, m = _lane_rows(row, mask_d, N, NP, K)
    tl.store(ptr + off, tl.reshape(h, off.shape), mask=m)


@triton.jit
def _lane_bc(row_ptr, t, S: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, K: tl.constexpr, BLOCK_D: tl.constexpr):
    """The [BL, NP] B or C tile of a transposed fp32 row (state n of token t at row_ptr + t S + n) as
    [BD, BL, NP]: every lane loads the same addresses (zero stride along channels: one L1 wavefront per
    load), as fp32 so no per-element unpacking (the launchers transpose B / C once, a few % of the scan's
    traffic). ``t`` must lie in the row (callers clamp it): the load is unmasked (but for padding states when
    N < NP), so the compiler neither predicates it nor zero-fills its 2 NP registers per token first."""
    n = tl.arange(0, NP // K)[None, None, :, None] * K + tl.arange(0, K)[None, None, None, :]
    zero_d = tl.zeros([BLOCK_D, 1, 1, 1], dtype=tl.int32)
    ptrs = row_ptr + (t[None, :, None, None] * S + n) + zero_d                       # [BD, BL, NP/K, K]
    if N < NP:
        v = tl.load(ptrs, mask=(n < N) & (zero_d == 0), other=0.0).to(tl.float32)
    else:
        v = tl.load(ptrs).to(tl.float32)
    return tl.reshape(v, [BLOCK_D, v.shape[1], NP])


@triton.jit
def _lane_loads(u_ptr, dt_ptr, z_ptr, B_row, C_row, col, colz, su, sz, p, p_end, L, rev, mask_d, N: tl.constexpr,
                NP: tl.constexpr, S: tl.constexpr, HAS_Z: tl.constexpr, EMIT_Y: tl.constexpr):
    """One lane tile's raw inputs at scan steps ``p`` [BL]: u, Δ (pre-bias), z as [BL, BD] in their storage dtype
    (zero past ``p_end``; token strides ``su`` for u and Δ, ``sz`` for z) and B, C as fp32 [BL, NP, BD] (of a
    clamped token there: the walk zeroes Δ, so such steps are identities); C and z only when the pass emits y."""
    K: tl.constexpr = 4 if NP >= 4 else NP
    BD: tl.constexpr = mask_d.shape[0]
    mask_l = p < p_end
    t = p + rev * (L - 1 - 2 * p)
    mask = mask_l[:, None] & mask_d[None, :]                                       # [BL, BD]
    u = tl.load(u_ptr + col[None, :] + t[:, None] * su, mask=mask, other=0.0)
    dx = tl.load(dt_ptr + col[None, :] + t[:, None] * su, mask=mask, other=0.0)
    tc = tl.minimum(tl.maximum(t, 0), L - 1)                                       # steps past p_end: any token
    Bt = tl.permute(_lane_bc(B_row, tc, S, N, NP, K, BD), (1, 2, 0))               # [BL, NP, BD]
    if EMIT_Y:
        Ct = tl.permute(_lane_bc(C_row, tc, S, N, NP, K, BD), (1, 2, 0))
        if HAS_Z:
            zz = tl.load(z_ptr + colz[None, :] + t[:, None] * sz, mask=mask, other=0.0)
        else:
            zz = u
    else:
        Ct = Bt
        zz = u
    return u, dx, Bt, Ct, zz


@triton.jit
def _lane_walk(u_ptr, dt_ptr, z_ptr, y_ptr, B_row, C_row, states_ptr, h0_ptr, end_ptr, dsum_ptr, col, colz, coly,
               su, sz, sy_l, st_row, seg_chan, A2, Dv, bias, p0, p_end, L, rev, mask_d,
               N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr, S: tl.constexpr, HAS_D: tl.constexpr,
               HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr,
               EMIT_Y: tl.constexpr, STORE_END: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_L: tl.constexpr,
               PREFETCH: tl.constexpr):
    """The lane-layout forward of one program over scan steps [p0, p_end): BD channels (one per lane), the
    tile's tokens and all states in-thread, so the scan and the sum over states need no shuffles. Loads and
    stores are channel-major ([BD, ...], see _lane_rows / _lane_bc), the arithmetic token-major [BL, NP, BD]:
    a [BD, BL, NP] compute tile gets Triton's default layout with lanes on the LAST axis (states / tokens), and
    the first version of this walk compiled (sm_90) to ~416 shuffles per tile, 255 registers and spills;
    token-major it has none (the permute of B / C is a register renaming). Shared by the selective scan's and the fused
    mixer's kernels, which differ only in addressing: ``col`` / ``colz`` / ``coly`` [BD] row offsets in u and
    Δ / z / y (token strides ``su``, ``sz``, ``sy_l``); B_row, C_row the transposed fp32 B / C rows (token stride S);
    ``st_row`` [BD] where chunk 0's state of each channel goes (the channel layout's addresses). ``rev`` = 1
    walks token L-1-p at step p. A2 = A log2(e). The segment's own states too: ``seg_chan`` [BD] = segment row x
    channels + channel, so h0 (HAS_H0, else zeros) / the end state (STORE_END) sit at ``seg_chan`` N and ΣΔ (when
    not EMIT_Y) at ``seg_chan``; with STORE_STATES the starting state is chunk p0 / CHUNK's.

    ``PREFETCH``: load tile i+1's inputs before tile i's arithmetic (carried in registers). Without it every
    tile waits for its own loads: on the H200 (ncu, Vim-1024 shape) the walk issued 1.2-1.5 instructions per
    cycle per SM with most warps stalled on the scoreboard of those loads (B / C rows are a new L2 line every
    token), and the one-warp-per-32-channels grid gives too few warps to cover the latency by themselves."""
    # compute tiles are token-major [BL, NP, BD] (channels last): Triton's default layout gives the lanes (and
    # warps) to the last axis, so with BD = 32 x warps every thread holds its channel's BL x NP values and the
    # loads' layouts (lanes on channels, see _lane_rows) match it up to a register permutation
    offs_l = tl.arange(0, BLOCK_L)
    if HAS_H0:
        h = _lane_state(h0_ptr, seg_chan * N, mask_d, N, NP)
    else:
        h = tl.zeros([mask_d.shape[0], NP], dtype=tl.float32)
    if STORE_STATES:
        _lane_put(states_ptr, st_row + (p0 // CHUNK) * N, h, mask_d, N, NP)
    A2t = tl.trans(A2)                                                             # [NP, BD]
    ht = tl.trans(h)
    dsum = tl.zeros(mask_d.shape, dtype=tl.float32)
    n_tiles = tl.cdiv(p_end - p0, BLOCK_L)
    if PREFETCH:
        # two register buffers in turn (a loop over tile pairs, so no buffer is copied to the other): tile
        # 2j+1's loads are in flight during tile 2j's arithmetic and 2j+2's during 2j+1's. An odd count ends with
        # one step past p_end, all masked (an identity).
        ua, xa, Ba, Ca, za = _lane_loads(u_ptr, dt_ptr, z_ptr, B_row, C_row, col, colz, su, sz, p0 + offs_l, p_end,
                                         L, rev, mask_d, N, NP, S, HAS_Z, EMIT_Y)
        for j in range(0, tl.cdiv(n_tiles, 2)):
            pa = p0 + 2 * j * BLOCK_L + offs_l
            ub, xb, Bb, Cb, zb = _lane_loads(u_ptr, dt_ptr, z_ptr, B_row, C_row, col, colz, su, sz, pa + BLOCK_L,
                                             p_end, L, rev, mask_d, N, NP, S, HAS_Z, EMIT_Y)
            ht, dsum = _lane_step(ua, xa, Ba, Ca, za, ht, dsum, pa, 2 * j, y_ptr, coly, sy_l, states_ptr, st_row,
                                  A2t, Dv, bias, p0, p_end, L, rev, mask_d, N, NP, CHUNK, HAS_D, HAS_Z, HAS_BIAS,
                                  SOFTPLUS, STORE_STATES, EMIT_Y, BLOCK_L)
            ua, xa, Ba, Ca, za = _lane_loads(u_ptr, dt_ptr, z_ptr, B_row, C_row, col, colz, su, sz,
                                             pa + 2 * BLOCK_L, p_end, L, rev, mask_d, N, NP, S, HAS_Z, EMIT_Y)
            ht, dsum = _lane_step(ub, xb, Bb, Cb, zb, ht, dsum, pa + BLOCK_L, 2 * j + 1, y_ptr, coly, sy_l,
                                  states_ptr, st_row, A2t, Dv, bias, p0, p_end, L, rev, mask_d, N, NP, CHUNK, HAS_D,
                                  HAS_Z, HAS_BIAS, SOFTPLUS, STORE_STATES, EMIT_Y, BLOCK_L)
    else:
        for i in range(0, n_tiles):
            p = p0 + i * BLOCK_L + offs_l
            ru, rx, Bt, Ct, rz = _lane_loads(u_ptr, dt_ptr, z_ptr, B_row, C_row, col, colz, su, sz, p, p_end, L, rev,
                                             mask_d, N, NP, S, HAS_Z, EMIT_Y)
            ht, dsum = _lane_step(ru, rx, Bt, Ct, rz, ht, dsum, p, i, y_ptr, coly, sy_l, states_ptr, st_row, A2t, Dv,
                                  bias, p0, p_end, L, rev, mask_d, N, NP, CHUNK, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS,
                                  STORE_STATES, EMIT_Y, BLOCK_L)
    if STORE_END:
        _lane_put(end_ptr, seg_chan * N, tl.trans(ht), mask_d, N, NP)
    if not EMIT_Y:
        tl.store(dsum_ptr + seg_chan, dsum, mask=mask_d)


@triton.jit
def _lane_step(ru, rx, Bt, Ct, rz, ht, dsum, p, i, y_ptr, coly, sy_l, states_ptr, st_row, A2t, Dv, bias, p0, p_end, L,
               rev, mask_d, N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr, HAS_D: tl.constexpr,
               HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr,
               EMIT_Y: tl.constexpr, BLOCK_L: tl.constexpr):
    """Tile ``i`` (scan steps ``p`` [BL]) of the lane walk from its loaded inputs (``_lane_loads``): the state
    ht [NP, BD] carried through the tile, y stored (EMIT_Y) or ΣΔ accumulated, the chunk state stored at a chunk
    end. Returns (ht, dsum)."""
    offs_l = tl.arange(0, BLOCK_L)
    first = offs_l[:, None, None] == 0
    last = offs_l[:, None, None] == BLOCK_L - 1
    mask = (p < p_end)[:, None] & mask_d[None, :]                                  # [BL, BD]
    u = ru.to(tl.float32)
    dt = rx.to(tl.float32)
    if HAS_BIAS:
        dt = dt + bias[None, :]
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(mask, dt, 0.0)
    # the recurrence h = a h + b as an in-thread scan of b alone: the carried-in state enters through token 0's
    # input, and the scan's running product of a is unused (dead code)
    a = tl.exp2(dt[:, None, :] * A2t[None, :, :])
    b = (dt * u)[:, None, :] * Bt
    b = tl.where(first, a * ht[None, :, :] + b, b)
    _, hs = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine)
    ht = tl.sum(tl.where(last, hs, -0.0), axis=0)                                  # -0.0: x + -0.0 folds
    if EMIT_Y:
        t = p + rev * (L - 1 - 2 * p)
        y = tl.sum(hs * Ct, axis=1)                                                # [BL, BD]
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            zz = rz.to(tl.float32)
            y = y * _silu(zz)
        tl.store(y_ptr + coly[None, :] + t.to(tl.int64)[:, None] * sy_l, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        dsum += tl.sum(dt, axis=0)
    if STORE_STATES:
        end = p0 + (i + 1) * BLOCK_L
        if (end % CHUNK == 0) & (end < p_end):
            _lane_put(states_ptr, st_row + (end // CHUNK) * N, tl.trans(ht), mask_d, N, NP)
    return ht, dsum


@triton.jit(do_not_specialize=["sy_l"])
def _lane_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, end_ptr, states_ptr, h0_ptr, dsum_ptr,
    Dch, L, SEG, cpg_B, cpg_C, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    L_BUCKET, BATCH_BUCKET, BD_CAP, sy_l,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, STORE_STATES: tl.constexpr,
    EMIT_Y: tl.constexpr, STORE_END: tl.constexpr, HAS_H0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Lane layout of ``_fwd_kernel``: same grid, arguments, switches and outputs (y, end / segment states, ΣΔ,
    the backward's chunk states at the same addresses), by ``_lane_walk``. B_ptr / C_ptr are the launcher's
    transposed fp32 copies [B, G, L, N] (state n of token t at row + t N + n), strides of those; a program's
    channels lie in one group (BLOCK_D <= BD_CAP), so its B / C row is one broadcast address per token.
    ``sy_l``: y's token stride (= 1, given by the launcher as a keyword and left unspecialised, as in the mixer's
    ``_biscan_lane_kernel``): a store that the coalescer sees contiguous along tokens gets lanes on tokens, and
    the compiler then converts the whole [BL, NP, BD] tile (or rescans it in a second layout) to match."""
    pid_d = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_seg = tl.num_programs(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d0 = pid_d * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < Dch
    d64 = offs_d.to(tl.int64)
    A2 = tl.load(A_ptr + d64[:, None] * N + offs_n[None, :], mask=mask_d[:, None] & (offs_n < N)[None, :],
                 other=0.0).to(tl.float32) * 1.4426950408889634                    # [BD, NP]
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if REVERSE:
        rev = 1
    else:
        rev = 0
    col = (pid_b * Dch + d64) * L                                                  # [BD] rows of u, Δ, z, y
    B_row = B_ptr + pid_b * stride_Bb + (d0 // cpg_B) * stride_Bg
    C_row = C_ptr + pid_b * stride_Cb + (d0 // cpg_C) * stride_Cg
    st_row = (pid_b * Dch + d64) * tl.cdiv(L, CHUNK) * N
    p0 = pid_s * SEG
    _lane_walk(u_ptr, dt_ptr, z_ptr, y_ptr, B_row, C_row, states_ptr, h0_ptr, end_ptr, dsum_ptr, col, col, col, 1, 1,
               sy_l, st_row, (pid_b * n_seg + pid_s) * Dch + d64, A2, Dv, bias, p0, tl.minimum(L, p0 + SEG), L, rev,
               mask_d, N, NP, CHUNK, N, HAS_D, HAS_Z, HAS_BIAS, SOFTPLUS, STORE_STATES, EMIT_Y, STORE_END, HAS_H0,
               BLOCK_L, PREFETCH)


@triton.jit
def _fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, end_ptr, states_ptr, h0_ptr, dsum_ptr,
    Dch, L, SEG, cpg_B, cpg_C, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    L_BUCKET, BATCH_BUCKET, BD_CAP,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, STORE_STATES: tl.constexpr,
    EMIT_Y: tl.constexpr, STORE_END: tl.constexpr, HAS_H0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One program scans BLOCK_D channels of one sequence over segment ``program_id(1)`` (SEG tokens in scan
    order; the sequential variant has one segment of L tokens).

    EMIT_Y=False is chunk-parallel pass 1 (from a zero state: end state and sum of Δ only, no C/z/y);
    HAS_H0 is pass 3 (rescan from the combined start state, writing y and the backward's chunk states).
    """
    # Tiles are token-major [BLOCK_L, NP, BLOCK_D]: Triton's default layout gives lanes to the last axes
    # (channels, then states), so the scanned token axis stays inside each thread (no shuffles per step).
    pid_d = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_seg = tl.num_programs(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d0 = pid_d * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < Dch
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]

    A2 = tl.load(A_ptr + offs_d[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)

    col = pid_b * Dch * L + offs_d.to(tl.int64)[None, :] * L                       # [1, BD]
    colB = pid_b * stride_Bb + (d0 // cpg_B) * stride_Bg + offs_n.to(tl.int64)[None, :] * L
    colC = pid_b * stride_Cb + (d0 // cpg_C) * stride_Cg + offs_n.to(tl.int64)[None, :] * L
    n_chunks = tl.cdiv(L, CHUNK)
    st_off = (pid_b * Dch + offs_d.to(tl.int64)[None, :]) * n_chunks * N + offs_n[:, None]   # [NP, BD]
    seg_row = pid_b * n_seg + pid_s                                                # [B, n_seg, ...] row
    seg_off = (seg_row * Dch + offs_d.to(tl.int64)[None, :]) * N + offs_n[:, None]
    p0 = pid_s * SEG
    p_end = tl.minimum(L, p0 + SEG)

    if HAS_H0:
        h = tl.load(h0_ptr + seg_off, mask=mask_nd, other=0.0)
    else:
        h = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    if STORE_STATES:
        tl.store(states_ptr + st_off + (p0 // CHUNK) * N, h, mask=mask_nd)
    for i in range(0, tl.cdiv(p_end - p0, BLOCK_L)):
        p = p0 + i * BLOCK_L + offs_l
        mask_l = p < p_end
        if REVERSE:
            t = L - 1 - p
        else:
            t = p
        mask = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        u = tl.load(u_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)        # [BL, BD]
        _, dt = _delta(dt_ptr, col + t[:, None], mask, bias[None, :], HAS_BIAS, SOFTPLUS)
        Bt = tl.load(B_ptr + colB + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)   # [BL, NP]

        hs, h = _scan_tile(u, dt, Bt, A2, h, offs_l, BLOCK_L)

        if EMIT_Y:
            Ct = tl.load(C_ptr + colC + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[:, :, None], axis=1)                                # [BL, BD]
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                zz = tl.load(z_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)
                y = y * _silu(zz)
            tl.store(y_ptr + col + t[:, None], y.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            dsum += tl.sum(dt, axis=0)
        if STORE_STATES:
            end = p0 + (i + 1) * BLOCK_L
            if (end % CHUNK == 0) & (end < p_end):
                tl.store(states_ptr + st_off + (end // CHUNK) * N, h, mask=mask_nd)

    if STORE_END:
        tl.store(end_ptr + seg_off, h, mask=mask_nd)
    if not EMIT_Y:
        tl.store(dsum_ptr + seg_row * Dch + offs_d, dsum, mask=mask_d)


@triton.jit(do_not_specialize=["one"])
def _bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr, carry_ptr, dsum_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    Dch, L, SEG, cpg_B, cpg_C, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    L_BUCKET, BATCH_BUCKET, BD_CAP, one,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, CARRY_ONLY: tl.constexpr, HAS_CARRY: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program walks the CHUNK-token tiles of segment ``program_id(1)`` last to first for BLOCK_D channels.

    Tiles are [CHUNK, BLOCK_D] with one channel per lane and the tile's tokens inside the thread (the forward's
    layout), and the N states are a loop: per state, one in-thread scan recomputes the chunk's states from the
    stored start state and one in-thread reverse scan gives the adjoint, so no scan crosses lanes or warps
    and only [CHUNK, BLOCK_D] tiles live in registers. The carries between chunks (and the dA sums) are
    [NP, BLOCK_D] tiles updated one state row at a time.

    CARRY_ONLY is chunk-parallel pass A: the adjoint from a zero carry over the segment, storing only the
    carry it passes to the previous segment (a_first g_first) and the segment's sum of Δ (no u, B, states).
    HAS_CARRY is pass C: the full gradient with the true carry coming in from the later segments.
    """
    pid_d = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_seg = tl.num_programs(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d0 = pid_d * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    offs_l = tl.arange(0, CHUNK)
    mask_d = offs_d < Dch
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)

    col = pid_b * Dch * L + offs_d.to(tl.int64)[:, None] * L                       # [BD, 1]: tiles via _load_t
    rowB = pid_b * stride_Bb + (d0 // cpg_B) * stride_Bg                           # B[b, g, n, t] = rowB + n L + t
    rowC = pid_b * stride_Cb + (d0 // cpg_C) * stride_Cg
    n_chunks = tl.cdiv(L, CHUNK)
    st_row = (pid_b * Dch + offs_d.to(tl.int64)) * n_chunks * N                    # [BD]
    seg_row = pid_b * n_seg + pid_s
    seg_off = (seg_row * Dch + offs_d.to(tl.int64)[:, None]) * N + offs_n[None, :] * one      # [BD, NP]
    mask_dn = mask_d[:, None] & (offs_n < N)[None, :]
    p0 = pid_s * SEG
    p_end = tl.minimum(L, p0 + SEG)
    k0 = p0 // CHUNK
    nk = tl.cdiv(p_end - p0, CHUNK)

    dA_acc = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_CARRY:                                           # a_s g_s at the first token after this segment
        carry = _load_t(carry_ptr, seg_off, mask_dn)
    else:
        carry = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    ones = tl.full([CHUNK, BLOCK_D], 1.0, tl.float32)
    for kk in range(0, nk):
        k = k0 + nk - 1 - kk
        p = k * CHUNK + offs_l
        mask_l = p < p_end
        if REVERSE:
            t = L - 1 - p
        else:
            t = p
        mask = mask_l[:, None] & mask_d[None, :]
        offs_t = col + t[None, :] * one                                         # [BD, CH]
        mask_t = mask_d[:, None] & mask_l[None, :]
        x, dt = _delta_tile(_load_t(dt_ptr, offs_t, mask_t), mask, bias[None, :], HAS_BIAS, SOFTPLUS)
        dout = _load_t(dout_ptr, offs_t, mask_t)
        if HAS_Z:
            zz = _load_t(z_ptr, offs_t, mask_t)
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
            dz_y = dout * sz * (1.0 + zz * (1.0 - sz))          # dz = dz_y * y: dout, z die before the state loop
        else:
            dy = dout
        dy = tl.where(mask, dy, 0.0)
        if not CARRY_ONLY:
            u = _load_t(u_ptr, offs_t, mask_t)
            dtu = dt * u
            ddt = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
            if HAS_D:
                dD_acc += tl.sum(dy * u, axis=0)
                du = dy * Dv[None, :]
                y = u * Dv[None, :]
            else:
                du = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
                y = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)

        for n in range(0, N):
            An = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)          # [BD]
            a = tl.exp2(dt * (An * 1.4426950408889634)[None, :])                     # [CH, BD]
            Cn = tl.load(C_ptr + rowC + n * L + t * one, mask=mask_l, other=0.0).to(tl.float32)         # [CH]
            # adjoint g_t = dL/dh_t: reverse scan within the chunk plus the carry from later chunks
            sel = offs_n[:, None] == n
            carry_n = tl.sum(tl.where(sel, carry, 0.0), axis=0)
            _, q_s, g_s = tl.associative_scan((a, ones, Cn[:, None] * dy), axis=0, combine_fn=_adjoint_combine,
                                              reverse=True)
            g = g_s + q_s * carry_n[None, :]
            carry = tl.where(sel, tl.sum(tl.where(offs_l[:, None] == 0, a * g, 0.0), axis=0)[None, :], carry)
            if not CARRY_ONLY:
                # the chunk's states of this state index, recomputed from the stored start state
                Bn = tl.load(B_ptr + rowB + n * L + t * one, mask=mask_l, other=0.0).to(tl.float32)
                h0 = tl.load(states_ptr + st_row + k * N + n, mask=mask_d, other=0.0)
                b = dtu * Bn[:, None]
                a_s, b_s = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine)
                hs = a_s * h0[None, :] + b_s
                if HAS_Z:
                    y += hs * Cn[:, None]
                tl.atomic_add(dC_ptr + rowC + n * L + t * one, tl.sum(hs * dy, axis=1), mask=mask_l, sem="relaxed")
                tl.atomic_add(dB_ptr + rowB + n * L + t * one, tl.sum(g * dtu, axis=1), mask=mask_l, sem="relaxed")
                s = g * Bn[:, None]                                                  # d(Δ u) of this state
                w = g * (hs - b)                                                     # g_t a_t h_{t-1}
                du += dt * s
                ddt += u * s + w * An[None, :]
                dA_acc += tl.where(sel, tl.sum(w * dt, axis=0)[None, :], 0.0)

        if CARRY_ONLY:
            dsum += tl.sum(dt, axis=0)
        else:
            if HAS_Z:
                _store_t(dz_ptr, offs_t, dz_y * y, mask_t)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(x)
            ddt = tl.where(mask, ddt, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(ddt, axis=0)
            _store_t(du_ptr, offs_t, du, mask_t)
            _store_t(ddt_ptr, offs_t, ddt, mask_t)

    if CARRY_ONLY:
        _store_t(carry_ptr, seg_off, carry, mask_dn)
        tl.store(dsum_ptr + seg_row * Dch + offs_d, dsum, mask=mask_d)
    else:
        tl.atomic_add(dA_ptr + offs_d[:, None] * N + offs_n[None, :] * one, tl.trans(dA_acc), mask=mask_dn,
                      sem="relaxed")
        if HAS_D:
            tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d, sem="relaxed")
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d, sem="relaxed")


@triton.jit
def _combine_kernel(
    A_ptr, dsum_ptr, x_ptr, out_ptr, final_ptr, Dch, n_seg,
    N: tl.constexpr, NSEG_P: tl.constexpr, BLOCK: tl.constexpr,
    BACKWARD: tl.constexpr, STORE_FINAL: tl.constexpr,
):
    """Chunk-parallel pass 2 / B: the carries between segments, for BLOCK (channel, state) pairs of a sequence.

    Segment c maps an incoming state s to P_c s + x_c with P_c = exp(A ΣΔ_c). Forward, out[c] is the state
    entering segment c (x = segment end states from zero); backward (adjoint runs last to first), out[c] is
    the carry entering segment c from c+1 (x = pass A's local carries). All segments are loaded at once and
    combined by one associative scan (log depth) instead of n_seg dependent global round trips. Backward
    loads the segments in reversed order and still scans forward: Triton's reverse scan has had ordering
    bugs for non-commutative combines across lanes/warps (triton#4362), and this axis may span both.
    """
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)                                       # flat d * N + n
    mask_f = offs < Dch * N
    r = tl.arange(0, NSEG_P)                                                       # scan step
    mask = (r < n_seg)[:, None] & mask_f[None, :]
    if BACKWARD:
        seg = n_seg - 1 - r                                                        # segment at scan step r
        seg_next = n_seg - 2 - r
        seg_first = n_seg - 1
    else:
        seg = r
        seg_next = r + 1
        seg_first = 0
    A = tl.load(A_ptr + offs, mask=mask_f, other=0.0)
    row = pid_b * n_seg + seg.to(tl.int64)                                         # [NSEG_P]
    ds = tl.load(dsum_ptr + row[:, None] * Dch + (offs // N)[None, :], mask=mask, other=0.0)
    P = tl.where(mask, tl.exp2(ds * (A * 1.4426950408889634)[None, :]), 1.0)       # padding: identity
    x = tl.load(x_ptr + row[:, None] * Dch * N + offs[None, :], mask=mask, other=0.0)
    # s_r = P_r s_{r-1} + x_r: the state leaving scan step r, i.e. entering the segment of step r + 1
    _, s = tl.associative_scan((P, x), axis=0, combine_fn=_affine_combine)
    row_next = pid_b * n_seg + seg_next.to(tl.int64)
    tl.store(out_ptr + row_next[:, None] * Dch * N + offs[None, :], s, mask=mask & (r < n_seg - 1)[:, None])
    tl.store(out_ptr + (pid_b * n_seg + seg_first) * Dch * N + offs, tl.zeros([BLOCK], dtype=tl.float32),
             mask=mask_f)
    if STORE_FINAL:
        tl.store(final_ptr + pid_b * Dch * N + offs, tl.sum(tl.where((r == n_seg - 1)[:, None], s, 0.0), axis=0),
                 mask=mask_f)


# --------------------------------------------------------------------------------------------------------
# token-parallel forward layout ("token"): lanes and warps along L, a few consecutive tokens in each thread

@triton.jit
def _prefix_combine(xa1, xb1, ya1, yb1, xa2, xb2, ya2, yb2):
    """Exclusive prefix of affine maps as an inclusive scan: a segment is (X, Y) = (all its maps but the last,
    composed; its last map). Left then right: X = X2 after Y1 after X1, Y = Y2. Seeded with X = identity, the
    scan's X at step g is the composition of steps 0..g-1: no shift across lanes needed."""
    a = xa1 * ya1
    b = xb1 * ya1 + yb1
    return a * xa2, b * xa2 + xb2, ya2, yb2


@triton.jit
def _scan_tile_tokens(u, dt, Bt, A2, h, TPT: tl.constexpr, G: tl.constexpr):
    """One tile of TPT x G tokens as [TPT, BD, NP, G] (token g TPT + k at [k, :, :, g]) from the carried-in
    state h [BD, NP]; u, dt [TPT, BD, G], Bt [TPT, NP, G], A2 = A log2(e) [BD, NP].

    Triton's default layout gives lanes and warps to the last axis (G groups of TPT consecutive tokens) and
    keeps axis 0 inside the thread, so the scan is two-level: an in-thread scan over each group's TPT tokens,
    then one scan of the G group maps across lanes and warps (1/TPT of the elements), then one FMA per element
    applies the state entering the group. Returns (states of every token, state after the tile)."""
    a = tl.exp2(dt[:, :, None, :] * A2[None, :, :, None])                          # [TPT, BD, NP, G]
    b = (dt * u)[:, :, None, :] * Bt[:, None, :, :]
    a_s, b_s = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine)     # in-thread
    last_k = (tl.arange(0, TPT) == TPT - 1)[:, None, None, None]
    ta = tl.sum(tl.where(last_k, a_s, 0.0), axis=0)                                # group maps [BD, NP, G]
    tb = tl.sum(tl.where(last_k, b_s, 0.0), axis=0)
    if G > 1:
        zero = tl.zeros_like(ta)
        xa, xb, _, _ = tl.associative_scan((zero + 1.0, zero, ta, tb), axis=2, combine_fn=_prefix_combine)
        s = xa * h[:, :, None] + xb                                                # state entering group g
    else:
        s = h[:, :, None] + tl.zeros_like(ta)
    hs = a_s * s[None, :, :, :] + b_s
    h_next = tl.sum(tl.where((tl.arange(0, G) == G - 1)[None, None, :], ta * s + tb, 0.0), axis=2)
    return hs, h_next


@triton.jit
def _tp_walk(u_ptr, dt_ptr, z_ptr, y_ptr, B_row, C_row, sbn, states_ptr, col, colz, coly, st_off, A2, Dv, bias, h,
             L, rev, mask_d,
             N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
             SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr, TPT: tl.constexpr, G: tl.constexpr):
    """The token-parallel forward of one program (BD channels of one sequence, all N states) down all L tokens
    in tiles of TPT x G; shared by the selective scan's and the fused mixer's kernels, which differ only in
    addressing. ``col`` / ``colz`` / ``coly`` [BD] are the channels' row offsets in u and Δ / z / y (token
    stride 1); B_row, C_row point at the sequence's B / C rows (state stride ``sbn``, token stride 1);
    ``st_off`` [BD, NP] is where chunk 0's state of each (channel, state) goes. ``rev`` = 1 walks token L-1-p at
    step p. Stores the state entering every CHUNK tokens (where the channel-layout kernels store it, so their
    backward reads it unchanged); returns the last state."""
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    mask_nd = mask_d[:, None] & mask_n[None, :]
    jt = tl.arange(0, TPT)[:, None, None] + tl.arange(0, G)[None, None, :] * TPT      # [TPT, 1, G]
    for i in range(0, tl.cdiv(L, TPT * G)):
        p = i * (TPT * G) + jt
        mask_l = p < L
        t = p + rev * (L - 1 - 2 * p)
        m = mask_l & mask_d[None, :, None]                                         # [TPT, BD, G]
        u = tl.load(u_ptr + col[None, :, None] + t, mask=m, other=0.0).to(tl.float32)
        x = tl.load(dt_ptr + col[None, :, None] + t, mask=m, other=0.0).to(tl.float32) + bias[None, :, None]
        if SOFTPLUS:
            dt = _softplus(x)
        else:
            dt = x
        dt = tl.where(m, dt, 0.0)                                                  # padding: identity step
        mb = mask_l & mask_n[None, :, None]                                        # [TPT, NP, G]
        Bt = tl.load(B_row + offs_n[None, :, None] * sbn + t, mask=mb, other=0.0).to(tl.float32)

        hs, h = _scan_tile_tokens(u, dt, Bt, A2, h, TPT, G)

        Ct = tl.load(C_row + offs_n[None, :, None] * sbn + t, mask=mb, other=0.0).to(tl.float32)
        y = tl.sum(hs * Ct[:, None, :, :], axis=2)                                # [TPT, BD, G]
        if HAS_D:
            y += Dv[None, :, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + colz[None, :, None] + t, mask=m, other=0.0).to(tl.float32)
            y = y * _silu(zz)
        tl.store(y_ptr + coly[None, :, None] + t, y.to(y_ptr.dtype.element_ty), mask=m)
        if STORE_STATES:
            q = (p + 1)[:, :, None, :]                                             # state after token p
            sm = ((q % CHUNK) == 0) & (q < L) & mask_nd[None, :, :, None]
            tl.store(states_ptr + st_off[None, :, :, None] + (q // CHUNK) * N, hs, mask=sm)
    return h


@triton.jit
def _tp_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, end_ptr, states_ptr,
    Dch, L, cpg_B, cpg_C, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    L_BUCKET, BATCH_BUCKET, BD_CAP,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, STORE_STATES: tl.constexpr,
    BD: tl.constexpr, TPT: tl.constexpr, G: tl.constexpr,
):
    """Token-parallel selective-scan forward: one program per (BD channels, sequence) over all L (``_tp_walk``);
    grid (cdiv(D, BD), batch). Writes y, the last state and (STORE_STATES) the backward's chunk states."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d0 = pid_d * BD
    offs_d = d0 + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < Dch
    mask_nd = mask_d[:, None] & (offs_n < N)[None, :]
    A2 = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_nd, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    col = pid_b * Dch * L + offs_d.to(tl.int64) * L                                # [BD]
    B_row = B_ptr + pid_b * stride_Bb + (d0 // cpg_B) * stride_Bg
    C_row = C_ptr + pid_b * stride_Cb + (d0 // cpg_C) * stride_Cg
    st_off = (pid_b * Dch + offs_d.to(tl.int64))[:, None] * (tl.cdiv(L, CHUNK) * N) + offs_n[None, :]
    h = tl.zeros([BD, NP], dtype=tl.float32)
    if STORE_STATES:
        tl.store(states_ptr + st_off, h, mask=mask_nd)
    if REVERSE:
        rev = 1
    else:
        rev = 0
    h = _tp_walk(u_ptr, dt_ptr, z_ptr, y_ptr, B_row, C_row, L, states_ptr, col, col, col, st_off, A2, Dv, bias, h,
                 L, rev, mask_d, N, NP, CHUNK, HAS_D, HAS_Z, SOFTPLUS, STORE_STATES, TPT, G)
    tl.store(end_ptr + (pid_b * Dch + offs_d.to(tl.int64))[:, None] * N + offs_n[None, :], h, mask=mask_nd)


# --------------------------------------------------------------------------------------------------------
# launch configuration

def _block_d_cap(cpg: int, grouped: bool) -> int:
    """Largest power of two a channel block may have so that it stays inside one B/C group."""
    if not grouped:
        return 1 << 30
    cap = 1
    while cpg % (cap * 2) == 0:
        cap *= 2
    return cap


# Token-major tiles with BLOCK_D = 32 * num_warps put one channel per lane and all N states plus the tile's
# tokens inside the thread (no shuffles in the scan or the N-reduction); the others split N over warps/lanes.
_FWD_CONFIGS = [
    triton.Config({"BLOCK_D": bd, "BLOCK_L": bl}, num_warps=w)
    for bd, bl, w in [(32, 4, 1), (64, 4, 2), (128, 4, 4), (32, 8, 2), (16, 8, 1), (32, 16, 4), (8, 16, 1),
                      (4, 32, 4)]
]
# Lane-layout tiles: one channel per lane (BLOCK_D = 32 x warps), BLOCK_L tokens x N states per thread. sm_90
# offline (ptxas -v, N 16, _biscan_lane_kernel): BLOCK_L 2 -> 128 registers, 4 -> 183-243, no spills, no
# shuffles; BLOCK_L 8 hits 255 registers and spills ~230 B per thread, so it is left out.
# PREFETCH 1 doubles the tile's input registers (sm_90, mixer pass 3: BLOCK_L 1 -> 106 registers, 2 -> 186). Per
# token the walk issues ~186 (pass 3) / ~124 (pass 1) instructions at BLOCK_L 1, ~230 / ~175 at 2, whose in-thread
# scan of two tokens costs more than it saves; 4 spills.
_LANE_CONFIGS = [triton.Config({"BLOCK_D": 32 * w, "BLOCK_L": bl, "PREFETCH": pf}, num_warps=w)
                 for w, bl, pf in [(1, 1, 0), (1, 1, 1), (1, 2, 0), (1, 2, 1), (2, 1, 1)]]
# The backward keeps its tile's tokens in-thread and one channel per lane: BLOCK_D = 32 * num_warps.
_BWD_CONFIGS = [triton.Config({"BLOCK_D": 32 * w}, num_warps=w) for w in (1, 2, 4, 8)]


def _prune(configs, named_args, **kwargs):
    """Drop configs whose channel block would straddle a B/C group, and forward tiles that do not divide CHUNK
    when the forward stores the backward's chunk states (it stores them at tile ends).

    Without stored states (inference, chunk-parallel pass 1) any tile is right, so no forward config is
    dropped there. Pruning by CHUNK regardless is what slowed the inference forward at Vim-Ti 224's
    (128, 384, 197, 16) from 0.212 to 0.520 ms on the H200 after 58b03a2: the kernel body is unchanged since
    63ab0ae, but CHUNK went 32 -> 16 and took the (BLOCK_D 4, BLOCK_L 32, 4 warps) config out of the
    autotuner's set, the one that splits that shape into the most warps (12,288 programs of 4 warps; the
    others give at most 6,144 warps, ~47 per SM), at the shape whose 1,536 channel blocks fill the H200
    worst. (The D = 768 shape, twice the channel blocks, kept its speed.)"""
    cap = named_args["BD_CAP"]
    chunk = kwargs["CHUNK"]
    aligned = bool(kwargs.get("STORE_STATES", True))
    keep = [c for c in configs if c.kwargs["BLOCK_D"] <= cap
            and ("BLOCK_L" not in c.kwargs or not aligned or chunk % c.kwargs["BLOCK_L"] == 0)]
    if keep:
        return keep
    fallback = dict(configs[0].kwargs)
    fallback["BLOCK_D"] = max(1, min(cap, 4))
    if "BLOCK_L" in fallback:
        fallback["BLOCK_L"] = chunk
    return [triton.Config(fallback, num_warps=1)]


_KEY = ["Dch", "L_BUCKET", "BATCH_BUCKET", "BD_CAP", "N", "HAS_Z", "HAS_D", "HAS_BIAS", "SOFTPLUS"]
_FWD_KEY = _KEY + ["EMIT_Y", "HAS_H0", "STORE_STATES"]
_BWD_KEY = _KEY + ["CARRY_ONLY", "HAS_CARRY"]

_fwd_tuned = triton.autotune(_FWD_CONFIGS, key=_FWD_KEY, prune_configs_by={"early_config_prune": _prune})(_fwd_kernel)
_lane_fwd_tuned = triton.autotune(_LANE_CONFIGS, key=_FWD_KEY,
                                  prune_configs_by={"early_config_prune": _prune})(_lane_fwd_kernel)
_bwd_tuned = triton.autotune(_BWD_CONFIGS, key=_BWD_KEY, prune_configs_by={"early_config_prune": _prune},
                             reset_to_zero=["dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr", "dbias_ptr"])(_bwd_kernel)


# Token-parallel tiles (tokens per thread, groups, channels per program, warps): a tile is tokens x groups
# tokens of BD channels x N states; groups go to lanes then warps, the rest of the tile stays in-thread
# (tokens x BD x NP x groups / (32 warps) fp32 per tensor per thread: <= 32 here, to stay out of spills).
# Long in-thread runs amortise the group scan, whose 4-tuple warp shuffles dominate the sm_90 code at 4
# tokens per thread (PTX of (4, 64, 1, 4): ~7 shuffles per (token, state); (16, 16, 1, 4): ~1.7).
TOKEN_TILES = [
    (4, 64, 1, 4), (8, 32, 1, 4), (16, 16, 1, 4), (8, 64, 1, 8), (16, 32, 1, 8), (32, 16, 1, 8),
    (16, 64, 1, 16), (32, 32, 1, 16), (16, 16, 2, 8), (8, 32, 2, 8), (16, 16, 4, 16), (4, 32, 4, 8),
]
_TILE_KEYS = ("TPT", "G", "BD")


def _tile_config(tile) -> triton.Config:
    tpt, groups, bd, warps = tile
    return triton.Config(dict(zip(_TILE_KEYS, (tpt, groups, bd))), num_warps=warps)


def _prune_tiles(configs, named_args, **kwargs):
    """Token-parallel tiles whose channel block stays inside one B/C group (a smallest one if none)."""
    keep = [c for c in configs if c.kwargs["BD"] <= named_args["BD_CAP"]]
    return keep or [_tile_config((4, 32, 1, 4))]


_TP_KEY = ["Dch", "L_BUCKET", "BATCH_BUCKET", "BD_CAP", "N", "HAS_Z", "HAS_D", "HAS_BIAS", "SOFTPLUS", "STORE_STATES"]
_tp_fwd_tuned = triton.autotune([_tile_config(t) for t in TOKEN_TILES], key=_TP_KEY,
                                prune_configs_by={"early_config_prune": _prune_tiles})(_tp_fwd_kernel)


def launch_tokens(fixed, tuned, args, rows, dim, cap, tile, autotune, **kw):
    """A token-parallel kernel over grid (channel blocks, rows): the forced ``tile``, else autotuned over
    TOKEN_TILES (GPU) or a small fixed tile (interpreter, ``autotune=False``) whose BD stays under ``cap``."""
    if tile is None and autotune and not interpreting():
        tuned[lambda m: (triton.cdiv(dim, m["BD"]), rows)](*args, **kw)
        return
    if tile is None:
        tile = (4, 8, max(1, min(cap, 2)), 1) if interpreting() else (4, 64, 1, 4)
    if tile[2] > cap:
        raise ValueError(f"selective_scan: tile channels per program {tile[2]} straddle a B/C group of {cap}")
    cfg = _tile_config(tile)
    fixed[(triton.cdiv(dim, tile[2]), rows)](*args, **kw, **cfg.kwargs, num_warps=cfg.num_warps)


def _fixed_config(cap: int, chunk: int, fwd: bool) -> dict:
    """One config without autotuning: small for the CPU interpreter, a sane default on the GPU
    (``autotune=False`` skips autotuning, e.g. for quick test runs)."""
    if interpreting():
        cfg = {"BLOCK_D": max(1, min(cap, 4))}
        if fwd:
            cfg["BLOCK_L"] = min(16, chunk)
        return cfg
    if fwd:
        bd = max(1, min(cap, 32))
        return {"BLOCK_D": bd, "BLOCK_L": min(4 if bd == 32 else 8, chunk), "num_warps": 1}
    return {"BLOCK_D": max(1, min(cap, 32)), "num_warps": 1}


def _lane_fixed_config(cap: int, chunk: int) -> dict:
    """The lane layout's config without autotuning: one warp of one channel per lane, one token per tile and
    prefetching on the GPU (BLOCK_D below 32 only where a B/C group is narrower); BLOCK_L 8 (or the chunk) in the
    interpreter, so an odd L ends inside a tile, a chunk of 16 spans two tiles and the prefetching walk's tile
    pairs end past the segment."""
    if interpreting():
        return {"BLOCK_D": max(1, min(cap, 4)), "BLOCK_L": min(8, chunk), "PREFETCH": 1}
    return {"BLOCK_D": max(1, min(cap, 32)), "BLOCK_L": 1, "PREFETCH": 1, "num_warps": 1}


def _bucket(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


# --------------------------------------------------------------------------------------------------------
# sequential vs chunk-parallel: the plan

FILL_PROGRAMS_PER_SM = 3                   # fewer (batch x 32-channel blocks) per SM than this: go chunked
                                           # (H200: 512 programs = 3.9/SM ran faster sequential, fwd and fwd+bwd)
TARGET_PROGRAMS_PER_SM = 16                # the chunk-parallel grid aims at this many programs per SM
SEG_MIN = 256                              # shortest automatic segment (pass 2 and launch overheads)
MAX_SEGS = 256                             # pass 2 holds all segments of a (channel, state) in registers

_SM_COUNT: dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 132 (an H100/H200) off CUDA."""
    if device.type != "cuda":
        return 132
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def scan_plan(batch: int, dim: int, L: int, n_state: int, sms: int, variant: str | None = None,
              seg: int | None = None, chunk: int | None = None) -> tuple[str, int]:
    """(variant, segment length) for a scan shape on a GPU with ``sms`` SMs.

    The sequential kernels run one program per (32-channel block, sequence) down all L tokens; when there
    are fewer than FILL_PROGRAMS_PER_SM of those per SM (small batch, few channels, long L: Vim at high
    resolution) most SMs idle, so L is cut into segments until the grid reaches TARGET_PROGRAMS_PER_SM.
    ``variant`` / ``seg`` (tokens per segment, rounded up) force a choice (the CPU interpreter has no SMs:
    there the caller asks for "sequential" unless forced). Segments are a multiple of the backward's
    ``chunk``, whose start states the forward stores.
    """
    chunk = chunk_size_for(n_state, chunk)
    variant = check_plan_args(variant, seg)
    programs = batch * triton.cdiv(dim, 32)
    if variant == "auto":
        chunked = programs < FILL_PROGRAMS_PER_SM * sms and L >= 2 * SEG_MIN
        variant = "chunked" if chunked else "sequential"
    if variant == "sequential":
        return "sequential", max(L, 1)
    if seg is None:
        want = triton.cdiv(TARGET_PROGRAMS_PER_SM * sms, programs)
        seg = max(SEG_MIN, triton.cdiv(L, want))
    seg = max(seg, triton.cdiv(L, MAX_SEGS), 1)
    seg = triton.cdiv(seg, chunk) * chunk
    return "chunked", seg


LANE_PROGRAMS_PER_SM = 32                  # the lane layout's chunk-parallel grid: one warp per program and
LANE_SEG_MIN = 128                         # 64-168 registers, so up to 12-32 resident per SM hide its loads


def lane_seg(batch: int, dim: int, L: int, sms: int, chunk: int) -> int:
    """Tokens per segment for the lane layout's chunk-parallel forward: more, shorter segments than
    ``scan_plan``'s (one-warp programs need more of them in flight to cover load latency). On the H200 at
    Vim-Ti 1024 px (16 rows x 12 channel blocks) segments of 192 tokens ran the two passes in 0.71 ms, of 384
    (the channel layout's rule) 0.85 ms, of 128 0.89 ms (benchmarks/results/scan_sweep_lane.md)."""
    programs = batch * triton.cdiv(dim, 32)
    want = triton.cdiv(LANE_PROGRAMS_PER_SM * sms, programs)
    seg = max(LANE_SEG_MIN, triton.cdiv(L, want), triton.cdiv(L, MAX_SEGS), 1)
    return triton.cdiv(seg, chunk) * chunk


def _common_args(u, B, C, chunk, seg):
    batch, dim, L = u.shape
    n = B.shape[2]
    gB, gC = B.shape[1], C.shape[1]
    cap = min(_block_d_cap(dim // gB, gB > 1), _block_d_cap(dim // gC, gC > 1))
    scalars = (dim, L, seg, dim // gB, dim // gC, B.stride(0), B.stride(1), C.stride(0), C.stride(1),
               _bucket(L), _bucket(batch), cap)
    meta = dict(N=n, NP=triton.next_power_of_2(n), CHUNK=chunk)
    return scalars, meta, cap


def _dummy(ref: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, device=ref.device, dtype=torch.float32)


def _launch(fixed, tuned, args, n_seg, batch, dim, cap, chunk, fwd, autotune, lane=False, **kw):
    """One scan kernel over grid (channel blocks, segments, batch), autotuned or with the fixed config
    (``lane``: the lane layout's, ``_lane_fixed_config``)."""
    if not autotune or interpreting():
        cfg = _lane_fixed_config(cap, chunk) if lane else _fixed_config(cap, chunk, fwd=fwd)
        fixed[(triton.cdiv(dim, cfg["BLOCK_D"]), n_seg, batch)](*args, **kw, **cfg)
    else:
        tuned[lambda m: (triton.cdiv(dim, m["BLOCK_D"]), n_seg, batch)](*args, **kw)


def _combine(A, dsum, x, out, final, backward):
    """Pass 2 (forward) / pass B (backward): carries between segments, ``out[b, c]`` for every segment."""
    batch, n_seg, dim, n = x.shape
    nseg_p = max(2, triton.next_power_of_2(n_seg))
    block = max(16, min(512, 2048 // nseg_p))                     # <= 16 fp32 per thread per tensor
    grid = (triton.cdiv(dim * n, block), batch)
    _combine_kernel[grid](A, dsum, x, out, final if final is not None else out, dim, n_seg, N=n, NSEG_P=nseg_p,
                          BLOCK=block, BACKWARD=backward, STORE_FINAL=final is not None, num_warps=4)


def lane_bc(t: torch.Tensor) -> torch.Tensor:
    """B or C [B, G, N, L] as the lane layout reads it: fp32 [B, G, L, N] (a token's N states contiguous), by
    one torch op (a strided copy that transposes and casts in one kernel). Costs a read of the bf16 tensor and
    a write + the scan's read of 2x its bytes: at Vim-Ti (N 16, D 384) ~1/24 of a [B, D, L] tensor each.

    (``copy_`` into a fresh contiguous buffer, not ``.to(float32, memory_format=contiguous_format)``: for an fp32
    input that returns the transposed view itself, whose suggested memory format is already "contiguous".)"""
    tt = t.transpose(-1, -2)
    return torch.empty(tt.shape, device=t.device, dtype=torch.float32).copy_(tt)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, store_states, plan, tile=None):
    """Launch the forward: one sequential pass, passes 1-3 of the chunk-parallel variant, (variant "token") the
    token-parallel kernel with ``tile`` (None: autotuned), or (variants "lane" / "lane_chunked") the sequential /
    chunk-parallel passes in the lane layout (``_lane_fwd_kernel``, on ``lane_bc`` copies of B and C).

    B, C are 4-D ``[B, G, N, L]``; all contiguous. Returns (y, last, states).

    Compiled, the lane layout runs the channel layout instead where B / C groups cap a program below a warp's
    32 channels (``cap`` < 32): on the H200 (Triton 3.6) its y came out wrong there (rel. RMS ~1 at 4 channels
    per group, right at 32, and right in the interpreter), and a program of fewer channels than lanes gains
    nothing from the lane layout anyway.
    """
    variant, seg, chunk, autotune = plan
    lane, variant = split_lane_variant(variant)
    batch, dim, L = u.shape
    n = A.shape[1]
    y = torch.empty_like(u)
    last = torch.empty(batch, dim, n, device=u.device, dtype=torch.float32)
    n_chunks = triton.cdiv(L, chunk)
    states = (torch.empty(batch, dim, n_chunks, n, device=u.device, dtype=torch.float32)
              if store_states else _dummy(u))
    scalars, meta, cap = _common_args(u, B, C, chunk, seg)
    lane = lane and (cap >= 32 or interpreting())
    dummy = _dummy(u)
    opt = (D if D is not None else dummy, z if z is not None else dummy,
           delta_bias if delta_bias is not None else dummy)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(softplus), REVERSE=bool(reverse))
    if lane:
        # the kernels read B / C from fp32 [B, G, L, N] copies; the group arithmetic stays that of B / C
        B, C = lane_bc(B), lane_bc(C)
        scalars = scalars[:5] + (B.stride(0), B.stride(1), C.stride(0), C.stride(1)) + scalars[9:]
    run = functools.partial(_launch, *((_lane_fwd_kernel, _lane_fwd_tuned) if lane else (_fwd_kernel, _fwd_tuned)),
                            batch=batch, dim=dim, cap=cap, chunk=chunk, fwd=True, autotune=autotune, lane=lane,
                            **(dict(sy_l=1) if lane else {}))
    if variant == "token":
        args = (u, delta, A, B, C, *opt, y, last, states, *(scalars[:2] + scalars[3:]))
        launch_tokens(_tp_fwd_kernel, _tp_fwd_tuned, args, batch, dim, cap, tile, autotune, **meta, **flags,
                      STORE_STATES=bool(store_states))
        return y, last, states
    if variant == "sequential":
        args = (u, delta, A, B, C, *opt, y, last, states, dummy, dummy, *scalars)
        run(args, 1, **meta, **flags, STORE_STATES=bool(store_states), EMIT_Y=True, STORE_END=True,
            HAS_H0=False)
        return y, last, states
    n_seg = triton.cdiv(L, seg)
    h_end = torch.empty(batch, n_seg, dim, n, device=u.device, dtype=torch.float32)
    dsum = torch.empty(batch, n_seg, dim, device=u.device, dtype=torch.float32)
    start = torch.empty_like(h_end)
    # pass 1: every segment from a zero state -> its end state and sum of Δ (reads u, Δ, B only)
    run((u, delta, A, B, C, *opt, y, h_end, states, dummy, dsum, *scalars), n_seg, **meta, **flags,
        STORE_STATES=False, EMIT_Y=False, STORE_END=True, HAS_H0=False)
    # pass 2: true start states (and the last state) by a scan over segments
    _combine(A, dsum, h_end, start, last, backward=False)
    # pass 3: rescan every segment from its start state -> y (and the backward's chunk states)
    run((u, delta, A, B, C, *opt, y, dummy, states, start, dummy, *scalars), n_seg, **meta, **flags,
        STORE_STATES=bool(store_states), EMIT_Y=True, STORE_END=False, HAS_H0=True)
    return y, last, states


def selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, states, plan, out=None):
    """Launch the backward (sequential, or passes A-C); returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    ``out``: (du, ddelta, dz, dA, dB, dC, dD, ddelta_bias) to write into instead of allocating, None where the
    input is absent; the accumulated ones (dA, dB, dC, dD, ddelta_bias) zeroed fp32, dB / dC with B's / C's
    strides (the fused mixer's backward hands views of stacked buffers)."""
    variant, seg, chunk, autotune = plan
    batch, dim, L = u.shape
    n = A.shape[1]
    dummy = _dummy(u)
    if out is None:
        f32 = dict(device=u.device, dtype=torch.float32)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA, dB, dC = torch.zeros(A.shape, **f32), torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
        dD = torch.zeros(dim, **f32) if D is not None else dummy
        dbias = torch.zeros(dim, **f32) if delta_bias is not None else dummy
    else:
        du, ddelta, dz, dA, dB, dC, dD, dbias = out
        dD = dD if D is not None else dummy
        dbias = dbias if delta_bias is not None else dummy
    scalars, meta, cap = _common_args(u, B, C, chunk, seg)
    opt = (D if D is not None else dummy, z if z is not None else dummy,
           delta_bias if delta_bias is not None else dummy)
    grads = (du, ddelta, dz if dz is not None else dummy, dA, dB, dC, dD, dbias)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(softplus), REVERSE=bool(reverse))
    run = functools.partial(_launch, _bwd_kernel, _bwd_tuned, batch=batch, dim=dim, cap=cap, chunk=chunk,
                            fwd=False, autotune=autotune)
    if variant == "sequential":
        run((u, delta, A, B, C, *opt, dout, states, dummy, dummy, *grads, *scalars, 1), 1, **meta, **flags,
            CARRY_ONLY=False, HAS_CARRY=False)
    else:
        n_seg = triton.cdiv(L, seg)
        local = torch.empty(batch, n_seg, dim, n, device=u.device, dtype=torch.float32)
        dsum = torch.empty(batch, n_seg, dim, device=u.device, dtype=torch.float32)
        carry = torch.empty_like(local)
        # pass A: each segment's adjoint from a zero carry -> the carry it hands back (reads Δ, C, dout, z)
        run((u, delta, A, B, C, *opt, dout, states, local, dsum, *grads, *scalars, 1), n_seg, **meta, **flags,
            CARRY_ONLY=True, HAS_CARRY=False)
        # pass B: true incoming carries by a reverse scan over segments
        _combine(A, dsum, local, carry, None, backward=True)
        # pass C: gradients of every segment in parallel
        run((u, delta, A, B, C, *opt, dout, states, carry, dummy, *grads, *scalars, 1), n_seg, **meta, **flags,
            CARRY_ONLY=False, HAS_CARRY=True)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz,
            dbias if delta_bias is not None else None)


# The launchers as opaque custom ops: torch.compile traces SelectiveScanFn around them (fusing the model's other
# ops, CUDA graphs) instead of stepping into Triton's launch code, which it cannot trace.
@torch.library.custom_op("speedzoo::selective_scan_fwd", mutates_args=())
def _fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], softplus: bool,
            reverse: bool, store_states: bool, variant: str, seg: int, chunk: int,
            autotune: bool, tile: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tile``: the token-parallel launch configuration, empty for the autotuner's choice."""
    return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, store_states,
                              (variant, seg, chunk, autotune), tuple(tile) or None)


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, store_states, variant, seg, chunk, autotune, tile):
    batch, dim, L = u.shape
    n = A.shape[1]
    f32 = dict(dtype=torch.float32, device=u.device)
    states = torch.empty(batch, dim, (L + chunk - 1) // chunk, n, **f32) if store_states else torch.empty(1, **f32)
    return torch.empty_like(u), torch.empty(batch, dim, n, **f32), states


@torch.library.custom_op("speedzoo::selective_scan_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
            C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
            states: torch.Tensor, softplus: bool, reverse: bool, variant: str, seg: int, chunk: int,
            autotune: bool) -> list[torch.Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in fp32 except du, ddelta, dz; an absent input's
    gradient is an empty tensor (custom ops return tensors only)."""
    grads = selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, states,
                               (variant, seg, chunk, autotune))
    return [g if g is not None else u.new_empty(0, dtype=torch.float32) for g in grads]


@_bwd_op.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, states, softplus, reverse, variant, seg, chunk, autotune):
    f32 = dict(dtype=torch.float32, device=u.device)

    def like(t, dtype=None):
        return torch.empty(t.shape, dtype=dtype or t.dtype, device=u.device) if t is not None else \
            torch.empty(0, **f32)

    return [torch.empty_like(u), torch.empty_like(delta), like(A, torch.float32), like(B, torch.float32),
            like(C, torch.float32), like(D, torch.float32), like(z), like(delta_bias, torch.float32)]


class SelectiveScanFn(torch.autograd.Function):
    """Triton forward; backward recomputes states per chunk from the chunk-start states saved by forward.

    ``plan`` / ``bwd_plan`` = (variant, segment, chunk, autotune) from :func:`scan_plan` and
    :func:`chunk_size_for` (the forward's variant may be "token", with its ``tile``); both share the chunk, so
    the backward reads the stored states as the forward wrote them.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, plan, bwd_plan, tile):
        need_grad = any(ctx.needs_input_grad[:8])
        y, last, states = torch.ops.speedzoo.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                                                bool(delta_softplus), bool(reverse), need_grad, *plan,
                                                                list(tile or ()))
        ctx.mark_non_differentiable(last)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.flags = (bool(delta_softplus), bool(reverse), bwd_plan)
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        softplus, reverse, plan = ctx.flags
        du, ddelta, dA, dB, dC, dD, dz, dbias = torch.ops.speedzoo.selective_scan_bwd(
            dy.contiguous(), u, delta, A, B, C, D, z, delta_bias, states, softplus, reverse, *plan)
        return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D.dtype) if D is not None else None, dz if z is not None else None,
                dbias.to(delta_bias.dtype) if delta_bias is not None else None, None, None, None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          reverse=False, variant=None, seg=None, chunk=None, autotune=None, layout=None, tile=None):
    """Triton selective scan on validated, contiguous inputs with 4-D B/C; returns (y, last_state).

    ``variant`` ("auto", "sequential", "chunked"), ``seg`` and ``chunk`` override :func:`scan_plan`'s and
    :func:`chunk_size_for`'s choice; ``autotune`` (default: on, except in the interpreter) picks the launch
    configuration per shape. The interpreter has no SMs to fill, so "auto" means sequential there.
    ``layout="token"`` runs the forward token-parallel (``tile`` forces its configuration; the backward keeps
    its variant); ``layout="lane"`` runs the forward's passes (same variant and segments) in the lane layout;
    "auto" and "channel" keep the channel layout.
    """
    batch, dim, L = u.shape
    if interpreting() and check_plan_args(variant, seg) == "auto":
        variant = "sequential"
    layout, tile = check_layout(layout, tile)
    n = A.shape[1]
    tune = bool(autotune is None or autotune) and not interpreting()
    c = chunk_size_for(n, chunk)
    bwd_plan = (*scan_plan(batch, dim, L, n, sm_count(u.device), variant, seg, chunk), c, tune)
    if layout == "token":
        plan = ("token", max(L, 1), c, tune)
    elif layout == "lane":
        plan = (lane_variant(bwd_plan[0]), *bwd_plan[1:])
    else:
        plan = bwd_plan
    return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, plan, bwd_plan, tile)
