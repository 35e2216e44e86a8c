"""MoE ViT registry entries (V-MoE layout: the MLP of every other block is a mixture of experts) and sparse
upcycling from a dense ViT checkpoint.

The architectures are ViTs (backbones/vit.py) with ``ViTConfig.moe`` set, so every ViT feature (mixers,
layouts, pooling, the timm contract, timm's key names outside the MoE MLPs) carries over; an ``moe=`` argument
is merged into the registered MoE options (``moe=dict(capacity_factor=1.25)`` changes only that).

Upcycling (Komatsuzaki et al., arXiv 2212.05055): ``create_model('vit_micro_moe_patch4_32',
upcycle_from='vit_micro_patch4_32.cifar10')`` (a ``name.tag``, or a checkpoint file of the dense twin: the
same ViT without experts) copies every dense weight, copies each dense MLP into every expert of its block
and keeps the fresh router; a head of another size stays fresh. With top-k renormalised gates and no
capacity the upcycled model computes the dense one exactly at initialisation.
"""
from __future__ import annotations

import inspect
import logging
import os
from dataclasses import fields
from typing import Any

import torch.nn as nn

from backbones.vit import VIT_CONFIGS, VisionTransformer, ViTConfig, build_vit
from zoo.errors import ConfigError
from zoo.families import PATCH_ADAPT, cifar_cfg, classifier_builder, image_cfg
from zoo.families.vit import convert_timm_vit
from zoo.registry import ModelEntry, register

log = logging.getLogger(__name__)

_TOP2 = dict(num_experts=8, k=2, router="topk", balance_weight=1e-2, z_weight=1e-3)
VIT_MOE_CONFIGS: dict[str, tuple[str, dict]] = {
    # name: (dense twin, MoE options)
    "vit_micro_moe_patch4_32": ("vit_micro_patch4_32", _TOP2),
    "vit_micro_moe_ec_patch4_32": ("vit_micro_patch4_32", dict(num_experts=8, k=1, router="expert_choice",
                                                               capacity_factor=1.0, z_weight=1e-3)),
    "vit_micro_moe_soft_patch4_32": ("vit_micro_patch4_32", dict(num_experts=8, router="soft", slots_per_expert=8)),
    "vit_micro_moe_ds_patch4_32": ("vit_micro_patch4_32", dict(num_experts=16, k=2, hidden=64, num_shared=2,
                                                               score="sigmoid", bias_update_rate=1e-3,
                                                               balance_weight=1e-4, z_weight=1e-3)),
    "vit_tiny_moe_patch16_224": ("vit_tiny_patch16_224", _TOP2),
}
"""MoE ViTs by registered name: the dense ViT they are built on and their ``ViTConfig.moe`` options."""

_DESCRIPTIONS = {
    "vit_micro_moe_patch4_32": "vit_micro_patch4_32 with an MoE MLP in every other block: 8 full-width GELU experts, "
                               "token-choice top-2 (softmax, renormalised, dropless), Switch balance + z losses",
    "vit_micro_moe_ec_patch4_32": "vit_micro_patch4_32 with expert-choice MoE in every other block: 8 experts, each "
                                  "takes ceil(N/8) tokens of each image (one expert per token on average)",
    "vit_micro_moe_soft_patch4_32": "vit_micro_patch4_32 with Soft MoE in every other block: 8 experts x 8 slots per "
                                    "image (about one slot per token)",
    "vit_micro_moe_ds_patch4_32": "vit_micro_patch4_32 with DeepSeekMoE in every other block: 2 shared + 16 routed "
                                  "experts of width 64, top-2 sigmoid gates, aux-loss-free bias balancing (active "
                                  "width 256 = the dense MLP's)",
    "vit_tiny_moe_patch16_224": "ViT-Ti/16 with an MoE MLP in every other block: 8 experts, token-choice top-2",
}
_PAPERS = {"vit_micro_moe_ec_patch4_32": "arXiv:2202.09368", "vit_micro_moe_soft_patch4_32": "arXiv:2308.00951",
           "vit_micro_moe_ds_patch4_32": "arXiv:2401.06066"}


def build_moe_vit(name: str, moe: dict | None = None, **overrides) -> VisionTransformer:
    """The dense twin's config with the registered MoE options (``moe`` merged over them)."""
    if name not in VIT_MOE_CONFIGS:
        raise KeyError(name)
    dense, options = VIT_MOE_CONFIGS[name]
    return build_vit(dense, moe={**options, **(moe or {})}, **overrides)


# -- upcycling ----------------------------------------------------------------------------------------------
_NOT_DENSE = ("moe", "moe_every", "moe_layers", "extra", "img_size", "in_chans")


def _dense_model(model: nn.Module, source: str | os.PathLike | nn.Module, dense_name: str) -> nn.Module:
    """The dense model to upcycle from: a registered ``name.tag`` (its weights), a bare name with a default
    tag, a checkpoint file of ``dense_name`` (this MoE model's dense twin), or a dense classifier itself."""
    from zoo.factory import create_model
    from zoo.registry import get_entry, split_name

    if isinstance(source, nn.Module):
        return source
    if os.path.isfile(source):  # the dense twin of this very model: its ViT config without the experts
        bb = model.backbone
        same = {f.name: getattr(bb.cfg, f.name) for f in fields(ViTConfig) if f.name not in _NOT_DENSE}
        return create_model(dense_name, checkpoint_path=source, num_classes=model.num_classes,
                            in_chans=bb.in_chans, img_size=bb.img_size, **same)
    source = str(source)
    if os.sep in source or source.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")):
        raise ConfigError(f"upcycle_from={source!r}: no such file; give an existing checkpoint of {dense_name} "
                          f"or a registered 'name.tag' such as vit_micro_patch4_32.cifar10")
    name, tag = split_name(source)
    entry = get_entry(name)
    if tag is None and entry.default_tag is None:
        raise ConfigError(f"upcycle_from={source!r} has no weights to upcycle (no tag, and no such file): give a "
                          f"'name.tag' (zoo info {name} lists them) or the path of a {dense_name} checkpoint")
    return create_model(source, pretrained=True)


def upcycle(model: nn.Module, source: str | os.PathLike | nn.Module, dense_name: str) -> nn.Module:
    """Fill ``model`` (an MoE ViT classifier) from a dense ViT: every dense weight copied, each dense MLP into
    every expert of its block, the router fresh; returns ``model``."""
    dense = _dense_model(model, source, dense_name)
    label = str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__} object>"
    src, dst = getattr(dense, "backbone", None), model.backbone
    if not isinstance(src, VisionTransformer) or src.moe_layers:
        raise ConfigError(f"upcycle_from={label!r} is a {type(src or dense).__name__}, not a dense ViT: "
                          f"upcycling copies a ViT's MLPs into experts; use a ViT of the same size "
                          f"(e.g. {dense_name})")
    if (src.embed_dim, len(src.blocks)) != (dst.embed_dim, len(dst.blocks)):
        raise ConfigError(f"upcycle_from={label!r} is {src.embed_dim} wide and {len(src.blocks)} deep, this "
                          f"model {dst.embed_dim} wide and {len(dst.blocks)} deep: upcycle from a ViT of the same "
                          f"width and depth (e.g. {dense_name})")
    moe_prefixes = tuple(f"backbone.blocks.{i}.mlp." for i in dst.moe_layers)
    own, theirs = model.state_dict(), dense.state_dict()
    take, bad = {}, []
    for key, value in own.items():
        if key.startswith(moe_prefixes):
            continue
        if key in theirs and theirs[key].shape == value.shape:
            take[key] = theirs[key]
        elif not key.startswith("head."):  # a head of another size (or type) stays fresh
            bad.append(f"{key} {tuple(value.shape)} vs {tuple(theirs[key].shape) if key in theirs else 'absent'}")
    if bad:
        raise ConfigError(f"upcycle_from={label!r} does not fit this model outside the MoE MLPs (same mixer, "
                          f"patch size, image size and channels needed): {', '.join(bad[:6])}")
    model.load_state_dict(take, strict=False)
    for i in dst.moe_layers:
        try:
            dst.blocks[i].mlp.load_dense(src.blocks[i].mlp)
        except ValueError as e:
            raise ConfigError(f"cannot upcycle block {i} from {label!r}: {e}") from None
    log.info("upcycled %d MoE blocks from %s (routers fresh%s)", len(dst.moe_layers), label,
             "" if all(k in take for k in own if k.startswith("head.")) else ", head fresh")
    return model


def _builder(name: str):
    build = classifier_builder(build_moe_vit, ViTConfig, name)

    def build_with_upcycle(upcycle_from: str | os.PathLike | nn.Module | None = None, **kwargs: Any) -> nn.Module:
        model = build(**kwargs)
        return upcycle(model, upcycle_from, VIT_MOE_CONFIGS[name][0]) if upcycle_from else model

    build_with_upcycle.__name__ = f"build_{name}"
    params = [p for p in inspect.signature(build).parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = inspect.Parameter("upcycle_from", inspect.Parameter.KEYWORD_ONLY, default=None)
    build_with_upcycle.__signature__ = inspect.Signature(params + [extra, inspect.Parameter(
        "overrides", inspect.Parameter.VAR_KEYWORD)])
    return build_with_upcycle


for _name, (_dense, _options) in VIT_MOE_CONFIGS.items():
    register(ModelEntry(
        name=_name, kind="image", family="vit-moe",
        builder=_builder(_name),
        default_cfg=cifar_cfg() if VIT_CONFIGS[_dense]["img_size"] == 32 else image_cfg(),
        converter=convert_timm_vit,
        adapt=PATCH_ADAPT,
        description=_DESCRIPTIONS[_name],
        paper=_PAPERS.get(_name, "arXiv:2106.05974"),
    ))
