"""Expose every model of a timm-contract kind (image, audio: ``Kind.timm``) to timm's registry as ``zoo_<name>``.

After ``import zoo``, ``timm.create_model('zoo_vit_tiny_patch16_224')`` builds our model, and so does
open_clip's ``timm_model_name`` (which calls timm). Pretrained weights come from our registry.
"""
from __future__ import annotations

import sys

from zoo.kinds import KIND_TABLE
from zoo.registry import _REGISTRY

PREFIX = "zoo_"
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def _entrypoint(name: str):
    def entry(pretrained: bool = False, **kwargs):
        from zoo.factory import create_model

        pretrained_cfg = kwargs.pop("pretrained_cfg", None)
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        tagged = f"{name}.{pretrained_cfg}" if isinstance(pretrained_cfg, str) and pretrained_cfg else name
        return create_model(tagged, pretrained=pretrained, **kwargs)

    entry.__name__ = PREFIX + name
    entry.__qualname__ = PREFIX + name
    entry.__module__ = __name__
    entry.__doc__ = f"speedzoo's {name} (see `zoo info {name}`)."
    return entry


def register_with_timm() -> list[str]:
    """Register each timm-contract model not yet known to timm; returns the timm names added."""
    from timm.models import is_model, register_model

    added = []
    module = sys.modules[__name__]
    for name, entry in _REGISTRY.items():
        if not KIND_TABLE[entry.kind].timm:
            continue
        timm_name = PREFIX + name
        if is_model(timm_name):
            continue
        fn = _entrypoint(name)
        setattr(module, timm_name, fn)
        register_model(fn)
        added.append(timm_name)
    return added


__all__ = ["register_with_timm", "PREFIX"]
