"""Vim-Ti vs DeiT-Ti feature extraction across resolutions, side by side in one run (the paper's Fig. 1 claim).

    python -m benchmarks.vim_vs_deit [--sizes 224,512,768,1024,1248] [--profile-size 1024]

For each size: our ``vim_tiny_patch16_224`` built with ``img_size=s`` and timm's ``deit_tiny_patch16_224``
(``img_size=s``, attention through SDPA), ``forward_features`` under bf16 autocast in ``torch.inference_mode``,
batch 64 at 224 px and 8 above. Images/s come from the median of CUDA-event-timed iterations after warm-up;
peak memory is ``torch.cuda.max_memory_allocated`` (weights and input included). Then a per-stage profile of
Vim-Ti at ``--profile-size``: each stage of a layer (in_proj, conv, x_proj/dt_proj, scan, merge + out_proj,
add + RMSNorm) run alone at the real shapes, as many times back to back as one forward runs it, against the
measured forward;
with ``--torch-profile`` also the CUDA kernels of one forward grouped by name (torch.profiler).

Rows go to ``benchmarks/results/vim_vs_deit.{json,md}`` and the profile to ``vim_vs_deit_stages.{json,md}``
through :func:`zoo.bench.results.write_results`.
``--device cpu`` runs the same code at small sizes (a check of the script, not a measurement).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import torch

from kernels.common import backend, use_triton
from benchmarks.options import add_model_bench_options, bench_command, parse_sizes, timed_row, start_model_bench
from zoo.bench.timing import cuda_kernel_totals, dtype_name, free, sync, time_fn

log = logging.getLogger(__name__)

VIM = "vim_tiny_patch16_224"
DEIT = "deit_tiny_patch16_224"


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype)


# -- models ---------------------------------------------------------------------------------------------------
def build_vim(img_size: int, device: torch.device, depth: int | None = None) -> torch.nn.Module:
    import zoo

    kw = {"depth": depth} if depth else {}
    return zoo.create_model(VIM, img_size=img_size, num_classes=0, **kw).to(device).eval()


def build_deit(img_size: int, device: torch.device, depth: int | None = None) -> torch.nn.Module:
    import timm

    kw = {"depth": depth} if depth else {}
    return timm.create_model(DEIT, pretrained=False, img_size=img_size, num_classes=0, **kw).to(device).eval()


def measure(model: torch.nn.Module, img_size: int, batch: int, device: torch.device, dtype: torch.dtype,
            warmup: int, iters: int) -> dict[str, Any]:
    """img/s and peak GiB of ``model.forward_features`` at one size; an OOM is a row, not a crash."""
    x = torch.randn(batch, 3, img_size, img_size, device=device)

    def step():
        with torch.inference_mode(), _autocast(device, dtype):
            return model.forward_features(x)

    try:
        return timed_row(step, batch, device, warmup, iters)
    finally:
        del x
        free(device)


# -- per-stage profile ----------------------------------------------------------------------------------------
def stage_profile(img_size: int, batch: int, device: torch.device, dtype: torch.dtype, warmup: int, iters: int,
                  depth: int | None = None) -> list[dict[str, Any]]:
    """Vim-Ti's forward split into stages, each run alone at the real shapes as often as one forward runs it.

    Stages follow the mixer's inference path (backbones/layers/mamba.py -> the fused mixer with channel-last
    activations, kernels/mamba_mixer/triton.py) with the model's own weights and the forward's scan plan, so
    the sum can be held against the whole forward; the rest ("other") is embedding, copies, launch gaps.
    """
    from kernels.mamba_mixer.triton import BiConvFn, BiScanFn, merged_out_proj, mixer_plans, token_major_projections
    from kernels.norm import rms_norm

    model = build_vim(img_size, device, depth)
    backbone = model.backbone
    n_layers = len(backbone.layers)
    blk = backbone.layers[0]
    m = blk.mixer
    L = backbone.patch_embed.num_patches + 1
    D, E, R, N = m.dim, m.d_inner, m.dt_rank, m.d_state
    x_img = torch.randn(batch, 3, img_size, img_size, device=device)
    rows: list[dict[str, Any]] = []
    with torch.inference_mode(), _autocast(device, dtype):
        total_ms = time_fn(lambda: model.forward_features(x_img), device, warmup, iters)
        hidden = torch.randn(batch, L, D, device=device, dtype=dtype)
        residual = torch.randn(batch, L, D, device=device, dtype=torch.float32)
        conv_w, conv_b, x_w, dt_w, dt_b, A_log, D_skip = m._stacked()
        xz = m.in_proj(hidden).transpose(1, 2)
        x, z = xz[:, :E], xz[:, E:]
        plan, bwd_plan = mixer_plans(batch, E, L, N, device, inference=True)
        xc = BiConvFn.apply(x, conv_w, conv_b, True)
        scan_in = (*token_major_projections(xc, x_w, dt_w), -torch.exp(A_log.float()), D_skip.float())

        def scan():
            u, x_dbl, delta, A, D_f = scan_in
            return BiScanFn.apply(u, delta, A, x_dbl, D_f, z, dt_b.float(), R, plan, bwd_plan)

        y2 = scan()
        # (stage, call, calls per layer); each stage runs calls x depth times back to back in one timed
        # region, so the CPU runs ahead of the GPU as inside the model and launch latency is not counted
        # once per call.
        stages = [
            ("in_proj (1 GEMM)", lambda: m.in_proj(hidden), 1),
            ("conv + SiLU, both directions", lambda: BiConvFn.apply(x, conv_w, conv_b, True), 1),
            ("x_proj + dt_proj (2 batched GEMMs)", lambda: token_major_projections(xc, x_w, dt_w), 1),
            (f"scan, both directions ({plan[0]}, incl. the B|C fp32 copy)", scan, 1),
            ("merge + out_proj (1 GEMM, K = 2E)", lambda: merged_out_proj(y2, m.out_proj.weight), 1),
            ("add + RMSNorm", lambda: rms_norm(hidden, blk.norm.weight, residual=residual, prenorm=True,
                                               residual_in_fp32=True), 1),
        ]
        summed = 0.0
        for name, fn, per_layer in stages:
            count = per_layer * n_layers

            def repeated(fn=fn, count=count):
                for _ in range(count):
                    fn()

            ms = time_fn(repeated, device, max(1, warmup // 2), max(3, iters // 4))
            summed += ms
            rows.append({"stage": name, "ms": round(ms, 4), "share": round(ms / total_ms, 4)})
        rows.append({"stage": "other (embed, final norm, copies, gaps)", "ms": round(total_ms - summed, 4),
                     "share": round((total_ms - summed) / total_ms, 4)})
        rows.append({"stage": "whole forward_features", "ms": round(total_ms, 4), "share": 1.0})
    shape = f"B{batch} L{L} D{D} E{E} N{N} R{R} x{n_layers} layers"
    out = [{"model": VIM, "img_size": img_size, "mode": "infer", "impl": "ours", "dtype": dtype_name(dtype),
            "batch": batch, "shape": shape, **r} for r in rows]
    del model, x_img
    free(device)
    return out


def kernel_profile(img_size: int, batch: int, device: torch.device, dtype: torch.dtype, top: int = 15,
                   depth: int | None = None) -> list[dict[str, Any]]:
    """CUDA kernel time of one Vim-Ti forward, grouped by kernel name (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    model = build_vim(img_size, device, depth)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    with torch.inference_mode(), _autocast(device, dtype):
        for _ in range(2):
            model.forward_features(x)
        sync(device)
        with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
            model.forward_features(x)
            sync(device)
    ranked, all_ms = cuda_kernel_totals(prof, top)
    del model, x
    free(device)
    return [{"model": VIM, "img_size": img_size, "mode": "infer", "impl": "ours", "dtype": dtype_name(dtype),
             "batch": batch, "kernel": name[:80], "calls": n, "ms": round(ms, 4), "share": round(ms / all_ms, 4)}
            for name, (ms, n) in ranked]


# -- driver ---------------------------------------------------------------------------------------------------
def run(sizes: list[int], device: torch.device, dtype: torch.dtype = torch.bfloat16, batch_224: int = 64,
        batch_large: int = 8, warmup: int = 5, iters: int = 20, profile_size: int | None = 1024,
        torch_profile: bool = False, depth: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Measure every size for both models (ours then timm's, same process) and the stage profile."""
    rows: list[dict[str, Any]] = []
    for s in sizes:
        batch = batch_224 if s <= 224 else batch_large
        pair = {}
        for impl, build, name in (("ours", build_vim, VIM), ("timm", build_deit, DEIT)):
            model = build(s, device, depth)
            res = measure(model, s, batch, device, dtype, warmup, iters)
            del model
            free(device)
            row = {"model": name, "img_size": s, "mode": "infer", "impl": impl, "dtype": dtype_name(dtype),
                   "batch": batch, **res}
            pair[impl] = row
            rows.append(row)
            log.info("%s %d px: %s", name, s, res)
        ours, peer = pair["ours"], pair["timm"]
        both = ours.get("img_per_s") and peer.get("img_per_s")
        ours["ratio"] = round(ours["img_per_s"] / peer["img_per_s"], 3) if both else None
        if ours.get("peak_gib") and peer.get("peak_gib"):
            ours["mem_ratio"] = round(ours["peak_gib"] / peer["peak_gib"], 3)
        peer["ratio"] = 1.0 if peer.get("img_per_s") else None
    out = {"rows": rows, "stages": [], "kernels": []}
    if profile_size and not use_triton(torch.empty(0, device=device)):
        log.warning("no stage profile: its stages are the fused mixer's Triton launches (CUDA, or TRITON_INTERPRET=1)")
    elif profile_size:
        batch = batch_224 if profile_size <= 224 else batch_large
        out["stages"] = stage_profile(profile_size, batch, device, dtype, warmup, iters, depth)
        if torch_profile and device.type == "cuda":
            try:
                out["kernels"] = kernel_profile(profile_size, batch, device, dtype, depth=depth)
            except Exception as e:  # the profiler is a diagnostic; never lose the measured rows to it
                log.warning("torch.profiler kernel table failed: %s", e)
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vim_vs_deit", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="224,512,768,1024,1248", help="comma-separated square input sizes")
    p.add_argument("--profile-size", type=int, default=1024, help="size of the per-stage profile (0: none)")
    p.add_argument("--torch-profile", action="store_true", help="also a torch.profiler kernel table")
    add_model_bench_options(p, "vim_vs_deit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = start_model_bench(args)
    if device is None:
        return 2
    sizes = parse_sizes(args.sizes)  # empty: the profile alone
    out = run(sizes, device, torch.bfloat16, args.batch_224, args.batch, args.warmup, args.iters,
              args.profile_size or None, args.torch_profile, args.depth)
    from zoo.bench.results import write_results

    extra = {"kernels": backend(),
             "timing": f"median of {args.iters} after {args.warmup} warm-up (+1 compile) iterations",
             "deit_attention": _deit_attention()}
    command = bench_command("benchmarks.vim_vs_deit", argv)
    path = write_results(args.name, out["rows"], command=command, out_dir=args.out_dir, extra_meta=extra)
    if out["stages"] or out["kernels"]:
        write_results(f"{args.name}_stages", out["stages"] + out["kernels"], command=command, out_dir=args.out_dir,
                      extra_meta=extra)
    _print_table(out)
    print(f"wrote {path}")
    return 0


def _deit_attention() -> str:
    try:
        from timm.layers import use_fused_attn

        return "sdpa (timm fused_attn)" if use_fused_attn() else "timm eager attention"
    except ImportError:
        return "unknown"


def _print_table(out: dict[str, list[dict[str, Any]]]) -> None:
    print(f"{'model':<24}{'px':>6}{'batch':>6}{'img/s':>10}{'peak GiB':>10}{'ratio':>8}")
    for r in out["rows"]:
        ips = f"{r['img_per_s']:.1f}" if r.get("img_per_s") else r.get("note", "-")
        peak = f"{r['peak_gib']:.3f}" if r.get("peak_gib") is not None else "-"
        ratio = f"{r['ratio']:.3f}" if r.get("ratio") else "-"
        print(f"{r['model']:<24}{r['img_size']:>6}{r['batch']:>6}{ips:>10}{peak:>10}{ratio:>8}")
    if out["stages"]:
        s0 = out["stages"][0]
        print(f"\nstages of {s0['model']} at {s0['img_size']} px, batch {s0['batch']} ({s0['shape']}):")
        for r in out["stages"]:
            print(f"  {r['stage']:<42}{r['ms']:>10.3f} ms{100 * r['share']:>7.1f}%")
    if out["kernels"]:
        print("\ntop CUDA kernels of one forward:")
        for r in out["kernels"]:
            print(f"  {r['kernel']:<60}{r['calls']:>5}{r['ms']:>10.3f} ms{100 * r['share']:>7.1f}%")


if __name__ == "__main__":
    sys.exit(main())
