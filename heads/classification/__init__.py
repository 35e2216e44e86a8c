"""Classification heads: features -> logits [B, num_classes].

Three heads, chosen by name (``HEADS``, ``build_head``):

- ``linear``: dropout then one Linear on pooled features [B, C] (timm's classifier).
- ``mlp``: Linear -> activation -> dropout -> Linear on pooled features (a hidden layer for linear probes
  that need more than a hyperplane, or for heads trained from scratch on a frozen backbone).
- ``attn``: attention pooling as timm's ``AttentionPoolLatent`` with one query: a learned latent attends
  over the unpooled tokens [B, T, C], then a residual MLP, dropout and the Linear. It pools by itself, so
  the model feeds it ``forward_features`` unpooled (``pools_tokens = True``).

Every head has the same small contract: ``forward(x, pre_logits=False)`` (``pre_logits`` returns what the
final Linear would see), ``reset(num_classes)`` (a fresh classifier; 0 makes it the identity),
``num_classes``, ``in_features``, and its final Linear at ``fc`` (so checkpoints' ``head.weight`` maps to
``head.fc.weight``, and the composed model's ``get_classifier()`` is ``head.fc``). Heads know nothing of the
registry or of Lightning.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers import Mlp

__all__ = ["LinearHead", "MlpHead", "AttentionPoolHead", "HEADS", "build_head"]


class _Classifier(nn.Module):
    """The shared end of every head: dropout, then ``fc`` of ``num_classes`` outputs (identity for 0)."""

    pools_tokens = False

    def __init__(self, fc_in: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.fc_in = fc_in
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = 0
        self.fc: nn.Module = nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs (0: identity)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        if num_classes == 0:
            self.fc = nn.Identity()
            return
        fc = nn.Linear(self.fc_in, num_classes)
        nn.init.trunc_normal_(fc.weight, std=0.02)
        nn.init.zeros_(fc.bias)
        ref = next(self.parameters(), None)  # keep the device and dtype of the head being reset
        if ref is not None:
            fc = fc.to(device=ref.device, dtype=ref.dtype)
        self.fc = fc

    def _classify(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class LinearHead(_Classifier):
    """Dropout then a Linear on pooled features [B, C]."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        self.in_features = in_features
        super().__init__(in_features, num_classes, drop_rate)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._classify(x, pre_logits)


class MlpHead(_Classifier):
    """Linear(C -> hidden) -> act -> dropout -> Linear(hidden -> num_classes); ``pre_logits`` is the hidden."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, hidden_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU):
        hidden = hidden_features or in_features
        if hidden <= 0:
            raise ValueError(f"hidden_features must be > 0, got {hidden}")
        self.in_features = in_features
        super().__init__(hidden, num_classes, drop_rate)
        self.pre = nn.Linear(in_features, hidden)
        self.act = act_layer()
        nn.init.trunc_normal_(self.pre.weight, std=0.02)
        nn.init.zeros_(self.pre.bias)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._classify(self.act(self.pre(x)), pre_logits)


class AttentionPoolHead(_Classifier):
    """One learned query attends over tokens [B, T, C] (multi-head, SDPA), + residual MLP -> classifier.

    timm's ``AttentionPoolLatent`` (SigLIP's MAP head) with a single latent: q from the latent, k and v
    from the tokens, an output projection, then ``x + mlp(norm(x))``.
    """

    pools_tokens = True

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, num_heads: int | None = None,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6):
        num_heads = num_heads or next(h for h in (8, 4, 2, 1) if in_features % h == 0)
        if in_features % num_heads:
            raise ValueError(f"attention-pool width {in_features} is not divisible by num_heads {num_heads}")
        self.in_features = in_features
        super().__init__(in_features, num_classes, drop_rate)
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, in_features))
        self.q = nn.Linear(in_features, in_features, bias=qkv_bias)
        self.kv = nn.Linear(in_features, 2 * in_features, bias=qkv_bias)
        self.proj = nn.Linear(in_features, in_features)
        self.norm = nn.LayerNorm(in_features, eps=norm_eps)
        self.mlp = Mlp(in_features, int(in_features * mlp_ratio))
        nn.init.trunc_normal_(self.latent, std=in_features ** -0.5)
        for m in (self.q, self.kv, self.proj):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, C] -> pooled [B, C]."""
        if x.ndim != 3:
            raise ValueError(f"attention pooling takes tokens [B, T, C], got shape {tuple(x.shape)}")
        B, T, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(self.latent).expand(B, -1, -1).reshape(B, 1, h, d).transpose(1, 2)
        k, v = self.kv(x).reshape(B, T, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C)
        o = self.proj(o)
        o = o + self.mlp(self.norm(o))
        return o[:, 0]

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self._classify(self.pool(x), pre_logits)


HEADS: dict[str, Callable[..., _Classifier]] = {"linear": LinearHead, "mlp": MlpHead, "attn": AttentionPoolHead}
"""Head name -> class; every class takes ``(in_features, num_classes, drop_rate, **options)``."""


def build_head(name: str, in_features: int, num_classes: int, drop_rate: float = 0.0, **options) -> _Classifier:
    """The head ``name`` (one of ``HEADS``) with its options (``hidden_features``, ``num_heads``, ...)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")
    return HEADS[name](in_features, num_classes, drop_rate, **options)
