"""Global pooling of a token sequence [B, T, C] by name, timm's choices: '', 'token', 'avg', 'max', 'avgmax'."""
from __future__ import annotations

from typing import Callable

import torch

TOKEN_POOLS = ("", "token", "avg", "max", "avgmax")
"""'' keeps the tokens; 'token' takes the class token; the others reduce the patch tokens."""


def check_pool(pool: str, supported: tuple[str, ...], family: str) -> str:
    if pool not in supported:
        raise ValueError(f"{family} global_pool {pool!r} is not supported; choose one of "
                         f"{', '.join(repr(p) for p in supported)}")
    return pool


def pool_tokens(x: torch.Tensor, pool: str, cls_index: int | None,
                patch_tokens: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x`` [B, T, C] pooled by ``pool``; ``cls_index`` is the class token's position (for 'token') and
    ``patch_tokens(x)`` the patch tokens without the class token(s) (for the reductions)."""
    if pool == "":
        return x
    if pool == "token":
        if cls_index is None:
            raise ValueError("global_pool='token' needs a class token")
        return x[:, cls_index]
    patches = patch_tokens(x)
    if pool == "avg":
        return patches.mean(dim=1)
    if pool == "max":
        return patches.amax(dim=1)
    if pool == "avgmax":
        return 0.5 * (patches.mean(dim=1) + patches.amax(dim=1))
    raise ValueError(f"global_pool must be one of {TOKEN_POOLS}, got {pool!r}")
