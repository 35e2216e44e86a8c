"""EfficientViT-B: parity with timm's efficientvit_mit (random weights through the converter), timm contract."""
import pytest
import torch
import timm
from safetensors.torch import save_file

import zoo
from zoo.errors import InputShapeError
from zoo.factory import load_weights
from zoo.families.efficientvit import convert_timm_efficientvit

SIZE = 96  # small and not the nominal 224: both implementations take any size


def _timm_model(name: str) -> torch.nn.Module:
    """timm's model with random weights and non-trivial BatchNorm statistics (defaults would hide BN bugs)."""
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1, generator=g)
                mod.running_var.uniform_(0.5, 1.5, generator=g)
                mod.weight.normal_(1, 0.1, generator=g)
                mod.bias.normal_(0, 0.1, generator=g)
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_(1, 0.1, generator=g)
                mod.bias.normal_(0, 0.1, generator=g)
    return m.eval()


@pytest.fixture(scope="module", params=["efficientvit_b0", "efficientvit_b1"])
def pair(request, tmp_path_factory):
    name = request.param
    ref = _timm_model(name)
    path = tmp_path_factory.mktemp(name) / "timm.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = zoo.create_model(name, img_size=SIZE, checkpoint_path=path).eval()
    return name, ref, ours


def test_logits_match_timm(pair):
    name, ref, ours = pair
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = ref(x), ours(x)
        fa, fb = ref.forward_features(x), ours.forward_features(x)
        pa, pb = ref.forward_head(fa, pre_logits=True), ours.forward_head(fb, pre_logits=True)
    assert b.shape == (2, 1000)
    assert (a - b).abs().max().item() < 1e-4, (name, (a - b).abs().max().item())
    assert torch.allclose(fa, fb, atol=1e-5)
    assert torch.allclose(pa, pb, atol=1e-4)


def test_load_weights_and_widths(pair):
    name, ref, ours = pair
    again = zoo.create_model(name, img_size=64).eval()
    load_weights(again, ref.state_dict(), convert_timm_efficientvit)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ref(x) - again(x)).abs().max().item() < 1e-4
    assert ours.num_features == ref.num_features and ours.head_hidden_size == ref.head_hidden_size
    assert ours.pretrained_cfg["input_size"] == (3, SIZE, SIZE)


def test_forward_intermediates_match_timm(pair):
    _, ref, ours = pair
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        final, feats = ours.forward_intermediates(x)
        rfinal, rfeats = ref.forward_intermediates(x)
        only = ours.forward_intermediates(x, indices=[0, -1], stop_early=True, intermediates_only=True)
    assert [f.shape for f in feats] == [f.shape for f in rfeats]
    assert [f.shape[-1] for f in feats] == [SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32]
    assert all(torch.allclose(f, r, atol=1e-5) for f, r in zip(feats, rfeats))
    assert torch.allclose(final, rfinal, atol=1e-5)
    assert len(only) == 2 and only[1].shape == feats[-1].shape


def test_reset_classifier_as_timm(pair):
    name, ref, _ = pair
    ours = zoo.create_model(name, img_size=SIZE).eval()
    load_weights(ours, ref.state_dict(), convert_timm_efficientvit)
    x = torch.randn(2, 3, SIZE, SIZE)
    ref0 = _timm_model(name)
    ref0.reset_classifier(0)
    ours.reset_classifier(0)
    with torch.no_grad():
        a, b = ref0(x), ours(x)
    assert b.shape == (2, ref0.head_hidden_size) and torch.allclose(a, b, atol=1e-4)
    ours.reset_classifier(10, reset_other=True)
    ref0.reset_classifier(10, reset_other=True)
    assert ours.head_hidden_size == ref0.head_hidden_size == ref0.num_features
    with torch.no_grad():
        assert ours(x).shape == ref0(x).shape == (2, 10)
    with pytest.raises(ValueError, match="pooling"):
        ours.reset_classifier(10, global_pool="")
    ours.reset_classifier(5, global_pool="max")
    assert ours.backbone.global_pool == "max" and ours(x).shape == (2, 5)


def test_input_checks_sizes_channels_and_bf16():
    m = zoo.create_model("efficientvit_b0", num_classes=3, in_chans=1, img_size=(40, 56)).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 40, 56)).shape == (2, 3)
        assert m(torch.randn(1, 1, 33, 47)).shape == (1, 3)  # any size runs (fully convolutional)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(torch.randn(1, 1, 32, 32))
    assert torch.isfinite(y).all()
    with pytest.raises(InputShapeError, match="in_chans=3"):
        m(torch.randn(1, 3, 40, 56))
    with pytest.raises(InputShapeError, match=r"rank 4 \[B, C, H, W\].*unsqueeze"):
        m(torch.randn(1, 40, 56))


def test_registry_entries_and_train_step():
    names = zoo.list_models("efficientvit_b*")
    assert names == ["efficientvit_b0", "efficientvit_b1", "efficientvit_b2", "efficientvit_b3"]
    assert "efficientvit_b1.r224_in1k" in zoo.list_models("efficientvit*", pretrained=True)
    m = zoo.create_model("efficientvit_b2.r224_in1k", num_classes=4, img_size=64)
    assert m.pretrained_cfg["crop_pct"] == 0.95 and m.pretrained_cfg["interpolation"] == "bicubic"
    m = zoo.create_model("efficientvit_b0", num_classes=4, img_size=64)
    m.set_grad_checkpointing(True)
    out = m(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    groups = m.group_matcher()
    assert groups["stem"].startswith("^backbone")


def test_pretrained_load_with_one_input_channel(tmp_path):
    """The stem conv (not a ViT patch embedding) is folded to one channel on load."""
    from zoo import hub

    src = zoo.create_model("efficientvit_b0", img_size=64).eval()
    path = tmp_path / "b0.safetensors"
    hub.save_state_dict(src.state_dict(), path)
    gray = zoo.create_model("efficientvit_b0", img_size=64, in_chans=1, checkpoint_path=path).eval()
    w = src.state_dict()["backbone.stem.in_conv.conv.weight"]
    assert torch.allclose(gray.state_dict()["backbone.stem.in_conv.conv.weight"], w.sum(1, keepdim=True))
    assert gray.pretrained_cfg["first_conv"] == "backbone.stem.in_conv.conv"
