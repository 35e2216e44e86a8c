"""Vision Transformer (Dosovitskiy et al. 2020) on PyTorch SDPA: the baseline every efficient family is
measured against. Key names follow timm's ``VisionTransformer`` so its weights load with a prefix change.

The token mixer is a constructor argument (``ViTConfig.mixer``: softmax, window, block_sparse, linear, gla,
mamba, delta, hybrid; options in ``mixer_cfg``; see backbones/layers/mixers.py) with patch embedding, MLP, norms
and depth unchanged, so mixers compare on equal terms. Every mixer sits at ``blocks.i.attn``; ``softmax`` is
timm's attention and keeps its keys. Hybrids are data: ``ViTConfig.layout`` names each block's mixer as a
pattern (``"gla*3,softmax"`` repeated to the depth, ``"mamba*6,softmax*6"``, or a list; parsed by
backbones.layers.hybrid.parse_layout) and then wins over ``mixer``, the uniform case; with several mixers in a
layout ``mixer_cfg`` is keyed by mixer name. ``hybrid`` is the intra-layer (Hymba) mixer.

The backbone ends at its features: ``forward_features`` returns the final-normed tokens ``[B, 1 + M, C]``
and ``forward_pool`` the pooling chosen by ``global_pool`` (timm's choices: ``'token'``, ``'avg'``,
``'max'``, ``'avgmax'`` over the patch tokens, or ``''`` for the tokens themselves), followed by ``fc_norm``
as in timm (a LayerNorm in place of the final norm when built for a reducing pool). ``set_global_pool``
switches it after build. Heads live in ``heads/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from backbones.layers import (TOKEN_POOLS, DropPath, Mlp, PatchEmbed, PatchInputMixin, check_pool, pool_tokens,
                              resample_pos_embed, resolve_indices, to_2tuple)
from backbones.layers.hybrid import layout_mixer_cfgs, parse_layout
from backbones.layers.mixers import MIXERS, build_mixer
from backbones.layers.moe import MoEMlp, moe_layer_indices


@dataclass
class ViTConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    global_pool: str = "token"  # '' | 'token' | 'avg' | 'max' | 'avgmax' (timm's)
    fc_norm: bool | None = None  # None: a LayerNorm after pooling for 'avg' / 'max' / 'avgmax' (timm's rule)
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    mixer: str = "softmax"  # one of backbones.layers.mixers.MIXERS
    mixer_cfg: dict = field(default_factory=dict)  # mixer options (window_size, block_size, feature_map, ...)
    layout: str | list[str] | None = None  # per-block mixers, e.g. "gla*3,softmax" (repeats); None: all `mixer`
    moe: dict | None = None  # MoE MLP options (backbones.layers.moe.MoEMlp: num_experts, k, router, ...); None: dense
    moe_every: int = 2  # V-MoE layout: the MLP of every other block (1, 3, 5, ...) is a mixture of experts
    moe_layers: tuple[int, ...] | None = None  # explicit MoE block indices instead of moe_every
    extra: dict = field(default_factory=dict)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, mixer: str = "softmax",
                 mixer_cfg: dict | None = None, grid_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = build_mixer(mixer, dim, num_heads, qkv_bias, attn_drop, drop, grid_size=grid_size,
                                num_prefix_tokens=num_prefix_tokens, **(mixer_cfg or {}))
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformer(PatchInputMixin, nn.Module):
    """ViT backbone with timm's key layout (``cls_token``, ``pos_embed``, ``patch_embed``, ``blocks``, ``norm``)."""

    def __init__(self, cfg: ViTConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or ViTConfig(**kwargs)
        self.supported_pools = TOKEN_POOLS if cfg.class_token else tuple(p for p in TOKEN_POOLS if p != "token")
        if cfg.global_pool == "token" and not cfg.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        check_pool(cfg.global_pool, self.supported_pools, "ViT")
        if cfg.layout is None:
            if cfg.mixer not in MIXERS:
                raise ValueError(f"mixer must be one of {MIXERS}, got {cfg.mixer!r}")
            self.layout, mixer_cfgs = [cfg.mixer] * cfg.depth, [cfg.mixer_cfg] * cfg.depth
        else:
            self.layout = parse_layout(cfg.layout, cfg.depth, MIXERS)
            mixer_cfgs = layout_mixer_cfgs(self.layout, cfg.mixer_cfg, MIXERS)
        self.cfg = cfg
        self.num_features = self.embed_dim = cfg.embed_dim
        self.global_pool = cfg.global_pool
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim)
        self.num_prefix_tokens = int(cfg.class_token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps, cfg.drop_rate,
                  cfg.attn_drop_rate, dpr[i], self.layout[i], mixer_cfgs[i], self.patch_embed.grid_size,
                  self.num_prefix_tokens) for i in range(cfg.depth))
        self.moe_layers = moe_layer_indices(cfg.depth, cfg.moe_every, cfg.moe_layers) if cfg.moe else ()
        for i in self.moe_layers:  # the MLP of these blocks becomes a mixture of experts (hidden: its width)
            moe = dict(cfg.moe)
            self.blocks[i].mlp = MoEMlp(cfg.embed_dim, moe.pop("hidden", int(cfg.embed_dim * cfg.mlp_ratio)),
                                        drop=cfg.drop_rate, **moe)
        use_fc_norm = cfg.global_pool in ("avg", "max", "avgmax") if cfg.fc_norm is None else cfg.fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if use_fc_norm else nn.Identity()
        self.grad_checkpointing = False
        self.init_weights()

    # -- construction -------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.blocks:  # mixers with an init of their own (Mamba's dt/A, gate biases) redo it
            if hasattr(blk.attn, "reset_parameters"):
                blk.attn.reset_parameters()

    def resize_pos_embed_state(self, pos_embed: torch.Tensor, old_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Resample a checkpoint's ``pos_embed`` to this model's grid."""
        return resample_pos_embed(pos_embed, self.patch_embed.grid_size, old_grid, num_prefix_tokens=self.num_prefix_tokens)

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^cls_token|pos_embed|patch_embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def set_global_pool(self, pool: str) -> None:
        """Switch the pooling after build (norms stay as built, as timm's ``reset_classifier`` does)."""
        self.global_pool = check_pool(pool, self.supported_pools, "ViT")

    # -- forward ------------------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self.norm(x)

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, C] -> ``fc_norm`` of the ``global_pool`` pooling ([B, C]; [B, T, C] for '')."""
        cls = 0 if self.cls_token is not None else None
        return self.fc_norm(pool_tokens(x, self.global_pool, cls, lambda t: t[:, self.num_prefix_tokens:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pool(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Features of selected blocks as [B, C, H, W] maps (or [B, M, C] with output_fmt='NLC'), timm style.

        ``indices`` is a count of last blocks (int) or a list of block indices (negative allowed).
        """
        depth = len(self.blocks)
        take = resolve_indices(indices, depth)
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        feats = []
        x = self._embed(x)
        last = max(take) if stop_early else depth - 1
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = self._run_block(blk, x)
            if i in take:
                y = self.norm(x) if norm else x
                y = y[:, self.num_prefix_tokens:]
                if output_fmt == "NCHW":
                    gh, gw = self.patch_embed.grid_size
                    y = y.reshape(y.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()
                feats.append(y)
        if intermediates_only:
            return feats
        return self.norm(x), feats


VIT_CONFIGS: dict[str, dict] = {
    "vit_micro_patch4_32": dict(img_size=32, patch_size=4, embed_dim=128, depth=12, num_heads=4, mlp_ratio=2.0),
    "vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    "vit_tiny_patch16_224": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
}
"""Architecture configs by registered name (the registry in ``zoo`` composes them with a head)."""

MIXER_NAMES = {"window": "window", "block_sparse": "blocksparse", "linear": "linear", "gla": "gla",
               "mamba": "mamba", "delta": "delta", "hybrid": "hybrid"}
"""Mixer -> its infix in registered names (``vit_tiny_<infix>_patch16_224``); softmax is plain ``vit_tiny_*``."""

# Grid-dependent defaults: 14x14 patches at 224 -> 7x7 windows and 4x4 blocks (+ class token); 8x8 at 32 px
# (patch 4) -> 5x5 windows and 4x4 blocks.
_MIXER_CFG_224 = {"window": dict(window_size=3), "block_sparse": dict(block_size=4)}
_MIXER_CFG_32 = {"window": dict(window_size=2), "block_sparse": dict(block_size=4)}

VIT_MIXER_CONFIGS: dict[str, dict] = {}
for _mixer, _infix in MIXER_NAMES.items():
    VIT_MIXER_CONFIGS[f"vit_tiny_{_infix}_patch16_224"] = dict(VIT_CONFIGS["vit_tiny_patch16_224"], mixer=_mixer,
                                                               mixer_cfg=dict(_MIXER_CFG_224.get(_mixer, {})))
    VIT_MIXER_CONFIGS[f"vit_tiny_{_infix}_patch4_32"] = dict(VIT_CONFIGS["vit_tiny_patch4_32"], mixer=_mixer,
                                                             mixer_cfg=dict(_MIXER_CFG_32.get(_mixer, {})))
"""ViT-Ti with each non-softmax mixer, at 224 (patch 16) and on CIFAR (32 px, patch 4)."""


_MICRO = VIT_CONFIGS["vit_micro_patch4_32"]
VIT_HYBRID_CONFIGS: dict[str, dict] = {
    "vit_micro_mamba_patch4_32": dict(_MICRO, mixer="mamba"),
    "vit_micro_gla_patch4_32": dict(_MICRO, mixer="gla"),
    "vit_micro_gla3softmax1_patch4_32": dict(_MICRO, layout="gla*3,softmax"),
    "vit_micro_mamba6softmax6_patch4_32": dict(_MICRO, layout="mamba*6,softmax*6"),
    "vit_micro_hybrid_patch4_32": dict(_MICRO, mixer="hybrid", mixer_cfg=dict(ssm="mamba", ssm_cfg=dict(expand=1))),
}
"""The CIFAR hybrid comparison at vit_micro_patch4_32's width and depth (128 wide, 12 deep, 4 heads, MLP ratio
2): pure Mamba, pure GLA, 3 GLA : 1 softmax (Qwen3-Next's ratio), Mamba first half / softmax last half
(MambaVision's rule), and the intra-layer hybrid (Hymba: attention heads beside Mamba heads in every block; its
Mamba branch at expand 1, so the model has the pure-Mamba model's parameter count, 2.42 M vs 2.43 M)."""


def build_vit(name: str, **overrides) -> VisionTransformer:
    known = {**VIT_CONFIGS, **VIT_MIXER_CONFIGS, **VIT_HYBRID_CONFIGS}
    if name not in known:
        raise KeyError(name)
    cfg = dict(known[name])
    if overrides.get("mixer") is not None and overrides.get("layout") is None:
        cfg.pop("layout", None)  # an explicit uniform mixer replaces the registered pattern
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if "img_size" in cfg:
        cfg["img_size"] = to_2tuple(cfg["img_size"])
    return VisionTransformer(ViTConfig(**cfg))
