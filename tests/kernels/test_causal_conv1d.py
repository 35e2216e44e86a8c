"""causal_conv1d / same_conv1d: Triton path (interpreter on CPU, compiled on CUDA) vs the PyTorch reference.

Tolerances (relative RMS, kernels.common.rel_rms): fp32 1e-5 for values and every gradient; bf16 inputs
1.5e-2 under the interpreter (it truncates fp32->bf16 instead of rounding to nearest, ~1 ulp = 2^-8) and on
the GPU against an fp32 reference (bf16 input/output rounding).
"""


import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.causal_conv1d import causal_conv1d, causal_conv1d_ref, same_conv1d, same_conv1d_ref  # noqa: E402
from kernels.common import rel_rms  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}


def _inputs(b, d, length, width, dtype, bias, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, length, generator=g).to(device=device, dtype=dtype).requires_grad_()
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w = (torch.randn(d, width, generator=g) / width ** 0.5).to(device, pdtype).requires_grad_()
    bb = torch.randn(d, generator=g).to(device, pdtype).requires_grad_() if bias else None
    return x, w, bb


def _compare(fn, ref, x, w, b, tol, ref_inputs=None):
    """Values and gradients of fn(x, w, b) vs ref on the same (or fp32 copies of the) inputs, same dy."""
    params = [t for t in (x, w, b) if t is not None]
    y = fn(x, w, b)
    rx, rw, rb = ref_inputs if ref_inputs is not None else (x, w, b)
    rparams = [t for t in (rx, rw, rb) if t is not None]
    yr = ref(rx, rw, rb)
    assert y.dtype == x.dtype and y.shape == yr.shape
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device)
    grads = torch.autograd.grad(y, params, dy.to(y.dtype))
    rgrads = torch.autograd.grad(yr, rparams, dy.to(yr.dtype))
    names = ["y", "dx", "dweight", "dbias"][: 1 + len(params)]
    for name, a, e in zip(names, (y, *grads), (yr, *rgrads)):
        assert torch.isfinite(a.float()).all(), name
        err = rel_rms(a, e)
        assert err <= tol, f"{name}: rel RMS {err:.3g} > {tol}"


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("length", [1, 3, 130])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias,activation", [(False, None), (True, "silu"), (False, "swish")])
def test_causal_fp32(width, length, reverse, bias, activation):
    b_, d = (1, 20) if length == 130 else (2, 5)  # 130 > BLOCK_L and 20 > BLOCK_D: several L- and D-blocks
    x, w, b = _inputs(b_, d, length, width, torch.float32, bias)
    _compare(lambda *a: causal_conv1d(*a, activation=activation, reverse=reverse),
             lambda *a: causal_conv1d_ref(*a, activation=activation, reverse=reverse), x, w, b, TOL[torch.float32])


@pytest.mark.parametrize("width,length,reverse", [(4, 2, False), (4, 130, False), (4, 130, True), (2, 37, True)])
def test_causal_bf16(width, length, reverse):
    x, w, b = _inputs(2, 6, length, width, torch.bfloat16, True)
    _compare(lambda *a: causal_conv1d(*a, activation="silu", reverse=reverse),
             lambda *a: causal_conv1d_ref(*a, activation="silu", reverse=reverse), x, w, b, TOL[torch.bfloat16])


@pytest.mark.parametrize("width", [2, 4])
def test_reverse_is_flipped_causal(width):
    x, w, b = _inputs(2, 7, 41, width, torch.float32, True)
    y = causal_conv1d(x, w, b, activation="silu", reverse=True)
    y_flip = causal_conv1d(x.flip(-1), w, b, activation="silu").flip(-1)
    assert rel_rms(y, y_flip) <= 1e-6
    dy = torch.randn_like(y)
    g = torch.autograd.grad(y, (x, w, b), dy)
    g_flip = torch.autograd.grad(y_flip, (x, w, b), dy)
    for a, e in zip(g, g_flip):
        assert rel_rms(a, e) <= 1e-5


def test_weight_layout_and_strides():
    """nn.Conv1d's [D, 1, W] weight, a channel-last (transposed) x and a non-contiguous dy."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 37, 6, generator=g).transpose(1, 2).requires_grad_()  # [B, D, L], stride_d = 1
    w = torch.randn(6, 1, 4, generator=g).requires_grad_()
    b = torch.randn(6, generator=g).requires_grad_()
    y = causal_conv1d(x, w, b, activation="silu")
    yr = causal_conv1d_ref(x, w.reshape(6, 4), b, activation="silu")
    assert rel_rms(y, yr) <= 1e-5
    dy = torch.randn(2, 37, 6, generator=g).transpose(1, 2)
    for a, e in zip(torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(yr, (x, w, b), dy)):
        assert a.shape == e.shape and rel_rms(a, e) <= 1e-5


@pytest.mark.parametrize("width", [3, 5])
@pytest.mark.parametrize("length", [1, 2, 130])
@pytest.mark.parametrize("bias,activation", [(True, None), (False, "silu")])
def test_same_conv1d(width, length, bias, activation):
    x, w, b = _inputs(2, 9, length, width, torch.float32, bias)

    def torch_same(x, w, b):
        y = F.conv1d(x, w.unsqueeze(1), b, padding=width // 2, groups=x.shape[1])
        return F.silu(y) if activation else y

    _compare(lambda *a: same_conv1d(*a, activation=activation), torch_same, x, w, b, TOL[torch.float32])
    _compare(lambda *a: same_conv1d_ref(*a, activation=activation), torch_same, x, w, b, 1e-6)


def test_same_conv1d_bf16():
    x, w, b = _inputs(2, 9, 130, 3, torch.bfloat16, True)
    _compare(lambda *a: same_conv1d(*a, activation="silu"), lambda *a: same_conv1d_ref(*a, activation="silu"),
             x, w, b, TOL[torch.bfloat16])


def test_reference_matches_conv1d_and_gradcheck():
    x, w, b = _inputs(2, 3, 6, 4, torch.float64, True)
    expected = F.conv1d(F.pad(x, (3, 0)), w.unsqueeze(1), b, groups=3)
    assert torch.allclose(causal_conv1d_ref(x, w, b), expected)
    assert torch.allclose(causal_conv1d_ref(x, w, b, reverse=True),
                          causal_conv1d_ref(x.flip(-1), w, b).flip(-1))
    for fn in (lambda *a: causal_conv1d_ref(*a, activation="silu"),
               lambda *a: causal_conv1d_ref(*a, activation="silu", reverse=True),
               lambda *a: same_conv1d_ref(a[0], a[1][:, :3], a[2], activation="silu")):
        assert torch.autograd.gradcheck(fn, (x, w, b))


def test_errors():
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError):
        same_conv1d(x, torch.randn(4, 4))
    with pytest.raises(ValueError):
        causal_conv1d(x, torch.randn(3, 4))
    with pytest.raises(ValueError):
        causal_conv1d(x, torch.randn(4, 4), activation="gelu")


# ---- GPU: realistic Vim shapes, bf16 kernel vs fp32 reference ------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("b,d,length", [(64, 384, 197), (8, 384, 6085), (2, 2048, 4096)])
@pytest.mark.parametrize("mode", ["causal", "reverse", "same"])
def test_gpu_bf16_vs_fp32_reference(b, d, length, mode):
    width = 3 if mode == "same" else 4
    x, w, bb = _inputs(b, d, length, width, torch.bfloat16, True, device="cuda")
    ref_inputs = tuple(t.detach().float().requires_grad_() for t in (x, w, bb))
    if mode == "same":
        fn = lambda *a: same_conv1d(*a, activation="silu")  # noqa: E731
        ref = lambda *a: same_conv1d_ref(*a, activation="silu")  # noqa: E731
    else:
        fn = lambda *a: causal_conv1d(*a, activation="silu", reverse=mode == "reverse")  # noqa: E731
        ref = lambda *a: causal_conv1d_ref(*a, activation="silu", reverse=mode == "reverse")  # noqa: E731
    _compare(fn, ref, x, w, bb, 1e-2, ref_inputs=ref_inputs)


@pytest.mark.gpu
@gpu
def test_gpu_fp32_exact_and_large_offsets():
    """fp32 on the GPU vs reference; B*D*L > 2^31 would need ~9 GB, so check int64 at 2^31 / (D*L) batch."""
    x, w, b = _inputs(4, 384, 197, 4, torch.float32, True, device="cuda")
    _compare(lambda *a: causal_conv1d(*a, activation="silu"),
             lambda *a: causal_conv1d_ref(*a, activation="silu"), x, w, b, 1e-5)
    x = torch.randn(1100, 2048, 1000, device="cuda", dtype=torch.bfloat16)  # 2.25e9 elements > 2^31
    w = torch.randn(2048, 4, device="cuda")
    y = causal_conv1d(x, w)
    assert rel_rms(y[-1:], causal_conv1d_ref(x[-1:], w)) <= 1e-2  # the tail lies beyond int32 offsets
    del x, y


@pytest.mark.parametrize("length", [65, 7])
def test_bidirectional_backward_is_the_two_directions_summed(length):
    """The two-direction backward (one kernel: causal on direction 0, anti-causal on direction 1) gives dx = the sum
    of the two single-direction backwards and their dweight / dbias stacked; dy may be a strided view."""
    import kernels.causal_conv1d.triton as cc

    g = torch.Generator().manual_seed(3)
    b, d, width = 2, 6, 4
    x = torch.randn(b, d, length, generator=g)
    w = torch.randn(2, d, width, generator=g)
    bias = torch.randn(2, d, generator=g)
    dy = torch.randn(2, b, length, d, generator=g).transpose(2, 3)          # [2, B, D, L], channel-last strides
    dx, dw, db = cc._bwd_both(x, w, bias, dy, True)
    one = [cc._bwd(x, w[r].contiguous(), bias[r].contiguous(), dy[r], mode, True)
           for r, mode in enumerate(("causal", "reverse"))]
    assert rel_rms(dx, one[0][0] + one[1][0]) < 1e-6
    assert rel_rms(dw, torch.stack([one[0][1], one[1][1]])) < 1e-6
    assert rel_rms(db, torch.stack([one[0][2], one[1][2]])) < 1e-6
    assert dw.shape == w.shape and db.shape == bias.shape


def test_backward_tiles_pad_least():
    """BLOCK_L of 32 or 64 with the least padding past L (ties: 64), 512 elements per program."""
    from kernels.causal_conv1d.triton import _bwd_blocks

    assert _bwd_blocks(256, 65) == (16, 32, 4)
    assert _bwd_blocks(384, 128) == (8, 64, 4)
    assert _bwd_blocks(4, 1000)[:2] == (4, 64)
