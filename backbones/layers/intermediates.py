"""Which blocks ``forward_intermediates`` returns, as timm reads its ``indices`` argument."""
from __future__ import annotations


def resolve_indices(indices: int | list[int] | tuple[int, ...] | None, depth: int) -> list[int]:
    """``None``: every block; an int n: the last n blocks; a list: those blocks (negative counts from the end).

    Returns sorted, distinct indices in ``0..depth-1``; raises ValueError for a count or index out of range.
    """
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"indices={indices} must be in 1..{depth}")
        return list(range(depth - indices, depth))
    for i in indices:
        if not -depth <= int(i) < depth:
            raise ValueError(f"block index {i} out of range for depth {depth}")
    return sorted({int(i) % depth for i in indices})
