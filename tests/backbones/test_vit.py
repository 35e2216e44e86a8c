"""ViT: parity with timm's VisionTransformer, the timm model contract, resizing and intermediates."""
import pytest
import timm
import torch

import zoo
from zoo.families.vit import convert_timm_vit


def test_timm_vit_tiny_converts_to_same_logits():
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    ours = zoo.create_model("vit_tiny_patch16_224").eval()
    zoo.load_weights(ours, ref.state_dict(), convert_timm_vit)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)
        assert torch.allclose(ours.forward_features(x), ref.forward_features(x), atol=1e-5, rtol=0)


def test_avg_pool_matches_timm():
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", global_pool="avg", img_size=64).eval()
    ours = zoo.create_model("vit_tiny_patch16_224", global_pool="avg", img_size=64).eval()
    zoo.load_weights(ours, ref.state_dict(), convert_timm_vit)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5, rtol=0)


def test_model_contract():
    m = zoo.create_model("vit_micro_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 65, m.num_features)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.head_hidden_size)
    assert m(x).shape == (2, 10)
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)
    m.reset_classifier(5)
    assert m.num_classes == 5 and m(x).shape == (2, 5)
    m.reset_classifier(0, "")
    assert m(x).shape == (2, 65, m.num_features)
    assert m.get_classifier() is m.head.fc
    assert "backbone.pos_embed" in m.no_weight_decay()
    loss = zoo.create_model("vit_micro_patch4_32", depth=2)(x).sum()
    loss.backward()


def test_forward_intermediates():
    m = zoo.create_model("vit_micro_patch4_32", depth=4).eval()
    x = torch.randn(1, 3, 32, 32)
    final, feats = m.forward_intermediates(x, indices=2)
    assert len(feats) == 2 and feats[0].shape == (1, 128, 8, 8)
    assert torch.allclose(final, m.forward_features(x), atol=1e-6)
    only = m.forward_intermediates(x, indices=[0], intermediates_only=True, stop_early=True, output_fmt="NLC")
    assert only[0].shape == (1, 64, 128)


def test_non_square_and_in_chans():
    m = zoo.create_model("vit_micro_patch4_32", in_chans=1, img_size=(16, 48))
    assert m(torch.randn(2, 1, 16, 48)).shape == (2, 10)
    assert m.pretrained_cfg["input_size"] == (1, 16, 48)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 1, 32, 32), (3, 32, 32)])
def test_bad_input_shape_is_a_clear_error(shape):
    m = zoo.create_model("vit_micro_patch4_32")
    with pytest.raises(zoo.errors.InputShapeError, match="expected"):
        m(torch.randn(*shape))
