"""PyTorch references for chunked gated linear attention (GLA, simple GLA, plain linear attention).

Layout as flash-linear-attention: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, gates in log space, either per
key channel ``g [B, T, H, K]`` (GLA) or one per head ``g_scalar [B, T, H]`` (simple GLA / RetNet / SSD);
states ``[B, H, K, V]`` fp32. Recurrence: S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale * q_t^T S_t.

- ``gla_recurrent_ref``: the truth, a plain fp32 token loop (causal).
- ``gla_parallel_ref``: the T x T form, causal or bidirectional, for tiny shapes; the bidirectional truth.
  Bidirectional decay between tokens t and s is exp(sum of g over (min(t,s), max(t,s)]), i.e. the product
  of the gates strictly after the earlier token up to and including the later one.
- ``gla_chunked_ref``: the chunk form (fast CPU path, autograd through torch ops). Inside a chunk the decay
  exp(b_t - b_s) is formed per pair with the exponent masked before ``exp``, so no gate strength overflows.
- ``gla_step_ref``: one recurrent step for decoding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gla_recurrent_ref", "gla_parallel_ref", "gla_chunked_ref", "gla_step_ref", "normalize_output",
           "local_cumsum"]

NORM_EPS = 1e-10


def _gate_full(g, g_scalar, like):
    """Per-key log gates [B, T, H, K] in fp32 from either form (zeros when ungated)."""
    if g is not None:
        return g.float()
    if g_scalar is not None:
        return g_scalar.float()[..., None].expand(like.shape)
    return torch.zeros(like.shape, dtype=torch.float32, device=like.device)


def gla_recurrent_ref(q, k, v, g=None, g_scalar=None, scale=None, initial_state=None, output_final_state=False):
    """Token-by-token fp32 recurrence (causal). Returns (o in q's dtype, final state fp32 or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    q32, k32, v32 = q.float(), k.float(), v.float()
    gf = _gate_full(g, g_scalar, q32)
    S = q32.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for t in range(T):
        S = S * gf[:, t].exp()[..., None] + k32[:, t, :, :, None] * v32[:, t, :, None, :]
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q32[:, t], S))
    o = torch.stack(outs, 1) if T > 0 else v32.new_zeros(B, 0, H, V)
    return o.to(q.dtype), (S if output_final_state else None)


def gla_parallel_ref(q, k, v, g=None, g_scalar=None, scale=None, causal=True):
    """Quadratic form o_t = scale * sum_s (q_t . (k_s * decay(t, s))) v_s over a [T, T, K] decay tensor."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    q32, k32, v32 = q.float(), k.float(), v.float()
    cum = _gate_full(g, g_scalar, q32).cumsum(1)  # [B, T, H, K]
    diff = cum[:, :, None] - cum[:, None, :]  # [B, t, s, H, K] = sum g over (s, t]
    idx = torch.arange(T, device=q.device)
    later = (idx[:, None] >= idx[None, :])[None, :, :, None, None]
    logdec = torch.where(later, diff, -diff)  # for s > t: sum g over (t, s]
    if causal:
        logdec = torch.where(later, logdec, torch.full_like(logdec, float("-inf")))
    A = torch.einsum("bthk,bshk,btshk->bhts", q32, k32, logdec.exp())
    o = scale * torch.einsum("bhts,bshv->bthv", A, v32)
    return o.to(q.dtype)


def local_cumsum(g: torch.Tensor, chunk: int) -> torch.Tensor:
    """Chunk-local inclusive cumsum of log gates along T in fp32, zero-padded to a multiple of ``chunk``.

    ``g``: [B, T, H] or [B, T, H, K] -> [B, Tp, H(, K)] with Tp = ceil(T / chunk) * chunk. Padding gates are 0,
    so the cumsum of a partial last chunk stays flat after its last token.
    """
    B, T = g.shape[:2]
    nt = max(1, -(-T // chunk))
    pad = nt * chunk - T
    gp = F.pad(g.float(), (0, 0) * (g.dim() - 2) + (0, pad))
    return gp.view(B, nt, chunk, *g.shape[2:]).cumsum(2).view(B, nt * chunk, *g.shape[2:])


def gla_chunked_ref(q, k, v, g=None, g_scalar=None, scale=None, initial_state=None, output_final_state=False,
                    chunk_size=64):
    """Chunk form in fp32 (causal): intra-chunk pairs with masked decays, inter-chunk through the state."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = K ** -0.5 if scale is None else scale
    S = (q.new_zeros(B, H, K, V, dtype=torch.float32) if initial_state is None else initial_state.float())
    gate = g if g is not None else (g_scalar[..., None] if g_scalar is not None else None)
    b_all = local_cumsum(gate, C) if gate is not None else None  # [B, Tp, H, K or 1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    outs = []
    for c0 in range(0, T, C):
        n = min(C, T - c0)
        qc, kc, vc = (x[:, c0:c0 + n].float().transpose(1, 2) for x in (q, k, v))  # [B, H, n, *]
        m = causal[:n, :n]
        if b_all is None:
            A = torch.einsum("bhtk,bhsk->bhts", qc, kc).masked_fill(~m, 0.0)
            o = qc @ S + A @ vc
            S = S + kc.transpose(-1, -2) @ vc
        else:
            b = b_all[:, c0:c0 + n].transpose(1, 2)  # [B, H, n, K or 1]
            bl = b[:, :, -1:]  # [B, H, 1, K or 1]
            diff = b[:, :, :, None] - b[:, :, None, :]  # [B, H, t, s, K or 1]
            dec = torch.where(m[..., None], diff, torch.full_like(diff, float("-inf"))).exp()
            if gate.dim() == 3 or g is None:  # scalar gate: decay factors out of the key sum
                A = torch.einsum("bhtk,bhsk->bhts", qc, kc) * dec[..., 0]
            else:
                A = torch.einsum("bhtk,bhsk,bhtsk->bhts", qc, kc, dec)
            o = (qc * b.exp()) @ S + A @ vc
            S = S * bl.transpose(-1, -2).exp() + (kc * (bl - b).exp()).transpose(-1, -2) @ vc
        outs.append(scale * o)
    o = torch.cat(outs, 2).transpose(1, 2) if outs else v.new_zeros(B, 0, H, V, dtype=torch.float32)
    return o.to(q.dtype), (S if output_final_state else None)


def normalize_output(q, k, o, scale, causal=True):
    """fla's linear-attention normaliser: o_t / (scale * q_t . sum_{s<=t} k_s + 1e-10) (all s when bidirectional).

    The initial state does not enter the normaliser (as in fla's ``chunk_linear_attn``).
    """
    k32 = k.float()
    ksum = k32.cumsum(1) if causal else k32.sum(1, keepdim=True)
    z = scale * (q.float() * ksum).sum(-1, keepdim=True)
    return (o.float() / (z + NORM_EPS)).to(o.dtype)


def gla_step_ref(q, k, v, state, g=None, scale=None):
    """One decoding step. q, k [B, H, K]; v [B, H, V]; g None, [B, H] or [B, H, K]; state [B, H, K, V] fp32."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S = state.float()
    if g is not None:
        gf = g.float()
        S = S * (gf[..., None, None] if gf.dim() == 2 else gf[..., None]).exp()
    S = S + k.float()[..., :, None] * v.float()[..., None, :]
    o = scale * torch.einsum("bhk,bhkv->bhv", q.float(), S)
    return o.to(q.dtype), S
