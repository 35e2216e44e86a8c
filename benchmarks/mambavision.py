"""MambaVision against timm's peers, side by side in one run, and against the official code's H200 figures.

    python -m benchmarks.mambavision [--models t,t2,s,b] [--large-models t] [--sizes 224,512]
                                     [--variants eager,channels_last,fused,cuda_graph,compile_fused]
                                     [--compile [--compile-mode reduce-overhead]] [--profile t@224]
                                     [--peers deit_tiny_patch16_224,...]

Inference (``model(x)``: stem to logits, 1000 classes) under bf16 autocast in ``torch.inference_mode``, batch
128 at 224 px and 16 above (``--batch-224`` / ``--batch``). Ours: the registered ``mambavision_*_224`` built at
each size (above 224 px only the ``--large-models``), in each of the ``--variants``:

- ``eager``: the model as built (official layout, NCHW);
- ``channels_last``: model and input in channels-last memory (the conv stages run NHWC, the 224-px window
  partition is a view);
- ``fused``: channels-last after ``timm.utils.reparameterize_model`` (the modules' ``fuse()``: BatchNorms and
  layer scale folded into the convs, the mixers' constants precomputed; see ``backbones.mambavision``);
- ``cuda_graph``: ``fused`` with the whole forward captured once into a ``torch.cuda.CUDAGraph`` on a static
  input after warm-up (autotuning happens outside the capture) and replayed in the timing loop;
- ``compile``, ``compile_channels_last``, ``compile_fused``: ``torch.compile`` (``--compile-mode``: ``default``,
  or ``reduce-overhead`` for CUDA graphs) of the eager / channels-last / fused forms; the Triton ops run as
  opaque custom ops between compiled regions. ``--compile`` appends the compiled form of each listed variant.

timm's peers (built without weights, SDPA attention) run in the same process right after. Images/s from the
median of CUDA-event-timed iterations after warm-up (the first call, which compiles and autotunes, is not
timed); peak memory is ``torch.cuda.max_memory_allocated`` over the timed calls (weights, input and a graph's
pool included).

``--profile MODEL@SIZE`` (e.g. ``t@224``) adds a torch.profiler run of that model (``fused``, eager launches
so every kernel is seen) over a few iterations: the CUDA time per region of the network (stem, each stage's
conv blocks, downsamples, and per token stage its LayerNorms, Mamba mixers, attention and MLPs, the rest as
``other``) and the top kernels by time with their group (conv2d, GEMM, attention, scan, conv1d, norm,
elementwise, copy), printed and written to ``<name>_profile.{json,md}``.

``--official-dir .official`` adds the official code itself as rows of impl ``official`` (eager and channels-last,
the forms its own benchmark runs): NVlabs' ``mambavision`` package (a wheel carried to the GPU machine) on
mamba_ssm's selective-scan CUDA kernel compiled from that folder (benchmarks.official), so its peak memory and
speed are measured in the same run as ours.

Each row carries ``official_img_per_s``: what the issue quotes for the official code (mamba_ssm's CUDA
kernels) and the same peers measured in one run on one H200 (2026-12-02), and ``vs_official`` = ours / that.
The peers' ratio tells how this machine compares with that run. Targets (issue #20): MambaVision-T >= 1.3x
the official figure at 224 and >= 1.0x at 512, with equal or less memory.

Rows go to ``benchmarks/results/mambavision.{json,md}``. ``--device cpu`` runs the same code at small sizes
(a check of the script, not a measurement; no CUDA graphs there, ``cuda_graph`` times the fused eager call).
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
VARIANTS = ("eager", "channels_last", "fused", "cuda_graph", "compile", "compile_channels_last", "compile_fused")
BASE_VARIANTS = VARIANTS[:4]
FUSED = ("fused", "cuda_graph", "compile_fused")

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


OFFICIAL_BUILDERS = {"mambavision_t_224": "mamba_vision_T", "mambavision_t2_224": "mamba_vision_T2",
                     "mambavision_s_224": "mamba_vision_S", "mambavision_b_224": "mamba_vision_B"}


def build_official(name: str, img_size: int, device: torch.device, official_dir: str) -> torch.nn.Module:
    """The official MambaVision (``mambavision`` package) of the registered ``name``, on mamba_ssm's kernel."""
    from benchmarks.official import install_mamba_ssm

    install_mamba_ssm(official_dir)
    from mambavision.models import mamba_vision

    return getattr(mamba_vision, OFFICIAL_BUILDERS[name])(pretrained=False, resolution=img_size).to(device).eval()


def fused_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The inference copy a timm user makes: ``timm.utils.reparameterize_model`` (every module's ``fuse()``)."""
    from timm.utils import reparameterize_model

    return reparameterize_model(model).eval()


def measure(model: torch.nn.Module, img_size: int, batch: int, device: torch.device, dtype: torch.dtype,
            warmup: int, iters: int, variant: str = "eager", compile_mode: str = "default") -> dict[str, Any]:
    """img/s and peak GiB of ``model(x)`` in ``variant`` (``model`` is already fused for the fused forms); an
    OOM or an error is a row with a note, not a crash."""
    fmt = torch.contiguous_format if variant in ("eager", "compile") else torch.channels_last
    model = model.to(memory_format=fmt)
    if variant.startswith("compile"):
        import torch._dynamo as dynamo

        # Block.forward is one frame per mixer type, width and window count: past the default limit of 8
        # recompiles dynamo would run the later blocks eagerly
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
    fn = torch.compile(model, mode=compile_mode) if variant.startswith("compile") else model
    x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=fmt)

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            return fn(x)

    try:
        if variant == "cuda_graph" and device.type == "cuda":
            from benchmarks.mamba_mixer import _graphed

            try:
                step = _graphed(step, device)
            except Exception as e:  # noqa: BLE001  (a capture failure is a row, not a lost run)
                log.warning("CUDA graph capture failed: %s", e)
                return {"ms": None, "img_per_s": None, "peak_gib": None, "note": f"capture error: {e}"[:300]}
        return timed_row(step, batch, device, warmup, iters)
    finally:
        del x, fn
        free(device)


def _official_rows(name: str, img_size: int, batch: int, device: torch.device, dtype: torch.dtype, warmup: int,
                   iters: int, official_dir: str) -> list[dict[str, Any]]:
    base = {"model": name, "img_size": img_size, "mode": "infer", "impl": "official", "dtype": dtype_name(dtype),
            "batch": batch}
    try:
        model = build_official(name, img_size, device, official_dir)
    except Exception as e:  # noqa: BLE001  (a peer that cannot be built is a row, not a lost run)
        return [_with_official({**base, "variant": "eager", "ms": None, "img_per_s": None, "peak_gib": None,
                                "note": f"build error: {e}"[:300]})]
    rows = []
    for variant in ("eager", "channels_last"):
        res = measure(model, img_size, batch, device, dtype, warmup, iters, variant)
        rows.append(_with_official({**base, "variant": variant, **res}))
        log.info("official %s %s %d px: %s", name, variant, img_size, res)
    del model
    free(device)
    return rows


def _with_official(row: dict[str, Any]) -> dict[str, Any]:
    ref = OFFICIAL.get((row["model"], row["img_size"]))
    row["official_img_per_s"] = ref
    row["vs_official"] = round(row["img_per_s"] / ref, 4) if ref and row.get("img_per_s") is not None else None
    return row


def run(models: list[str], peers: list[str], sizes: list[int], variants: list[str], device: torch.device,
        dtype: torch.dtype = torch.bfloat16, batch_224: int = 128, batch_large: int = 16, warmup: int = 10,
        iters: int = 30, depth: int | None = None, scan_options: dict | None = None,
        large_models: list[str] | None = None, compile_mode: str = "default",
        official_dir: str | None = None) -> list[dict[str, Any]]:
    """Every size: ours in each variant (above 224 px only ``large_models``, default all), the official code
    of each (``official_dir``: eager and channels-last), then each peer (eager, its default memory format), one
    process."""
    rows: list[dict[str, Any]] = []
    for s in sizes:
        batch = batch_224 if s <= 224 else batch_large
        for name in (models if s <= 224 or large_models is None else large_models):
            model = build_ours(name, s, device, depth)
            if scan_options:
                set_scan_options(model, **scan_options)
            fused = fused_copy(model) if any(v in FUSED for v in variants) else None
            for variant in variants:
                res = measure(fused if variant in FUSED else model, s, batch, device, dtype, warmup, iters, variant,
                              compile_mode)
                rows.append(_with_official({"model": name, "img_size": s, "mode": "infer", "impl": "ours",
                                            "variant": variant, "dtype": dtype_name(dtype), "batch": batch, **res}))
                log.info("%s %s %d px: %s", name, variant, s, res)
            del model, fused
            free(device)
            if official_dir and name in OFFICIAL_BUILDERS:
                rows += _official_rows(name, s, batch, device, dtype, warmup, iters, official_dir)
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


# -- profile --------------------------------------------------------------------------------------------------
KERNEL_GROUPS = (  # (group, pattern on the CUDA kernel name), first match wins
    ("conv1d (depthwise, Triton)", r"_conv_fwd_kernel"),
    ("selective scan (Triton)", r"_fwd_kernel|_tp_fwd|_combine_kernel|scan"),
    ("norm", r"layer_?norm|batch_?norm|_norm_fwd|bn_fw|welford"),
    ("attention (SDPA)", r"flash|fmha|attention|attn"),
    ("conv2d (cuDNN)", r"conv|fprop|dgrad|implicit|winograd|cudnn|nhwc|nchw"),
    ("GEMM", r"gemm|nvjet|cutlass|xmma|sm90|sm80|matmul|cublas"),
    ("copy / layout", r"copy|cat|transpose|permute|pad"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|silu|relu|add|mul|reduce"),
)


def kernel_group(name: str) -> str:
    """The op group of a CUDA kernel name (:data:`KERNEL_GROUPS`), 'other' when none matches."""
    import re

    low = name.lower()
    return next((g for g, pat in KERNEL_GROUPS if re.search(pat, low)), "other")


def _region_of(path: str, module: torch.nn.Module) -> str | None:
    """The profile region a module's forward is charged to (disjoint regions; None: not a region root)."""
    from backbones.mambavision import Attention, MambaVisionMixer

    parts = path.split(".")
    if path.endswith("patch_embed") and len(parts) <= 2:
        return "stem"
    if "levels" not in parts or parts[-1] == "levels":
        return "final norm + head" if parts[-1] in ("norm", "head") and len(parts) <= 2 else None
    stage = parts[parts.index("levels") + 1]
    tail = parts[parts.index("levels") + 2:]
    if tail == ["downsample"]:
        return f"downsample {stage}"
    if len(tail) == 2 and tail[0] == "blocks" and int(stage) < 2:
        return f"stage {stage}: conv blocks"
    if len(tail) == 3 and tail[0] == "blocks":
        if tail[2] in ("norm1", "norm2"):
            return f"stage {stage}: LayerNorm"
        if tail[2] == "mlp":
            return f"stage {stage}: MLP"
        if tail[2] == "mixer":
            kind = "Mamba mixer" if isinstance(module, MambaVisionMixer) or hasattr(module, "A") else \
                "attention" if isinstance(module, Attention) else "mixer"
            return f"stage {stage}: {kind}"
    return None


def profile(name: str, img_size: int, batch: int, device: torch.device, dtype: torch.dtype, iters: int = 3,
            depth: int | None = None, scan_options: dict | None = None) -> list[dict[str, Any]]:
    """Where one forward's time goes, ms per iteration: torch.profiler over ``iters`` eager forwards of the fused
    channels-last model gives the kernel time per region (module hooks open ``record_function`` ranges), then
    ``iters`` CUDA-graph replays of the same forward give the kernels by name (top 20, with :func:`kernel_group`)
    and by group. On the CPU the regions' CPU time stands in (a check of the script)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from zoo.bench.timing import sync

    model = build_ours(name, img_size, device, depth)
    if scan_options:
        set_scan_options(model, **scan_options)
    model = fused_copy(model).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    handles = []
    for path, mod in model.named_modules():
        region = _region_of(path, mod)
        if region is None:
            continue
        ctx: dict[str, Any] = {}

        def pre(m, args, region=region, ctx=ctx):
            ctx["r"] = record_function(f"region::{region}")
            ctx["r"].__enter__()

        def post(m, args, out, ctx=ctx):
            ctx.pop("r").__exit__(None, None, None)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            return model(x)

    cuda = device.type == "cuda"
    try:
        for _ in range(3):
            step()
        sync(device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch_profile(activities=acts, acc_events=True) as prof:
            for _ in range(iters):
                step()
            sync(device)
    finally:
        for h in handles:
            h.remove()
    base = {"model": name, "img_size": img_size, "mode": "infer", "impl": "ours", "variant": "fused",
            "dtype": dtype_name(dtype), "batch": batch}
    per_region = _region_times(prof, cuda)
    eager_ms = sum(per_region.values())
    ranked: list = []
    all_ms = eager_ms or 1.0
    if cuda:
        ranked, all_ms = _graph_kernels(step, device, iters)
    rows = [{**base, "table": "total", "name": "all CUDA kernels, one CUDA-graph replay" if cuda else
             "all ops (CPU)", "calls": sum(c for _, (_, c) in ranked) // iters, "ms": round(all_ms / iters, 4)},
            {**base, "table": "total", "name": "kernels of the regions, eager", "ms": round(eager_ms / iters, 4)}]
    for region, ms in sorted(per_region.items(), key=lambda kv: -kv[1]):
        rows.append({**base, "table": "region", "name": region, "ms": round(ms / iters, 4),
                     "share": round(ms / (eager_ms or 1.0), 4)})
    groups: dict[str, list[float]] = {}
    for kname, (ms, calls) in ranked:
        g = groups.setdefault(kernel_group(kname), [0.0, 0])
        g[0] += ms
        g[1] += calls
    for g, (ms, calls) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        rows.append({**base, "table": "group", "name": g, "calls": calls // iters, "ms": round(ms / iters, 4),
                     "share": round(ms / all_ms, 4)})
    for kname, (ms, calls) in ranked[:20]:
        rows.append({**base, "table": "kernel", "name": kname[:90], "group": kernel_group(kname),
                     "calls": calls // iters, "ms": round(ms / iters, 4), "share": round(ms / all_ms, 4)})
    del model, x
    free(device)
    return rows


def _region_times(prof, cuda: bool) -> dict[str, float]:
    """ms per region over the profiled iterations: the kernels launched inside each ``region::`` range (CUDA),
    or the ranges' CPU time; everything outside the regions is ``other``."""
    out: dict[str, float] = {}
    total = 0.0

    def kernels_below(ev) -> float:
        own = sum(k.duration for k in ev.kernels if not k.name.startswith("region::"))
        return own + sum(kernels_below(c) for c in ev.cpu_children)

    for ev in prof.events():
        if cuda and ev.cpu_parent is None:
            total += kernels_below(ev)
        if ev.name.startswith("region::"):
            t = kernels_below(ev) if cuda else ev.cpu_time_total
            out[ev.name[len("region::"):]] = out.get(ev.name[len("region::"):], 0.0) + t / 1e3
    if cuda:
        out["other (window partition/reverse, residual adds, casts)"] = max(0.0, total / 1e3 - sum(out.values()))
    return out


def _graph_kernels(step, device: torch.device, iters: int):
    """Kernels of ``iters`` replays of ``step`` captured in a CUDA graph (what the ``cuda_graph`` variant runs),
    grouped by name without the region ranges: ``(ranked, total ms)``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from benchmarks.mamba_mixer import _graphed
    from zoo.bench.timing import cuda_kernel_totals, sync

    replay = _graphed(step, device)
    replay()
    sync(device)
    with torch_profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
        for _ in range(iters):
            replay()
        sync(device)
    ranked, _ = cuda_kernel_totals(prof)
    ranked = [(k, v) for k, v in ranked if not k.startswith("region::")]
    return ranked, sum(ms for _, (ms, _) in ranked) or 1.0


def _print_profile(rows: list[dict[str, Any]]) -> None:
    for table in ("total", "region", "group", "kernel"):
        print(f"-- profile: {table}")
        for r in (r for r in rows if r["table"] == table):
            calls = f"{r['calls']:>6}" if "calls" in r else " " * 6
            share = f"{100 * r['share']:>5.1f}%" if "share" in r else " " * 6
            print(f"{r['ms']:>9.3f} ms {share} {calls}  {r['name']}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mambavision", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="t", help=f"comma-separated sizes of ours: {','.join(OURS)}")
    p.add_argument("--large-models", default="t", help="which of --models also run above 224 px")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated timm models ('' for none)")
    p.add_argument("--sizes", default="224,512", help="comma-separated square input sizes")
    p.add_argument("--variants", default="eager,channels_last,fused,cuda_graph",
                   help=f"forms of ours: {','.join(VARIANTS)}")
    p.add_argument("--compile", action="store_true",
                   help="append the torch.compile form of each listed eager/channels_last/fused variant")
    p.add_argument("--profile", default=None, metavar="MODEL@SIZE",
                   help="also a torch.profiler table of one of ours at one size, e.g. t@224 ('' for none)")
    p.add_argument("--profile-iters", type=int, default=3, help="profiled iterations")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile mode of the compiled variants (reduce-overhead: CUDA graphs)")
    p.add_argument("--scan-variant", default=None, choices=("auto", "sequential", "chunked"),
                   help="selective-scan kernel variant (default: its heuristic)")
    p.add_argument("--official-dir", default=None,
                   help="also time the official code (mambavision package) on mamba_ssm's kernel built from this "
                        "folder of its csrc (.official; see benchmarks.official)")
    add_model_bench_options(p, "mambavision")
    p.set_defaults(batch_224=128, batch=16, warmup=10, iters=30)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    large = [m for m in args.large_models.split(",") if m]
    unknown = [m for m in args.models.split(",") + large if m and m not in OURS]
    variants = [v for v in args.variants.split(",") if v]
    if args.compile:
        variants += [f"compile{'_' + v if v != 'eager' else ''}" for v in variants if v in VARIANTS[:3]]
    bad = [v for v in variants if v not in VARIANTS]
    prof = _parse_profile(args.profile)
    if unknown or bad or prof is False:
        print(f"error: unknown --models {unknown} (choose from {list(OURS)}) or --variants {bad} "
              f"(choose from {list(VARIANTS)}) or bad --profile {args.profile!r} (MODEL@SIZE, e.g. t@224)",
              file=sys.stderr)
        return 2
    device = start_model_bench(args)
    if device is None:
        return 2
    models = [OURS[m] for m in args.models.split(",") if m]
    peers = [p for p in args.peers.split(",") if p]
    rows = run(models, peers, parse_sizes(args.sizes), variants, device, torch.bfloat16, args.batch_224, args.batch,
               args.warmup, args.iters, args.depth, {"variant": args.scan_variant}, [OURS[m] for m in large],
               args.compile_mode, args.official_dir)
    from zoo.bench.results import write_results

    extra = {"kernels": backend(), "timing": f"median of {args.iters} after {args.warmup} warm-up (+1 untimed) "
             f"iterations", "official_source": "issue #20: official MambaVision + mamba_ssm CUDA, one H200, 2026-12-02"}
    command = bench_command("benchmarks.mambavision", argv)
    path = write_results(args.name, rows, command=command, out_dir=args.out_dir, extra_meta=extra)
    _print_table(rows)
    print(f"wrote {path}")
    if prof:
        name, size = prof
        batch = args.batch_224 if size <= 224 else args.batch
        try:
            prows = profile(OURS[name], size, batch, device, torch.bfloat16, args.profile_iters, args.depth,
                            {"variant": args.scan_variant})
        except Exception as e:  # noqa: BLE001  (the profile is a diagnostic; the timed rows are written)
            log.warning("profile failed: %s", e)
            return 1
        ppath = write_results(f"{args.name}_profile", prows, command=command, out_dir=args.out_dir,
                              extra_meta={**extra, "timing": f"torch.profiler, {args.profile_iters} iterations "
                                          f"of the fused channels-last eager forward, CUDA time per iteration"})
        _print_profile(prows)
        print(f"wrote {ppath}")
    return 0


def _parse_profile(text: str | None) -> tuple[str, int] | None | bool:
    """``MODEL@SIZE`` -> (model key, size); None for none; False when malformed."""
    if not text:
        return None
    name, _, size = text.partition("@")
    if name not in OURS or not size.isdigit():
        return False
    return name, int(size)


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
