"""Scale-out pieces of the recipes: which modules are a backbone's blocks and the FSDP wrap/checkpoint policy
built from them (the process environment and collectives shared with ``zoo eval`` are in zoo.distributed).

Why discover blocks instead of listing classes: the zoo grows families (ViT ``Block``, Vim ``VimBlock``,
hybrids, MoE blocks) and a recipe must shard any registered model per block without a table to keep in
sync. A block is what a backbone keeps in its ``blocks`` or ``layers`` ModuleList (the timm convention every
family here follows), or what a module declares through ``block_classes()`` (for layouts where that
convention does not hold, e.g. stages of mixed blocks). The policy looks at the model it is applied to, so
``--trainer.strategy fsdp`` works before the model exists (the task builds it in ``setup``).
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

import torch.nn as nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from zoo.distributed import is_fsdp

log = logging.getLogger(__name__)

BLOCK_CONTAINERS = ("blocks", "layers")


def block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """Classes of the repeated blocks anywhere in ``model``: what a ``block_classes()`` method returns, plus
    the element types of every ``blocks``/``layers`` ModuleList or Sequential."""
    found: set[type[nn.Module]] = set()
    for module in model.modules():
        declared = getattr(module, "block_classes", None)
        if callable(declared):
            found.update(declared())
        for attr in BLOCK_CONTAINERS:
            container = getattr(module, attr, None)
            if isinstance(container, (nn.ModuleList, nn.Sequential)):
                found.update(type(m) for m in container)
    return found


class BlockPolicy(ModuleWrapPolicy):
    """FSDP ``auto_wrap_policy`` / ``activation_checkpointing_policy`` that applies to every block of the
    model it is run on (see block_classes), plus any ``extra`` classes."""

    def __init__(self, extra: Iterable[type[nn.Module]] = ()):
        super().__init__(extra)
        self._extra = set(extra)

    def _run_policy(self, root_module: nn.Module, ignored_modules: set[nn.Module],
                    root_kwargs: dict[str, Any]) -> dict[nn.Module, dict[str, Any]]:
        classes = self._extra | block_classes(root_module)
        if not classes:
            log.warning("FSDP: no blocks found in %s (no blocks/layers ModuleList, no block_classes()); the "
                        "whole model is one FSDP unit", type(root_module).__name__)
        else:
            log.info("FSDP policy: one unit per %s", ", ".join(sorted(c.__name__ for c in classes)))
        self._module_classes = classes
        self._module_classes_str = str(classes)
        return super()._run_policy(root_module, ignored_modules, root_kwargs)


FSDP_SHORTHANDS = {"fsdp": {}, "fsdp_cpu_offload": {"cpu_offload": True}}


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs: Any):
    """Lightning's FSDPStrategy sharding per block, optionally recomputing each block's activations in the
    backward pass; full (unsharded) state dicts, so checkpoints load on any number of devices."""
    from lightning.pytorch.strategies import FSDPStrategy

    kwargs.setdefault("state_dict_type", "full")
    return FSDPStrategy(auto_wrap_policy=BlockPolicy(),
                        activation_checkpointing_policy=BlockPolicy() if activation_checkpointing else None,
                        **kwargs)


def resolve_strategy(strategy: Any, activation_checkpointing: bool = False) -> Any:
    """``fsdp`` / ``fsdp_cpu_offload`` names become fsdp_strategy(), ``ep`` the expert-parallel DDP strategy
    (zoo.recipes.ep, experts over all devices); anything else passes through."""
    if isinstance(strategy, str) and strategy in FSDP_SHORTHANDS:
        return fsdp_strategy(activation_checkpointing, **FSDP_SHORTHANDS[strategy])
    if isinstance(strategy, str) and strategy == "ep" and not activation_checkpointing:
        from zoo.recipes.ep import ExpertParallelStrategy

        return ExpertParallelStrategy()
    if activation_checkpointing and not is_fsdp(strategy):
        from zoo.errors import ConfigError

        raise ConfigError(f"--activation_checkpointing needs --trainer.strategy fsdp (got {strategy!r}).")
    return strategy
