"""ViT registry entries and the converter from timm's ``VisionTransformer`` state dicts."""
from __future__ import annotations

from backbones.layers.hybrid import format_layout, parse_layout
from backbones.layers.mixers import MIXERS
from backbones.vit import MIXER_NAMES, VIT_CONFIGS, VIT_HYBRID_CONFIGS, VIT_MIXER_CONFIGS, ViTConfig, build_vit
from zoo.families import PATCH_ADAPT, cifar_cfg, classifier_builder, image_cfg, remap_to_zoo
from zoo.registry import ModelEntry, PretrainedTag, WeightSource, register

def convert_timm_vit(state_dict: dict) -> dict:
    """timm ViT keys -> ours: everything moves under ``backbone.``, ``head.*`` becomes ``head.fc.*``.

    A state dict already in our layout passes through unchanged.
    """
    return remap_to_zoo(state_dict)


def _timm_tag(tag: str, repo: str, top1: float | None = None) -> PretrainedTag:
    return PretrainedTag(
        tag=tag, source=WeightSource(hf_repo=repo, hf_file="model.safetensors"), converter=convert_timm_vit,
        license="apache-2.0", num_classes=1000,
        preprocess=dict(input_size=(3, 224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9,
                        interpolation="bicubic"),
        notes="timm's AugReg weights (Steiner et al. 2021); sha256 is recorded once the file has been seen.")


_DESCRIPTIONS = {
    "vit_micro_patch4_32": "ViT 128 wide, 12 deep, 4 heads, MLP ratio 2, patch 4 on 32x32: the CIFAR twin of vim_micro_patch4_32",
    "vit_tiny_patch4_32": "ViT-Ti (192 wide, 12 deep, 3 heads) with patch 4 for 32x32 inputs",
    "vit_tiny_patch16_224": "ViT-Ti/16 (192 wide, 12 deep, 3 heads), softmax attention through SDPA",
    "vit_small_patch16_224": "ViT-S/16 (384 wide, 12 deep, 6 heads), softmax attention through SDPA",
    "vit_base_patch16_224": "ViT-B/16 (768 wide, 12 deep, 12 heads), softmax attention through SDPA",
}

_TAGS = {
    "vit_tiny_patch16_224": [_timm_tag("augreg_in21k_ft_in1k", "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k")],
    "vit_small_patch16_224": [_timm_tag("augreg_in21k_ft_in1k", "timm/vit_small_patch16_224.augreg_in21k_ft_in1k")],
    "vit_base_patch16_224": [_timm_tag("augreg2_in21k_ft_in1k", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")],
}

for _name, _arch in VIT_CONFIGS.items():
    _small = _arch["img_size"] == 32
    register(ModelEntry(
        name=_name, kind="image", family="vit",
        builder=classifier_builder(build_vit, ViTConfig, _name),
        default_cfg=cifar_cfg() if _small else image_cfg(),
        converter=convert_timm_vit,
        adapt=PATCH_ADAPT,
        tags={t.tag: t for t in _TAGS.get(_name, [])},
        description=_DESCRIPTIONS[_name],
        paper="arXiv:2010.11929",
    ))


# The pluggable-mixer ViTs: ViT-Ti with only the token mixer changed (backbones/layers/mixers.py), for the
# mixer comparison (zoo bench mixers). No pretrained weights; train them with the CIFAR recipes.
_MIXER_WHAT = {
    "window": "softmax attention in a sliding 2-D window of the patch grid (7x7 at 224, 5x5 at 32 px; class "
              "token global), flex_attention block mask on CUDA",
    "block_sparse": "softmax attention inside 4x4-patch blocks plus a global class token, flex_attention block "
                    "mask on CUDA",
    "linear": "bidirectional normalised linear attention (elu+1 features) on kernels.linear_attention",
    "gla": "bidirectional gated linear attention with per-key data-dependent decay (ViG-style) on kernels.gla",
    "mamba": "Vim's bidirectional Mamba mixer (BiMambaMixer) on kernels.selective_scan",
    "delta": "gated delta rule, forward + reverse pass summed, on kernels.delta_rule",
    "hybrid": "intra-layer hybrid (Hymba): softmax-attention heads beside Vim's Mamba heads on the same input, "
              "each branch normalised, averaged, one output projection",
}
_MIXER_PAPER = {"window": "arXiv:2010.11929", "block_sparse": "arXiv:2010.11929", "linear": "arXiv:2006.16236",
                "gla": "arXiv:2405.18425", "mamba": "arXiv:2401.09417", "delta": "arXiv:2412.06464",
                "hybrid": "arXiv:2411.13676"}

for _name, _arch in VIT_MIXER_CONFIGS.items():
    _small = _arch["img_size"] == 32
    _mixer = _arch["mixer"]
    _where = "patch 4 on 32x32" if _small else "patch 16 at 224"
    register(ModelEntry(
        name=_name, kind="image", family="vit-mixer",
        builder=classifier_builder(build_vit, ViTConfig, _name),
        default_cfg=cifar_cfg() if _small else image_cfg(),
        converter=convert_timm_vit,
        adapt=PATCH_ADAPT,
        description=f"ViT-Ti (192 wide, 12 deep, 3 heads), {_where}, mixer '{_mixer}': {_MIXER_WHAT[_mixer]}",
        paper=_MIXER_PAPER[_mixer],
    ))
assert set(MIXER_NAMES) == set(_MIXER_WHAT)


# The CIFAR hybrid comparison (benchmarks/train_hybrid_h200.sh): vit_micro_patch4_32's width and depth with the
# mixers laid out as patterns (backbones.layers.hybrid), trained with configs/cifar10_vit_micro.yaml's recipe.
_HYBRID_WHAT = {
    "vit_micro_mamba_patch4_32": "every block Vim's bidirectional Mamba mixer",
    "vit_micro_gla_patch4_32": "every block bidirectional GLA (ViG-style)",
    "vit_micro_gla3softmax1_patch4_32": "layout 'gla*3,softmax': 3 GLA : 1 softmax attention, repeated (Qwen3-Next's 3:1)",
    "vit_micro_mamba6softmax6_patch4_32": "layout 'mamba*6,softmax*6': Mamba first half, softmax attention last "
                                          "(MambaVision's rule)",
    "vit_micro_hybrid_patch4_32": "every block the intra-layer hybrid (Hymba): attention heads beside Mamba heads "
                                  "(expand 1, the pure-Mamba model's parameter count)",
}
_HYBRID_PAPER = {"vit_micro_mamba_patch4_32": "arXiv:2401.09417", "vit_micro_gla_patch4_32": "arXiv:2405.18425",
                 "vit_micro_gla3softmax1_patch4_32": "arXiv:2412.06464", "vit_micro_mamba6softmax6_patch4_32":
                 "arXiv:2407.08083", "vit_micro_hybrid_patch4_32": "arXiv:2411.13676"}
for _name, _arch in VIT_HYBRID_CONFIGS.items():
    _layout = format_layout(parse_layout(_arch.get("layout") or _arch["mixer"], _arch["depth"], MIXERS))
    register(ModelEntry(
        name=_name, kind="image", family="vit-hybrid",
        builder=classifier_builder(build_vit, ViTConfig, _name),
        default_cfg=cifar_cfg(layout=_layout),
        converter=convert_timm_vit,
        adapt=PATCH_ADAPT,
        description=f"ViT 128 wide, 12 deep, 4 heads, MLP ratio 2, patch 4 on 32x32 (vit_micro_patch4_32's shape), "
                    f"{_HYBRID_WHAT[_name]}",
        paper=_HYBRID_PAPER[_name],
    ))
assert set(VIT_HYBRID_CONFIGS) == set(_HYBRID_WHAT) == set(_HYBRID_PAPER)
