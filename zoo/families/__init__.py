"""Registry entries, one module per family, each with its converter from official checkpoints and the
weight adaptation it allows (``WeightAdapt``). Shared here: the classifier-kind builder, preprocessing
configs, the usual foreign-key remap and the patch-grid adaptation of the ViT-like families."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

import torch
import torch.nn as nn

from zoo.errors import ConfigError
from zoo.kinds.classifier import Classifier
from zoo.registry import WeightAdapt

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
                       model_cls: type[Classifier] = Classifier) -> Callable[..., Classifier]:
    """A registry builder of the classifier kind: backbone ``arch`` (with checked overrides) composed with a
    classification head (``head='linear' | 'mlp' | 'attn'``, its options in ``head_cfg``)."""
    allowed = [f.name for f in fields(config_cls) if f.name not in ("extra",)]

    def build(num_classes: int = 1000, in_chans: int | None = None, img_size: Any = None, drop_rate: float = 0.0,
              head: str = "linear", head_cfg: dict | None = None, **overrides: Any) -> Classifier:
        for key in overrides:
            if key not in allowed:
                raise ConfigError.unknown_key(key, allowed + ["num_classes", "drop_rate", "head", "head_cfg"],
                                              where=f"{arch} argument")
        try:
            backbone = build_backbone(arch, in_chans=in_chans, img_size=img_size, **overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot build {arch}: {e}") from None
        return model_cls(backbone, num_classes, drop_rate, head=head, head_cfg=head_cfg)

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


def resize_patch_pos_embed(model: nn.Module, pos_embed: torch.Tensor,
                           src_img_size: tuple[int, int] | None) -> torch.Tensor:
    """Resample a checkpoint's ``pos_embed`` to the grid of ``model.backbone``'s patch embedding; the grid
    the checkpoint had follows from the image size it was trained at (square-inferred without one)."""
    backbone = model.backbone
    old_grid = None
    if src_img_size is not None:
        pe = backbone.patch_embed
        old_grid = tuple((i - p) // s + 1 for i, p, s in zip(src_img_size, pe.patch_size, pe.stride))
    return backbone.resize_pos_embed_state(pos_embed, old_grid)


PATCH_ADAPT = WeightAdapt(first_conv=("backbone.patch_embed.proj",), pos_embed=("backbone.pos_embed",),
                          resize_pos_embed=resize_patch_pos_embed, head="head",
                          patch_embed=("backbone.patch_embed.proj",))
"""Adaptation of a patch-embedding family (ViT, Vim): first conv, patch size, grid position embedding,
classifier head."""


def _load_families() -> None:
    """Import every module of this package: each family module registers its entries on import, so a new
    family is a new file here."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    from zoo.families import clip  # noqa: F401  (vision-language pairs of the towers above)


_load_families()


def _load_published() -> None:
    """Tags of the zoo's own weights (zoo/weights/manifest.json, written by `zoo publish`)."""
    from zoo.registry import add_tag, get_entry
    from zoo.weights.manifest import tags_from_manifest

    for model, tag in tags_from_manifest():
        add_tag(get_entry(model), tag)


_load_published()
