"""Hybrids on the zoo's mixers: layouts written as patterns (inter-layer) and the parallel-heads block (intra-layer).

Inter-layer: a *layout* names each block's mixer, so "3 linear : 1 softmax" or "Mamba first half, attention
last" is one argument. :func:`parse_layout` reads ``"gla"`` (every block), ``"linear,linear,linear,softmax"``
or ``"gla*3,softmax"`` (a period repeated to the depth), ``"mamba*6,softmax*6"`` (one name per block) or a list
of such entries. A period whose length does not divide the depth, an unknown name or an empty entry is a
ValueError naming the valid names. The ViT and the text decoder both read their ``layout`` through it.

Intra-layer (Hymba, Dong et al. 2024, arXiv:2411.13676): :class:`HybridMixer` runs softmax-attention heads and
SSM heads in parallel on the same input; each branch's output is normalised on its own (RMSNorm or LayerNorm,
whose per-channel weights are Hymba's learnable branch scales beta_1, beta_2), the two are averaged and one
output projection follows:  ``proj((norm_a(attn(x)) + norm_s(ssm(x))) / 2)``. The normalisation matters:
the attention and SSM outputs differ in scale by orders of magnitude, and without it the larger one drowns
the other. The SSM branch is chosen by ``ssm=``: ``"mamba"`` (Vim's bidirectional Mamba, as Hymba uses Mamba
heads; its ``out_proj`` maps the inner width back to ``dim``) or ``"gla"`` (the ViT's bidirectional GLA with
its per-head RMSNorm and SiLU gate, without a projection of its own). Hymba's meta tokens and its mostly
sliding-window attention are left out: the ViT's class token plays the first role, and at CIFAR's 65 tokens
full attention is the cheap choice.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.mixers import Attention, GLAMixer

__all__ = ["parse_layout", "format_layout", "layout_mixer_cfgs", "HybridMixer", "branch_norm", "average_branches", "HYBRID_SSMS",
           "HYBRID_NORMS"]

HYBRID_SSMS = ("mamba", "gla")
HYBRID_NORMS = ("rms", "layer")

_ENTRY = re.compile(r"\s*([A-Za-z_]+)\s*(?:\*\s*(\d+))?\s*")


def parse_layout(layout: str | Iterable[str], depth: int, names: Iterable[str],
                 aliases: Mapping[str, str] | None = None) -> list[str]:
    """Per-block mixer names (``depth`` of them) from a layout pattern over the valid ``names``.

    ``layout``: ``"gla"``, ``"linear,linear,linear,softmax"``, ``"gla*3,softmax"``, ``"mamba*6,softmax*6"`` or a
    list of such entries. A pattern shorter than ``depth`` whose length divides it repeats; ``aliases`` maps
    other spellings onto valid names (the text decoder reads ``softmax`` as its ``attn``).
    """
    valid = tuple(names)
    aliases = dict(aliases or {})
    spelled = valid + tuple(a for a in aliases if a not in valid)
    if isinstance(layout, str):
        parts = layout.split(",")
    elif isinstance(layout, Iterable):
        parts = list(layout)
    else:
        raise ValueError(f"layout must be a string such as 'gla*3,softmax' or a list of mixer names, got {layout!r}")
    out: list[str] = []
    for part in parts:
        m = _ENTRY.fullmatch(str(part))
        if not m:
            raise ValueError(f"layout entry {part!r} in {layout!r} is not 'name' or 'name*N'; names: {spelled}")
        name, n = m.group(1).lower(), int(m.group(2) or 1)
        name = aliases.get(name, name)
        if name not in valid:
            raise ValueError(f"unknown mixer {m.group(1)!r} in layout {layout!r}; choose from {spelled}")
        if n < 1:
            raise ValueError(f"layout entry {part!r} repeats a mixer {n} times; the count must be at least 1")
        out += [name] * n
    if not out:
        raise ValueError(f"empty layout {layout!r}; name at least one mixer from {spelled}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1 to lay out mixers, got {depth}")
    if len(out) == depth:
        return out
    if depth % len(out) == 0:
        return out * (depth // len(out))
    raise ValueError(f"layout {layout!r} gives {len(out)} blocks, which does not fill depth {depth}; write one "
                     f"name per block or a pattern whose length divides the depth")


def format_layout(blocks: list[str]) -> str:
    """The shortest pattern :func:`parse_layout` reads back to ``blocks`` at their depth: its smallest repeating
    period, run-length coded (``["gla", "gla", "gla", "softmax"] * 3`` -> ``"gla*3,softmax"``)."""
    n = len(blocks)
    if not n:
        raise ValueError("format_layout needs at least one block")
    period = next(p for p in range(1, n + 1) if n % p == 0 and list(blocks[:p]) * (n // p) == list(blocks))
    runs: list[list] = []
    for name in blocks[:period]:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return ",".join(name if k == 1 else f"{name}*{k}" for name, k in runs)


def layout_mixer_cfgs(blocks: list[str], mixer_cfg: Mapping | None, names: Iterable[str]) -> list[dict]:
    """Each block's mixer options from ``mixer_cfg``.

    Either keyed by mixer name (``{"window": {"window_size": 2}, "hybrid": {"ssm": "gla"}}``; blocks whose mixer
    has no entry get none), or flat options (``{"window_size": 2}``) when the layout uses a single mixer.
    """
    cfg = dict(mixer_cfg or {})
    valid = set(names)
    if not cfg:
        return [{} for _ in blocks]
    keyed = [k for k in cfg if k in valid]
    if len(keyed) == len(cfg):
        for k, v in cfg.items():
            if not isinstance(v, Mapping):
                raise ValueError(f"mixer_cfg[{k!r}] must be a dict of {k} options, got {v!r}")
        return [dict(cfg.get(b, {})) for b in blocks]
    if keyed:
        raise ValueError(f"mixer_cfg mixes mixer names {keyed} with options {sorted(set(cfg) - set(keyed))}; key "
                         f"every option by its mixer name, e.g. {{'window': {{'window_size': 2}}}}")
    if len(set(blocks)) > 1:
        raise ValueError(f"layout {sorted(set(blocks))} has several mixers, so mixer_cfg must be keyed by mixer name "
                         f"(e.g. {{'{blocks[0]}': {cfg}}}), got flat options {sorted(cfg)}")
    return [dict(cfg) for _ in blocks]


def branch_norm(kind: str, dim: int) -> nn.Module:
    """One branch's output norm: ``"rms"`` (RMSNorm) or ``"layer"`` (LayerNorm); its weight is the branch scale."""
    if kind == "rms":
        return nn.RMSNorm(dim, eps=1e-5)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-5)
    raise ValueError(f"hybrid norm must be one of {HYBRID_NORMS}, got {kind!r}")


def average_branches(a: torch.Tensor, s: torch.Tensor, norm_a: nn.Module, norm_s: nn.Module) -> torch.Tensor:
    """Hymba's merge before the output projection: the mean of the two branch outputs, each normalised on its
    own in fp32 (as the recurrent mixers' norms run), cast back to the input's dtype."""
    return (0.5 * (norm_a(a.float()) + norm_s(s.float()))).to(a.dtype)


class HybridMixer(Attention):
    """Attention heads and SSM heads in parallel on one input (Hymba): ``[B, T, dim] -> [B, T, dim]``.

    Keys: the attention branch keeps timm's ``qkv`` (and the shared ``proj``), the SSM branch lives under
    ``ssm.*`` (a ``BiMambaMixer`` or a projection-free ``GLAMixer``), the branch norms are ``norm_attn`` and
    ``norm_ssm``. ``ssm_cfg`` passes options to the SSM branch (``d_state``, ``expand`` / ``gate_rank``, ...).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, ssm: str = "mamba", norm: str = "rms", ssm_cfg: dict | None = None):
        super().__init__(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        if ssm == "mamba":
            from backbones.layers.mamba import BiMambaMixer

            self.ssm = BiMambaMixer(dim, **(ssm_cfg or {}))
        elif ssm == "gla":
            self.ssm = GLAMixer(dim, num_heads, qkv_bias, 0.0, out_proj=False, **(ssm_cfg or {}))
        else:
            raise ValueError(f"hybrid ssm must be one of {HYBRID_SSMS}, got {ssm!r}")
        self.ssm_kind, self.norm_kind = ssm, norm
        self.norm_attn = branch_norm(norm, dim)
        self.norm_ssm = branch_norm(norm, dim)

    def reset_parameters(self) -> None:
        """The SSM branch's own init (Mamba's A, D, dt; GLA's gate bias); norms at weight 1 (equal branches)."""
        if hasattr(self.ssm, "reset_parameters"):
            self.ssm.reset_parameters()
        for n in (self.norm_attn, self.norm_ssm):
            n.reset_parameters()

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two raw branch outputs ``[B, T, dim]`` (attention heads concatenated, SSM), before the norms."""
        q, k, v = self._qkv(x)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        B, _, T, _ = a.shape
        return a.transpose(1, 2).reshape(B, T, -1), self.ssm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, s = self.branches(x)
        return self.proj_drop(self.proj(average_branches(a, s, self.norm_attn, self.norm_ssm)))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, ssm={self.ssm_kind!r}, norm={self.norm_kind!r}"
