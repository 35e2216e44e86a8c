"""PyTorch references for the chunked gated delta rule (Gated DeltaNet).

Layout as flash-linear-attention: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g (log decay) and beta ``[B, T, H]``,
states ``[B, H, K, V]`` fp32. Recurrence S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, a_t = exp(g_t),
o_t = scale * S_t^T q_t; step form S <- a_t S; u_t = b_t (v_t - S^T k_t); S <- S + k_t u_t^T.

Chunk form (WY / UT transform; C tokens, gamma_t = exp(b_t) with b the chunk-local cumsum of g, S_c the
state entering the chunk): u = beta*(v - gamma * K S_c) - diag(beta) L u with L_ts = (gamma_t/gamma_s)(k_t . k_s)
for s < t, so u = U - W S_c with Tm = (I + diag(beta) L)^-1, U = Tm diag(beta) V, W = Tm diag(beta gamma) K.
The chunk then behaves as simple GLA with v replaced by u ("v_new"):
o_t = scale*(gamma_t q_t S_c + sum_{s<=t} (gamma_t/gamma_s)(q_t . k_s) u_s), S_next = gamma_C S_c + sum_s (gamma_C/gamma_s) k_s u_s^T.

- ``delta_rule_recurrent_ref``: the truth, an fp32 token loop.
- ``wy_prepare``: U, W for all chunks at once (batched triangular solve; differentiable), used by both paths.
- ``delta_rule_chunked_ref``: the chunk form in fp32 (fast CPU path).
- ``delta_rule_step_ref``: one decoding step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.gla.reference import local_cumsum

__all__ = ["delta_rule_recurrent_ref", "delta_rule_chunked_ref", "delta_rule_step_ref", "wy_prepare", "l2norm"]


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum x^2 + eps) over the last dim in fp32, back in x's dtype (fla's l2norm)."""
    x32 = x.float()
    return (x32 * torch.rsqrt((x32 * x32).sum(-1, keepdim=True) + eps)).to(x.dtype)


def delta_rule_recurrent_ref(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                             use_qk_l2norm=False):
    """Token-by-token fp32 recurrence. g may be None (plain DeltaNet). Returns (o in q's dtype, final state or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q32, k32, v32, b32 = q.float(), k.float(), v.float(), beta.float()
    S = q32.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        if g is not None:
            S = S * g[:, t].float().exp()[..., None, None]
        kt = k32[:, t]
        u = b32[:, t, :, None] * (v32[:, t] - torch.einsum("bhk,bhkv->bhv", kt, S))
        S = S + kt[..., :, None] * u[..., None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q32[:, t], S))
    o = torch.stack(outs, 1) if T > 0 else v32.new_zeros(B, 0, H, V)
    return o.to(q.dtype), (S if output_final_state else None)


def _chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, Tp, H, *] -> [B, H, NT, C, *] (a view plus permute)."""
    B, Tp, H = x.shape[:3]
    return x.view(B, Tp // C, C, H, *x.shape[3:]).movedim(3, 1)


def _unchunk(x: torch.Tensor) -> torch.Tensor:
    """[B, H, NT, C, D] -> contiguous [B, NT*C, H, D]."""
    B, H, NT, C, D = x.shape
    return x.movedim(1, 3).reshape(B, NT * C, H, D).contiguous()


def wy_prepare(k, v, beta, b, chunk_size):
    """U [B, Tp, H, V] and W [B, Tp, H, K] in fp32 for every chunk (zero on padding rows).

    b: chunk-local cumsum of g ([B, Tp, H] fp32, see ``local_cumsum``) or None for g = 0.
    """
    B, T, H, K = k.shape
    C = chunk_size
    nt = max(1, -(-T // C))
    pad = nt * C - T
    kc = _chunks(F.pad(k.float(), (0, 0, 0, 0, 0, pad)), C)  # [B, H, NT, C, K]
    vc = _chunks(F.pad(v.float(), (0, 0, 0, 0, 0, pad)), C)
    bc = _chunks(F.pad(beta.float(), (0, 0, 0, pad)), C)  # [B, H, NT, C]
    strict = torch.ones(C, C, dtype=torch.bool, device=k.device).tril(-1)
    kk = kc @ kc.transpose(-1, -2)
    if b is not None:
        gc = _chunks(b, C)
        diff = gc[..., :, None] - gc[..., None, :]
        kk = kk * torch.where(strict, diff, torch.full_like(diff, float("-inf"))).exp()
    else:
        kk = kk.masked_fill(~strict, 0.0)
    eye = torch.eye(C, device=k.device, dtype=torch.float32)
    A = eye + bc[..., :, None] * kk
    Tm = torch.linalg.solve_triangular(A, eye.expand_as(A), upper=False, unitriangular=True)
    U = Tm @ (bc[..., None] * vc)
    wk = bc[..., None] * kc
    if b is not None:
        wk = wk * gc.exp()[..., None]
    W = Tm @ wk
    return _unchunk(U), _unchunk(W)


def delta_rule_chunked_ref(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm=False, chunk_size=64):
    """Chunk form in fp32 through ``wy_prepare``; autograd flows through torch ops (CPU path)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = K ** -0.5 if scale is None else scale
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    b = local_cumsum(g, C) if g is not None else None
    U, W = wy_prepare(k, v, beta, b, C)
    S = q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float()
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    outs = []
    for c0 in range(0, T, C):
        n = min(C, T - c0)
        qc, kc = (x[:, c0:c0 + n].float().transpose(1, 2) for x in (q, k))
        Uc, Wc = (x[:, c0:c0 + n].transpose(1, 2) for x in (U, W))
        vn = Uc - Wc @ S
        A = (qc @ kc.transpose(-1, -2)).masked_fill(~causal[:n, :n], 0.0)
        if b is not None:
            bb = b[:, c0:c0 + n].transpose(1, 2)  # [B, H, n]
            diff = bb[..., :, None] - bb[..., None, :]
            A = A * torch.where(causal[:n, :n], diff, torch.full_like(diff, float("-inf"))).exp()
            bl = bb[..., -1:]  # [B, H, 1]: the last real token's cumsum (padding gates are 0)
            o = (qc * bb.exp()[..., None]) @ S + A @ vn
            S = S * bl.exp()[..., None] + (kc * (bl - bb).exp()[..., None]).transpose(-1, -2) @ vn
        else:
            o = qc @ S + A @ vn
            S = S + kc.transpose(-1, -2) @ vn
        outs.append(scale * o)
    o = torch.cat(outs, 2).transpose(1, 2) if outs else v.new_zeros(B, 0, H, V, dtype=torch.float32)
    return o.to(q.dtype), (S if output_final_state else None)


def delta_rule_step_ref(q, k, v, beta, state, g=None, scale=None):
    """One decoding step. q, k [B, H, K]; v [B, H, V]; beta, g [B, H]; state [B, H, K, V] fp32."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S = state.float()
    if g is not None:
        S = S * g.float().exp()[..., None, None]
    kt = k.float()
    u = beta.float()[..., None] * (v.float() - torch.einsum("bhk,bhkv->bhv", kt, S))
    S = S + kt[..., :, None] * u[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", q.float(), S)
    return o.to(q.dtype), S
