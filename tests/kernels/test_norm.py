"""rms_norm / layer_norm with fused residual: Triton path (interpreter on CPU, compiled on CUDA) vs reference.

Tolerances (relative RMS, kernels.common.rel_rms): 1e-5 when every tensor compared is fp32; 1.5e-2 when the
tensor compared is bf16 (the interpreter truncates fp32->bf16, ~1 ulp = 2^-8; on the GPU bf16 rounding of
inputs/outputs against an fp32 reference). Width 1 is compared with an absolute tolerance: LayerNorm's
output is then just the bias and its gradients are cancellations around zero.
"""


import itertools  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.common import rel_rms  # noqa: E402
from kernels.norm import layer_norm, layer_norm_ref, rms_norm, rms_norm_ref  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

OPS = {"rms": (rms_norm, rms_norm_ref), "ln": (layer_norm, layer_norm_ref)}
BF16_TOL, FP32_TOL = 1.5e-2, 1e-5


def _make(rows, n, x_dtype, r_dtype, bias, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*rows, n, generator=g) * 2 + 0.5).to(device, x_dtype).requires_grad_()
    w = (1 + 0.2 * torch.randn(n, generator=g)).to(device).requires_grad_()
    b = torch.randn(n, generator=g).to(device).requires_grad_() if bias else None
    r = torch.randn(*rows, n, generator=g).to(device, r_dtype).requires_grad_() if r_dtype is not None else None
    return x, w, b, r


def _run(op, x, w, b, r, prenorm, fp32, dys=None):
    out = op(x, w, b, r, prenorm=prenorm, residual_in_fp32=fp32)
    outs = out if isinstance(out, tuple) else (out,)
    if dys is None:
        g = torch.Generator().manual_seed(1)
        dys = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs]
    params = [t for t in (x, w, b, r) if t is not None]
    grads = torch.autograd.grad(outs, params, dys)
    return outs, grads, dys


def _check(kind, x, w, b, r, prenorm, fp32, ref_inputs=None, tol=None, atol=None):
    op, ref = OPS[kind]
    outs, grads, dys = _run(op, x, w, b, r, prenorm, fp32)
    if ref_inputs is None:
        routs, rgrads, _ = _run(ref, x, w, b, r, prenorm, fp32, dys=dys)
        assert [o.dtype for o in outs] == [o.dtype for o in routs]
    else:  # fp32 copies of the inputs: the truth for a bf16 run
        routs, rgrads, _ = _run(ref, *ref_inputs, prenorm, fp32, dys=[d.float() for d in dys])
        assert outs[0].dtype == x.dtype
    names = ["y", "residual_out"][: len(outs)] + ["dx", "dweight", "dbias", "dresidual"]
    names = names[: len(outs)] + [n for n, t in zip(names[len(outs):], (x, w, b, r)) if t is not None]
    for name, a, e in zip(names, (*outs, *grads), (*routs, *rgrads)):
        assert a.shape == e.shape and torch.isfinite(a.float()).all(), name
        if atol is not None:
            torch.testing.assert_close(a.double(), e.double(), atol=atol, rtol=atol, msg=name)
            continue
        t = tol if tol is not None else (BF16_TOL if a.dtype == torch.bfloat16 or e.dtype == torch.bfloat16
                                         else FP32_TOL)
        err = rel_rms(a, e)
        assert err <= t, f"{name}: rel RMS {err:.3g} > {t}"


# (x dtype, residual dtype or None, prenorm, residual_in_fp32)
RESIDUAL_CASES = [
    (torch.float32, None, False, False),
    (torch.float32, None, True, False),
    (torch.float32, torch.float32, True, False),
    (torch.float32, torch.float32, False, False),
    (torch.bfloat16, None, True, True),           # Vim's first block
    (torch.bfloat16, None, True, False),          # residual_out is x itself
    (torch.bfloat16, torch.float32, True, True),  # Vim's later blocks
    (torch.bfloat16, torch.float32, False, True),
    (torch.bfloat16, torch.bfloat16, True, False),
    (torch.bfloat16, torch.bfloat16, True, True),
    (torch.float32, torch.bfloat16, True, False),
]


@pytest.mark.parametrize("kind", ["rms", "ln"])
@pytest.mark.parametrize("n", [192, 100])
@pytest.mark.parametrize("case", RESIDUAL_CASES, ids=lambda c: "-".join(str(v).replace("torch.", "") for v in c))
def test_norm_vs_reference(kind, n, case):
    x_dtype, r_dtype, prenorm, fp32 = case
    bias = (n == 100) == (kind == "rms")  # both with and without bias across the grid
    x, w, b, r = _make((3, 7), n, x_dtype, r_dtype, bias)
    _check(kind, x, w, b, r, prenorm, fp32)


@pytest.mark.parametrize("kind", ["rms", "ln"])
def test_many_tiles_per_program(kind):
    """100 rows of width 8 = 7 row tiles over at most 4 backward programs: the dweight/dbias loop."""
    x, w, b, r = _make((100,), 8, torch.float32, torch.float32, True)
    _check(kind, x, w, b, r, True, True)


@pytest.mark.parametrize("kind", ["rms", "ln"])
def test_width_one(kind):
    x, w, b, r = _make((5,), 1, torch.float32, torch.float32, True)
    _check(kind, x, w, b, r, True, False, atol=1e-4)


def test_prenorm_unused_residual_out_and_unused_y():
    """With prenorm, a loss on y alone (no gradient into residual_out) and on residual_out alone."""
    x, w, b, r = _make((4,), 64, torch.float32, torch.float32, False)
    y, ro = rms_norm(x, w, None, r, prenorm=True)
    yr, ror = rms_norm_ref(x, w, None, r, prenorm=True)
    g = torch.autograd.grad(y.square().sum(), (x, w, r))
    gr = torch.autograd.grad(yr.square().sum(), (x, w, r))
    for a, e in zip(g, gr):
        assert rel_rms(a, e) <= FP32_TOL
    y, ro = rms_norm(x, w, None, r, prenorm=True)
    dx, dr = torch.autograd.grad(ro.sum(), (x, r))
    assert torch.equal(dx, torch.ones_like(x)) and torch.equal(dr, torch.ones_like(r))


def test_leading_dims_and_noncontiguous():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 40, 5, generator=g).transpose(1, 2).requires_grad_()  # [3, 5, 40], row stride != N
    w = torch.randn(40, generator=g).requires_grad_()
    _check("ln", x, w, None, None, False, False)


def test_reference_equations_and_gradcheck():
    x, w, b, r = _make((2, 3), 6, torch.float64, torch.float64, True)
    w, b = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    s = x + r
    expected = torch.nn.functional.layer_norm(s, (6,), w, b, eps=1e-5)
    assert torch.allclose(layer_norm_ref(x, w, b, r), expected)
    expected = torch.nn.functional.rms_norm(s, (6,), w, eps=1e-5)
    assert torch.allclose(rms_norm_ref(x, w, None, r), expected)
    for ref in (rms_norm_ref, layer_norm_ref):
        assert torch.autograd.gradcheck(lambda *a: ref(*a, prenorm=True), (x, w, b, r))


def test_errors():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError):
        rms_norm(x, torch.ones(7))
    with pytest.raises(ValueError):
        layer_norm(x, torch.ones(8), residual=torch.randn(2, 7))


# ---- GPU: realistic shapes, bf16 kernel vs fp32 reference ----------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kind", ["rms", "ln"])
@pytest.mark.parametrize("rows,n", [((64, 197), 192), ((64, 197), 768), ((8, 6085), 192), ((2, 4096), 2048)])
@pytest.mark.parametrize("bias", [False, True])
def test_gpu_bf16_vs_fp32_reference(kind, rows, n, bias):
    """Vim's block: bf16 hidden, fp32 residual, prenorm, residual_in_fp32; every gradient vs fp32 reference."""
    x, w, b, r = _make(rows, n, torch.bfloat16, torch.float32, bias, device="cuda")
    ref_inputs = tuple(t.detach().float().requires_grad_() if t is not None else None for t in (x, w, b, r))
    _check(kind, x, w, b, r, True, True, ref_inputs=ref_inputs, tol=1e-2)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kind", ["rms", "ln"])
@pytest.mark.parametrize("case", RESIDUAL_CASES, ids=lambda c: "-".join(str(v).replace("torch.", "") for v in c))
def test_gpu_residual_cases(kind, case):
    x_dtype, r_dtype, prenorm, fp32 = case
    x, w, b, r = _make((64, 197), 192, x_dtype, r_dtype, True, device="cuda")
    _check(kind, x, w, b, r, prenorm, fp32, tol=1e-2 if torch.bfloat16 in (x_dtype, r_dtype) else 1e-5)
