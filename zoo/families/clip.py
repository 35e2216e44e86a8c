"""CLIP-style vision-language models: a zoo image tower at 128 px + the pretrained MiniLM text tower.

The three towers are of similar size (2-3.5 M parameters) so the softmax ViT, the Vision Mamba and the
EfficientViT compare on the same recipe and budget (configs/flickr8k_clip_*.yaml): ViT-Tiny cut to 6
blocks, Vim-Tiny cut to 12 (one Vim block holds one mixer, a ViT block two sub-layers) and EfficientViT-B0.
The text tower is sentence-transformers/all-MiniLM-L6-v2 (mean pooling), locked by default (LiT); exports
leave its weights out and name it by Hub id and the sha256 of the fp16 file the zoo's data root holds.
"""
from __future__ import annotations

from zoo.families import image_cfg
from zoo.kinds.vision_language import vision_language_builder
from zoo.registry import ModelEntry, register
from zoo.vl.text import MINILM_HUB_ID, fill_text_tower

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TOWERS = {
    # name: (image tower, tower overrides, description)
    "clip_vit_tiny_d6_minilm_128": ("vit_tiny_patch16_224", {"depth": 6}, "ViT-Tiny/16 (6 blocks, softmax attention)"),
    "clip_vim_tiny_d12_minilm_128": ("vim_tiny_patch16_224", {"depth": 12}, "Vim-Tiny/16 (12 bidirectional Mamba blocks)"),
    "clip_efficientvit_b0_minilm_128": ("efficientvit_b0", {}, "EfficientViT-B0 (ReLU linear attention)"),
    # the CIFAR-10 towers' widths (128, 12 blocks) at patch 16: 8x8 patches at 128 px as at 32 px / patch 4, so
    # their CIFAR-10 weights start the tower (model.tower_init: vit_micro_patch4_32.cifar10)
    "clip_vit_micro_p16_minilm_128": ("vit_micro_patch4_32", {"patch_size": 16},
                                      "ViT-Micro/16 (12 blocks of width 128, softmax attention)"),
    "clip_vim_micro_p16_minilm_128": ("vim_micro_patch4_32", {"patch_size": 16},
                                      "Vim-Micro/16 (12 bidirectional Mamba blocks of width 128)"),
    # the same towers at patch 8: a 16x16 grid (256 tokens), started from the same CIFAR-10 weights (kernel
    # resampled 4 -> 8, position grid 8x8 -> 16x16); the finer grid is what lifted Flickr8k R@10 past 30%
    "clip_vit_micro_p8_minilm_128": ("vit_micro_patch4_32", {"patch_size": 8},
                                     "ViT-Micro/8 (12 blocks of width 128, softmax attention, 256 tokens)"),
    "clip_vim_micro_p8_minilm_128": ("vim_micro_patch4_32", {"patch_size": 8},
                                     "Vim-Micro/8 (12 bidirectional Mamba blocks of width 128, 256 tokens)"),
}


def _default_cfg(tower: str) -> dict:
    cfg = image_cfg((3, 128, 128), CLIP_MEAN, CLIP_STD, crop_pct=1.0, interpolation="bicubic", image_tower=tower,
                    text_tower=MINILM_HUB_ID)
    cfg.pop("num_classes")  # no classifier: the kind has no num_classes argument
    return cfg


def _register() -> None:
    for name, (tower, args, what) in TOWERS.items():
        register(ModelEntry(
            name=name, kind="vision-language", family="clip",
            builder=vision_language_builder(tower, args, img_size=128, embed_dim=256),
            default_cfg=_default_cfg(tower), converter=fill_text_tower,
            description=f"CLIP-style: {what} image tower at 128 px + all-MiniLM-L6-v2 text tower (mean pooled), "
                        f"256-d joint space",
            paper="arXiv:2103.00020 (CLIP), arXiv:2111.07991 (LiT)"))


_register()
