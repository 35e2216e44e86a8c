"""Throughput and peak memory of registered models on your own device, in timm's benchmark columns.

    zoo bench throughput MODEL [MODEL ...] [--img-size 224,512] [--batch-size 8,64] [--mode infer,train]
                         [--dtype bf16|fp16|fp32] [--channels-last] [--compile] [--device cuda|cpu]
                         [--warmup 5] [--iters 20] [--model-kwargs depth=6 ...] [--csv out.csv] [--out DIR]

Every (model, image size, batch size) is built by name through ``zoo.create_model`` at that image size and
timed in each mode: ``infer`` is a forward under ``torch.no_grad`` (eval mode); ``train`` is a forward, a
cross-entropy loss against random labels, the backward and an AdamW step (train mode), as timm's
benchmark.py does it. Reduced precision runs under autocast. Each figure is the median step over
``--iters`` steps after ``--warmup`` (CUDA events on a GPU); samples/s = batch / step time. Peak memory is
CUDA's max allocated during the mode (None on the CPU).

Output: a table on stdout; ``--csv`` writes one line per (model, size, batch) with timm's columns (model,
infer_samples_per_sec, infer_step_time, infer_batch_size, infer_img_size, infer_gmacs, train_samples_per_sec,
train_step_time, train_batch_size, train_img_size, param_count) plus ``infer_peak_gib`` / ``train_peak_gib``;
``--out DIR`` writes ``<name>.json`` and ``<name>.md`` in the project's results format (one row per mode).
GMACs are those of a batch-1 forward as torch's FlopCounterMode counts them (matmuls, convolutions, SDPA);
custom kernels such as the selective scan are not counted.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zoo.bench.timing import dtype_name, free, time_fn
from zoo.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("infer", "train")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TIMM_COLUMNS = ["model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size", "infer_img_size",
                "infer_gmacs", "train_samples_per_sec", "train_step_time", "train_batch_size", "train_img_size",
                "param_count"]
PEAK_COLUMNS = ["infer_peak_gib", "train_peak_gib"]


def parse_ints(text: str, what: str) -> list[int]:
    """``"224,512"`` -> [224, 512]; ConfigError naming the flag for anything else."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated positive integers, e.g. 224,512; got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what} takes comma-separated positive integers, e.g. 224,512; got {text!r}")
    return values


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ConfigError(f"--mode takes a comma-separated subset of {','.join(MODES)}; got {text!r}")
    return modes


def parse_model_kwargs(items: list[str]) -> dict[str, Any]:
    """``["depth=6", "drop_path_rate=0.1"]`` -> keyword arguments for create_model (values read as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-kwargs takes KEY=VALUE pairs, e.g. depth=6; got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _input_chans(model: torch.nn.Module) -> int:
    """Input channels from the model's pretrained_cfg (timm's contract); 3 when it says nothing."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else getattr(cfg, "input_size", None)
    return int(size[0]) if size else 3


def _gmacs(model: torch.nn.Module, x: torch.Tensor, amp) -> float | None:
    """GMACs of one sample's forward as FlopCounterMode counts them (None if counting fails)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), amp(), counter:
            model(x[:1])
        return round(counter.get_total_flops() / 2 / 1e9, 4)
    except Exception as e:  # noqa: BLE001 - a figure we cannot count is left out, not a failed benchmark
        log.info("GMACs not counted: %s", e)
        return None


def _autocast(device: torch.device, dtype: torch.dtype):
    def ctx():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    return ctx


def measure(name: str, img_size: int, batch_size: int, modes: list[str], device: torch.device,
            dtype: torch.dtype = torch.bfloat16, channels_last: bool = False, compile_model: bool = False,
            warmup: int = 5, iters: int = 20, **model_kwargs) -> list[dict[str, Any]]:
    """One row per mode for ``name`` at this image and batch size (``model_kwargs`` go to create_model)."""
    import zoo

    model = zoo.create_model(name, img_size=img_size, **model_kwargs).to(device)
    num_classes = getattr(model, "num_classes", None)
    if "train" in modes and not num_classes:
        raise ConfigError(f"{name}: train mode times a classifier (cross-entropy on its logits); this model has "
                          f"no num_classes. Run it with --mode infer")
    params = sum(p.numel() for p in model.parameters())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch_size, _input_chans(model), img_size, img_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    amp = _autocast(device, dtype)
    gmacs = _gmacs(model.eval(), x, amp)
    step_model = torch.compile(model) if compile_model else model
    base = {"model": name, "img_size": img_size, "batch": batch_size, "impl": "ours", "dtype": dtype_name(dtype),
            "channels_last": channels_last, "compiled": compile_model, "param_count": round(params / 1e6, 3),
            "gmacs": gmacs}
    rows = []
    for mode in modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if mode == "infer":
            model.eval()

            def step():
                with torch.no_grad(), amp():
                    step_model(x)
        else:
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            target = torch.randint(0, num_classes, (batch_size,), device=device)

            def step():
                with amp():
                    loss = F.cross_entropy(step_model(x).float(), target)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        ms = time_fn(step, device, warmup, iters)
        peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None
        rows.append({**base, "mode": mode, "ms": round(ms, 4), "img_per_s": round(batch_size / ms * 1e3, 2),
                     "peak_gib": peak})
        log.info("%s %d px batch %d %s: %.3f ms, %.1f samples/s", name, img_size, batch_size, mode, ms,
                 rows[-1]["img_per_s"])
    del model, step_model
    free(device)
    return rows


def run(models: list[str], img_sizes: list[int], batch_sizes: list[int], modes: list[str], device: torch.device,
        **kw) -> list[dict[str, Any]]:
    """Rows of every (model, image size, batch size, mode); a configuration that runs out of memory is a row
    with a note, not a lost run."""
    rows = []
    for name in models:
        for size in img_sizes:
            for batch in batch_sizes:
                try:
                    rows += measure(name, size, batch, modes, device, **kw)
                except torch.OutOfMemoryError as e:
                    free(device)
                    rows += [{"model": name, "img_size": size, "batch": batch, "mode": m, "impl": "ours",
                              "note": f"out of memory: {str(e).splitlines()[0][:120]}"} for m in modes]
    return rows


def timm_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as timm's benchmark CSV has them: one line per (model, image size, batch), infer_* and
    train_* columns side by side, step times in ms, param_count in millions."""
    merged: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        line = merged.setdefault((r["model"], r["img_size"], r["batch"]),
                                 {"model": r["model"], "param_count": r.get("param_count")})
        if "ms" not in r:
            continue
        m = r["mode"]
        line.update({f"{m}_samples_per_sec": r["img_per_s"], f"{m}_step_time": r["ms"],
                     f"{m}_batch_size": r["batch"], f"{m}_img_size": r["img_size"], f"{m}_peak_gib": r["peak_gib"]})
        if m == "infer":
            line["infer_gmacs"] = r.get("gmacs")
    return list(merged.values())


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=TIMM_COLUMNS + PEAK_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(timm_rows(rows))
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo bench throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="registered model names (zoo list)")
    p.add_argument("--img-size", default="224", help="comma-separated image sizes (default 224)")
    p.add_argument("--batch-size", default="64", help="comma-separated batch sizes (default 64)")
    p.add_argument("--mode", default="infer,train", help="infer, train or both (default infer,train)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="autocast dtype (default bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--channels-last", action="store_true", help="model and input in channels-last memory format")
    p.add_argument("--compile", action="store_true", help="time torch.compile(model)")
    p.add_argument("--device", default=None, choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="keyword arguments for zoo.create_model, as timm's benchmark takes them (e.g. depth=6)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--csv", default=None, help="write timm's benchmark CSV columns here")
    p.add_argument("--out", default=None, help="write <name>.json and <name>.md (results format) into this folder")
    p.add_argument("--name", default="throughput", help="results file stem for --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = parse_ints(args.img_size, "--img-size")
    batches = parse_ints(args.batch_size, "--batch-size")
    modes = parse_modes(args.mode)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    if args.warmup < 0 or args.iters < 1:
        raise ConfigError(f"--warmup must be >= 0 and --iters >= 1; got {args.warmup} and {args.iters}")
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible; use --device cpu (figures of the CPU)")
    device = torch.device(device_name)
    if device.type == "cuda":  # TF32 matmuls, as timm's benchmark allows them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    import zoo

    known = set(zoo.list_models())
    for name in args.models:  # unknown names fail before anything is timed
        if name not in known:
            hint = (f"; throughput times architectures, drop the pretrained tag: {name.split('.')[0]}"
                    if "." in name else "")
            raise ConfigError(f"unknown model {name!r}: `zoo list` shows every registered model{hint}")
    rows = run(args.models, sizes, batches, modes, device, dtype=dtype, channels_last=args.channels_last,
               compile_model=args.compile, warmup=args.warmup, iters=args.iters, **model_kwargs)
    print(f"{'model':<32}{'img':>6}{'batch':>7}{'mode':>7}{'ms':>11}{'samples/s':>12}{'peak GiB':>10}")
    for r in rows:
        if "ms" not in r:
            print(f"{r['model']:<32}{r['img_size']:>6}{r['batch']:>7}{r['mode']:>7}  {r['note']}")
            continue
        peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.3f}"
        print(f"{r['model']:<32}{r['img_size']:>6}{r['batch']:>7}{r['mode']:>7}{r['ms']:>11.3f}"
              f"{r['img_per_s']:>12.1f}{peak:>10}")
    if args.csv:
        print(f"wrote {write_csv(args.csv, rows)}")
    if args.out:
        from zoo.bench.results import write_results

        command = "zoo bench throughput " + " ".join(sys.argv[1:] if argv is None else argv)
        extra = {"device": str(device), "warmup": args.warmup, "iters": args.iters,
                 "timing": "median step; infer: no_grad forward; train: fwd + CE + bwd + AdamW step"}
        print(f"wrote {write_results(args.name, rows, command=command, out_dir=args.out, extra_meta=extra)}")
    return 0 if any("ms" in r for r in rows) else 1  # out-of-memory rows are results; nothing measured is not
