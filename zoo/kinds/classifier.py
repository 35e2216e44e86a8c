"""The image / audio classifier kind: a backbone composed with a classification head, under timm's contract.

Composition keeps backbones free of task code: the same backbone serves image, audio and vision-language
tasks, and an official checkpoint's ``head.*`` keys land on ``head.fc`` through the family's converter.
The head is chosen by name (``head='linear' | 'mlp' | 'attn'``, see ``heads.classification``); pooled heads
see the backbone's ``forward_pool`` (its ``global_pool`` choice), the attention-pooling head the unpooled
tokens of ``forward_features``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from heads.classification import build_head
from zoo.errors import ConfigError, InputShapeError
from zoo.inputs import check_image_batch


class Classifier(nn.Module):
    """``backbone`` (``forward_features`` + ``forward_pool``) followed by a classification head."""

    def __init__(self, backbone: nn.Module, num_classes: int, drop_rate: float = 0.0, head: str = "linear",
                 head_cfg: dict | None = None, pretrained_cfg: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.head_hidden_size = backbone.num_features
        self.head_name = head
        self.head_cfg = dict(head_cfg or {})
        self.head = self._make_head(head, num_classes, drop_rate, self.head_cfg)
        self.pretrained_cfg = dict(pretrained_cfg or {})
        self.default_cfg = self.pretrained_cfg  # timm's older name

    def _make_head(self, name: str, num_classes: int, drop_rate: float, cfg: dict) -> nn.Module:
        from heads.classification import HEADS

        if name not in HEADS:
            raise ConfigError(f"unknown head {name!r}; choose one of {', '.join(HEADS)} (head=...)")
        width = self.token_width() if HEADS[name].pools_tokens else self.backbone.num_features
        try:
            return build_head(name, width, num_classes, drop_rate, **cfg)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot build the {name!r} head: {e}") from None

    def token_width(self) -> int:
        """Channels of ``forward_features`` (what a token-pooling head sees)."""
        return self.backbone.num_features

    # -- contract attributes ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def global_pool(self) -> str:
        return "attn" if self.head.pools_tokens else self.backbone.global_pool

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier of ``num_classes`` (0 removes it); ``global_pool`` switches the backbone's pooling
        (``''`` removes it where the family allows). With the attention-pooling head a ``global_pool`` drops
        the attention pool for a linear head on that pooling, as timm drops its ``attn_pool``."""
        if global_pool is not None:
            self._set_pool(global_pool)
            if self.head.pools_tokens:
                self.head = self._make_head("linear", num_classes, self.head.drop.p, {}).to(self._ref_param())
                self.head_name, self.head_cfg = "linear", {}
                return
        self.head.reset(num_classes)

    def _set_pool(self, global_pool: str) -> None:
        try:
            self.backbone.set_global_pool(global_pool)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _ref_param(self) -> torch.Tensor:
        return next(self.backbone.parameters())

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
        check_image_batch(x, self._ref_param().dtype, getattr(self, "check_finite_inputs", False))  # zoo/inputs.py
        check = getattr(self.backbone, "check_input", None) or getattr(
            getattr(self.backbone, "patch_embed", None), "check_input", None)
        if check is not None:
            try:
                check(x)
            except ValueError as e:
                raise InputShapeError(str(e)) from None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.head.pools_tokens:
            if x.ndim == 4:  # a feature map [B, C, H, W] -> tokens [B, H * W, C]
                x = x.flatten(2).transpose(1, 2)
        else:
            x = self.backbone.forward_pool(x)
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        self.check_input(x)
        return self.backbone.forward_intermediates(x, *args, **kwargs)
