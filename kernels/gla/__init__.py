"""Chunked gated linear attention: plain linear attention, simple GLA (scalar decay per head), GLA (per-key gates).

One implementation behind four public names: ``chunk_gla`` (everything), ``linear_attention``, ``simple_gla``
and ``gla``; ``gla_step`` is the one-token recurrent step for decoding. Layout as flash-linear-attention:
q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, states ``[B, H, K, V]`` fp32, log-space gates ``g [B, T, H, K]`` or
``g_scalar [B, T, H]``; ``scale`` defaults to K^-0.5. Causal recurrence:
S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale * q_t^T S_t.

Bidirectional (``causal=False``, for vision): o_t = scale * sum_s (q_t . (k_s * decay(t, s))) v_s over all s,
decay(t, s) = exp(sum of g over (min(t,s), max(t,s)]). Computed in linear time as forward scan + backward
scan - the diagonal term both count: the backward scan is the causal op on the flipped sequence with the
gates shifted by one (token u of the flipped sequence decays by g_{T-u}, so the gate of the earlier token is
never applied). Exact; costs two causal passes plus flips. No initial/final state.

``normalize`` (no gates only, as fla's ``chunk_linear_attn``): o_t /= scale * q_t . sum_{s<=t} k_s + 1e-10
(sum over all s when bidirectional); the initial state does not enter the normaliser.

Gate gradient (used by the Triton backward): for every token, dL/dg_t = sum_{r>=t} (q_r*dq_r - k_r*dk_r)
+ sum_v(dh_T * h_T). Proof: with P_t = sum_v dS_t * S_t (dS_t the gradient of S_t), the adjoint
dS_t = scale q_t do_t^T + Diag(e^{g_{t+1}}) dS_{t+1} and Diag(e^{g_{t+1}}) S_t = S_{t+1} - k_{t+1} v_{t+1}^T give
P_t = q_t*dq_t + P_{t+1} - k_{t+1}*dk_{t+1}, and dL/dg_t = sum_v dS_t * (S_t - k_t v_t^T) = P_t - k_t*dk_t.
The kernel applies it per chunk (chunk-end term sum_v dS * S_end) so the same code serves the delta rule.

Dispatch: Triton on CUDA tensors (or TRITON_INTERPRET=1), the chunked PyTorch form elsewhere
(``SPEEDZOO_KERNELS`` overrides, see kernels.common). The Triton backward's layout is a keyword argument of
every op: ``bwd_layout`` "split" (default) | "fused" | "chunked", ``bwd_block_v`` the V block of the last two
(see kernels.gla.triton.chunk_scan_bwd); the reference path ignores them.
"""
from __future__ import annotations

import torch

from kernels.common import use_triton
from kernels.gla.options import check_bwd_options
from kernels.gla.reference import (
    gla_chunked_ref,
    gla_parallel_ref,
    gla_recurrent_ref,
    gla_step_ref,
    local_cumsum,
    normalize_output,
)

__all__ = ["chunk_gla", "linear_attention", "simple_gla", "gla", "gla_step", "gla_recurrent_ref",
           "gla_parallel_ref", "gla_chunked_ref", "gla_step_ref"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _validate(q, k, v, g, g_scalar, initial_state, causal, normalize, chunk_size):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"chunk_gla: q and k must both be [B, T, H, K], got {tuple(q.shape)} and {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"chunk_gla: v must be [B={B}, T={T}, H={H}, V], got {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOATS:
            raise ValueError(f"chunk_gla: {name} must be fp32/fp16/bf16, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"chunk_gla: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if K > 256:
        raise ValueError(f"chunk_gla: key head dim K must be <= 256, got {K}")
    if g is not None and g_scalar is not None:
        raise ValueError("chunk_gla: pass either g (per key channel) or g_scalar (per head), not both")
    if g is not None and g.shape != q.shape:
        raise ValueError(f"chunk_gla: g must be [B, T, H, K] = {tuple(q.shape)}, got {tuple(g.shape)}")
    if g_scalar is not None and g_scalar.shape != (B, T, H):
        raise ValueError(f"chunk_gla: g_scalar must be [B, T, H] = {(B, T, H)}, got {tuple(g_scalar.shape)}")
    if initial_state is not None:
        if not causal:
            raise ValueError("chunk_gla: initial_state needs causal=True")
        if initial_state.shape != (B, H, K, v.shape[-1]):
            raise ValueError(f"chunk_gla: initial_state must be {(B, H, K, v.shape[-1])}, "
                             f"got {tuple(initial_state.shape)}")
    if normalize and (g is not None or g_scalar is not None):
        raise ValueError("chunk_gla: normalize is defined for ungated linear attention only")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_gla: chunk_size must be a power of two >= 16, got {chunk_size}")


def _causal(q, k, v, g, g_scalar, scale, h0, need_ht, C, bwd):
    """The causal op on the chosen path; returns (o, ht or None). ``bwd``: (layout, V block) of the backward."""
    if not use_triton(q, k, v, g, g_scalar, h0):
        return gla_chunked_ref(q, k, v, g, g_scalar, scale, h0, need_ht, C)
    from kernels.gla.triton import ChunkScanFn

    gate = 2 if g is not None else (1 if g_scalar is not None else 0)
    b = local_cumsum(g if g is not None else g_scalar, C) if gate else None
    h0c = h0.float().contiguous() if h0 is not None else None
    return ChunkScanFn.apply(q.contiguous(), k.contiguous(), v.contiguous(), b, None, h0c, scale, C, gate,
                             False, need_ht, *bwd)


def _shift_flip(x):
    """Gates for the reverse scan: flipped in time and shifted by one, the first one zero."""
    if x is None:
        return None
    f = x.flip(1)
    return torch.cat([torch.zeros_like(f[:, :1]), f[:, :-1]], 1)


def chunk_gla(q, k, v, g=None, g_scalar=None, scale=None, initial_state=None, output_final_state=False,
              causal=True, normalize=False, chunk_size=64, *, bwd_layout=None, bwd_block_v=None):
    """Gated linear attention in chunks; returns (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] fp32 or None).

    g: per-key log gates [B, T, H, K]; g_scalar: per-head log gates [B, T, H]; neither: linear attention.
    causal=False: bidirectional (no state in or out). normalize: fla's linear-attention normaliser.
    bwd_layout / bwd_block_v: the Triton backward's layout (None: split, the fastest on the H200).
    """
    _validate(q, k, v, g, g_scalar, initial_state, causal, normalize, chunk_size)
    bwd = (check_bwd_options("chunk_gla", bwd_layout, bwd_block_v), bwd_block_v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if q.shape[1] == 0:
        o = v.new_zeros(v.shape, dtype=q.dtype)
        ht = None
        if output_final_state:
            ht = (initial_state.float() if initial_state is not None
                  else q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[-1], dtype=torch.float32))
        return o, ht
    if causal:
        o, ht = _causal(q, k, v, g, g_scalar, scale, initial_state, output_final_state, chunk_size, bwd)
    else:
        if output_final_state:
            raise ValueError("chunk_gla: output_final_state needs causal=True")
        of, _ = _causal(q, k, v, g, g_scalar, scale, None, False, chunk_size, bwd)
        ob, _ = _causal(q.flip(1), k.flip(1), v.flip(1), _shift_flip(g), _shift_flip(g_scalar), scale, None,
                        False, chunk_size, bwd)
        diag = scale * (q.float() * k.float()).sum(-1, keepdim=True) * v.float()
        o = (of.float() + ob.flip(1).float() - diag).to(q.dtype)
        ht = None
    if normalize:
        o = normalize_output(q, k, o, scale, causal)
    return o, ht


def linear_attention(q, k, v, scale=None, initial_state=None, output_final_state=False, causal=True,
                     normalize=False, chunk_size=64, *, bwd_layout=None, bwd_block_v=None):
    """Ungated linear attention (fla's chunk_linear_attn, whose chunk op defaults to normalize=True)."""
    return chunk_gla(q, k, v, None, None, scale, initial_state, output_final_state, causal, normalize, chunk_size,
                     bwd_layout=bwd_layout, bwd_block_v=bwd_block_v)


def simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, causal=True, chunk_size=64, *,
               bwd_layout=None, bwd_block_v=None):
    """Scalar decay per head, g [B, T, H] log space (simple GLA, RetNet with g = log(gamma), Mamba-2 SSD)."""
    return chunk_gla(q, k, v, None, g, scale, initial_state, output_final_state, causal, False, chunk_size,
                     bwd_layout=bwd_layout, bwd_block_v=bwd_block_v)


def gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, causal=True, chunk_size=64, *,
        bwd_layout=None, bwd_block_v=None):
    """Per-key-channel gates g [B, T, H, K] in log space (GLA)."""
    return chunk_gla(q, k, v, g, None, scale, initial_state, output_final_state, causal, False, chunk_size,
                     bwd_layout=bwd_layout, bwd_block_v=bwd_block_v)


def gla_step(q, k, v, state, g=None, scale=None):
    """One decoding step of the causal recurrence (PyTorch; differentiable).

    q, k [B, H, K]; v [B, H, V]; state [B, H, K, V]; g None, [B, H] (scalar) or [B, H, K] (per key).
    Returns (o [B, H, V] in q's dtype, new_state fp32).
    """
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"gla_step: q, k must be [B, H, K] and v [B, H, V], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if state.shape != (*q.shape, v.shape[-1]):
        raise ValueError(f"gla_step: state must be {(*q.shape, v.shape[-1])}, got {tuple(state.shape)}")
    if g is not None and g.shape not in (q.shape[:2], q.shape):
        raise ValueError(f"gla_step: g must be [B, H] or [B, H, K], got {tuple(g.shape)}")
    return gla_step_ref(q, k, v, state, g, scale)
