"""Token mixers for the pluggable ViT: one interface ``[B, T, C] -> [B, T, C]``, chosen by name.

Every mixer sees the same token sequence (``num_prefix_tokens`` class tokens first, then the patch grid
row-major) and keeps the ViT's ``qkv``/``proj`` linears where it has them, so the zoo can compare mixers with
everything else (patch embedding, MLP, norms, depth) equal.

- ``softmax``: full attention through SDPA (timm's ``Attention``; timm weights load into it).
- ``window``: softmax attention restricted to a (2w+1)x(2w+1) neighbourhood of the patch grid (a 1-D band
  of radius w without a grid); class tokens stay global (see and are seen by every token), else the
  classifier's token would only see itself.
- ``block_sparse``: softmax attention within non-overlapping b x b blocks of the grid, plus global class
  tokens.
  Both masks are one ``mask_mod``: on CUDA through ``flex_attention`` (compiled) with a cached
  ``BlockMask`` that skips empty 128x128 tiles; elsewhere (flex_attention's kernels need a GPU + compile)
  through SDPA with the dense boolean mask built by ``create_mask`` from the same ``mask_mod`` -- same
  function, quadratic cost.
- ``linear``: bidirectional normalised linear attention, φ = elu+1 (default) or relu, through
  ``kernels.linear_attention`` (fp32 inside).
- ``gla``: bidirectional gated linear attention as in ViG (Liao et al. 2024): per-key data-dependent decays
  from a low-rank projection, g = logsigmoid(·)/16, through ``kernels.gla.chunk_gla(causal=False)`` (decay
  between tokens t and s = the product of gates between them, both directions sharing one gate; ViG uses a
  gate per direction and averages), then a per-head RMSNorm, a SiLU output gate and ``proj``. ViG's
  depthwise-conv locality branch is left out.
- ``mamba``: Vim's bidirectional Mamba mixer (``backbones.layers.mamba.BiMambaMixer``).
- ``delta``: gated delta rule (Gated DeltaNet), bidirectional as a forward plus a reverse pass, summed,
  through ``kernels.delta_rule``; L2-normalised q, k, β = sigmoid, per-head decay g = logsigmoid(·);
  per-head RMSNorm, SiLU output gate, ``proj``.
- ``hybrid``: the intra-layer hybrid (Hymba): softmax-attention heads and SSM heads (``ssm="mamba"`` or
  ``"gla"``) in parallel on the same input, each branch normalised, averaged, then ``proj``
  (``backbones.layers.hybrid.HybridMixer``; inter-layer layouts are in that module too).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MIXERS", "MIXER_BUILDERS", "Attention", "MaskedAttention", "LinearAttentionMixer", "GLAMixer", "DeltaMixer",
           "build_mixer", "window_mask_mod", "block_mask_mod"]

class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (flash / memory-efficient)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor):
        B, T, _ = x.shape
        return self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, T, D] -> proj([B, T, C])."""
        B, _, T, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, T, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self._out(x)


# -- masked (window / block-sparse) attention ------------------------------------------------------------------
def window_mask_mod(radius: int, grid: tuple[int, int] | None, num_prefix: int) -> Callable:
    """Token pairs within ``radius`` on the grid (Chebyshev distance; |i - j| <= radius without a grid)."""
    gw = grid[1] if grid is not None else 1

    def mask_mod(b, h, q_idx, kv_idx):
        qi, ki = q_idx - num_prefix, kv_idx - num_prefix
        if grid is None:
            local = (qi - ki).abs() <= radius
        else:
            local = ((qi // gw - ki // gw).abs() <= radius) & ((qi % gw - ki % gw).abs() <= radius)
        return (q_idx < num_prefix) | (kv_idx < num_prefix) | local

    return mask_mod


def block_mask_mod(block: int, grid: tuple[int, int], num_prefix: int) -> Callable:
    """Token pairs in the same ``block`` x ``block`` tile of the grid, plus global prefix tokens."""
    gw = grid[1]

    def mask_mod(b, h, q_idx, kv_idx):
        qi, ki = q_idx - num_prefix, kv_idx - num_prefix
        same = ((qi // gw) // block == (ki // gw) // block) & ((qi % gw) // block == (ki % gw) // block)
        return (q_idx < num_prefix) | (kv_idx < num_prefix) | same

    return mask_mod


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    """flex_attention compiled once per process (its fused kernels exist only compiled)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


class MaskedAttention(Attention):
    """Softmax attention under a ``mask_mod`` (window or block-sparse); same keys as :class:`Attention`.

    CUDA: ``flex_attention`` with a ``BlockMask`` cached per sequence length and device. Elsewhere: SDPA with
    the dense boolean mask of the same ``mask_mod`` (cached likewise).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, kind: str = "window", grid_size: tuple[int, int] | None = None,
                 num_prefix_tokens: int = 1, window_size: int = 3, block_size: int = 4):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        if kind == "window":
            self.mask_mod = window_mask_mod(window_size, grid_size, num_prefix_tokens)
        elif kind == "block_sparse":
            if grid_size is None:
                raise ValueError("block_sparse attention needs the token grid")
            self.mask_mod = block_mask_mod(block_size, tuple(grid_size), num_prefix_tokens)
        else:
            raise ValueError(f"unknown masked attention kind {kind!r}")
        self.kind, self.window_size, self.block_size = kind, window_size, block_size
        self.grid_size, self.num_prefix_tokens = grid_size, num_prefix_tokens
        self._masks: dict = {}

    def extra_repr(self) -> str:
        size = f"window_size={self.window_size}" if self.kind == "window" else f"block_size={self.block_size}"
        return f"kind={self.kind}, {size}, grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}"

    def _mask(self, T: int, device: torch.device, flex: bool):
        key = (T, str(device), flex)
        if key not in self._masks:
            from torch.nn.attention.flex_attention import create_block_mask, create_mask

            if flex:
                self._masks[key] = create_block_mask(self.mask_mod, None, None, T, T, device=device)
            else:
                self._masks[key] = create_mask(self.mask_mod, None, None, T, T, device=device)[0, 0]
        return self._masks[key]

    def dense_mask(self, T: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The [T, T] boolean mask (True = attend) this mixer applies."""
        return self._mask(T, torch.device(device), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        T = x.shape[1]
        dropout = self.attn_drop if self.training else 0.0
        if x.is_cuda and dropout == 0.0:
            out = _compiled_flex()(q, k, v, block_mask=self._mask(T, x.device, True))
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(T, x.device, False), dropout_p=dropout)
        return self._out(out)


# -- linear-time mixers ----------------------------------------------------------------------------------------
class LinearAttentionMixer(nn.Module):
    """Bidirectional normalised linear attention (``kernels.linear_attention``), ViT's qkv/proj layout."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0,
                 feature_map: str = "elu1", eps: float = 1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.feature_map, self.eps = feature_map, eps
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kernels.linear_attention import normalized_linear_attention

        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).unbind(2)  # [B, T, H, D] views
        o = normalized_linear_attention(q, k, v, self.eps, self.feature_map)
        return self.proj_drop(self.proj(o.reshape(B, T, C)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, feature_map={self.feature_map}, eps={self.eps}"


class _GatedOutput(nn.Module):
    """Shared tail of the recurrent mixers: per-head RMSNorm, SiLU output gate, projection (``out_proj=False``:
    none, for the intra-layer hybrid, whose one projection follows the branch average)."""

    def __init__(self, dim: int, num_heads: int, proj_drop: float, out_proj: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.o_norm = nn.RMSNorm(self.head_dim, eps=1e-5)
        self.g_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim) if out_proj else nn.Identity()
        self.proj_drop = nn.Dropout(proj_drop)

    def finish(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        o = self.o_norm(o.float()).reshape(B, T, C).to(x.dtype) * F.silu(self.g_proj(x))
        return self.proj_drop(self.proj(o))


class GLAMixer(_GatedOutput):
    """Bidirectional GLA with per-key data-dependent decay (ViG-style), through ``kernels.gla``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0,
                 gate_rank: int = 16, gate_norm: float = 16.0, out_proj: bool = True):
        super().__init__(dim, num_heads, proj_drop, out_proj)
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.gate_norm = gate_norm
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.gk_proj = nn.Sequential(nn.Linear(dim, gate_rank, bias=False), nn.Linear(gate_rank, dim, bias=True))

    def reset_parameters(self) -> None:
        """Gate bias at 0 -> logsigmoid(0)/16 ≈ -0.043 per token: a slow decay to start from."""
        nn.init.zeros_(self.gk_proj[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kernels.gla import chunk_gla

        B, T, C = x.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, T, 3, H, D).unbind(2)
        g = F.logsigmoid(self.gk_proj(x).float()).reshape(B, T, H, D) / self.gate_norm
        o, _ = chunk_gla(q, k, v, g=g, causal=False)
        return self.finish(o, x)


class DeltaMixer(_GatedOutput):
    """Gated delta rule both ways (forward scan + reverse scan, summed), through ``kernels.delta_rule``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0,
                 decay_bias: float = 4.0):
        super().__init__(dim, num_heads, proj_drop)
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.decay_bias = decay_bias
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.ab_proj = nn.Linear(dim, 2 * num_heads)  # per head: decay logit a, write strength logit b

    def reset_parameters(self) -> None:
        """Decay logit bias ``decay_bias`` (g = logsigmoid(4) ≈ -0.018: long memory), β bias 0 (β = 0.5)."""
        with torch.no_grad():
            self.ab_proj.bias.zero_()
            self.ab_proj.bias[: self.num_heads].fill_(self.decay_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from kernels.delta_rule import chunk_gated_delta_rule

        B, T, C = x.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, T, 3, H, D).unbind(2)
        a, b = self.ab_proj(x).float().split(H, dim=-1)
        g, beta = F.logsigmoid(a), torch.sigmoid(b)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        of, _ = chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True)
        ob, _ = chunk_gated_delta_rule(q.flip(1), k.flip(1), v.flip(1), g.flip(1), beta.flip(1), use_qk_l2norm=True)
        return self.finish(of.float() + ob.flip(1).float(), x)


def _softmax(dim, num_heads, qkv_bias, attn_drop, proj_drop, grid_size, num_prefix_tokens, **cfg):
    if cfg:
        raise ValueError(f"softmax mixer takes no options, got {sorted(cfg)}")
    return Attention(dim, num_heads, qkv_bias, attn_drop, proj_drop)


def _masked(kind: str) -> Callable[..., nn.Module]:
    def build(dim, num_heads, qkv_bias, attn_drop, proj_drop, grid_size, num_prefix_tokens, **cfg):
        return MaskedAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop, kind=kind, grid_size=grid_size,
                               num_prefix_tokens=num_prefix_tokens, **cfg)
    return build


def _recurrent(cls) -> Callable[..., nn.Module]:
    def build(dim, num_heads, qkv_bias, attn_drop, proj_drop, grid_size, num_prefix_tokens, **cfg):
        return cls(dim, num_heads, qkv_bias, proj_drop, **cfg)
    return build


def _mamba(dim, num_heads, qkv_bias, attn_drop, proj_drop, grid_size, num_prefix_tokens, **cfg):
    from backbones.layers.mamba import BiMambaMixer

    return BiMambaMixer(dim, **cfg)


def _hybrid(dim, num_heads, qkv_bias, attn_drop, proj_drop, grid_size, num_prefix_tokens, **cfg):
    from backbones.layers.hybrid import HybridMixer

    return HybridMixer(dim, num_heads, qkv_bias, attn_drop, proj_drop, **cfg)


MIXER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "softmax": _softmax,
    "window": _masked("window"),
    "block_sparse": _masked("block_sparse"),
    "linear": _recurrent(LinearAttentionMixer),
    "gla": _recurrent(GLAMixer),
    "mamba": _mamba,
    "delta": _recurrent(DeltaMixer),
    "hybrid": _hybrid,
}
"""Mixer name -> builder ``(dim, num_heads, qkv_bias, attn_drop, proj_drop, grid_size, num_prefix_tokens,
**options)``; the one table ``build_mixer`` and ``MIXERS`` read."""

MIXERS: tuple[str, ...] = tuple(MIXER_BUILDERS)


def build_mixer(name: str, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                proj_drop: float = 0.0, grid_size: tuple[int, int] | None = None, num_prefix_tokens: int = 1,
                **cfg) -> nn.Module:
    """The mixer ``name`` (one of MIXERS) with its options ``cfg`` (window_size, block_size, feature_map, ...)."""
    if name not in MIXER_BUILDERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {MIXERS}")
    return MIXER_BUILDERS[name](dim, num_heads, qkv_bias, attn_drop, proj_drop, grid_size, num_prefix_tokens, **cfg)
