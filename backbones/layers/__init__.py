"""Pieces shared by the backbone families: patch embedding, position embeddings, MLPs, pooling, the
intermediate-block indices (token mixers: ``backbones.layers.mixers``)."""
from .patch_embed import PatchEmbed, PatchInputMixin, to_2tuple
from .pos_embed import resample_pos_embed, grid_size_of
from .mlp import Mlp
from .drop import DropPath
from .intermediates import resolve_indices
from .pool import TOKEN_POOLS, check_pool, pool_tokens

__all__ = ["PatchEmbed", "PatchInputMixin", "to_2tuple", "resample_pos_embed", "grid_size_of", "Mlp", "DropPath",
           "resolve_indices", "TOKEN_POOLS", "check_pool", "pool_tokens"]
