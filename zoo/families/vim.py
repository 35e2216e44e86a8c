"""Vision Mamba (Vim) registry entries and the converter from hustvl/Vim's official checkpoints."""
from __future__ import annotations

from backbones.vim import VIM_CONFIGS, VimConfig, build_vim
from zoo.families import PATCH_ADAPT, cifar_cfg, classifier_builder, image_cfg, remap_to_zoo
from zoo.registry import ModelEntry, PretrainedTag, WeightSource, register



def convert_official_vim(state_dict: dict) -> dict:
    """hustvl/Vim ``*_midclstok_div2`` keys -> ours.

    Our backbone keeps the official names, so every backbone key moves under ``backbone.`` and ``head.*``
    becomes ``head.fc.*``; a DDP ``module.`` prefix is dropped. A state dict already in our layout passes
    through unchanged. Keys of other official variants (RoPE buffers, layer scale ``gamma``, a head class
    token) are not dropped silently: they stay and are reported by the loader as unexpected.
    """
    return remap_to_zoo(state_dict)


_PREPROCESS = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic",
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _hustvl_tag(repo: str, file: str, top1: float, top5: float, what: str) -> PretrainedTag:
    return PretrainedTag(
        tag="in1k", source=WeightSource(hf_repo=repo, hf_file=file), converter=convert_official_vim,
        license="apache-2.0", num_classes=1000, preprocess=dict(_PREPROCESS),
        metrics={"imagenet-1k (published)": {"top1": top1, "top5": top5}},
        notes=(f"Official hustvl/Vim weights ({what}), ImageNet-1k, trained in fp32. A pickled .pth with an "
               "argparse.Namespace of training args, read with weights_only=True and Namespace allow-listed. "
               "sha256 is recorded once a file has been seen."))


_TAGS = {
    "vim_tiny_patch16_224": _hustvl_tag("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth", 76.1, 93.0,
                                        "Vim-Ti"),
    "vim_tiny_patch16_stride8_224": _hustvl_tag("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth",
                                                78.3, 94.2, "Vim-Ti+, stride-8 fine-tune"),
    "vim_small_patch16_224": _hustvl_tag("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth", 80.5, 95.1,
                                         "Vim-S"),
    "vim_small_patch16_stride8_224": _hustvl_tag("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth",
                                                 81.6, 95.4, "Vim-S+, stride-8 fine-tune"),
}

_DESCRIPTIONS = {
    "vim_tiny_patch16_224": "Vim-Ti (192 wide, 24 bidirectional Mamba blocks, middle class token), patch 16",
    "vim_tiny_patch16_stride8_224": "Vim-Ti+ (192 wide, 24 blocks), overlapping patches at stride 8: 729 tokens",
    "vim_small_patch16_224": "Vim-S (384 wide, 24 bidirectional Mamba blocks, middle class token), patch 16",
    "vim_small_patch16_stride8_224": "Vim-S+ (384 wide, 24 blocks), overlapping patches at stride 8: 729 tokens",
    "vim_base_patch16_224": ("Vim-B (768 wide, 24 bidirectional Mamba blocks), patch 16; no pretrained tag: the "
                             "official hustvl/Vim-base-midclstok file list is unverified (published 81.9 top-1); "
                             "load a file you have with checkpoint_path="),
    "vim_tiny_patch4_32": "Vim-Ti (192 wide, 24 blocks) with patch 4 for 32x32 inputs",
    "vim_micro_patch4_32": ("Vim 128 wide, 12 bidirectional Mamba blocks, patch 4 on 32x32 (about 1.6M params): "
                            "the CIFAR twin of vit_micro_patch4_32"),
}

for _name, _arch in VIM_CONFIGS.items():
    _small = _arch["img_size"] == 32
    _tag = _TAGS.get(_name)
    register(ModelEntry(
        name=_name, kind="image", family="vim",
        builder=classifier_builder(build_vim, VimConfig, _name),
        default_cfg=cifar_cfg() if _small else image_cfg(crop_pct=0.875),
        converter=convert_official_vim,
        adapt=PATCH_ADAPT,
        tags={_tag.tag: _tag} if _tag else {},
        description=_DESCRIPTIONS[_name],
        paper="arXiv:2401.09417",
    ))
