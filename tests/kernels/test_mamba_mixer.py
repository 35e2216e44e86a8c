"""Fused bidirectional Mamba mixer (kernels.mamba_mixer): the Triton path (interpreter on CPU, compiled on GPU)
against the fp32 reference in value and in the gradient of every input and parameter; the Vim built on it
against the unfused mixer; torch.compile capture; the selective-scan forward's tile pruning.

Metric: relative RMS error (kernels.common.rel_rms). Tolerances: fp32 1e-5 on the CPU interpreter (1e-4 on the
GPU: TF32-free cuBLAS still sums in another order); bf16 3e-2 (x_dbl, delta, the scan's output and every
gradient are rounded to bf16 on the way, ~4e-3 RMS each, and a Vim-Ti-wide GEMM sums many of them).
"""
import pytest
import torch

from kernels.common import rel_rms
from kernels.mamba_mixer import bimamba_inner, bimamba_inner_ref

NAMES = ["x", "z", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight", "dt_proj_bias", "A_log", "D",
         "out_proj_weight", "out_proj_bias"]
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def make_inputs(batch, e, L, n, dim=6, rank=3, width=4, dtype=torch.float32, device="cpu", biases=True, seed=0):
    """x, z and Mamba-like stacked parameters (A_log = log of 1..N-ish, dt bias ~ inverse softplus of ~0.01-0.1)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device)

    x, z = rn(batch, e, L).to(dtype), rn(batch, e, L).to(dtype)
    params = [rn(2, e, width, scale=0.5), rn(2, e, scale=0.3) if biases else None,
              rn(2, rank + 2 * n, e, scale=e ** -0.5), rn(2, e, rank, scale=rank ** -0.5),
              rn(2, e, scale=0.5, shift=-3.0), torch.log(torch.rand(2, e, n, generator=g) * n + 1).to(device),
              rn(2, e), rn(dim, e, scale=e ** -0.5), rn(dim, scale=0.1) if biases else None]
    if dtype != torch.float32:   # a bf16 model: GEMM weights in bf16, A_log / D / dt bias stay fp32 as Mamba keeps them
        for i in (0, 1, 2, 3, 7, 8):
            params[i] = params[i].to(dtype) if params[i] is not None else None
    return [x, z, *params]


def values_and_grads(fn, inputs, seed=1, **kw):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves, **kw)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad((out.float() * dy).sum(), present))
    return out, [next(grads) if t is not None else None for t in leaves]


def compare(inputs, tol, ref=bimamba_inner_ref, **kw):
    """The fused op vs ``ref`` on fp32 copies of the same values; every gradient checked; returns the errors."""
    divide_out = kw.pop("divide_out", True)
    out, grads = values_and_grads(bimamba_inner, inputs, divide_out=divide_out, variant="fused", **kw)
    ref_inputs = [t.detach().float() if t is not None else None for t in inputs]
    out_ref, grads_ref = values_and_grads(ref, ref_inputs, divide_out=divide_out)
    assert out.dtype == inputs[0].dtype and out.shape == out_ref.shape
    errs = {"out": rel_rms(out, out_ref)}
    for name, g_, r in zip(NAMES, grads, grads_ref):
        if r is not None:
            assert g_ is not None and g_.shape == r.shape, name
            assert torch.isfinite(g_.float()).all(), name
            errs["d" + name] = rel_rms(g_, r)
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"rel RMS above {tol}: {bad} (all: {errs})"
    return errs


# ----------------------------------------------------------------------------------------------- CPU / interpreter

@pytest.mark.parametrize("batch,L,n", [(2, 1, 16), (2, 7, 8), (1, 37, 8), (1, 21, 16)])
def test_fused_fp32_matches_reference(batch, L, n):
    compare(make_inputs(batch, 4, L, n), TOL[torch.float32])


@pytest.mark.parametrize("batch,L,n", [(2, 7, 16), (1, 37, 8)])
def test_fused_bf16_matches_reference(batch, L, n):
    compare(make_inputs(batch, 4, L, n, dtype=torch.bfloat16), TOL[torch.bfloat16])


def test_fused_chunk_parallel_scan_matches_reference():
    """Both directions through the chunk-parallel scan: 3 segments of 16 tokens, the last one partial."""
    compare(make_inputs(1, 4, 37, 8), TOL[torch.float32], variant_scan="chunked", seg=16)


def test_fused_sum_without_biases():
    """divide_out=False sums the directions; no conv / out_proj biases (the optional inputs)."""
    compare(make_inputs(1, 4, 9, 8, biases=False), TOL[torch.float32], divide_out=False)


def test_reversed_input_swaps_directions():
    """Flipping the tokens and swapping the directions' parameters flips the output: the backward direction is
    the forward one run from the last token (anti-causal conv, reversed scan by index)."""
    inputs = make_inputs(2, 4, 11, 8)
    x, z, *params = inputs
    swapped = [p.flip(0) if p is not None and p.shape[0] == 2 else p for p in params[:7]] + params[7:]
    out = bimamba_inner(x, z, *params, variant="fused")
    out_flip = bimamba_inner(x.flip(-1), z.flip(-1), *swapped, variant="fused")
    assert rel_rms(out_flip.flip(1), out) < 1e-6


def test_unfused_matches_reference():
    compare_unfused = values_and_grads(bimamba_inner, make_inputs(1, 4, 9, 8), variant="unfused")
    ref = values_and_grads(bimamba_inner_ref, make_inputs(1, 4, 9, 8))
    for a, b in zip([compare_unfused[0], *compare_unfused[1]], [ref[0], *ref[1]]):
        assert rel_rms(a, b) < 1e-5


def test_vim_fused_equals_unfused():
    """A whole (toy-width, one-block) Vim with the fused mixer = with the unfused one: features and every
    parameter gradient."""
    import zoo
    from backbones.layers.mamba import set_mixer_variant

    torch.manual_seed(0)
    model = zoo.create_model("vim_micro_patch4_32", depth=1, img_size=8, embed_dim=4, d_state=4, num_classes=3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    results = {}
    for variant in ("fused", "unfused"):
        set_mixer_variant(model, variant)
        model.zero_grad()
        out = model.forward_features(x)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results[variant] = (out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                                           if p.grad is not None})
    (out_f, g_f), (out_u, g_u) = results["fused"], results["unfused"]
    assert rel_rms(out_f, out_u) < 1e-5
    with torch.no_grad():                          # inference: in_proj as one GEMM, channel-last activations
        out_i = set_mixer_variant(model, "fused").forward_features(x)
    assert rel_rms(out_i, out_f) < 1e-5
    assert g_f.keys() == g_u.keys() and any(".x_proj_b." in k for k in g_f)
    bad = {k: rel_rms(g_f[k], g_u[k]) for k in g_f if not rel_rms(g_f[k], g_u[k]) < 1e-4}
    assert not bad, bad


def test_fused_mixer_compiles_as_one_graph():
    """The fused launchers are custom ops: dynamo traces the mixer in one graph (fullgraph=True fails on any
    graph break); compiled = eager in value and gradient."""
    inputs = make_inputs(1, 4, 5, 4)

    def fn(*leaves):
        return bimamba_inner(*leaves, variant="fused")

    out, grads = values_and_grads(fn, inputs)
    out_c, grads_c = values_and_grads(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs)
    for a, b in zip([out_c, *grads_c], [out, *grads]):
        if b is not None:
            assert rel_rms(a, b) < 1e-6


def test_bad_input_raises_clear_errors():
    inputs = make_inputs(1, 4, 5, 4)
    with pytest.raises(ValueError, match="variant must be one of"):
        bimamba_inner(*inputs, variant="fast")
    bad = list(inputs)
    bad[4] = bad[4][0]                                   # x_proj_weight of one direction only
    with pytest.raises(ValueError, match="x_proj_weight must be"):
        bimamba_inner(*bad)
    bad = list(inputs)
    bad[1] = bad[1][..., :-1]
    with pytest.raises(ValueError, match="z must have x's shape"):
        bimamba_inner(*bad)
    from backbones.layers.mamba import BiMambaMixer
    with pytest.raises(ValueError, match="variant must be one of"):
        BiMambaMixer(8, variant="fast")


# ----------------------------------------------------------------------------------------------- scan regression

def test_scan_forward_tiles_pruned_by_chunk_only_when_states_are_stored():
    """Inference keeps the long-tile forward configs (BLOCK_L 32 > chunk 16); a forward storing chunk states
    keeps only tiles that divide the chunk (it stores a state at tile ends)."""
    from kernels.selective_scan.triton import _FWD_CONFIGS, _prune

    tiles = {False: None, True: None}
    for store in tiles:
        kept = _prune(_FWD_CONFIGS, {"BD_CAP": 1 << 30}, CHUNK=16, STORE_STATES=store)
        tiles[store] = {c.kwargs["BLOCK_L"] for c in kept}
    assert 32 in tiles[False] and tiles[False] == {c.kwargs["BLOCK_L"] for c in _FWD_CONFIGS}
    assert max(tiles[True]) == 16 and all(16 % t == 0 for t in tiles[True])


def test_scan_no_grad_forward_with_tile_longer_than_chunk(monkeypatch):
    """The forward without stored states is exact with a tile of 32 tokens over chunk 16 (what the pruning now
    lets the autotuner pick), for both scan directions."""
    import kernels.selective_scan.triton as sst
    from kernels.selective_scan import selective_scan, selective_scan_ref

    monkeypatch.setattr(sst, "_fixed_config", lambda cap, chunk, fwd: {"BLOCK_D": 4, "BLOCK_L": 32} if fwd
                        else {"BLOCK_D": 4})
    g = torch.Generator().manual_seed(3)
    u, delta, z = (torch.randn(2, 4, 45, generator=g) for _ in range(3))
    A = -(torch.rand(4, 16, generator=g) + 0.1)
    B, C = torch.randn(2, 16, 45, generator=g), torch.randn(2, 16, 45, generator=g)
    D, bias = torch.randn(4, generator=g), torch.randn(4, generator=g) * 0.3
    for reverse in (False, True):
        with torch.no_grad():
            y = selective_scan(u, delta, A, B, C, D, z, bias, True, reverse, chunk=16)
        y_ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, reverse)
        assert rel_rms(y, y_ref) < 1e-5


@pytest.mark.parametrize("batch,L,n,tile", [(1, 37, 16, (4, 4, 2, 1)), (2, 300, 12, (2, 16, 1, 2)),
                                             (1, 21, 16, (1, 8, 4, 1))])
def test_fused_token_layout_matches_reference(batch, L, n, tile):
    """layout="token": the token-parallel scan forward (y [B, 2, E, L], out_proj on the transposed operand),
    several tiles per sequence, N = 12 too; every gradient through the unchanged backward."""
    compare(make_inputs(batch, 8, L, n), TOL[torch.float32], layout="token", tile=tile)


def test_token_layout_on_the_unfused_path_and_checked_everywhere():
    inputs = make_inputs(1, 8, 37, 16)
    out_u = bimamba_inner(*inputs, variant="unfused", layout="token", tile=(4, 4, 2, 1))
    assert rel_rms(out_u, bimamba_inner_ref(*inputs)) < 1e-5
    for variant in ("fused", "unfused", "reference"):
        with pytest.raises(ValueError, match="layout"):
            bimamba_inner(*inputs, variant=variant, layout="rows")


@pytest.mark.parametrize("batch,L,n,scan_kw", [(1, 37, 8, {}), (2, 21, 12, {}),
                                                (1, 37, 16, dict(variant_scan="chunked", seg=16))])
def test_fused_lane_layout_matches_reference(batch, L, n, scan_kw):
    """layout="lane": both directions' scan forward in the lane layout (_biscan_lane_kernel on the fp32 B|C copy),
    BLOCK_L 8 in the interpreter (L = 37 ends inside a tile; chunks of 8 / 16), N = 12, sequential and
    chunk-parallel (3 segments of 16, the last partial); every gradient through the unchanged backward."""
    compare(make_inputs(batch, 8, L, n), TOL[torch.float32], layout="lane", **scan_kw)


@pytest.mark.parametrize("block_l,prefetch", [(1, 0), (2, 1), (8, 0)])
def test_fused_lane_walk_tiles_and_prefetch_match_reference(monkeypatch, block_l, prefetch):
    """The lane walk's other tiles than the interpreter's fixed one (8 tokens, prefetching): one token per tile and
    no prefetch (the loop without tile pairs), two with prefetch (an odd tile count per segment ends on an empty
    step), eight without; chunk-parallel over segments of 16 of L = 37, both directions, N = 12."""
    import kernels.selective_scan.triton as st

    monkeypatch.setattr(st, "_lane_fixed_config", lambda cap, chunk: {"BLOCK_D": 4, "BLOCK_L": block_l,
                                                                      "PREFETCH": prefetch})
    inputs = make_inputs(2, 8, 37, 12)
    with torch.no_grad():
        out = bimamba_inner(*inputs, variant="fused", layout="lane", variant_scan="chunked", seg=16)
    assert rel_rms(out, bimamba_inner_ref(*inputs)) < TOL[torch.float32]


def _channel_last_views(x, z):
    """x, z as the Vim block passes them in inference: channel-last views of one [B, L, 2E] tensor."""
    e = x.shape[1]
    xz = torch.cat([x, z], 1).transpose(1, 2).contiguous().transpose(1, 2)
    return xz[:, :e], xz[:, e:]


@pytest.mark.parametrize("scan_kw", [{}, dict(variant_scan="chunked", seg=16), dict(layout="channel"),
                                     dict(layout="token")])
def test_fused_channel_last_inference_matches_reference(scan_kw):
    """The inference path's channel-last activations (x, z strided views; xc, x_dbl, Δ token-major): the lane walk
    reads u, Δ and z through their strides (sequential and chunk-parallel over 3 segments of L = 37, both
    directions, N = 12); the channel and token layouts get contiguous copies. Same output as channels_last=False."""
    inputs = make_inputs(2, 8, 37, 12)
    x, z = _channel_last_views(*inputs[:2])
    assert x.stride(1) == 1 and z.stride(2) == 16
    ref = bimamba_inner_ref(*inputs)
    with torch.no_grad():
        out = bimamba_inner(x, z, *inputs[2:], variant="fused", **scan_kw)
        out_e = bimamba_inner(*inputs, variant="fused", channels_last=False, **scan_kw)
    assert rel_rms(out, ref) < TOL[torch.float32] and rel_rms(out, out_e) < TOL[torch.float32]


def test_fused_channel_last_trains():
    """channels_last=True under autograd (the backward takes contiguous copies of the token-major tensors):
    values and every gradient, strided x and z, chunk-parallel lane forward."""
    inputs = make_inputs(1, 8, 37, 12)
    compare([*_channel_last_views(*inputs[:2]), *inputs[2:]], TOL[torch.float32], channels_last=True,
            variant_scan="chunked", seg=16)


def test_fused_lane_layout_bf16_matches_reference():
    compare(make_inputs(1, 4, 37, 8, dtype=torch.bfloat16), TOL[torch.bfloat16], layout="lane")


def test_lane_layout_plans_and_unfused_path():
    """mixer_plans gives the forward the lane variant of its own plan (the backward's is unchanged); lane_bc is
    x_dbl's B|C rows transposed to fp32 [2, B, L, 2N]; the unfused path takes layout="lane" too."""
    from kernels.mamba_mixer.triton import lane_bc, mixer_plans

    for variant, want in (("sequential", "lane"), ("chunked", "lane_chunked")):
        base = mixer_plans(2, 8, 37, 16, torch.device("cpu"), variant, 16, layout="channel")
        lane = mixer_plans(2, 8, 37, 16, torch.device("cpu"), variant, 16, layout="lane")
        assert lane == ((want, *base[0][1:]), base[1])
    x_dbl = torch.randn(2, 3, 5 + 2 * 4, 7)
    bc = lane_bc(x_dbl, 5)
    assert bc.is_contiguous() and bc.shape == (2, 3, 7, 8) and torch.equal(bc, x_dbl[:, :, 5:].transpose(2, 3))
    inputs = make_inputs(1, 8, 37, 12)
    out_u = bimamba_inner(*inputs, variant="unfused", layout="lane")
    assert rel_rms(out_u, bimamba_inner_ref(*inputs)) < 1e-5


def test_auto_layout_takes_lane_where_chunked_with_lane_segments():
    """layout="auto": the lane layout on shorter segments (lane_seg) where the plan is chunk-parallel (Vim-Ti 1024 px
    b8 on 132 SMs: 192 tokens) or no states are stored (inference), the channel layout for a sequential training
    pass; a given seg is kept."""
    from kernels.mamba_mixer.triton import mixer_plans
    from kernels.selective_scan.triton import LANE_SEG_MIN, MAX_SEGS, lane_seg

    cpu = torch.device("cpu")
    fwd, bwd = mixer_plans(8, 384, 4097, 16, cpu, "chunked")
    assert fwd[:2] == ("lane_chunked", 192) and bwd[0] == "chunked"
    assert mixer_plans(8, 384, 4097, 16, cpu, "chunked", 512)[0][:2] == ("lane_chunked", 512)
    assert mixer_plans(64, 384, 197, 16, cpu, "sequential")[0][0] == "sequential"
    assert mixer_plans(64, 384, 197, 16, cpu, "sequential", inference=True)[0][0] == "lane"
    assert mixer_plans(8, 384, 4097, 16, cpu, "chunked", layout="channel")[0][:2] == ("chunked", 384)
    for L in (300, 4097, 6085, 100_000):
        seg = lane_seg(16, 384, L, 132, 16)
        assert seg % 16 == 0 and seg >= LANE_SEG_MIN and -(-L // seg) <= MAX_SEGS


def test_merged_out_proj_token_operand_equals_channel_layout():
    """out_proj over y [B, 2, E, L] read transposed equals out_proj over the same values laid out [B, L, 2, E]."""
    from kernels.mamba_mixer.triton import merged_out_proj

    y = torch.randn(2, 2, 8, 5)
    w, b = torch.randn(6, 8), torch.randn(6)
    ref = merged_out_proj(y.permute(0, 3, 1, 2).contiguous(), w, b)
    assert rel_rms(merged_out_proj(y, w, b, tokens=True), ref) < 1e-6


# ----------------------------------------------------------------------------------------------- GPU

# (batch, E, L, N, dim, dt_rank): Vim-Ti at 224 and 1024 px batch 8, Vim micro on CIFAR (32 px, patch 4) batch 512.
GPU_SHAPES = [(8, 384, 197, 16, 192, 12), (8, 384, 4097, 16, 192, 12), (512, 256, 65, 16, 128, 8)]


def _gpu_ref(*args, **kw):
    """The reference on the vectorised fp32 scan (selective_scan_torch, checked against the token loop in
    test_selective_scan.py): the token loop at L = 4097 with autograd would take minutes."""
    from kernels.selective_scan import selective_scan_torch

    return bimamba_inner_ref(*args, **kw, scan=selective_scan_torch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_matches_reference(shape, dtype):
    batch, e, L, n, dim, rank = shape
    inputs = make_inputs(batch, e, L, n, dim=dim, rank=rank, dtype=dtype, device="cuda")
    errs = compare(inputs, 3e-2 if dtype == torch.bfloat16 else 1e-4, ref=_gpu_ref)
    print(shape, dtype, {k: f"{v:.1e}" for k, v in errs.items()})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant_scan", ["sequential", "chunked"])
def test_gpu_fused_both_scan_variants_odd_length(variant_scan):
    inputs = make_inputs(2, 384, 1237, 16, dim=192, rank=12, dtype=torch.bfloat16, device="cuda")
    compare(inputs, 3e-2, ref=_gpu_ref, variant_scan=variant_scan)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_vim_tiny_fused_equals_unfused():
    """vim_tiny at 224 px under bf16 autocast: fused and unfused mixers give the same features."""
    import zoo
    from backbones.layers.mamba import set_mixer_variant

    model = zoo.create_model("vim_tiny_patch16_224").cuda().eval()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    outs = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for variant in ("fused", "unfused"):
            outs[variant] = set_mixer_variant(model, variant).forward_features(x).float()
    assert rel_rms(outs["fused"], outs["unfused"]) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("L", [197, 1237])
def test_gpu_fused_token_layout(dtype, L):
    """The token-parallel forward of the fused mixer (autotuned and one forced tile) vs the reference, both
    directions in one launch, odd lengths, all gradients."""
    inputs = make_inputs(2, 384, L, 16, dim=192, rank=12, dtype=dtype, device="cuda")
    for tile in (None, (16, 32, 1, 8)):
        compare(inputs, 3e-2 if dtype == torch.bfloat16 else 1e-4, ref=_gpu_ref, layout="token", tile=tile)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_lane_layout(shape, dtype):
    """The lane forward of the fused mixer at the benchmark shapes (autotuned; the heuristic's variant, chunked at
    1024 px batch 8), all gradients through the unchanged backward."""
    batch, e, L, n, dim, rank = shape
    inputs = make_inputs(batch, e, L, n, dim=dim, rank=rank, dtype=dtype, device="cuda")
    errs = compare(inputs, 3e-2 if dtype == torch.bfloat16 else 1e-4, ref=_gpu_ref, layout="lane")
    print(shape, dtype, {k: f"{v:.1e}" for k, v in errs.items()})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant_scan", ["sequential", "chunked"])
@pytest.mark.parametrize("autotune", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_lane_layout_odd_length(variant_scan, autotune, dtype):
    inputs = make_inputs(2, 384, 1237, 16, dim=192, rank=12, dtype=dtype, device="cuda")
    compare(inputs, 3e-2 if dtype == torch.bfloat16 else 1e-4, ref=_gpu_ref, variant_scan=variant_scan,
            autotune=autotune, layout="lane")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant_scan", ["sequential", "chunked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_channel_last_inference(variant_scan, dtype):
    """The inference path (channel-last activations, strided x / z, the lane walk on token strides) at Vim-Ti
    width, odd length, both directions, against the fp32 reference."""
    inputs = make_inputs(2, 384, 1237, 16, dim=192, rank=12, dtype=dtype, device="cuda")
    x, z = _channel_last_views(*inputs[:2])
    with torch.no_grad():
        out = bimamba_inner(x, z, *inputs[2:], variant="fused", variant_scan=variant_scan)
        ref = _gpu_ref(*[t.float() if t is not None else None for t in inputs])
    assert out.dtype == dtype and rel_rms(out, ref) < (3e-2 if dtype == torch.bfloat16 else 1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_channel_last_trains(dtype):
    """channels_last=True under autograd on the GPU: values and every gradient (chunk-parallel lane forward)."""
    inputs = make_inputs(2, 384, 1237, 16, dim=192, rank=12, dtype=dtype, device="cuda")
    compare([*_channel_last_views(*inputs[:2]), *inputs[2:]], 3e-2 if dtype == torch.bfloat16 else 1e-4,
            ref=_gpu_ref, channels_last=True, variant_scan="chunked")
