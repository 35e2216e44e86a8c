"""Image (or spectrogram) to patch tokens: one strided convolution, flattened row-major."""
from __future__ import annotations

import torch
import torch.nn as nn


def to_2tuple(x) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f"expected an int or a pair, got {x!r}")
        return int(x[0]), int(x[1])
    return int(x), int(x)


class PatchEmbed(nn.Module):
    """Conv2d(in_chans -> dim, kernel=patch, stride) then flatten to [B, M, dim].

    The grid is ``(H - patch) // stride + 1`` per axis, which covers the non-overlapping (stride = patch)
    and the overlapping (Vim's stride 8, AST's stride 10) cases. Input sizes are checked against the size
    the model was built for, since position embeddings are tied to the grid.
    """

    def __init__(self, img_size=224, patch_size=16, stride=None, in_chans: int = 3, embed_dim: int = 768,
                 bias: bool = True, strict_img_size: bool = True):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride if stride is not None else patch_size)
        if any(i < p for i, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} is smaller than the patch {self.patch_size}")
        self.grid_size = tuple((i - p) // s + 1 for i, p, s in zip(self.img_size, self.patch_size, self.stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.strict_img_size = strict_img_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride, bias=bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the expected shape; callers turn it into a zoo error."""
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D input [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                f"build the model with in_chans={x.shape[1]}")
        if self.strict_img_size and tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"expected input size {self.img_size}, got {tuple(x.shape[2:])}; build the model with "
                f"img_size={tuple(x.shape[2:])} (position embeddings are resized on load)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class PatchInputMixin:
    """What a backbone whose input goes through ``self.patch_embed`` reads off it (``img_size``, ``in_chans``),
    and its no-weight-decay set: position embedding, class token and parameters flagged ``_no_weight_decay``."""

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    @property
    def in_chans(self) -> int:
        return self.patch_embed.in_chans

    def no_weight_decay(self) -> set[str]:
        flagged = {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}
        return {"pos_embed", "cls_token"} | flagged
