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
  gradient is needed. Backward walks the chunks from last to first: it recomputes the chunk's states from
  the stored start state (one forward scan), then runs the adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` as a
  reverse associative scan over (a, prod, g) triples, so the one-step shift needs no extra exp or load.
  Channel-summed gradients (dB, dC) are reduced over the program's channels in registers and added to fp32
  buffers with atomics; dA, dD and d(delta_bias) are accumulated per program and added once at the end.

Importing this module compiles nothing; kernels are jit-compiled on first call.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.common import interpreting

__all__ = ["selective_scan_triton", "SelectiveScanFn", "chunk_size_for"]

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
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr, states_ptr,
    Dch, L, cpg_B, cpg_C, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    L_BUCKET, BATCH_BUCKET, BD_CAP,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, STORE_STATES: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # Tiles are token-major [BLOCK_L, NP, BLOCK_D]: Triton's default layout gives lanes to the last axes
    # (channels, then states), so the scanned token axis stays inside each thread (no shuffles per step).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
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

    col = pid_b * Dch * L + offs_d.to(tl.int64)[None, :] * L                       # [1, BD]
    colB = pid_b * stride_Bb + (d0 // cpg_B) * stride_Bg + offs_n.to(tl.int64)[None, :] * L
    colC = pid_b * stride_Cb + (d0 // cpg_C) * stride_Cg + offs_n.to(tl.int64)[None, :] * L
    n_chunks = tl.cdiv(L, CHUNK)
    st_off = (pid_b * Dch + offs_d.to(tl.int64)[None, :]) * n_chunks * N + offs_n[:, None]   # [NP, BD]

    h = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    if STORE_STATES:
        tl.store(states_ptr + st_off, h, mask=mask_nd)
    for i in range(0, tl.cdiv(L, BLOCK_L)):
        p = i * BLOCK_L + offs_l
        mask_l = p < L
        if REVERSE:
            t = L - 1 - p
        else:
            t = p
        mask = mask_l[:, None] & mask_d[None, :]
        u = tl.load(u_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)        # [BL, BD]
        dt = tl.load(dt_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask, dt, 0.0)                                               # padding: identity step
        mask_ln = mask_l[:, None] & mask_n[None, :]
        Bt = tl.load(B_ptr + colB + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)   # [BL, NP]
        Ct = tl.load(C_ptr + colC + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)

        a = tl.exp2(dt[:, None, :] * A2[None, :, :])                               # [BL, NP, BD]
        b = (dt * u)[:, None, :] * Bt[:, :, None]
        a_s, b_s = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine)
        hs = a_s * h[None, :, :] + b_s
        y = tl.sum(hs * Ct[:, :, None], axis=1)                                    # [BL, BD]
        h = tl.sum(tl.where(offs_l[:, None, None] == BLOCK_L - 1, hs, 0.0), axis=0)

        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            zz = tl.load(z_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + col + t[:, None], y.to(y_ptr.dtype.element_ty), mask=mask)
        if STORE_STATES:
            end = (i + 1) * BLOCK_L
            if (end % CHUNK == 0) & (end < L):
                tl.store(states_ptr + st_off + (end // CHUNK) * N, h, mask=mask_nd)

    last_off = (pid_b * Dch + offs_d.to(tl.int64)[None, :]) * N + offs_n[:, None]
    tl.store(last_ptr + last_off, h, mask=mask_nd)


@triton.jit
def _bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, states_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    Dch, L, cpg_B, cpg_C, stride_Bb, stride_Bg, stride_Cb, stride_Cg,
    L_BUCKET, BATCH_BUCKET, BD_CAP,
    N: tl.constexpr, NP: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    d0 = pid_d * BLOCK_D
    offs_d = d0 + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    offs_l = tl.arange(0, CHUNK)
    mask_d = offs_d < Dch
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]

    A = tl.load(A_ptr + offs_d[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)   # [NP, BD]
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    col = pid_b * Dch * L + offs_d.to(tl.int64)[None, :] * L
    colB = pid_b * stride_Bb + (d0 // cpg_B) * stride_Bg + offs_n.to(tl.int64)[None, :] * L
    colC = pid_b * stride_Cb + (d0 // cpg_C) * stride_Cg + offs_n.to(tl.int64)[None, :] * L
    n_chunks = tl.cdiv(L, CHUNK)
    st_off = (pid_b * Dch + offs_d.to(tl.int64)[None, :]) * n_chunks * N + offs_n[:, None]

    dA_acc = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    carry = tl.zeros([NP, BLOCK_D], dtype=tl.float32)       # a_s g_s at the first token of the next chunk
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        p = k * CHUNK + offs_l
        mask_l = p < L
        if REVERSE:
            t = L - 1 - p
        else:
            t = p
        mask = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        u = tl.load(u_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(dt_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = x + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(x)
        else:
            dt = x
        dt = tl.where(mask, dt, 0.0)
        Bt = tl.load(B_ptr + colB + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + colC + t[:, None], mask=mask_ln, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)
        h0 = tl.load(states_ptr + st_off + k * N, mask=mask_nd, other=0.0)

        # recompute the chunk's states from its stored start state
        dtu = dt * u
        a = tl.exp2(dt[:, None, :] * A2[None, :, :])                               # [CH, NP, BD]
        b = dtu[:, None, :] * Bt[:, :, None]
        a_s, b_s = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine)
        hs = a_s * h0[None, :, :] + b_s

        if HAS_Z:
            zz = tl.load(z_ptr + col + t[:, None], mask=mask, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            y = tl.sum(hs * Ct[:, :, None], axis=1)
            if HAS_D:
                y += Dv[None, :] * u
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + col + t[:, None], dz.to(dz_ptr.dtype.element_ty), mask=mask)
            dy = dout * zz * sz
        else:
            dy = dout
        dy = tl.where(mask, dy, 0.0)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=0)
            du = dy * Dv[None, :]
        else:
            du = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)

        dC_part = tl.sum(hs * dy[:, None, :], axis=2)                              # [CH, NP]
        tl.atomic_add(dC_ptr + colC + t[:, None], dC_part, mask=mask_ln, sem="relaxed")

        # adjoint g_t = dL/dh_t: reverse scan within the chunk plus the carry from later chunks
        c = Ct[:, :, None] * dy[:, None, :]
        ones = tl.full([CHUNK, NP, BLOCK_D], 1.0, tl.float32)
        _, q_s, g_s = tl.associative_scan((a, ones, c), axis=0, combine_fn=_adjoint_combine, reverse=True)
        g = g_s + q_s * carry[None, :, :]
        carry = tl.sum(tl.where(offs_l[:, None, None] == 0, a * g, 0.0), axis=0)

        dB_part = tl.sum(g * dtu[:, None, :], axis=2)
        tl.atomic_add(dB_ptr + colB + t[:, None], dB_part, mask=mask_ln, sem="relaxed")
        s = tl.sum(g * Bt[:, :, None], axis=1)                                     # d(Δ u)  [CH, BD]
        du += dt * s
        w = g * (hs - b)                                                           # g_t a_t h_{t-1}
        ddt = u * s + tl.sum(w * A[None, :, :], axis=1)
        dA_acc += tl.sum(w * dt[:, None, :], axis=0)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(x)
        ddt = tl.where(mask, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=0)
        tl.store(du_ptr + col + t[:, None], du.to(du_ptr.dtype.element_ty), mask=mask)
        tl.store(ddt_ptr + col + t[:, None], ddt.to(ddt_ptr.dtype.element_ty), mask=mask)

    tl.atomic_add(dA_ptr + offs_d[None, :] * N + offs_n[:, None], dA_acc, mask=mask_nd, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d, sem="relaxed")


# --------------------------------------------------------------------------------------------------------
# launch configuration

def chunk_size_for(n_state: int) -> int:
    """Tokens per stored state in forward = backward's tile; smaller for big N to bound registers."""
    return 32 if n_state <= 16 else 16


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
_BWD_CONFIGS = [
    triton.Config({"BLOCK_D": bd}, num_warps=w)
    for bd, w in [(4, 4), (8, 4), (8, 8), (16, 8)]
]


def _prune(configs, named_args, **kwargs):
    """Drop configs whose channel block would straddle a B/C group or whose tile does not divide CHUNK."""
    cap = named_args["BD_CAP"]
    chunk = kwargs["CHUNK"]
    keep = [c for c in configs if c.kwargs["BLOCK_D"] <= cap
            and ("BLOCK_L" not in c.kwargs or chunk % c.kwargs["BLOCK_L"] == 0)]
    if keep:
        return keep
    fallback = dict(configs[0].kwargs)
    fallback["BLOCK_D"] = max(1, min(cap, 4))
    if "BLOCK_L" in fallback:
        fallback["BLOCK_L"] = chunk
    return [triton.Config(fallback, num_warps=4)]


_KEY = ["Dch", "L_BUCKET", "BATCH_BUCKET", "BD_CAP", "N", "HAS_Z", "HAS_D", "HAS_BIAS", "SOFTPLUS"]

_fwd_tuned = triton.autotune(_FWD_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})(_fwd_kernel)
_bwd_tuned = triton.autotune(_BWD_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune},
                             reset_to_zero=["dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr", "dbias_ptr"])(_bwd_kernel)


def _fixed_config(cap: int, chunk: int, fwd: bool) -> dict:
    """One config without autotuning: small for the CPU interpreter, a sane default on the GPU
    (``SPEEDZOO_AUTOTUNE=0`` skips autotuning, e.g. for quick test runs)."""
    if interpreting():
        cfg = {"BLOCK_D": max(1, min(cap, 4))}
        if fwd:
            cfg["BLOCK_L"] = min(16, chunk)
        return cfg
    if fwd:
        bd = max(1, min(cap, 32))
        return {"BLOCK_D": bd, "BLOCK_L": 4 if bd == 32 else 8, "num_warps": 1}
    return {"BLOCK_D": max(1, min(cap, 4)), "num_warps": 4}


def _autotune() -> bool:
    return not interpreting() and os.environ.get("SPEEDZOO_AUTOTUNE", "1") != "0"


def _bucket(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _common_args(u, B, C, chunk):
    batch, dim, L = u.shape
    n = B.shape[2]
    gB, gC = B.shape[1], C.shape[1]
    cap = min(_block_d_cap(dim // gB, gB > 1), _block_d_cap(dim // gC, gC > 1))
    scalars = (dim, L, dim // gB, dim // gC, B.stride(0), B.stride(1), C.stride(0), C.stride(1),
               _bucket(L), _bucket(batch), cap)
    meta = dict(N=n, NP=triton.next_power_of_2(n), CHUNK=chunk)
    return scalars, meta, cap


def _dummy(ref: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, device=ref.device, dtype=torch.float32)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, store_states):
    """Launch the forward kernel. B, C are 4-D ``[B, G, N, L]``; all contiguous. Returns (y, last, states)."""
    batch, dim, L = u.shape
    n = A.shape[1]
    chunk = chunk_size_for(n)
    y = torch.empty_like(u)
    last = torch.empty(batch, dim, n, device=u.device, dtype=torch.float32)
    n_chunks = triton.cdiv(L, chunk)
    states = (torch.empty(batch, dim, n_chunks, n, device=u.device, dtype=torch.float32)
              if store_states else _dummy(u))
    scalars, meta, cap = _common_args(u, B, C, chunk)
    dummy = _dummy(u)
    args = (u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, y, last, states, *scalars)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(softplus), REVERSE=bool(reverse), STORE_STATES=bool(store_states))
    if not _autotune():
        cfg = _fixed_config(cap, chunk, fwd=True)
        grid = (triton.cdiv(dim, cfg["BLOCK_D"]), batch)
        _fwd_kernel[grid](*args, **meta, **flags, **cfg)
    else:
        grid = lambda m: (triton.cdiv(dim, m["BLOCK_D"]), batch)  # noqa: E731
        _fwd_tuned[grid](*args, **meta, **flags)
    return y, last, states


def selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, states):
    """Launch the backward kernel; returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)."""
    batch, dim, L = u.shape
    n = A.shape[1]
    chunk = chunk_size_for(n)
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.zeros(A.shape, device=u.device, dtype=torch.float32)
    dB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
    dC = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
    dD = torch.zeros(dim, device=u.device, dtype=torch.float32) if D is not None else _dummy(u)
    dbias = torch.zeros(dim, device=u.device, dtype=torch.float32) if delta_bias is not None else _dummy(u)
    scalars, meta, cap = _common_args(u, B, C, chunk)
    dummy = _dummy(u)
    args = (u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, dout, states,
            du, ddelta, dz if dz is not None else dummy, dA, dB, dC, dD, dbias, *scalars)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(softplus), REVERSE=bool(reverse))
    if not _autotune():
        cfg = _fixed_config(cap, chunk, fwd=False)
        grid = (triton.cdiv(dim, cfg["BLOCK_D"]), batch)
        _bwd_kernel[grid](*args, **meta, **flags, **cfg)
    else:
        grid = lambda m: (triton.cdiv(dim, m["BLOCK_D"]), batch)  # noqa: E731
        _bwd_tuned[grid](*args, **meta, **flags)
    return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz,
            dbias if delta_bias is not None else None)


class SelectiveScanFn(torch.autograd.Function):
    """Triton forward; backward recomputes states per chunk from the chunk-start states saved by forward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        need_grad = any(ctx.needs_input_grad[:8])
        y, last, states = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                             store_states=need_grad)
        ctx.mark_non_differentiable(last)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
        ctx.flags = (bool(delta_softplus), bool(reverse))
        return y, last

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        softplus, reverse = ctx.flags
        du, ddelta, dA, dB, dC, dD, dz, dbias = selective_scan_bwd(
            dy.contiguous(), u, delta, A, B, C, D, z, delta_bias, softplus, reverse, states)
        return (du, ddelta, dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.to(D.dtype) if dD is not None else None, dz,
                dbias.to(delta_bias.dtype) if dbias is not None else None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          reverse=False):
    """Triton selective scan on validated, contiguous inputs with 4-D B/C; returns (y, last_state)."""
    return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
