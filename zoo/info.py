"""``model_info``: what a registered model is, how big, how costly, and which weights it has."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.kinds import KIND_TABLE
from zoo.registry import get_entry, split_name


def count_flops(model: torch.nn.Module, input_size: tuple[int, ...]) -> float:
    """GFLOPs of one forward at batch 1, as counted by ``torch.utils.flop_counter`` (matmuls and convs)."""
    x = torch.randn(1, *input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def tag_sha256(record) -> tuple[str | None, str | None]:
    """(sha256, where it comes from) of a tag: the registry's, else the one recorded beside the cached file
    when the zoo downloaded it (zoo.hub's ``<file>.sha256``); (None, None) while neither exists."""
    if record.sha256:
        return record.sha256, "registry"
    if record.source.package_file:
        return None, None
    from zoo.hub import cached_path, record_path, recorded_sha256

    try:
        path = cached_path(record.source)
    except ValueError:  # a source with no cache location
        return None, None
    recorded = recorded_sha256(path)
    return (recorded, f"recorded at download in {record_path(path)}") if recorded else (None, None)


def model_info(name: str, flops: bool = True) -> dict[str, Any]:
    """Facts of ``'name'`` (the architecture's defaults) or ``'name.tag'`` (built as that tag's weights
    need: its kind, input and preprocessing; no weights are loaded)."""
    from zoo.factory import create_model

    entry = get_entry(name)
    tag = split_name(name)[1]
    model = create_model(f"{entry.name}.{tag}" if tag else entry.name).eval()
    cfg = model.pretrained_cfg
    input_size = tuple(cfg["input_size"]) if cfg.get("input_size") else None
    info: dict[str, Any] = {
        "name": f"{entry.name}.{cfg['tag']}" if tag else entry.name,
        "kind": cfg["kind"],
        "kinds": list(entry.kinds),
        "family": entry.family,
        "description": entry.description,
        "paper": entry.paper,
        "params": sum(p.numel() for p in model.parameters()),
        "input_size": input_size,
        "num_classes": getattr(model, "num_classes", None),
        "default_cfg": dict(entry.default_cfg),
        "input": {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "audio") if k in cfg},
        "pretrained": {},
    }
    if flops and input_size and KIND_TABLE[cfg["kind"]].timm:  # forward(x) on one input: the timm kinds
        info["gflops"] = count_flops(model, input_size)
    for tag_name, record in entry.tags.items():
        sha256, sha256_from = tag_sha256(record)
        info["pretrained"][f"{entry.name}.{tag_name}"] = {
            "kind": entry.tag_kind(record),
            "source": record.source.describe(),
            "sha256": sha256,
            "sha256_from": sha256_from,
            "license": record.license,
            "num_classes": record.num_classes,
            "preprocess": dict(record.preprocess),
            "metrics": dict(record.metrics),
            "notes": record.notes,
        }
    return info
