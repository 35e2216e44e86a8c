"""The pluggable-mixer ViT: every mixer trains at 32 px; masks and linear forms against explicit dense truth."""
import pytest
import torch
import torch.nn.functional as F

import zoo
from backbones.layers.mixers import MIXERS, GLAMixer, LinearAttentionMixer, MaskedAttention
from backbones.vit import MIXER_NAMES, VisionTransformer, ViTConfig
from kernels.common import rel_rms


def _tiny(mixer: str, **kw) -> VisionTransformer:
    cfg = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, mixer=mixer)
    cfg.update(kw)
    return VisionTransformer(ViTConfig(**cfg))


@pytest.mark.parametrize("mixer", MIXERS)
def test_each_mixer_trains_at_32px(mixer):
    torch.manual_seed(0)
    m = _tiny(mixer)
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 65, 48)
    pooled = m.forward_pool(feats)
    assert pooled.shape == (2, 48) and torch.isfinite(pooled).all()
    pooled.square().mean().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(type(b.attn).__name__ for b in m.blocks)
    _, inter = m.forward_intermediates(x, indices=1)
    assert inter[0].shape == (2, 48, 8, 8)


def _dense_mask(grid, prefix, linked):
    """Literal [T, T] mask: prefix tokens see and are seen by all; patches a, b (row-major) where linked(ra, ca, rb, cb)."""
    gh, gw = grid
    T = prefix + gh * gw
    m = torch.zeros(T, T, dtype=torch.bool)
    m[:prefix, :] = True
    m[:, :prefix] = True
    for a in range(gh * gw):
        for b in range(gh * gw):
            if linked(a // gw, a % gw, b // gw, b % gw):
                m[prefix + a, prefix + b] = True
    return m


def _dense_window(grid, radius, prefix):
    return _dense_mask(grid, prefix, lambda ra, ca, rb, cb: abs(ra - rb) <= radius and abs(ca - cb) <= radius)


def _dense_blocks(grid, block, prefix):
    return _dense_mask(grid, prefix, lambda ra, ca, rb, cb: ra // block == rb // block and ca // block == cb // block)


def _explicit_attention(mod, x, mask):
    """softmax(q kᵀ / sqrt(d), masked) v with the module's own weights, written out."""
    B, T, C = x.shape
    H, D = mod.num_heads, mod.head_dim
    q, k, v = (mod.qkv(x).reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4))
    s = (q @ k.transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(~mask, float("-inf"))
    o = s.softmax(-1) @ v
    return mod.proj(o.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("kind,grid,size,prefix", [("window", (5, 7), 1, 1), ("window", (6, 6), 2, 0),
                                                    ("block_sparse", (7, 5), 2, 1), ("block_sparse", (8, 8), 4, 1)])
def test_masks_and_masked_attention_vs_dense(kind, grid, size, prefix):
    torch.manual_seed(0)
    opt = dict(window_size=size) if kind == "window" else dict(block_size=size)
    mod = MaskedAttention(24, 2, kind=kind, grid_size=grid, num_prefix_tokens=prefix, **opt).eval()
    T = prefix + grid[0] * grid[1]
    truth = _dense_window(grid, size, prefix) if kind == "window" else _dense_blocks(grid, size, prefix)
    assert torch.equal(mod.dense_mask(T), truth)
    assert not truth.all()  # the mask really masks something
    x = torch.randn(2, T, 24)
    with torch.no_grad():
        assert rel_rms(mod(x), _explicit_attention(mod, x, truth)) < 1e-5


def test_window_1d_band():
    mod = MaskedAttention(16, 2, kind="window", grid_size=None, num_prefix_tokens=0, window_size=2)
    m = mod.dense_mask(9)
    i = torch.arange(9)
    assert torch.equal(m, (i[:, None] - i[None, :]).abs() <= 2)


@pytest.mark.parametrize("feature", ["elu1", "relu"])
def test_linear_mixer_matches_naive_quadratic(feature):
    torch.manual_seed(0)
    mod = LinearAttentionMixer(24, 3, feature_map=feature).eval()
    x = torch.randn(2, 17, 24)
    B, T, C = x.shape
    q, k, v = mod.qkv(x).reshape(B, T, 3, 3, 8).permute(2, 0, 3, 1, 4)  # [B, H, T, D]
    phi = (lambda t: F.elu(t) + 1) if feature == "elu1" else F.relu
    a = phi(q) @ phi(k).transpose(-1, -2)                                # [B, H, T, T], no softmax
    o = (a @ v) / (a.sum(-1, keepdim=True) + mod.eps)
    ref = mod.proj(o.transpose(1, 2).reshape(B, T, C))
    with torch.no_grad():
        assert rel_rms(mod(x), ref) < 1e-5


def test_gla_mixer_matches_naive_decay_matrix():
    """Bidirectional GLA: A_ts = Σ_d q_td k_sd exp(-|c_td - c_sd|), c = cumsum of the log gates."""
    torch.manual_seed(0)
    mod = GLAMixer(24, 3).eval()
    x = torch.randn(2, 19, 24)
    B, T, C = x.shape
    H, D = 3, 8
    q, k, v = mod.qkv(x).reshape(B, T, 3, H, D).unbind(2)
    g = F.logsigmoid(mod.gk_proj(x)).reshape(B, T, H, D) / mod.gate_norm
    c = g.cumsum(1)
    decay = torch.exp(-(c[:, :, None] - c[:, None, :]).abs())                # [B, T, S, H, D]
    a = torch.einsum("bthd,bshd,btshd->bhts", q, k, decay) * D ** -0.5
    o = torch.einsum("bhts,bshd->bthd", a, v)
    with torch.no_grad():
        assert rel_rms(mod(x), mod.finish(o, x)) < 1e-4


def test_softmax_default_keeps_timm_layout_and_mixer_errors():
    m = _tiny("softmax")
    assert type(m.blocks[0].attn).__name__ == "Attention"
    assert {k for k in m.state_dict() if k.startswith("blocks.0.attn.")} == {
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias"}
    with pytest.raises(ValueError, match="mixer must be one of"):
        _tiny("performer")
    assert any("A_log" in n for n in _tiny("mamba").no_weight_decay())


def test_registry_names_and_overrides():
    names = zoo.list_models("vit_tiny_*")
    for infix in MIXER_NAMES.values():
        assert f"vit_tiny_{infix}_patch16_224" in names and f"vit_tiny_{infix}_patch4_32" in names
    m = zoo.create_model("vit_tiny_window_patch4_32", depth=1, mixer_cfg={"window_size": 1})
    assert m.backbone.blocks[0].attn.window_size == 1 and m.num_classes == 10
    m = zoo.create_model("vit_tiny_patch4_32", depth=1, mixer="linear")
    assert type(m.backbone.blocks[0].attn).__name__ == "LinearAttentionMixer"
    from zoo.registry import get_entry

    assert get_entry("vit_tiny_gla_patch16_224").family == "vit-mixer"
