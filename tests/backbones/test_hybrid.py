"""Hybrids: layout patterns (parsing, per-block mixers, all-softmax = today's ViT), the intra-layer hybrid mixer
(shapes, gradients, both branches matter) and the text decoder's layouts."""
from __future__ import annotations

import pytest
import torch

import zoo
from backbones.layers.hybrid import HybridMixer, layout_mixer_cfgs, parse_layout
from backbones.layers.mixers import MIXERS
from backbones.text_decoder import TextDecoder
from backbones.vit import VIT_HYBRID_CONFIGS, VisionTransformer, ViTConfig
from zoo.errors import ConfigError
from zoo.registry import get_entry


def _vit(seed: int = 0, **kw) -> VisionTransformer:
    cfg = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2.0)
    cfg.update(kw)
    torch.manual_seed(seed)
    return VisionTransformer(ViTConfig(**cfg)).eval()


# -- patterns ---------------------------------------------------------------------------------------------------
def test_parse_layout_repeat_explicit_and_list():
    assert parse_layout("linear,linear,linear,softmax", 8, MIXERS) == (["linear"] * 3 + ["softmax"]) * 2
    assert parse_layout("gla*3,softmax", 12, MIXERS) == (["gla"] * 3 + ["softmax"]) * 3
    assert parse_layout("mamba*6,softmax*6", 12, MIXERS) == ["mamba"] * 6 + ["softmax"] * 6
    assert parse_layout(["hybrid", "window"], 4, MIXERS) == ["hybrid", "window"] * 2
    assert parse_layout(["gla*2", "softmax"], 3, MIXERS) == ["gla", "gla", "softmax"]
    assert parse_layout(" GLA * 2 , softmax ", 3, MIXERS) == ["gla", "gla", "softmax"]
    assert parse_layout("delta", 5, MIXERS) == ["delta"] * 5
    assert parse_layout("softmax,gla", 2, ("attn", "gla"), aliases={"softmax": "attn"}) == ["attn", "gla"]


@pytest.mark.parametrize("layout, match", [
    ("gla*3,softmax", "does not fill depth 6"),          # period 4 does not divide 6
    ("gla,performer", "unknown mixer 'performer'"),
    ("gla*", "is not 'name' or 'name\\*N'"),
    ("gla,,softmax", "is not 'name' or 'name\\*N'"),
    ("gla*0", "at least 1"),
    ([], "empty layout"),
    (3, "layout must be a string"),
])
def test_parse_layout_errors(layout, match):
    with pytest.raises(ValueError, match=match):
        parse_layout(layout, 6, MIXERS)


def test_unknown_mixer_error_names_the_valid_names():
    with pytest.raises(ValueError) as e:
        parse_layout("softmax,ssm", 2, MIXERS)
    for name in MIXERS:
        assert name in str(e.value)


def test_layout_mixer_cfgs_keyed_or_flat():
    blocks = ["window", "softmax", "window"]
    assert layout_mixer_cfgs(blocks, {"window": {"window_size": 1}}, MIXERS) == [{"window_size": 1}, {}, {"window_size": 1}]
    assert layout_mixer_cfgs(["window"] * 2, {"window_size": 1}, MIXERS) == [{"window_size": 1}] * 2
    with pytest.raises(ValueError, match="keyed by mixer name"):
        layout_mixer_cfgs(blocks, {"window_size": 1}, MIXERS)
    with pytest.raises(ValueError, match="mixes mixer names"):
        layout_mixer_cfgs(blocks, {"window": {"window_size": 1}, "block_size": 2}, MIXERS)
    with pytest.raises(ValueError, match="must be a dict"):
        layout_mixer_cfgs(blocks, {"window": 1}, MIXERS)


# -- the ViT with a layout ----------------------------------------------------------------------------------------
def test_vit_layout_builds_the_named_mixer_per_block():
    m = _vit(layout="gla*3,softmax", depth=8, mixer_cfg={"gla": {"gate_rank": 4}})
    kinds = [type(b.attn).__name__ for b in m.blocks]
    assert kinds == (["GLAMixer"] * 3 + ["Attention"]) * 2
    assert m.layout == (["gla"] * 3 + ["softmax"]) * 2
    assert m.blocks[0].attn.gk_proj[0].out_features == 4
    m = _vit(layout="mamba,window,hybrid,linear", mixer_cfg={"window": {"window_size": 1}, "hybrid": {"ssm": "gla"}})
    assert [type(b.attn).__name__ for b in m.blocks] == ["BiMambaMixer", "MaskedAttention", "HybridMixer",
                                                         "LinearAttentionMixer"]
    assert m.blocks[1].attn.window_size == 1 and m.blocks[2].attn.ssm_kind == "gla"
    x = torch.randn(2, 3, 16, 16)
    assert m.forward_features(x).shape == (2, 17, 32)


@pytest.mark.parametrize("layout", ["softmax", "softmax*4", "softmax,softmax", ["softmax"] * 4])
def test_all_softmax_layout_is_todays_vit(layout):
    ref, lay = _vit(seed=3), _vit(seed=3, layout=layout)
    sd_ref, sd_lay = ref.state_dict(), lay.state_dict()
    assert list(sd_ref) == list(sd_lay)
    assert all(torch.equal(sd_ref[k], sd_lay[k]) for k in sd_ref)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(ref(x), lay(x))


def test_uniform_layout_equals_the_mixer_argument():
    a, b = _vit(seed=1, mixer="gla"), _vit(seed=1, layout="gla")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_bad_layouts_through_create_model_are_config_errors():
    with pytest.raises(ConfigError, match="does not fill depth 12"):
        zoo.create_model("vit_micro_patch4_32", layout="gla*4,softmax")
    with pytest.raises(ConfigError, match="unknown mixer 'ssm'.*softmax.*hybrid"):
        zoo.create_model("vit_micro_patch4_32", depth=2, layout="ssm,softmax")


def test_registered_hybrid_models():
    names = set(zoo.list_models("vit_micro_*"))
    assert set(VIT_HYBRID_CONFIGS) | {"vit_micro_patch4_32"} <= names
    expect = {"vit_micro_mamba_patch4_32": ["mamba"] * 12, "vit_micro_gla_patch4_32": ["gla"] * 12,
              "vit_micro_gla3softmax1_patch4_32": (["gla"] * 3 + ["softmax"]) * 3,
              "vit_micro_mamba6softmax6_patch4_32": ["mamba"] * 6 + ["softmax"] * 6,
              "vit_micro_hybrid_patch4_32": ["hybrid"] * 12}
    base = VisionTransformer(ViTConfig(**{k: v for k, v in VIT_HYBRID_CONFIGS["vit_micro_gla_patch4_32"].items()
                                          if k != "mixer"}))
    for name, layout in expect.items():
        assert get_entry(name).family == "vit-hybrid"
        cfg = ViTConfig(**VIT_HYBRID_CONFIGS[name])
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.patch_size) == (128, 12, 4, 2.0, 4)
        assert VisionTransformer(cfg).layout == layout
        assert parse_layout(get_entry(name).default_cfg["layout"], 12, MIXERS) == layout  # pretrained_cfg names it
    assert base.layout == ["softmax"] * 12
    # an explicit uniform mixer replaces a registered pattern; depth overrides refill it
    m = zoo.create_model("vit_micro_gla3softmax1_patch4_32", depth=2, mixer="linear")
    assert m.backbone.layout == ["linear"] * 2
    m = zoo.create_model("vit_micro_gla3softmax1_patch4_32", depth=8)
    assert m.backbone.layout == (["gla"] * 3 + ["softmax"]) * 2 and m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# -- the intra-layer hybrid -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ssm, norm", [("mamba", "rms"), ("gla", "layer")])
def test_hybrid_mixer_shapes_and_gradients(ssm, norm):
    torch.manual_seed(0)
    mix = HybridMixer(32, 2, ssm=ssm, norm=norm)
    x = torch.randn(2, 9, 32, requires_grad=True)
    y = mix(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad.shape == x.shape
    for name, p in mix.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert mix.qkv.weight.grad.abs().sum() > 0 and mix.norm_attn.weight.grad.abs().sum() > 0
    assert any(p.grad.abs().sum() > 0 for n, p in mix.named_parameters() if n.startswith("ssm."))


@pytest.mark.parametrize("ssm", ["mamba", "gla"])
def test_each_hybrid_branch_contributes(ssm):
    """Zeroing a branch's scale (its norm weight) leaves exactly the other branch, halved, through proj; zeroing
    the SSM branch's last projection (Mamba's out_proj, GLA's output gate) changes the output too."""
    torch.manual_seed(0)
    mix = HybridMixer(32, 2, ssm=ssm).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full = mix(x)
        a, s = mix.branches(x)
        for branch, other, raw in ((mix.norm_attn, mix.norm_ssm, s), (mix.norm_ssm, mix.norm_attn, a)):
            saved = branch.weight.clone()
            branch.weight.zero_()
            out = mix(x)
            assert (out - full).abs().max() > 1e-3
            torch.testing.assert_close(out, mix.proj(0.5 * other(raw)))
            branch.weight.copy_(saved)
        last = mix.ssm.out_proj if ssm == "mamba" else mix.ssm.g_proj
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
        assert (mix(x) - full).abs().max() > 1e-3
        torch.testing.assert_close(mix(x), mix.proj(0.5 * mix.norm_attn(a)))


def test_hybrid_mixer_errors():
    with pytest.raises(ValueError, match="ssm must be one of"):
        HybridMixer(32, 2, ssm="rwkv")
    with pytest.raises(ValueError, match="norm must be one of"):
        HybridMixer(32, 2, norm="batch")
    with pytest.raises(ConfigError, match="ssm must be one of"):
        zoo.create_model("vit_micro_hybrid_patch4_32", depth=1, mixer_cfg={"ssm": "s4"})


# -- the text decoder -------------------------------------------------------------------------------------------
def _decoder(layout, seed=0, causal=False, depth=2, **kw):
    torch.manual_seed(seed)
    return TextDecoder(12, dim=32, depth=depth, num_heads=2, layout=layout, causal=causal, mlp_hidden=48, **kw).eval()


@pytest.mark.parametrize("mixer", ["attn", "gla", "mamba"])
def test_decoder_uniform_layout_spellings_equal_todays_decoder(mixer):
    ref = _decoder(mixer)
    x = torch.randint(0, 12, (2, 10))
    spellings = [f"{mixer}*2", f"{mixer},{mixer}", [mixer, mixer]] + (["softmax"] if mixer == "attn" else [])
    for layout in spellings:
        other = _decoder(layout)
        assert list(other.state_dict()) == list(ref.state_dict())
        with torch.no_grad():
            assert torch.equal(other(x), ref(x)), layout


@pytest.mark.parametrize("causal", [False, True])
def test_decoder_hybrid_layouts_run_and_cache(causal):
    net = _decoder("hybrid,gla,softmax", causal=causal, depth=3)
    assert net.layout == ["hybrid", "gla", "attn"]
    assert type(net.blocks[0].mixer).__name__ == "DecoderHybrid"
    x = torch.randint(0, 12, (2, 14))
    with torch.no_grad():
        full = net(x)
    assert full.shape == (2, 14, 32) and torch.isfinite(full).all()
    if causal:  # keys/values and the GLA state carried in one cache equal recomputation
        cache = net.new_cache()
        with torch.no_grad():
            parts = [net(x[:, :9], cache=cache, commit=9), net(x[:, 9:], cache=cache, commit=5)]
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)
    mamba = _decoder("hybrid", causal=causal, mixer_cfg={"hybrid": {"ssm": "mamba"}})
    assert not mamba.supports_cache and mamba(x).shape == (2, 14, 32)
    with pytest.raises(ValueError, match="unknown mixer 'window'.*attn.*hybrid"):
        _decoder("window,attn")


# -- on the GPU (the H200): the registered CIFAR models on the Triton paths -------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(VIT_HYBRID_CONFIGS))
def test_gpu_hybrid_models_match_cpu_and_train_in_bf16(name, monkeypatch):
    """fp32 logits on CUDA (fused Mamba / chunked GLA Triton kernels) against the CPU's PyTorch paths, then one
    bf16-autocast training step with finite gradients everywhere."""
    from kernels.common import rel_rms

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # true fp32 GEMMs for the comparison
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.cuda()
        out = model(x.cuda()).float().cpu()
    assert rel_rms(out, ref) < 2e-3
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x.cuda()).float(), torch.arange(16, device="cuda") % 10)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
