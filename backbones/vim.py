"""Vision Mamba (Vim, Zhu et al. 2024, arXiv:2401.09417): a bidirectional Mamba encoder for images.

The released ``*_midclstok_div2`` configuration: patch tokens (stride 16, or 8 for the "+" models), one class
token inserted in the *middle* of the sequence (index M // 2), a learned absolute position embedding added
after the insertion, then ``depth`` blocks in residual-stream form (Add -> RMSNorm -> BiMambaMixer, the
residual kept in fp32 and the add fused into the norm), and a final RMSNorm ``norm_f`` of residual + hidden.
Key names are the official ones (``layers.{i}.mixer.*``, ``layers.{i}.norm``, ``norm_f``).

``forward_features`` returns the final-normed tokens ``[B, M + 1, D]`` and ``forward_pool`` the pooling of
``global_pool``: the middle class token (``'token'``, the official one, so a linear head on top gives the
official logits), a reduction of the patch tokens (``'avg'``, ``'max'``, ``'avgmax'``) or the tokens
themselves (``''``). Heads live in ``heads/``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.utils.checkpoint

from backbones.layers import (TOKEN_POOLS, DropPath, PatchEmbed, PatchInputMixin, check_pool, pool_tokens,
                              resample_pos_embed, resolve_indices, to_2tuple)
from backbones.layers.mamba import BiMambaMixer
from kernels.norm import rms_norm


@dataclass
class VimConfig:
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    stride: int | None = None  # None: = patch_size; 8 for the "+" models
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int | str = "auto"  # ceil(embed_dim / 16)
    norm_eps: float = 1e-5
    global_pool: str = "token"  # 'token' (middle class token) | 'avg' | 'max' | 'avgmax' (patch tokens) | 
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    extra: dict = field(default_factory=dict)


class RMSNorm(nn.Module):
    """RMSNorm with weight only (key ``weight``); the fused residual add lives in :func:`kernels.norm.rms_norm`."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, prenorm: bool = False):
        return rms_norm(x, self.weight, residual=residual, eps=self.eps, prenorm=prenorm, residual_in_fp32=True)


class VimBlock(nn.Module):
    """Add -> Norm -> Mixer on a (hidden, residual) pair; the residual stream stays fp32.

    ``drop_path`` acts on the incoming hidden (the previous block's mixer output), as in the official code.
    """

    def __init__(self, dim: int, mixer: nn.Module, eps: float = 1e-5, drop_path: float = 0.0):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            hidden = self.drop_path(hidden)
        normed, residual = self.norm(hidden, residual, prenorm=True)
        return self.mixer(normed), residual


class VisionMamba(PatchInputMixin, nn.Module):
    """Vim backbone with the official key layout (``cls_token``, ``pos_embed``, ``patch_embed``, ``layers``,
    ``norm_f``); any ``img_size`` (also non-square) and ``in_chans``."""

    supported_pools = TOKEN_POOLS

    def __init__(self, cfg: VimConfig | None = None, **kwargs):
        super().__init__()
        cfg = cfg or VimConfig(**kwargs)
        check_pool(cfg.global_pool, self.supported_pools, "Vim")
        self.cfg = cfg
        self.num_features = self.embed_dim = cfg.embed_dim
        self.global_pool = cfg.global_pool
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, stride=cfg.stride, in_chans=cfg.in_chans,
                                      embed_dim=cfg.embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_index = num_patches // 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        # Official schedule: block i drops the output of mixer i-1 with rate linspace(0, r, depth)[i-1];
        # the last mixer's output is dropped before norm_f with rate r.
        dpr = [0.0] + torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.layers = nn.ModuleList(
            VimBlock(cfg.embed_dim,
                     BiMambaMixer(cfg.embed_dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                                  dt_rank=cfg.dt_rank),
                     eps=cfg.norm_eps, drop_path=dpr[i])
            for i in range(cfg.depth))
        self.drop_path = DropPath(cfg.drop_path_rate)
        self.norm_f = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.grad_checkpointing = False
        self.init_weights()

    # -- construction -------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Vim's init: trunc-normal .02 pos/cls, lecun-normal patch conv, out_proj kaiming-uniform / sqrt(depth)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight
        std = math.sqrt(1.0 / (w.shape[1] * w.shape[2] * w.shape[3])) / 0.87962566103423978
        nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        for blk in self.layers:
            blk.mixer.reset_parameters()
            nn.init.kaiming_uniform_(blk.mixer.out_proj.weight, a=math.sqrt(5))
            blk.mixer.out_proj.weight.div_(math.sqrt(len(self.layers)))

    def resize_pos_embed_state(self, pos_embed: torch.Tensor, old_grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Resample a checkpoint's ``pos_embed`` to this grid, the middle class slot taken out and put back."""
        return resample_pos_embed(pos_embed, self.patch_embed.grid_size, old_grid, num_prefix_tokens=0,
                                  middle_token=True)

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^cls_token|pos_embed|patch_embed",
                "blocks": [(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def set_global_pool(self, pool: str) -> None:
        """Switch the pooling after build (no parameter depends on it)."""
        self.global_pool = check_pool(pool, self.supported_pools, "Vim")

    # -- forward ------------------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        m = self.cls_index
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        # Under autocast the fp32 class token and pos_embed promote the bf16 patch tokens to fp32, as in the
        # official code, so the residual stream starts in full precision.
        x = torch.cat([x[:, :m], cls, x[:, m:]], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def _run_block(self, blk: VimBlock, hidden: torch.Tensor, residual: torch.Tensor | None):
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, hidden, residual, use_reentrant=False)
        return blk(hidden, residual)

    def _final_norm(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm_f(self.drop_path(hidden), residual)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        hidden, residual = self._embed(x), None
        for blk in self.layers:
            hidden, residual = self._run_block(blk, hidden, residual)
        return self._final_norm(hidden, residual)

    def forward_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, M + 1, C] -> [B, C]: the middle class token or a reduction of the patch tokens
        (the tokens unchanged for ``global_pool=''``)."""
        return pool_tokens(x, self.global_pool, self.cls_index, self._patch_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_pool(self.forward_features(x))

    def _patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        m = self.cls_index
        return torch.cat([x[:, :m], x[:, m + 1:]], dim=1)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Block outputs (residual + hidden, i.e. the stream after block i) without the class token, as
        [B, C, H, W] maps (or [B, M, C] with output_fmt='NLC'); ``norm=True`` applies ``norm_f`` to them.

        ``indices`` is a count of last blocks (int) or a list of block indices (negative allowed).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        depth = len(self.layers)
        take = resolve_indices(indices, depth)
        last = max(take) if stop_early else depth - 1
        feats = []
        hidden, residual = self._embed(x), None
        for i, blk in enumerate(self.layers[: last + 1]):
            hidden, residual = self._run_block(blk, hidden, residual)
            if i in take:
                y = self.norm_f(hidden, residual) if norm else (residual + hidden.float()).to(hidden.dtype)
                y = self._patch_tokens(y)
                if output_fmt == "NCHW":
                    gh, gw = self.patch_embed.grid_size
                    y = y.reshape(y.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()
                feats.append(y)
        if intermediates_only:
            return feats
        return self._final_norm(hidden, residual), feats


VIM_CONFIGS: dict[str, dict] = {
    "vim_tiny_patch16_224": dict(img_size=224, patch_size=16, embed_dim=192, depth=24),
    "vim_tiny_patch16_stride8_224": dict(img_size=224, patch_size=16, stride=8, embed_dim=192, depth=24),
    "vim_small_patch16_224": dict(img_size=224, patch_size=16, embed_dim=384, depth=24),
    "vim_small_patch16_stride8_224": dict(img_size=224, patch_size=16, stride=8, embed_dim=384, depth=24),
    "vim_base_patch16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=24),
    "vim_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=24),
    "vim_micro_patch4_32": dict(img_size=32, patch_size=4, embed_dim=128, depth=12),
}
"""Architecture configs by registered name (the registry in ``zoo`` composes them with a head)."""


def build_vim(name: str, **overrides) -> VisionMamba:
    if name not in VIM_CONFIGS:
        raise KeyError(name)
    cfg = dict(VIM_CONFIGS[name])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg["img_size"] = to_2tuple(cfg["img_size"])
    return VisionMamba(VimConfig(**cfg))
