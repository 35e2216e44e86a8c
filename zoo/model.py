"""The model a user gets: a backbone composed with a task head, under timm's model contract.

Composition keeps backbones free of task code: the same backbone serves image, audio and vision-language
tasks, and an official checkpoint's ``head.*`` keys land on ``head.fc`` through the family's converter.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from heads.classification import ClassifierHead
from zoo.errors import InputShapeError


class ZooModel(nn.Module):
    """``backbone`` (``forward_features`` + ``forward_pool``) followed by a :class:`ClassifierHead`."""

    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.0, pretrained_cfg: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.head_hidden_size = backbone.num_features
        self.head = ClassifierHead(backbone.num_features, num_classes, drop_rate)
        self.pretrained_cfg = dict(pretrained_cfg or {})
        self.default_cfg = self.pretrained_cfg  # timm's older name
        self.global_pool = getattr(backbone, "global_pool", "token")

    # -- contract attributes ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier of ``num_classes`` (0 removes it); ``global_pool=''`` also removes pooling."""
        self.head.reset(num_classes)
        if global_pool is not None:
            if global_pool and hasattr(self.backbone, "global_pool") and global_pool != self.backbone.global_pool:
                supported = getattr(self.backbone, "supported_pools", (self.backbone.global_pool,))
                if global_pool not in supported:
                    raise ValueError(f"global_pool {global_pool!r} not supported; choose one of {supported} or ''")
                self.backbone.global_pool = global_pool
            self.global_pool = global_pool

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in inner}

    def group_matcher(self, coarse: bool = False) -> dict:
        inner = self.backbone.group_matcher(coarse)
        out = {}
        for k, v in inner.items():
            if isinstance(v, str):
                out[k] = v.replace("^", "^backbone\\.")
            else:
                out[k] = [(p.replace("^", "^backbone\\."), idx) for p, idx in v]
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    # -- forward ------------------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputShapeError` (with the fix) for a wrongly shaped input."""
        if not isinstance(x, torch.Tensor):
            raise InputShapeError(f"expected a torch.Tensor, got {type(x).__name__}")
        embed = getattr(self.backbone, "patch_embed", None)
        if embed is not None and hasattr(embed, "check_input"):
            try:
                embed.check_input(x)
            except ValueError as e:
                raise InputShapeError(str(e)) from None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool != "":
            x = self.backbone.forward_pool(x)
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        self.check_input(x)
        return self.backbone.forward_intermediates(x, *args, **kwargs)
