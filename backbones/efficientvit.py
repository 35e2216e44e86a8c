"""EfficientViT (MIT Han lab; Cai et al., "EfficientViT: Multi-Scale Linear Attention", arXiv 2205.14756), B series.

A conv net whose last two stages add global context with ReLU linear attention (LiteMLA): q, k, v from a
1x1 conv, a multi-scale branch (depthwise 5x5 + grouped 1x1 over the same q, k, v) doubling the heads, then
o = relu(q) (relu(k)ᵀ v) / (relu(q) · Σ relu(k) + eps) in fp32 through ``kernels.linear_attention`` -- linear
in the number of pixels, hence usable at high resolution. Layout (timm's ``efficientvit_mit.EfficientVit``):

- stem: Conv3x3 s2 + BN + hardswish, then ``depths[0]`` residual DSConv blocks;
- stages 0-1: MBConv (expand 4) blocks, the first with stride 2 and no shortcut;
- stages 2-3: an MBConv s2 downsample without the first two norms ("fewer_norm", biases instead), then
  ``depth`` EfficientViT blocks = Residual(LiteMLA) + Residual(MBConv, fewer_norm);
- pre-logits (timm's head minus its last Linear): 1x1 ConvNormAct to ``head_widths[0]`` -> global pool ->
  Linear(no bias) -> LayerNorm -> hardswish. It lives here, in ``forward_pool``, so the zoo's classifier
  head holds only the final Linear (timm ``head.classifier.4``) and ``num_features`` is what the head sees.

Module and parameter names are timm's (``stem.in_conv.conv``, ``stages.2.blocks.1.context_module.main.qkv``...)
except the pre-logits, renamed ``pre_logits.{in_conv, fc, norm}`` from timm's ``head.{in_conv, classifier.0,
classifier.1}`` (the converter in zoo/families/efficientvit.py maps them). BN eps 1e-5 (B series), LayerNorm eps
1e-5, attention eps 1e-5 (timm; the official 1e-15 fails in fp16/bf16). Fully convolutional: any input size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from backbones.layers import check_pool, resolve_indices, to_2tuple
from kernels.linear_attention import relu_linear_attention

__all__ = ["EfficientViTConfig", "EfficientViT", "LiteMLA", "EFFICIENTVIT_CONFIGS", "build_efficientvit"]


@dataclass
class EfficientViTConfig:
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)   # stem, stage 0..3
    depths: tuple[int, ...] = (1, 2, 3, 3, 4)
    head_dim: int = 16
    head_widths: tuple[int, int] = (1536, 1600)        # pre-logits conv width, pre-logits MLP width
    expand_ratio: float = 4.0
    in_chans: int = 3
    img_size: int | tuple[int, int] = 224              # nominal (for configs); any size runs
    global_pool: str = "avg"                           # 'avg' | 'max' | 'avgmax'
    norm_eps: float = 1e-5                             # BatchNorm
    head_norm_eps: float = 1e-5                        # pre-logits LayerNorm
    attn_eps: float = 1e-5
    attn_scales: tuple[int, ...] = (5,)
    extra: dict = field(default_factory=dict)


POOLS = ("avg", "max", "avgmax")
"""timm's EfficientViT pools (its ``SelectAdaptivePool2d`` types); pooling cannot be switched off, as in timm."""


class ConvNormAct(nn.Module):
    """Conv2d (same padding) -> BatchNorm or nothing -> activation or nothing (timm's keys conv/norm/act)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, bias: bool = False,
                 norm: bool = True, act: bool = True, eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(cout, eps=eps) if norm else nn.Identity()
        self.act = nn.Hardswish() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DSConv(nn.Module):
    """Depthwise 3x3 (BN, hardswish) -> pointwise 1x1 (BN): the stem's residual blocks."""

    def __init__(self, cin: int, cout: int, stride: int = 1, eps: float = 1e-5):
        super().__init__()
        self.depth_conv = ConvNormAct(cin, cin, 3, stride, groups=cin, eps=eps)
        self.point_conv = ConvNormAct(cin, cout, 1, act=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck 1x1 expand -> depthwise 3x3 -> 1x1 project (BN only at the end when ``fewer_norm``).

    ``fewer_norm`` (stages 2-3): the first two convs carry biases instead of BatchNorm, as in the official net.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, expand_ratio: float = 4.0, fewer_norm: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        mid = round(cin * expand_ratio)
        self.inverted_conv = ConvNormAct(cin, mid, 1, bias=fewer_norm, norm=not fewer_norm, eps=eps)
        self.depth_conv = ConvNormAct(mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm, eps=eps)
        self.point_conv = ConvNormAct(mid, cout, 1, act=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class ResidualBlock(nn.Module):
    """``main(x) (+ x)``; ``shortcut`` is an Identity or None (stride-2 blocks), as timm's ResidualBlock."""

    def __init__(self, main: nn.Module, residual: bool = True):
        super().__init__()
        self.main = main
        self.shortcut = nn.Identity() if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        return out + self.shortcut(x) if self.shortcut is not None else out


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention on [B, C, H, W] (timm's LiteMLA keys: qkv, aggreg, proj).

    Channels are laid out per head as [q (d) | k (d) | v (d)]; each scale in ``scales`` adds as many heads
    (depthwise s x s conv then a 1x1 conv grouped per q/k/v of each head). Attention runs per head over
    the H*W tokens through ``relu_linear_attention`` (fp32 inside, [B, T, H, D] views of the same buffer, no
    copies in), then a 1x1 conv + BN projects the 2x heads back.
    """

    def __init__(self, dim: int, head_dim: int = 16, scales: tuple[int, ...] = (5,), eps: float = 1e-5,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.dim = head_dim
        self.eps = eps
        heads = dim // head_dim
        total = heads * head_dim
        self.heads = heads
        self.qkv = ConvNormAct(dim, 3 * total, 1, norm=False, act=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            ) for s in scales)
        self.proj = ConvNormAct(total * (1 + len(scales)), dim, 1, act=False, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        d = self.dim
        qkv = qkv.reshape(B, -1, 3 * d, H * W)                 # [B, heads', 3d, N]
        q, k, v = (t.permute(0, 3, 1, 2) for t in qkv.split(d, dim=2))   # [B, N, heads', d] views
        out = relu_linear_attention(q, k, v, eps=self.eps)      # [B, N, heads', d], fp32 math
        out = out.permute(0, 2, 3, 1).reshape(B, -1, H, W)
        return self.proj(out)


class EfficientViTBlock(nn.Module):
    """Residual(LiteMLA) for context, then Residual(MBConv) for local mixing (timm's context/local_module)."""

    def __init__(self, dim: int, head_dim: int, expand_ratio: float, attn_eps: float, scales, eps: float):
        super().__init__()
        self.context_module = ResidualBlock(LiteMLA(dim, head_dim, scales, attn_eps, eps))
        self.local_module = ResidualBlock(MBConv(dim, dim, 1, expand_ratio, fewer_norm=True, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class Stem(nn.Sequential):
    def __init__(self, cin: int, cout: int, depth: int, eps: float):
        super().__init__()
        self.add_module("in_conv", ConvNormAct(cin, cout, 3, 2, eps=eps))
        for i in range(depth):
            self.add_module(f"res{i}", ResidualBlock(DSConv(cout, cout, eps=eps)))


class Stage(nn.Module):
    """A stride-2 MBConv downsample, then MBConv blocks (``vit_stage=False``) or EfficientViT blocks."""

    def __init__(self, cin: int, cout: int, depth: int, cfg: EfficientViTConfig, vit_stage: bool):
        super().__init__()
        eps = cfg.norm_eps
        blocks: list[nn.Module] = [ResidualBlock(MBConv(cin, cout, 2, cfg.expand_ratio, vit_stage, eps), residual=False)]
        if vit_stage:
            blocks += [EfficientViTBlock(cout, cfg.head_dim, cfg.expand_ratio, cfg.attn_eps, cfg.attn_scales, eps)
                       for _ in range(depth)]
        else:
            blocks += [ResidualBlock(MBConv(cout, cout, 1, cfg.expand_ratio, False, eps)) for _ in range(1, depth)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class PreLogits(nn.Module):
    """timm's ClassifierHead without its last Linear: in_conv -> pool -> Linear -> LayerNorm -> hardswish.

    ``reset()`` drops the conv and the MLP (timm's ``reset_classifier(reset_other=True)``): pool only.
    """

    def __init__(self, cin: int, widths: tuple[int, int], eps: float, ln_eps: float):
        super().__init__()
        self.in_conv = ConvNormAct(cin, widths[0], 1, eps=eps)
        self.fc = nn.Linear(widths[0], widths[1], bias=False)
        self.norm = nn.LayerNorm(widths[1], eps=ln_eps)
        self.act = nn.Hardswish()
        self.num_features = widths[1]

    def reset(self, cin: int) -> None:
        self.in_conv, self.fc, self.norm, self.act = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()
        self.num_features = cin

    def forward(self, x: torch.Tensor, pool: str) -> torch.Tensor:
        x = self.in_conv(x)
        if pool == "avg":
            x = x.mean(dim=(2, 3))
        elif pool == "max":
            x = x.amax(dim=(2, 3))
        elif pool == "avgmax":
            x = 0.5 * (x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)))
        else:
            raise ValueError(f"global_pool must be one of {POOLS}, got {pool!r}")
        return self.act(self.norm(self.fc(x)))


class EfficientViT(nn.Module):
    """EfficientViT-B backbone: ``forward_features`` -> final NCHW map, ``forward_pool`` -> pre-logits [B, C].

    ``num_features`` is the width ``forward_pool`` returns (``head_widths[1]``; the stage width after
    ``reset_pre_logits()``); ``stage_channels`` is the channel count of ``forward_features``.
    """

    supported_pools = POOLS

    def __init__(self, cfg: EfficientViTConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or EfficientViTConfig(**kwargs)
        if len(cfg.widths) != 5 or len(cfg.depths) != 5:
            raise ValueError(f"widths and depths need 5 entries (stem + 4 stages), got {cfg.widths}, {cfg.depths}")
        self._check_pool(cfg.global_pool)
        for w in cfg.widths[3:]:
            if w % cfg.head_dim:
                raise ValueError(f"attention stage width {w} is not divisible by head_dim {cfg.head_dim}")
        self.cfg = cfg
        self._img_size = to_2tuple(cfg.img_size)
        self._in_chans = cfg.in_chans
        self.global_pool = cfg.global_pool
        self.stem = Stem(cfg.in_chans, cfg.widths[0], cfg.depths[0], cfg.norm_eps)
        self.stages = nn.Sequential()
        self.feature_info = []
        cin, stride = cfg.widths[0], 2
        for i, (w, d) in enumerate(zip(cfg.widths[1:], cfg.depths[1:])):
            self.stages.append(Stage(cin, w, d, cfg, vit_stage=i >= 2))
            cin, stride = w, stride * 2
            self.feature_info.append(dict(num_chs=w, reduction=stride, module=f"stages.{i}"))
        self.stage_channels = cin
        self.pre_logits = PreLogits(cin, tuple(cfg.head_widths), cfg.norm_eps, cfg.head_norm_eps)
        self.num_features = self.pre_logits.num_features
        self.grad_checkpointing = False

    # -- contract -----------------------------------------------------------------------------------------
    @property
    def img_size(self) -> tuple[int, int]:
        return self._img_size

    @property
    def in_chans(self) -> int:
        return self._in_chans

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError naming the fix for a non-image or wrong-channel input (any H, W >= 1 is fine)."""
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D input [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self._in_chans:
            raise ValueError(f"expected {self._in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             f"build the model with in_chans={x.shape[1]}")

    def no_weight_decay(self) -> set[str]:
        return set()

    def group_matcher(self, coarse: bool = False) -> dict:
        blocks = r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                    (r"^pre_logits", (99999,))]
        return {"stem": r"^stem", "blocks": blocks}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @staticmethod
    def _check_pool(pool: str) -> str:
        if pool == "":
            raise ValueError(f"EfficientViT cannot disable pooling (as timm); choose one of {POOLS}")
        return check_pool(pool, POOLS, "EfficientViT")

    def set_global_pool(self, pool: str) -> None:
        """Switch the pooling after build (the pre-logits layers take any of them)."""
        self.global_pool = self._check_pool(pool)

    def reset_pre_logits(self) -> None:
        """Drop the pre-logits conv and MLP (pooling stays): timm's ``reset_classifier(reset_other=True)``."""
        self.pre_logits.reset(self.stage_channels)
        self.num_features = self.stage_channels

    # -- forward ------------------------------------------------------------------------------------------
    def _stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = self._stage(stage, x)
        return x

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final map [B, C, H, W] -> pre-logits [B, num_features] (timm's head up to its last Linear)."""
        return self.pre_logits(x, self.global_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pool(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs as NCHW maps, timm style (``indices``: last n stages, or a list; ``norm`` unused)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for EfficientViT, got {output_fmt!r}")
        n = len(self.stages)
        take = resolve_indices(indices, n)
        self.check_input(x)
        x = self.stem(x)
        feats = []
        last = max(take) if stop_early else n - 1
        for i, stage in enumerate(list(self.stages)[: last + 1]):
            x = self._stage(stage, x)
            if i in take:
                feats.append(x)
        if intermediates_only:
            return feats
        return x, feats


EFFICIENTVIT_CONFIGS: dict[str, dict] = {
    "efficientvit_b0": dict(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16, head_widths=(1024, 1280)),
    "efficientvit_b1": dict(widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16,
                            head_widths=(1536, 1600)),
    "efficientvit_b2": dict(widths=(24, 48, 96, 192, 384), depths=(1, 3, 4, 4, 6), head_dim=32,
                            head_widths=(2304, 2560)),
    "efficientvit_b3": dict(widths=(32, 64, 128, 256, 512), depths=(1, 4, 6, 6, 9), head_dim=32,
                            head_widths=(2304, 2560)),
}
"""timm's ``efficientvit_b0..b3`` model_args (= the official configs), by registered name."""


def build_efficientvit(name: str, **overrides) -> EfficientViT:
    if name not in EFFICIENTVIT_CONFIGS:
        raise KeyError(name)
    cfg = dict(EFFICIENTVIT_CONFIGS[name])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return EfficientViT(EfficientViTConfig(**cfg))
