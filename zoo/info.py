"""``model_info``: what a registered model is, how big, how costly, and which weights it has."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.registry import get_entry


def count_flops(model: torch.nn.Module, input_size: tuple[int, ...]) -> float:
    """GFLOPs of one forward at batch 1, as counted by ``torch.utils.flop_counter`` (matmuls and convs)."""
    x = torch.randn(1, *input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def model_info(name: str, flops: bool = True) -> dict[str, Any]:
    from zoo.factory import create_model

    entry = get_entry(name)
    model = create_model(entry.name).eval()
    input_size = tuple(model.pretrained_cfg["input_size"])
    info: dict[str, Any] = {
        "name": entry.name,
        "kind": entry.kind,
        "family": entry.family,
        "description": entry.description,
        "paper": entry.paper,
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": input_size,
        "num_classes": model.num_classes,
        "default_cfg": dict(entry.default_cfg),
        "pretrained": {},
    }
    if flops:
        info["gflops"] = count_flops(model, input_size)
    for tag_name, tag in entry.tags.items():
        info["pretrained"][f"{entry.name}.{tag_name}"] = {
            "source": tag.source.describe(),
            "sha256": tag.sha256 or None,
            "license": tag.license,
            "num_classes": tag.num_classes,
            "preprocess": dict(tag.preprocess),
            "metrics": dict(tag.metrics),
            "notes": tag.notes,
        }
    return info
