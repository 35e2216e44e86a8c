"""Mixture-of-experts expert MLP and the expert-contiguous permutation of routed tokens.

``expert_mlp(x [T, d], expert_idx [T, k], gates [T, k], w1, w2, b1, b2, activation)`` computes
y[t] = sum_j gates[t, j] * MLP_{expert_idx[t, j]}(x[t]) with MLP_e(v) = act(v @ w1[e] + b1[e]) @ w2[e] + b2[e];
a slot with expert id -1 is dropped (adds nothing). ``w1 [E, d, H]`` for 'gelu' (exact erf, as timm's Mlp),
'relu', 'silu'; ``w1 [E, d, 2H]`` for 'swiglu' (first H columns the gate, last H the up projection);
``b1 [E, H or 2H]``, ``w2 [E, H, d]``, ``b2 [E, d]``, biases optional. Gradients reach x, gates, w1, b1, w2, b2
on every path. fp32, fp16 and bf16 inputs (one dtype for x and the weights); accumulation is fp32.

``impl`` picks the path (all give the same function):
  'reference'  kernels.moe.reference: per-expert masks in fp32, the truth of the tests;
  'loop'       slots sorted by expert, one matmul pair per expert in the input dtype (a host sync for the
               counts); the CPU path;
  'grouped_mm' slots sorted by expert, ``torch._grouped_mm`` for both GEMMs (CUDA needs bf16 and 16-byte
               aligned rows: d and H multiples of 8);
  'triton'     kernels.moe.triton: grouped GEMMs with the gather, activation and combine fused, forward and
               backward (CUDA tensors, or any under TRITON_INTERPRET=1);
  'auto'       'triton' where kernels.common.use_triton says so (CUDA tensors, the interpreter), else 'loop';
               except when training on CUDA in bf16 at d * H <= 768 * 3072 (widths multiples of 8), where
               'grouped_mm' is taken: on the H200 (benchmarks/results/moe.md, 2026-12-02) our forward beats it at
               all three shapes (1.45x, 1.84x, 1.61x) but forward+backward loses at (384, 1536) and (768, 3072)
               (0.84x, 0.81x) and wins only at (1024, 4096) (1.11x).
Under torch.autocast the GEMMs run in the autocast dtype. Bad arguments raise ValueError naming the fix.
``autotune`` (Triton path only; default on, off in the interpreter) autotunes the GEMM launch configs per shape.

``permute_tokens(expert_idx, E)`` gives the expert-contiguous order (:class:`kernels.moe.permute.Permutation`).
"""
from __future__ import annotations

import torch

from kernels.common import needs_grad, use_triton
from kernels.moe.permute import Permutation, check_expert_idx, permute_tokens, sort_slots
from kernels.moe.reference import ACTIVATIONS, activate, expert_mlp_ref

__all__ = ["expert_mlp", "permute_tokens", "Permutation", "expert_mlp_ref", "IMPLS", "ACTIVATIONS"]

IMPLS = ("auto", "reference", "loop", "grouped_mm", "triton")
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _validate(x, expert_idx, gates, w1, w2, b1, b2, activation, impl):
    if impl not in IMPLS:
        raise ValueError(f"expert_mlp: impl must be one of {IMPLS}, got {impl!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"expert_mlp: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 2:
        raise ValueError(f"expert_mlp: x must be [T, d] (flatten batch and tokens first), got {tuple(x.shape)}")
    T, d = x.shape
    if w1.dim() != 3 or w1.shape[1] != d:
        raise ValueError(f"expert_mlp: w1 must be [E, d={d}, H] (or [E, d, 2H] for swiglu), got {tuple(w1.shape)}")
    E, width = w1.shape[0], w1.shape[2]
    if activation == "swiglu" and width % 2:
        raise ValueError(f"expert_mlp: swiglu needs w1 [E, d, 2H] (gate then up), got an odd width {width}")
    H = width // 2 if activation == "swiglu" else width
    if w2.shape != (E, H, d):
        raise ValueError(f"expert_mlp: w2 must be [E={E}, H={H}, d={d}], got {tuple(w2.shape)}")
    if b1 is not None and b1.shape != (E, width):
        raise ValueError(f"expert_mlp: b1 must be [E={E}, {width}], got {tuple(b1.shape)}")
    if b2 is not None and b2.shape != (E, d):
        raise ValueError(f"expert_mlp: b2 must be [E={E}, d={d}], got {tuple(b2.shape)}")
    check_expert_idx(expert_idx, E, "expert_mlp")
    if expert_idx.shape[0] != T:
        raise ValueError(f"expert_mlp: expert_idx must be [T={T}, k], got {tuple(expert_idx.shape)}")
    if gates.shape != expert_idx.shape:
        raise ValueError(f"expert_mlp: gates must match expert_idx's shape {tuple(expert_idx.shape)}, "
                         f"got {tuple(gates.shape)}")
    if x.dtype not in _FLOATS or not gates.dtype.is_floating_point:
        raise ValueError(f"expert_mlp: x must be fp32/fp16/bf16 and gates floating, got {x.dtype}, {gates.dtype}")
    for name, t in (("w1", w1), ("w2", w2), ("b1", b1), ("b2", b2)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"expert_mlp: {name} must share x's dtype {x.dtype}, got {t.dtype} "
                             f"(cast the weights or the input, e.g. under torch.autocast)")


def _sorted_slots(expert_idx, gates, E):
    """(permutation, token of every sorted slot, gate of every sorted slot, expert of every sorted slot)."""
    perm = sort_slots(expert_idx, E)
    k = expert_idx.shape[1]
    eid = expert_idx.reshape(-1)[perm.order]
    return perm, perm.order // k, gates.reshape(-1)[perm.order], eid


def _combine(y_shape, tok, gate, out, dtype):
    """Weighted scatter-add of the slots' outputs into their tokens, in fp32."""
    y = out.new_zeros(y_shape, dtype=torch.float32)
    return y.index_add(0, tok, gate.float()[:, None] * out.float()).to(dtype)


def _loop(x, expert_idx, gates, w1, w2, b1, b2, activation):
    E = w1.shape[0]
    perm, tok, gate, _ = _sorted_slots(expert_idx, gates, E)
    kept = int(perm.offsets[-1])  # host sync: the loop's slices need the counts on the host
    tok, gate = tok[:kept], gate[:kept]
    outs = []
    # empty experts too (a zero-row matmul): every weight stays in the graph and gets a zero gradient, as on
    # the other paths, instead of None (which autograd.grad and DDP's unused-parameter check refuse)
    for e, rows in enumerate(x[tok].split(perm.counts.tolist())):
        pre = rows @ w1[e] if b1 is None else torch.addmm(b1[e], rows, w1[e])
        h = activate(pre, activation)
        outs.append(h @ w2[e] if b2 is None else torch.addmm(b2[e], h, w2[e]))
    out = torch.cat(outs)
    return _combine(x.shape, tok, gate, out, x.dtype)


def _bias_rows(b, eid, dtype):
    """Every slot's expert bias, gathered through fp32: the gather's backward then sums each expert's thousands
    of slot gradients in fp32 (a bf16 index_add loses ~6% of the bias gradient at the benchmark shapes)."""
    return b.float()[eid].to(dtype)


def _grouped_mm(x, expert_idx, gates, w1, w2, b1, b2, activation):
    """Both GEMMs as torch._grouped_mm over all T*k sorted slots (dropped ones last, past the final offset).

    Rows past the final offset are never written by _grouped_mm (they hold garbage), so they are masked with
    torch.where before the combine and before the gather's backward (where is NaN-safe, a product is not).
    """
    E = w1.shape[0]
    if x.is_cuda and (x.dtype != torch.bfloat16 or any(n % 8 for n in (x.shape[1], w1.shape[2], w2.shape[1]))):
        raise ValueError(f"expert_mlp: impl='grouped_mm' on CUDA needs bf16 inputs with d, H (and 2H) multiples "
                         f"of 8 (torch._grouped_mm's 16-byte rows), got {x.dtype}, d={x.shape[1]}, "
                         f"H={w2.shape[1]}; cast to bf16 or use impl='triton'")
    perm, tok, gate, eid = _sorted_slots(expert_idx, gates, E)
    valid = (eid >= 0)[:, None]
    eid = eid.clamp(min=0)
    offs = perm.offsets[1:].to(torch.int32)
    xs = torch.where(valid, x[tok], 0)
    pre = torch._grouped_mm(xs, w1, offs=offs)
    if b1 is not None:
        pre = pre + torch.where(valid, _bias_rows(b1, eid, pre.dtype), 0)
    h = torch.where(valid, activate(pre, activation), 0)
    out = torch._grouped_mm(h, w2, offs=offs)
    if b2 is not None:
        out = out + _bias_rows(b2, eid, out.dtype)
    return _combine(x.shape, tok, torch.where(valid[:, 0], gate, 0), torch.where(valid, out, 0), x.dtype)


GROUPED_MM_TRAIN_MAX_DH = 768 * 3072
"""Largest d * H at which training takes torch._grouped_mm over our kernels (the module doc's measurements)."""


def _auto_impl(x, gates, w1, w2, b1, b2) -> str:
    if not use_triton(x, w1, w2):
        return "loop"
    d, H = w2.shape[2], w2.shape[1]
    training = needs_grad(x, gates, w1, w2, b1, b2)
    if (training and x.is_cuda and x.dtype == torch.bfloat16 and d % 8 == 0 and H % 8 == 0
            and d * H <= GROUPED_MM_TRAIN_MAX_DH):
        return "grouped_mm"
    return "triton"


def expert_mlp(x, expert_idx, gates, w1, w2, b1=None, b2=None, activation="gelu", impl="auto", *, autotune=None):
    """y [T, d] in x's dtype: the gate-weighted sum of each token's routed experts' MLPs (see the module doc).

    Under torch.autocast the GEMMs run in the autocast dtype, as nn.Linear's would: x and the weights are cast
    (their gradients flow back through the casts) and y comes out in that dtype.
    """
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        x, w1, w2, b1, b2 = (t.to(dt) if t is not None and t.is_floating_point() else t for t in (x, w1, w2, b1, b2))
    _validate(x, expert_idx, gates, w1, w2, b1, b2, activation, impl)
    if impl == "auto":
        impl = _auto_impl(x, gates, w1, w2, b1, b2)
    if impl == "triton":
        from kernels.moe.triton import expert_mlp_triton

        return expert_mlp_triton(x, expert_idx, gates, w1, w2, b1, b2, activation, autotune)
    if impl == "reference":
        return expert_mlp_ref(x, expert_idx, gates, w1, w2, b1, b2, activation)
    if impl == "grouped_mm":
        return _grouped_mm(x, expert_idx, gates, w1, w2, b1, b2, activation)
    return _loop(x, expert_idx, gates, w1, w2, b1, b2, activation)
