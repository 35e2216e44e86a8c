"""Benchmark: our Triton causal_conv1d vs the official causal-conv1d 1.7.0 CUDA kernel, and our fused
add + RMSNorm vs plain PyTorch and ``torch.nn.functional.rms_norm``, side by side in one process.

    python -m benchmarks.conv_norm [--official-dir DIR] [--quick] [--out-dir DIR]

Shapes are Vim's: conv (B, D, L) = (128, 384, 197) (Vim-Ti 224, batch 128), (8, 384, 6085) (Vim-Ti 1248),
(8, 2048, 4096) (LM-like); norm rows x width = 64*197 x 192, 8*6085 x 192, 8*4096 x 2048. All bf16 activations
with fp32 parameters (as under autocast); the norm is Vim's block: bf16 hidden + fp32 residual, prenorm,
residual_in_fp32. Each implementation is checked against the other (conv) or the fp32 reference (norm)
before timing. Timing: ``triton.testing.do_bench`` median (L2 flushed between calls); bandwidth is the
minimum traffic of the op divided by the time, compared with the H200's measured 4.27 TB/s copy rate.

The official kernel is compiled from the extracted csrc of the causal-conv1d 1.7.0 sdist (default
``.official/causal_conv1d`` at the repo root; never committed) with ``torch.utils.cpp_extension.load`` for
sm_90; if it cannot be found or built, its rows are skipped and the reason is recorded in the results' meta.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch

log = logging.getLogger(__name__)

COPY_TBPS = 4.27  # measured H200 copy bandwidth (reference/kernels.md §7)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OFFICIAL_DIR = REPO_ROOT / ".official" / "causal_conv1d"
CONV_SHAPES = [(128, 384, 197), (8, 384, 6085), (8, 2048, 4096)]
NORM_SHAPES = [(64 * 197, 192), (8 * 6085, 192), (8 * 4096, 2048)]
WIDTH = 4
EPS = 1e-5
DEVICE = "cuda"  # a module constant so the harness can be dry-run on the CPU under TRITON_INTERPRET


# ---- the official causal-conv1d CUDA extension -------------------------------------------------------

def _find_csrc(official_dir: Path) -> Path | None:
    """The folder holding causal_conv1d.cpp: DIR itself or DIR/csrc (an unpacked sdist)."""
    for cand in (official_dir, official_dir / "csrc"):
        if (cand / "causal_conv1d.cpp").is_file():
            return cand
    return None


from benchmarks.official import prepare_cuda_build  # noqa: E402


def build_official(official_dir: Path, build_root: Path = Path("/tmp/speedzoo_ext")):
    """Compile causal-conv1d's csrc for sm_90 (as its setup.py does, minus the other archs); returns the module."""
    cpp_ext, ldflags = prepare_cuda_build()

    csrc = _find_csrc(official_dir)
    if csrc is None:
        raise FileNotFoundError(f"no causal_conv1d.cpp in {official_dir} or {official_dir / 'csrc'}; extract the "
                                "csrc of the causal-conv1d 1.7.0 sdist there (see benchmarks/conv_norm.py)")
    sources = [str(csrc / "causal_conv1d.cpp")] + [str(p) for p in sorted(csrc.glob("causal_conv1d*.cu"))]
    build_dir = build_root / "causal_conv1d_1_7_0_sm90"
    build_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", "16")
    nvcc = ["-O3", "-gencode=arch=compute_90,code=sm_90",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
            "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
            "--threads", "4"]
    return cpp_ext.load(name="causal_conv1d_cuda_sm90", sources=sources, extra_cflags=["-O3"],
                        extra_cuda_cflags=nvcc, extra_ldflags=ldflags, extra_include_paths=[str(csrc)],
                        build_directory=str(build_dir), verbose=False)


class _OfficialConvFn(torch.autograd.Function):
    """Autograd around the official fwd/bwd, allocating as causal_conv1d_interface.py does."""

    @staticmethod
    def forward(ctx, ext, x, weight, bias, silu):
        x = x if x.stride(2) == 1 or x.stride(1) == 1 else x.contiguous()
        out = torch.empty_like(x)
        ext.causal_conv1d_fwd(x, weight, bias, None, None, out, None, silu)
        ctx.save_for_backward(x, weight, bias)
        ctx.ext, ctx.silu = ext, silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        dout = dout if dout.stride(2) == 1 else dout.contiguous()
        dx = torch.empty_like(x)
        dweight = torch.zeros_like(weight, dtype=torch.float32)
        dbias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None else None
        ctx.ext.causal_conv1d_bwd(x, weight, bias, dout, None, None, None, dx, dweight, dbias, None, ctx.silu)
        return None, dx, dweight.to(weight.dtype), dbias.to(bias.dtype) if dbias is not None else None, None


# ---- timing helpers ----------------------------------------------------------------------------------

def _bench(fn, quick: bool) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100,
                                         return_mode="median"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    from kernels.common import rel_rms

    return rel_rms(a, b)


def _row(op, shape, mode, impl, ms, nbytes, **extra):
    gbps = nbytes / (ms * 1e-3) / 1e9
    return {"op": op, "shape": shape, "mode": mode, "impl": impl, "dtype": "bf16", "ms": round(ms, 4),
            "gbps": round(gbps, 1), "pct_copy_bw": round(100 * gbps / (COPY_TBPS * 1e3), 1), **extra}


def _fwd_and_fwdbwd(fn, inputs, dy):
    """Closures timing fn's forward alone and forward + backward into every input needing a gradient."""
    def fwd():
        with torch.no_grad():
            fn(*inputs)

    params = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def fwdbwd():
        out = fn(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.grad(outs, params, dy)

    return fwd, fwdbwd


# ---- causal conv1d -----------------------------------------------------------------------------------

def bench_conv(ext, quick: bool, checks: dict) -> list[dict]:
    import torch.nn.functional as F

    from kernels.causal_conv1d import causal_conv1d

    def ours(x, w, b):
        return causal_conv1d(x, w, b, activation="silu")

    def plain_torch(x, w, b):
        y = F.conv1d(x, w.unsqueeze(1).to(x.dtype), b.to(x.dtype), padding=WIDTH - 1, groups=x.shape[1])
        return F.silu(y[..., : x.shape[-1]])

    impls = {"ours": ours, "torch": plain_torch}
    if ext is not None:
        impls["causal_conv1d"] = lambda x, w, b: _OfficialConvFn.apply(ext, x, w, b, True)

    rows = []
    shapes = CONV_SHAPES[:1] + CONV_SHAPES[-1:] if quick else CONV_SHAPES
    for bsz, d, length in shapes:
        shape = f"B{bsz}_D{d}_L{length}"
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randn(bsz, d, length, device=DEVICE, generator=g).to(torch.bfloat16).requires_grad_()
        w = (torch.randn(d, WIDTH, device=DEVICE, generator=g) / 2).requires_grad_()
        b = torch.randn(d, device=DEVICE, generator=g).requires_grad_()
        dy = torch.randn(bsz, d, length, device=DEVICE, generator=g).to(torch.bfloat16)

        # Correctness before timing: every impl vs the official kernel (or vs ours when it is absent).
        truth_name = "causal_conv1d" if "causal_conv1d" in impls else "ours"
        results = {}
        for name, fn in impls.items():
            try:
                y = fn(x, w, b)
                results[name] = (y, *torch.autograd.grad(y, (x, w, b), dy))
            except Exception as exc:  # an impl that fails is reported, not fatal
                log.warning("%s failed on %s: %s", name, shape, exc)
                checks[f"conv {shape} {name}"] = f"failed: {exc}"
        truth = results.get(truth_name)
        for name, res in results.items():
            if name == truth_name or truth is None:
                continue
            errs = {k: _rel(a, t) for k, a, t in zip(("y", "dx", "dweight", "dbias"), res, truth)}
            checks[f"conv {shape} {name} vs {truth_name}"] = {k: float(f"{v:.3g}") for k, v in errs.items()}
            if name == "ours" and max(errs.values()) > 2e-2:
                log.warning("ours differs from the official kernel on %s: %s", shape, errs)
        del results, truth

        n = bsz * d * length
        traffic = {"fwd": 2 * n * 2, "fwdbwd": 5 * n * 2}  # fwd: read x, write y; bwd: read x, dy, write dx
        for name, fn in impls.items():
            if f"conv {shape} {name}" in checks:
                continue
            fwd, fwdbwd = _fwd_and_fwdbwd(fn, (x, w, b), dy)
            for mode, call in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                rows.append(_row("causal_conv1d", shape, mode, name, _bench(call, quick), traffic[mode],
                                 width=WIDTH, activation="silu"))
        del x, w, b, dy
        torch.cuda.empty_cache()
    return rows


# ---- fused add + RMSNorm -----------------------------------------------------------------------------

def bench_norm(quick: bool, checks: dict) -> list[dict]:
    import torch.nn.functional as F

    from kernels.norm import rms_norm, rms_norm_ref

    def ours(x, w, r):
        return rms_norm(x, w, None, r, eps=EPS, prenorm=True, residual_in_fp32=True)

    def plain_torch(x, w, r):
        s = x.float() + r
        y = s * torch.rsqrt(s.square().mean(-1, keepdim=True) + EPS) * w
        return y.to(x.dtype), s

    def torch_f(x, w, r):
        s = x.float() + r
        return F.rms_norm(s, (s.shape[-1],), w, eps=EPS).to(x.dtype), s

    impls = {"ours": ours, "torch": plain_torch, "F.rms_norm": torch_f}
    rows = []
    shapes = NORM_SHAPES[:1] + NORM_SHAPES[-1:] if quick else NORM_SHAPES
    for m, n in shapes:
        shape = f"M{m}_N{n}"
        g = torch.Generator(device=DEVICE).manual_seed(0)
        x = torch.randn(m, n, device=DEVICE, generator=g).to(torch.bfloat16).requires_grad_()
        r = torch.randn(m, n, device=DEVICE, generator=g).requires_grad_()
        w = (1 + 0.1 * torch.randn(n, device=DEVICE, generator=g)).requires_grad_()
        dy = torch.randn(m, n, device=DEVICE, generator=g).to(torch.bfloat16)
        dro = torch.randn(m, n, device=DEVICE, generator=g)

        ref_in = [t.detach().float().requires_grad_() for t in (x, w, r)]
        ref_out = rms_norm_ref(ref_in[0], ref_in[1], None, ref_in[2], eps=EPS, prenorm=True, residual_in_fp32=True)
        ref = (*ref_out, *torch.autograd.grad(ref_out, ref_in, (dy.float(), dro)))
        failed = set()
        for name, fn in impls.items():
            try:
                out = fn(x, w, r)
                res = (*out, *torch.autograd.grad(out, (x, w, r), (dy, dro)))
                errs = {k: _rel(a, t) for k, a, t in zip(("y", "residual_out", "dx", "dweight", "dresidual"),
                                                          res, ref)}
                checks[f"norm {shape} {name} vs fp32 reference"] = {k: float(f"{v:.3g}") for k, v in errs.items()}
                if max(errs.values()) > 2e-2:
                    log.warning("%s differs from the fp32 reference on %s: %s", name, shape, errs)
            except Exception as exc:
                log.warning("%s failed on %s: %s", name, shape, exc)
                checks[f"norm {shape} {name}"] = f"failed: {exc}"
                failed.add(name)
        del ref, ref_out, ref_in

        e = m * n
        # fwd: read x (bf16) + residual (fp32), write y (bf16) + residual_out (fp32) = 12 B/elem;
        # bwd: read the fp32 sum, dy (bf16), d residual_out (fp32), write dx (bf16) + dresidual (fp32) = 16.
        traffic = {"fwd": 12 * e, "fwdbwd": 28 * e}
        for name, fn in impls.items():
            if name in failed:
                continue
            fwd, fwdbwd = _fwd_and_fwdbwd(fn, (x, w, r), (dy, dro))
            for mode, call in (("fwd", fwd), ("fwdbwd", fwdbwd)):
                rows.append(_row("add_rms_norm", shape, mode, name, _bench(call, quick), traffic[mode],
                                 residual="fp32", prenorm=True))
        del x, r, w, dy, dro
        torch.cuda.empty_cache()
    return rows


# ---- report ------------------------------------------------------------------------------------------

def format_table(rows: list[dict]) -> str:
    """One line per (op, shape, mode): each impl's ms, ours' bandwidth, and peers' time / ours."""
    impls = []
    for r in rows:
        if r["impl"] not in impls:
            impls.append(r["impl"])
    keys = []
    for r in rows:
        k = (r["op"], r["shape"], r["mode"])
        if k not in keys:
            keys.append(k)
    head = f"{'op':<14}{'shape':<18}{'mode':<8}" + "".join(f"{i + ' ms':>18}" for i in impls)
    head += f"{'ours GB/s':>11}{'%copy':>7}  peer ms / ours ms (>1: ours faster)"
    lines = [head, "-" * len(head)]
    for k in keys:
        by = {r["impl"]: r for r in rows if (r["op"], r["shape"], r["mode"]) == k}
        cells = "".join(f"{by[i]['ms']:>18.4f}" if i in by else f"{'-':>18}" for i in impls)
        ours = by.get("ours")
        bw = f"{ours['gbps']:>11.0f}{ours['pct_copy_bw']:>7.1f}" if ours else f"{'-':>11}{'-':>7}"
        ratios = " ".join(f"{i}={by[i]['ms'] / ours['ms']:.2f}x" for i in impls if i != "ours" and i in by and ours)
        lines.append(f"{k[0]:<14}{k[1]:<18}{k[2]:<8}{cells}{bw}  {ratios}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_norm", description=__doc__.split("\n\n")[0])
    p.add_argument("--official-dir", type=Path, default=DEFAULT_OFFICIAL_DIR,
                   help="extracted csrc of causal-conv1d 1.7.0 (default: .official/causal_conv1d)")
    p.add_argument("--quick", action="store_true", help="two shapes per op, shorter timing")
    p.add_argument("--out-dir", type=Path, default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--skip-official", action="store_true", help="do not build or time the official kernel")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not torch.cuda.is_available():
        print("conv_norm benchmark needs a CUDA GPU", file=sys.stderr)
        return 2

    extra = {"copy_bandwidth_tbps": COPY_TBPS, "quick": args.quick}
    ext = None
    if not args.skip_official:
        t0 = time.time()
        try:
            ext = build_official(args.official_dir)
            extra["official"] = f"causal-conv1d 1.7.0 csrc from {args.official_dir}, built for sm_90 " \
                                f"in {time.time() - t0:.0f} s"
            log.info("official causal-conv1d built in %.0f s", time.time() - t0)
        except Exception as exc:
            log.warning("official causal-conv1d unavailable, its rows are skipped: %s", exc)
            log.debug("%s", traceback.format_exc())
            extra["official"] = f"unavailable: {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}"

    checks: dict = {}
    rows = bench_conv(ext, args.quick, checks) + bench_norm(args.quick, checks)
    extra["checks_rel_rms"] = checks
    path = None
    try:
        from zoo.bench.results import write_results

        path = write_results("conv_norm", rows, command="python -m benchmarks.conv_norm " + " ".join(
            argv if argv is not None else sys.argv[1:]), out_dir=args.out_dir, extra_meta=extra)
    except Exception as exc:
        log.warning("could not write results: %s", exc)
    print("\ncorrectness (relative RMS):")
    for k, v in checks.items():
        print(f"  {k}: {v}")
    print(f"\nofficial: {extra.get('official', 'skipped')}")
    print(format_table(rows))
    if path:
        print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
