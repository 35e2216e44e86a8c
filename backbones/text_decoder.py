"""Text decoder on the zoo's token mixers: the backbone of the masked-diffusion LMs (MDLM / LLaDA) and their
autoregressive twin.

A pre-norm stack (RMSNorm, mixer, RMSNorm, SwiGLU MLP) over a token embedding, ending at a final RMSNorm (the
token head lives in ``heads.lm``). Each block's mixer comes from a layout: one name for all blocks or a
per-block pattern such as ``"attn,gla,gla,gla"`` or ``"mamba*3,attn"`` (hybrids). Mixers:

- ``attn``: softmax attention through SDPA with rotary position embeddings (RoPE), bidirectional or causal.
- ``gla``: gated linear attention (the ViT's ``GLAMixer`` parameters) through ``kernels.gla``: bidirectional
  = the kernel's forward + reversed passes, causal = the forward scan alone.
- ``mamba``: Vim's bidirectional Mamba mixer (``BiMambaMixer``); the causal twin keeps its forward direction
  only (the backward direction's parameters are dropped).
- ``hybrid``: the intra-layer hybrid (Hymba; backbones.layers.hybrid): the ``attn`` heads and GLA heads (or
  Mamba heads, ``mixer_cfg={"hybrid": {"ssm": "mamba"}}``) in parallel on the same input, each branch
  normalised, averaged, one output projection. It caches both ways at once (keys/values and the GLA state).

Layouts are read by the ViT's pattern reader (``softmax`` is accepted for ``attn``).

``causal=True`` builds the same network with causal mixers: the AR baseline, and the judge of samples.

Caching (``DecoderCache``): a forward over the positions ``[start, start + T)`` reads what the cache holds for
``[0, start)`` and can append its first ``commit`` positions to it. Softmax attention keeps the prefix's
rotated keys and values; GLA keeps the forward-direction recurrent state at the end of the prefix (the
prefix's contribution to a later token is ``scale * (q_t * exp(b_t)) S``, b the cumulative gate inside the
window; the reversed pass only runs over the window, which is exact for it). For a causal network that is
exact KV-cache / state-carry decoding; for a bidirectional one it is Fast-dLLM's block-wise approximate
prefix cache (the prefix's states would change with the suffix; the cache keeps those of its last refresh).
Mamba layers have no cache (``supports_cache`` is False; samplers then recompute).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.hybrid import HYBRID_SSMS, average_branches, branch_norm
from backbones.layers.hybrid import parse_layout as _parse_layout
from backbones.layers.mamba import BiMambaMixer
from backbones.layers.mixers import Attention, GLAMixer

__all__ = ["TextDecoder", "DecoderCache", "DecoderAttention", "DecoderGLA", "DecoderMamba", "SwiGLU",
           "DecoderHybrid", "parse_layout", "swiglu_hidden", "TEXT_DECODER_CONFIGS", "DECODER_MIXERS"]

DECODER_MIXERS = ("attn", "gla", "mamba", "hybrid")


def parse_layout(layout: str | list[str] | tuple[str, ...], depth: int) -> list[str]:
    """Per-block mixer names from ``"gla"``, ``"attn,gla,gla,gla"``, ``"mamba*3,attn"`` or a list.

    A single name fills every block; a pattern shorter than ``depth`` that divides it repeats. The ViT's
    pattern reader (backbones.layers.hybrid.parse_layout), with ``softmax`` read as ``attn`` so one pattern
    serves both.
    """
    return _parse_layout(layout, depth, DECODER_MIXERS, aliases={"softmax": "attn"})


def swiglu_hidden(dim: int, mlp_ratio: float = 8 / 3, multiple_of: int = 1) -> int:
    """LLaMA's SwiGLU width: ``mlp_ratio * dim`` (8/3 keeps the parameters of a 4x GELU MLP), rounded up."""
    h = int(round(mlp_ratio * dim))
    return multiple_of * math.ceil(h / multiple_of)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``: the gated MLP of LLaMA and LLaDA."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope(x: torch.Tensor, start: int, base: float) -> torch.Tensor:
    """Rotate ``x [B, H, T, D]`` at positions ``start .. start + T - 1`` (the half-split form of GPT-NeoX)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    ang = torch.arange(start, start + T, device=x.device, dtype=torch.float32)[:, None] * inv  # [T, D/2]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


@dataclass
class LayerCache:
    """One block's cached prefix: rotated keys/values ``[B, H, P, D]`` or a GLA state ``[B, H, K, V]``."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    state: torch.Tensor | None = None


@dataclass
class DecoderCache:
    """What a decoder keeps of positions ``[0, length)`` between calls (one :class:`LayerCache` per block)."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0

    def clone(self) -> "DecoderCache":
        return DecoderCache([LayerCache(c.k, c.v, c.state) for c in self.layers], self.length)

    def repeat(self, n: int) -> "DecoderCache":
        """The cache of a batch stacked ``n`` times along the batch (``torch.cat([x] * n)`` order): one prefix
        serving several noised copies of its sequences."""
        rep = (lambda t: None if t is None else torch.cat([t] * n))
        return DecoderCache([LayerCache(rep(c.k), rep(c.v), rep(c.state)) for c in self.layers], self.length)


class DecoderAttention(Attention):
    """Softmax attention with RoPE on SDPA, causal or bidirectional, with a prefix key/value cache."""

    supports_cache = True

    def __init__(self, dim: int, num_heads: int, causal: bool, rope_base: float = 10000.0, dropout: float = 0.0):
        super().__init__(dim, num_heads, qkv_bias=False, attn_drop=dropout, proj_drop=dropout)
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {self.head_dim} (dim {dim} / {num_heads} heads)")
        self.causal, self.rope_base = causal, rope_base

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, start: int = 0, commit: int = 0):
        q, k, v = self._qkv(x)                                   # [B, H, T, D]
        q, k = rope(q, start, self.rope_base), rope(k, start, self.rope_base)
        T = x.shape[1]
        if cache is not None and cache.k is not None:
            k_all, v_all = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
        else:
            k_all, v_all = k, v
        P = k_all.shape[2] - T
        mask, is_causal = None, False
        if self.causal:
            if P == 0:
                is_causal = True
            else:  # query i sits at P + i and sees keys 0 .. P + i
                mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(P)
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, is_causal=is_causal,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        if cache is not None and commit:
            cache.k, cache.v = k_all[:, :, :P + commit], v_all[:, :, :P + commit]
        return self._out(out)


class DecoderGLA(GLAMixer):
    """The ViT's GLA mixer (same parameters), causal or bidirectional, carrying the forward state."""

    supports_cache = True

    def __init__(self, dim: int, num_heads: int, causal: bool, dropout: float = 0.0, **cfg):
        super().__init__(dim, num_heads, qkv_bias=False, proj_drop=dropout, **cfg)
        self.causal = causal
        self.reset_parameters()

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, start: int = 0, commit: int = 0):
        from kernels.gla import chunk_gla

        B, T, C = x.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(B, T, 3, H, D).unbind(2)
        g = F.logsigmoid(self.gk_proj(x).float()).reshape(B, T, H, D) / self.gate_norm
        h0 = cache.state if cache is not None else None
        if self.causal:
            o, ht = chunk_gla(q, k, v, g=g, initial_state=h0, output_final_state=cache is not None)
        else:
            o, _ = chunk_gla(q, k, v, g=g, causal=False)
            if h0 is not None:  # the prefix, seen through the forward direction's decays
                b = g.cumsum(1)
                o = (o.float() + D ** -0.5 * torch.einsum("bthk,bhkv->bthv", q.float() * b.exp(), h0)).to(o.dtype)
        if cache is not None and commit:
            if self.causal and commit == T:
                cache.state = ht
            else:
                _, cache.state = chunk_gla(q[:, :commit], k[:, :commit], v[:, :commit], g=g[:, :commit],
                                           initial_state=h0, output_final_state=True)
        return self.finish(o, x)


class DecoderMamba(BiMambaMixer):
    """Vim's bidirectional Mamba mixer; ``causal=True`` keeps the forward direction alone (no cache)."""

    supports_cache = False

    def __init__(self, dim: int, causal: bool, **cfg):
        super().__init__(dim, **cfg)
        self.causal = causal
        if causal:  # the backward direction would see the future
            for name in ("A_b_log", "D_b", "conv1d_b", "x_proj_b", "dt_proj_b"):
                delattr(self, name)

    def reset_parameters(self) -> None:
        if not hasattr(self, "A_b_log"):
            raise RuntimeError("a causal DecoderMamba has no backward direction to re-initialise")
        super().reset_parameters()

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, start: int = 0, commit: int = 0):
        if cache is not None:
            raise ValueError("Mamba layers keep no cache; decode them by recomputation (cache=None)")
        if not self.causal:
            return super().forward(x)
        xs, z = self._in_proj(x)
        y = self._direction(xs, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=False)
        return F.linear(y.transpose(1, 2), self.out_proj.weight, self.out_proj.bias)


class DecoderHybrid(nn.Module):
    """Attention heads (RoPE) beside GLA or Mamba heads on one input (Hymba), causal or bidirectional.

    The branches are the decoder's own mixers without their projections (``attn.*``, ``ssm.*``); one
    ``LayerCache`` serves both (the attention keeps ``k``/``v``, GLA keeps ``state``). Mamba heads keep no cache.
    """

    def __init__(self, dim: int, num_heads: int, causal: bool, rope_base: float = 10000.0, dropout: float = 0.0,
                 ssm: str = "gla", norm: str = "rms", ssm_cfg: dict | None = None):
        super().__init__()
        self.attn = DecoderAttention(dim, num_heads, causal, rope_base, dropout)
        self.attn.proj, self.attn.proj_drop = nn.Identity(), nn.Identity()  # one projection after the merge
        if ssm == "gla":
            self.ssm = DecoderGLA(dim, num_heads, causal, 0.0, out_proj=False, **(ssm_cfg or {}))
        elif ssm == "mamba":
            self.ssm = DecoderMamba(dim, causal, **(ssm_cfg or {}))  # its out_proj maps the inner width back
        else:
            raise ValueError(f"hybrid ssm must be one of {HYBRID_SSMS}, got {ssm!r}")
        self.supports_cache = ssm == "gla"
        self.norm_attn, self.norm_ssm = branch_norm(norm, dim), branch_norm(norm, dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, start: int = 0, commit: int = 0):
        a = self.attn(x, cache=cache, start=start, commit=commit)
        s = self.ssm(x, cache=cache, start=start, commit=commit)
        return self.drop(self.proj(average_branches(a, s, self.norm_attn, self.norm_ssm)))


class DecoderBlock(nn.Module):
    """Pre-norm block: ``x + mixer(norm(x))``, then ``x + SwiGLU(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mixer: str, causal: bool, mlp_hidden: int, dropout: float,
                 rope_base: float, mixer_cfg: dict | None = None):
        super().__init__()
        self.mixer_name = mixer
        cfg = dict(mixer_cfg or {})
        self.norm1 = nn.RMSNorm(dim, eps=1e-5)
        if mixer == "attn":
            self.mixer = DecoderAttention(dim, num_heads, causal, rope_base, dropout, **cfg)
        elif mixer == "gla":
            self.mixer = DecoderGLA(dim, num_heads, causal, dropout, **cfg)
        elif mixer == "mamba":
            self.mixer = DecoderMamba(dim, causal, **cfg)
        elif mixer == "hybrid":
            self.mixer = DecoderHybrid(dim, num_heads, causal, rope_base, dropout, **cfg)
        else:
            raise ValueError(f"unknown mixer {mixer!r}; choose from {DECODER_MIXERS}")
        self.norm2 = nn.RMSNorm(dim, eps=1e-5)
        self.mlp = SwiGLU(dim, mlp_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cache: LayerCache | None = None, start: int = 0, commit: int = 0):
        x = x + self.drop(self.mixer(self.norm1(x), cache=cache, start=start, commit=commit))
        return x + self.mlp(self.norm2(x))


class TextDecoder(nn.Module):
    """Token embedding -> ``depth`` pre-norm blocks on the layout's mixers -> RMSNorm: ``[B, T] -> [B, T, dim]``.

    ``forward_features(tokens, cache=None, start=0, commit=0)``: ``tokens`` are positions ``[start, start + T)``;
    with a cache the blocks read its prefix and append the first ``commit`` positions (see the module doc).
    ``embeds [B, T, dim]`` in place of ``tokens`` feeds vectors instead of token ids (a captioner's projected
    image tokens, cached as the prefix the text attends to).
    """

    def __init__(self, vocab_size: int, dim: int = 256, depth: int = 5, num_heads: int = 4,
                 layout: str | list[str] = "attn", causal: bool = False, mlp_ratio: float = 8 / 3,
                 mlp_hidden: int | None = None, dropout: float = 0.0, rope_base: float = 10000.0,
                 max_len: int = 1024, mixer_cfg: dict | None = None):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.vocab_size, self.dim, self.depth, self.num_heads = vocab_size, dim, depth, num_heads
        self.causal, self.max_len = causal, max_len
        self.layout = parse_layout(layout, depth)
        self.num_features = dim
        hidden = mlp_hidden or swiglu_hidden(dim, mlp_ratio)
        self.embed = nn.Embedding(vocab_size, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(DecoderBlock(dim, num_heads, m, causal, hidden, dropout, rope_base,
                                                 (mixer_cfg or {}).get(m)) for m in self.layout)
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self._init_weights(hidden)

    @torch.no_grad()
    def _init_weights(self, hidden: int) -> None:
        """GPT-2's init for embeddings and linears (std 0.02; output projections by 1/sqrt(2 depth)); the mixers'
        own parameters (Mamba's A, D, dt; GLA's gate bias) keep their families' init."""
        nn.init.normal_(self.embed.weight, std=0.02)
        resid = 0.02 / math.sqrt(2 * self.depth)
        for blk in self.blocks:
            for lin in (blk.mlp.w1, blk.mlp.w3):
                nn.init.normal_(lin.weight, std=0.02)
            nn.init.normal_(blk.mlp.w2.weight, std=resid)
            mixer = blk.mixer
            if isinstance(mixer, (DecoderAttention, DecoderGLA)):
                nn.init.normal_(mixer.qkv.weight, std=0.02)
                nn.init.normal_(mixer.proj.weight, std=resid)
                nn.init.zeros_(mixer.proj.bias)
            elif isinstance(mixer, DecoderHybrid):
                for branch in (mixer.attn, mixer.ssm):
                    if hasattr(branch, "qkv"):
                        nn.init.normal_(branch.qkv.weight, std=0.02)
                nn.init.normal_(mixer.proj.weight, std=resid)
                nn.init.zeros_(mixer.proj.bias)

    @property
    def supports_cache(self) -> bool:
        """Whether every block keeps a prefix cache (no Mamba layer)."""
        return all(getattr(b.mixer, "supports_cache", False) for b in self.blocks)

    def new_cache(self) -> DecoderCache:
        if not self.supports_cache:
            raise ValueError(f"layout {self.layout} has Mamba layers, which keep no cache")
        return DecoderCache([LayerCache() for _ in self.blocks], 0)

    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def forward_features(self, tokens: torch.Tensor | None, cache: DecoderCache | None = None, start: int | None = None,
                         commit: int = 0, embeds: torch.Tensor | None = None) -> torch.Tensor:
        if embeds is not None:
            if tokens is not None:
                raise ValueError("pass token ids or embeds, not both")
            if embeds.dim() != 3 or embeds.shape[-1] != self.dim:
                raise ValueError(f"expected embeds [B, T, {self.dim}], got shape {tuple(embeds.shape)}")
            tokens = embeds[..., 0]  # stands in for the ids' [B, T] in the checks below
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids [B, T], got shape {tuple(tokens.shape)}")
        if cache is not None:
            start = cache.length if start is None else start
            if start != cache.length:
                raise ValueError(f"the cache holds {cache.length} positions but the input starts at {start}")
            if not 0 <= commit <= tokens.shape[1]:
                raise ValueError(f"commit must be in [0, {tokens.shape[1]}], got {commit}")
        start = start or 0
        if start + tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence of {start + tokens.shape[1]} tokens exceeds max_len {self.max_len}")
        x = self.drop(self.embed(tokens) if embeds is None else embeds)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cache.layers[i] if cache is not None else None, start, commit)
        if cache is not None:
            cache.length += commit
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, **kw) -> torch.Tensor:
        return self.forward_features(tokens, **kw)


# -- configs --------------------------------------------------------------------------------------------------
# Sized so an fp16 export stays under 8 MB (at most 3.96 M parameters with the 67-symbol character vocabulary
# and a tied head): attention blocks cost 4 d^2 + 3 d h, GLA blocks 5 d^2 + 3 d h + the gate's low rank, so
# small_attn (3.954 M) and small_gla (3.958 M) differ in the MLP width only; small_mamba is 3.906 M.
TEXT_DECODER_CONFIGS: dict[str, dict] = {
    "tiny": dict(dim=64, depth=2, num_heads=2, mlp_hidden=128),
    "small_attn": dict(dim=256, depth=6, num_heads=4, mlp_hidden=512, layout="attn"),
    "small_gla": dict(dim=256, depth=6, num_heads=4, mlp_hidden=416, layout="gla"),
    "small_mamba": dict(dim=256, depth=5, num_heads=4, mlp_hidden=384, layout="mamba"),
    "small_hybrid": dict(dim=256, depth=6, num_heads=4, mlp_hidden=448, layout="gla,gla,attn"),
}
