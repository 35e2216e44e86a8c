"""Command-line options and kernel choices shared by the benchmarks."""
from __future__ import annotations

import argparse
import os
import sys

import torch


def add_model_bench_options(p: argparse.ArgumentParser, name: str) -> None:
    """Batch sizes per resolution plus :func:`add_run_options`."""
    p.add_argument("--batch-224", type=int, default=64, help="batch at <= 224 px")
    p.add_argument("--batch", type=int, default=8, help="batch above 224 px")
    add_run_options(p, name)


def add_run_options(p: argparse.ArgumentParser, name: str) -> None:
    """Device, timing iterations, kernel backend, depth override and output location."""
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--kernels", default=None, choices=("auto", "reference", "triton"),
                   help="set SPEEDZOO_KERNELS (default: leave as is, i.e. auto)")
    p.add_argument("--depth", type=int, default=None, help="override depth (script checks only)")
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default=name, help="results file stem")


def device_available(device: str) -> bool:
    """False (with a message) when CUDA is asked for but absent."""
    if device == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available; use --device cpu for a (meaningless) check run", file=sys.stderr)
        return False
    return True


def prepare_run(args: argparse.Namespace) -> torch.device:
    """Apply ``--kernels`` and allow TF32 matmuls on CUDA (as timm's benchmark does); returns the device."""
    if args.kernels:
        os.environ["SPEEDZOO_KERNELS"] = args.kernels
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def start_model_bench(args: argparse.Namespace) -> torch.device | None:
    """Logging, the device check and ``prepare_run``: the common start of a whole-model benchmark's main.

    Returns None (after a message) when the device is missing.
    """
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return prepare_run(args) if device_available(args.device) else None


def parse_sizes(text: str) -> list[int]:
    """``--sizes`` as a list of ints (empty entries ignored)."""
    return [int(s) for s in text.split(",") if s.strip()]


def bench_command(module: str, argv: list[str] | None) -> str:
    """The command line recorded in the results file."""
    return (f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])).strip()


def set_scan_options(model: torch.nn.Module, **options) -> int:
    """Give every selective-scan mixer of ``model`` these kernel keywords (``variant``, ``seg``, ``chunk``,
    ``autotune``; None values dropped, so no options means the kernel's heuristic); returns how many mixers."""
    chosen = {k: v for k, v in options.items() if v is not None}
    mixers = [m for m in model.modules() if hasattr(m, "scan_options")]
    for m in mixers:
        m.scan_options = dict(chosen)
    return len(mixers)


def timed_row(step, batch: int, device: torch.device, warmup: int, iters: int) -> dict:
    """``{ms, img_per_s, peak_gib}`` of ``step`` (one batch of ``batch`` images), the row every model benchmark
    writes; an OOM or another error is a row with a note, so one failing model or variant never loses the rest.

    The first call (Triton compilation and autotuning, torch.compile, cuDNN/cuBLAS heuristics) is untimed and
    the peak memory is that of the timed steady state, measured after it."""
    import logging
    import traceback

    from zoo.bench.timing import time_fn

    empty = {"ms": None, "img_per_s": None, "peak_gib": None}
    try:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        ms = time_fn(step, device, warmup, iters)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return {"ms": round(ms, 4), "img_per_s": round(batch / ms * 1e3, 1),
                "peak_gib": round(peak, 3) if peak is not None else None}
    except torch.cuda.OutOfMemoryError:
        return {**empty, "note": "OOM"}
    except Exception as e:
        logging.getLogger(__name__).warning("%s", traceback.format_exc())
        return {**empty, "note": f"error: {type(e).__name__}: {e}"[:300]}
