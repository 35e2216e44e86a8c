"""The mixture-of-experts MLP: a drop-in for the transformer ``Mlp`` (``[B, N, C] -> [B, N, C]``).

E experts, each an MLP ``C -> hidden -> C`` (weights stacked: ``w1 [E, C, H]``, ``w2 [E, H, C]``), run by
``kernels.moe.expert_mlp`` (grouped GEMMs on CUDA, a per-expert loop elsewhere). The router is chosen by name:

- ``'topk'``: token choice. Each token takes its k best experts (softmax or sigmoid scores, gates
  renormalised over the k by default), optionally under a capacity (``capacity_factor``; ``None`` is
  dropless). Losses: Switch/GShard balance (``balance_weight``) and ST-MoE router z-loss (``z_weight``).
  ``bias_update_rate > 0`` turns on DeepSeek-V3's aux-loss-free balancing: a per-expert bias (buffer
  ``expert_bias``, saved in the state dict) shifts the scores for the selection only and moves by
  ``rate * sign(mean load - load)`` in every training forward (under activation checkpointing the
  recompute moves it again). Set ``balance_weight`` small or 0 with it.
- ``'expert_choice'``: each expert takes its C best tokens of each image (C = ceil(capacity_factor * k * N / E),
  capacity_factor default 1): perfect balance, a variable number of experts per token, never a token of
  another image (encoders only: it is not causal).
- ``'soft'``: Soft MoE. ``E * slots_per_expert`` slots per image, each a softmax mix (over the image's tokens)
  of l2-normalised tokens against learned slot vectors with a learned scale; expert e processes its slots;
  every token's output is a softmax mix (over slots) of the slot outputs. No drops, no balance loss.

Shared experts (DeepSeekMoE): ``num_shared`` always-on experts of width ``shared_hidden`` (default ``hidden``),
run as one ``Mlp`` of width ``num_shared * shared_hidden`` and added. Fine-grained experts are the same layer
with m times the experts at 1/m the width and m times the k.

Every forward records the per-expert share of routed slots as the aux statistic ``expert_load`` (``[E]``,
summing to 1; ``backbones.layers.aux_loss``), and in training the weighted losses ``moe_balance`` and
``moe_z``; ``moe_dropped`` (share of slots over capacity) under a capacity, ``moe_unrouted`` (share of
tokens no expert took) with expert choice. ``last_load`` keeps the latest load for direct inspection.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.aux_loss import record_aux_loss, record_aux_stat
from backbones.layers.mlp import Mlp
from kernels.moe import expert_mlp
from kernels.moe.routing import (PRIORITIES, SCORES, apply_capacity, balance_loss, capacity, expert_choice_route,
                                 expert_load, router_scores, router_z_loss, soft_moe_weights, top_k_route,
                                 update_bias)

__all__ = ["ROUTERS", "MoEMlp", "moe_layer_indices", "active_params"]

ROUTERS = ("topk", "expert_choice", "soft")


class MoEMlp(nn.Module):
    """Mixture-of-experts MLP (see the module docstring for the routers and their options)."""

    def __init__(self, dim: int, hidden: int, num_experts: int = 8, k: int = 2, router: str = "topk",
                 score: str = "softmax", renormalize: bool = True, capacity_factor: float | None = None,
                 priority: str = "token", num_shared: int = 0, shared_hidden: int | None = None,
                 balance_weight: float = 1e-2, z_weight: float = 1e-3, bias_update_rate: float = 0.0,
                 slots_per_expert: int = 1, activation: str = "gelu", drop: float = 0.0, impl: str = "auto"):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"unknown MoE router {router!r}; choose one of {ROUTERS} (moe.router)")
        if score not in SCORES:
            raise ValueError(f"unknown MoE router score {score!r}; choose one of {SCORES} (moe.score)")
        if priority not in PRIORITIES:
            raise ValueError(f"unknown capacity priority {priority!r}; choose one of {PRIORITIES} (moe.priority)")
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"moe.num_experts must be a positive int, got {num_experts!r}")
        if router != "soft" and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts):
            raise ValueError(f"moe.k must be an int in [1, num_experts={num_experts}], got {k!r}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"moe.capacity_factor must be > 0 (or None: no capacity), got {capacity_factor!r}")
        if bias_update_rate and router != "topk":
            raise ValueError("moe.bias_update_rate (aux-loss-free balancing) needs router='topk'")
        if slots_per_expert < 1:
            raise ValueError(f"moe.slots_per_expert must be >= 1, got {slots_per_expert!r}")
        if num_shared < 0:
            raise ValueError(f"moe.num_shared must be >= 0, got {num_shared!r}")
        self.dim, self.hidden, self.num_experts, self.k = dim, hidden, num_experts, k
        self.router_type, self.score, self.renormalize = router, score, renormalize
        self.capacity_factor, self.priority = capacity_factor, priority
        self.balance_weight, self.z_weight, self.bias_update_rate = balance_weight, z_weight, bias_update_rate
        self.slots_per_expert, self.activation, self.impl = slots_per_expert, activation, impl
        width = 2 * hidden if activation == "swiglu" else hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, width))
        self.b1 = nn.Parameter(torch.zeros(num_experts, width))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))
        self.b1._no_weight_decay = self.b2._no_weight_decay = True  # biases, though 2-D (backbones' mixin reads it)
        if router == "soft":
            self.slots = nn.Parameter(torch.empty(dim, num_experts * slots_per_expert))
            self.slot_scale = nn.Parameter(torch.ones(()))
            self.router = None
        else:
            self.router = nn.Linear(dim, num_experts, bias=False)
        if bias_update_rate:
            self.register_buffer("expert_bias", torch.zeros(num_experts))
        else:
            self.expert_bias = None
        self.shared = Mlp(dim, num_shared * (shared_hidden or hidden), drop=drop) if num_shared else None
        self.drop = nn.Dropout(drop)
        self.last_load: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ViT's init for the experts (truncated normal 0.02, zero biases); the router the same; slots as
        Soft MoE (normal with std 1/sqrt(dim))."""
        for w in (self.w1, self.w2):
            nn.init.trunc_normal_(w, std=0.02)
        nn.init.zeros_(self.b1), nn.init.zeros_(self.b2)
        if self.router is not None:
            nn.init.trunc_normal_(self.router.weight, std=0.02)
        else:
            nn.init.normal_(self.slots, std=self.dim ** -0.5)
            nn.init.ones_(self.slot_scale)
        if self.expert_bias is not None:
            self.expert_bias.zero_()

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, experts={self.num_experts}, router={self.router_type}"
                + (f", k={self.k}" if self.router_type != "soft" else f", slots_per_expert={self.slots_per_expert}"))

    # -- upcycling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def load_dense(self, mlp: Mlp) -> None:
        """Sparse upcycling (Komatsuzaki et al. 2023): every expert becomes a copy of the dense ``mlp``
        (timm's fc1/fc2); the router keeps its fresh init. With top-k and renormalised gates and no capacity
        drop the layer then computes exactly the dense MLP."""
        fc1, fc2 = mlp.fc1, mlp.fc2
        if self.activation != "gelu" or self.shared is not None:
            raise ValueError("upcycling copies a GELU MLP into every expert: it needs activation='gelu' and no "
                             "shared experts")
        if fc1.weight.shape != (self.hidden, self.dim) or fc2.weight.shape != (self.dim, self.hidden):
            raise ValueError(f"cannot upcycle a dense MLP {fc1.weight.shape[1]} -> {fc1.weight.shape[0]} into "
                             f"experts {self.dim} -> {self.hidden}: widths must match (same embed_dim and "
                             f"mlp_ratio, full-width experts)")
        self.w1.copy_(fc1.weight.t().expand_as(self.w1))
        self.w2.copy_(fc2.weight.t().expand_as(self.w2))
        self.b1.copy_((fc1.bias if fc1.bias is not None else torch.zeros_like(self.b1[0])).expand_as(self.b1))
        self.b2.copy_((fc2.bias if fc2.bias is not None else torch.zeros_like(self.b2[0])).expand_as(self.b2))

    def experts_per_token(self, num_tokens: int) -> float:
        """Experts one token passes through on average in a group (image) of ``num_tokens``: k for token
        choice (no drops), E * C / n for expert choice, E * slots / n for Soft MoE (its slot computations)."""
        if self.router_type == "topk":
            return float(self.k)
        if self.router_type == "expert_choice":
            cap = min(num_tokens, capacity(num_tokens, self.num_experts, self.k, self.capacity_factor or 1.0))
            return self.num_experts * cap / num_tokens
        return self.num_experts * self.slots_per_expert / num_tokens

    # -- forward ------------------------------------------------------------------------------------------
    def _experts(self, x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        return expert_mlp(x, expert_idx, gates.to(x.dtype), self.w1, self.w2, b1=self.b1, b2=self.b2,
                          activation=self.activation, impl=self.impl)

    def _record_load(self, expert_idx: torch.Tensor) -> torch.Tensor:
        load = expert_load(expert_idx, self.num_experts)
        share = load / load.sum().clamp_min(1)
        self.last_load = share.detach()
        record_aux_stat(self, "expert_load", share)
        return load

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if x.shape[-1] != self.dim:
            raise ValueError(f"MoE MLP expects {self.dim} channels, got input of shape {tuple(shape)}")
        if self.router_type == "soft":
            y = self._soft(x if x.dim() == 3 else x.reshape(1, -1, self.dim))
        elif self.router_type == "expert_choice":
            y = self._expert_choice(x if x.dim() == 3 else x.reshape(1, -1, self.dim))
        else:
            y = self._token_choice(x.reshape(-1, self.dim))
        y = y.reshape(shape)
        if self.shared is not None:
            y = y + self.shared(x)
        return self.drop(y)

    def _router_losses(self, logits: torch.Tensor, probs: torch.Tensor | None, chosen: torch.Tensor | None) -> None:
        if not self.training:
            return
        if probs is not None and self.balance_weight:
            record_aux_loss(self, "moe_balance", self.balance_weight * balance_loss(probs, chosen, self.num_experts))
        if self.z_weight:
            record_aux_loss(self, "moe_z", self.z_weight * router_z_loss(logits))

    def _token_choice(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x)
        scores = router_scores(logits, self.score)
        expert_idx, gates = top_k_route(scores, self.k, self.renormalize, self.expert_bias)
        chosen = expert_idx
        if self.capacity_factor is not None:
            cap = capacity(x.shape[0], self.num_experts, self.k, self.capacity_factor)
            expert_idx, gates = apply_capacity(expert_idx, gates, self.num_experts, cap, self.priority)
            record_aux_stat(self, "moe_dropped", (expert_idx < 0).float().mean())
        probs = scores if self.score == "softmax" else scores / scores.sum(-1, keepdim=True).clamp_min(1e-20)
        self._router_losses(logits, probs, chosen)
        self._record_load(expert_idx)
        if self.expert_bias is not None and self.training:
            update_bias(self.expert_bias, expert_load(chosen, self.num_experts), self.bias_update_rate)
        return self._experts(x, expert_idx, gates)

    def _expert_choice(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        logits = self.router(x)
        scores = router_scores(logits, self.score)
        cap = capacity(N, self.num_experts, self.k, self.capacity_factor or 1.0)
        expert_idx, gates = expert_choice_route(scores, cap)
        self._router_losses(logits, None, None)
        self._record_load(expert_idx)
        record_aux_stat(self, "moe_unrouted", (expert_idx < 0).all(-1).float().mean())
        return self._experts(x.reshape(B * N, C), expert_idx, gates)

    def _soft(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        phi = F.normalize(self.slots.float(), dim=0) * self.slot_scale.float()
        logits = F.normalize(x.float(), dim=-1) @ phi  # [B, N, E*S]
        dispatch, combine = soft_moe_weights(logits)
        slots_in = torch.einsum("bns,bnc->bsc", dispatch, x.float()).to(x.dtype)  # [B, E*S, C]
        S = self.num_experts * self.slots_per_expert
        owner = torch.arange(self.num_experts, device=x.device).repeat_interleave(self.slots_per_expert)
        expert_idx = owner.repeat(B).unsqueeze(1)
        self._record_load(expert_idx)
        ones = x.new_ones(B * S, 1)
        slots_out = self._experts(slots_in.reshape(B * S, C), expert_idx, ones).reshape(B, S, C)
        return torch.einsum("bns,bsc->bnc", combine, slots_out.float()).to(x.dtype)


def moe_layer_indices(depth: int, every: int = 2, layers=None) -> tuple[int, ...]:
    """Blocks whose MLP is a mixture of experts: ``layers`` when given (negative counts from the end), else
    V-MoE's every other block, i.e. the blocks i with i % every == every - 1 (1, 3, 5, ... for every=2)."""
    if layers is not None:
        out = sorted({int(i) + depth if int(i) < 0 else int(i) for i in layers})
        if any(not 0 <= i < depth for i in out):
            raise ValueError(f"moe_layers {list(layers)} out of range for depth {depth}")
        return tuple(out)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"moe_every must be a positive int, got {every!r}")
    return tuple(i for i in range(depth) if i % every == every - 1)


def active_params(model: nn.Module, num_tokens: int) -> int:
    """Parameters a token's forward uses: all of ``model``'s, with each MoE layer's experts counted
    ``experts_per_token`` times one expert (so a dense model's count is its total)."""
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, MoEMlp):
            experts = sum(p.numel() for p in (m.w1, m.b1, m.w2, m.b2))
            total += round(experts / m.num_experts * m.experts_per_token(num_tokens)) - experts
    return total
