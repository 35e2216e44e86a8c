"""Timing and bookkeeping shared by the whole-model benchmarks (vim_vs_deit, mixers, train_step)."""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs after ``warmup`` runs (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def free(device: torch.device) -> None:
    """Drop garbage and cached GPU blocks between measurements."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cuda_kernel_totals(prof, top: int | None = None) -> tuple[list[tuple[str, tuple[float, int]]], float]:
    """CUDA kernels of a finished torch.profiler run grouped by name: ``[(name, (ms, calls))]`` largest first
    (the first ``top``), and the ms of all kernels together."""
    from torch.autograd import DeviceType

    totals: dict[str, list[float]] = {}
    for ev in prof.key_averages():
        t = getattr(ev, "self_device_time_total", 0.0) or 0.0
        if getattr(ev, "device_type", None) == DeviceType.CUDA and t > 0:
            entry = totals.setdefault(ev.key, [0.0, 0])
            entry[0] += t / 1e3
            entry[1] += ev.count
    ranked = sorted(((k, (v[0], int(v[1]))) for k, v in totals.items()), key=lambda kv: -kv[1][0])
    return ranked[:top] if top else ranked, sum(v[0] for v in totals.values()) or 1.0


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
