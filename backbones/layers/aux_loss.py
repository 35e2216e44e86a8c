"""Auxiliary losses and statistics that modules produce during their forward (an MoE router's balance and z
losses, expert load), collected by whoever trains the model.

Why a side channel: a backbone's ``forward`` returns features (timm's contract), so a loss that a block
computes on the way cannot travel in the return value through every family. Instead the block records it on
itself, and the task (zoo.recipes.task.Task) collects every recorded value after the forward, adds the losses
to its task loss and logs both. Backbones stay ignorant of Lightning and of the zoo.

Memory: each module keeps only the value of its latest forward for a name (``record_*`` overwrites), so a
model run many times without collection (evaluation, inference, a benchmark) holds one tensor per recording
module, never a growing list, and never the graphs of earlier steps once the next forward has run.
``collect_*`` returns and clears. A module that runs twice within one step (weights shared between two uses)
and wants both values counted records them under two names, or sums them itself.

    class Router(nn.Module):
        def forward(self, x):
            ...
            record_aux_loss(self, "moe_balance", self.balance_weight * balance)
            record_aux_stat(self, "expert_load", load.detach())

    logits = model(x)
    losses = collect_aux_losses(model)   # {'moe_balance': sum over all routers}
    loss = task_loss + sum(losses.values())
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["record_aux_loss", "record_aux_stat", "collect_aux_losses", "collect_aux_stats", "clear_aux"]

_LOSSES = "_zoo_aux_losses"
_STATS = "_zoo_aux_stats"


def _record(module: nn.Module, slot: str, name: str, value: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"aux value {name!r} of {type(module).__name__} must be a tensor, got {type(value).__name__}")
    # in __dict__, not as a buffer or attribute nn.Module tracks: never part of state_dict, .to() or FSDP flattening
    module.__dict__.setdefault(slot, {})[name] = value


def record_aux_loss(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Record a scalar loss term (already weighted) produced by ``module``'s forward; replaces the previous
    value of ``name`` on this module. Tasks add it to the loss they optimise (with gradients)."""
    if value.numel() != 1:
        raise ValueError(f"aux loss {name!r} of {type(module).__name__} must be a scalar, got shape "
                         f"{tuple(value.shape)}")
    _record(module, _LOSSES, name, value)


def record_aux_stat(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Record a statistic for logging only (e.g. the share of tokens per expert); stored detached."""
    _record(module, _STATS, name, value.detach())


def _collect(model: nn.Module, slot: str, reduce: str) -> dict[str, torch.Tensor]:
    found: dict[str, list[torch.Tensor]] = {}
    for module in model.modules():
        values = module.__dict__.pop(slot, None)
        for name, value in (values or {}).items():
            found.setdefault(name, []).append(value)
    out = {}
    for name, values in found.items():
        if len({v.shape for v in values}) > 1:
            raise ValueError(f"aux value {name!r} was recorded with different shapes "
                             f"{sorted({tuple(v.shape) for v in values})}; record per-module values under distinct names")
        total = torch.stack(values).sum(0)
        out[name] = total / len(values) if reduce == "mean" else total.reshape(())
    return out


def collect_aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every aux loss recorded in ``model`` since the last collection, same names summed over modules
    (each router's balance loss adds up to the model's); the records are cleared."""
    return _collect(model, _LOSSES, "sum")


def collect_aux_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every aux statistic recorded in ``model``, same names averaged over modules (the mean expert load of
    all MoE layers); the records are cleared."""
    return _collect(model, _STATS, "mean")


def clear_aux(model: nn.Module) -> None:
    """Drop every recorded aux loss and statistic in ``model`` (e.g. after a forward whose losses don't count)."""
    for module in model.modules():
        module.__dict__.pop(_LOSSES, None)
        module.__dict__.pop(_STATS, None)
