"""Registry entries, one module per family, each with its converter from official checkpoints."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

import torch.nn as nn

from zoo.errors import ConfigError
from zoo.model import ZooModel

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


HEAD_TO_FC = (("head.", "head.fc."),)
"""The usual foreign head: a bare Linear at ``head`` that becomes our ``head.fc``."""


def remap_to_zoo(state_dict: dict, prefixes=HEAD_TO_FC, strict_head: bool = False) -> dict:
    """A foreign state dict -> our layout: the first matching ``(src, dst)`` prefix is renamed, every other
    key moves under ``backbone.``; a DDP ``module.`` prefix is dropped. Our own layout passes through.

    With ``strict_head`` a ``head.*`` key no prefix matches raises KeyError (a head layout not understood).
    """
    if any(k.startswith("backbone.") for k in state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        for src, dst in prefixes:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
        else:
            if strict_head and key.startswith("head."):
                raise KeyError(key)
            out[f"backbone.{key}"] = value
    return out


def classifier_builder(build_backbone: Callable[..., nn.Module], config_cls, arch: str,
                       model_cls: type[ZooModel] = ZooModel) -> Callable[..., ZooModel]:
    """A registry builder: backbone ``arch`` (with checked overrides) composed with a classifier head."""
    allowed = [f.name for f in fields(config_cls) if f.name not in ("extra",)]

    def build(num_classes: int = 1000, in_chans: int | None = None, img_size: Any = None, drop_rate: float = 0.0,
              **overrides: Any) -> ZooModel:
        for key in overrides:
            if key not in allowed:
                raise ConfigError.unknown_key(key, allowed + ["num_classes", "drop_rate"], where=f"{arch} argument")
        try:
            backbone = build_backbone(arch, in_chans=in_chans, img_size=img_size, **overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot build {arch}: {e}") from None
        return model_cls(backbone, num_classes, drop_rate)

    build.__name__ = f"build_{arch}"
    return build


def image_cfg(input_size=(3, 224, 224), mean=None, std=None, crop_pct: float = 0.9, interpolation: str = "bicubic",
              num_classes: int = 1000, **extra) -> dict[str, Any]:
    """Default preprocessing config in timm's keys."""
    from zoo.registry import IMAGENET_MEAN, IMAGENET_STD

    cfg = dict(input_size=tuple(input_size), mean=tuple(mean or IMAGENET_MEAN), std=tuple(std or IMAGENET_STD),
               crop_pct=crop_pct, interpolation=interpolation, num_classes=num_classes)
    cfg.update(extra)
    return cfg


def cifar_cfg(**extra) -> dict[str, Any]:
    return image_cfg((3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, crop_pct=1.0, interpolation="bilinear", num_classes=10,
                     label_names=CIFAR10_CLASSES, **extra)


def _load_families() -> None:
    from zoo.models import vit  # noqa: F401  (each family module registers on import)
    from zoo.models import vim  # noqa: F401
    from zoo.models import efficientvit  # noqa: F401


_load_families()


def _load_published() -> None:
    """Tags of the zoo's own weights (zoo/weights/manifest.json, written by `zoo publish`)."""
    from zoo.publish import tags_from_manifest
    from zoo.registry import get_entry

    for model, tag in tags_from_manifest():
        get_entry(model).tags.setdefault(tag.tag, tag)


_load_published()
