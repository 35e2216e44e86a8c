"""MoE ViT entries: the timm contract, upcycling from the shipped dense ViT (equal logits at init), expert choice
within each image through the whole model, aux losses and expert load, and clear errors for bad input."""
from __future__ import annotations

import pytest
import torch

from backbones.layers.aux_loss import collect_aux_losses, collect_aux_stats
from backbones.layers.moe import MoEMlp
from zoo import create_model
from zoo.errors import ConfigError, WeightLoadError
from zoo.families.moe_vit import VIT_MOE_CONFIGS
from zoo.registry import list_models

MICRO = [n for n in VIT_MOE_CONFIGS if n.startswith("vit_micro")]
SMALL = dict(depth=4)  # fast: 2 MoE blocks of 4


def test_registered_and_listed():
    names = set(list_models())
    assert set(VIT_MOE_CONFIGS) <= names
    assert {"vit_micro_moe_patch4_32", "vit_micro_moe_ec_patch4_32", "vit_micro_moe_soft_patch4_32",
            "vit_tiny_moe_patch16_224"} <= names


@pytest.mark.parametrize("name", MICRO)
def test_timm_contract(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL).eval()
    bb = model.backbone
    assert bb.moe_layers == (1, 3) and all(isinstance(bb.blocks[i].mlp, MoEMlp) for i in (1, 3))
    assert not isinstance(bb.blocks[0].mlp, MoEMlp)
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 65, 128)
    logits = model.forward_head(feats)
    assert logits.shape == (2, 10) and model.num_classes == 10
    torch.testing.assert_close(model(x), logits)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    final, inter = bb.forward_intermediates(x, indices=2)
    assert len(inter) == 2 and inter[0].shape == (2, 128, 8, 8)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5


def test_moe_options_merge_and_layers_are_configurable():
    model = create_model("vit_micro_moe_patch4_32", depth=6, moe=dict(num_experts=4), moe_layers=[0, -1])
    bb = model.backbone
    assert bb.moe_layers == (0, 5)
    mlp = bb.blocks[5].mlp
    assert mlp.num_experts == 4 and mlp.k == 2 and mlp.router_type == "topk"  # the rest stays registered
    assert create_model("vit_micro_moe_patch4_32", depth=6, moe_every=3).backbone.moe_layers == (2, 5)


def test_moe_option_on_a_mixer_vit():
    model = create_model("vit_tiny_linear_patch4_32", depth=2, moe=dict(num_experts=4, k=1))
    assert isinstance(model.backbone.blocks[1].mlp, MoEMlp)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_upcycled_model_equals_the_dense_one_at_init(zoo_cache):
    torch.manual_seed(0)
    dense = create_model("vit_micro_patch4_32.cifar10", pretrained=True).eval()
    moe = create_model("vit_micro_moe_patch4_32", upcycle_from="vit_micro_patch4_32.cifar10").eval()
    router = moe.backbone.blocks[1].mlp.router.weight
    assert router.std() > 0  # a fresh router, not zeros: the equality comes from the copies and renormalised gates
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = dense.forward_features(x)
        torch.testing.assert_close(moe(x), dense.forward_head(feats), rtol=0, atol=1e-5)
    w1 = moe.backbone.blocks[3].mlp.w1
    torch.testing.assert_close(w1[5], dense.backbone.blocks[3].mlp.fc1.weight.t())
    # a fine-tuning head of another size stays fresh; the backbone is still the dense one's
    moe100 = create_model("vit_micro_moe_patch4_32", num_classes=100, upcycle_from="vit_micro_patch4_32.cifar10")
    with torch.no_grad():
        torch.testing.assert_close(moe100.eval().forward_features(x), feats, rtol=0, atol=1e-5)


def test_upcycle_from_a_checkpoint_file_and_a_module(tmp_path, zoo_cache):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    dense = create_model("vit_micro_patch4_32", depth=4).eval()
    path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(path))
    x = torch.randn(2, 3, 32, 32)
    from_file = create_model("vit_micro_moe_patch4_32", depth=4, upcycle_from=str(path)).eval()
    torch.testing.assert_close(from_file(x), dense(x), rtol=0, atol=1e-5)
    from_module = create_model("vit_micro_moe_patch4_32", depth=4, upcycle_from=dense).eval()
    torch.testing.assert_close(from_module(x), dense(x), rtol=0, atol=1e-5)
    wrong = tmp_path / "deeper.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("vit_micro_patch4_32", depth=5).state_dict().items()},
              str(wrong))
    with pytest.raises(WeightLoadError, match="unexpected"):
        create_model("vit_micro_moe_patch4_32", depth=4, upcycle_from=str(wrong))


@pytest.mark.parametrize("source, match", [
    ("vim_micro_patch4_32.cifar10", "not a dense ViT"),
    ("vit_tiny_patch4_32", "no weights to upcycle"),
    ("runs/missing/export.safetensors", "no such file"),
])
def test_upcycle_from_the_wrong_model_is_a_config_error(source, match, zoo_cache):
    with pytest.raises(ConfigError, match=match):
        create_model("vit_micro_moe_patch4_32", upcycle_from=source)


def test_upcycle_needs_the_same_width_and_full_width_experts():
    wider = create_model("vit_tiny_patch4_32", depth=4)  # 192 wide
    with pytest.raises(ConfigError, match="192 wide"):
        create_model("vit_micro_moe_patch4_32", depth=4, upcycle_from=wider)
    dense = create_model("vit_micro_patch4_32", depth=4)
    with pytest.raises(ConfigError, match="shared experts|widths must match"):
        create_model("vit_micro_moe_ds_patch4_32", depth=4, upcycle_from=dense)
    moe = create_model("vit_micro_moe_patch4_32", depth=4)
    with pytest.raises(ConfigError, match="not a dense ViT"):
        create_model("vit_micro_moe_patch4_32", depth=4, upcycle_from=moe)


@pytest.mark.parametrize("moe, match", [
    (dict(router="hash"), "unknown MoE router"),
    (dict(k=9), "moe.k"),
    (dict(capacity_factor=0), "capacity_factor"),
])
def test_bad_moe_options_are_config_errors(moe, match):
    with pytest.raises(ConfigError, match=match):
        create_model("vit_micro_moe_patch4_32", depth=2, moe=moe)


def test_expert_choice_model_keeps_images_apart():
    torch.manual_seed(0)
    model = create_model("vit_micro_moe_ec_patch4_32", **SMALL).eval()
    x = torch.randn(3, 3, 32, 32)
    y = model(x)
    x2 = x.clone()
    x2[1] = torch.randn(3, 32, 32) * 5
    y2 = model(x2)
    torch.testing.assert_close(y2[[0, 2]], y[[0, 2]])
    assert not torch.allclose(y2[1], y[1])
    torch.testing.assert_close(model(x[:1]), y[:1], rtol=1e-5, atol=1e-5)  # batch of one: the same answer


def test_training_forward_records_losses_and_expert_load():
    torch.manual_seed(0)
    model = create_model("vit_micro_moe_patch4_32", **SMALL).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    losses = collect_aux_losses(model)
    assert set(losses) == {"moe_balance", "moe_z"} and all(v.requires_grad for v in losses.values())
    load = collect_aux_stats(model)["expert_load"]
    assert load.shape == (8,) and load.sum().item() == pytest.approx(1.0)
    assert collect_aux_losses(model) == {}  # collected once
    ds = create_model("vit_micro_moe_ds_patch4_32", **SMALL).train()
    before = ds.backbone.blocks[1].mlp.expert_bias.clone()
    ds(torch.randn(2, 3, 32, 32))
    assert not torch.equal(before, ds.backbone.blocks[1].mlp.expert_bias)
    assert "backbone.blocks.1.mlp.expert_bias" in ds.state_dict()


def test_bad_input_is_refused_by_the_image_kind():
    from zoo.errors import InputShapeError

    model = create_model("vit_micro_moe_patch4_32", depth=2).eval()
    with pytest.raises(InputShapeError):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(InputShapeError):
        model(torch.randn(3, 32, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", MICRO)
def test_gpu_bf16_training_step_and_fp32_agreement(name):
    """On CUDA: the features in fp32 with the experts' reference path vs the default path (fp32 and bf16 autocast;
    bf16 may flip a few top-k choices, hence 5e-2), then a bf16 training step with finite losses and gradients and an expert load over all experts."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = create_model(name).cuda().eval()
    x = torch.randn(64, 3, 32, 32, device="cuda")
    moes = [m for m in model.modules() if isinstance(m, MoEMlp)]

    def run(impl, amp):
        for m in moes:
            m.impl = impl
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return model.forward_features(x).float()  # features: fresh logits are ~0, their relative error noise

    ref = run("reference", False)
    fast = run("auto", False)
    assert (fast - ref).norm() / ref.norm() < 1e-4
    half = run("auto", True)
    assert torch.isfinite(half).all() and (half - ref).norm() / ref.norm() < 5e-2
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), torch.randint(0, 10, (64,), device="cuda"))
    aux = collect_aux_losses(model)
    loss = loss + sum(aux.values())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    load = collect_aux_stats(model)["expert_load"]
    assert load.shape == (moes[0].num_experts,) and load.sum().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_upcycled_equals_dense(zoo_cache):
    torch.backends.cuda.matmul.allow_tf32 = False
    dense = create_model("vit_micro_patch4_32.cifar10", pretrained=True).cuda().eval()
    moe = create_model("vit_micro_moe_patch4_32", upcycle_from="vit_micro_patch4_32.cifar10").cuda().eval()
    x = torch.randn(32, 3, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(moe(x), dense(x), rtol=0, atol=1e-4)
