"""Classification heads: pooled features [B, C] -> logits [B, num_classes]."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ClassifierHead"]


class ClassifierHead(nn.Module):
    """Dropout then a linear classifier; ``num_classes=0`` makes it the identity (features out).

    Keys are ``fc.weight`` / ``fc.bias``, so a checkpoint's ``head.weight`` maps to ``head.fc.weight``.
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = 0
        self.fc: nn.Module = nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        if num_classes == 0:
            self.fc = nn.Identity()
            return
        fc = nn.Linear(self.in_features, num_classes)
        nn.init.trunc_normal_(fc.weight, std=0.02)
        nn.init.zeros_(fc.bias)
        if isinstance(self.fc, nn.Linear):  # keep device and dtype of the head being replaced
            fc = fc.to(device=self.fc.weight.device, dtype=self.fc.weight.dtype)
        self.fc = fc

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x)
        return x if pre_logits else self.fc(x)
