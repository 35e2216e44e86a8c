"""MoE routing in plain PyTorch: which expert each token goes to, with which gate, and the balancing terms.

Everything here works on router logits ``[T, E]`` (T tokens, E experts) or, for expert choice, ``[G, n, E]``
(G groups of n tokens, a group being one image) and returns the token-centric layout the expert MLP takes
(``kernels.moe.expert_mlp``): ``expert_idx [T, k]`` int64 with -1 for a dropped slot and ``gates [T, k]``.

- Scores (``router_scores``): softmax over experts (Switch, GShard, Mixtral) or an element-wise sigmoid
  (DeepSeek-V3).
- Token choice (``top_k_route``): each token takes its k best experts; with ``renormalize`` the k gates are
  divided by their sum (Mixtral's ``norm_topk_prob``, DeepSeek-V3's sigmoid gates). A ``bias`` (the
  aux-loss-free balancing bias) is added to the scores for the selection only; the gates are the unbiased
  scores of the chosen experts.
- Capacity (``apply_capacity``): an expert takes at most C slots (``capacity``: C = ceil(factor * k * T / E));
  overflow slots are dropped (expert -1, gate 0). Priority is choice-major (every token's first choice
  before any second choice, as GShard), and within one choice level either by token order
  (``priority='token'``) or by the token's top gate, highest first, ties by token order (``'score'``:
  V-MoE's batch prioritized routing).
- Expert choice (``expert_choice_route``, Zhou et al. 2022): within each group separately each expert takes
  its C best tokens by score, so a token never competes with, or is mixed into, another image's tokens;
  a token gets 0..E experts, returned as ``[T, E]`` slots (slot e holds expert e or -1).
- Aux-loss-free balancing (DeepSeek-V3, arXiv 2408.15664): ``update_bias``: b_i += u * sign(mean load - load_i).
- Losses: ``balance_loss`` (Switch/GShard: E * sum_i f_i P_i) and ``router_z_loss`` (ST-MoE: mean of
  logsumexp(logits)^2).
- Soft MoE (Puigcerver et al. 2023): ``soft_moe_weights``: dispatch weights (softmax over tokens, per slot)
  and combine weights (softmax over slots, per token).
"""
from __future__ import annotations

import math

import torch

__all__ = ["SCORES", "PRIORITIES", "router_scores", "top_k_route", "capacity", "apply_capacity",
           "expert_choice_route", "expert_load", "update_bias", "balance_loss", "router_z_loss",
           "soft_moe_weights"]

SCORES = ("softmax", "sigmoid")
PRIORITIES = ("token", "score")


def router_scores(logits: torch.Tensor, score: str = "softmax") -> torch.Tensor:
    """Router probabilities from logits ``[..., E]`` in fp32: softmax over experts, or sigmoid per expert."""
    if score == "softmax":
        return logits.float().softmax(-1)
    if score == "sigmoid":
        return logits.float().sigmoid()
    raise ValueError(f"router score must be one of {SCORES}, got {score!r}")


def _check_k(k: int, num_experts: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
        raise ValueError(f"top-k must be an int in [1, num_experts={num_experts}], got {k!r}")


def top_k_route(scores: torch.Tensor, k: int, renormalize: bool = True,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token choice: ``scores [T, E]`` -> (``expert_idx [T, k]`` int64, ``gates [T, k]``), best expert first.

    ``bias [E]`` shifts the scores for the choice only (aux-loss-free balancing); gates are the chosen
    experts' unbiased scores, divided by their sum when ``renormalize``.
    """
    _check_k(k, scores.shape[-1])
    select = scores if bias is None else scores + bias.to(scores.dtype)
    expert_idx = select.topk(k, dim=-1).indices
    gates = scores.gather(-1, expert_idx)
    if renormalize:
        gates = gates / gates.sum(-1, keepdim=True).clamp_min(1e-20)
    return expert_idx, gates


def capacity(num_tokens: int, num_experts: int, k: int, factor: float) -> int:
    """Slots one expert takes: ceil(factor * k * T / E) (Switch's tokens/E * factor, times k for top-k)."""
    if not factor > 0:
        raise ValueError(f"capacity_factor must be > 0 (None turns the capacity off), got {factor!r}")
    return max(1, math.ceil(factor * k * num_tokens / num_experts))


def apply_capacity(expert_idx: torch.Tensor, gates: torch.Tensor, num_experts: int, cap: int,
                   priority: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the slots beyond ``cap`` per expert: their expert becomes -1 and their gate 0 (kept gates are not
    renormalised: a token that lost a choice gets less of the MoE output, as in Switch/GShard).

    Order of service: choice level j = 0 for every token, then j = 1, ...; within a level by token index
    (``'token'``) or by the token's first gate, highest first, then token index (``'score'``).
    """
    if priority not in PRIORITIES:
        raise ValueError(f"capacity priority must be one of {PRIORITIES}, got {priority!r}")
    if cap <= 0:
        raise ValueError(f"capacity must be positive, got {cap}")
    T, k = expert_idx.shape
    if priority == "token":
        token_order = torch.arange(T, device=expert_idx.device)
    else:
        token_order = torch.sort(gates[:, 0].detach(), descending=True, stable=True).indices
    # slots in service order: level-major, tokens in priority order within a level
    slot_tok = token_order.repeat(k)
    slot_lvl = torch.arange(k, device=expert_idx.device).repeat_interleave(T)
    ids = expert_idx[slot_tok, slot_lvl]
    onehot = torch.nn.functional.one_hot(ids.clamp_min(0), num_experts) * (ids >= 0).unsqueeze(-1)
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # 0-based place in its expert's queue
    keep_sorted = (ids >= 0) & (position < cap)
    keep = torch.zeros_like(expert_idx, dtype=torch.bool)
    keep[slot_tok, slot_lvl] = keep_sorted
    return torch.where(keep, expert_idx, -1), gates * keep.to(gates.dtype)


def expert_choice_route(scores: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert choice within groups: ``scores [G, n, E]`` -> (``expert_idx [G*n, E]``, ``gates [G*n, E]``).

    In each group g, expert e takes the ``cap`` tokens of g with the highest score for e (ties: lower token
    index); slot e of token t holds e (gate = its score) if e took t, else -1 (gate 0). Selection never looks
    across groups, so one image's tokens cannot displace or read another's.
    """
    if scores.dim() != 3:
        raise ValueError(f"expert choice needs scores [groups, tokens, experts], got shape {tuple(scores.shape)}")
    G, n, E = scores.shape
    if cap <= 0:
        raise ValueError(f"expert-choice capacity must be positive, got {cap}")
    cap = min(cap, n)
    # stable sort per (group, expert) over tokens: ties keep the lower token index first
    picked = torch.sort(scores.detach().transpose(1, 2), dim=-1, descending=True, stable=True).indices[..., :cap]
    chosen = torch.zeros(G, E, n, dtype=torch.bool, device=scores.device)
    chosen.scatter_(-1, picked, True)
    chosen = chosen.transpose(1, 2)  # [G, n, E]
    experts = torch.arange(E, device=scores.device).expand(G, n, E)
    expert_idx = torch.where(chosen, experts, -1).reshape(G * n, E)
    gates = (scores * chosen.to(scores.dtype)).reshape(G * n, E)
    return expert_idx, gates


def expert_load(expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Slots routed to each expert ([E] float; dropped slots, -1, not counted)."""
    ids = expert_idx.reshape(-1)
    kept = ids >= 0
    return torch.zeros(num_experts, device=ids.device).index_add_(0, ids.clamp_min(0), kept.float())


@torch.no_grad()
def update_bias(bias: torch.Tensor, load: torch.Tensor, rate: float) -> torch.Tensor:
    """DeepSeek-V3's aux-loss-free update, in place: b_i += rate * sign(mean(load) - load_i) (overloaded
    experts become less attractive, underloaded ones more)."""
    load = load.float()
    bias.add_(rate * torch.sign(load.mean() - load).to(bias.dtype))
    return bias


def balance_loss(probs: torch.Tensor, expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch/GShard load-balancing loss E * sum_i f_i * P_i (1 at uniform routing).

    f_i: share of the T*k routed slots that chose expert i (no gradient; pass the choice before any capacity
    drop, the router's intent); P_i: mean router probability of i over the tokens (``probs [T, E]``).
    """
    T, k = expert_idx.shape
    f = expert_load(expert_idx, num_experts) / max(1, T * k)
    P = probs.float().mean(0)
    return num_experts * (f.detach() * P).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE's router z-loss: mean over tokens of logsumexp(logits)^2 (keeps the logits small)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def soft_moe_weights(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft MoE: ``logits [B, n, S]`` (token x slot) -> (dispatch, combine), both [B, n, S] in fp32.

    dispatch[:, :, s] is a softmax over the n tokens (slot s's input = that convex mix of one image's
    tokens); combine[:, t, :] is a softmax over the S slots (token t's output = that mix of slot outputs).
    """
    if logits.dim() != 3:
        raise ValueError(f"soft MoE needs logits [batch, tokens, slots], got shape {tuple(logits.shape)}")
    logits = logits.float()
    return logits.softmax(dim=1), logits.softmax(dim=2)
