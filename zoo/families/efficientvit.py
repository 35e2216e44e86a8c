"""EfficientViT (MIT) B-series registry entries and the converter from timm's ``efficientvit_mit`` state dicts."""
from __future__ import annotations


from backbones.efficientvit import EFFICIENTVIT_CONFIGS, EfficientViT, EfficientViTConfig, build_efficientvit
from zoo.families import classifier_builder, image_cfg, remap_to_zoo
from zoo.kinds.classifier import Classifier
from zoo.registry import ModelEntry, PretrainedTag, WeightAdapt, WeightSource, register

# timm key prefix -> ours. The pre-logits part of timm's head lives in our backbone (forward_pool); only the
# last Linear (classifier.4) is the zoo's head.fc. Everything else keeps its name under ``backbone.``.
_PREFIXES = (
    ("head.in_conv.", "backbone.pre_logits.in_conv."),
    ("head.classifier.0.", "backbone.pre_logits.fc."),
    ("head.classifier.1.", "backbone.pre_logits.norm."),
    ("head.classifier.4.", "head.fc."),
)

ADAPT = WeightAdapt(first_conv=("backbone.stem.in_conv.conv",), head="head")
"""A conv stem and no position embedding: only the first conv and the head adapt."""


def convert_timm_efficientvit(state_dict: dict) -> dict:
    """timm ``EfficientVit`` keys -> ours (a prefix map; see ``_PREFIXES``). Our own layout passes through."""
    return remap_to_zoo(state_dict, _PREFIXES, strict_head=True)


class EfficientViTModel(Classifier):
    """The classifier kind with timm's EfficientViT head semantics.

    ``num_features`` is the channel count of ``forward_features`` (timm's meaning) and ``head_hidden_size``
    the pre-logits width the classifier sees; ``reset_classifier(n, reset_other=True)`` also drops the
    pre-logits conv and MLP; pooling cannot be switched off (timm: 'Cannot disable pooling').
    """

    def __init__(self, backbone: EfficientViT, num_classes: int, drop_rate: float = 0.0, head: str = "linear",
                 head_cfg: dict | None = None, pretrained_cfg: dict | None = None):
        super().__init__(backbone, num_classes, drop_rate, head, head_cfg, pretrained_cfg)
        self._sync_widths()

    def _sync_widths(self) -> None:
        self.num_features = self.backbone.stage_channels
        self.head_hidden_size = self.backbone.num_features

    def token_width(self) -> int:
        return self.backbone.stage_channels

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        if reset_other:
            if global_pool is not None:
                self._set_pool(global_pool)
            self.backbone.reset_pre_logits()
            if not self.head.pools_tokens:  # the pre-logits width changed: a head of the new width
                self.head = self._make_head(self.head_name, num_classes, self.head.drop.p,
                                            self.head_cfg).to(self._ref_param())
            else:
                self.head.reset(num_classes)
        else:
            super().reset_classifier(num_classes, global_pool)
        self._sync_widths()


# timm default_cfgs: ImageNet mean/std, bicubic, crop_pct 0.95 at 224; results-imagenet.csv top-1 at 224.
_TOP1 = {"efficientvit_b0": 71.408, "efficientvit_b1": 79.254, "efficientvit_b2": 82.162, "efficientvit_b3": 83.444}
_PREPROCESS = dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.95,
                   interpolation="bicubic")


def _timm_tag(name: str) -> PretrainedTag:
    return PretrainedTag(
        tag="r224_in1k", source=WeightSource(hf_repo=f"timm/{name}.r224_in1k", hf_file="model.safetensors"),
        converter=convert_timm_efficientvit, license="apache-2.0", num_classes=1000, preprocess=dict(_PREPROCESS),
        metrics={"imagenet-1k (timm results, 224)": {"top1": _TOP1[name]}},
        notes=("timm's conversion of the official mit-han-lab EfficientViT weights (ImageNet-1k, 224 px). "
               "sha256 is empty until the file has been seen (loading logs the hash it computed). Attention eps "
               "is timm's 1e-5 (official 1e-15), which the weights tolerate and bf16/fp16 need."))


_DESCRIPTIONS = {
    "efficientvit_b0": "EfficientViT-B0 (MIT): conv stages + ReLU multi-scale linear attention, widths 8-128, head dim 16",
    "efficientvit_b1": "EfficientViT-B1 (MIT): conv stages + ReLU multi-scale linear attention, widths 16-256, head dim 16",
    "efficientvit_b2": "EfficientViT-B2 (MIT): conv stages + ReLU multi-scale linear attention, widths 24-384, head dim 32",
    "efficientvit_b3": "EfficientViT-B3 (MIT): conv stages + ReLU multi-scale linear attention, widths 32-512, head dim 32",
}

for _name in EFFICIENTVIT_CONFIGS:
    _tag = _timm_tag(_name)
    register(ModelEntry(
        name=_name, kind="image", family="efficientvit",
        builder=classifier_builder(build_efficientvit, EfficientViTConfig, _name, EfficientViTModel),
        default_cfg=image_cfg(crop_pct=0.95),
        converter=convert_timm_efficientvit,
        adapt=ADAPT,
        tags={_tag.tag: _tag},
        description=_DESCRIPTIONS[_name],
        paper="arXiv:2205.14756",
    ))
