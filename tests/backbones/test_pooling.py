"""Pooling choices at create time and in reset_classifier (timm's), and zoo towers in open_clip's defaults."""
import json

import pytest
import torch

import zoo
from zoo.errors import ConfigError


@pytest.mark.parametrize("pool", ["", "token", "avg", "max", "avgmax"])
def test_vit_pools_as_timm(pool):
    m = zoo.create_model("vit_micro_patch4_32", depth=1, num_classes=0, global_pool=pool).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    out = m.forward_head(feats)
    patches = feats[:, 1:]
    want = {"": feats, "token": feats[:, 0], "avg": patches.mean(1), "max": patches.amax(1),
            "avgmax": 0.5 * (patches.mean(1) + patches.amax(1))}[pool]
    if pool in ("avg", "max", "avgmax"):  # built for a reducing pool: fc_norm after pooling, no final norm
        assert isinstance(m.backbone.norm, torch.nn.Identity)
        want = m.backbone.fc_norm(want)
    assert torch.allclose(out, want, atol=1e-6)


def test_vit_reset_classifier_switches_pool_after_build():
    m = zoo.create_model("vit_micro_patch4_32", depth=1).eval()
    x = torch.randn(2, 3, 32, 32)
    m.reset_classifier(0, global_pool="avg")
    feats = m.forward_features(x)
    assert torch.allclose(m(x), feats[:, 1:].mean(1), atol=1e-6)  # norm as built (timm keeps it too)
    m.reset_classifier(0, global_pool="")
    assert m(x).shape == (2, 65, 128)
    with pytest.raises(ConfigError, match="'mean' is not supported"):
        m.reset_classifier(0, global_pool="mean")


def test_vim_pools():
    m = zoo.create_model("vim_micro_patch4_32", depth=1, num_classes=0).eval()
    x = torch.randn(1, 3, 32, 32)
    feats = m.forward_features(x)
    mid = m.backbone.cls_index
    assert torch.equal(m.forward_head(feats), feats[:, mid])  # the middle class token
    m.reset_classifier(0, global_pool="avg")
    patches = torch.cat([feats[:, :mid], feats[:, mid + 1:]], 1)
    assert torch.allclose(m.forward_head(feats), patches.mean(1), atol=1e-6)
    m.reset_classifier(0, global_pool="")
    assert m.forward_head(feats).shape == feats.shape
    built = zoo.create_model("vim_micro_patch4_32", depth=1, num_classes=0, global_pool="max").eval()
    assert built.global_pool == "max"


def test_efficientvit_pools_and_refuses_none():
    m = zoo.create_model("efficientvit_b0", img_size=64, global_pool="max", num_classes=3).eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3) and m.global_pool == "max"
    m.reset_classifier(0, global_pool="avgmax")
    assert m.backbone.global_pool == "avgmax"
    with pytest.raises(ConfigError, match="cannot disable pooling"):
        m.reset_classifier(0, global_pool="")
    with pytest.raises(ConfigError, match="cannot disable pooling"):
        zoo.create_model("efficientvit_b0", global_pool="")


SMALL_TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}


@pytest.mark.parametrize("tower, size", [("zoo_vit_tiny_patch16_224", 224), ("zoo_vim_micro_patch4_32", 32)])
def test_open_clip_default_vision_cfg_builds_with_a_zoo_tower(tmp_path, tower, size):
    """open_clip's default timm tower: create_model(name) then reset_classifier(0, global_pool='avg'), a
    linear projection on top (open_clip 3.3 TimmModel)."""
    open_clip = pytest.importorskip("open_clip")
    name = f"zoo-test-{tower}"
    cfg = {"embed_dim": 16, "vision_cfg": {"timm_model_name": tower, "image_size": size}, "text_cfg": SMALL_TEXT}
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    trunk = model.visual.trunk
    assert isinstance(trunk, zoo.kinds.classifier.Classifier)
    assert trunk.global_pool == "avg" and trunk.num_classes == 0
    model.eval()
    with torch.no_grad():
        image = model.encode_image(torch.randn(1, 3, size, size))
        text = model.encode_text(torch.randint(0, 64, (1, 8)))
    assert image.shape == (1, 16) and text.shape == (1, 16)
