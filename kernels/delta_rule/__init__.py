"""Chunked gated delta rule (Gated DeltaNet; DeltaNet when g is None): the public ops.

``chunk_gated_delta_rule(q, k, v, g, beta, ...)`` with fla's layout and semantics (see reference.py for the
recurrence and the WY/UT chunk form); ``delta_rule_step`` is one decoding step.

Triton path (CUDA tensors or TRITON_INTERPRET=1): the UT transform (U, W per chunk: a batched triangular
solve over all chunks at once, in fp32 PyTorch, differentiable) feeds the on-chip-state chunk kernels of
kernels.gla in their ``DELTA`` mode, which form v_new = U - W S_c per chunk (kept for the backward), run
the simple-GLA chunk step and, backwards, hand dU = dv_new and dW = -dv_new S_c^T (plus the gate term) back
to torch's autograd of the transform. So forward and backward of the sequential part are Triton; the
parallel per-chunk transform (and its backward) is cuBLAS/cuSOLVER through PyTorch. Elsewhere the chunked
PyTorch form runs.
"""
from __future__ import annotations

import torch

from kernels.common import use_triton
from kernels.gla.options import check_bwd_options
from kernels.delta_rule.reference import (
    delta_rule_chunked_ref,
    delta_rule_recurrent_ref,
    delta_rule_step_ref,
    l2norm,
    wy_prepare,
)
from kernels.gla.reference import local_cumsum

__all__ = ["chunk_gated_delta_rule", "delta_rule_step", "delta_rule_recurrent_ref", "delta_rule_chunked_ref",
           "delta_rule_step_ref", "l2norm"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _validate(q, k, v, g, beta, initial_state, chunk_size):
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"chunk_gated_delta_rule: q and k must be [B, T, H, K], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"chunk_gated_delta_rule: v must be [B={B}, T={T}, H={H}, V], got {tuple(v.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOATS:
            raise ValueError(f"chunk_gated_delta_rule: {name} must be fp32/fp16/bf16, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError("chunk_gated_delta_rule: q, k, v must share one dtype")
    if K > 256:
        raise ValueError(f"chunk_gated_delta_rule: K must be <= 256, got {K}")
    for name, t in (("g", g), ("beta", beta)):
        if t is not None and t.shape != (B, T, H):
            raise ValueError(f"chunk_gated_delta_rule: {name} must be [B, T, H] = {(B, T, H)}, got {tuple(t.shape)}")
    if beta is None:
        raise ValueError("chunk_gated_delta_rule: beta is required")
    if initial_state is not None and initial_state.shape != (B, H, K, v.shape[-1]):
        raise ValueError(f"chunk_gated_delta_rule: initial_state must be {(B, H, K, v.shape[-1])}, "
                         f"got {tuple(initial_state.shape)}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_gated_delta_rule: chunk_size must be a power of two >= 16, got {chunk_size}")


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm=False, chunk_size=64, *, bwd_layout=None, bwd_block_v=None):
    """Gated delta rule in chunks; returns (o [B, T, H, V] in q's dtype, final_state fp32 or None).

    g: log decay [B, T, H] (None: plain DeltaNet); beta: [B, T, H] in (0, 1) (or (0, 2) for negative
    eigenvalues); use_qk_l2norm: L2-normalise q and k first (fla's use_qk_l2norm_in_kernel).
    bwd_layout: "fused" only (its dv feeds dS); bwd_block_v: the backward's V block (power of two >= 16).
    """
    _validate(q, k, v, g, beta, initial_state, chunk_size)
    layout = check_bwd_options("chunk_gated_delta_rule", bwd_layout, bwd_block_v, layouts=("fused",),
                               default="fused")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    C = chunk_size
    if q.shape[1] == 0:
        ht = None
        if output_final_state:
            ht = (initial_state.float() if initial_state is not None
                  else q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[-1], dtype=torch.float32))
        return v.new_zeros(v.shape, dtype=q.dtype), ht
    if not use_triton(q, k, v, g, beta, initial_state):
        return delta_rule_chunked_ref(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm, C)
    from kernels.gla.triton import ChunkScanFn

    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q, k = q.contiguous(), k.contiguous()
    b = local_cumsum(g, C) if g is not None else None
    U, W = wy_prepare(k, v, beta, b, C)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    return ChunkScanFn.apply(q, k, U, b, W, h0, scale, C, 1 if g is not None else 0, True, output_final_state,
                             layout, bwd_block_v)


def delta_rule_step(q, k, v, beta, state, g=None, scale=None):
    """One decoding step (PyTorch, differentiable): q, k [B, H, K]; v [B, H, V]; beta, g [B, H]; state fp32.

    q and k are used as given (normalise them first if the model uses QK L2 norm).
    """
    if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError("delta_rule_step: q, k must be [B, H, K] and v [B, H, V]")
    if state.shape != (*q.shape, v.shape[-1]):
        raise ValueError(f"delta_rule_step: state must be {(*q.shape, v.shape[-1])}, got {tuple(state.shape)}")
    return delta_rule_step_ref(q, k, v, beta, state, g, scale)
