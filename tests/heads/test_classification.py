"""Classification heads: shapes, pre_logits, reset, and the classifier kind built with each head."""
import pytest
import torch
import torch.nn as nn

from heads.classification import HEADS, AttentionPoolHead, LinearHead, MlpHead, build_head


@pytest.mark.parametrize("name", list(HEADS))
def test_head_contract(name):
    head = build_head(name, 16, 5, drop_rate=0.1).eval()
    x = torch.randn(2, 7, 16) if head.pools_tokens else torch.randn(2, 16)
    assert head(x).shape == (2, 5)
    pre = head(x, pre_logits=True)
    assert pre.shape == (2, head.fc.in_features)
    assert torch.allclose(head.fc(pre), head(x))
    head.reset(3)
    assert head.num_classes == 3 and head(x).shape == (2, 3)
    head.reset(0)
    assert isinstance(head.fc, nn.Identity) and torch.equal(head(x), pre)


def test_reset_keeps_dtype_and_refuses_negative():
    head = MlpHead(8, 2, hidden_features=12).to(torch.float64)
    head.reset(4)
    assert head.fc.weight.dtype == torch.float64 and head.fc.in_features == 12
    with pytest.raises(ValueError, match=">= 0"):
        LinearHead(8, 2).reset(-1)
    with pytest.raises(ValueError, match="unknown head 'conv'"):
        build_head("conv", 8, 2)


def test_attention_pool_is_a_learned_query_over_tokens():
    head = AttentionPoolHead(16, 4, num_heads=4).eval()
    x = torch.randn(3, 9, 16)
    perm = torch.randperm(9)
    assert torch.allclose(head(x), head(x[:, perm]), atol=1e-5)  # pooling ignores token order
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert not torch.allclose(head(x), head(x2))  # and every token counts
    assert head.latent.shape == (1, 1, 16)
    with pytest.raises(ValueError, match="tokens"):
        head(torch.randn(3, 16))
    with pytest.raises(ValueError, match="divisible"):
        AttentionPoolHead(10, 2, num_heads=4)


def test_heads_import_nothing_above_their_floor():
    import ast
    from pathlib import Path

    import heads.classification as hc

    tree = ast.parse(Path(hc.__file__).read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not roots & {"zoo", "lightning", "pytorch_lightning"}


@pytest.mark.parametrize("head", ["linear", "mlp", "attn"])
@pytest.mark.parametrize("arch", ["vit_micro_patch4_32", "vim_micro_patch4_32", "efficientvit_b0"])
def test_classifier_kind_with_each_head(arch, head):
    import zoo

    kw = dict(img_size=32) if arch.startswith("efficientvit") else dict(depth=1)
    m = zoo.create_model(arch, num_classes=4, head=head, head_cfg={"hidden_features": 32} if head == "mlp" else None,
                         **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 4)
    assert m.get_classifier() is m.head.fc and m.pretrained_cfg["classifier"] == "head.fc"
    assert m.global_pool == ("attn" if head == "attn" else m.backbone.global_pool)
    m.reset_classifier(0)
    assert m(x).shape[-1] == m.head.fc_in


def test_attention_head_drops_for_a_pool_as_timm():
    import zoo

    m = zoo.create_model("vit_micro_patch4_32", depth=1, num_classes=3, head="attn").eval()
    m.reset_classifier(0, global_pool="avg")
    assert m.head_name == "linear" and m.global_pool == "avg"
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, m.num_features)


def test_checkpoint_of_another_head_reinitialises_the_head(tmp_path):
    import zoo

    src = zoo.create_model("vit_micro_patch4_32", depth=1, num_classes=10)
    path = tmp_path / "linear.pth"
    torch.save(src.state_dict(), path)
    m = zoo.create_model("vit_micro_patch4_32", depth=1, num_classes=10, head="mlp", checkpoint_path=path)
    assert torch.equal(m.backbone.blocks[0].attn.qkv.weight, src.backbone.blocks[0].attn.qkv.weight)
    assert not torch.equal(m.head.fc.weight, src.head.fc.weight)  # fresh, not the linear head's
    with pytest.raises(Exception, match="unknown head"):
        zoo.create_model("vit_micro_patch4_32", head="conv")
