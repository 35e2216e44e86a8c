"""The fused bidirectional Mamba mixer against the unfused one and DeiT, side by side in one run.

    python -m benchmarks.mamba_mixer [--sections mixer,models,stages,train,scan] [--compile] [--cuda-graph]

Sections (each writes its rows as soon as it ends, so a cut-short run keeps what it measured):

- ``mixer``: one BiMambaMixer at Vim-Ti width (dim 192, E 384, N 16, R 12), bf16 autocast, variant fused vs
  unfused, at the token counts of 224 px batch 64, 1024 px batch 8 and 1248 px batch 8; ``fwd`` (inference)
  and ``fwdbwd`` (forward + backward of a random output gradient).
- ``models``: ``vim_tiny_patch16_224.forward_features`` (bf16 autocast, inference) with the fused mixer and
  with the unfused one against timm's ``deit_tiny_patch16_224`` (SDPA) at 224 (batch 64), 512, 1024 and 1248 px
  (batch 8): images/s, peak GiB, ratio to DeiT.
- ``stages``: one 1024-px batch-8 Vim-Ti forward on the fused path split into its stages (each run alone at the
  real shapes as often as one forward runs it, back to back), with the bytes each stage must move and its
  GEMM FLOPs, so achieved bandwidth / FLOP rate / exp rate stand against the H200's measured ceilings
  (4.27 TB/s copy, 790 TFLOP/s bf16 GEMM, ~4.2 T ex2/s = 132 SMs x 16 SFU lanes x 1.98 GHz).
- ``train``: train-step images/s (bf16 autocast, cross-entropy, backward, clipping, AdamW: the CIFAR recipe's
  step, ``benchmarks.train_step``) of vim_micro_patch4_32 (fused and unfused) vs vit_micro_patch4_32, batch 512, 32 px.
- ``scan``: the selective-scan forward regression at (128, 384, 197, 16): the forward autotuned over the config
  set pruned to tiles dividing the chunk (the behaviour after 58b03a2) and over the full set (the fix), same
  process; the comparison with mamba_ssm is ``python -m benchmarks.selective_scan``.
- ``layouts``: the scan forward's tile layouts at Vim-Ti's mixer shapes (224 px b64, 1024 and 1248 px b8):
  the channel layout (autotuned, today's default), the lane layout (``layout="lane"``, autotuned over
  ``_LANE_CONFIGS``; the row's ``lane_config`` is the autotuner's pick) and the token-parallel layout
  (autotuned, and each of ``TOKEN_TILES`` forced). Every config is first checked against the fp32 reference
  mixer (rel. RMS printed; a config above the tolerance gets an error row and no timing), then the fused mixer
  forward (on channel-last views of x and z, as the Vim block passes them in inference) and the scan launch
  alone (on the E-major [2, B, E, L] tensors) are timed (inference, bf16; ``mode`` "fwd"), and for channel, lane and
  token-auto also forward + backward (``mode`` "fwdbwd": the mixer under autocast with every input and
  parameter a leaf, and the scan launch alone with its backward; the backward is the same for all layouts, it
  reads the chunk states the forward stored); ``speedup_vs_channel`` compares rows of one shape and mode. Then
  out_proj on the token layout's y (transposed operand vs a copy to [B, L, 2E]), then vim_tiny.forward_features
  with the channel layout, the lane layout, auto (channel-last activations) and auto without them ("auto
  E-major", ``channels_last=False``) and each shape's fastest token tile against deit_tiny.
  ``--sections layouts --name scan_layouts`` keeps these rows apart.

``--compile`` also times the mixer and the models under ``torch.compile`` (inductor); ``--cuda-graph`` also
times inference forwards replayed from a captured CUDA graph (what removes launch overhead at 224 px).
On the H200: ``python -m benchmarks.mamba_mixer --cuda-graph`` (a few minutes, mostly first-call autotuning
at each new shape); ``--compile`` adds an inductor compile per model and size, so run it apart, e.g.
``--sections mixer,train --compile --name mamba_mixer_compile``.
Rows: ``benchmarks/results/mamba_mixer.{json,md}``. ``--device cpu --quick`` checks the script at toy sizes
(with TRITON_INTERPRET=1 for the fused path; not a measurement).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F

from benchmarks.options import add_run_options, bench_command, start_model_bench
from zoo.bench.timing import dtype_name, free, sync, time_fn

log = logging.getLogger(__name__)

COPY_TBPS = 4.27
GEMM_TFLOPS = 790.0
EXP_TPS = 4.2                                  # T ex2 per second (SFU)
VIM, DEIT = "vim_tiny_patch16_224", "deit_tiny_patch16_224"
MIXER_SHAPES = [(64, 197), (8, 4097), (8, 6085)]        # (batch, tokens): 224 px b64, 1024 px b8, 1248 px b8
SIZES = [224, 512, 1024, 1248]
SECTIONS = ("mixer", "models", "stages", "train", "scan", "layouts")
LAYOUT_SIZES = [(224, 64), (1024, 8), (1248, 8)]        # (img px, batch): the layouts sweep's shapes
LAYOUT_TOL = 3e-2                                       # bf16 mixer vs fp32 reference, rel. RMS (the GPU tests')


def _modes(args) -> list[str]:
    """Execution modes to time: eager always, plus compile / cuda-graph when asked."""
    return ["eager"] + (["compile"] if args.compile else []) + (["cuda_graph"] if args.cuda_graph else [])


def _graphed(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` (an inference forward on static inputs) captured once into a CUDA graph; returns its replay.
    Warm-up runs first on a side stream, so Triton's autotuning and cuBLAS's heuristics happen outside capture."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _prepare(fn: Callable[[], Any], mode: str, device: torch.device):
    """The callable to time in ``mode`` (compiled callables are built by the caller)."""
    return _graphed(fn, device) if mode == "cuda_graph" else fn


def _timed(fn, device, args) -> dict[str, Any]:
    """Median ms and peak GiB of ``fn`` (first call outside: compilation, autotuning); an OOM is a row."""
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        ms = time_fn(fn, device, args.warmup, args.iters)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return {"ms": round(ms, 4), "peak_gib": round(peak, 3) if peak is not None else None}
    except torch.cuda.OutOfMemoryError:
        return {"ms": None, "peak_gib": None, "note": "OOM"}


def _vim(img_size: int, device: torch.device, args) -> torch.nn.Module:
    """vim_tiny at ``img_size``; ``--quick``: one block 8 wide, so the interpreter check takes seconds."""
    if args.quick:
        import zoo

        return zoo.create_model(VIM, img_size=img_size, num_classes=0, depth=1, embed_dim=8).to(device).eval()
    from benchmarks.vim_vs_deit import build_vim

    return build_vim(img_size, device, args.depth)


# -- (1) the mixer alone --------------------------------------------------------------------------------------
def mixer_rows(args, device, dtype) -> list[dict[str, Any]]:
    from backbones.layers.mamba import BiMambaMixer

    rows = []
    dim = 8 if args.quick else 192
    shapes = [(2, 37)] if args.quick else MIXER_SHAPES
    for batch, L in shapes:
        mixer = BiMambaMixer(dim).to(device)
        hidden = torch.randn(batch, L, dim, device=device)
        grad = torch.randn(batch, L, dim, device=device, dtype=dtype)
        pair = {}
        for variant in ("fused", "unfused"):
            mixer.variant = variant
            for mode in _modes(args):
                for run_mode in ("fwd", "fwdbwd"):
                    if mode == "cuda_graph" and run_mode == "fwdbwd":
                        continue                      # graphs replay inference forwards here
                    net = torch.compile(mixer) if mode == "compile" else mixer
                    h = hidden.detach().requires_grad_(run_mode == "fwdbwd")

                    def fwd(net=net, h=h):
                        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                            return net(h)

                    def fwdbwd(net=net, h=h):
                        with torch.autocast(device.type, dtype=dtype):
                            out = net(h)
                        out.backward(grad)

                    fn = _prepare(fwd, mode, device) if run_mode == "fwd" else fwdbwd
                    res = _timed(fn, device, args)
                    row = {"op": "bimamba_mixer", "shape": f"B{batch}_L{L}_D{dim}_E{2 * dim}_N16", "mode": run_mode,
                           "impl": f"ours_{variant}", "exec": mode, "dtype": dtype_name(dtype), **res}
                    pair[(variant, mode, run_mode)] = row
                    rows.append(row)
                    log.info("%s", row)
                    mixer.zero_grad(set_to_none=True)
                    free(device)
        for (variant, mode, run_mode), row in pair.items():
            base = pair.get(("unfused", mode, run_mode))
            if variant == "fused" and base and row.get("ms") and base.get("ms"):
                row["speedup_vs_unfused"] = round(base["ms"] / row["ms"], 3)
        del mixer
        free(device)
    return rows


# -- (2) whole models -----------------------------------------------------------------------------------------
def model_rows(args, device, dtype) -> list[dict[str, Any]]:
    from backbones.layers.mamba import set_mixer_variant
    from benchmarks.vim_vs_deit import build_deit

    depth = 1 if args.quick else args.depth
    rows = []
    for s in ([32] if args.quick else SIZES):
        batch = args.batch_224 if s <= 224 else args.batch
        x = torch.randn(batch, 3, s, s, device=device)
        results = {}
        for impl in ("ours_fused", "ours_unfused", "timm"):
            model = build_deit(s, device, depth) if impl == "timm" else \
                set_mixer_variant(_vim(s, device, args), impl.split("_")[1])
            for mode in _modes(args):
                net = torch.compile(model.forward_features) if mode == "compile" else model.forward_features

                def step(net=net):
                    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                        return net(x)

                res = _timed(_prepare(step, mode, device), device, args)
                if res.get("ms"):
                    res["img_per_s"] = round(batch / res["ms"] * 1e3, 1)
                row = {"model": DEIT if impl == "timm" else VIM, "img_size": s, "mode": "infer", "impl": impl,
                       "exec": mode, "dtype": dtype_name(dtype), "batch": batch, **res}
                results[(impl, mode)] = row
                rows.append(row)
                log.info("%s", row)
            del model
            free(device)
        for (impl, mode), row in results.items():
            peer = results.get(("timm", mode))
            if impl != "timm" and peer and row.get("img_per_s") and peer.get("img_per_s"):
                row["ratio_vs_deit"] = round(row["img_per_s"] / peer["img_per_s"], 3)
                if row.get("peak_gib") and peer.get("peak_gib"):
                    row["mem_ratio_vs_deit"] = round(row["peak_gib"] / peer["peak_gib"], 3)
        del x
        free(device)
    return rows


# -- (3) stage table of the fused forward ---------------------------------------------------------------------
def stage_rows(args, device, dtype) -> list[dict[str, Any]]:
    """Vim-Ti's fused forward by stage: ms, share, and achieved GB/s, TFLOP/s, T exp/s against the ceilings.

    Bytes are each stage's unavoidable HBM traffic at bf16 activations (reads of its inputs, writes of its
    outputs; fp32 residual stream), FLOPs the GEMMs' 2 m n k; the scan's exps are 2 directions x N per
    (channel, token)."""
    from backbones.layers.mamba import set_mixer_variant
    from kernels.mamba_mixer.triton import BiConvFn, BiScanFn, mixer_plans
    from kernels.norm import rms_norm

    img, batch = (32, 2) if args.quick else (1024, args.batch)
    model = set_mixer_variant(_vim(img, device, args), "fused")
    backbone = model.backbone
    depth = len(backbone.layers)
    blk = backbone.layers[0]
    m = blk.mixer
    L = backbone.patch_embed.num_patches + 1
    D, E, R, N = m.dim, m.d_inner, m.dt_rank, m.d_state
    B2 = 2 * batch
    act = 2                                                            # bytes per bf16 element
    x_img = torch.randn(batch, 3, img, img, device=device)
    rows = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
        total_ms = time_fn(lambda: model.forward_features(x_img), device, args.warmup, args.iters)
        hidden = torch.randn(batch, L, D, device=device, dtype=dtype)
        residual = torch.randn(batch, L, D, device=device, dtype=torch.float32)
        h_t = hidden.transpose(1, 2)
        w_x, w_z = m.in_proj.weight.chunk(2, dim=0)
        x, z = torch.matmul(w_x, h_t), torch.matmul(w_z, h_t)
        conv_w, conv_b, xw, dtw, dtb, A_log, Dp = m._stacked()
        xc = BiConvFn.apply(x, conv_w, conv_b)
        x_dbl = torch.matmul(xw.to(dtype).unsqueeze(1), xc)
        delta = torch.matmul(dtw.to(dtype).unsqueeze(1), x_dbl[:, :, :R])
        A, Df, bias = -torch.exp(A_log.float()), Dp.float(), dtb.float()
        plan, bwd_plan = mixer_plans(batch, E, L, N, device)
        y2 = BiScanFn.apply(xc, delta, A, x_dbl, Df, z, bias, R, plan, bwd_plan)
        w_out = torch.cat([m.out_proj.weight, m.out_proj.weight], 1).to(dtype) * 0.5
        tok = batch * L
        stages = [
            ("in_proj (2 GEMMs)", lambda: (torch.matmul(w_x, h_t), torch.matmul(w_z, h_t)),
             act * (tok * D + 2 * tok * E), 2 * tok * D * 2 * E, 0),
            ("conv + SiLU, both directions (1 Triton pass)", lambda: BiConvFn.apply(x, conv_w, conv_b),
             act * 3 * tok * E, 0, 0),
            ("x_proj, both directions (1 batched GEMM)", lambda: torch.matmul(xw.to(dtype).unsqueeze(1), xc),
             act * (2 * tok * E + 2 * tok * (R + 2 * N)), 2 * 2 * tok * E * (R + 2 * N), 0),
            ("dt_proj, both directions (1 batched GEMM)",
             lambda: torch.matmul(dtw.to(dtype).unsqueeze(1), x_dbl[:, :, :R]),
             act * (2 * tok * R + 2 * tok * E), 2 * 2 * tok * R * E, 0),
            ("selective scan, both directions (1 Triton launch)",
             lambda: BiScanFn.apply(xc, delta, A, x_dbl, Df, z, bias, R, plan, bwd_plan),
             act * (2 * 2 * tok * E + 2 * tok * E + 2 * 2 * tok * N + 2 * tok * E), 0, 2 * tok * E * N),
            ("merge + out_proj (1 GEMM, K = 2E)", lambda: F.linear(y2.view(batch, L, 2 * E), w_out),
             act * (2 * tok * E + tok * D), 2 * tok * 2 * E * D, 0),
            ("add + RMSNorm", lambda: rms_norm(hidden, blk.norm.weight, residual=residual, prenorm=True,
                                               residual_in_fp32=True),
             tok * D * (2 + 4 + 2 + 4), 0, 0),
        ]
        summed = 0.0
        for name, fn, nbytes, flops, exps in stages:
            def repeated(fn=fn):
                for _ in range(depth):
                    fn()

            ms = time_fn(repeated, device, max(1, args.warmup // 2), max(3, args.iters // 4))
            summed += ms
            sec = ms * 1e-3
            row = {"stage": name, "ms": round(ms, 4), "share": round(ms / total_ms, 4),
                   "gbps": round(nbytes * depth / sec / 1e9, 1),
                   "bw_frac": round(nbytes * depth / sec / (COPY_TBPS * 1e12), 4)}
            if flops:
                row.update(tflops=round(flops * depth / sec / 1e12, 2),
                           gemm_frac=round(flops * depth / sec / (GEMM_TFLOPS * 1e12), 4))
            if exps:
                row.update(texp_per_s=round(exps * depth / sec / 1e12, 3),
                           exp_frac=round(exps * depth / sec / (EXP_TPS * 1e12), 4))
            rows.append(row)
        rows.append({"stage": "other (embed, final norm, copies, gaps)", "ms": round(total_ms - summed, 4),
                     "share": round((total_ms - summed) / total_ms, 4)})
        rows.append({"stage": "whole forward_features", "ms": round(total_ms, 4), "share": 1.0,
                     "img_per_s": round(batch / total_ms * 1e3, 1)})
    shape = f"B{batch} L{L} D{D} E{E} N{N} R{R} x{depth} layers"
    del model, x_img
    free(device)
    return [{"model": VIM, "img_size": img, "mode": "infer", "impl": "ours_fused", "dtype": dtype_name(dtype),
             "batch": batch, "shape": shape, **r} for r in rows]


# -- (4) training step ----------------------------------------------------------------------------------------
def train_rows(args, device, dtype) -> list[dict[str, Any]]:
    import zoo
    from backbones.layers.mamba import set_mixer_variant
    from benchmarks.train_step import _make_step, measure_step

    batch, img = (4, 32) if args.quick else (512, 32)
    rows, vit_ips = [], None
    for name, variant in (("vit_micro_patch4_32", None), ("vim_micro_patch4_32", "fused"),
                          ("vim_micro_patch4_32", "unfused")):
        small = dict(depth=1, embed_dim=8) if args.quick else {}
        model = zoo.create_model(name, num_classes=10, **small).to(device).train()
        if variant:
            set_mixer_variant(model, variant)
        for mode in [m for m in _modes(args) if m != "cuda_graph"]:
            step = _make_step(model, device, batch, img, 10, dtype, mode == "compile")
            res, _ = measure_step(step, device, args.warmup, args.iters, top=0)
            ips = round(batch / res["ms_step"] * 1e3, 1)
            row = {"model": name, "img_size": img, "mode": "train", "impl": f"ours_{variant}" if variant else "ours",
                   "exec": mode, "dtype": dtype_name(dtype), "batch": batch, **res, "img_per_s": ips}
            if variant is None and mode == "eager":
                vit_ips = ips
            if variant and vit_ips:
                row["ratio_vs_vit"] = round(ips / vit_ips, 3)
            rows.append(row)
            log.info("%s", row)
        del model
        free(device)
    return rows


# -- (5) the scan forward regression --------------------------------------------------------------------------
def scan_rows(args, device, dtype) -> list[dict[str, Any]]:
    """Forward (no gradient) at Vim-Ti 224's scan shape, autotuned over the pruned set (tiles dividing the chunk,
    as after 58b03a2) and over the full set (the fix), with the config each picked."""
    import triton

    import kernels.selective_scan.triton as sst
    from benchmarks.selective_scan import make_inputs
    from kernels.selective_scan import selective_scan

    shape = (1, 4, 37, 16) if args.quick else (128, 384, 197, 16)
    inputs = make_inputs(*shape, device=device)
    chunk = sst.chunk_size_for(shape[3])
    old_set = [c for c in sst._FWD_CONFIGS if chunk % c.kwargs["BLOCK_L"] == 0]
    tuners = {"pruned_to_chunk (after 58b03a2)": triton.autotune(old_set, key=sst._FWD_KEY)(sst._fwd_kernel),
              "full_set (fix)": sst._fwd_tuned}
    rows = []
    for label, tuner in tuners.items():
        saved = sst._fwd_tuned
        sst._fwd_tuned = tuner
        try:
            def fwd():
                with torch.no_grad():
                    selective_scan(*inputs, delta_softplus=True)

            res = _timed(fwd, device, args)
        finally:
            sst._fwd_tuned = saved
        best = getattr(tuner, "best_config", None)
        rows.append({"op": "selective_scan", "shape": "B{}_D{}_L{}_N{}".format(*shape), "mode": "fwd",
                     "impl": "ours", "configs": label, "dtype": dtype_name(inputs[0].dtype), **res,
                     "best_config": str(best.all_kwargs()) if best is not None else None})
        log.info("%s", rows[-1])
    free(device)
    return rows


# -- (6) scan tile layouts --------------------------------------------------------------------------------------
def _layout_configs(quick: bool, layouts: tuple[str, ...]) -> list[tuple[str, tuple | None]]:
    """(layout, tile) pairs of the sweep over ``layouts``: channel autotuned, lane autotuned, token autotuned,
    each token tile forced."""
    from kernels.selective_scan.triton import TOKEN_TILES

    tiles = [(4, 4, 2, 1), (1, 8, 4, 1)] if quick else TOKEN_TILES
    pairs = [("channel", None), ("lane", None), ("auto", None), ("token", None)] + [("token", t) for t in tiles]
    return [(layout, tile) for layout, tile in pairs if layout in layouts]


FWDBWD_LAYOUTS = ("channel", "lane", "auto", "token")  # timed forward + backward too (token: autotuned tile only)


def _lane_pick() -> str | None:
    """The lane autotuner's last choice (the sequential pass, or chunk-parallel pass 3), None off the GPU."""
    from kernels.mamba_mixer.triton import _biscan_lane_tuned

    best = getattr(_biscan_lane_tuned, "best_config", None)
    return str(best.all_kwargs()) if best is not None else None


def layout_rows(args, device, dtype) -> list[dict[str, Any]]:
    from backbones.layers.mamba import BiMambaMixer, set_mixer_variant
    from benchmarks.options import set_scan_options
    from benchmarks.vim_vs_deit import build_deit
    from kernels.common import rel_rms
    from kernels.mamba_mixer import bimamba_inner, bimamba_inner_ref
    from kernels.mamba_mixer.triton import BiConvFn, BiScanFn, merged_out_proj, mixer_plans
    from kernels.selective_scan import selective_scan_torch

    dim = 8 if args.quick else 192
    sizes = [(32, 2)] if args.quick else LAYOUT_SIZES
    rows: list[dict[str, Any]] = []
    best: dict[int, tuple] = {}
    for img, batch in sizes:
        L = (img // (4 if args.quick else 16)) ** 2 + 1
        mixer = BiMambaMixer(dim).to(device).eval()
        E, R, N = mixer.d_inner, mixer.dt_rank, mixer.d_state
        shape = f"B{batch}_L{L}_D{dim}_E{E}_N{N}"
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(batch, E, L, generator=g).to(device, dtype)
        z = torch.randn(batch, E, L, generator=g).to(device, dtype)
        # the inference forward gets x, z as the Vim block makes them there: channel-last views of one [B, L, 2E]
        xz = torch.cat([x, z], 1).transpose(1, 2).contiguous().transpose(1, 2)
        x_cl, z_cl = xz[:, :E], xz[:, E:]
        stacked = mixer._stacked()
        w_out, b_out = mixer.out_proj.weight, mixer.out_proj.bias
        with torch.no_grad():
            ref = bimamba_inner_ref(x, z, *stacked, w_out, b_out, scan=selective_scan_torch).float()
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            conv_w, conv_b, xw, dtw, dtb, A_log, Dp = stacked
            xc = BiConvFn.apply(x, conv_w, conv_b)
            x_dbl = torch.matmul(xw.to(dtype).unsqueeze(1), xc)
            delta = torch.matmul(dtw.to(dtype).unsqueeze(1), x_dbl[:, :, :R])
        scan_in = (xc, delta, -torch.exp(A_log.float()), x_dbl, Dp.float(), z, dtb.float(), R)
        fastest = None
        for layout, tile in _layout_configs(args.quick, args.layouts):
            label = "token " + ("auto" if tile is None else "x".join(map(str, tile))) if layout == "token" else \
                f"{layout} auto"
            base = {"op": "bimamba_mixer", "shape": shape, "img_size": img, "mode": "fwd", "impl": "ours_fused",
                    "layout": layout, "tile": list(tile) if tile else None, "config": label,
                    "dtype": dtype_name(dtype)}

            def mixer_fwd(layout=layout, tile=tile):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                    return bimamba_inner(x_cl, z_cl, *stacked, w_out, b_out, variant="fused", layout=layout, tile=tile)

            try:
                err = rel_rms(mixer_fwd().float(), ref)
            except Exception as e:                           # a config that does not compile or run: its row
                rows.append({**base, "note": f"failed: {type(e).__name__}: {str(e)[:160]}"})
                log.warning("%s", rows[-1])
                continue
            print(f"layouts {shape} {label}: rel. RMS vs fp32 reference {err:.2e}", flush=True)
            if not err < LAYOUT_TOL:
                rows.append({**base, "rel_err": float(f"{err:.3e}"), "note": f"WRONG (tol {LAYOUT_TOL}): not timed"})
                continue
            plan, bwd_plan = mixer_plans(batch, E, L, N, device, layout=layout)

            def scan_fwd(plan=plan, bwd_plan=bwd_plan, tile=tile):
                with torch.inference_mode():
                    return BiScanFn.apply(*scan_in, plan, bwd_plan, tile)

            mix = _timed(_prepare(mixer_fwd, "cuda_graph" if args.cuda_graph else "eager", device), device, args)
            scan = _timed(scan_fwd, device, args)
            elems = 2 * batch * E * L * N
            row = {**base, "rel_err": float(f"{err:.3e}"), "ms": mix.get("ms"), "peak_gib": mix.get("peak_gib"),
                   "exec": "cuda_graph" if args.cuda_graph else "eager", "scan_ms": scan.get("ms")}
            if scan.get("ms"):
                row["scan_texp_per_s"] = round(elems / (scan["ms"] * 1e-3) / 1e12, 3)
                row["scan_exp_frac"] = round(row["scan_texp_per_s"] / EXP_TPS, 4)
                if layout == "token" and tile is not None and (fastest is None or scan["ms"] < fastest[0]):
                    fastest = (scan["ms"], tile)
            if layout == "lane":
                row["lane_config"] = _lane_pick()
            rows.append(row)
            log.info("%s", row)
            if layout in FWDBWD_LAYOUTS and tile is None:
                rows.append(_fwdbwd_row(base, layout, x, z, stacked, w_out, b_out, scan_in, batch, E, L, N, device,
                                        dtype, args))
                log.info("%s", rows[-1])
        for mode in ("fwd", "fwdbwd"):
            channel = next((r for r in rows if r.get("shape") == shape and r.get("mode") == mode
                            and r.get("config") == "channel auto" and r.get("ms")), None)
            for r in rows:
                if r.get("shape") == shape and r.get("mode") == mode and r.get("ms") and channel:
                    r["speedup_vs_channel"] = round(channel["ms"] / r["ms"], 3)
                    if r.get("scan_ms") and channel.get("scan_ms"):
                        r["scan_speedup_vs_channel"] = round(channel["scan_ms"] / r["scan_ms"], 3)
        if fastest is not None:
            best[img] = fastest[1]
            # out_proj over the token layout's y: the transposed operand (what the op does) vs a copy first
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                y_tok = BiScanFn.apply(*scan_in, *mixer_plans(batch, E, L, N, device, layout="token"), fastest[1])
            forms = {"transposed operand (merged_out_proj)":
                     lambda: merged_out_proj(y_tok, w_out, b_out, tokens=True),
                     "copy to [B, L, 2E] + F.linear":
                     lambda: merged_out_proj(y_tok.permute(0, 3, 1, 2).contiguous(), w_out, b_out),
                     "W @ y -> [B, dim, L] (output transposed)":
                     lambda: torch.matmul(torch.cat([w_out, w_out], 1).to(dtype) * 0.5, y_tok.view(batch, 2 * E, L))}
            for form, fn in forms.items():
                def run(fn=fn):
                    with torch.inference_mode():
                        return fn()

                rows.append({"op": "merged_out_proj", "shape": shape, "img_size": img, "mode": "fwd",
                             "impl": "ours", "config": form, "dtype": dtype_name(dtype), **_timed(run, device, args)})
                log.info("%s", rows[-1])
        del mixer, x, z, xz, x_cl, z_cl, xc, x_dbl, delta, ref, scan_in
        free(device)
    # whole models: vim_tiny with the channel layout and with each size's fastest token tile, against DeiT-Ti
    for img, batch in sizes:
        x_img = torch.randn(batch, 3, img, img, device=device)
        results = {}
        configs = [("ours_fused channel", {"layout": "channel", "channels_last": False})] + [
            (f"ours_fused {lay}", {"layout": lay}) for lay in ("lane", "auto") if lay in args.layouts]
        if "auto" in args.layouts:      # the inference path before channel-last activations, same run
            configs.append(("ours_fused auto E-major", {"layout": "auto", "channels_last": False}))
        if img in best:
            configs.append((f"ours_fused token {'x'.join(map(str, best[img]))}", {"layout": "token", "tile": best[img]}))
        configs.append(("timm", None))
        for impl, opts in configs:
            if opts is None:
                model = build_deit(img, device, 1 if args.quick else args.depth)
            else:
                model = set_mixer_variant(_vim(img, device, args), "fused")
                set_scan_options(model, **opts)
            net = model.forward_features

            def step(net=net):
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                    return net(x_img)

            exec_mode = "cuda_graph" if args.cuda_graph else "eager"
            res = _timed(_prepare(step, exec_mode, device), device, args)
            if res.get("ms"):
                res["img_per_s"] = round(batch / res["ms"] * 1e3, 1)
            row = {"model": DEIT if opts is None else VIM, "img_size": img, "mode": "infer", "impl": impl,
                   "exec": exec_mode, "dtype": dtype_name(dtype), "batch": batch, **res}
            results[impl] = row
            rows.append(row)
            log.info("%s", row)
            del model
            free(device)
        peer = results.get("timm")
        for impl, row in results.items():
            if impl != "timm" and peer and row.get("img_per_s") and peer.get("img_per_s"):
                row["ratio_vs_deit"] = round(row["img_per_s"] / peer["img_per_s"], 3)
                if row.get("peak_gib") and peer.get("peak_gib"):
                    row["mem_ratio_vs_deit"] = round(row["peak_gib"] / peer["peak_gib"], 3)
    return rows


def _fwdbwd_row(base, layout, x, z, stacked, w_out, b_out, scan_in, batch, E, L, N, device, dtype, args):
    """Forward + backward of the fused mixer (bf16 autocast; x, z and every stacked parameter a leaf) and of the
    scan launch alone (BiScanFn forward + the selective-scan backward per direction) in ``layout``."""
    from kernels.mamba_mixer import bimamba_inner
    from kernels.mamba_mixer.triton import BiScanFn, mixer_plans

    def leaf(t):
        return t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    mix_in = [leaf(t) for t in (x, z, *stacked, w_out, b_out)]
    with torch.autocast(device.type, dtype=dtype):
        out = bimamba_inner(*mix_in, variant="fused", layout=layout)
    g_out = torch.randn(out.shape, device=device, dtype=out.dtype)
    del out

    def mixer_fwdbwd():
        with torch.autocast(device.type, dtype=dtype):
            out = bimamba_inner(*mix_in, variant="fused", layout=layout)
        out.backward(g_out)

    s_in = [leaf(t) for t in scan_in]                    # clones outside inference mode: autograd may save them
    plan, bwd_plan = mixer_plans(batch, E, L, N, device, layout=layout)
    y = BiScanFn.apply(*s_in, plan, bwd_plan, None)
    g_y = torch.randn(y.shape, device=device, dtype=y.dtype)
    del y

    def scan_fwdbwd():
        BiScanFn.apply(*s_in, plan, bwd_plan, None).backward(g_y)

    mix = _timed(mixer_fwdbwd, device, args)
    scan = _timed(scan_fwdbwd, device, args)
    row = {**base, "mode": "fwdbwd", "ms": mix.get("ms"), "peak_gib": mix.get("peak_gib"), "exec": "eager",
           "scan_ms": scan.get("ms"), "note": mix.get("note") or scan.get("note")}
    if layout == "lane":
        row["lane_config"] = _lane_pick()
    del mix_in, s_in
    free(device)
    return row


# -- driver ---------------------------------------------------------------------------------------------------
def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.mamba_mixer", description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--batch-224", type=int, default=64, help="batch at <= 224 px")
    p.add_argument("--batch", type=int, default=8, help="batch above 224 px")
    p.add_argument("--compile", action="store_true", help="also time under torch.compile")
    p.add_argument("--cuda-graph", action="store_true", help="also time inference forwards as CUDA graph replays")
    p.add_argument("--quick", action="store_true", help="toy sizes: a check of the script, not a measurement")
    p.add_argument("--layouts", default="channel,lane,auto,token",
                   help="the layouts section's layouts (token: the autotuned tile and every forced one; auto: the "
                        "op's default choice)")
    add_run_options(p, "mamba_mixer")
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.layouts = tuple(s for s in args.layouts.split(",") if s)
    if set(args.layouts) - {"channel", "lane", "auto", "token"}:
        p.error(f"unknown layouts {args.layouts}; choose from channel, lane, auto, token")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.cuda_graph and args.device != "cuda":
        p.error("--cuda-graph needs --device cuda")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = start_model_bench(args)
    if device is None:
        return 2
    from zoo.bench.results import write_results

    dtype = torch.float32 if args.quick else torch.bfloat16    # the interpreter emulates bf16 slowly
    command = bench_command("benchmarks.mamba_mixer", argv)
    extra = {"timing": f"median of {args.iters} after {args.warmup} warm-up (+1 compile/autotune) iterations",
             "ceilings": f"copy {COPY_TBPS} TB/s, bf16 GEMM {GEMM_TFLOPS} TFLOP/s, ex2 ~{EXP_TPS} T/s"}
    runners = {"mixer": mixer_rows, "models": model_rows, "stages": stage_rows, "train": train_rows,
               "scan": scan_rows, "layouts": layout_rows}
    rows: list[dict[str, Any]] = []
    path = None
    for section in args.sections:
        try:
            new = runners[section](args, device, dtype)
        except Exception as e:                           # one section failing must not lose the others' rows
            log.exception("section %s failed", section)
            new = [{"section": section, "note": f"failed: {type(e).__name__}: {str(e)[:200]}"}]
        rows += [{"section": section, **r} for r in new]
        path = write_results(args.name, rows, command=command, out_dir=args.out_dir, extra_meta=extra)
    for r in rows:
        print({k: v for k, v in r.items() if v is not None})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
