"""Expert parallelism under Lightning: ``--trainer.strategy ep`` (experts over all devices) or
``--trainer.strategy zoo.recipes.ep.ExpertParallelStrategy --trainer.strategy.expert_parallel_size N``.

DDP for everything replicated, backbones.layers.moe_parallel for the experts: before DDP wraps the task, every
MoE layer's experts are sharded over consecutive groups of ``expert_parallel_size`` ranks (default: the world)
and their parameters go on DDP's ignore list, so DDP never all-reduces them; their gradients are finished by
hooks (summed over the replica group when EP < world, divided by the world as DDP's mean is) and gradient
clipping takes the global norm with each expert counted once.

Checkpoints hold the single-process layout: the model's state dict gathers the experts, and the optimizer's
expert moments are gathered here too (``optimizer_state``) and cut back on load, so ``last.ckpt`` resumes under
another expert-parallel size, under plain DDP, or on one device. Both are collectives: every rank saves
(Lightning's DDP checkpointing already dumps on every rank and writes on rank 0), and the end-of-fit export
gathers on every rank before rank 0 writes (``collective_state_dict``).

Not supported (ConfigError): EMA (its copy would hold the full expert set next to the shards), ``export_best``
(the best export is written by rank 0 alone), FSDP (its flat parameters would need the experts as ignored
states with their own full-state-dict handling; not built).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.nn.parallel import DistributedDataParallel

from backbones.layers.moe import MoEMlp
from backbones.layers.moe_parallel import (ExpertParallelMoEMlp, clip_grad_norm_, expert_parallel_groups,
                                           register_expert_grad_hooks, shard_experts)
from zoo.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ExpertParallelStrategy", "gather_optimizer_state", "shard_optimizer_state"]


def _optimizer_params(optimizer) -> list[torch.Tensor]:
    """Parameters in the order of the optimizer state dict's integer ids."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def _expert_spans(model: torch.nn.Module) -> dict[int, tuple[ExpertParallelMoEMlp, range]]:
    """id(expert parameter) -> (its layer, the global expert ids it holds)."""
    return {id(getattr(m, n)): (m, m.local_experts()) for m in model.modules() if isinstance(m, ExpertParallelMoEMlp)
            for n in ("w1", "b1", "w2", "b2")}


def gather_optimizer_state(state: dict, optimizer, model: torch.nn.Module) -> dict:
    """``optimizer.state_dict()`` with every per-element state of an expert shard (Adam's moments: tensors of
    the parameter's shape) gathered over its EP group into the full ``[E, ...]`` layout. A copy: the live
    optimizer state is left as it is. Collective over the EP group."""
    import torch.distributed as dist

    spans = _expert_spans(model)
    out = dict(state, state=dict(state["state"]))
    for i, p in enumerate(_optimizer_params(optimizer)):
        if id(p) not in spans or i not in out["state"]:
            continue
        layer, _ = spans[id(p)]
        entry = dict(out["state"][i])
        for key, v in entry.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                full = v.new_empty((layer.num_experts,) + tuple(v.shape[1:]))
                dist.all_gather_into_tensor(full, v.contiguous(), group=layer.ep_group)
                entry[key] = full
        out["state"][i] = entry
    return out


def shard_optimizer_state(state: Mapping, optimizer, model: torch.nn.Module) -> dict:
    """The inverse on load: full-layout expert moments cut to this rank's experts (local ones kept)."""
    spans = _expert_spans(model)
    out = dict(state, state=dict(state["state"]))
    for i, p in enumerate(_optimizer_params(optimizer)):
        if id(p) not in spans or i not in out["state"]:
            continue
        layer, span = spans[id(p)]
        entry = dict(out["state"][i])
        for key, v in entry.items():
            if (isinstance(v, torch.Tensor) and v.dim() == p.dim() and v.shape[0] == layer.num_experts
                    and v.shape[1:] == p.shape[1:]):
                entry[key] = v[span.start:span.stop]
        out["state"][i] = entry
    return out


class ExpertParallelStrategy(DDPStrategy):
    """DDP with each MoE layer's experts sharded over groups of ``expert_parallel_size`` ranks (None: all)."""

    strategy_name = "ep"
    collective_state_dict = True  # state_dict() gathers the experts: every rank must call it (zoo fit's export)

    def __init__(self, expert_parallel_size: Optional[int] = None, **kwargs: Any):
        super().__init__(**kwargs)
        if expert_parallel_size is not None and (isinstance(expert_parallel_size, bool)
                                                 or not isinstance(expert_parallel_size, int)
                                                 or expert_parallel_size < 1):
            raise ConfigError(f"expert_parallel_size must be a positive int (or None: all devices), got "
                              f"{expert_parallel_size!r}.")
        self.expert_parallel_size = expert_parallel_size
        self._ep_group = None
        self._hooks: list = []

    def _check(self) -> None:
        lm = self.lightning_module
        if getattr(lm.hparams, "ema_decay", 0) > 0:
            raise ConfigError("model.ema_decay > 0 is not supported with expert parallelism (the EMA copy would hold "
                              "the full expert set on every device); set model.ema_decay 0.")
        if any(type(cb).__name__ == "BestExport" for cb in lm.trainer.callbacks):
            raise ConfigError("--export_best is not supported with expert parallelism (the best export is written "
                              "by rank 0 alone, but gathering the experts needs every rank); drop it.")
        ep = self.expert_parallel_size or self.world_size
        if self.world_size % ep:
            raise ConfigError(f"expert_parallel_size {ep} must divide the number of processes {self.world_size}.")
        for m in lm.modules():
            if isinstance(m, MoEMlp) and m.num_experts % ep:
                raise ConfigError(f"expert_parallel_size {ep} must divide the experts per layer ({m.num_experts}); "
                                  f"choose a size that divides it.")

    def configure_ddp(self) -> None:
        """Shard the experts (after the move to the device, before DDP and the optimizers see the parameters)."""
        self._check()
        lm = self.lightning_module
        ep = self.expert_parallel_size or self.world_size
        try:
            self._ep_group, replica = expert_parallel_groups(ep)
            names = shard_experts(lm, self._ep_group)
        except ValueError as e:
            raise ConfigError(f"expert parallelism: {e}.") from None
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(lm, names)
        self._hooks = register_expert_grad_hooks(lm, self.world_size, replica)
        # Lightning clips through the precision plugin on every rank's own parameters; with sharded experts the
        # ranks would see different norms and scale their replicated weights differently
        self.precision_plugin.clip_grad_by_norm = self._clip_grad_by_norm
        log.info("expert parallelism: %d expert tensors sharded over groups of %d of %d ranks", len(names), ep,
                 self.world_size)
        super().configure_ddp()

    def _clip_grad_by_norm(self, optimizer, clip_val) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        clip_grad_norm_(params, float(clip_val), self._ep_group)

    def optimizer_state(self, optimizer) -> dict:
        state = super().optimizer_state(optimizer)
        opt = getattr(optimizer, "_optimizer", optimizer)
        return gather_optimizer_state(state, opt, self.lightning_module) if self._ep_group is not None else state

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        if self._ep_group is None:
            return super().load_optimizer_state_dict(checkpoint)
        states = [shard_optimizer_state(s, getattr(o, "_optimizer", o), self.lightning_module)
                  for o, s in zip(self.optimizers, checkpoint["optimizer_states"])]
        super().load_optimizer_state_dict(dict(checkpoint, optimizer_states=states))

    def teardown(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        super().teardown()

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="DDP with MoE experts sharded over all devices")


if ExpertParallelStrategy.strategy_name not in StrategyRegistry:
    ExpertParallelStrategy.register_strategies(StrategyRegistry)

