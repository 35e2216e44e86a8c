"""Benchmark: our chunked linear-attention kernels (kernels.gla, kernels.delta_rule) vs flash-linear-attention
0.6.0 and SDPA causal, forward and forward+backward, side by side in one process.

    python -m benchmarks.linear_attention [--quick] [--out-dir DIR] [--fla-wheel-dir DIR] [--no-check]

Shapes (B, T, H, D): (8, 4096, 16, 128) "lm" and (64, 1024, 8, 64) "vision"; bf16 q, k, v (q, k
L2-normalised for the delta rule), fp32 log gates logsigmoid(randn)/16 (GLA) or logsigmoid(randn) (scalar),
beta = sigmoid(randn). Ops: simple_gla, gla, linear_attn (no normaliser), gated_delta; plus sdpa_causal.

fla is imported if installed; otherwise its pure-Python wheel (fla_core-0.6.0-*.whl, default ``.whl/`` at the
repo root) is unpacked to a temp folder and put on sys.path. fla 0.6.0's gated backward refuses to run on
Hopper with Triton < 3.7.1 (it raises): such rows are recorded with ``status: refused`` and the message.
Every failure of any implementation becomes a row with its status instead of stopping the run.

Floor: the op's minimum HBM traffic (read every input once, write every output once; backward also reads
do and writes one gradient per input) divided by the measured copy bandwidth; ``gbps`` = floor bytes / time.
Before timing, ours is checked against fla's forward (rel RMS) where fla runs, recorded as ``check``.
"""
from __future__ import annotations

import argparse
import glob
import logging
import sys
import tempfile
import traceback
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHAPES = {"lm": (8, 4096, 16, 128), "vision": (64, 1024, 8, 64)}
QUICK_SHAPES = {"lm": (2, 1024, 4, 128), "vision": (8, 512, 4, 64)}
CPU_SHAPES = {"tiny": (1, 64, 2, 32)}
OPS = ("simple_gla", "gla", "linear_attn", "gated_delta")


# ---- peers ----------------------------------------------------------------------------------------------

def load_fla(wheel_dir: Path):
    """Import fla (installed, or unpacked from its wheel); returns (module or None, note)."""
    try:
        import fla  # noqa: F401

        return fla, f"fla {getattr(fla, '__version__', '?')} (installed)"
    except Exception as exc:  # noqa: BLE001 - any import failure means "no peer"
        first = f"{type(exc).__name__}: {exc}"
    wheels = sorted(glob.glob(str(wheel_dir / "fla_core-*.whl")))
    if not wheels:
        return None, f"fla not importable ({first}); no fla_core wheel in {wheel_dir}"
    target = Path(tempfile.mkdtemp(prefix="speedzoo_fla_"))
    try:
        with zipfile.ZipFile(wheels[-1]) as zf:
            zf.extractall(target)
        sys.path.insert(0, str(target))
        for name in list(sys.modules):
            if name == "fla" or name.startswith("fla."):
                del sys.modules[name]
        import fla  # noqa: F401

        return fla, f"fla {getattr(fla, '__version__', '?')} from {Path(wheels[-1]).name}"
    except Exception as exc:  # noqa: BLE001
        return None, f"fla wheel {wheels[-1]} failed to import: {type(exc).__name__}: {exc}"


def fla_fn(op: str):
    """The fla 0.6.0 callable for an op, taking our argument dict; raises if missing."""
    if op == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla

        return lambda a: chunk_simple_gla(a["q"], a["k"], a["v"], g=a["gs"], output_final_state=False)[0]
    if op == "gla":
        from fla.ops.gla import chunk_gla

        return lambda a: chunk_gla(a["q"], a["k"], a["v"], g=a["g"], output_final_state=False)[0]
    if op == "linear_attn":
        from fla.ops.linear_attn import chunk_linear_attn

        return lambda a: chunk_linear_attn(a["q"], a["k"], a["v"], normalize=False, output_final_state=False)[0]
    if op == "gated_delta":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        return lambda a: chunk_gated_delta_rule(a["q"], a["k"], a["v"], g=a["gs"], beta=a["beta"],
                                                output_final_state=False)[0]
    raise KeyError(op)


def bwd_keywords(variant: str | None) -> dict:
    """A ``--bwd`` entry (``split``, ``fused``, ``chunked``, optionally ``@BV``) as the ops' keyword arguments;
    None: the kernels' own choice."""
    if variant is None:
        return {}
    layout, _, bv = variant.partition("@")
    return dict(bwd_layout=layout, bwd_block_v=int(bv) if bv else None)


def ours_fn(op: str, bwd: str | None = None):
    """Our op on the inputs dict; ``bwd`` (a ``--bwd`` entry) picks the GLA backward layout."""
    from kernels.delta_rule import chunk_gated_delta_rule
    from kernels.gla import chunk_gla

    kw = bwd_keywords(bwd)
    if op == "simple_gla":
        return lambda a: chunk_gla(a["q"], a["k"], a["v"], g_scalar=a["gs"], **kw)[0]
    if op == "gla":
        return lambda a: chunk_gla(a["q"], a["k"], a["v"], g=a["g"], **kw)[0]
    if op == "linear_attn":
        return lambda a: chunk_gla(a["q"], a["k"], a["v"], **kw)[0]
    if op == "gated_delta":
        return lambda a: chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["gs"], a["beta"])[0]
    raise KeyError(op)


def sdpa_fn():
    # [B, T, H, D] -> SDPA's [B, H, T, D] views (no copies)
    return lambda a: F.scaled_dot_product_attention(
        a["q"].transpose(1, 2), a["k"].transpose(1, 2), a["v"].transpose(1, 2), is_causal=True).transpose(1, 2)


# ---- inputs, traffic, timing ----------------------------------------------------------------------------

def make_inputs(op: str, shape, device, dtype=torch.bfloat16, seed=0):
    B, T, H, D = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
    if op == "gated_delta":
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    a = {"q": q.to(dtype), "k": k.to(dtype), "v": v.to(dtype)}
    if op == "gla":
        a["g"] = F.logsigmoid(r(B, T, H, D)) / 16
    if op in ("simple_gla", "gated_delta"):
        a["gs"] = F.logsigmoid(r(B, T, H))
    if op == "gated_delta":
        a["beta"] = torch.sigmoid(r(B, T, H)).to(dtype)
    return a


def floor_bytes(a: dict, mode: str) -> int:
    """Inputs read once + output (same size as v) written once; backward adds do read + one grad per input."""
    inputs = sum(t.numel() * t.element_size() for t in a.values())
    out = a["v"].numel() * a["v"].element_size()
    fwd = inputs + out
    return fwd if mode == "fwd" else fwd + (out + inputs)


def copy_bandwidth(device) -> float:
    """Measured device copy bandwidth in bytes/s (read + write), 1 GiB buffers."""
    import triton.testing

    x = torch.empty(1 << 28, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=50)
    return 2 * x.numel() * 4 / (ms * 1e-3)


def time_ms(fn, quick: bool, device) -> float:
    if device == "cpu":
        import time

        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100,
                                         return_mode="median"))


def runner(fn, a: dict, mode: str):
    """A no-argument callable: forward only, or forward + backward with a fixed do."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(a)
        return run
    leaves = {k: t.detach().requires_grad_() for k, t in a.items()}
    do = torch.randn_like(a["v"])
    params = [t for t in leaves.values() if t.is_floating_point()]

    def run():
        for t in params:
            t.grad = None
        o = fn(leaves)
        o.backward(do)
    return run


def _log_row(row: dict) -> None:
    log.info("%-12s %-28s %-7s %-11s %s", row["op"], row["shape"], row["mode"], row["impl"],
             f"{row['ms']:.3f} ms  {row['gbps']:.0f} GB/s  floor {row['floor_ms']:.3f} ms"
             if "ms" in row else f"{row.get('status')}: {row.get('error', '')[:120]}")


# ---- main -----------------------------------------------------------------------------------------------

def bench(shapes: dict, ops, quick: bool, fla, check: bool, device, bwd_variants=None,
          on_row=None) -> list[dict]:
    """Rows of every (shape, op, impl, mode); ``on_row(rows)`` after each (so a cut-off run keeps its rows).
    The first backward variant is the ``ours`` row's (default: the layout the kernels would pick).
    Each extra backward variant of ours adds an ``ours-<variant>-bwd`` fwdbwd row (not for the delta rule):
    ``split`` / ``fused`` / ``chunked`` (the ops' ``bwd_layout``), optionally ``@BV`` for the V block of the
    last two (``bwd_block_v``)."""
    from kernels.common import rel_rms
    from kernels.gla.options import BWD_LAYOUTS

    bwd_variants = bwd_variants or (BWD_LAYOUTS[0],)  # the default layout

    rows: list[dict] = []
    bw = copy_bandwidth(device) if device == "cuda" else 50e9
    log.info("copy bandwidth %.2f TB/s", bw / 1e12)
    for sname, shape in shapes.items():
        B, T, H, D = shape
        tag = f"{sname}_B{B}_T{T}_H{H}_D{D}"
        for op in ops:
            a = make_inputs(op, shape, device)
            first = None if op == "gated_delta" else bwd_variants[0]  # the delta rule has one backward
            impls = [("ours", ours_fn(op, first), first, ("fwd", "fwdbwd"))]
            if op != "gated_delta":
                impls += [(f"ours-{v}-bwd", ours_fn(op, v), v, ("fwdbwd",)) for v in bwd_variants[1:]]
            if fla is not None:
                try:
                    impls.append(("fla-0.6.0", fla_fn(op), None, ("fwd", "fwdbwd")))
                except Exception as exc:  # noqa: BLE001
                    rows.append(dict(op=op, shape=tag, mode="fwd", impl="fla-0.6.0", dtype="bf16",
                                     status="missing", error=f"{type(exc).__name__}: {exc}"[:200]))
            ref_out = None
            ours_ms = {}
            for impl, fn, variant, modes in impls:
                note = None
                if check and modes[0] == "fwd":
                    try:
                        with torch.no_grad():
                            out = fn(a).float()
                        if impl == "ours":
                            ref_out = out
                        elif ref_out is not None:
                            note = f"rel_rms vs ours {rel_rms(ref_out, out):.2e}"
                        del out
                    except Exception as exc:  # noqa: BLE001
                        note = f"check failed: {type(exc).__name__}"
                for mode in modes:
                    fb = floor_bytes(a, mode)
                    row = dict(op=op, shape=tag, mode=mode, impl=impl, dtype="bf16")
                    if impl.startswith("ours") and op != "gated_delta":
                        row["bwd"] = variant
                    try:
                        ms = time_ms(runner(fn, a, mode), quick, device)
                        row.update(ms=ms, gbps=fb / (ms * 1e-3) / 1e9, floor_ms=fb / bw * 1e3,
                                   x_floor=ms / (fb / bw * 1e3), status="ok")
                        if impl == "ours":
                            ours_ms[mode] = ms
                        elif mode in ours_ms:
                            row["vs_ours"] = ms / ours_ms[mode]
                        if impl.startswith("ours") and mode == "fwdbwd" and "fwd" in ours_ms:
                            row["x_own_fwd"] = ms / ours_ms["fwd"]
                    except Exception as exc:  # noqa: BLE001
                        msg = f"{type(exc).__name__}: {exc}"
                        refused = impl.startswith("fla") and ("triton" in msg.lower() or "hopper" in msg.lower()
                                                              or isinstance(exc, RuntimeError))
                        row.update(status="refused" if refused else "error", error=msg[:300])
                        log.warning("%s %s %s %s: %s", op, tag, mode, impl, msg[:300])
                        if not refused:
                            log.debug(traceback.format_exc())
                    if note:
                        row["check"] = note
                    rows.append(row)
                    _log_row(row)
                    if on_row is not None:
                        on_row(rows)
                    if device == "cuda":
                        torch.cuda.empty_cache()
            del a
        # softmax attention peer at the same shape
        a = make_inputs("linear_attn", shape, device)
        for mode in ("fwd", "fwdbwd"):
            fb = floor_bytes(a, mode)
            row = dict(op="sdpa_causal", shape=tag, mode=mode, impl="torch-sdpa", dtype="bf16")
            try:
                ms = time_ms(runner(sdpa_fn(), a, mode), quick, device)
                row.update(ms=ms, gbps=fb / (ms * 1e-3) / 1e9, floor_ms=fb / bw * 1e3, status="ok")
            except Exception as exc:  # noqa: BLE001
                row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
            rows.append(row)
            _log_row(row)
            if on_row is not None:
                on_row(rows)
        del a
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.linear_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller shapes and shorter timing")
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--fla-wheel-dir", default=str(REPO_ROOT / ".whl"), help="where fla_core-*.whl lies")
    p.add_argument("--no-fla", action="store_true", help="skip the fla peer")
    p.add_argument("--no-check", action="store_true", help="skip the ours-vs-fla forward check")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    p.add_argument("--shapes", default=None, help="comma-separated subset of " + ",".join(SHAPES))
    p.add_argument("--bwd", default="split,fused,chunked",
                   help="backward variants of ours, the first is the 'ours' row: split | fused | chunked, with an "
                        "optional @BV for fused / chunked (e.g. chunked@64)")
    p.add_argument("--name", default=None, help="results name (default linear_attention[_quick][_cpu])")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OPS:
            p.error(f"unknown op {o!r}; choose from {OPS}")
    if torch.cuda.is_available():
        device = "cuda"
        shapes = QUICK_SHAPES if args.quick else SHAPES
    else:
        device = "cpu"
        shapes = CPU_SHAPES
        log.warning("no CUDA device: a CPU dry run on tiny shapes (reference paths), not a benchmark")
    if args.shapes:
        unknown = set(args.shapes.split(",")) - set(shapes)
        if unknown:
            p.error(f"unknown shape(s) {sorted(unknown)}; choose from {sorted(shapes)}")
        shapes = {k: v for k, v in shapes.items() if k in args.shapes.split(",")}
    variants = tuple(v for v in args.bwd.split(",") if v)
    fla, fla_note = (None, "skipped (--no-fla)") if args.no_fla else load_fla(Path(args.fla_wheel_dir))
    log.info("peer: %s", fla_note)
    from benchmarks.options import bench_command
    from zoo.bench.results import write_results

    name = args.name or "linear_attention" + ("_quick" if args.quick else "") + ("_cpu" if device == "cpu" else "")
    command = bench_command("benchmarks.linear_attention", argv)
    meta = {"fla": fla_note, "device": device, "gate_fp32": True, "floor": "inputs+outputs once"}

    def write(rows):
        return write_results(name, rows, command=command, out_dir=args.out_dir, extra_meta=meta)

    rows = bench(shapes, ops, args.quick, fla if device == "cuda" else None, not args.no_check, device,
                 bwd_variants=variants, on_row=write)
    log.info("wrote %s", write(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
