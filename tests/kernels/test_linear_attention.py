"""Bidirectional normalised linear attention (kernels.linear_attention): Triton path vs the fp32 T x T truth.

Without CUDA the kernels run through Triton's interpreter (set here and in tests/kernels/conftest.py before
triton is imported); on a GPU they are compiled. Loss = (o · do).sum() with random do; dq, dk, dv compared
by relative RMS (kernels.common.rel_rms) against ``linear_attention_quadratic_ref`` on fp32 copies of the
(rounded) inputs.

Tolerances: fp32 1e-5 (o and every gradient; measured ~2e-7 to 6e-7), or max |error| <= 1e-6 (fla's err_atol). bf16 inputs 1e-2: the math is fp32,
the only error is storing o, dq, dk, dv in bf16 (relative rounding 2^-9 ≈ 2e-3 per element).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernels.common import rel_rms  # noqa: E402
from kernels.linear_attention import (  # noqa: E402
    linear_attention_quadratic_ref,
    linear_attention_ref,
    normalized_linear_attention,
    relu_linear_attention,
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
ERR_ATOL = 1e-6  # as fla's assert_close: a max abs error this small passes (T = 1 makes dq ~ eps-sized)


def _close(actual, expected, tol):
    return (actual.float() - expected).abs().max().item() <= ERR_ATOL or rel_rms(actual, expected) < tol


def _inputs(B, T, H, D, DV, dtype, device="cpu", seed=0, positive=False):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, H, D, generator=gen), torch.randn(B, T, H, D, generator=gen)
    v = torch.randn(B, T, H, DV, generator=gen)
    if positive:  # identity feature map: keep the normaliser away from zero
        q, k = q.abs() + 0.1, k.abs() + 0.1
    return [x.to(dtype).to(device).requires_grad_() for x in (q, k, v)]


def _check(B, T, H, D, DV, dtype, feature="relu", device="cpu", eps=1e-5, tol=None):
    q, k, v = _inputs(B, T, H, D, DV, dtype, device, positive=feature == "none")
    o = normalized_linear_attention(q, k, v, eps, feature)
    assert o.dtype == dtype and o.shape == (B, T, H, DV) and o.is_contiguous()
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(device)
    grads = torch.autograd.grad((o.float() * do).sum(), (q, k, v))
    rq, rk, rv = [x.detach().float().requires_grad_() for x in (q, k, v)]
    ref = linear_attention_quadratic_ref(rq, rk, rv, eps, feature)
    rgrads = torch.autograd.grad((ref * do).sum(), (rq, rk, rv))
    tol = tol or TOL[dtype]
    assert not torch.isnan(o).any()
    assert rel_rms(o, ref) < tol, ("o", rel_rms(o, ref))
    for name, g, rg in zip("qkv", grads, rgrads):
        assert g.dtype == dtype and g.shape == rg.shape
        assert _close(g, rg, tol), (f"d{name}", rel_rms(g, rg))


@pytest.mark.parametrize("shape", [(1, 1, 1, 16, 16), (2, 70, 3, 20, 17), (1, 200, 2, 32, 32), (1, 130, 1, 64, 48),
                                   (2, 49, 4, 8, 8), (1, 40, 1, 128, 128)])
def test_relu_fp32_values_and_grads(shape):
    _check(*shape, torch.float32)


@pytest.mark.parametrize("feature", ["elu1", "none"])
def test_other_feature_maps(feature):
    _check(2, 77, 2, 24, 24, torch.float32, feature)


def test_bf16_inputs_fp32_math():
    _check(2, 100, 2, 32, 32, torch.bfloat16)


def test_strided_views_as_efficientvit_passes_them():
    """q, k, v as permuted chunks of one [B, H, T, 3D] tensor (LiteMLA's per-head split), read in place."""
    B, H, T, D = 2, 3, 45, 16
    qkv = torch.randn(B, H, T, 3 * D, generator=torch.Generator().manual_seed(3)).requires_grad_()
    q, k, v = (x.transpose(1, 2) for x in qkv.chunk(3, dim=-1))
    assert not q.is_contiguous()
    o = relu_linear_attention(q, k, v)
    (g,) = torch.autograd.grad(o.square().sum(), qkv)
    qkv2 = qkv.detach().clone().requires_grad_()
    q2, k2, v2 = (x.transpose(1, 2).contiguous() for x in qkv2.chunk(3, dim=-1))
    ref = linear_attention_quadratic_ref(q2, k2, v2)
    (g2,) = torch.autograd.grad(ref.square().sum(), qkv2)
    assert rel_rms(o, ref) < 1e-5 and rel_rms(g, g2) < 1e-5


def test_reference_forms_agree_and_autocast_keeps_fp32():
    q, k, v = _inputs(2, 33, 2, 16, 16, torch.float32)
    assert rel_rms(linear_attention_ref(q, k, v), linear_attention_quadratic_ref(q, k, v)) < 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = linear_attention_ref(q, k, v)
        o2 = normalized_linear_attention(q, k, v)
    assert o.dtype == torch.float32 and o2.dtype == torch.float32
    assert rel_rms(o, linear_attention_quadratic_ref(q, k, v)) < 1e-6
    assert rel_rms(o2, o) < 1e-5


def test_reference_dispatch(monkeypatch):
    q, k, v = _inputs(1, 40, 2, 16, 16, torch.float32)
    o_tri = relu_linear_attention(q, k, v)
    monkeypatch.setenv("SPEEDZOO_KERNELS", "reference")
    o_ref = relu_linear_attention(q, k, v)
    assert rel_rms(o_tri, o_ref) < 1e-6


def test_errors_and_empty():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match=r"\[B, T, H, D\]"):
        relu_linear_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="v must be"):
        relu_linear_attention(q, q, torch.randn(1, 5, 2, 8))
    with pytest.raises(ValueError, match="feature_map"):
        normalized_linear_attention(q, q, q, feature_map="softmax")
    e = torch.randn(1, 0, 2, 8)
    assert relu_linear_attention(e, e, e).shape == (1, 0, 2, 8)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 196, 8, 16, 16), (8, 4096, 3, 64, 64), (2, 1000, 4, 32, 32), (1, 63, 1, 128, 100)])
def test_gpu_compiled(shape, dtype):
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the GPU test checks the compiled kernels")
    _check(*shape, dtype, device="cuda", tol=1e-4 if dtype == torch.float32 else 1e-2)


def test_efficientvit_litemla_triton_matches_reference(monkeypatch):
    """The EfficientViT attention module on the Triton path equals its reference path (values and grads)."""
    from backbones.efficientvit import LiteMLA

    torch.manual_seed(0)
    m = LiteMLA(32, head_dim=16).eval()
    x = torch.randn(2, 32, 7, 9, requires_grad=True)
    y = m(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    monkeypatch.setenv("SPEEDZOO_KERNELS", "reference")
    y2 = m(x)
    (gx2,) = torch.autograd.grad(y2.square().sum(), x)
    assert rel_rms(y, y2) < 1e-5 and rel_rms(gx, gx2) < 1e-5
