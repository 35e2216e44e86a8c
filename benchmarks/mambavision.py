"""MambaVision against timm's peers, side by side in one run, and against the official code's H200 figures.

    python -m benchmarks.mambavision [--models t,t2,s,b] [--large-models t] [--sizes 224,512]
                                     [--variants eager,channels_last] [--compile [--compile-mode reduce-overhead]]
                                     [--peers deit_tiny_patch16_224,...]

Inference (``model(x)``: stem to logits, 1000 classes) under bf16 autocast in ``torch.inference_mode``, batch
128 at 224 px and 16 above (``--batch-224`` / ``--batch``). Ours: the registered ``mambavision_*_224`` built at
each size (above 224 px only the ``--large-models``), in each ``--variants`` form: ``eager``; ``channels_last`` (model and input in channels-last memory,
so the conv stages run NHWC and the 224-px window partition is a view); ``--compile`` adds ``compile`` and
``compile_channels_last`` (``torch.compile`` in ``--compile-mode``: ``default``, or ``reduce-overhead`` for
CUDA graphs; the Triton scan and conv run as opaque calls between compiled regions). timm's peers (built without weights, SDPA attention) run in the same process
right after. Images/s from the median of CUDA-event-timed iterations after warm-up (the first call, which
compiles and autotunes, is not timed); peak memory is ``torch.cuda.max_memory_allocated`` over the timed
calls (weights and input included).

Each row carries ``official_img_per_s``: what the issue quotes for the official code (mamba_ssm's CUDA
kernels) and the same peers measured in one run on one H200 (2026-12-02), and ``vs_official`` = ours / that.
The peers' ratio tells how this machine compares with that run. Targets (issue #20): MambaVision-T >= 1.3x
the official figure at 224 and >= 1.0x at 512, with equal or less memory.

Rows go to ``benchmarks/results/mambavision.{json,md}``. ``--device cpu`` runs the same code at small sizes
(a check of the script, not a measurement).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import torch

from benchmarks.options import add_model_bench_options, bench_command, parse_sizes, timed_row, set_scan_options, start_model_bench
from kernels.common import backend
from zoo.bench.timing import dtype_name, free

log = logging.getLogger(__name__)

OURS = {"t": "mambavision_t_224", "t2": "mambavision_t2_224", "s": "mambavision_s_224", "b": "mambavision_b_224",
        "l": "mambavision_l_224", "l2": "mambavision_l2_224"}
PEERS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "convnext_tiny", "efficientvit_b1")
VARIANTS = ("eager", "channels_last", "compile", "compile_channels_last")

OFFICIAL = {  # (model, img_size) -> img/s of the official code / timm on one H200, bf16/fp16 AMP (issue #20)
    ("mambavision_t_224", 224): 7751, ("mambavision_t_224", 512): 1272, ("mambavision_t2_224", 224): 8853,
    ("mambavision_s_224", 224): 6846, ("mambavision_b_224", 224): 5146,
    ("deit_tiny_patch16_224", 224): 30122, ("deit_small_patch16_224", 224): 18652, ("convnext_tiny", 224): 8050,
    ("efficientvit_b1", 224): 6777,
}


def build_ours(name: str, img_size: int, device: torch.device, depth: int | None = None) -> torch.nn.Module:
    """A registered MambaVision at ``img_size``; ``depth`` shrinks every stage to that many blocks (checks)."""
    import zoo

    kw = {"depths": (depth,) * 4} if depth else {}
    return zoo.create_model(name, img_size=img_size, **kw).to(device).eval()


def build_peer(name: str, img_size: int, device: torch.device, depth: int | None = None) -> torch.nn.Module:
    import timm

    kw: dict[str, Any] = {}
    if name.startswith("deit"):
        kw["img_size"] = img_size
        if depth:
            kw["depth"] = depth
    elif depth and name == "convnext_tiny":
        kw["depths"] = (depth,) * 4
    return timm.create_model(name, pretrained=False, **kw).to(device).eval()


def measure(model: torch.nn.Module, img_size: int, batch: int, device: torch.device, dtype: torch.dtype,
            warmup: int, iters: int, channels_last: bool = False, compiled: bool = False,
            compile_mode: str = "default") -> dict[str, Any]:
    """img/s and peak GiB of ``model(x)``; an OOM or an error is a row with a note, not a crash."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    fn = torch.compile(model, mode=compile_mode) if compiled else model
    x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=fmt)

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            return fn(x)

    try:
        return timed_row(step, batch, device, warmup, iters)
    finally:
        del x, fn
        free(device)


def _with_official(row: dict[str, Any]) -> dict[str, Any]:
    ref = OFFICIAL.get((row["model"], row["img_size"]))
    row["official_img_per_s"] = ref
    row["vs_official"] = round(row["img_per_s"] / ref, 4) if ref and row.get("img_per_s") is not None else None
    return row


def run(models: list[str], peers: list[str], sizes: list[int], variants: list[str], device: torch.device,
        dtype: torch.dtype = torch.bfloat16, batch_224: int = 128, batch_large: int = 16, warmup: int = 10,
        iters: int = 30, depth: int | None = None, scan_options: dict | None = None,
        large_models: list[str] | None = None, compile_mode: str = "default") -> list[dict[str, Any]]:
    """Every size: ours in each variant (above 224 px only ``large_models``, default all), then each peer
    (eager, its default memory format), one process."""
    rows: list[dict[str, Any]] = []
    for s in sizes:
        batch = batch_224 if s <= 224 else batch_large
        for name in (models if s <= 224 or large_models is None else large_models):
            model = build_ours(name, s, device, depth)
            if scan_options:
                set_scan_options(model, **scan_options)
            for variant in variants:
                res = measure(model, s, batch, device, dtype, warmup, iters, channels_last="channels_last" in variant,
                              compiled=variant.startswith("compile"), compile_mode=compile_mode)
                rows.append(_with_official({"model": name, "img_size": s, "mode": "infer", "impl": "ours",
                                            "variant": variant, "dtype": dtype_name(dtype), "batch": batch, **res}))
                log.info("%s %s %d px: %s", name, variant, s, res)
            del model
            free(device)
        for name in peers:
            try:
                model = build_peer(name, s, device, depth)
            except Exception as e:  # noqa: BLE001  (a timm without this model)
                res = {"ms": None, "img_per_s": None, "peak_gib": None, "note": f"build error: {e}"[:300]}
            else:
                res = measure(model, s, batch, device, dtype, warmup, iters)
                del model
                free(device)
            rows.append(_with_official({"model": name, "img_size": s, "mode": "infer", "impl": "timm",
                                        "variant": "eager", "dtype": dtype_name(dtype), "batch": batch, **res}))
            log.info("%s %d px: %s", name, s, res)
    return rows


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mambavision", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="t", help=f"comma-separated sizes of ours: {','.join(OURS)}")
    p.add_argument("--large-models", default="t", help="which of --models also run above 224 px")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated timm models ('' for none)")
    p.add_argument("--sizes", default="224,512", help="comma-separated square input sizes")
    p.add_argument("--variants", default="eager,channels_last", help=f"forms of ours: {','.join(VARIANTS[:2])}")
    p.add_argument("--compile", action="store_true", help="also torch.compile variants (adds compile time)")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode of the compiled variants (reduce-overhead: CUDA graphs)")
    p.add_argument("--scan-variant", default=None, choices=("auto", "sequential", "chunked"),
                   help="selective-scan kernel variant (default: its heuristic)")
    add_model_bench_options(p, "mambavision")
    p.set_defaults(batch_224=128, batch=16, warmup=10, iters=30)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    large = [m for m in args.large_models.split(",") if m]
    unknown = [m for m in args.models.split(",") + large if m and m not in OURS]
    variants = [v for v in args.variants.split(",") if v]
    if args.compile:
        variants += [f"compile{'_' + v if v != 'eager' else ''}" for v in variants]
    bad = [v for v in variants if v not in VARIANTS]
    if unknown or bad:
        print(f"error: unknown --models {unknown} (choose from {list(OURS)}) or --variants {bad} "
              f"(choose from {list(VARIANTS[:2])}; --compile adds the compiled ones)", file=sys.stderr)
        return 2
    device = start_model_bench(args)
    if device is None:
        return 2
    models = [OURS[m] for m in args.models.split(",") if m]
    peers = [p for p in args.peers.split(",") if p]
    rows = run(models, peers, parse_sizes(args.sizes), variants, device, torch.bfloat16, args.batch_224, args.batch,
               args.warmup, args.iters, args.depth, {"variant": args.scan_variant}, [OURS[m] for m in large],
               args.compile_mode)
    from zoo.bench.results import write_results

    extra = {"kernels": backend(), "timing": f"median of {args.iters} after {args.warmup} warm-up (+1 untimed) "
             f"iterations", "official_source": "issue #20: official MambaVision + mamba_ssm CUDA, one H200, 2026-12-02"}
    path = write_results(args.name, rows, command=bench_command("benchmarks.mambavision", argv), out_dir=args.out_dir,
                         extra_meta=extra)
    _print_table(rows)
    print(f"wrote {path}")
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<24}{'variant':<24}{'px':>5}{'batch':>6}{'img/s':>10}{'peak GiB':>10}{'official':>10}{'ratio':>7}")
    for r in rows:
        ips = f"{r['img_per_s']:.1f}" if r.get("img_per_s") is not None else r.get("note", "-")[:10]
        peak = f"{r['peak_gib']:.3f}" if r.get("peak_gib") is not None else "-"
        off = str(r["official_img_per_s"]) if r.get("official_img_per_s") else "-"
        ratio = f"{r['vs_official']:.3f}" if r.get("vs_official") is not None else "-"
        print(f"{r['model']:<24}{r['variant']:<24}{r['img_size']:>5}{r['batch']:>6}{ips:>10}{peak:>10}{off:>10}{ratio:>7}")


if __name__ == "__main__":
    sys.exit(main())
