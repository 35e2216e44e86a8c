"""Vision Mamba: parity with an independent re-statement of the official forward, the mixer's reverse path,
resizing, odd inputs, low precision, intermediates, and (on a GPU) Triton vs reference kernels."""
import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

import zoo
from backbones.layers.mamba import BiMambaMixer
from backbones.vim import VisionMamba, VimConfig
from kernels.causal_conv1d import causal_conv1d
from kernels.selective_scan import selective_scan
from zoo.families.vim import convert_official_vim

# ---------------------------------------------------------------------------------------------------------
# The official layout, written out from reference/vim.md §3 (not derived from our module).


def official_vim_spec(dim=192, depth=24, num_tokens=197, num_classes=1000, in_chans=3, patch=16, d_state=16):
    """Ordered {key: shape} of hustvl/Vim's ``vim_*_midclstok_div2`` state_dict."""
    E, R = 2 * dim, math.ceil(dim / 16)
    spec = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, num_tokens, dim),
        "patch_embed.proj.weight": (dim, in_chans, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "head.weight": (num_classes, dim),
        "head.bias": (num_classes,),
    }
    for i in range(depth):
        p = f"layers.{i}."
        spec.update({
            p + "mixer.A_log": (E, d_state),
            p + "mixer.D": (E,),
            p + "mixer.A_b_log": (E, d_state),
            p + "mixer.D_b": (E,),
            p + "mixer.in_proj.weight": (2 * E, dim),
            p + "mixer.conv1d.weight": (E, 1, 4),
            p + "mixer.conv1d.bias": (E,),
            p + "mixer.x_proj.weight": (R + 2 * d_state, E),
            p + "mixer.dt_proj.weight": (E, R),
            p + "mixer.dt_proj.bias": (E,),
            p + "mixer.conv1d_b.weight": (E, 1, 4),
            p + "mixer.conv1d_b.bias": (E,),
            p + "mixer.x_proj_b.weight": (R + 2 * d_state, E),
            p + "mixer.dt_proj_b.weight": (E, R),
            p + "mixer.dt_proj_b.bias": (E,),
            p + "mixer.out_proj.weight": (dim, E),
            p + "norm.weight": (dim,),
        })
    spec["norm_f.weight"] = (dim,)
    return spec


def random_official_state(spec, seed=0):
    """Random weights of sensible scale in the official layout (A_log, dt bias, D as a trained model has them)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in spec.items():
        if k.endswith(("A_log", "A_b_log")):
            v = torch.log(torch.arange(1, shape[1] + 1.0)).repeat(shape[0], 1) + 0.3 * torch.randn(shape, generator=g)
        elif k.endswith(("dt_proj.bias", "dt_proj_b.bias")):
            dt = torch.exp(torch.rand(shape, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            v = dt + torch.log(-torch.expm1(-dt))
        elif k.endswith(("mixer.D", "mixer.D_b")):
            v = 1.0 + 0.5 * torch.randn(shape, generator=g)
        elif k.endswith("norm.weight") or k == "norm_f.weight":
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("bias"):
            v = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2 and k not in ("cls_token", "pos_embed"):
            fan_in = math.prod(shape[1:])
            v = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            v = 0.02 * torch.randn(shape, generator=g)
        sd[k] = v.float()
    return sd


# ---------------------------------------------------------------------------------------------------------
# A literal re-statement of the official forward (hustvl/Vim models_mamba.py + the fork's Mamba v2 path),
# written with flips, F.conv1d and a mamba_ssm-style fp32 token loop; it shares no code with ours.


def ref_selective_scan(u, delta, A, B, C, D, z, delta_bias):
    delta = F.softplus(delta + delta_bias[:, None])
    batch, dim, L = u.shape
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for i in range(L):
        h = deltaA[:, :, i] * h + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    return (y + u * D[:, None]) * F.silu(z)


def ref_direction(xz, p, s, d_state=16):
    x, z = xz.chunk(2, dim=1)
    E, L = x.shape[1], x.shape[2]
    w = p[f"conv1d{s}.weight"]
    x = F.silu(F.conv1d(x, w, p[f"conv1d{s}.bias"], padding=w.shape[-1] - 1, groups=E)[..., :L])
    x_dbl = F.linear(x.transpose(1, 2), p[f"x_proj{s}.weight"])          # [B, L, R + 2N]
    R = x_dbl.shape[-1] - 2 * d_state
    dt, Bm, Cm = torch.split(x_dbl, [R, d_state, d_state], dim=-1)
    dt = F.linear(dt, p[f"dt_proj{s}.weight"]).transpose(1, 2)
    A = -torch.exp(p[f"A{s}_log"])
    return ref_selective_scan(x, dt, A, Bm.transpose(1, 2), Cm.transpose(1, 2), p[f"D{s}"], z, p[f"dt_proj{s}.bias"])


def ref_mixer(h, p):
    xz = F.linear(h, p["in_proj.weight"]).transpose(1, 2)                   # [B, 2E, L]
    y = ref_direction(xz, p, "")
    y_b = ref_direction(xz.flip(-1), p, "_b")
    return F.linear(((y + y_b.flip(-1)) / 2).transpose(1, 2), p["out_proj.weight"])


def ref_rms_norm(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ref_vim_logits(img, sd, depth, stride=16):
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)
    mid = x.shape[1] // 2
    x = torch.cat([x[:, :mid], sd["cls_token"].expand(x.shape[0], -1, -1), x[:, mid:]], dim=1) + sd["pos_embed"]
    hidden, residual = x, None
    for i in range(depth):
        residual = hidden if residual is None else residual + hidden
        p = {k[len(f"layers.{i}.mixer."):]: v for k, v in sd.items() if k.startswith(f"layers.{i}.mixer.")}
        hidden = ref_mixer(ref_rms_norm(residual, sd[f"layers.{i}.norm.weight"]), p)
    out = ref_rms_norm(residual + hidden, sd["norm_f.weight"])
    return F.linear(out[:, mid], sd["head.weight"], sd["head.bias"])


# ---------------------------------------------------------------------------------------------------------


def test_official_tiny_key_layout_converts_exactly():
    spec = official_vim_spec()
    assert len(spec) == 415 == 7 + 24 * 17
    model = zoo.create_model("vim_tiny_patch16_224")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = convert_official_vim({k: torch.empty(s) for k, s in spec.items()})
    assert len(converted) == len(spec)                                       # every official key is used
    assert {k: tuple(v.shape) for k, v in converted.items()} == own          # and none of ours is missing
    assert sum(p.numel() for p in model.parameters()) == 7_148_008
    assert convert_official_vim(model.state_dict()).keys() == model.state_dict().keys()  # ours passes through


def test_official_plus_layout_matches_stride8_model():
    spec = official_vim_spec(num_tokens=730)
    model = zoo.create_model("vim_tiny_patch16_stride8_224")
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in convert_official_vim({k: torch.empty(s) for k, s in spec.items()}).items()} == own
    assert model.backbone.cls_index == 364


@pytest.mark.parametrize("img,batch", [(224, 1), (64, 2)])
def test_parity_with_official_forward(tmp_path, img, batch):
    """Acceptance: random official-layout weights, saved as hustvl's .pth ({'model', 'args'}) and loaded
    through create_model, give the official logits (224: the true 415-key file; 64: 4x4 patches, batch 2)."""
    spec = official_vim_spec(num_tokens=(img // 16) ** 2 + 1)
    sd = random_official_state(spec)
    path = tmp_path / "vim_t_midclstok.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model="vim_tiny_patch16_224", drop_path=0.0)}, path)
    model = zoo.create_model("vim_tiny_patch16_224", img_size=img, checkpoint_path=path).eval()
    x = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        ref = ref_vim_logits(x, sd, depth=24)
    err = (ours - ref).abs().max().item()
    assert ref.abs().max() > 0.1
    assert err < 1e-4, f"max |ours - official| = {err:.3g}"


def _mixer_flip_version(m: BiMambaMixer, h):
    """Backward direction by flipping copies of x and z (the official formulation) with our kernels."""
    xz = torch.matmul(m.in_proj.weight, h.transpose(1, 2))
    outs = []
    for s, flip in (("", False), ("_b", True)):
        x, z = (xz.flip(-1) if flip else xz).chunk(2, dim=1)
        conv, x_proj, dt_proj = getattr(m, f"conv1d{s}"), getattr(m, f"x_proj{s}"), getattr(m, f"dt_proj{s}")
        x = causal_conv1d(x, conv.weight, conv.bias, activation="silu")
        x_dbl = torch.matmul(x_proj.weight, x)
        R, N = m.dt_rank, m.d_state
        dt = torch.matmul(dt_proj.weight, x_dbl[:, :R])
        y = selective_scan(x, dt, -torch.exp(getattr(m, f"A{s}_log").float()), x_dbl[:, R:R + N].contiguous(),
                           x_dbl[:, R + N:].contiguous(), getattr(m, f"D{s}").float(), z=z,
                           delta_bias=dt_proj.bias.float(), delta_softplus=True)
        outs.append(y.flip(-1) if flip else y)
    return m.out_proj(((outs[0] + outs[1]) / 2).transpose(1, 2))


def test_mixer_reverse_equals_flip_formulation():
    torch.manual_seed(0)
    m = BiMambaMixer(32, d_state=8)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))  # make the two directions differ
    h = torch.randn(2, 37, 32)
    with torch.no_grad():
        assert torch.allclose(m(h), _mixer_flip_version(m, h), atol=1e-5, rtol=0)
    assert m(h).shape == (2, 37, 32)
    # The backward direction actually reads the future: changing the last token moves the first output.
    h2 = h.clone()
    h2[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(m(h)[:, 0], m(h2)[:, 0])


def test_mixer_init_is_mambas():
    m = BiMambaMixer(64)
    assert m.dt_rank == 4 and m.d_inner == 128
    assert torch.allclose(m.A_b_log[0], torch.log(torch.arange(1, 17.0)))
    assert torch.all(m.D == 1) and torch.all(m.D_b == 1)
    dt = F.softplus(torch.cat([m.dt_proj.bias, m.dt_proj_b.bias]))
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert m.in_proj.bias is None and m.out_proj.bias is None


def test_pos_embed_resize_keeps_middle_cls(tmp_path):
    src = zoo.create_model("vim_micro_patch4_32", depth=1)
    path = tmp_path / "micro.pth"
    torch.save(src.state_dict(), path)
    dst = zoo.create_model("vim_micro_patch4_32", depth=1, img_size=(48, 64), checkpoint_path=path)
    old, new = src.backbone.pos_embed.detach(), dst.backbone.pos_embed.detach()
    assert new.shape == (1, 12 * 16 + 1, 128)
    assert dst.backbone.cls_index == 96
    assert torch.equal(new[:, 96], old[:, 32])
    # The grid part is a resampling of the old grid alone (the class slot mixed into nothing).
    grid = torch.cat([old[:, :32], old[:, 33:]], dim=1).reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(12, 16), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, 192, -1)
    assert torch.allclose(torch.cat([new[:, :96], new[:, 97:]], dim=1), grid, atol=1e-6)
    assert torch.equal(dst.backbone.cls_token, src.backbone.cls_token)


def test_spectrogram_input_non_square_one_channel(tmp_path):
    src = zoo.create_model("vim_tiny_patch16_224", depth=2)
    path = tmp_path / "tiny2.pth"
    torch.save(src.state_dict(), path)
    m = zoo.create_model("vim_tiny_patch16_224", depth=2, in_chans=1, img_size=(128, 256), num_classes=5,
                         checkpoint_path=path).eval()
    assert m.backbone.patch_embed.grid_size == (8, 16)
    assert m.pretrained_cfg["input_size"] == (1, 128, 256)
    x = torch.randn(2, 1, 128, 256)
    with torch.no_grad():
        assert m(x).shape == (2, 5)
        assert m.forward_features(x).shape == (2, 129, 192)
    with pytest.raises(zoo.errors.InputShapeError, match="expected"):
        m(torch.randn(2, 3, 128, 256))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_no_nans(dtype):
    torch.manual_seed(0)
    m = zoo.create_model("vim_micro_patch4_32", depth=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=dtype):
            try:
                y_amp = m(x)
            except RuntimeError as e:
                pytest.skip(f"{dtype} autocast unsupported on this CPU build: {e}")
        assert torch.isfinite(y_amp).all()
        assert (y_amp.float() - ref).norm() / ref.norm() < 0.05
        try:
            y_half = m.to(dtype)(x.to(dtype))
        except RuntimeError as e:
            pytest.skip(f"{dtype} weights unsupported on this CPU build: {e}")
    assert y_half.dtype == dtype and torch.isfinite(y_half).all()
    assert (y_half.float() - ref).norm() / ref.norm() < 0.05


def test_residual_stream_is_fp32_under_autocast():
    m = zoo.create_model("vim_micro_patch4_32", depth=2).eval().backbone
    seen = []
    m.layers[1].register_forward_hook(lambda mod, args, out: seen.append(out[1].dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(1, 3, 32, 32))
    assert seen == [torch.float32]


def test_model_contract_and_training_step():
    m = zoo.create_model("vim_micro_patch4_32", depth=2, drop_path_rate=0.1)
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 65, 128)
    assert torch.equal(m.forward_head(feats, pre_logits=True), feats[:, 32])
    assert m(x).shape == (2, 10)
    nwd = m.no_weight_decay()
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.layers.0.mixer.A_log",
            "backbone.layers.1.mixer.D_b"} <= nwd
    m.set_grad_checkpointing(True)
    m.train()
    m(x).logsumexp(-1).sum().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    m.reset_classifier(0, "avg")
    assert m(x).shape == (2, 128)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = zoo.create_model("vim_micro_patch4_32", depth=2)
    x = torch.randn(2, 3, 32, 32)
    m(x).sum().backward()
    g0 = m.backbone.layers[0].mixer.A_b_log.grad.clone()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    assert torch.allclose(m.backbone.layers[0].mixer.A_b_log.grad, g0, atol=1e-6)


def test_forward_intermediates():
    m = zoo.create_model("vim_micro_patch4_32", depth=4).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        final, feats = m.forward_intermediates(x, indices=2)
        assert len(feats) == 2 and feats[0].shape == (1, 128, 8, 8)
        assert torch.allclose(final, m.forward_features(x), atol=1e-6)
        only = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True, output_fmt="NLC", norm=True)
        assert [f.shape for f in only] == [(1, 64, 128), (1, 64, 128)]
        # The last normed intermediate is the final tokens without the middle class token.
        assert torch.allclose(only[-1], torch.cat([final[:, :32], final[:, 33:]], dim=1), atol=1e-6)
        early = m.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert early[0].shape == (1, 128, 8, 8)
    r = zoo.create_model("vim_micro_patch4_32", depth=1, img_size=(16, 48))
    assert r.forward_intermediates(torch.randn(1, 3, 16, 48), intermediates_only=True)[0].shape == (1, 128, 4, 12)


def test_micro_fits_fp16_budget():
    m = zoo.create_model("vim_micro_patch4_32")
    n = sum(p.numel() for p in m.parameters())
    assert 1.5e6 < n < 1.7e6 and 2 * n < 4 * 1024 ** 2


def test_backbone_direct_use():
    b = VisionMamba(VimConfig(img_size=(32, 64), patch_size=8, embed_dim=64, depth=2, in_chans=2))
    assert b(torch.randn(1, 2, 32, 64)).shape == (1, 64)
    assert b.resize_pos_embed_state(b.pos_embed, (4, 8)) is b.pos_embed


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("img,batch", [(224, 8), (512, 2)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_triton_matches_reference(monkeypatch, img, batch):
    """vim_tiny at 224 px batch 8 (one sequential channel-layout scan pass) and 512 px batch 2 (chunk-parallel:
    the default takes the lane layout there): Triton kernels vs the PyTorch reference path, fp32 and bf16."""
    torch.manual_seed(0)
    spec = official_vim_spec()
    sd = convert_official_vim(random_official_state(spec))
    model = zoo.create_model("vim_tiny_patch16_224", img_size=img).cuda().eval()
    zoo.load_weights(model, sd)
    x = torch.randn(batch, 3, img, img, device="cuda")

    def run(backend, amp):
        monkeypatch.setenv("SPEEDZOO_KERNELS", backend)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            return model(x).float()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref32, tri32 = run("reference", False), run("auto", False)
    assert torch.isfinite(tri32).all()
    assert (tri32 - ref32).norm() / ref32.norm() < 1e-3
    ref16, tri16 = run("reference", True), run("auto", True)
    assert torch.isfinite(tri16).all()
    assert (tri16 - ref16).norm() / ref16.norm() < 3e-2
    assert (tri16 - ref32).norm() / ref32.norm() < 5e-2

    monkeypatch.setenv("SPEEDZOO_KERNELS", "auto")
    model.train()
    model.set_grad_checkpointing(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
