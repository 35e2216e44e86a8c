"""Where a training step's time goes: models of one recipe shape side by side, host pace against GPU work.

    python -m benchmarks.train_step [--models vim_micro_patch4_32,vit_micro_patch4_32] [--batch 512] [--img-size 32]
                                   [--scan-chunks 32,8] [--compile]

One step is what the CIFAR recipes run per batch, without the data: bf16 autocast forward, cross-entropy,
backward, gradient clipping at 1.0 and a foreach AdamW step. Per model (and per scan ``chunk=`` in
``--scan-chunks`` for models with a selective scan, set on their mixers' ``scan_options``) it reports

- ``ms_step``: wall time per step over steps issued back to back (the pace a training loop gets),
- ``host_ms``: the time Python takes to issue one step after a synchronize (median; the GPU is idle at its start,
  so this is the host's own cost unless something in the step waits for the GPU),
- ``gpu_ms``: the summed CUDA kernel time of one profiled step (torch.profiler), and ``launches`` per step.

``ms_step`` close to ``host_ms`` and well above ``gpu_ms`` means the step is bound by the host. The top CUDA
kernels of every configuration go to ``<name>_kernels``. ``--device cpu`` checks the script at a tiny depth.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.options import add_run_options, bench_command, set_scan_options, start_model_bench
from kernels.common import backend
from zoo.bench.timing import cuda_kernel_totals, dtype_name, free, sync

log = logging.getLogger(__name__)


def _has_selective_scan(model: torch.nn.Module) -> bool:
    return any(hasattr(m, "scan_options") for m in model.modules())


def _make_step(model: torch.nn.Module, device: torch.device, batch: int, img_size: int, num_classes: int,
               dtype: torch.dtype, compile_model: bool):
    net = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05,
                            foreach=True if device.type == "cuda" else None)
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True if device.type == "cuda" else None)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure_step(step, device: torch.device, warmup: int, iters: int, top: int) -> tuple[dict[str, Any], list]:
    """Pace, host cost, GPU work and launches of one step; also its top CUDA kernels."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    ms_step = (time.perf_counter() - t0) * 1e3 / iters
    host = []
    for _ in range(max(3, iters // 4)):
        sync(device)
        t1 = time.perf_counter()
        step()
        host.append((time.perf_counter() - t1) * 1e3)
    sync(device)
    row: dict[str, Any] = {"ms_step": round(ms_step, 3), "host_ms": round(statistics.median(host), 3)}
    kernels: list = []
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
            step()
            sync(device)
        ranked, gpu_ms = cuda_kernel_totals(prof)
        row.update(gpu_ms=round(gpu_ms, 3), launches=sum(n for _, (_, n) in ranked),
                   gpu_busy=round(gpu_ms / ms_step, 3))
        kernels = ranked[:top]
    return row, kernels


def run(models: list[str], device: torch.device, batch: int, img_size: int, num_classes: int = 10,
        scan_chunks: list[int] | None = None, compile_model: bool = False, warmup: int = 5, iters: int = 20,
        depth: int | None = None, top: int = 12, dtype: torch.dtype = torch.bfloat16) -> dict[str, list]:
    """Rows per (model, scan chunk, compiled) and each configuration's top kernels."""
    import zoo

    rows, kernel_rows = [], []
    for name in models:
        kw = {"depth": depth} if depth else {}
        model = zoo.create_model(name, img_size=img_size, num_classes=num_classes, **kw).to(device).train()
        params = sum(p.numel() for p in model.parameters())
        chunks: list[int | None] = list(scan_chunks or [None]) if _has_selective_scan(model) else [None]
        for compiled in ([False, True] if compile_model else [False]):
            for chunk in chunks:
                base = {"model": name, "img_size": img_size, "batch": batch, "dtype": dtype_name(dtype),
                        "params_m": round(params / 1e6, 3), "scan_chunk": chunk or "default", "compiled": compiled}
                try:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    set_scan_options(model, chunk=chunk)
                    step = _make_step(model, device, batch, img_size, num_classes, dtype, compiled)
                    res, kernels = measure_step(step, device, warmup, iters, top)
                    res["img_per_s"] = round(batch / res["ms_step"] * 1e3, 1)
                    if device.type == "cuda":
                        res["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                    kernel_rows += [{**base, "kernel": k[:80], "calls": n, "ms": round(ms, 4),
                                     "share": round(ms / res.get("gpu_ms", ms), 4)} for k, (ms, n) in kernels]
                except Exception as e:  # one configuration failing (e.g. compile) is a row, not a lost run
                    log.warning("%s chunk %s compiled %s failed: %s", name, chunk, compiled, e)
                    res = {"note": f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"}
                finally:
                    model.zero_grad(set_to_none=True)
                    free(device)
                rows.append({**base, **res})
                log.info("%s", rows[-1])
        del model
        free(device)
    return {"rows": rows, "kernels": kernel_rows}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vim_micro_patch4_32,vit_micro_patch4_32")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--scan-chunks", default="", help="comma-separated scan chunk= values for scan models")
    p.add_argument("--compile", action="store_true", help="also each model under torch.compile")
    add_run_options(p, "train_step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = start_model_bench(args)
    if device is None:
        return 2
    chunks = [int(c) for c in args.scan_chunks.split(",") if c.strip()]
    out = run([m for m in args.models.split(",") if m], device, args.batch, args.img_size, args.num_classes, chunks,
              args.compile, args.warmup, args.iters, args.depth)
    from zoo.bench.results import write_results

    command = bench_command("benchmarks.train_step", argv)
    extra = {"kernels": backend(),
             "step": "bf16 autocast fwd + CE + bwd + clip 1.0 + foreach AdamW, synthetic batch on the device",
             "timing": f"ms_step over {args.iters} back-to-back steps after {args.warmup} warm-up"}
    path = write_results(args.name, out["rows"], command=command, out_dir=args.out_dir, extra_meta=extra)
    if out["kernels"]:
        write_results(f"{args.name}_kernels", out["kernels"], command=command, out_dir=args.out_dir, extra_meta=extra)
    print(f"{'model':<24}{'chunk':>8}{'comp':>6}{'ms/step':>10}{'host ms':>10}{'gpu ms':>9}{'launch':>8}{'img/s':>10}")
    for r in out["rows"]:
        if "ms_step" not in r:
            print(f"{r['model']:<24}{r['scan_chunk']!s:>8}{r['compiled']!s:>6}  {r.get('note')}")
            continue
        print(f"{r['model']:<24}{r['scan_chunk']!s:>8}{r['compiled']!s:>6}{r['ms_step']:>10.2f}{r['host_ms']:>10.2f}"
              f"{r.get('gpu_ms', float('nan')):>9.2f}{r.get('launches', 0):>8}{r['img_per_s']:>10.1f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
