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


# -- kinds: a tag carries its own kind and preprocessing (#15, #25) ------------------------------------------
def test_audio_tag_is_listed_as_audio(capsys):
    from zoo.cli import main

    assert zoo.list_models(kind="audio", pretrained=True) == ["vim_micro_patch4_32.fsdd"]
    assert zoo.list_models(kind="audio") == ["vim_micro_patch4_32"]  # the architecture serves it through a tag
    assert "vim_micro_patch4_32.fsdd" not in zoo.list_models(kind="image", pretrained=True)
    assert "vim_micro_patch4_32.cifar10" in zoo.list_models(kind="image", pretrained=True)
    assert main(["list", "--kind", "audio"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("vim_micro_patch4_32 ") and "image,audio" in out[0]
    assert main(["list", "--pretrained", "vim_micro*"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()}
    assert rows == {"vim_micro_patch4_32.cifar10": "image", "vim_micro_patch4_32.fsdd": "audio"}


def test_zoo_info_shows_the_audio_tag_with_its_input_and_statistics(capsys):
    from zoo.cli import main

    info = zoo.model_info("vim_micro_patch4_32.fsdd", flops=False)
    assert info["kind"] == "audio" and info["input_size"] == (1, 64, 96)
    assert info["input"]["mean"] == (-6.73,) and info["input"]["std"] == (3.86,)
    assert info["input"]["audio"]["type"] == "kaldi_fbank"
    assert main(["info", "vim_micro_patch4_32", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "pretrained vim_micro_patch4_32.fsdd  (audio, input (1, 64, 96), mean (-6.73,), std (3.86,))" in out
    assert "pretrained vim_micro_patch4_32.cifar10  (image, input (3, 32, 32)" in out
    assert main(["info", "vim_micro_patch4_32.fsdd", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "(audio, family vim)" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("input:"))
    assert "(1, 64, 96), mean (-6.73,), std (3.86,) (log-mel spectrogram)" in line  # not CIFAR's statistics


def test_audio_tag_pretrained_cfg_and_timm_data_config():
    from timm.data import resolve_data_config

    m = zoo.create_model("vim_micro_patch4_32.fsdd", pretrained=True).eval()
    cfg = m.pretrained_cfg
    assert cfg["kind"] == "audio" and cfg["audio"]["num_mel_bins"] == 64 and "label_names" in cfg
    assert cfg["label_names"][0] == "0"
    data = resolve_data_config(model=m)
    assert data["input_size"] == (1, 64, 96) and data["mean"] == (-6.73,) and data["std"] == (3.86,)
    assert m(torch.randn(2, 1, 64, 96)).shape == (2, 10)
    image = zoo.create_model("vim_micro_patch4_32.cifar10").pretrained_cfg
    assert image["kind"] == "image" and image["mean"] == (0.4914, 0.4822, 0.4465)


def test_kinds_are_checked_where_they_enter():
    from zoo.registry import ModelEntry, PretrainedTag, WeightSource, add_tag, get_entry, register

    with pytest.raises(ValueError, match="unknown kind 'video'.*zoo/kinds"):
        register(ModelEntry(name="x_video", kind="video", family="x", builder=lambda **k: None, default_cfg={}))
    tag = PretrainedTag(tag="v", source=WeightSource(url="https://example.org/v.safetensors"), kind="video")
    with pytest.raises(ValueError, match="unknown kind 'video'"):
        add_tag(get_entry("vit_micro_patch4_32"), tag)
    assert zoo.registry.kind_of("vim_micro_patch4_32.fsdd") == "audio"
    assert zoo.registry.kind_of("vim_micro_patch4_32") == "image"


def test_create_model_builds_every_classifier_kind():
    import zoo.weights.manifest
    from zoo.kinds import KIND_TABLE

    shipped = {f"{m}.{t}" for m, tags in zoo.weights.manifest.read_manifest().items() for t in tags}
    for kind in ("image", "audio"):
        name = next(n for n in zoo.list_models(kind=kind, pretrained=True) if n in shipped)
        m = zoo.create_model(name, pretrained=True).eval()
        assert KIND_TABLE[m.pretrained_cfg["kind"]].timm and m.pretrained_cfg["kind"] == kind
        c, h, w = m.pretrained_cfg["input_size"]
        assert m(torch.randn(1, c, h, w)).shape == (1, m.num_classes)
        assert m.forward_head(m.forward_features(torch.randn(1, c, h, w)), pre_logits=True).shape == (1, m.num_features)


def test_weight_adaptation_is_declared_by_the_family():
    import ast
    from pathlib import Path

    import zoo.factory

    tree = ast.parse(Path(zoo.factory.__file__).read_text())
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for name in ("head.", "backbone.", "pos_embed", "patch_embed", "stem"):
        assert not [s for s in strings if name in s], f"zoo/factory.py names {name}: the family's WeightAdapt should"
    vit = zoo.registry.get_entry("vit_micro_patch4_32").adapt
    assert vit.pos_embed == ("backbone.pos_embed",) and vit.head == "head"
    assert zoo.registry.get_entry("efficientvit_b0").adapt.first_conv == ("backbone.stem.in_conv.conv",)
