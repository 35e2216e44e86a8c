"""Registry entries of the captioners (kind ``captioner``, zoo.kinds.captioner): ``caption_mdlm_<tower>`` (the
masked-diffusion decoder, LLaDA-V style) and ``caption_ar_<tower>`` (its autoregressive twin, the same network
with causal mixers).

The tower is the CLIP recipes' ViT-Tiny/16 cut to 6 blocks at 128 px (an 8 x 8 grid of 64 patch tokens, all
kept by default; ``pool=4`` averages them to 16), so ``tower_from=clip_vit_tiny_d6_minilm_128.flickr8k`` (the
shipped CLIP tag, or a CLIP export) initialises it from the contrastive model; with ``freeze_tower=True`` it stays
frozen (LLaVA-style) and is a reference to that tag, not part of the captioner's weights. The decoder is 3
softmax-attention blocks of width 256 (RoPE, SwiGLU 512) over the 2,780-id Flickr8k caption vocabulary
(zoo.data.captions), with the token head tied to the embedding: tower 2.83 M + projector 0.12 M + decoder 2.68 M
parameters. Three blocks, not four, so the trainable part ships inside the package's weight budget: 2.88 MB as
int8 weights (zoo publish --int8; four blocks would be 3.54 MB). Both twins use the same network.
"""
from __future__ import annotations

from zoo.families.clip import CLIP_MEAN, CLIP_STD
from zoo.kinds.captioner import captioner_builder
from zoo.registry import ModelEntry, WeightAdapt, register

DECODER = dict(dim=256, depth=3, num_heads=4, mlp_hidden=512, layout="attn", max_len=128)
TOWERS = {
    # suffix: (image tower, tower overrides, decoder, description)
    "vit_tiny_d6_128": ("vit_tiny_patch16_224", {"depth": 6}, DECODER, "ViT-Tiny/16 (6 blocks) at 128 px"),
    # the CIFAR-10 towers' width at patch 16 (8 x 8 patches at 128 px, or at 64 px with tower_args patch_size 8),
    # so tower_from=vit_micro_patch4_32.cifar10 starts it, or the CLIP tag / export of clip_vit_micro_p16_minilm_128
    "vit_micro_p16_128": ("vit_micro_patch4_32", {"patch_size": 16}, DECODER,
                          "ViT-Micro/16 (12 blocks of width 128) at 128 px"),
    "tiny_test": ("vit_tiny_patch16_224", {"depth": 1, "embed_dim": 64, "num_heads": 2},
                  dict(dim=64, depth=2, num_heads=2, mlp_hidden=128, layout="attn", max_len=128),
                  "a 1-block ViT (64 wide) + a 2-block decoder, for tests"),
}
PAPERS = {"diffusion-captioner": "arXiv:2505.16933 (LLaDA-V), arXiv:2505.16839 (LaViDa)",
          "causal-captioner": "autoregressive twin of the diffusion captioner (same network, causal mixers)"}


def _register() -> None:
    for prefix, kind in (("mdlm", "diffusion-captioner"), ("ar", "causal-captioner")):
        for suffix, (tower, args, dec, what) in TOWERS.items():
            register(ModelEntry(
                name=f"caption_{prefix}_{suffix}", kind="captioner", family="captioner",
                builder=captioner_builder(kind, tower, args, 128, dec, CLIP_MEAN, CLIP_STD),
                default_cfg={"input_size": (3, 128, 128), "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic",
                             "crop_pct": 1.0, "kind": kind, "image_tower": tower, "vocab": "flickr8k caption pieces"},
                adapt=WeightAdapt(),
                description=(f"{'masked-diffusion' if kind == 'diffusion-captioner' else 'autoregressive'} captioner: "
                             f"{what} -> MLP projector -> {dec['depth']} x {dec['dim']} {dec['layout']} decoder"),
                paper=PAPERS[kind]))


_register()
