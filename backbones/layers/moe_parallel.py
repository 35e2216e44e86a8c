"""Expert parallelism for the MoE MLP: the experts of every ``MoEMlp`` sharded over the ranks of a
``torch.distributed`` process group, tokens exchanged by all-to-all.

Layout (as GShard / DeepSpeed-MoE / Megatron's EP): with E experts over an expert-parallel (EP) group of W ranks,
rank r holds experts ``[r * E/W, (r + 1) * E/W)`` (``w1, b1, w2, b2`` become the local ``[E/W, ...]`` slices);
router, shared experts and everything outside the MoE layers stay replicated. A forward on each rank:

1. routes its own tokens as the single-process layer does (any router: token choice, expert choice, Soft MoE;
   they all end in ``MoEMlp._experts(x, expert_idx, gates)``, the one method this layout overrides);
2. sorts the kept slots by expert (``kernels.moe.permute``): experts are contiguous per rank, so the sorted rows
   are already grouped by destination; the per-expert counts go round first (a small all-to-all), then the
   rows (``all_to_all_single`` with split sizes from the counts);
3. runs ``kernels.moe.expert_mlp`` over what arrived with its local experts (gate 1: the gates stay home, so
   their gradient needs no exchange);
4. sends the outputs back (the reverse all-to-all) and combines them with the gates, in fp32.

The all-to-all is an autograd.Function whose backward is the reverse all-to-all. Why not
``torch.distributed.nn.functional.all_to_all_single``: it does the same, but ours keeps the split sizes as
host lists it already had to fetch, and is twenty readable lines. Why not DTensor: the exchange is
data-dependent (ragged splits known only after routing); DTensor describes static shardings of whole tensors,
so it would shard the expert weights (``Shard(0)``) and still leave the token exchange to hand-written
collectives, with its dispatch overhead on every op of the expert MLP. Plain tensors + two collectives is what
the layer needs.

Gradients. On rank r the gradient of a local expert sums the contributions of every rank's tokens (the reverse
all-to-all brings them home), i.e. it is W times the data-parallel mean that DDP forms for replicated weights.
So expert parameters must not be all-reduced over the EP group; instead ``register_expert_grad_hooks`` divides
their gradient by the data-parallel size (and sums it over a replica group when EP < world), and
``clip_grad_norm_`` takes the global norm with the sharded experts counted once. Strategies find expert
parameters by ``is_expert_parameter`` (zoo.recipes.ep hands them to DDP's ignore list).

Checkpoints. ``state_dict()`` gathers every sharded expert tensor into the single-process key layout (``w1``
``[E, ...]``), so a checkpoint loads into a plain ``MoEMlp`` or under any EP size; ``load_state_dict`` takes
that full layout and keeps its own slice. Like FSDP's full state dict, ``state_dict()`` is a collective under
EP: every rank of the group calls it.

Capacity factors apply per rank (C from the rank's own tokens, as GShard's per-device capacity), so with a
capacity the sharded layer equals the single-process layer on each rank's batch, not on the concatenation.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from backbones.layers.moe import MoEMlp
from kernels.moe import expert_mlp
from kernels.moe.permute import sort_slots

__all__ = ["EXPERT_TENSORS", "ExpertParallelMoEMlp", "all_to_all", "shard_experts", "is_expert_parameter",
           "expert_parameter_names", "expert_parallel_groups", "register_expert_grad_hooks", "clip_grad_norm_"]

EXPERT_TENSORS = ("w1", "b1", "w2", "b2")
"""The MoEMlp tensors stacked over experts (dim 0): the ones sharded; everything else stays replicated."""


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows with ragged splits; its backward is the same exchange reversed."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        grad_in = grad.new_empty((sum(in_splits),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(grad_in, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return grad_in, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None) -> torch.Tensor:
    """Differentiable all-to-all of ``x``'s rows: rows ``in_splits[i]`` go to rank i of ``group``, and
    ``out_splits[i]`` rows arrive from rank i (in rank order)."""
    return _AllToAll.apply(x, list(out_splits), list(in_splits), group)


def is_expert_parameter(p: torch.Tensor) -> bool:
    """True for a parameter that holds this rank's shard of an expert set (never all-reduce it over EP)."""
    return bool(getattr(p, "_expert_parallel", False))


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Names (as ``model.named_parameters()`` gives them) of the sharded expert parameters."""
    return [n for n, p in model.named_parameters() if is_expert_parameter(p)]


class ExpertParallelMoEMlp(MoEMlp):
    """``MoEMlp`` with its experts sharded over ``group`` (see the module docstring); made from a built layer
    by :meth:`from_moe` (or :func:`shard_experts` for a whole model), so construction, routing and losses stay
    the parent's."""

    ep_group = None
    ep_size = 1
    ep_rank = 0
    num_local = 0

    @classmethod
    def from_moe(cls, moe: MoEMlp, group=None) -> "ExpertParallelMoEMlp":
        """Shard ``moe`` in place (it becomes this class, as FSDP2's ``fully_shard`` re-classes a module) and
        return it. Call on every rank of ``group``, with identical full expert sets (``shard_experts``
        broadcasts them); ``group`` None is the default group."""
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("expert parallelism needs an initialised torch.distributed process group "
                             "(torch.distributed.init_process_group, or a Lightning multi-device strategy)")
        if isinstance(moe, ExpertParallelMoEMlp):
            raise ValueError("this MoE layer is already expert-parallel")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if moe.num_experts % world:
            raise ValueError(f"expert parallelism over {world} ranks needs num_experts divisible by {world}, got "
                             f"{moe.num_experts} experts; choose an expert-parallel size that divides it")
        moe.__class__ = cls
        moe.ep_group, moe.ep_size, moe.ep_rank = group, world, rank
        moe.num_local = moe.num_experts // world
        start = rank * moe.num_local
        for name in EXPERT_TENSORS:
            full = getattr(moe, name)
            local = nn.Parameter(full.detach()[start:start + moe.num_local].clone(), requires_grad=full.requires_grad)
            if hasattr(full, "_no_weight_decay"):
                local._no_weight_decay = full._no_weight_decay
            local._expert_parallel = True
            setattr(moe, name, local)
        moe.register_state_dict_post_hook(_gather_experts)
        moe.register_load_state_dict_pre_hook(_slice_experts)
        return moe

    def extra_repr(self) -> str:
        return super().extra_repr() + f", expert_parallel={self.ep_size} (local experts {self.local_experts()})"

    def local_experts(self) -> range:
        """Global ids of the experts this rank holds."""
        return range(self.ep_rank * self.num_local, (self.ep_rank + 1) * self.num_local)

    def _experts(self, x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        E, n, W = self.num_experts, self.num_local, self.ep_size
        perm = sort_slots(expert_idx, E)
        # host sync: the exchange needs its split sizes on the host (as the 'loop' expert path does)
        counts = perm.counts.view(W, n)                    # [destination rank, its local expert]
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts, group=self.ep_group)  # recv[s, e]: slots from rank s for expert e
        in_splits, out_splits = counts.sum(1).tolist(), recv.sum(1).tolist()
        kept = perm.order[:sum(in_splits)]
        tok = kept // expert_idx.shape[1]
        gate = gates.reshape(-1)[kept].to(x.dtype)
        send = x[tok]
        if torch.is_autocast_enabled(x.device.type):  # the experts run in the autocast dtype: send it
            send = send.to(torch.get_autocast_dtype(x.device.type))
        arrived = all_to_all(send, out_splits, in_splits, self.ep_group)
        local_eid = torch.arange(n, device=x.device).repeat(W).repeat_interleave(recv.reshape(-1))
        # 'loop' when nothing arrived: its zero-row matmuls keep every local weight in the graph (zero gradients)
        out = expert_mlp(arrived, local_eid[:, None], arrived.new_ones(arrived.shape[0], 1), self.w1, self.w2,
                         b1=self.b1, b2=self.b2, activation=self.activation,
                         impl=self.impl if arrived.shape[0] else "loop")
        back = all_to_all(out, in_splits, out_splits, self.ep_group)
        y = back.new_zeros(x.shape, dtype=torch.float32)
        return y.index_add(0, tok, gate.float()[:, None] * back.float()).to(back.dtype)


def _gather_experts(module: ExpertParallelMoEMlp, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: each local expert slice replaced by the full expert set (single-process layout)."""
    for name in EXPERT_TENSORS:
        local = state_dict[prefix + name].detach().contiguous()
        full = local.new_empty((module.num_experts,) + tuple(local.shape[1:]))
        dist.all_gather_into_tensor(full, local, group=module.ep_group)
        state_dict[prefix + name] = full


def _slice_experts(module: ExpertParallelMoEMlp, state_dict: dict, prefix: str, local_metadata, strict,
                   missing_keys, unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: a full expert set (``[E, ...]``) is cut to this rank's slice; anything else is
    left for load_state_dict's own shape check to report."""
    span = module.local_experts()
    for name in EXPERT_TENSORS:
        t = state_dict.get(prefix + name)
        if t is not None and t.dim() >= 1 and t.shape[0] == module.num_experts:
            state_dict[prefix + name] = t[span.start:span.stop]


def shard_experts(model: nn.Module, group=None) -> list[str]:
    """Make every ``MoEMlp`` in ``model`` expert-parallel over ``group`` (default: the default group), in place,
    and return the names of the expert parameters. Call on every rank of the default group, before wrapping
    the model in DDP and building the optimizer. The full expert sets are first broadcast from global rank 0
    (as DDP broadcasts the replicated weights), so every rank slices the same experts."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("shard_experts needs an initialised torch.distributed process group")
    layers = [m for m in model.modules() if isinstance(m, MoEMlp) and not isinstance(m, ExpertParallelMoEMlp)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MoE layer to shard (expert parallelism needs an MoE "
                         f"model, e.g. a ViT with cfg.moe set)")
    for moe in layers:
        for name in EXPERT_TENSORS:
            dist.broadcast(getattr(moe, name).data, src=0)
        ExpertParallelMoEMlp.from_moe(moe, group)
    return expert_parameter_names(model)


def expert_parallel_groups(ep_size: int):
    """(EP group, replica group or None) of this rank for expert-parallel size ``ep_size`` over the default
    group: EP groups are consecutive ranks (``[0..ep), [ep..2ep), ...``: on one host the all-to-all stays on
    the fastest links); a replica group joins the ranks holding the same experts (same place in their EP group),
    None when ``ep_size`` is the world. Every rank must call it (``new_group`` is collective)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if isinstance(ep_size, bool) or not isinstance(ep_size, int) or ep_size < 1 or world % ep_size:
        raise ValueError(f"expert-parallel size must be a positive divisor of the world size {world}, got {ep_size!r}")
    mine = replica = None
    for start in range(0, world, ep_size):  # a separate communicator even when ep == world: DDP's buckets keep theirs
        g = dist.new_group(list(range(start, start + ep_size)))
        if start <= rank < start + ep_size:
            mine = g
    if ep_size < world:
        for pos in range(ep_size):
            g = dist.new_group(list(range(pos, world, ep_size)))
            if rank % ep_size == pos:
                replica = g
    return mine, replica


def register_expert_grad_hooks(model: nn.Module, data_parallel_size: int, replica_group=None) -> list:
    """Turn each expert parameter's gradient into the data-parallel mean DDP forms for replicated weights:
    sum over ``replica_group`` (the ranks that hold the same experts, if any) and divide by
    ``data_parallel_size`` (all ranks of the job). Hooks on the gradient of each backward, so gradient
    accumulation adds already-finished contributions. Returns the hook handles."""
    def finish(grad: torch.Tensor) -> torch.Tensor:
        if replica_group is not None:
            grad = grad.contiguous()
            dist.all_reduce(grad, group=replica_group)
        return grad / data_parallel_size

    return [p.register_hook(finish) for p in model.parameters() if is_expert_parameter(p) and p.requires_grad]


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float, ep_group=None,
                    eps: float = 1e-6) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) for a model with sharded experts: the squared norms of the
    expert shards are summed over ``ep_group``, those of replicated parameters counted once, so every rank
    finds the single-process norm and scales by the same factor. Returns the total norm."""
    params = [p for p in parameters if p.grad is not None]
    device = params[0].grad.device if params else torch.device("cpu")
    sq = {True: torch.zeros((), device=device), False: torch.zeros((), device=device)}
    for p in params:
        key = is_expert_parameter(p)
        sq[key] = sq[key] + p.grad.detach().float().pow(2).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sq[True], group=ep_group)
    total = (sq[True] + sq[False]).sqrt()
    coef = (max_norm / (total + eps)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.to(p.grad.dtype))
    return total

