"""Resizing learned absolute position embeddings to a new patch grid.

Prefix tokens (ViT's class token at index 0) and Vim's middle class token (at index M // 2) are taken out
before the grid is interpolated and put back after, at the place the new grid puts them. Mixing the class
slot into the grid, as the official Vim fine-tune script does, corrupts both.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def grid_size_of(num_patches: int) -> tuple[int, int]:
    side = int(math.isqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"cannot infer a square grid from {num_patches} patches; pass old_grid explicitly")
    return side, side


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
                       num_prefix_tokens: int = 0, middle_token: bool = False,
                       mode: str = "bicubic") -> torch.Tensor:
    """Resample ``pos_embed`` [1, T, C] from ``old_grid`` to ``new_grid``.

    ``num_prefix_tokens`` leading tokens are kept as they are. With ``middle_token`` one extra token sits at
    index ``M // 2`` of the M grid tokens (Vim), and is re-inserted at ``M' // 2`` of the new grid.
    """
    if pos_embed.ndim != 3:
        raise ValueError(f"pos_embed must be [1, T, C], got {tuple(pos_embed.shape)}")
    n_extra = num_prefix_tokens + int(middle_token)
    num_patches = pos_embed.shape[1] - n_extra
    old_grid = tuple(old_grid) if old_grid is not None else grid_size_of(num_patches)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} grid tokens, not {old_grid[0]}x{old_grid[1]}")
    new_grid = tuple(new_grid)
    if new_grid == old_grid:
        return pos_embed
    prefix, rest = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if middle_token:
        mid = num_patches // 2
        cls = rest[:, mid:mid + 1]
        grid = torch.cat([rest[:, :mid], rest[:, mid + 1:]], dim=1)
    else:
        grid = rest
    dtype = grid.dtype
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False, antialias=mode in ("bicubic", "bilinear"))
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(dtype)
    if middle_token:
        new_mid = grid.shape[1] // 2
        grid = torch.cat([grid[:, :new_mid], cls, grid[:, new_mid:]], dim=1)
    return torch.cat([prefix, grid], dim=1)
