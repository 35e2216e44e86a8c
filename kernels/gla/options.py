"""The GLA / delta-rule backward's layout as keyword arguments: their values and their checks.

Kept apart from ``triton.py`` so the public ops validate them on every path without importing Triton.
"""
from __future__ import annotations

__all__ = ["BWD_LAYOUTS", "check_bwd_options"]

# split: the default and the fastest on the H200 for GLA; fused: the delta rule's only backward (its dv feeds
# dS); chunked: the exact path split falls back to for extreme per-channel gates. All three stay selectable
# because benchmarks/linear_attention.py times them side by side (see kernels.gla.triton.chunk_scan_bwd).
BWD_LAYOUTS = ("split", "fused", "chunked")


def check_bwd_options(op: str, layout: str | None, block_v: int | None, layouts: tuple[str, ...] = BWD_LAYOUTS,
                      default: str = "split") -> str:
    """The layout to run (``default`` for None), lower-cased; ValueError naming the fix for a bad value."""
    layout = default if layout is None else str(layout).lower()
    if layout not in layouts:
        raise ValueError(f"{op}: bwd_layout must be one of {layouts} (or None for {default!r}), got {layout!r}")
    if block_v is not None:
        if isinstance(block_v, bool) or not isinstance(block_v, int) or block_v < 16 or block_v & (block_v - 1):
            raise ValueError(f"{op}: bwd_block_v must be a power of two >= 16, got {block_v!r}")
        if layout == "split":
            raise ValueError(f"{op}: bwd_block_v sets the V block of the 'fused' and 'chunked' backward layouts; "
                             f"pass bwd_layout='fused' or 'chunked' with it (split has fixed tiles)")
    return layout
