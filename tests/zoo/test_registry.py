"""Registry, create_model and error messages."""
import pytest
import timm
import torch

import zoo
from zoo.errors import ConfigError, PretrainedNotAvailableError, UnknownModelError


def test_list_models_patterns_and_kinds():
    names = zoo.list_models()
    assert "vit_tiny_patch16_224" in names and names == sorted(names)
    assert zoo.list_models("vit_*_224") == [n for n in names if n.startswith("vit_") and n.endswith("_224")]
    assert "vit_tiny_patch16_224.augreg_in21k_ft_in1k" in zoo.list_pretrained("vit_tiny*")
    assert all("." in n for n in zoo.list_models(pretrained=True))
    assert all(zoo.list_models(kind=k) for k in zoo.KINDS), "every kind in the registry's list is used"
    with pytest.raises(ConfigError, match="unknown kind"):
        zoo.list_models(kind="video")


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="Did you mean: vit_tiny_patch16_224"):
        zoo.create_model("vit_tiny_patch16_244")


def test_unknown_tag_and_untagged_pretrained():
    with pytest.raises(PretrainedNotAvailableError, match="augreg_in21k_ft_in1k"):
        zoo.create_model("vit_tiny_patch16_224.in22k")
    with pytest.raises(PretrainedNotAvailableError, match="no pretrained weights"):
        zoo.create_model("vit_tiny_patch4_32", pretrained=True)


def test_unknown_override_is_a_config_error():
    with pytest.raises(ConfigError, match="Did you mean: depth"):
        zoo.create_model("vit_micro_patch4_32", deph=4)


def test_overrides_reach_the_architecture():
    m = zoo.create_model("vit_micro_patch4_32", depth=3, num_classes=7, drop_path_rate=0.1)
    assert len(m.backbone.blocks) == 3 and m.num_classes == 7


def test_timm_create_model_finds_zoo_models():
    m = timm.create_model("zoo_vit_tiny_patch16_224", num_classes=3, img_size=32)
    assert isinstance(m, zoo.kinds.classifier.Classifier)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert "zoo_vit_micro_patch4_32" in timm.list_models("zoo_*")


def test_model_info_facts():
    info = zoo.model_info("vit_tiny_patch16_224")
    assert info["params"] == 5_717_416  # same as timm's vit_tiny_patch16_224
    assert 2.0 < info["gflops"] < 2.3
    tag = info["pretrained"]["vit_tiny_patch16_224.augreg_in21k_ft_in1k"]
    assert tag["source"].startswith("hf-hub:timm/") and tag["license"] == "apache-2.0"
