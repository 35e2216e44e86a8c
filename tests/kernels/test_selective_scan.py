"""Selective scan: Triton path (interpreter on CPU, compiled on GPU) and the PyTorch path vs the fp32 token loop.

The Triton path has two variants (kernels.selective_scan.triton.scan_plan): sequential (one program walks all
L tokens) and chunk-parallel along L (segments scanned from zero, combined, rescanned; backward likewise).
The chunk-parallel tests force it with the keywords ``variant="chunked", seg=16`` (rounded up to one
backward chunk) so the interpreter sees several segments, partial last segments, and L below one segment.

Metric: relative RMS error (kernels.common.rel_rms) of the output and of every input gradient.
Tolerances: fp32 inputs 1e-5 (CPU interpreter) / 1e-4 (GPU); bf16 inputs 1e-2 (outputs and gradients are
rounded to bf16, ~4e-3 RMS); the reference always runs in fp32 on the same (upcast) input values.
"""


import pytest  # noqa: E402
import torch  # noqa: E402

from kernels.common import rel_rms  # noqa: E402
from kernels.selective_scan import (  # noqa: E402
    selective_scan,
    selective_scan_torch,
    selective_scan_ref,
    selective_state_update,
)

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def make_inputs(batch, dim, L, n, groups=None, dtype=torch.float32, has_D=True, has_z=True, has_bias=True,
                device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    u = rn(batch, dim, L).to(dtype)
    delta = rn(batch, dim, L, scale=0.5).to(dtype)
    A = -(torch.rand(dim, n, generator=g) * 2 + 0.1).to(device)      # real, negative: decays in (0, 1)
    bc_shape = (batch, n, L) if groups is None else (batch, groups, n, L)
    B = rn(*bc_shape).to(dtype)
    C = rn(*bc_shape).to(dtype)
    D = rn(dim) if has_D else None
    z = rn(batch, dim, L).to(dtype) if has_z else None
    bias = rn(dim, scale=0.3) if has_bias else None
    return [u, delta, A, B, C, D, z, bias]


def run_with_grads(fn, inputs, dy, **kw):
    """Output and the gradient of <y, dy> for every present input (inputs are fresh leaves)."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    y = fn(*leaves, **kw)
    y = y[0] if isinstance(y, tuple) else y
    present = [x for x in leaves if x is not None]
    grads = torch.autograd.grad((y.float() * dy).sum(), present)
    it = iter(grads)
    return y, [next(it) if x is not None else None for x in leaves]


def compare(inputs, tol, ref_fn=selective_scan_ref, scan_kw=None, **kw):
    """Triton (or dispatched) path on `inputs` vs `ref_fn` on fp32 copies; asserts value and all gradients.

    ``scan_kw``: the Triton-path keywords (variant, seg, chunk, autotune), given to the op under test only."""
    ref_inputs = [x.detach().float() if x is not None else None for x in inputs]
    dy = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(inputs[0].device)
    y, grads = run_with_grads(selective_scan, inputs, dy, **kw, **(scan_kw or {}))
    y_ref, grads_ref = run_with_grads(ref_fn, ref_inputs, dy, **kw)
    assert y.dtype == inputs[0].dtype
    errs = {"y": rel_rms(y, y_ref)}
    for name, g_, r in zip(NAMES, grads, grads_ref):
        if r is not None:
            assert g_ is not None and g_.shape == r.shape, name
            assert torch.isfinite(g_.float()).all(), name
            errs["d" + name] = rel_rms(g_, r)
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"rel RMS above {tol}: {bad} (all: {errs})"
    return errs


# ----------------------------------------------------------------------------------------------- CPU / interpreter

CASES = [
    # batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse
    (2, 6, 37, 16, None, True, True, True, True, False),    # L > one chunk, not a multiple; D not a power of two
    (1, 12, 40, 16, 2, True, True, True, True, True),       # grouped B/C, reverse
    (1, 3, 1, 1, None, False, False, False, False, False),  # L = 1, N = 1, nothing optional
    (2, 5, 19, 1, None, True, False, True, False, True),    # N = 1, no gate, reverse
    (1, 4, 70, 16, None, False, True, False, True, False),  # three chunks
]


@pytest.mark.parametrize("case", CASES)
def test_triton_fp32_matches_ref(case):
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.float32, has_D, has_z, has_bias)
    compare(inputs, TOL[torch.float32], delta_softplus=softplus, reverse=reverse)


@pytest.mark.parametrize("case", [CASES[0], CASES[1]])
def test_triton_bf16_matches_ref(case):
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.bfloat16, has_D, has_z, has_bias)
    compare(inputs, TOL[torch.bfloat16], delta_softplus=softplus, reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_last_state(reverse):
    inputs = make_inputs(2, 6, 37, 16, groups=2)
    y, last = selective_scan(*inputs, delta_softplus=True, reverse=reverse, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(*inputs, delta_softplus=True, reverse=reverse, return_last_state=True)
    assert last.shape == (2, 6, 16) and last.dtype == torch.float32
    assert rel_rms(last, last_ref) < 1e-5 and rel_rms(y, y_ref) < 1e-5


def test_reverse_equals_flipped_forward():
    inputs = make_inputs(1, 4, 21, 16)
    flip = [x.flip(-1) if x is not None and x.dim() >= 3 else x for x in inputs]
    y_rev = selective_scan(*inputs, delta_softplus=True, reverse=True)
    y_flip = selective_scan(*flip, delta_softplus=True).flip(-1)
    assert rel_rms(y_rev, y_flip) < 1e-6


@pytest.mark.parametrize("case", CASES)
def test_torch_path_matches_ref(case):
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.float32, has_D, has_z, has_bias)
    dy = torch.randn(inputs[0].shape)
    kw = dict(delta_softplus=softplus, reverse=reverse)
    y, grads = run_with_grads(selective_scan_torch, inputs, dy, **kw)
    y_ref, grads_ref = run_with_grads(selective_scan_ref, inputs, dy, **kw)
    assert rel_rms(y, y_ref) < 1e-5
    for name, g_, r in zip(NAMES, grads, grads_ref):
        if r is not None:
            assert rel_rms(g_, r) < 1e-5, name


def test_torch_path_tiny_decays_stay_finite():
    """Huge Δ·|A| (decays underflow to 0) must not produce inf/nan in the PyTorch path."""
    inputs = make_inputs(1, 4, 50, 16, has_bias=False)
    inputs[1] = inputs[1].abs() * 200
    y = selective_scan_torch(*inputs)
    y_ref = selective_scan_ref(*inputs)
    assert torch.isfinite(y).all() and rel_rms(y, y_ref) < 1e-5


def test_dispatch_uses_reference_when_asked(monkeypatch):
    monkeypatch.setenv("SPEEDZOO_KERNELS", "reference")
    inputs = make_inputs(1, 3, 9, 4)
    assert rel_rms(selective_scan(*inputs, delta_softplus=True), selective_scan_ref(*inputs, delta_softplus=True)) < 1e-5


def test_ref_gradcheck_fp64():
    g = torch.Generator().manual_seed(0)
    batch, dim, L, n = 1, 2, 5, 3

    def rn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    u, delta, z, B, C, D, bias = rn(batch, dim, L), rn(batch, dim, L), rn(batch, dim, L), rn(batch, n, L), \
        rn(batch, n, L), rn(dim), rn(dim)
    A = (-torch.rand(dim, n, generator=g, dtype=torch.float64) - 0.1).requires_grad_()

    def f(*args):
        return selective_scan_ref(*args, delta_softplus=True, reverse=True)

    assert torch.autograd.gradcheck(f, (u, delta, A, B, C, D, z, bias), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_reproduces_scan(groups):
    u, delta, A, B, C, D, z, bias = make_inputs(2, 6, 11, 16, groups)
    y_full, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True)
    state = torch.zeros(2, 6, 16)
    ys = []
    for t in range(u.shape[-1]):
        y_t, state = selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t],
                                            bias, delta_softplus=True)
        ys.append(y_t)
    assert rel_rms(torch.stack(ys, -1), y_full) < 1e-5
    assert rel_rms(state, last) < 1e-5


def test_validation_errors():
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 8, 16)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match="delta must have"):
        selective_scan(u, delta[..., :4], A, B, C)
    with pytest.raises(ValueError, match="grouped B"):
        selective_scan(u, delta, A, B[:, None].expand(1, 3, 16, 8), C)
    with pytest.raises(ValueError, match="D must have"):
        selective_scan(u, delta, A, B, C, D=torch.zeros(5))
    with pytest.raises(ValueError, match="float32"):
        selective_scan(u, delta, A.double(), B, C)


def test_noncontiguous_inputs():
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 12, 8)
    u_nc = u.transpose(1, 2).contiguous().transpose(1, 2)
    B_nc = B.transpose(1, 2).contiguous().transpose(1, 2)
    y = selective_scan(u_nc, delta, A, B_nc, C, D, z, bias, delta_softplus=True)
    assert rel_rms(y, selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True)) < 1e-5


# ----------------------------------------------------------------------------------------------- chunk-parallel

CHUNKED_CASES = [
    # batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse  (segments of 32 tokens)
    (2, 6, 37, 16, None, True, True, True, True, False),    # 2 segments, the last of 5 tokens
    (1, 8, 70, 16, 2, True, True, True, True, True),        # grouped B/C, reverse, 3 segments
    (1, 3, 1, 1, None, False, False, False, False, False),  # L = 1, nothing optional
    (2, 5, 19, 1, None, True, False, True, False, True),    # L < one segment, no gate, reverse
    (1, 4, 100, 16, None, False, True, False, True, False),  # 4 segs
]


CHUNKED = dict(variant="chunked", seg=16)  # the chunk-parallel variant, segments rounded up to one chunk (16)


@pytest.mark.parametrize("case", CHUNKED_CASES)
def test_chunk_parallel_fp32_matches_ref(case):
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.float32, has_D, has_z, has_bias)
    compare(inputs, TOL[torch.float32], scan_kw=CHUNKED, delta_softplus=softplus, reverse=reverse)


def test_chunk_parallel_bf16_matches_ref():
    inputs = make_inputs(1, 8, 40, 16, 2, torch.bfloat16)
    compare(inputs, TOL[torch.bfloat16], scan_kw=CHUNKED, delta_softplus=True, reverse=True)


@pytest.mark.parametrize("reverse", [False, True])
def test_chunk_parallel_last_state(reverse):
    inputs = make_inputs(1, 4, 75, 16)
    y, last = selective_scan(*inputs, delta_softplus=True, reverse=reverse, return_last_state=True, **CHUNKED)
    y_ref, last_ref = selective_scan_ref(*inputs, delta_softplus=True, reverse=reverse, return_last_state=True)
    assert last.shape == (1, 4, 16) and last.dtype == torch.float32
    assert rel_rms(last, last_ref) < 1e-5 and rel_rms(y, y_ref) < 1e-5


@pytest.mark.parametrize("chunk", [4, 8])
@pytest.mark.parametrize("variant", ["sequential", "chunked"])
def test_shorter_backward_tile_matches_ref(chunk, variant):
    """chunk=: states stored every 4 / 8 tokens, the backward tiled to match (both variants; chunked: segments
    of max(8, chunk) tokens)."""
    inputs = make_inputs(1, 8, 37, 16, 2, torch.float32, True, True, True)
    compare(inputs, TOL[torch.float32], scan_kw=dict(chunk=chunk, variant=variant, seg=8), delta_softplus=True,
            reverse=True)


def test_keywords_reach_the_launchers(monkeypatch):
    """variant / seg / chunk / autotune pass through the custom op into the launch plan of forward and backward."""
    import kernels.selective_scan.triton as scan_triton

    plans = []
    for name, at in (("selective_scan_fwd", 11), ("selective_scan_bwd", 12)):    # the plan's position
        real = getattr(scan_triton, name)
        monkeypatch.setattr(scan_triton, name, lambda *a, _real=real, _at=at: plans.append(a[_at:]) or _real(*a))
    inputs = make_inputs(1, 4, 40, 16)
    compare(inputs, TOL[torch.float32], scan_kw=dict(variant="chunked", seg=9, chunk=8, autotune=True),
            delta_softplus=True)
    # seg rounded up to the chunk; autotune stays off in the interpreter, which has no configs to time
    assert plans == [(("chunked", 16, 8, False), None), (("chunked", 16, 8, False),)]
    plans.clear()
    selective_scan(*inputs, delta_softplus=True)
    assert plans == [(("sequential", 40, 16, False), None)]
    plans.clear()
    # the token layout is the forward's alone: the backward keeps its own variant and reads the same chunk
    compare(inputs, TOL[torch.float32], scan_kw=dict(variant="chunked", seg=16, chunk=8, layout="token",
                                                     tile=(4, 4, 1, 1)), delta_softplus=True)
    assert plans == [(("token", 40, 8, False), (4, 4, 1, 1)), (("chunked", 16, 8, False),)]


@pytest.mark.parametrize("has_D_z_bias", [True, False])
def test_compiles_as_one_graph_with_the_kernels_as_opaque_ops(has_D_z_bias):
    """torch.compile traces the op around the Triton launchers (custom ops): one graph, no break, and the
    compiled forward and backward equal eager ones."""
    flag = has_D_z_bias
    inputs = make_inputs(2, 4, 11, 3, has_D=flag, has_z=flag, has_bias=flag)
    dy = torch.randn(2, 4, 11, generator=torch.Generator().manual_seed(3))

    def fn(*xs):
        return selective_scan(*xs, delta_softplus=True, reverse=True)

    explain = torch._dynamo.explain(fn)(*inputs)
    assert (explain.graph_count, explain.graph_break_count) == (1, 0), explain.break_reasons
    y, grads = run_with_grads(fn, inputs, dy)
    torch._dynamo.reset()
    y_c, grads_c = run_with_grads(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs, dy)
    assert rel_rms(y_c, y) < 1e-6
    for g_c, g in zip(grads_c, grads):
        assert (g_c is None) == (g is None) and (g is None or rel_rms(g_c, g) < 1e-6)


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) functions and dispatch of the two launcher ops, as torch.library checks them."""
    from kernels.selective_scan.triton import chunk_size_for

    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 9, 2)
    B4, C4 = B.unsqueeze(1), C.unsqueeze(1)
    plan = ("sequential", 9, chunk_size_for(2), False)
    fwd_args = (u, delta, A, B4, C4, D, z, bias, True, False, True, *plan, [])
    torch.library.opcheck(torch.ops.speedzoo.selective_scan_fwd.default, fwd_args,
                          test_utils=("test_schema", "test_faketensor"))
    token_args = (u, delta, A, B4, C4, D, z, bias, True, False, True, "token", 9, plan[2], False, [2, 4, 1, 1])
    torch.library.opcheck(torch.ops.speedzoo.selective_scan_fwd.default, token_args,
                          test_utils=("test_schema", "test_faketensor"))
    _, _, states = torch.ops.speedzoo.selective_scan_fwd(*fwd_args)
    bwd_args = (torch.randn_like(u), u, delta, A, B4, C4, None, z, bias, states, True, False, *plan)
    torch.library.opcheck(torch.ops.speedzoo.selective_scan_bwd.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_keywords_are_checked_on_every_path(backend, monkeypatch):
    """A bad variant, segment or chunk fails the same way on the reference path as on the Triton path."""
    monkeypatch.setenv("SPEEDZOO_KERNELS", backend)
    inputs = make_inputs(1, 3, 9, 4)
    with pytest.raises(ValueError, match="chunk must be one of"):
        selective_scan(*inputs, chunk=12)
    with pytest.raises(ValueError, match="variant must be one of"):
        selective_scan(*inputs, variant="parallel")
    with pytest.raises(ValueError, match="seg must be a positive"):
        selective_scan(*inputs, variant="chunked", seg=0)


def test_backward_configs_put_one_channel_on_each_lane():
    """The backward's tile keeps tokens in-thread only when BLOCK_D = 32 x warps; a B/C group narrower than
    a warp falls back to one small config instead of straddling groups."""
    from kernels.selective_scan.triton import _BWD_CONFIGS, _prune

    kept = _prune(_BWD_CONFIGS, {"BD_CAP": 1 << 30}, CHUNK=16)
    assert kept and all(c.kwargs["BLOCK_D"] == 32 * c.num_warps for c in kept)
    assert [c.kwargs["BLOCK_D"] for c in _prune(_BWD_CONFIGS, {"BD_CAP": 64}, CHUNK=16)] == [32, 64]
    (small,) = _prune(_BWD_CONFIGS, {"BD_CAP": 8}, CHUNK=16)
    assert small.kwargs["BLOCK_D"] <= 8


def test_scan_plan_heuristic():
    """Sequential when (batch x 32-channel blocks) fills the GPU, chunked when it does not (132 SMs)."""
    from kernels.selective_scan.triton import MAX_SEGS, chunk_size_for, scan_plan

    assert scan_plan(128, 384, 197, 16, 132, "auto")[0] == "sequential"
    assert scan_plan(128, 768, 197, 16, 132, "auto")[0] == "sequential"
    assert scan_plan(8, 2048, 4096, 16, 132, "auto")[0] == "sequential"   # 512 programs: measured faster
    for shape in [(8, 384, 6085, 16), (8, 384, 4097, 16), (2, 2048, 4096, 16), (1, 64, 600_000, 16)]:
        variant, seg = scan_plan(*shape, 132, "auto")
        assert variant == "chunked", shape
        assert seg % chunk_size_for(shape[3]) == 0 and -(-shape[2] // seg) <= MAX_SEGS, (shape, seg)
    assert scan_plan(8, 384, 300, 16, 132, "auto")[0] == "sequential"      # too short to split
    assert scan_plan(8, 384, 6085, 16, 132, "sequential") == ("sequential", 6085)
    assert scan_plan(1, 4, 100, 16, 132, "chunked", 20) == ("chunked", 32)   # rounded up to the chunk (16)
    with pytest.raises(ValueError, match="variant must be one of"):
        scan_plan(1, 4, 100, 16, 132, "parallel")


# ----------------------------------------------------------------------------------------------- GPU

# The four benchmark shapes (B, D, L, N) at small batch: Vim-Ti 224, Vim-Ti 1248, Vim-S 224, LM-like.
# Token-parallel forward (layout="token"): tiles of tokens-per-thread x groups shorter than L so that several
# tiles carry state, tiles longer than the chunk (states stored inside a tile), a non-power-of-2 N, both
# directions; gradients through the channel layout's backward from the states this forward stored.
TOKEN_CASES = [
    # batch, dim, L, n, groups, reverse, tile
    ((2, 6, 37, 16, None, False), (4, 8, 2, 1)),     # 2 tiles of 32, chunk 16 inside each
    ((1, 5, 300, 12, None, True), (2, 16, 1, 2)),    # N = 12, 10 tiles, reverse
    ((1, 12, 300, 16, 2, False), (8, 4, 2, 2)),      # grouped B/C (channel block inside a group)
    ((2, 4, 37, 16, None, True), (1, 8, 4, 1)),      # one token per thread: the group scan alone
    ((1, 4, 40, 8, None, False), (8, 1, 1, 1)),      # one group: the in-thread scan alone
]


@pytest.mark.parametrize("case,tile", TOKEN_CASES)
def test_token_layout_fp32_matches_ref(case, tile):
    batch, dim, L, n, groups, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups=groups)
    compare(inputs, TOL[torch.float32], scan_kw=dict(layout="token", tile=tile), delta_softplus=True,
            reverse=reverse)


@pytest.mark.parametrize("reverse", [False, True])
def test_token_layout_last_state_and_no_grad(reverse):
    """Without a gradient (no stored states) the token layout gives the same y and last state."""
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 70, 16)
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True, reverse=reverse, return_last_state=True)
    y, last = selective_scan(u, delta, A, B, C, **kw, layout="token", tile=(4, 4, 2, 1))
    y_ref, last_ref = selective_scan_ref(u, delta, A, B, C, **kw)
    assert rel_rms(y, y_ref) < 1e-5 and rel_rms(last, last_ref) < 1e-5


def test_token_layout_keywords_are_checked():
    u, delta, A, B, C, *_ = make_inputs(1, 4, 9, 2)
    for bad in (dict(layout="lanes"), dict(layout="channel", tile=(4, 8, 1, 1)), dict(layout="token", tile=(3, 8, 1, 1)),
                dict(layout="token", tile=(4, 8, 1))):
        with pytest.raises(ValueError, match="layout|tile"):
            selective_scan(u, delta, A, B, C, **bad)
    groups = make_inputs(1, 4, 9, 2, groups=2)
    with pytest.raises(ValueError, match="straddle"):
        selective_scan(*groups[:5], layout="token", tile=(4, 8, 4, 1))


# Lane forward layout (layout="lane": one channel per lane, the tile's tokens and all N states in-thread, B / C
# broadcast from fp32 transposed copies): the interpreter runs BLOCK_L = min(8, chunk), so L = 37 ends inside a
# tile and a chunk of 16 spans two tiles (states stored at every other tile end); gradients through the
# unchanged backward from the chunk states the lane forward stored.
LANE_CASES = [
    # batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse, Triton keywords
    ((2, 6, 37, 16, None, True, True, True, True, False), {}),          # 2 tiles per chunk, L not a multiple
    ((1, 8, 37, 12, 2, True, True, True, True, True), {}),              # N = 12, grouped B/C, reverse
    ((2, 5, 19, 1, None, True, False, True, False, True), dict(chunk=4)),   # N = 1, BLOCK_L = chunk = 4
    ((1, 3, 1, 1, None, False, False, False, False, False), {}),        # L = 1, nothing optional
    ((1, 4, 70, 16, None, False, True, False, True, False), CHUNKED),   # chunk-parallel: 5 segments of 16
    ((1, 8, 37, 12, 2, True, True, True, True, True), CHUNKED),         # chunk-parallel, reverse, partial last
]


@pytest.mark.parametrize("case,scan_kw", LANE_CASES)
def test_lane_layout_fp32_matches_ref(case, scan_kw):
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.float32, has_D, has_z, has_bias)
    compare(inputs, TOL[torch.float32], scan_kw=dict(scan_kw, layout="lane"), delta_softplus=softplus,
            reverse=reverse)


def test_compiled_lane_layout_skips_groups_narrower_than_a_warp(monkeypatch):
    """Off the interpreter, layout="lane" where B / C groups cap a program below 32 channels (4 per group, or 48:
    a power-of-two block of at most 16) launches the channel-layout kernel (the compiled lane kernel gave a wrong
    y there on the H200); 32-channel groups and ungrouped B / C keep it."""
    import kernels.selective_scan.triton as st

    launched = []
    real = st._launch

    def spy(fixed, *args, **kw):
        launched.append(fixed.__name__ if hasattr(fixed, "__name__") else fixed.fn.__name__)
        return real(fixed, *args, **kw)

    monkeypatch.setattr(st, "_launch", spy)
    monkeypatch.setattr(st, "interpreting", lambda: False)   # the guard's view; the launch still interprets
    for dim, groups, want in ((8, 2, "_fwd_kernel"), (96, 2, "_fwd_kernel"), (64, 2, "_lane_fwd_kernel"),
                              (8, None, "_lane_fwd_kernel")):
        launched.clear()
        inputs = make_inputs(1, dim, 9, 4, groups)
        with torch.no_grad():
            y = selective_scan(*inputs, delta_softplus=True, layout="lane", variant="sequential", autotune=False)
        ref = selective_scan_ref(*inputs, delta_softplus=True)
        assert launched == [want] and rel_rms(y, ref) < TOL[torch.float32], (dim, groups, launched)


def test_lane_layout_bf16_matches_ref():
    inputs = make_inputs(1, 8, 37, 16, 2, torch.bfloat16)
    compare(inputs, TOL[torch.bfloat16], scan_kw=dict(layout="lane"), delta_softplus=True, reverse=True)


@pytest.mark.parametrize("variant", ["sequential", "chunked"])
@pytest.mark.parametrize("reverse", [False, True])
def test_lane_layout_last_state_and_no_grad(variant, reverse):
    """Without a gradient (no stored states, any tile) the lane layout gives the reference y and last state."""
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 45, 12)
    kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True, reverse=reverse, return_last_state=True)
    y, last = selective_scan(u, delta, A, B, C, **kw, layout="lane", variant=variant, seg=16)
    y_ref, last_ref = selective_scan_ref(u, delta, A, B, C, **kw)
    assert rel_rms(y, y_ref) < 1e-5 and rel_rms(last, last_ref) < 1e-5


def test_lane_layout_runs_the_lane_kernel(monkeypatch):
    """layout="lane" reaches the launcher as the forward variant "lane" / "lane_chunked" and launches
    _lane_fwd_kernel only (the backward keeps its plan); layout="lane" with a tile is refused."""
    import kernels.selective_scan.triton as scan_triton

    plans, kernels = [], []
    real_fwd, real_launch = scan_triton.selective_scan_fwd, scan_triton._launch
    monkeypatch.setattr(scan_triton, "selective_scan_fwd", lambda *a: plans.append(a[11]) or real_fwd(*a))
    monkeypatch.setattr(scan_triton, "_launch",
                        lambda fixed, *a, **kw: kernels.append(fixed.fn.__name__) or real_launch(fixed, *a, **kw))
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 40, 4)
    for variant, want in (("sequential", ("lane", 40, 16, False)), ("chunked", ("lane_chunked", 16, 16, False))):
        plans.clear()
        kernels.clear()
        with torch.no_grad():
            selective_scan(u, delta, A, B, C, D, z, bias, True, layout="lane", variant=variant, seg=16)
        assert plans == [want] and kernels and set(kernels) == {"_lane_fwd_kernel"}
    with pytest.raises(ValueError, match="tile applies to layout='token' only"):
        selective_scan(u, delta, A, B, C, layout="lane", tile=(4, 8, 1, 1))


@pytest.mark.parametrize("variant,seg", [("sequential", 37), ("chunked", 16)])
@pytest.mark.parametrize("reverse", [False, True])
def test_lane_layout_stores_the_channel_layouts_states(variant, seg, reverse):
    """The lane forward writes the backward's chunk states (and y, the last state) where and as the channel
    forward does: the launcher op run with both plans on the same inputs (chunk 16: states at tokens 0, 16, 32
    of L = 37 in scan order; N = 12)."""
    from kernels.selective_scan.options import lane_variant

    u, delta, A, B, C, D, z, bias = make_inputs(2, 8, 37, 12, groups=2)            # B, C [2, 2, 12, 37]
    outs = {}
    for v in (variant, lane_variant(variant)):
        outs[v] = torch.ops.speedzoo.selective_scan_fwd(u, delta, A, B, C, D, z, bias, True, reverse, True, v,
                                                        seg, 16, False, [])
    (y, last, states), (y_l, last_l, states_l) = outs.values()
    assert states_l.shape == states.shape == (2, 8, 3, 12)
    assert torch.allclose(states_l, states, rtol=1e-5, atol=1e-6)
    assert torch.allclose(last_l, last, rtol=1e-5, atol=1e-6) and torch.allclose(y_l, y, rtol=1e-5, atol=1e-6)


def test_lane_bc_is_a_transposed_fp32_copy():
    """The launcher's B / C copy is a fresh contiguous fp32 [B, G, L, N] buffer for fp32 input too (where
    .to(float32, memory_format=contiguous_format) would hand back the transposed view)."""
    from kernels.selective_scan.triton import lane_bc

    for dtype in (torch.float32, torch.bfloat16):
        B = torch.randn(2, 3, 5, 7).to(dtype)
        Bt = lane_bc(B)
        assert Bt.is_contiguous() and Bt.dtype == torch.float32 and Bt.shape == (2, 3, 7, 5)
        assert torch.equal(Bt, B.float().transpose(-1, -2)) and Bt.data_ptr() != B.data_ptr()


GPU_SHAPES = [(2, 384, 197, 16), (1, 384, 6085, 16), (2, 768, 197, 16), (1, 2048, 4096, 16)]


# The GPU tests run each kernel's fixed launch config (autotune=False): autotuning every new shape would take
# the whole device call. The autotuned path runs in test_gpu_grouped_bf16_and_last_state and is checked
# against mamba_ssm's kernel at five shapes by benchmarks/selective_scan.py.
FIXED = dict(autotune=False)


def _gpu_ref(*args, **kw):
    """fp32 PyTorch path on the GPU (checked against the token loop on CPU above)."""
    return selective_scan_torch(*args, **kw)


@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_vim_shapes(shape, reverse):
    batch, dim, L, n = shape
    inputs = make_inputs(batch, dim, L, n, dtype=torch.bfloat16, device="cuda")
    errs = compare(inputs, 1e-2, ref_fn=_gpu_ref, scan_kw=FIXED, delta_softplus=True, reverse=reverse)
    print(shape, reverse, {k: f"{v:.1e}" for k, v in errs.items()})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp32_odd_shapes(case):
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.float32, has_D, has_z, has_bias, device="cuda")
    compare(inputs, 1e-4, scan_kw=FIXED, delta_softplus=softplus, reverse=reverse)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_grouped_bf16_and_last_state():
    """Autotuned (the default on the GPU)."""
    inputs = make_inputs(2, 384, 300, 16, groups=4, dtype=torch.bfloat16, device="cuda")
    compare(inputs, 1e-2, ref_fn=_gpu_ref, delta_softplus=True)
    y, last = selective_scan(*inputs, delta_softplus=True, return_last_state=True)
    _, last_ref = _gpu_ref(*[x.float() if x is not None else None for x in inputs], delta_softplus=True,
                           return_last_state=True)
    assert rel_rms(last, last_ref) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_int64_offsets():
    """B·D·L above 2^31 elements: offsets must be 64-bit (checks the last channel of the last batch)."""
    batch, dim, L, n = 2, 2048, 600_000, 1
    try:
        inputs = make_inputs(batch, dim, L, n, dtype=torch.bfloat16, device="cuda", has_z=False)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    u, delta, A, B, C, D, _, bias = inputs
    y = selective_scan(*inputs, delta_softplus=True, **FIXED)
    y_ref = selective_scan_torch(u[-1:, -2:], delta[-1:, -2:], A[-2:], B[-1:], C[-1:], D[-2:], None, bias[-2:],
                                   delta_softplus=True)
    assert rel_rms(y[-1:, -2:], y_ref) < 1e-2


LONG_SHAPES = [(1, 384, 6085, 16), (2, 384, 4097, 16), (1, 2048, 4096, 16)]


@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("variant", ["sequential", "chunked"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_long_l_both_variants(shape, variant, reverse):
    """Vim at high resolution / LM-like L: both variants (the heuristic's segment length) vs fp32 chunked."""
    batch, dim, L, n = shape
    inputs = make_inputs(batch, dim, L, n, groups=2 if reverse else None, dtype=torch.bfloat16, device="cuda")
    errs = compare(inputs, 1e-2, ref_fn=_gpu_ref, scan_kw=dict(variant=variant, **FIXED), delta_softplus=True,
                   reverse=reverse)
    print(shape, variant, reverse, {k: f"{v:.1e}" for k, v in errs.items()})
    y, last = selective_scan(*inputs, delta_softplus=True, reverse=reverse, return_last_state=True,
                             variant=variant, **FIXED)
    _, last_ref = _gpu_ref(*[x.float() if x is not None else None for x in inputs], delta_softplus=True,
                           reverse=reverse, return_last_state=True)
    assert rel_rms(last, last_ref) < 1e-2


@pytest.mark.parametrize("case", CHUNKED_CASES)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_chunk_parallel_fp32_odd_shapes(case):
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.float32, has_D, has_z, has_bias, device="cuda")
    compare(inputs, 1e-4, scan_kw=dict(CHUNKED, **FIXED), delta_softplus=softplus, reverse=reverse)


@pytest.mark.parametrize("shape", [(2, 384, 197, 16), (1, 384, 4097, 16), (2, 64, 1237, 12)])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_token_layout(shape, reverse, dtype):
    """The token-parallel forward (fixed default tile and one long-tile config) and the backward from its states."""
    batch, dim, L, n = shape
    inputs = make_inputs(batch, dim, L, n, dtype=dtype, device="cuda")
    for tile in (None, (16, 32, 1, 8)):
        errs = compare(inputs, 1e-2 if dtype == torch.bfloat16 else 1e-4, ref_fn=_gpu_ref,
                       scan_kw=dict(FIXED, layout="token", tile=tile), delta_softplus=True, reverse=reverse)
        print(shape, reverse, dtype, tile, {k: f"{v:.1e}" for k, v in errs.items()})


@pytest.mark.parametrize("shape", [(2, 384, 197, 16), (1, 384, 4097, 16), (2, 64, 1237, 12)])
@pytest.mark.parametrize("variant", ["sequential", "chunked"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_lane_layout(shape, variant, reverse, dtype):
    """The lane forward (fixed config and autotuned over _LANE_CONFIGS), both variants, and the backward from
    the chunk states it stored; the last state too."""
    batch, dim, L, n = shape
    inputs = make_inputs(batch, dim, L, n, dtype=dtype, device="cuda")
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
    for autotune in (False, True):
        kw = dict(layout="lane", variant=variant, autotune=autotune)
        errs = compare(inputs, tol, ref_fn=_gpu_ref, scan_kw=kw, delta_softplus=True, reverse=reverse)
        print(shape, variant, reverse, dtype, autotune, {k: f"{v:.1e}" for k, v in errs.items()})
        with torch.no_grad():
            y, last = selective_scan(*inputs, delta_softplus=True, reverse=reverse, return_last_state=True, **kw)
        _, last_ref = _gpu_ref(*[x.float() if x is not None else None for x in inputs], delta_softplus=True,
                               reverse=reverse, return_last_state=True)
        assert rel_rms(last, last_ref) < tol


@pytest.mark.parametrize("case,scan_kw", LANE_CASES)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_lane_layout_fp32_odd_shapes(case, scan_kw):
    """The interpreter's lane cases compiled (fixed config: BLOCK_D <= 32 channels); the grouped ones (4 channels
    per group) run the channel layout there (test_compiled_lane_layout_skips_groups_narrower_than_a_warp)."""
    batch, dim, L, n, groups, has_D, has_z, has_bias, softplus, reverse = case
    inputs = make_inputs(batch, dim, L, n, groups, torch.float32, has_D, has_z, has_bias, device="cuda")
    compare(inputs, 1e-4, scan_kw=dict(scan_kw, layout="lane", **FIXED), delta_softplus=softplus, reverse=reverse)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_lane_layout_grouped_autotuned():
    """Grouped B/C (96 channels per group: only BLOCK_D 32 lane configs fit a group), autotuned, bf16."""
    inputs = make_inputs(2, 384, 300, 16, groups=4, dtype=torch.bfloat16, device="cuda")
    compare(inputs, 1e-2, ref_fn=_gpu_ref, scan_kw=dict(layout="lane"), delta_softplus=True)
