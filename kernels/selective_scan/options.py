"""The selective scan's Triton-path choices as keyword arguments: their values and their checks.

Kept apart from ``triton.py`` so the public op validates them on every path without importing Triton.
"""
from __future__ import annotations

__all__ = ["CHUNKS", "VARIANTS", "check_plan_args", "chunk_size_for"]

VARIANTS = ("auto", "sequential", "chunked")
CHUNKS = (4, 8, 16, 32, 64)                 # tokens per stored state = backward tile (power of two)


def chunk_size_for(n_state: int, chunk: int | None = None) -> int:
    """Tokens per stored state in forward = backward's tile, which lives in each thread's registers (about ten
    [CHUNK] rows per channel): 16, or 8 for more than 16 states (the carry tiles grow with N).

    ``chunk`` (one of CHUNKS) forces it, for timing the trade-off (longer tiles store fewer states but hold
    more registers) on a GPU."""
    if chunk is not None:
        if chunk not in CHUNKS:
            raise ValueError(f"selective_scan: chunk must be one of {CHUNKS}, got {chunk!r}")
        return int(chunk)
    return 16 if n_state <= 16 else 8


def check_plan_args(variant: str | None, seg: int | None) -> str:
    """``variant`` lower-cased ("auto" for None); ValueError for an unknown one or a segment below 1."""
    variant = (variant or "auto").lower()
    if variant not in VARIANTS:
        raise ValueError(f"selective_scan: variant must be one of {VARIANTS}, got {variant!r}")
    if seg is not None and (not isinstance(seg, int) or seg < 1):
        raise ValueError(f"selective_scan: seg must be a positive number of tokens, got {seg!r}")
    return variant
