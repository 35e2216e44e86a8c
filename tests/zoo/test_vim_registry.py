"""Vim in the registry: names, tags, offline errors, info/list, timm interop, converter edge cases."""
import pytest
import timm
import torch

import zoo
from zoo.cli import main
from zoo.errors import PretrainedNotAvailableError, WeightLoadError
from zoo.families.vim import convert_official_vim

NAMES = ["vim_base_patch16_224", "vim_micro_patch4_32", "vim_small_patch16_224", "vim_small_patch16_stride8_224",
         "vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224", "vim_tiny_patch4_32"]


def test_family_is_registered_with_tags():
    assert zoo.list_models("vim_*") == NAMES
    assert zoo.list_models("vim_*", kind="image") == NAMES
    tagged = zoo.list_pretrained("vim_*")
    assert [t for t in tagged if t.endswith(".in1k")] == [
        "vim_small_patch16_224.in1k", "vim_small_patch16_stride8_224.in1k",
        "vim_tiny_patch16_224.in1k", "vim_tiny_patch16_stride8_224.in1k"]
    # the rest are our own weights, shipped with the package (zoo publish)
    from zoo.weights.manifest import read_manifest
    shipped = sorted(f"{m}.{t}" for m, tags in read_manifest().items() for t in tags if m.startswith("vim_"))
    assert [t for t in tagged if not t.endswith(".in1k")] == shipped


def test_pretrained_offline_without_cache_names_the_hub_file(zoo_cache):
    with pytest.raises(PretrainedNotAvailableError) as e:
        zoo.create_model("vim_tiny_patch16_224", pretrained=True)
    msg = str(e.value)
    assert "hustvl/Vim-tiny-midclstok" in msg and "vim_t_midclstok_76p1acc.pth" in msg
    assert str(zoo_cache) in msg and "checkpoint_path" in msg
    with pytest.raises(PretrainedNotAvailableError, match="vim_t_midclstok_ft_78p3acc.pth"):
        zoo.create_model("vim_tiny_patch16_stride8_224.in1k", pretrained=True)


def test_base_has_no_tag():
    with pytest.raises(PretrainedNotAvailableError, match="no pretrained weights"):
        zoo.create_model("vim_base_patch16_224", pretrained=True)
    assert "unverified" in zoo.registry.get_entry("vim_base_patch16_224").description


def test_model_info_tiny():
    info = zoo.model_info("vim_tiny_patch16_224", flops=False)
    assert info["family"] == "vim" and info["kind"] == "image"
    assert info["params"] == 7_148_008
    assert info["paper"] == "arXiv:2401.09417"
    tag = info["pretrained"]["vim_tiny_patch16_224.in1k"]
    assert tag["source"] == "hf-hub:hustvl/Vim-tiny-midclstok/vim_t_midclstok_76p1acc.pth"
    assert tag["license"] == "apache-2.0" and tag["sha256"] is None
    assert tag["metrics"] == {"imagenet-1k (published)": {"top1": 76.1, "top5": 93.0}}
    pre = tag["preprocess"]
    assert pre["input_size"] == (3, 224, 224) and pre["crop_pct"] == 0.875 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == (0.485, 0.456, 0.406) and pre["std"] == (0.229, 0.224, 0.225)
    assert "recorded once" in tag["notes"]


def test_model_info_micro_counts_flops():
    info = zoo.model_info("vim_micro_patch4_32")
    assert info["input_size"] == (3, 32, 32) and info["num_classes"] == 10
    assert 1.5e6 < info["params"] < 1.7e6
    assert info["gflops"] > 0


def test_cli_list_and_info(capsys):
    assert main(["list", "vim_*"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in NAMES)
    assert main(["info", "vim_tiny_patch16_224", "--no-flops"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 7,148,008" in out and "hustvl/Vim-tiny-midclstok" in out


def test_pretrained_cfg_of_tagged_model():
    m = zoo.create_model("vim_tiny_patch16_224.in1k", depth=1)
    cfg = m.pretrained_cfg
    assert cfg["tag"] == "in1k" and cfg["crop_pct"] == 0.875 and cfg["num_classes"] == 1000
    assert cfg["first_conv"] == "backbone.patch_embed.proj" and cfg["classifier"] == "head.fc"


def test_timm_finds_vim():
    m = timm.create_model("zoo_vim_micro_patch4_32", num_classes=3, depth=1)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_converter_strips_ddp_prefix_and_maps_head():
    sd = {"module.cls_token": torch.zeros(1), "module.head.weight": torch.zeros(1), "head.bias": torch.zeros(1)}
    assert set(convert_official_vim(sd)) == {"backbone.cls_token", "head.fc.weight", "head.fc.bias"}


def test_wrong_file_is_reported_key_by_key(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(zoo.create_model("vit_micro_patch4_32").state_dict(), path)
    with pytest.raises(WeightLoadError, match="missing"):
        zoo.create_model("vim_micro_patch4_32", checkpoint_path=path)


def test_new_num_classes_reinitialises_head(tmp_path):
    src = zoo.create_model("vim_micro_patch4_32", depth=1)
    path = tmp_path / "m.pth"
    torch.save({"model": {k.replace("head.fc.", "head.").replace("backbone.", ""): v
                          for k, v in src.state_dict().items()}}, path)  # official-style keys
    m = zoo.create_model("vim_micro_patch4_32", depth=1, num_classes=4, checkpoint_path=path)
    assert m.num_classes == 4
    assert torch.equal(m.backbone.layers[0].mixer.A_b_log, src.backbone.layers[0].mixer.A_b_log)
