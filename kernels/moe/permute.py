"""The permutation of routed slots into expert-contiguous order (plain PyTorch, no host sync).

A slot is one (token, choice) pair, numbered s = t * k + j over the flattened ``expert_idx [T, k]``. Sorting
the slots by expert (stable, so within an expert the slots keep token order) lets every expert read one
contiguous run of rows: rows ``offsets[e]:offsets[e + 1]`` of the sorted order belong to expert e. Dropped
slots (expert id -1) sort after every expert, so ``order`` always has T * k entries (a fixed shape: no host
sync, CUDA-graph friendly) and ``order[offsets[E]:]`` are the dropped slots.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Permutation", "permute_tokens", "sort_slots", "check_expert_idx"]


class Permutation(NamedTuple):
    """Expert-contiguous slot order. ``order [T*k]`` int64 slot ids (token = order // k), ``counts [E]`` int64
    slots per expert (dropped slots not counted), ``offsets [E+1]`` int64 exclusive prefix sum of counts."""

    order: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor


def check_expert_idx(expert_idx: torch.Tensor, num_experts: int, op: str = "permute_tokens") -> None:
    """Shape/dtype checks always; the value range [-1, E) only on the CPU in eager mode (on a GPU it would cost
    a host sync, under torch.compile a graph break)."""
    if expert_idx.dim() != 2:
        raise ValueError(f"{op}: expert_idx must be [T, k], got shape {tuple(expert_idx.shape)}")
    if expert_idx.dtype.is_floating_point or expert_idx.dtype == torch.bool or expert_idx.is_complex():
        raise ValueError(f"{op}: expert_idx must be an integer tensor, got {expert_idx.dtype}; "
                         f"pass the router's top-k indices (e.g. torch.topk(...).indices)")
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"{op}: num_experts must be a positive int, got {num_experts!r}")
    if not expert_idx.is_cuda and expert_idx.numel() and not torch.compiler.is_compiling():
        lo, hi = int(expert_idx.min()), int(expert_idx.max())
        if lo < -1 or hi >= num_experts:
            raise ValueError(f"{op}: expert_idx values must lie in [0, {num_experts}) or be -1 for a dropped "
                             f"slot, got values in [{lo}, {hi}]")


def permute_tokens(expert_idx: torch.Tensor, num_experts: int) -> Permutation:
    """Stable argsort of the flattened expert ids (dropped last), counts by a scatter-add, offsets by cumsum."""
    check_expert_idx(expert_idx, num_experts)
    return sort_slots(expert_idx, num_experts)


def sort_slots(expert_idx: torch.Tensor, num_experts: int) -> Permutation:
    """:func:`permute_tokens` without the checks, for callers that validated ``expert_idx`` already."""
    ids = expert_idx.reshape(-1).long()
    ids = torch.where(ids < 0, torch.full_like(ids, num_experts), ids)
    order = torch.argsort(ids, stable=True)
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=ids.device)
    counts = counts.scatter_add(0, ids, torch.ones_like(ids))[:num_experts]
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return Permutation(order, counts, offsets)
