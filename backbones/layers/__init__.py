"""Pieces shared by the backbone families: patch embedding, position embeddings, MLPs."""
from .patch_embed import PatchEmbed, PatchInputMixin, to_2tuple
from .pos_embed import resample_pos_embed, grid_size_of
from .mlp import Mlp
from .drop import DropPath

__all__ = ["PatchEmbed", "PatchInputMixin", "to_2tuple", "resample_pos_embed", "grid_size_of", "Mlp", "DropPath"]
