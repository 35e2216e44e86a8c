"""Token mixers of the pluggable ViT side by side: images/s and peak memory across resolutions, one run.

    python -m benchmarks.mixers [--sizes 224,512,1024] [--mixers softmax,window,...] [--train]

For each size and each mixer (softmax first, the baseline): the ViT-Ti registered for that mixer
(``vit_tiny_patch16_224`` for softmax, ``vit_tiny_<mixer>_patch16_224`` otherwise; 192 wide, 12 deep, patch
16, all else equal) built with ``img_size=s`` and no classifier, ``forward_features`` under bf16 autocast in
``torch.no_grad`` (mode ``infer``), and with ``--train`` also forward + backward of the mean feature in train
mode (mode ``train``, no optimizer step). Batch 64 at <= 224 px, 8 above. Images/s from the median of
CUDA-event-timed iterations after warm-up (the first call, which compiles Triton kernels and flex_attention,
is not timed); peak memory is ``torch.cuda.max_memory_allocated`` (weights and input included).
``ratio_vs_softmax`` = img/s over softmax's at the same size and mode (``mem_vs_softmax`` likewise).

An OOM or any failure of one mixer becomes a row with ``note`` and the run goes on. Rows go to
``benchmarks/results/mixers.{json,md}`` through :func:`zoo.bench.results.write_results`.
``--device cpu`` runs the same code at small sizes (a check of the script, not a measurement).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import torch

from kernels.common import backend
from benchmarks.options import add_model_bench_options, bench_command, parse_sizes, timed_row, start_model_bench
from zoo.bench.timing import dtype_name, free

log = logging.getLogger(__name__)

MIXERS = ("softmax", "window", "block_sparse", "linear", "gla", "mamba", "delta")


def model_name(mixer: str) -> str:
    from backbones.vit import MIXER_NAMES

    return "vit_tiny_patch16_224" if mixer == "softmax" else f"vit_tiny_{MIXER_NAMES[mixer]}_patch16_224"


def impl_of(mixer: str, device: torch.device) -> str:
    """Which code computes the mixer: torch's attention ops, or the zoo's kernels (Triton or reference)."""
    if mixer == "softmax":
        return "sdpa"
    if mixer in ("window", "block_sparse"):
        return "flex_attention" if device.type == "cuda" else "sdpa_dense_mask"
    from kernels.common import use_triton

    probe = torch.empty(0, device=device)
    return "ours_triton" if use_triton(probe) else "ours_reference"


def build(mixer: str, img_size: int, device: torch.device, depth: int | None = None) -> torch.nn.Module:
    import zoo

    kw = {"depth": depth} if depth else {}
    return zoo.create_model(model_name(mixer), img_size=img_size, num_classes=0, **kw).to(device)


def measure(model: torch.nn.Module, mode: str, img_size: int, batch: int, device: torch.device, dtype: torch.dtype,
            warmup: int, iters: int) -> dict[str, Any]:
    """img/s and peak GiB of one mode; an OOM or an error is a row with a note, not a crash."""
    x = torch.randn(batch, 3, img_size, img_size, device=device)

    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                return model.forward_features(x)
    else:
        model.train()

        def step():
            with torch.autocast(device.type, dtype=dtype):
                y = model.forward_features(x)
            y.float().mean().backward()
            model.zero_grad(set_to_none=True)

    try:
        return timed_row(step, batch, device, warmup, iters)
    finally:
        del x
        model.zero_grad(set_to_none=True)
        free(device)


def run(sizes: list[int], mixers: list[str], device: torch.device, dtype: torch.dtype = torch.bfloat16,
        batch_224: int = 64, batch_large: int = 8, warmup: int = 5, iters: int = 20, train: bool = False,
        depth: int | None = None) -> list[dict[str, Any]]:
    """Every (size, mode, mixer) in one process; softmax first so each row gets its ratio."""
    modes = ["infer"] + (["train"] if train else [])
    order = (["softmax"] if "softmax" in mixers else []) + [m for m in mixers if m != "softmax"]
    rows: list[dict[str, Any]] = []
    for s in sizes:
        batch = batch_224 if s <= 224 else batch_large
        for mode in modes:
            base: dict[str, Any] | None = None
            for mixer in order:
                try:
                    model = build(mixer, s, device, depth)
                except Exception as e:  # noqa: BLE001
                    res = {"ms": None, "img_per_s": None, "peak_gib": None,
                           "note": f"build error: {type(e).__name__}: {e}"[:300]}
                else:
                    res = measure(model, mode, s, batch, device, dtype, warmup, iters)
                    del model
                    free(device)
                row = {"model": model_name(mixer), "mixer": mixer, "img_size": s, "mode": mode,
                       "impl": impl_of(mixer, device), "dtype": dtype_name(dtype), "batch": batch, **res}
                if mixer == "softmax":
                    base = row
                ok = base is not None and base.get("img_per_s") and row.get("img_per_s")
                row["ratio_vs_softmax"] = round(row["img_per_s"] / base["img_per_s"], 3) if ok else None
                mem_ok = base is not None and base.get("peak_gib") and row.get("peak_gib")
                row["mem_vs_softmax"] = round(row["peak_gib"] / base["peak_gib"], 3) if mem_ok else None
                rows.append(row)
                log.info("%s %d px %s: %s", mixer, s, mode, res)
    return rows


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mixers", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="224,512,1024", help="comma-separated square input sizes")
    p.add_argument("--mixers", default=",".join(MIXERS), help=f"comma-separated subset of {','.join(MIXERS)}")
    p.add_argument("--train", action="store_true", help="also time forward + backward (mode 'train')")
    add_model_bench_options(p, "mixers")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = start_model_bench(args)
    if device is None:
        return 2
    mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    unknown = [m for m in mixers if m not in MIXERS]
    if unknown:
        print(f"error: unknown mixer(s) {unknown}; choose from {','.join(MIXERS)}", file=sys.stderr)
        return 2
    sizes = parse_sizes(args.sizes)
    rows = run(sizes, mixers, device, torch.bfloat16, args.batch_224, args.batch, args.warmup, args.iters,
               args.train, args.depth)
    from zoo.bench.results import write_results

    command = bench_command("benchmarks.mixers", argv)
    extra = {"kernels": backend(),
             "timing": f"median of {args.iters} after {args.warmup} warm-up (+1 compile) iterations",
             "models": "ViT-Ti (192 wide, 12 deep, 3 heads, patch 16), only the token mixer differs"}
    path = write_results(args.name, rows, command=command, out_dir=args.out_dir, extra_meta=extra)
    _print_table(rows)
    print(f"wrote {path}")
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'mixer':<14}{'px':>6}{'mode':>7}{'batch':>6}{'img/s':>10}{'peak GiB':>10}{'vs softmax':>11}  impl")
    for r in rows:
        ips = f"{r['img_per_s']:.1f}" if r.get("img_per_s") else (r.get("note") or "-")[:40]
        peak = f"{r['peak_gib']:.3f}" if r.get("peak_gib") is not None else "-"
        ratio = f"{r['ratio_vs_softmax']:.3f}" if r.get("ratio_vs_softmax") else "-"
        print(f"{r['mixer']:<14}{r['img_size']:>6}{r['mode']:>7}{r['batch']:>6}{ips:>10}{peak:>10}{ratio:>11}  "
              f"{r['impl']}")


if __name__ == "__main__":
    sys.exit(main())
