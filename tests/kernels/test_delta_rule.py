"""Chunked gated delta rule (kernels.delta_rule): Triton path (interpreter on CPU, compiled on CUDA) vs fp32 truth.

Truth: ``delta_rule_recurrent_ref`` (fp32 token loop) on fp32 copies of the (rounded) inputs. Loss =
(o . do).sum() + (h_T . dh_T).sum(); gradients of q, k, v, g, beta, h0 compared by relative RMS.

Tolerances: fp32 1e-5 for values and every gradient (measured ~1e-6). bf16 3e-2 for o/dq/dk/dv/dh0 and 5e-2 for
dbeta/dg: the interpreter truncates to bf16 (about twice the GPU's rounding error), o is stored in bf16 and
the dot operands (including W and the state in W S) are bf16; fla's own ratios are 0.008 / 0.02 against its
fp32 naive in fp16/bf16 runs. The GPU tests use the same bf16 bounds and 1e-4 in fp32 (long sums, other order).
"""
import os


import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels.common import rel_rms  # noqa: E402
from kernels.delta_rule import (  # noqa: E402
    chunk_gated_delta_rule,
    delta_rule_chunked_ref,
    delta_rule_recurrent_ref,
    delta_rule_step,
    l2norm,
)

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
TOL_GB = {torch.float32: 1e-5, torch.bfloat16: 5e-2}


def _inputs(B, T, H, K, V, dtype, gate=True, h0=True, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    q, k, v = r(B, T, H, K).to(dtype), r(B, T, H, K).to(dtype), r(B, T, H, V).to(dtype)
    g = F.logsigmoid(r(B, T, H)) if gate else None
    beta = torch.sigmoid(r(B, T, H))
    s0 = r(B, H, K, V) if h0 else None
    return [x.to(device).requires_grad_() if x is not None else None for x in (q, k, v, g, beta, s0)]


def _check(B, T, H, K, V, dtype, *, C=16, gate=True, h0=True, l2=True, device="cpu", fn=None, slack=1.0, **bwd):
    """``bwd``: the backward keywords (bwd_block_v) for the op under test."""
    ins = _inputs(B, T, H, K, V, dtype, gate, h0, device)
    q, k, v, g, beta, s0 = ins
    fn = chunk_gated_delta_rule if fn is None else fn
    o, ht = fn(q, k, v, g, beta, None, s0, True, l2, C, **bwd)
    assert o.dtype == dtype and o.shape == v.shape and ht.dtype == torch.float32
    rins = [x.detach().float().requires_grad_() if x is not None else None for x in ins]
    orf, hr = delta_rule_recurrent_ref(*rins[:5], None, rins[5], True, l2)
    gen = torch.Generator().manual_seed(1)
    do = torch.randn(orf.shape, generator=gen).to(device)
    dh = torch.randn(hr.shape, generator=gen).to(device)
    names = [n for n, x in zip(("q", "k", "v", "g", "beta", "h0"), ins) if x is not None]
    grads = torch.autograd.grad((o.float() * do).sum() + (ht * dh).sum(), [x for x in ins if x is not None])
    rgrads = torch.autograd.grad((orf * do).sum() + (hr * dh).sum(), [x for x in rins if x is not None])
    errs = {"o": rel_rms(o, orf), "ht": rel_rms(ht, hr)}
    errs.update({"d" + n: rel_rms(a, b) for n, a, b in zip(names, grads, rgrads)})
    for name, err in errs.items():
        bound = slack * (TOL_GB[dtype] if name in ("dg", "dbeta") else TOL[dtype])
        assert err == err and err < bound, f"{name}: rel RMS {err:.2e} >= {bound:.0e} ({errs})"
    return errs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,K,V,C", [(1, 16, 16, 16), (37, 16, 32, 16), (70, 64, 64, 64), (70, 128, 128, 64)])
def test_values_and_grads(dtype, T, K, V, C):
    _check(1, T, 2, K, V, dtype, C=C)


def test_ungated_no_l2norm_no_h0_batch2():
    """Plain DeltaNet with keys already normalised outside, no initial state."""
    ins = _inputs(2, 30, 1, 16, 16, torch.float32, gate=False, h0=False)
    q, k, v, _, beta, _ = [x.detach() if x is not None else None for x in ins]
    k = l2norm(k)
    o, ht = chunk_gated_delta_rule(q, k, v, None, beta, output_final_state=True, chunk_size=16)
    orf, hr = delta_rule_recurrent_ref(q, k, v, None, beta, None, None, True)
    assert rel_rms(o, orf) < 1e-5 and rel_rms(ht, hr) < 1e-5


def test_chunked_reference_matches_recurrent():
    _check(2, 45, 2, 16, 24, torch.float32, fn=delta_rule_chunked_ref)


def test_public_op_reference_path(monkeypatch):
    monkeypatch.setenv("SPEEDZOO_KERNELS", "reference")
    _check(1, 37, 1, 16, 16, torch.float32)


def test_step_reproduces_scan():
    q, k, v, g, beta, s0 = [x.detach() for x in _inputs(2, 9, 2, 16, 16, torch.float32)]
    q, k = l2norm(q), l2norm(k)
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    state, outs = s0, []
    for t in range(q.shape[1]):
        ot, state = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], state, g[:, t])
        outs.append(ot)
    assert rel_rms(torch.stack(outs, 1), o) < 1e-5 and rel_rms(state, ht) < 1e-5


def test_backward_v_blocks():
    """bwd_block_v=16 at V = 40: three V blocks of the fused backward, whose dq, dk, dW are summed over them."""
    _check(1, 37, 1, 16, 40, torch.float32, bwd_block_v=16)


def test_validation_errors():
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(ValueError, match=r"bwd_layout must be one of \('fused',\)"):
        chunk_gated_delta_rule(q, q, q, None, q[..., 0], bwd_layout="split")
    with pytest.raises(ValueError, match="power of two"):
        chunk_gated_delta_rule(q, q, q, None, q[..., 0], bwd_block_v=20)
    with pytest.raises(ValueError, match="beta"):
        chunk_gated_delta_rule(q, q, q, None, None)
    with pytest.raises(ValueError, match="g must be"):
        chunk_gated_delta_rule(q, q, q, q, q[..., 0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(2, 500, 4, 64), (2, 1024, 8, 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_vs_fp32_reference(shape, dtype):
    """Compiled kernels on the GPU (Hopper: fla's gated backward miscompiles under Triton 3.6; ours must not)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("GPU tests need compiled Triton: run with TRITON_INTERPRET=0")
    B, T, H, D = shape
    _check(B, T, H, D, D, dtype, C=64, device="cuda", slack=10.0 if dtype == torch.float32 else 1.0)
