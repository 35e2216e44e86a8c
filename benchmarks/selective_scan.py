"""Selective scan benchmark: ours (Triton) vs the official mamba_ssm CUDA kernel, same process, same inputs.

    python -m benchmarks.selective_scan [--official-dir DIR] [--shapes vim|small] [--out DIR] [--layouts channel,lane]

bf16 u/delta/z/B/C, fp32 A/D/delta_bias, z gate, softplus. Reports the median ms of fwd and fwd+bwd
(triton.testing.do_bench), bandwidth on the *minimum* traffic (read u, delta, z, B, C; write y) against the
4.27 TB/s copy rate, and official/ours ratios. Correctness of ours vs official is checked before timing.

Ours is timed in both Triton variants (sequential over L, and chunk-parallel along L; see
``kernels.selective_scan.triton.scan_plan``): each row records ``variant``, its segment length ``seg``,
``chunk`` (tokens per stored state = backward tile) and ``auto`` (whether the heuristic picks it at this
shape); official/ours ratios use the auto row. Both are chosen through the op's keyword arguments
(``selective_scan(..., variant=, chunk=)``). ``--chunk 8`` (or 4, 16, 32) times ours with states stored every
8 tokens and the backward tiled to match; ``--out`` keeps such a run apart. ``--layouts channel,lane`` times
each variant in each listed forward layout side by side (``selective_scan(..., layout=)``; the backward is the
same for all, it reads the chunk states the forward stored); rows record ``layout``, and official/ours uses the
first listed layout's auto row. Default: channel only, as before.
"""
from __future__ import annotations

import argparse
import functools
import sys

import torch

from kernels.common import rel_rms

COPY_TBPS = 4.27
SHAPES = {
    "vim": [(128, 384, 197, 16), (8, 384, 6085, 16), (128, 768, 197, 16), (8, 2048, 4096, 16), (8, 384, 4097, 16)],
    "small": [(8, 384, 197, 16), (2, 384, 1024, 16)],
}


def make_inputs(batch, dim, L, n, device="cuda", dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)

    def rn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dt)

    u, delta, z = rn(batch, dim, L), rn(batch, dim, L, scale=0.5), rn(batch, dim, L)
    A = -torch.exp(torch.rand(dim, n, generator=g, device=device) * 2.0)     # A = -exp(A_log), as in Mamba
    B, C = rn(batch, n, L), rn(batch, n, L)
    D = rn(dim, dt=torch.float32)
    bias = rn(dim, scale=0.5, dt=torch.float32) - 4.0                        # softplus(bias) ~ dt_init range
    return u, delta, A, B, C, D, z, bias


def min_traffic_bytes(batch, dim, L, n, elt=2):
    """Read u, delta, z ([B, D, L]) and B, C ([B, N, L]); write y ([B, D, L]); bf16."""
    return elt * (4 * batch * dim * L + 2 * batch * n * L)


def _bench(fn, warmup=25, rep=100):
    import triton

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def _runner(fn, inputs, mode):
    u, delta, A, B, C, D, z, bias = inputs
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        return run
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    dy = torch.randn_like(u)

    def run():
        for t in leaves:
            t.grad = None
        y = fn(*leaves, delta_softplus=True)
        y.backward(dy)
    return run


def _grads(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves, delta_softplus=True)
    y.backward(dy)
    return y.detach(), [t.grad for t in leaves]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", default=None, help="folder holding mamba_selective_scan/ sources")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="vim")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--no-official", action="store_true", help="skip building/timing the CUDA kernel")
    parser.add_argument("--chunk", type=int, default=None,
                        help="tokens per stored state = backward tile of ours (default: the kernel's choice)")
    parser.add_argument("--layouts", default="channel",
                        help="comma-separated forward layouts of ours to time side by side (channel, lane, token)")
    args = parser.parse_args(argv)
    from kernels.selective_scan.options import LAYOUTS

    layouts = [x for x in args.layouts.split(",") if x]
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad or not layouts:
        parser.error(f"--layouts: choose from {LAYOUTS}, got {args.layouts!r}")
    if not torch.cuda.is_available():
        print("selective_scan benchmark needs a CUDA GPU", file=sys.stderr)
        return 2

    from kernels.selective_scan import selective_scan, selective_scan_torch
    from zoo.bench.results import write_results

    official = None
    if not args.no_official:
        from benchmarks.official import load_selective_scan_cuda, official_selective_scan_fn

        print("building the official selective_scan CUDA extension (first run: minutes) ...", flush=True)
        official = official_selective_scan_fn(load_selective_scan_cuda(args.official_dir))

    from kernels.selective_scan.triton import chunk_size_for, scan_plan, sm_count

    peers = {"mamba_ssm": official} if official is not None else {}
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    rows = []
    for shape in SHAPES[args.shapes]:
        batch, dim, L, n = shape
        inputs = make_inputs(batch, dim, L, n)
        shape_s = f"B{batch}_D{dim}_L{L}_N{n}"
        sms = sm_count(inputs[0].device)
        auto_variant = scan_plan(batch, dim, L, n, sms, chunk=args.chunk)[0]
        variants = {v: scan_plan(batch, dim, L, n, sms, v, chunk=args.chunk) for v in ("sequential", "chunked")}
        ours = {(v, lay): functools.partial(selective_scan, variant=v, chunk=args.chunk, layout=lay)
                for v in variants for lay in layouts}
        # correctness before timing: each variant of ours vs official (or vs the fp32 PyTorch path)
        dy = torch.randn_like(inputs[0])
        if official is not None:
            y_off, g_off = _grads(official, inputs, dy)
            peer = "mamba_ssm"
        else:
            y_off, g_off = _grads(selective_scan_torch, [t.float() if t.is_floating_point() else t
                                                           for t in inputs], dy.float())
            peer = "fp32 torch"
        worst = {}
        for (v, lay), fn in ours.items():
            y_ours, g_ours = _grads(fn, inputs, dy)
            errs = {"y": rel_rms(y_ours, y_off)}
            errs.update({f"d{k}": rel_rms(a, b) for k, a, b in zip(names, g_ours, g_off)})
            worst[(v, lay)] = max(errs.values())
            print(f"{shape_s} {v} {lay} (seg {variants[v][1]}): rel RMS ours vs {peer}: "
                  + " ".join(f"{k}={e:.1e}" for k, e in errs.items())
                  + ("" if worst[(v, lay)] < 2e-2 else "  <-- MISMATCH"), flush=True)
        mb = min_traffic_bytes(batch, dim, L, n)
        for mode in ("fwd", "fwdbwd"):
            times, mode_rows = {}, []
            runs = [("ours", key, fn) for key, fn in ours.items()] + [(k, None, f) for k, f in peers.items()]
            for impl, key, fn in runs:
                ms = _bench(_runner(fn, inputs, mode))
                times[(impl, key)] = ms
                print(f"{shape_s} {mode} {impl} {' '.join(key or ())}: {ms:.4f} ms", flush=True)  # a cut-short run still reports
                row = dict(op="selective_scan", shape=shape_s, mode=mode, impl=impl, dtype="bf16", ms=round(ms, 4))
                if key is not None:
                    v, lay = key
                    row.update(variant=v, layout=lay, seg=variants[v][1], chunk=chunk_size_for(n, args.chunk),
                               auto=v == auto_variant, sms=sms, max_rel_rms_vs_peer=float(f"{worst[key]:.2e}"))
                if mode == "fwd":
                    gbps = mb / (ms * 1e-3) / 1e9
                    row.update(gbps=round(gbps, 1), bw_frac=round(gbps / (COPY_TBPS * 1e3), 4),
                               traffic="min: read u,delta,z,B,C + write y")
                mode_rows.append(row)
            if official is not None:
                ratio = times[("mamba_ssm", None)] / times[("ours", (auto_variant, layouts[0]))]
                for r in mode_rows:
                    r["ratio_official_over_ours"] = round(ratio, 3)
            rows += mode_rows
        write_results("selective_scan", rows, out_dir=args.out)   # after every shape: a cut-short run keeps its rows
        torch.cuda.empty_cache()

    # the PyTorch references for context at one small shape (cheap)
    small = (8, 384, 197, 16)
    inputs = make_inputs(*small)
    ms = _bench(_runner(selective_scan_torch, inputs, "fwd"), warmup=5, rep=20)
    rows.append(dict(op="selective_scan", shape="B{}_D{}_L{}_N{}".format(*small), mode="fwd",
                     impl="reference", dtype="bf16", ms=round(ms, 4), note="PyTorch path (fp32 math)"))

    path = write_results("selective_scan", rows, out_dir=args.out)
    print(f"\nwrote {path}\n")
    header = (f"{'shape':<26}{'mode':<8}{'impl':<11}{'variant':<22}{'ms':>9}{'GB/s':>9}{'bw%':>7}"
              f"{'off/ours':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        variant = (r["variant"] + ("*" if r["auto"] else "") + ("" if r["layout"] == "channel" else "/" + r["layout"])
                   if "variant" in r else "")
        print(f"{r['shape']:<26}{r['mode']:<8}{r['impl']:<11}{variant:<22}{r['ms']:>9.4f}"
              f"{r.get('gbps', float('nan')):>9.1f}{100 * r.get('bw_frac', float('nan')):>7.1f}"
              f"{r.get('ratio_official_over_ours', float('nan')):>10.3f}")
    print("(GB/s and bw% on minimum traffic: read u, delta, z, B, C + write y; copy rate 4.27 TB/s;"
          " * = the variant the heuristic picks; off/ours uses it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
