"""Triton path of the fused bidirectional Mamba mixer (Vim's v2 block after ``in_proj``), forward and backward.

Unfused, each direction runs conv+SiLU, x_proj, dt_proj, two B/C ``.contiguous()`` copies and a scan, then a
lerp merges the two [B, E, L] outputs before out_proj: per layer 11 launches and ~14 E-wide activation
passes over HBM. Fused:

1. ``_biconv_fwd_kernel``: ONE pass over x [B, E, L] writes both directions' SiLU(conv) into xc [2, B, E, L]
   (the backward direction's causal-on-reversed conv is the anti-causal conv by index, so the 2W-1 shifted
   loads of x serve both: x is read once instead of twice).
2. x_proj of both directions as one batched GEMM over the stacked weights [2, R+2N, E] (x_dbl [2, B, R+2N, L]),
   dt_proj likewise ([2, E, R] on the dt rows, a strided view of x_dbl: no copy).
   Why dt stays a GEMM, not a dot inside the scan: at Vim-Ti (E = 384, R = 12, N = 16) the [2, B, E, L] delta
   costs 2 B write + 2 B read per (direction, channel, token) in bf16; computing it in the scan instead
   reads R = 12 dt rows per token (shared by the program's channels: 24 B per token per channel block, i.e.
   < 1 B per channel) but adds 2R = 24 FLOP per element to a kernel already bound by its N exps, and its
   backward needs d(dt_low) = W_dt^T d(delta) and dW_dt reductions over B x L inside the scan backward.
   The GEMM keeps the backward on the existing scan machinery; fusing it saves ~4 B/element (~13% of the
   layer's traffic at 1024 px): the next step once the fused path is measured.
3. ``_biscan_fwd_kernel``: ONE scan launch for both directions (grid axis 2 = direction x sequence; the
   backward direction walks token ``L-1-p`` at step ``p``: reverse by index, no flips). Each program reads
   u = xc, delta, and B, C straight out of x_dbl with strides (no copies), applies D skip and the SiLU(z) gate
   (z is shared by both directions) and writes its direction's y into y2 [B, L, 2, E] (channels contiguous).
4. The merge is folded into out_proj: out = [W/2 | W/2] @ [y_fwd; y_bwd], one GEMM with K = 2E over y2
   viewed as [B, L, 2E]. The lerp pass (read 2, write 1) and out_proj's read of its result (4 E-wide passes)
   become out_proj reading 2; the GEMM's extra 2 x B L E dim FLOPs cost ~16 us at 1024 px batch 8.

Backward by recomputation and reuse: the scan backward (``speedzoo::bimamba_scan_bwd``, ``biscan_bwd``) is the
selective-scan family's own backward (sequential or chunk-parallel along L) run once per direction on views of
the stacked tensors and the chunk states this forward stored in its layout, B and C read in place from x_dbl and
every gradient written into stacked buffers (two memsets, no stacking copies); the conv backward is the conv
family's two-direction kernel (``speedzoo::bidirectional_conv1d_bwd``, which recomputes the pre-activation from x
and writes dx once).

The launchers are custom ops (``speedzoo::bimamba_conv_fwd``, ``speedzoo::bimamba_scan_fwd``), so
torch.compile / CUDA graphs capture the whole mixer. Math in fp32, states fp32, int64 base offsets.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.causal_conv1d.triton import _blocks as _conv_blocks
from kernels.common import interpreting, needs_grad
from kernels.selective_scan.triton import (
    _FWD_CONFIGS,
    _LANE_CONFIGS,
    _bucket,
    _combine,
    _delta,
    _dummy,
    _lane_walk,
    _launch,
    _prune,
    _prune_tiles,
    _scan_tile,
    _silu,
    _tile_config,
    _tp_walk,
    TOKEN_TILES,
    check_layout,
    chunk_size_for,
    lane_seg,
    launch_tokens,
    scan_plan,
    selective_scan_bwd,
    sm_count,
)
from kernels.selective_scan.options import lane_variant, split_lane_variant

__all__ = ["bimamba_inner_triton", "BiConvFn", "BiScanFn", "merged_out_proj", "mixer_plans"]


@triton.jit
def _biconv_fwd_kernel(
    X, Wt, Bias, Y,
    D, L,
    sxb, sxd, sxl,
    sy_dir, syb, syd, syl,
    W: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Both directions of SiLU(depthwise conv) from one read of x: causal taps x[t-(W-1)+k] with weight[0],
    anti-causal taps x[t+(W-1)-k] with weight[1]; shift s = tap offset serves tap k = s+W-1 (s <= 0, causal)
    and k = W-1-s (s >= 0, anti-causal)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < D
    x_rows = X + pid_b * sxb + offs_d.to(tl.int64)[:, None] * sxd
    acc_f = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    if HAS_BIAS:
        acc_f += tl.load(Bias + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
        acc_b += tl.load(Bias + D + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for j in tl.static_range(2 * W - 1):
        src = offs_l + (j - (W - 1))
        m = mask_d[:, None] & ((src >= 0) & (src < L))[None, :]
        xv = tl.load(x_rows + src.to(tl.int64)[None, :] * sxl, mask=m, other=0.0).to(tl.float32)
        if j <= W - 1:
            wk = tl.load(Wt + offs_d * W + j, mask=mask_d, other=0.0).to(tl.float32)
            acc_f += wk[:, None] * xv
        if j >= W - 1:
            wk = tl.load(Wt + (D + offs_d) * W + (2 * (W - 1) - j), mask=mask_d, other=0.0).to(tl.float32)
            acc_b += wk[:, None] * xv
    acc_f = acc_f * tl.sigmoid(acc_f)
    acc_b = acc_b * tl.sigmoid(acc_b)
    y_ptrs = Y + pid_b * syb + offs_d.to(tl.int64)[:, None] * syd + offs_l.to(tl.int64)[None, :] * syl
    mask = mask_d[:, None] & (offs_l < L)[None, :]
    tl.store(y_ptrs, acc_f.to(Y.dtype.element_ty), mask=mask)
    tl.store(y_ptrs + sy_dir, acc_b.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _biscan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, x_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, end_ptr, states_ptr, h0_ptr, dsum_ptr,
    batch, Dch, L, SEG, R, sx_row, sx_n, sy_b, sy_l, sy_dir,
    L_BUCKET, BATCH_BUCKET, BD_CAP,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    STORE_STATES: tl.constexpr, EMIT_Y: tl.constexpr, STORE_END: tl.constexpr, HAS_H0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """BLOCK_D channels of one (direction, sequence) row over segment ``program_id(1)``; row r = dir * batch + b.

    The selective-scan forward (``kernels.selective_scan.triton._fwd_kernel``: token-major [BLOCK_L, NP,
    BLOCK_D] tiles, one associative scan per tile, the same pass-1 / pass-3 switches of the chunk-parallel
    variant) with the mixer's addressing: u, delta [2, B, E, L]; z [B, E, L] shared by both directions;
    A [2, E, N], D and delta_bias [2, E]; B and C the rows R..R+N and R+N..R+2N of x_dbl[r]; y at
    y2[b, t, dir, e]. Chunk states go to [2, B, E, n_chunks, N], so states[dir] is what the scan backward
    reads. Softplus on delta and the z gate always apply (the Vim block has both).
    """
    pid_d = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_seg = tl.num_programs(1)
    pid_r = tl.program_id(2).to(tl.int64)
    rev = pid_r // batch
    pid_b = pid_r % batch
    d0 = pid_d * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < Dch
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]

    pdir = rev * Dch + offs_d                                                      # [BD] in [2, E] params
    A2 = tl.load(A_ptr + pdir[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32) * 1.4426950408889634
    Dv = tl.load(D_ptr + pdir, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + pdir, mask=mask_d, other=0.0).to(tl.float32)

    col = pid_r * Dch * L + offs_d.to(tl.int64)[None, :] * L                       # [1, BD] in u, delta
    colz = pid_b * Dch * L + offs_d.to(tl.int64)[None, :] * L
    colB = pid_r * sx_row + (R + offs_n.to(tl.int64))[None, :] * sx_n             # [1, NP] in x_dbl
    colC = colB + N * sx_n
    rowy = y_ptr + pid_b * sy_b + rev * sy_dir + offs_d.to(tl.int64)[None, :]
    n_chunks = tl.cdiv(L, CHUNK)
    st_off = (pid_r * Dch + offs_d.to(tl.int64)[None, :]) * n_chunks * N + offs_n[:, None]   # [NP, BD]
    seg_row = pid_r * n_seg + pid_s
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
        t = tl.where(rev == 1, L - 1 - p, p)
        mask = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        u = tl.load(u_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)        # [BL, BD]
        _, dt = _delta(dt_ptr, col + t[:, None], mask, bias[None, :], True, True)
        Bt = tl.load(x_ptr + colB + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)   # [BL, NP]

        hs, h = _scan_tile(u, dt, Bt, A2, h, offs_l, BLOCK_L)

        if EMIT_Y:
            Ct = tl.load(x_ptr + colC + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[:, :, None], axis=1) + Dv[None, :] * u                # [BL, BD]
            zz = tl.load(z_ptr + colz + t[:, None], mask=mask, other=0.0).to(tl.float32)
            y = y * _silu(zz)
            tl.store(rowy + t.to(tl.int64)[:, None] * sy_l, y.to(y_ptr.dtype.element_ty), mask=mask)
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


@triton.jit(do_not_specialize=["su_e", "sz_e", "sy_e"])
def _biscan_lane_kernel(
    u_ptr, dt_ptr, A_ptr, bc_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, end_ptr, states_ptr, h0_ptr, dsum_ptr,
    batch, Dch, L, SEG, su_r, su_e, su_l, sz_b, sz_e, sz_l, sy_b, sy_l, sy_dir, sy_e,
    L_BUCKET, BATCH_BUCKET, BD_CAP,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    STORE_STATES: tl.constexpr, EMIT_Y: tl.constexpr, STORE_END: tl.constexpr, HAS_H0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, PREFETCH: tl.constexpr,
):
    """Lane layout of ``_biscan_fwd_kernel`` (same grid, switches, y2, chunk / segment states):
    ``kernels.selective_scan.triton._lane_walk`` with the mixer's addressing. B|C come transposed as fp32
    bc [2, B, L, 2N] (``lane_bc``). u and Δ share strides (row r = dir x batch + b, channel, token), z has its
    own (sequence, channel, token): channel-last storage (channel stride 1) makes each token's load one 64-B
    line per warp instead of 32 lines (lanes sit on channels). The channel strides (and y2's, ``sy_e`` = 1) are
    left unspecialised so that the coalescer does not see the channel contiguity and loads / stores straight
    in the compute layout (lanes on channels, 64 B per warp and token) instead of converting through shared
    memory."""
    pid_d = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_seg = tl.num_programs(1)
    pid_r = tl.program_id(2).to(tl.int64)
    rev = (pid_r // batch).to(tl.int32)                                            # int32 token arithmetic
    pid_b = pid_r % batch
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < Dch
    pdir = rev * Dch + offs_d                                                      # [BD] in [2, E] params
    A2 = tl.load(A_ptr + pdir[:, None] * N + offs_n[None, :], mask=mask_d[:, None] & (offs_n < N)[None, :],
                 other=0.0).to(tl.float32) * 1.4426950408889634                    # [BD, NP]
    Dv = tl.load(D_ptr + pdir, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + pdir, mask=mask_d, other=0.0).to(tl.float32)
    d64 = offs_d.to(tl.int64)
    B_row = bc_ptr + pid_r * L * (2 * N)
    st_row = (pid_r * Dch + d64) * tl.cdiv(L, CHUNK) * N
    p0 = pid_s * SEG
    _lane_walk(u_ptr, dt_ptr, z_ptr, y_ptr, B_row, B_row + N, states_ptr, h0_ptr, end_ptr, dsum_ptr,
               pid_r * su_r + d64 * su_e, pid_b * sz_b + d64 * sz_e, pid_b * sy_b + rev * sy_dir + d64 * sy_e,
               su_l, sz_l, sy_l, st_row, (pid_r * n_seg + pid_s) * Dch + d64, A2, Dv, bias, p0,
               tl.minimum(L, p0 + SEG), L, rev, mask_d, N, NP, CHUNK, 2 * N, True, True, True, True, STORE_STATES,
               EMIT_Y, STORE_END, HAS_H0, BLOCK_L, PREFETCH)


@triton.jit
def _biscan_tp_kernel(
    u_ptr, dt_ptr, A_ptr, x_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, states_ptr,
    batch, Dch, L, R, sx_row, sx_n,
    L_BUCKET, BATCH_BUCKET, BD_CAP,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr, STORE_STATES: tl.constexpr,
    BD: tl.constexpr, TPT: tl.constexpr, G: tl.constexpr,
):
    """Token-parallel layout of the two-direction scan: BD channels of one (direction, sequence) row
    r = dir * batch + b over all L (``kernels.selective_scan.triton._tp_walk``), grid (cdiv(E, BD), 2 batch).

    Same inputs and chunk states as ``_biscan_fwd_kernel``; y goes to y [B, 2, E, L] (tokens contiguous, so a
    one-channel program writes whole lines), which out_proj reads as the transposed operand [B, L, 2E]."""
    pid_d = tl.program_id(0)
    pid_r = tl.program_id(1).to(tl.int64)
    rev = pid_r // batch
    pid_b = pid_r % batch
    offs_d = pid_d * BD + tl.arange(0, BD)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < Dch
    mask_nd = mask_d[:, None] & (offs_n < N)[None, :]
    pdir = rev * Dch + offs_d                                                      # [BD] in [2, E] params
    A2 = tl.load(A_ptr + pdir[:, None] * N + offs_n[None, :], mask=mask_nd, other=0.0).to(tl.float32) * 1.4426950408889634
    Dv = tl.load(D_ptr + pdir, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + pdir, mask=mask_d, other=0.0).to(tl.float32)
    d64 = offs_d.to(tl.int64)
    col = (pid_r * Dch + d64) * L
    colz = (pid_b * Dch + d64) * L
    coly = ((pid_b * 2 + rev) * Dch + d64) * L
    B_row = x_ptr + pid_r * sx_row + R * sx_n
    st_off = (pid_r * Dch + d64)[:, None] * (tl.cdiv(L, CHUNK) * N) + offs_n[None, :]
    h = tl.zeros([BD, NP], dtype=tl.float32)
    if STORE_STATES:
        tl.store(states_ptr + st_off, h, mask=mask_nd)
    _tp_walk(u_ptr, dt_ptr, z_ptr, y_ptr, B_row, B_row + N * sx_n, sx_n, states_ptr, col, colz, coly, st_off, A2,
             Dv, bias, h, L, rev, mask_d, N, NP, CHUNK, True, True, True, STORE_STATES, TPT, G)


_biscan_tp_tuned = triton.autotune([_tile_config(t) for t in TOKEN_TILES],
                                   key=["Dch", "L_BUCKET", "BATCH_BUCKET", "N", "STORE_STATES"],
                                   prune_configs_by={"early_config_prune": _prune_tiles})(_biscan_tp_kernel)

_SCAN_KEY = ["Dch", "L_BUCKET", "BATCH_BUCKET", "N", "EMIT_Y", "HAS_H0", "STORE_STATES"]
_biscan_tuned = triton.autotune(_FWD_CONFIGS, key=_SCAN_KEY,
                                prune_configs_by={"early_config_prune": _prune})(_biscan_fwd_kernel)
_biscan_lane_tuned = triton.autotune(_LANE_CONFIGS, key=_SCAN_KEY,
                                     prune_configs_by={"early_config_prune": _prune})(_biscan_lane_kernel)


def lane_bc(x_dbl: torch.Tensor, rank: int) -> torch.Tensor:
    """B|C of both directions as the lane kernel reads them: x_dbl[:, :, R:] [2, B, 2N, L] -> fp32 [2, B, L, 2N]
    (token t's B at [.., t, :N], C at [.., t, N:]), by one torch op (a strided copy that transposes and casts in
    one kernel; 2 x 4 B per (direction, token, state), 1/12 of one [2, B, E, L] bf16 tensor's bytes at Vim-Ti).
    ``copy_`` into a fresh buffer: ``.to(..., memory_format=contiguous_format)`` may return a view (fp32 input)."""
    bc = x_dbl[:, :, rank:].transpose(2, 3)
    return torch.empty(bc.shape, device=x_dbl.device, dtype=torch.float32).copy_(bc)


def mixer_plans(batch: int, dim: int, L: int, n_state: int, device: torch.device, variant: str | None = None,
                seg: int | None = None, chunk: int | None = None, autotune: bool | None = None,
                layout: str | None = None, inference: bool = False):
    """(forward plan, backward plan), each (variant, seg, chunk, autotune) as the selective-scan ops take it.

    The forward runs both directions in one grid (2 x batch rows), the backward one direction at a time, so
    each gets the selective scan's own occupancy rule (``scan_plan``) for its row count; both share the
    chunk (tokens per stored state) since the backward reads the states the forward wrote. ``layout="token"``
    makes the forward's variant "token" (one token-parallel pass); ``layout="lane"`` makes it "lane" /
    "lane_chunked" (the same passes in the lane layout, chunk-parallel over the shorter segments of
    ``lane_seg`` unless ``seg`` is given). "auto" takes the lane layout where the plan is chunk-parallel or
    the forward stores no chunk states (``inference``), the channel layout for a sequential training forward.
    On the H200 (benchmarks/results/scan_layouts_lane2.md, one run, CUDA graphs): the fused mixer's forward
    lane / channel 1.23x at 224 px b64 and 1024 px b8, 1.27x at 1248 px; with the backward (states stored)
    0.87x at 224 px, 1.00x / 0.99x at 1024 / 1248 px."""
    if interpreting() and (variant or "auto").lower() == "auto":
        variant = "sequential"                    # the interpreter has no SMs to fill
    sms = sm_count(device)
    c = chunk_size_for(n_state, chunk)
    tune = bool(autotune is None or autotune) and not interpreting()
    fwd = (*scan_plan(2 * batch, dim, L, n_state, sms, variant, seg, c), c, tune)
    bwd = (*scan_plan(batch, dim, L, n_state, sms, variant, seg, c), c, tune)
    layout = check_layout(layout)[0]
    if layout == "auto":
        layout = "lane" if fwd[0] == "chunked" or inference else "channel"
    if layout == "token":
        fwd = ("token", max(L, 1), c, tune)
    elif layout == "lane":
        if fwd[0] == "chunked" and seg is None:
            fwd = (fwd[0], lane_seg(2 * batch, dim, L, sms, c), c, tune)
        fwd = (lane_variant(fwd[0]), *fwd[1:])
    return fwd, bwd


def biscan_fwd(xc, delta, A, x_dbl, D, z, bias, rank, store_states, plan, tile=None):
    """Launch the two-direction scan (one sequential pass, passes 1-3 of the chunk-parallel variant, or the
    token-parallel pass with ``tile``, None: autotuned); variants "lane" / "lane_chunked" run the sequential /
    chunk-parallel passes in the lane layout (``_biscan_lane_kernel`` on ``lane_bc(x_dbl)``).

    xc, delta [2, B, E, L], x_dbl [2, B, R+2N, L], z [B, E, L], any strides: the lane kernels read u, Δ and z
    through theirs (channel-last views, see ``bimamba_inner_triton``), the others get contiguous copies where
    the inputs are not. A [2, E, N], D, bias [2, E] fp32. Returns (y2 in xc's dtype: [B, L, 2, E], or
    [B, 2, E, L] for the token layout; chunk states [2, B, E, n_chunks, N] fp32 or a dummy)."""
    variant, seg, chunk, autotune = plan
    lane, variant = split_lane_variant(variant)
    if not lane or xc.stride() != delta.stride() or xc.stride(0) != xc.shape[1] * xc.stride(1):
        xc, delta = xc.contiguous(), delta.contiguous()
    if not lane:
        x_dbl, z = x_dbl.contiguous(), z.contiguous()
    _, batch, dim, L = xc.shape
    n = A.shape[-1]
    rows = 2 * batch
    states = (torch.empty(2, batch, dim, triton.cdiv(L, chunk), n, device=xc.device, dtype=torch.float32)
              if store_states else _dummy(xc))
    dummy = _dummy(xc)
    if variant == "token":
        y = torch.empty(batch, 2, dim, L, device=xc.device, dtype=xc.dtype)
        args = (xc, delta, A, x_dbl, D, z, bias, y, states, batch, dim, L, rank, x_dbl.stride(1), x_dbl.stride(2),
                _bucket(L), _bucket(rows), 1 << 30)
        launch_tokens(_biscan_tp_kernel, _biscan_tp_tuned, args, rows, dim, 1 << 30, tile, autotune, N=n,
                      NP=triton.next_power_of_2(n), CHUNK=chunk, STORE_STATES=bool(store_states))
        return y, states
    y = torch.empty(batch, L, 2, dim, device=xc.device, dtype=xc.dtype)
    tail = (_bucket(L), _bucket(rows), 1 << 30)
    meta = dict(N=n, NP=triton.next_power_of_2(n), CHUNK=chunk)
    if lane:
        scalars = (batch, dim, L, seg, xc.stride(1), xc.stride(2), xc.stride(3), *z.stride(), *y.stride(), *tail)
        head = (xc, delta, A, lane_bc(x_dbl, rank), D, z, bias, y)
        kernels = (_biscan_lane_kernel, _biscan_lane_tuned)
    else:
        scalars = (batch, dim, L, seg, rank, x_dbl.stride(1), x_dbl.stride(2), y.stride(0), y.stride(1),
                   y.stride(2), *tail)
        head = (xc, delta, A, x_dbl, D, z, bias, y)
        kernels = (_biscan_fwd_kernel, _biscan_tuned)
    run = functools.partial(_launch, *kernels, batch=rows, dim=dim, cap=1 << 30, chunk=chunk, fwd=True,
                            autotune=autotune, lane=lane)
    if variant == "sequential":
        run((*head, dummy, states, dummy, dummy, *scalars), 1, **meta, STORE_STATES=bool(store_states),
            EMIT_Y=True, STORE_END=False, HAS_H0=False)
        return y, states
    n_seg = triton.cdiv(L, seg)
    h_end = torch.empty(2, batch, n_seg, dim, n, device=xc.device, dtype=torch.float32)
    dsum = torch.empty(2, batch, n_seg, dim, device=xc.device, dtype=torch.float32)
    start = torch.empty_like(h_end)
    # pass 1: every segment from a zero state -> its end state and sum of delta
    run((*head, h_end, states, dummy, dsum, *scalars), n_seg, **meta, STORE_STATES=False, EMIT_Y=False,
        STORE_END=True, HAS_H0=False)
    # pass 2: the selective scan's combine over segments, per direction (A differs)
    for d in range(2):
        _combine(A[d], dsum[d], h_end[d], start[d], None, backward=False)
    # pass 3: rescan every segment from its true start state -> y (and the backward's chunk states)
    run((*head, dummy, states, start, dummy, *scalars), n_seg, **meta, STORE_STATES=bool(store_states),
        EMIT_Y=True, STORE_END=False, HAS_H0=True)
    return y, states


# The launchers as opaque custom ops, so torch.compile traces the autograd Functions around them.
@torch.library.custom_op("speedzoo::bimamba_conv_fwd", mutates_args=())
def _conv_fwd_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 channels_last: bool = False) -> torch.Tensor:
    """SiLU(conv) of both directions: x [B, E, L] (any strides), weight [2, E, W], bias [2, E] -> xc
    [2, B, E, L], or with ``channels_last`` [2, B, L, E] (channels contiguous: the lane scan's and the
    token-major GEMMs' layout)."""
    bsz, d, length = x.shape
    width = weight.shape[-1]
    y = torch.empty(2, bsz, *((length, d) if channels_last else (d, length)), device=x.device, dtype=x.dtype)
    sy_d, sy_l = (y.stride(3), y.stride(2)) if channels_last else (y.stride(2), y.stride(3))
    if channels_last:                              # rows of 64 channels: 128-B bf16 stores per token
        block_d = min(64, triton.next_power_of_2(d))
        block_l, warps = max(16, 2048 // block_d), 4
    else:
        block_d, block_l, warps = _conv_blocks(d, length)
    grid = (bsz, triton.cdiv(d, block_d), triton.cdiv(length, block_l))
    _biconv_fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, y, d, length, *x.stride(), y.stride(0), y.stride(1),
        sy_d, sy_l, W=width, HAS_BIAS=bias is not None, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps,
    )
    return y


@_conv_fwd_op.register_fake
def _(x, weight, bias, channels_last=False):
    bsz, d, length = x.shape
    return x.new_empty((2, bsz, length, d) if channels_last else (2, bsz, d, length))


@torch.library.custom_op("speedzoo::bimamba_scan_fwd", mutates_args=())
def _scan_fwd_op(xc: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, x_dbl: torch.Tensor, D: torch.Tensor,
                 z: torch.Tensor, bias: torch.Tensor, rank: int, store_states: bool, variant: str, seg: int,
                 chunk: int, autotune: bool, tile: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``tile``: the token layout's launch configuration, empty for the autotuner's choice."""
    return biscan_fwd(xc, delta, A, x_dbl, D, z, bias, rank, store_states, (variant, seg, chunk, autotune),
                      tuple(tile) or None)


@_scan_fwd_op.register_fake
def _(xc, delta, A, x_dbl, D, z, bias, rank, store_states, variant, seg, chunk, autotune, tile):
    _, batch, dim, L = xc.shape
    f32 = dict(dtype=torch.float32, device=xc.device)
    states = (torch.empty(2, batch, dim, (L + chunk - 1) // chunk, A.shape[-1], **f32) if store_states
              else torch.empty(1, **f32))
    return xc.new_empty((batch, 2, dim, L) if variant == "token" else (batch, L, 2, dim)), states


class BiConvFn(torch.autograd.Function):
    """x [B, E, L] -> xc [2, B, E, L] ([2, B, L, E] with ``channels_last``); backward: the conv family's
    two-direction backward (one kernel, dx summed; it takes any strides)."""

    @staticmethod
    def forward(ctx, x, weight, bias, channels_last=False):
        w = weight.contiguous()
        b = bias.contiguous() if bias is not None else None
        ctx.save_for_backward(x, w, b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.channels_last = channels_last
        return torch.ops.speedzoo.bimamba_conv_fwd(x, w, b, channels_last)

    @staticmethod
    def backward(ctx, dy):
        x, w, b = ctx.saved_tensors
        if ctx.channels_last:
            dy = dy.transpose(2, 3)
        dx, dw, db = torch.ops.speedzoo.bidirectional_conv1d_bwd(x, w, b, dy, True)
        return dx, dw.to(ctx.dtypes[0]), db.to(ctx.dtypes[1]) if b is not None else None, None


class BiScanFn(torch.autograd.Function):
    """Both directions' gated scans -> y2 [B, L, 2, E] ([B, 2, E, L] when the forward plan is "token");
    backward: the selective-scan backward per direction."""

    @staticmethod
    def forward(ctx, xc, delta, A, x_dbl, D, z, bias, rank, plan, bwd_plan, tile=None):
        need_grad = any(ctx.needs_input_grad[:7])
        y, states = torch.ops.speedzoo.bimamba_scan_fwd(xc, delta, A, x_dbl, D, z, bias, rank, need_grad, *plan,
                                                        list(tile or ()))
        if need_grad:
            ctx.save_for_backward(xc, delta, A, x_dbl, D, z, bias, states)
        ctx.rank, ctx.bwd_plan, ctx.tokens = rank, bwd_plan, plan[0] == "token"
        return y

    @staticmethod
    def backward(ctx, dy):
        xc, delta, A, x_dbl, D, z, bias, states = ctx.saved_tensors
        xc, delta, z = xc.contiguous(), delta.contiguous(), z.contiguous()     # channel-last views: copies
        dy_t = (dy.transpose(0, 1) if ctx.tokens else dy.permute(2, 0, 3, 1)).contiguous()   # -> [2, B, E, L]
        dxc, ddelta, small, d_xdbl, dz = torch.ops.speedzoo.bimamba_scan_bwd(dy_t, xc, delta, A, x_dbl, D, z, bias,
                                                                             states, ctx.rank, *ctx.bwd_plan)
        dA, dD, dbias = _split_small(small, A.shape)
        return (dxc, ddelta, dA.to(A.dtype), d_xdbl, dD.to(D.dtype), dz, dbias.to(bias.dtype), None, None, None, None)


def _split_small(small: torch.Tensor, a_shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dA [2, E, N], dD [2, E], d_bias [2, E] as views of the one fp32 buffer ``biscan_bwd`` accumulates them in."""
    two, dim, n = a_shape
    dA, dD, dbias = small.split([two * dim * n, two * dim, two * dim])
    return dA.view(two, dim, n), dD.view(two, dim), dbias.view(two, dim)


def biscan_bwd(dy, xc, delta, A, x_dbl, D, z, bias, states, rank, plan):
    """Both directions' selective-scan backward into stacked gradients, with few launches: dy, xc, delta
    [2, B, E, L] and z [B, E, L] contiguous, x_dbl [2, B, R+2N, L]. B and C are read in place from x_dbl, du /
    ddelta / dz land in [2, ...] tensors, and the accumulated gradients share two zeroed fp32 buffers: ``small``
    (dA, dD, d_bias, see ``_split_small``) and one of x_dbl's shape whose B|C rows get dB|dC (its dt rows stay
    0: that part of x_dbl's gradient flows through delta's GEMM). Returns (dxc, ddelta, small, d_xdbl in x_dbl's
    dtype, dz summed over the directions)."""
    x_dbl = x_dbl.contiguous()
    _, dim, n = A.shape
    f32 = dict(device=xc.device, dtype=torch.float32)
    small = torch.zeros(2 * dim * (n + 2), **f32)
    dA, dD, dbias = _split_small(small, A.shape)
    d_xdbl = torch.zeros(x_dbl.shape, **f32)
    dxc, ddelta = torch.empty_like(xc), torch.empty_like(delta)
    dz2 = torch.empty((2, *z.shape), device=z.device, dtype=z.dtype)
    for d in range(2):
        bc, dbc = x_dbl[d, :, rank:].unsqueeze(1), d_xdbl[d, :, rank:].unsqueeze(1)      # [B, 1, 2N, L] views
        selective_scan_bwd(dy[d], xc[d], delta[d], A[d], bc[:, :, :n], bc[:, :, n:], D[d], z, bias[d], True, bool(d),
                           states[d], plan, out=(dxc[d], ddelta[d], dz2[d], dA[d], dbc[:, :, :n], dbc[:, :, n:], dD[d],
                                                 dbias[d]))
    return dxc, ddelta, small, d_xdbl.to(x_dbl.dtype), dz2[0] + dz2[1]


@torch.library.custom_op("speedzoo::bimamba_scan_bwd", mutates_args=())
def _scan_bwd_op(dy: torch.Tensor, xc: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, x_dbl: torch.Tensor,
                 D: torch.Tensor, z: torch.Tensor, bias: torch.Tensor, states: torch.Tensor, rank: int, variant: str,
                 seg: int, chunk: int, autotune: bool) -> list[torch.Tensor]:
    return list(biscan_bwd(dy, xc, delta, A, x_dbl, D, z, bias, states, rank, (variant, seg, chunk, autotune)))


@_scan_bwd_op.register_fake
def _(dy, xc, delta, A, x_dbl, D, z, bias, states, rank, variant, seg, chunk, autotune):
    _, dim, n = A.shape
    return [torch.empty_like(xc), torch.empty_like(delta), A.new_empty(2 * dim * (n + 2)), torch.empty_like(x_dbl),
            torch.empty_like(z)]


def bimamba_inner_triton(x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                         out_proj_weight, out_proj_bias=None, divide_out=True, variant=None, seg=None, chunk=None,
                         autotune=None, layout=None, tile=None, channels_last=None):
    """The fused mixer on validated inputs (shapes as in ``kernels.mamba_mixer.reference``, x and z in any
    strides); out [B, L, dim].

    GEMMs run in the activations' dtype (autocast picks it in a bf16 model); A, D and the dt bias in fp32.
    ``variant`` / ``seg`` / ``chunk`` / ``autotune`` / ``layout`` / ``tile`` are the selective scan's launch
    choices. ``channels_last`` (None: where the scan forward runs in the lane layout and nothing needs a
    gradient): xc, x_dbl and Δ are made token-major ([2, B, L, ·], the GEMMs as two batched mms over B L rows)
    and reach the scan as transposed views, so every per-token load of the lane walk is one line per warp; z
    is read through its strides (channel-last when it is a view of in_proj's [B, L, 2E] output). The backward
    takes contiguous copies, so channels_last=True also trains."""
    batch, dim, L = x.shape
    n, rank = A_log.shape[-1], dt_proj_weight.shape[-1]
    layout, tile = check_layout(layout, tile)
    params = (x, z, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    inference = not needs_grad(*params)
    plan, bwd_plan = mixer_plans(batch, dim, L, n, x.device, variant, seg, chunk, autotune, layout, inference)
    if channels_last is None:
        channels_last = inference and split_lane_variant(plan[0])[0]
    xc = BiConvFn.apply(x, conv_weight, conv_bias, bool(channels_last))
    act = xc.dtype
    if channels_last:                                                              # xc [2, B, L, E]
        xc, x_dbl, delta = token_major_projections(xc, x_proj_weight, dt_proj_weight)
    else:                                                                          # xc [2, B, E, L]
        x_dbl = torch.matmul(x_proj_weight.to(act).unsqueeze(1), xc)               # [2, B, R+2N, L]
        delta = torch.matmul(dt_proj_weight.to(act).unsqueeze(1), x_dbl[:, :, :rank])   # [2, B, E, L]
    y2 = BiScanFn.apply(xc, delta, -torch.exp(A_log.float()), x_dbl, D.float(), z, dt_proj_bias.float(), rank,
                        plan, bwd_plan, tile)
    return merged_out_proj(y2, out_proj_weight, out_proj_bias, divide_out, tokens=plan[0] == "token")


def token_major_projections(xc, x_proj_weight, dt_proj_weight):
    """x_proj and dt_proj of both directions on channel-last xc [2, B, L, E], each one batched mm over the B L
    token rows (batch 2, the direction): returns xc, x_dbl, Δ as the scan takes them, [2, B, C, L] views of
    [2, B, L, C] tensors. (The E-major form, W [2, 1, K, E] @ xc [2, B, E, L], runs 2B GEMMs with N = L and
    expands W: on the H200 the Vim-Ti forward with these mms instead ran 1.29x / 1.27x faster at 1024 / 1248 px,
    benchmarks/results/scan_layouts_cl.md, with the scan's channel-last loads.)"""
    _, batch, L, dim = xc.shape
    rank = dt_proj_weight.shape[-1]
    x_dbl = torch.bmm(xc.view(2, batch * L, dim), x_proj_weight.to(xc.dtype).transpose(1, 2))    # [2, BL, R+2N]
    delta = torch.bmm(x_dbl[..., :rank], dt_proj_weight.to(xc.dtype).transpose(1, 2))            # [2, BL, E]
    return tuple(t.view(2, batch, L, -1).transpose(2, 3) for t in (xc, x_dbl, delta))


def merged_out_proj(y2, weight, bias=None, divide_out=True, tokens=False):
    """out_proj of the directions' mean (or sum) as one GEMM with K = 2E: out = y2 [B, L, 2E] @ [W/2 | W/2]^T.

    ``tokens``: y2 is the token layout's [B, 2, E, L], read as the transposed operand [B, L, 2E] (strides
    (2EL, 1, L)): torch.matmul does not fold it into one mm (that would copy) but runs a batched GEMM with
    a transposed A, no copy of y2."""
    w = torch.cat([weight, weight], dim=1)                                         # merge folded into out_proj
    if divide_out:
        w = w * 0.5
    w = w.to(y2.dtype)
    b = bias.to(y2.dtype) if bias is not None else None
    if not tokens:
        batch, L, _, dim = y2.shape
        return F.linear(y2.view(batch, L, 2 * dim), w, b)
    batch, _, dim, L = y2.shape
    out = torch.matmul(y2.view(batch, 2 * dim, L).transpose(1, 2), w.t())
    return out + b if b is not None else out
