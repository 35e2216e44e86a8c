"""Pretrained loading without network: cache layout, checksums, offline errors, adaptation on load."""
import argparse

import pytest
import torch

import zoo
from zoo import hub
from zoo.errors import ChecksumError, PretrainedNotAvailableError, WeightLoadError
from zoo.registry import PretrainedTag, WeightSource, get_entry

ARCH = "vit_micro_patch4_32"
SOURCE = WeightSource(hf_repo="speedzoo-tests/vit-micro-cifar", hf_file="model.safetensors")


@pytest.fixture
def trained(zoo_cache, monkeypatch):
    """A 'trained' model saved as safetensors in the cache, registered as tag 'testtag'."""
    torch.manual_seed(0)
    model = zoo.create_model(ARCH, depth=2).eval()
    path = hub.cached_path(SOURCE)
    hub.save_state_dict(model.state_dict(), path)
    tag = PretrainedTag(tag="testtag", source=SOURCE, sha256=hub.sha256_of(path), num_classes=10,
                        arch_overrides={"depth": 2}, preprocess={"input_size": (3, 32, 32)})
    monkeypatch.setitem(get_entry(ARCH).tags, "testtag", tag)
    return model, path


def test_tag_in_cache_reproduces_logits(trained):
    model, _ = trained
    loaded = zoo.create_model(f"{ARCH}.testtag", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.pretrained_cfg["tag"] == "testtag"


def test_corrupted_file_raises_checksum_error(trained):
    _, path = trained
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="sha256"):
        zoo.create_model(f"{ARCH}.testtag", pretrained=True)


def test_missing_file_offline_names_the_path(trained):
    _, path = trained
    path.unlink()
    with pytest.raises(PretrainedNotAvailableError) as err:
        zoo.create_model(f"{ARCH}.testtag", pretrained=True)
    msg = str(err.value)
    assert str(path) in msg and "checkpoint_path" in msg and "speedzoo-tests/vit-micro-cifar" in msg


def test_official_hub_tag_offline_is_not_available(zoo_cache):
    with pytest.raises(PretrainedNotAvailableError, match="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"):
        zoo.create_model("vit_tiny_patch16_224", pretrained=True)


def test_new_num_classes_reinitialises_head(trained):
    model, _ = trained
    m = zoo.create_model(f"{ARCH}.testtag", pretrained=True, num_classes=3)
    assert m.num_classes == 3
    assert torch.equal(m.backbone.blocks[0].attn.qkv.weight, model.backbone.blocks[0].attn.qkv.weight)


def test_in_chans_1_folds_the_first_conv(trained):
    model, _ = trained
    m = zoo.create_model(f"{ARCH}.testtag", pretrained=True, in_chans=1).eval()
    w = model.backbone.patch_embed.proj.weight
    assert torch.allclose(m.backbone.patch_embed.proj.weight, w.sum(1, keepdim=True))
    gray = torch.randn(2, 1, 32, 32)
    with torch.no_grad():  # a gray image replicated to RGB must give the same logits
        assert torch.allclose(m(gray), model(gray.expand(-1, 3, -1, -1)), atol=1e-5)


def test_new_img_size_resamples_pos_embed(trained):
    model, _ = trained
    m = zoo.create_model(f"{ARCH}.testtag", pretrained=True, img_size=48)
    assert m.backbone.pos_embed.shape == (1, 1 + 12 * 12, 128)
    assert torch.equal(m.backbone.pos_embed[:, 0], model.backbone.pos_embed[:, 0])  # class slot kept
    assert m(torch.randn(1, 3, 48, 48)).shape == (1, 10)


def test_checkpoint_path_pth_with_namespace(tmp_path):
    torch.manual_seed(1)
    src = zoo.create_model(ARCH, depth=2).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": src.state_dict(), "args": argparse.Namespace(lr=1e-3)}, path)
    m = zoo.create_model(ARCH, depth=2, checkpoint_path=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))


def test_wrong_checkpoint_reports_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    hub.save_state_dict(zoo.create_model(ARCH, depth=3).state_dict(), path)
    with pytest.raises(WeightLoadError, match=r"unexpected \(\d+\): backbone.blocks.2"):
        zoo.create_model(ARCH, depth=2, checkpoint_path=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightLoadError, match="cannot read"):
        zoo.create_model(ARCH, checkpoint_path=garbage)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_save_state_dict_file_mode_follows_the_umask(tmp_path, umask):
    """Weights and exports are readable like any file the user writes, not safetensors' 0600."""
    import os
    import stat

    from zoo.recipes.export import write_safetensors

    old = os.umask(umask)
    try:
        path = hub.save_state_dict({"w": torch.ones(2)}, tmp_path / "w.safetensors", metadata={"a": "b"})
        export = write_safetensors({"w": torch.ones(2)}, tmp_path / "export.safetensors", {"a": "b"})
    finally:
        os.umask(old)
    for p in (path, export):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
        assert hub.read_state_dict(p)["w"].tolist() == [1.0, 1.0]
    assert not list(tmp_path.glob(".*.part"))  # the temp file went into place


def test_info_shows_the_hash_recorded_beside_the_cached_file(zoo_cache, monkeypatch, capsys):
    """A tag with no registered sha256 whose file the zoo downloaded shows the recorded hash and its origin."""
    from zoo.cli import main

    tag = PretrainedTag(tag="rectest", source=SOURCE, num_classes=10, arch_overrides={"depth": 2},
                        preprocess={"input_size": (3, 32, 32)})
    monkeypatch.setitem(get_entry(ARCH).tags, "rectest", tag)
    name = f"{ARCH}.rectest"
    assert zoo.model_info(name, flops=False)["pretrained"][name]["sha256"] is None
    path = hub.save_state_dict({"w": torch.zeros(3)}, hub.cached_path(SOURCE))
    digest = hub.sha256_of(path)
    hub.record_sha256(path, digest)
    facts = zoo.model_info(name, flops=False)["pretrained"][name]
    assert facts["sha256"] == digest and str(hub.record_path(path)) in facts["sha256_from"]
    assert main(["info", name, "--no-flops"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "source" in ln and "rectest" not in ln
                and SOURCE.hf_repo in ln)
    assert digest in line and "recorded at download" in line and "not recorded yet" not in line
