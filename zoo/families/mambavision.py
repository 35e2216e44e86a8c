"""MambaVision (NVlabs) registry entries and the converter from the official ``.pth.tar`` checkpoints.

The weights are NVIDIA's, licensed CC-BY-NC-SA-4.0 (non-commercial); every tag records it and ``zoo info``
shows it. The files live in the nvidia/MambaVision-* Hugging Face repos.
"""
from __future__ import annotations

import re

import torch

from backbones.mambavision import MAMBAVISION_CONFIGS, MambaVisionConfig, build_mambavision
from zoo.errors import WeightLoadError
from zoo.families import classifier_builder, image_cfg, remap_to_zoo
from zoo.registry import ModelEntry, PretrainedTag, WeightAdapt, WeightSource, register

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BLOCK = r"levels\.\d+\.blocks\.\d+\."
OFFICIAL_KEYS = re.compile("|".join([
    r"patch_embed\.conv_down\.[03]\.weight", rf"patch_embed\.conv_down\.[14]\.{_BN}",
    rf"{_BLOCK}conv[12]\.(weight|bias)", rf"{_BLOCK}norm[12]\.{_BN}", rf"{_BLOCK}gamma(_1|_2)?",
    rf"{_BLOCK}mixer\.(A_log|D|(in_proj|x_proj|out_proj|conv1d_x|conv1d_z)\.weight|dt_proj\.(weight|bias))",
    rf"{_BLOCK}mixer\.(qkv|proj)\.(weight|bias)", rf"{_BLOCK}mlp\.fc[12]\.(weight|bias)",
    r"levels\.\d+\.downsample\.reduction\.0\.weight", rf"norm\.{_BN}", r"head\.(weight|bias)",
]))
"""Every key name of the official ``MambaVision`` state dict (any size)."""


def convert_official_mambavision(state_dict: dict) -> dict:
    """NVlabs/MambaVision keys -> ours: the backbone keeps the official names under ``backbone.``, ``head.*``
    becomes ``head.fc.*``; DDP ``module.`` and a wrapping ``model.`` prefix (the HF safetensors) are dropped.

    Keys outside the official layout raise :class:`WeightLoadError` naming them (the official loader,
    strict=False, would skip them silently); keys the model needs but the file lacks are reported by the
    strict load. The only key added is a BatchNorm's ``num_batches_tracked`` counter where a file omits it
    (it changes no output). A state dict already in our layout passes through.
    """
    if any(k.startswith("backbone.") for k in state_dict):
        return dict(state_dict)
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    unknown = [k for k in sd if not OFFICIAL_KEYS.fullmatch(k)]
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", … ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise WeightLoadError(
            f"{len(unknown)} key(s) are not in the official MambaVision layout: {shown}. Pass the official "
            f"mambavision_*.pth.tar (weights under 'state_dict' or 'model') or a state dict of this zoo model.")
    for key in [k for k in sd if k.endswith(".running_mean")]:
        sd.setdefault(key.replace(".running_mean", ".num_batches_tracked"), torch.tensor(0, dtype=torch.long))
    return remap_to_zoo(sd)


ADAPT = WeightAdapt(first_conv=("backbone.patch_embed.conv_down.0",), head="head")
"""A conv stem and no position embedding (any input size runs): only the first conv and the head adapt."""

_LICENSE = "cc-by-nc-sa-4.0"
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _tag(tag: str, repo: str, file: str, top1: float, top5: float, crop_pct: float, size: int = 224,
         what: str = "ImageNet-1k") -> PretrainedTag:
    pre = dict(input_size=(3, size, size), mean=_MEAN, std=_STD, interpolation="bicubic", crop_pct=crop_pct,
               crop_mode="squash" if size == 512 else "center")
    return PretrainedTag(
        tag=tag, source=WeightSource(hf_repo=repo, hf_file=file), converter=convert_official_mambavision,
        license=_LICENSE, num_classes=1000, preprocess=pre,
        metrics={"imagenet-1k (published)": {"top1": top1, "top5": top5}},
        notes=(f"Official NVlabs MambaVision weights ({what}); CC-BY-NC-SA-4.0, non-commercial use only. A "
               "pickled .pth.tar (weights under 'state_dict' or 'model'), read with weights_only=True. "
               "sha256 is recorded once a file has been seen."))


_TAGS: dict[str, list[PretrainedTag]] = {
    "mambavision_t_224": [_tag("in1k", "nvidia/MambaVision-T-1K", "mambavision_tiny_1k.pth.tar", 82.3, 96.2, 1.0)],
    "mambavision_t2_224": [_tag("in1k", "nvidia/MambaVision-T2-1K", "mambavision_tiny2_1k.pth.tar", 82.7, 96.3,
                                0.98)],
    "mambavision_s_224": [_tag("in1k", "nvidia/MambaVision-S-1K", "mambavision_small_1k.pth.tar", 83.3, 96.5, 0.93)],
    "mambavision_b_224": [
        _tag("in1k", "nvidia/MambaVision-B-1K", "mambavision_base_1k.pth.tar", 84.2, 96.9, 1.0),
        _tag("in21k_ft_in1k", "nvidia/MambaVision-B-21K", "mambavision_base_21k.pth.tar", 84.9, 97.5, 1.0,
             what="ImageNet-21k pretrained, ImageNet-1k fine-tuned")],
    "mambavision_l_224": [
        _tag("in1k", "nvidia/MambaVision-L-1K", "mambavision_large_1k.pth.tar", 85.0, 97.1, 1.0),
        _tag("in21k_ft_in1k", "nvidia/MambaVision-L-21K", "mambavision_large_21k.pth.tar", 86.1, 97.9, 1.0,
             what="ImageNet-21k pretrained, ImageNet-1k fine-tuned")],
    "mambavision_l2_224": [_tag("in1k", "nvidia/MambaVision-L2-1K", "mambavision_large2_1k.pth.tar", 85.3, 97.2,
                                1.0)],
    "mambavision_l2_512": [_tag("in21k_ft_in1k", "nvidia/MambaVision-L2-512-21K", "mambavision_L2_21k_240m_512.pth.tar",
                                87.3, 98.4, 0.93, size=512,
                                what="ImageNet-21k pretrained, ImageNet-1k fine-tuned at 512 px")],
}

_DESCRIPTIONS = {
    "mambavision_t_224": "MambaVision-T: conv stages + windowed Mamba/attention stages, widths 80-640, depths 1-3-8-4 (31.8M)",
    "mambavision_t2_224": "MambaVision-T2: widths 80-640, depths 1-3-11-4 (35.1M)",
    "mambavision_s_224": "MambaVision-S: widths 96-768, depths 3-3-7-5 (50.1M)",
    "mambavision_b_224": "MambaVision-B: widths 128-1024, depths 3-3-10-5, layer scale (97.7M)",
    "mambavision_l_224": "MambaVision-L: widths 196-1568, depths 3-3-10-5, layer scale (227.9M)",
    "mambavision_l2_224": "MambaVision-L2: widths 196-1568, depths 3-3-12-5, layer scale (241.5M)",
    "mambavision_l2_512": "MambaVision-L2 at 512 px: windows 32/16 in the token stages (241.5M)",
}

for _name, _arch in MAMBAVISION_CONFIGS.items():
    _size = _arch.get("img_size", 224)
    _first = _TAGS[_name][0].preprocess
    register(ModelEntry(
        name=_name, kind="image", family="mambavision",
        builder=classifier_builder(build_mambavision, MambaVisionConfig, _name),
        default_cfg=image_cfg(input_size=(3, _size, _size), crop_pct=_first["crop_pct"],
                              crop_mode=_first["crop_mode"]),
        converter=convert_official_mambavision,
        adapt=ADAPT,
        tags={t.tag: t for t in _TAGS[_name]},
        description=_DESCRIPTIONS[_name],
        paper="arXiv:2407.08083",
    ))
