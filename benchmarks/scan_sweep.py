"""The fused Vim mixer's two-direction scan launch under forced launch configurations, side by side.

    python -m benchmarks.scan_sweep [--shapes 224,1024,1248] [--layouts channel,lane] [--variants sequential,chunked]
                                    [--profile]

Where the autotuner picks one config per shape and the plan (``mixer_plans``) picks sequential or chunked by a
fill rule, this times every (layout, variant, BLOCK_D, BLOCK_L, warps) of a list at Vim-Ti's mixer shapes
(E 384, N 16, R 12; 224 px b64, 1024 and 1248 px b8), bf16 inference, each checked against the first row of its
shape (rel. RMS of y2). Layout ``lane_cl``: the lane layout on channel-last inputs (xc, Δ, x_dbl as transposed
views of [2, B, L, ·] tensors, z a view of a [B, L, 2E] one: what the mixer's inference path passes). It shows
what each lever is worth before one is made the default. ``--profile`` runs each
config twice without timing (for ``ncu -k regex:biscan``).
Rows: ``benchmarks/results/scan_sweep.{json,md}``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

import torch

from benchmarks.options import add_run_options, bench_command, start_model_bench

SHAPES = {224: (64, 197), 1024: (8, 4097), 1248: (8, 6085)}
E, N, R = 384, 16, 12
# (BLOCK_D, BLOCK_L, warps): the channel layout's autotune set, and lane tiles (BLOCK_D = 32 x warps)
CHANNEL = [(32, 4, 1), (64, 4, 2), (32, 8, 2), (16, 8, 1), (8, 16, 1), (4, 32, 4)]
LANE = [(32, 1, 1), (64, 1, 2), (32, 2, 1), (64, 2, 2)]


@contextlib.contextmanager
def forced(layout: str, cfg: tuple[int, ...]):
    """Make the scan launcher's fixed config ``cfg`` (BLOCK_D, BLOCK_L, warps[, PREFETCH]) for the duration
    (plans built with autotune=False)."""
    import kernels.selective_scan.triton as st
    bd, bl, w = cfg[:3]
    extra = {"PREFETCH": cfg[3]} if layout == "lane" else {}
    name = "_lane_fixed_config" if layout == "lane" else "_fixed_config"
    saved = getattr(st, name)
    setattr(st, name, lambda *a, **k: {"BLOCK_D": bd, "BLOCK_L": bl, "num_warps": w, **extra})
    try:
        yield
    finally:
        setattr(st, name, saved)


def inputs(batch: int, L: int, device: torch.device, dtype: torch.dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    xc = torch.randn(2, batch, E, L, generator=g).to(device, dtype) * 0.5
    x_dbl = torch.randn(2, batch, R + 2 * N, L, generator=g).to(device, dtype)
    delta = (torch.randn(2, batch, E, L, generator=g) * 0.5).to(device, dtype)
    z = torch.randn(batch, E, L, generator=g).to(device, dtype)
    A = -torch.arange(1, N + 1, dtype=torch.float32).repeat(2, E, 1).to(device)
    D = torch.ones(2, E, device=device)
    bias = torch.full((2, E), -3.0, device=device)
    return xc, delta, A, x_dbl, D, z, bias


def channel_last(xc, delta, A, x_dbl, D, z, bias):
    """The same values with the mixer's inference strides: channels (E or R+2N) contiguous."""
    def cl(t):
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    xz = torch.cat([z, z], 1).transpose(1, 2).contiguous().transpose(1, 2)
    return cl(xc), cl(delta), A, cl(x_dbl), D, xz[:, z.shape[1]:], bias


def rows_for(args, device, dtype) -> list[dict[str, Any]]:
    from kernels.mamba_mixer.triton import biscan_fwd, mixer_plans
    from zoo.bench.timing import sync, time_fn

    out = []
    for img in args.shapes:
        batch, L = SHAPES[img]
        plain = inputs(batch, L, device, dtype)
        ref = None
        for layout in args.layouts:
            kind = layout.removesuffix("_cl")
            xc, delta, A, x_dbl, D, z, bias = channel_last(*plain) if layout.endswith("_cl") else plain
            for variant, seg in [(v, s) for v in args.variants for s in (args.segs if v == "chunked" else [None])]:
                plan, _ = mixer_plans(batch, E, L, N, device, variant=variant, seg=seg, autotune=False, layout=kind)
                for cfg in ([(*c, pf) for c in LANE for pf in args.prefetch] if kind == "lane" else CHANNEL):
                    base = {"shape": f"B{batch}_L{L}", "img_size": img, "layout": layout, "variant": plan[0],
                            "seg": plan[1], "BLOCK_D": cfg[0], "BLOCK_L": cfg[1], "warps": cfg[2],
                            "prefetch": cfg[3] if len(cfg) > 3 else None}
                    tag = f"{layout}/{plan[0]}/{'x'.join(map(str, cfg))}"
                    if plan[2] % cfg[1] or (args.only and tag not in args.only):
                        continue
                    with forced(kind, cfg):
                        run = lambda: biscan_fwd(xc, delta, A, x_dbl, D, z, bias, R, False, plan)[0]
                        try:
                            y = run()
                            sync(device)
                        except Exception as e:
                            out.append({**base, "note": f"failed: {type(e).__name__}: {str(e)[:120]}"})
                            print(out[-1], flush=True)
                            continue
                        if args.profile:
                            run()
                            sync(device)
                            print(base, flush=True)
                            continue
                        if ref is None:
                            ref = y.float()
                        err = ((y.float() - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
                        t = time_fn(run, device, warmup=args.warmup, iters=args.iters)
                    ms = t
                    exps = 2 * batch * E * L * N
                    out.append({**base, "rel_err_vs_first": float(f"{err:.2e}"), "ms": round(ms, 4),
                                "texp_per_s": round(exps / (ms * 1e-3) / 1e12, 3)})
                    print(out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scan_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="224,1024,1248")
    p.add_argument("--layouts", default="channel,lane")
    p.add_argument("--variants", default="sequential,chunked")
    p.add_argument("--segs", default="auto", help="chunked variant: tokens per segment, 'auto' = the plan's")
    p.add_argument("--only", default="", help="comma-separated layout/variant/BDxBLxW tags to run (default all)")
    p.add_argument("--prefetch", default="0,1", help="lane layout: PREFETCH values to try")
    p.add_argument("--profile", action="store_true")
    add_run_options(p, "scan_sweep")
    args = p.parse_args(argv)
    args.shapes = [int(s) for s in args.shapes.split(",")]
    args.layouts = args.layouts.split(",")
    args.variants = args.variants.split(",")
    args.segs = [None if x == "auto" else int(x) for x in args.segs.split(",")]
    args.only = [x for x in args.only.split(",") if x]
    args.prefetch = [int(x) for x in args.prefetch.split(",")]
    device = start_model_bench(args)
    if device is None:
        return 1
    rows = rows_for(args, device, torch.bfloat16)
    if not args.profile:
        from zoo.bench.results import write_results
        write_results(args.name, rows, command=bench_command("benchmarks.scan_sweep", argv), out_dir=args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
