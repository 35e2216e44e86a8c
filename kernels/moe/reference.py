"""The expert MLP of a mixture of experts, in plain PyTorch: the truth every other path is tested against.

y[t] = sum_j gates[t, j] * MLP_{e}(x[t]) with e = expert_idx[t, j] (slots with e = -1 are dropped and add
nothing), MLP_e(v) = act(v @ w1[e] + b1[e]) @ w2[e] + b2[e]. ``swiglu``: w1[e] is [d, 2H], its first H columns
the gate g and its last H the up projection u, act = silu(g) * u. ``gelu`` is the exact (erf) GELU of timm's Mlp.
Everything is computed in fp32 (the result is cast to x's dtype), one expert at a time with boolean masks, so
the code reads like the equation and shares nothing with the fast paths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "activate", "expert_mlp_ref"]

ACTIVATIONS = ("gelu", "relu", "silu", "swiglu")


def activate(pre: torch.Tensor, activation: str) -> torch.Tensor:
    """The experts' nonlinearity on the first GEMM's output ([..., H], or [..., 2H] = (gate, up) for swiglu)."""
    if activation == "gelu":
        return F.gelu(pre)
    if activation == "relu":
        return F.relu(pre)
    if activation == "silu":
        return F.silu(pre)
    if activation == "swiglu":
        gate, up = pre.chunk(2, dim=-1)
        return F.silu(gate) * up
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def expert_mlp_ref(x, expert_idx, gates, w1, w2, b1=None, b2=None, activation="gelu"):
    """Per-expert loop in fp32: for each expert, the (token, slot) pairs routed to it, their MLP, gate-weighted sum."""
    xf, gf = x.float(), gates.float()
    y = xf.new_zeros(x.shape[0], w2.shape[-1])
    for e in range(w1.shape[0]):
        tok, slot = (expert_idx == e).nonzero(as_tuple=True)
        pre = xf[tok] @ w1[e].float()
        if b1 is not None:
            pre = pre + b1[e].float()
        out = activate(pre, activation) @ w2[e].float()
        if b2 is not None:
            out = out + b2[e].float()
        y = y.index_add(0, tok, gf[tok, slot, None] * out)
    return y.to(x.dtype)
