"""The selective scan's Triton-path choices as keyword arguments: their values and their checks.

Kept apart from ``triton.py`` so the public op validates them on every path without importing Triton.
"""
from __future__ import annotations

__all__ = ["CHUNKS", "LAYOUTS", "LANE_VARIANTS", "VARIANTS", "check_layout", "check_plan_args", "chunk_size_for",
           "lane_variant", "split_lane_variant"]

VARIANTS = ("auto", "sequential", "chunked")
CHUNKS = (4, 8, 16, 32, 64)                 # tokens per stored state = backward tile (power of two)
# Forward tile layouts: "channel" (lanes on channels, tokens in-thread; sequential or chunk-parallel by
# ``variant``), "token" (lanes and warps along L, one program per few channels; always one pass), "lane" (one
# channel per lane, the tile's tokens and all N states in-thread, B / C broadcast from an fp32 transposed copy:
# no layout conversions; sequential or chunk-parallel by ``variant``, like "channel"), "auto" (the standalone scan:
# "channel"; the fused Vim mixer: "lane" where its plan is chunk-parallel or the forward is inference, as measured
# on the H200: kernels.mamba_mixer.triton.mixer_plans).
LAYOUTS = ("auto", "channel", "token", "lane")
# The forward plan's variant under layout="lane" (the plan tuple has no layout field: like "token", the layout
# rides in the variant); the backward plan keeps "sequential" / "chunked" (its kernels are shared).
LANE_VARIANTS = {"sequential": "lane", "chunked": "lane_chunked"}


def lane_variant(variant: str) -> str:
    """The lane layout's forward variant for a scan_plan variant ("sequential" -> "lane", "chunked" ->
    "lane_chunked")."""
    return LANE_VARIANTS[variant]


def split_lane_variant(variant: str) -> tuple[bool, str]:
    """(lane layout?, "sequential" | "chunked" | the variant unchanged) of a forward plan's variant."""
    for base, lane in LANE_VARIANTS.items():
        if variant == lane:
            return True, base
    return False, variant


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


def check_layout(layout: str | None, tile=None) -> tuple[str, tuple[int, int, int, int] | None]:
    """(layout lower-cased, "auto" for None; tile as a tuple or None) or ValueError.

    ``tile`` forces the token-parallel launch configuration (tokens per thread, thread groups along L, channels
    per program, warps): a tile covers tokens x groups tokens, all powers of two; None lets the autotuner pick."""
    layout = (layout or "auto").lower()
    if layout not in LAYOUTS:
        raise ValueError(f"selective_scan: layout must be one of {LAYOUTS}, got {layout!r}")
    if tile is None:
        return layout, None
    if layout != "token":
        raise ValueError(f"selective_scan: tile applies to layout='token' only, got layout={layout!r}")
    try:
        tile = tuple(int(v) for v in tile)
    except (TypeError, ValueError):
        raise ValueError(f"selective_scan: tile must be 4 integers (tokens, groups, channels, warps), got {tile!r}")
    pow2 = all(v >= 1 and v & (v - 1) == 0 for v in tile)
    if len(tile) != 4 or not pow2 or tile[0] * tile[1] > 4096 or tile[2] > 64 or tile[3] > 16:
        raise ValueError("selective_scan: tile must be 4 powers of two (tokens per thread, groups, channels per "
                         f"program <= 64, warps <= 16) covering <= 4096 tokens, got {tile!r}")
    return layout, tile
