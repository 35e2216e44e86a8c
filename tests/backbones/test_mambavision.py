"""MambaVision: parity with a literal re-statement of the official forward (224 and padded windows), the
official key layout and its strict converter, the offline error, the mixer rule and quirks, the timm contract,
and (on a GPU) the Triton kernels against the reference path."""
import argparse
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import zoo
from backbones.mambavision import (MambaVision, MambaVisionMixer, attention_blocks, build_mambavision)
from zoo.errors import InputShapeError, PretrainedNotAvailableError, WeightLoadError
from zoo.families.mambavision import convert_official_mambavision

T = "mambavision_t_224"

# ---------------------------------------------------------------------------------------------------------
# The official layout of mamba_vision_T, written out from reference/mambavision.md §1-3 (not from our module).


def official_spec(dim=80, in_dim=32, depths=(1, 3, 8, 4), in_chans=3, num_classes=1000, layer_scale=False):
    """Ordered {key: shape} of NVlabs' ``MambaVision`` state dict (BN buffers included)."""
    spec = {}

    def bn(prefix, c):
        spec.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    spec["patch_embed.conv_down.0.weight"] = (in_dim, in_chans, 3, 3)
    bn("patch_embed.conv_down.1", in_dim)
    spec["patch_embed.conv_down.3.weight"] = (dim, in_dim, 3, 3)
    bn("patch_embed.conv_down.4", dim)
    for i, d in enumerate(depths):
        c = dim * 2 ** i
        for j in range(d):
            p = f"levels.{i}.blocks.{j}."
            if i < 2:
                spec.update({p + "conv1.weight": (c, c, 3, 3), p + "conv1.bias": (c,)})
                bn(p + "norm1", c)
                spec.update({p + "conv2.weight": (c, c, 3, 3), p + "conv2.bias": (c,)})
                bn(p + "norm2", c)
                continue
            spec.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,)})
            attn = j >= (d // 2 + 1 if d % 2 else d // 2)
            if attn:
                spec.update({p + "mixer.qkv.weight": (3 * c, c), p + "mixer.qkv.bias": (3 * c,),
                             p + "mixer.proj.weight": (c, c), p + "mixer.proj.bias": (c,)})
            else:
                h, r = c // 2, math.ceil(c / 16)
                spec.update({p + "mixer.A_log": (h, 8), p + "mixer.D": (h,), p + "mixer.in_proj.weight": (c, c),
                             p + "mixer.x_proj.weight": (r + 16, h), p + "mixer.dt_proj.weight": (h, r),
                             p + "mixer.dt_proj.bias": (h,), p + "mixer.out_proj.weight": (c, c),
                             p + "mixer.conv1d_x.weight": (h, 1, 3), p + "mixer.conv1d_z.weight": (h, 1, 3)})
            spec.update({p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                         p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                         p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
            if layer_scale:
                spec.update({p + "gamma_1": (c,), p + "gamma_2": (c,)})
        if i < 3:
            spec[f"levels.{i}.downsample.reduction.0.weight"] = (2 * c, c, 3, 3)
    bn("norm", dim * 8)
    spec.update({"head.weight": (num_classes, dim * 8), "head.bias": (num_classes,)})
    return spec


def random_official_state(spec, seed=0):
    """Random weights of trained-like scale: A_log near S4D-real, dt bias as Mamba inits it, BN statistics
    away from 0/1, layer scale away from 1 so a missing gamma would show."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in spec.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000, dtype=torch.long)
            continue
        if k.endswith("A_log"):
            v = torch.log(torch.arange(1, shape[1] + 1.0)).repeat(shape[0], 1) + 0.3 * torch.randn(shape, generator=g)
        elif k.endswith("dt_proj.bias"):
            dt = torch.exp(torch.rand(shape, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            v = dt + torch.log(-torch.expm1(-dt))
        elif k.endswith("mixer.D"):
            v = 1.0 + 0.5 * torch.randn(shape, generator=g)
        elif k.endswith("running_var"):
            v = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("running_mean"):
            v = 0.1 * torch.randn(shape, generator=g)
        elif "gamma" in k:
            v = 0.5 + 0.5 * torch.rand(shape, generator=g)
        elif k.endswith("weight") and len(shape) == 1:
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("bias"):
            v = 0.05 * torch.randn(shape, generator=g)
        else:
            v = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        sd[k] = v.float()
    return sd


# ---------------------------------------------------------------------------------------------------------
# A literal re-statement of the official forward (mamba_vision.py, read through the reference note): plain
# loops for the windows, mamba_ssm's token-loop scan, explicit softmax attention; no code shared with ours.


def ref_scan(u, delta, A, B, C, D, delta_bias):
    """selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias, delta_softplus=True), one token at a time."""
    delta = F.softplus(delta + delta_bias[:, None])
    batch, d, L = u.shape
    h = u.new_zeros(batch, d, A.shape[1])
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)                        # [b, d, n]
        dBu = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        h = dA * h + dBu
        ys.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=2) + u * D[:, None]


def ref_mixer(x, p):
    c = x.shape[-1]
    half, R = c // 2, p["dt_proj.weight"].shape[1]
    xz = F.linear(x, p["in_proj.weight"]).transpose(1, 2)               # b d l
    xs, z = xz.chunk(2, dim=1)
    xs = F.silu(F.conv1d(xs, p["conv1d_x.weight"], None, padding="same", groups=half))
    z = F.silu(F.conv1d(z, p["conv1d_z.weight"], None, padding="same", groups=half))
    x_dbl = F.linear(xs.transpose(1, 2), p["x_proj.weight"])           # (b l) d
    dt, Bm, Cm = torch.split(x_dbl, [R, 8, 8], dim=-1)
    dt = F.linear(dt, p["dt_proj.weight"], p["dt_proj.bias"]).transpose(1, 2)   # bias once here ...
    y = ref_scan(xs, dt, -torch.exp(p["A_log"]), Bm.transpose(1, 2), Cm.transpose(1, 2), p["D"],
                 p["dt_proj.bias"])                                     # ... and once more in the scan
    return F.linear(torch.cat([y, z], dim=1).transpose(1, 2), p["out_proj.weight"])


def ref_attention(x, p, heads):
    b, n, c = x.shape
    qkv = F.linear(x, p["qkv.weight"], p["qkv.bias"]).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
    return F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), p["proj.weight"], p["proj.bias"])


def ref_bn(x, sd, prefix, eps):
    return F.batch_norm(x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"],
                        sd[prefix + ".bias"], False, 0.0, eps)


def ref_logits(img, sd, depths=(1, 3, 8, 4), heads=(2, 4, 8, 16), windows=(8, 8, 14, 7)):
    x = F.relu(ref_bn(F.conv2d(img, sd["patch_embed.conv_down.0.weight"], stride=2, padding=1), sd,
                      "patch_embed.conv_down.1", 1e-4))
    x = F.relu(ref_bn(F.conv2d(x, sd["patch_embed.conv_down.3.weight"], stride=2, padding=1), sd,
                      "patch_embed.conv_down.4", 1e-4))
    for i, d in enumerate(depths):
        if i < 2:
            for j in range(d):
                p = f"levels.{i}.blocks.{j}."
                y = F.conv2d(x, sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
                y = F.gelu(ref_bn(y, sd, p + "norm1", 1e-5), approximate="tanh")
                y = ref_bn(F.conv2d(y, sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1), sd, p + "norm2", 1e-5)
                x = x + (y * sd[p + "gamma"].view(1, -1, 1, 1) if p + "gamma" in sd else y)
        else:
            b, c, H, W = x.shape
            ws = windows[i]
            pad_r, pad_b = (ws - W % ws) % ws, (ws - H % ws) % ws
            xp = F.pad(x, (0, pad_r, 0, pad_b))
            Hp, Wp = H + pad_b, W + pad_r
            wins = []                                                    # batch-major, then window rows, cols
            for bi in range(b):
                for r in range(Hp // ws):
                    for q in range(Wp // ws):
                        wins.append(xp[bi, :, r * ws:(r + 1) * ws, q * ws:(q + 1) * ws].reshape(c, ws * ws).T)
            t = torch.stack(wins)
            for j in range(d):
                p = f"levels.{i}.blocks.{j}."
                mp = {k[len(p + "mixer."):]: v for k, v in sd.items() if k.startswith(p + "mixer.")}
                h = F.layer_norm(t, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
                y = ref_attention(h, mp, heads[i]) if "qkv.weight" in mp else ref_mixer(h, mp)
                t = t + (sd[p + "gamma_1"] * y if p + "gamma_1" in sd else y)
                h = F.layer_norm(t, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
                y = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                             sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
                t = t + (sd[p + "gamma_2"] * y if p + "gamma_2" in sd else y)
            out = torch.zeros(b, c, Hp, Wp)
            n = 0
            for bi in range(b):
                for r in range(Hp // ws):
                    for q in range(Wp // ws):
                        out[bi, :, r * ws:(r + 1) * ws, q * ws:(q + 1) * ws] = t[n].T.reshape(c, ws, ws)
                        n += 1
            x = out[:, :, :H, :W]
        if i < 3:
            x = F.conv2d(x, sd[f"levels.{i}.downsample.reduction.0.weight"], stride=2, padding=1)
    x = ref_bn(x, sd, "norm", 1e-5).mean(dim=(2, 3))
    return F.linear(x, sd["head.weight"], sd["head.bias"])


# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_t():
    return random_official_state(official_spec())


def test_official_t_layout_converts_exactly(official_t):
    spec = official_spec()
    assert len(spec) == 252
    model = zoo.create_model(T)
    assert sum(p.numel() for p in model.parameters()) == 31_794_248
    assert sum(math.prod(s) for k, s in spec.items() if "running" not in k and "num_batches" not in k) == 31_794_248
    converted = convert_official_mambavision(official_t)
    assert len(converted) == len(spec)                                          # every official key is used
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == own             # and none of ours is missing
    assert convert_official_mambavision(model.state_dict()).keys() == model.state_dict().keys()


@pytest.mark.parametrize("size,batch", [((224, 224), 1), ((256, 320), 1), ((64, 48), 2)])
def test_parity_with_official_forward(tmp_path, official_t, size, batch):
    """Acceptance: random official-layout weights saved as the official .pth.tar (timm checkpoint, weights
    under 'state_dict' with DDP 'module.' prefixes) load through create_model and give the official logits.
    256x320: stage maps 16x20 / 8x10 padded to 28x28 (4 windows of 14) / 14x14 (4 of 7); 64x48: maps smaller
    than one window, padded up to it."""
    path = tmp_path / "mambavision_tiny_1k.pth.tar"
    torch.save({"epoch": 309, "arch": "mamba_vision_T", "state_dict": {f"module.{k}": v for k, v in official_t.items()},
                "args": argparse.Namespace(model="mamba_vision_T")}, path)
    model = zoo.create_model(T, img_size=size, checkpoint_path=path).eval()
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        ref = ref_logits(x, official_t)
    assert ref.abs().max() > 0.1
    err = (ours - ref).abs().max().item()
    assert err < 1e-4, f"max |ours - official| = {err:.3g}"


def test_converter_takes_model_key_and_hf_prefix(tmp_path, official_t):
    """Weights under 'model' (the official loader's second choice) and the HF wrapper's 'model.' prefix."""
    path = tmp_path / "t.pth.tar"
    torch.save({"model": official_t}, path)
    a = zoo.create_model(T, checkpoint_path=path).state_dict()
    b = convert_official_mambavision({f"model.{k}": v for k, v in official_t.items()})
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_converter_rejects_unknown_and_missing_keys(tmp_path, official_t):
    bad = dict(official_t, **{"levels.2.blocks.0.mixer.conv1d_x.bias": torch.zeros(160), "rpb": torch.zeros(1)})
    with pytest.raises(WeightLoadError) as err:
        convert_official_mambavision(bad)
    assert "conv1d_x.bias" in str(err.value) and "rpb" in str(err.value) and "official" in str(err.value)
    path = tmp_path / "missing.pth.tar"
    torch.save({"state_dict": {k: v for k, v in official_t.items() if "levels.3.blocks.0.mixer.D" != k}}, path)
    with pytest.raises(WeightLoadError) as err:
        zoo.create_model(T, checkpoint_path=path)
    assert "missing (1): backbone.levels.3.blocks.0.mixer.D" in str(err.value)
    no_counters = {k: v for k, v in official_t.items() if "num_batches_tracked" not in k}
    assert len(convert_official_mambavision(no_counters)) == 252                 # bookkeeping filled, loads


def test_layer_scale_layout_for_base():
    """B/L/L2 carry gamma_1/gamma_2 in the token blocks and no conv gamma; T has none."""
    spec = official_spec(dim=16, in_dim=8, depths=(3, 3, 10, 5), layer_scale=True)
    model = zoo.create_model("mambavision_b_224", dim=16, in_dim=8)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in convert_official_mambavision(
        {k: torch.empty(s) for k, s in spec.items()}).items()} == own
    assert not any("gamma" in k for k in zoo.create_model(T).state_dict())
    assert model.backbone.levels[2].blocks[0].gamma_1.flatten()[0].item() == pytest.approx(1e-5)


def test_offline_pretrained_names_hub_file(zoo_cache):
    with pytest.raises(PretrainedNotAvailableError) as err:
        zoo.create_model(T, pretrained=True)
    msg = str(err.value)
    assert "nvidia/MambaVision-T-1K" in msg and "mambavision_tiny_1k.pth.tar" in msg and "checkpoint_path" in msg
    from zoo import hub
    from zoo.registry import get_entry
    with pytest.raises(PretrainedNotAvailableError, match="MambaVision-L2-512-21K/mambavision_L2_21k_240m_512"):
        hub.resolve(get_entry("mambavision_l2_512").tags["in21k_ft_in1k"])   # without building 241M parameters


def test_registry_tags_and_license():
    tagged = zoo.list_models("mambavision*", pretrained=True)
    assert {"mambavision_t_224.in1k", "mambavision_t2_224.in1k", "mambavision_s_224.in1k", "mambavision_b_224.in1k",
            "mambavision_b_224.in21k_ft_in1k", "mambavision_l_224.in1k", "mambavision_l_224.in21k_ft_in1k",
            "mambavision_l2_224.in1k", "mambavision_l2_512.in21k_ft_in1k"} == set(tagged)
    from zoo.registry import get_entry
    for name in tagged:
        entry = get_entry(name)
        tag = entry.tags[name.split(".")[1]]
        assert tag.license == "cc-by-nc-sa-4.0" and tag.source.hf_repo.startswith("nvidia/MambaVision-")
    s = get_entry("mambavision_s_224").tags["in1k"].preprocess
    assert s["crop_pct"] == 0.93 and s["interpolation"] == "bicubic"
    assert get_entry("mambavision_l2_512").tags["in21k_ft_in1k"].preprocess["crop_mode"] == "squash"


def test_mixer_rule_and_norm_quirks():
    assert list(attention_blocks(8)) == [4, 5, 6, 7] and list(attention_blocks(4)) == [2, 3]
    assert list(attention_blocks(7)) == [4, 5, 6] and list(attention_blocks(5)) == [3, 4]
    b = build_mambavision("mambavision_s_224", dim=16, in_dim=8)
    kinds = ["ssm" if isinstance(blk.mixer, MambaVisionMixer) else "attn" for blk in b.levels[2].blocks]
    assert kinds == ["ssm"] * 4 + ["attn"] * 3
    assert [m.eps for m in b.patch_embed.modules() if isinstance(m, nn.BatchNorm2d)] == [1e-4, 1e-4]
    assert b.norm.eps == 1e-5 and b.levels[0].blocks[0].norm1.eps == 1e-5
    assert b.levels[0].blocks[0].act1.approximate == "tanh"
    assert b.levels[2].blocks[0].mlp.act.approximate == "none"
    mixer = b.levels[2].blocks[0].mixer
    assert mixer.conv1d_x.bias is None and mixer.conv1d_z.bias is None and mixer.dt_rank == 4


def test_mixer_dt_bias_counts_twice():
    """The mixer alone against the literal one, and a single-bias variant that must differ."""
    torch.manual_seed(0)
    m = MambaVisionMixer(32)
    with torch.no_grad():
        m.dt_proj.bias.normal_(0, 1.0)
    p = {k: v.detach() for k, v in m.state_dict().items()}
    h = torch.randn(2, 20, 32)
    with torch.no_grad():
        ours = m(h)
        assert (ours - ref_mixer(h, p)).abs().max() < 1e-5
        once = ref_mixer(h, dict(p, **{"dt_proj.bias": p["dt_proj.bias"] / 2}))
    assert (ours - once).abs().max() > 1e-3


def _tiny(**kw):
    return zoo.create_model(T, dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2), **kw)


def test_model_contract():
    model = _tiny(num_classes=7).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 128, 3, 3)                                      # unpooled, stride 32 (ceil)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
        assert model.forward_head(feats).shape == (2, 7) and model.num_classes == 7
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(m.shape[1:]) for m in maps] == [(16, 24, 20), (32, 12, 10), (64, 6, 5), (128, 3, 3)]
        final, two = model.forward_intermediates(x, indices=2, norm=True)
        assert torch.allclose(final, feats, atol=1e-6) and torch.allclose(two[-1], feats, atol=1e-6)
    assert [f["reduction"] for f in model.backbone.feature_info] == [4, 8, 16, 32]
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0, global_pool="max")
    assert model(x).shape == (2, 128)
    gray = _tiny(in_chans=1)
    assert gray(torch.randn(1, 1, 64, 64)).shape == (1, 1000)
    assert gray.pretrained_cfg["first_conv"] == "backbone.patch_embed.conv_down.0"
    with pytest.raises(InputShapeError, match="in_chans"):
        gray(torch.randn(1, 3, 64, 64))


def test_in_chans_adapts_official_first_conv(tmp_path, official_t):
    path = tmp_path / "t.pth.tar"
    torch.save({"state_dict": official_t}, path)
    model = zoo.create_model(T, in_chans=1, num_classes=10, checkpoint_path=path)
    w = model.backbone.patch_embed.conv_down[0].weight
    assert w.shape == (32, 1, 3, 3)
    assert torch.allclose(w, official_t["patch_embed.conv_down.0.weight"].sum(1, keepdim=True))


def test_training_step_and_grad_checkpointing():
    torch.manual_seed(0)
    model = _tiny(num_classes=5, drop_path_rate=0.0).train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.levels.2.blocks.0.mixer.A_log"].abs().sum() > 0
    model.zero_grad()
    model.set_grad_checkpointing(True)
    F.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5, rtol=1e-4), n
    assert "backbone.levels.2.blocks.0.mixer.A_log" in model.no_weight_decay()


def test_bf16_autocast_runs_finite():
    model = _tiny().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out.float()).all()


def test_channels_last_same_result():
    model = _tiny().eval()
    x = torch.randn(2, 3, 80, 64)
    with torch.no_grad():
        a = model(x)
        b = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_fused_copy_equals_model(official_t, size):
    """timm.utils.reparameterize_model (the modules' fuse(): BN folded into the convs, LayerNorm + residual on
    kernels.norm, precomputed scan constants) gives the same logits as the official-layout model, which keeps
    its keys and its own modules."""
    from timm.utils import reparameterize_model

    from backbones.mambavision import FusedBlock, FusedConvBlock, FusedMambaVisionMixer

    model = zoo.create_model(T, img_size=size).eval()
    zoo.load_weights(model, convert_official_mambavision(official_t))
    keys = set(model.state_dict())
    fused = reparameterize_model(model).eval()
    assert set(model.state_dict()) == keys and not any(isinstance(m, nn.BatchNorm2d) for m in
                                                       fused.backbone.patch_embed.modules())
    kinds = {type(m) for m in fused.modules()}
    assert {FusedBlock, FusedConvBlock, FusedMambaVisionMixer} <= kinds and not kinds & {nn.LayerNorm}
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(x), fused(x)
        c = fused.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert a.abs().max() > 0.1
    assert (a - b).abs().max().item() < 1e-4 and (a - c).abs().max().item() < 1e-4


def test_fused_copy_folds_layer_scale():
    """γ of the conv blocks (layer_scale_conv) and of the token blocks (layer_scale) survive the fusion."""
    from timm.utils import reparameterize_model

    model = MambaVision(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2), layer_scale=0.5,
                        layer_scale_conv=0.7).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if "gamma" in name:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    x = torch.randn(2, 3, 40, 56, generator=g)
    with torch.no_grad():
        a, b = model(x), reparameterize_model(model)(x)
    assert (a - b).abs().max().item() < 1e-4 * max(1.0, a.abs().max().item())


def test_backbone_direct_use():
    b = MambaVision(dim=16, in_dim=8, depths=(1, 1, 2, 2), num_heads=(1, 1, 2, 2), in_chans=2)
    assert b(torch.randn(1, 2, 40, 40)).shape == (1, 128)
    with pytest.raises(ValueError, match="4 entries"):
        MambaVision(depths=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_triton_matches_reference(monkeypatch, official_t):
    """MambaVision-T at 224 (batch 8) and 256x320 (batch 2): Triton conv/scan vs the PyTorch reference path,
    fp32 and bf16 autocast; channels-last; a bf16 training step with finite gradients."""
    model = zoo.create_model(T).cuda().eval()
    zoo.load_weights(model, convert_official_mambavision(official_t))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for shape in ((8, 3, 224, 224), (2, 3, 256, 320)):
        x = torch.randn(*shape, device="cuda")

        def run(backend, amp):
            monkeypatch.setenv("SPEEDZOO_KERNELS", backend)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                return model(x).float()

        ref32, tri32 = run("reference", False), run("auto", False)
        assert torch.isfinite(tri32).all() and (tri32 - ref32).norm() / ref32.norm() < 1e-3
        tri16 = run("auto", True)
        assert torch.isfinite(tri16).all() and (tri16 - ref32).norm() / ref32.norm() < 5e-2
        with torch.no_grad():
            cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
        assert (cl - tri32).norm() / tri32.norm() < 1e-3
    monkeypatch.setenv("SPEEDZOO_KERNELS", "auto")
    from timm.utils import reparameterize_model

    fused = reparameterize_model(model).eval().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = model(x), fused(x)
    assert (b - a).norm() / a.norm() < 1e-3
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(torch.randn(4, 3, 224, 224, device="cuda")).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
