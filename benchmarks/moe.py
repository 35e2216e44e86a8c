"""MoE expert-MLP benchmark: ours (Triton) vs torch._grouped_mm, the per-expert loop, ScatterMoE and the dense
floor, in one process on the same inputs.

    python -m benchmarks.moe [--scattermoe /tmp/scattermoe/scattermoe-0.3.0] [--out DIR] [--tiny]

The issue's shapes (tokens, d, hidden, experts): (12608, 384, 1536, 8), (12608, 768, 3072, 16),
(16384, 1024, 4096, 8); GELU experts without biases, bf16, top-2 of a random router (softmax of randn
logits). Times the median ms (triton.testing.do_bench) of the forward and of forward+backward (gradients to
x, gates, w1, w2) for: ``dense`` a dense GELU MLP of the same FLOPs (hidden k*H on the T tokens: the floor),
``loop`` (impl='loop'), ``grouped_mm`` (impl='grouped_mm': torch._grouped_mm on sorted slots), ``scattermoe``
(ScatterMoE 0.3.0's MLP with the same weights, from an extracted source folder given by --scattermoe; skipped
with a note when not importable) and ``ours`` (impl='triton'), and what impl='auto' picks. Every MoE impl is
checked against the fp32 reference (values and gradients) before it is timed. Rows of ours carry the ratios
peer/ours (> 1: ours faster) and ours/dense.

``--tiny`` runs one small shape on whatever device there is (the CPU: Triton through its interpreter, timed
with a plain timer), to check the script itself.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

SHAPES = [(12608, 384, 1536, 8), (12608, 768, 3072, 16), (16384, 1024, 4096, 8)]
TINY = [(96, 32, 64, 4)]
TOP_K = 2


def make_inputs(T, d, H, E, device, dtype, seed=0):
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(T, d, device=device, generator=g).to(dtype)
    logits = torch.randn(T, E, device=device, generator=g)
    gates, idx = logits.softmax(-1).topk(TOP_K, dim=-1)
    w1 = (torch.randn(E, d, H, device=device, generator=g) * d ** -0.5).to(dtype)
    w2 = (torch.randn(E, H, d, device=device, generator=g) * H ** -0.5).to(dtype)
    return x, idx, gates.to(dtype), w1, w2


def _timer(fn, cuda):
    if cuda:
        import triton

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
    return (time.perf_counter() - t0) / 3 * 1e3


def _runner(fn, leaves, mode):
    """A closure timing fn(*leaves) forward (no grad) or forward+backward (grads of every float leaf)."""
    import torch

    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(*leaves)
        return run
    leaves = [_leaf(t) for t in leaves]
    params = [t for t in leaves if t.requires_grad]
    dy = None

    def run():
        nonlocal dy
        y = fn(*leaves)
        if dy is None:
            dy = torch.randn_like(y)
        torch.autograd.grad(y, params, dy, allow_unused=True)  # the dense floor ignores idx and gates
    return run


def _scattermoe(path, d, H, E, w1, w2):
    """(fn, its weight leaves [E, out, in] holding our w1, w2) for ScatterMoE's MLP, or (None, why)."""
    import torch

    if path is None:
        return None, "not run: pass --scattermoe /path/to/extracted/scattermoe-0.3.0"
    sys.path.insert(0, os.path.abspath(path))
    try:
        from scattermoe.mlp import MLP
    except Exception as exc:  # noqa: BLE001 - any import failure of the optional peer means 'skip it'
        return None, f"not importable from {path}: {type(exc).__name__}: {exc}"
    mlp = MLP(d, H, E, TOP_K, bias=False, activation=torch.nn.GELU()).to(w1.device, w1.dtype)
    with torch.no_grad():
        mlp.experts.weight.copy_(w1.transpose(1, 2))
        mlp.output_experts.weight.copy_(w2.transpose(1, 2))

    def fn(x, idx, gates, _w1, _w2):
        return mlp(x, gates, idx)  # _w1, _w2 are mlp's own parameters (passed so the backward differentiates them)
    return fn, (mlp.experts.weight, mlp.output_experts.weight)


def _leaf(t):
    """A float input as a fresh grad leaf; parameters (already leaves that need grad) and int tensors as they are."""
    return t if t.requires_grad or not t.is_floating_point() else t.detach().requires_grad_()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scattermoe", default=None, help="extracted ScatterMoE source folder (holds scattermoe/)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--tiny", action="store_true", help="one tiny shape on any device (checks the script)")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.tiny:
            print("the MoE benchmark needs a CUDA GPU (or --tiny to check the script on the CPU)", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the Triton path on the CPU
    import torch.nn.functional as F

    from kernels.common import rel_rms
    from kernels.moe import expert_mlp, expert_mlp_ref
    from zoo.bench.results import write_results

    started = time.perf_counter()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16
    name = "moe_tiny" if args.tiny else "moe"
    rows, notes = [], []
    for T, d, H, E in (TINY if args.tiny else SHAPES):
        shape_s = f"T{T}_d{d}_H{H}_E{E}_k{TOP_K}"
        x, idx, gates, w1, w2 = make_inputs(T, d, H, E, device, dtype)

        def moe(impl):
            return lambda x_, idx_, g_, w1_, w2_: expert_mlp(x_, idx_, g_, w1_, w2_, activation="gelu", impl=impl)

        impls = {"loop": moe("loop"), "grouped_mm": moe("grouped_mm"), "ours": moe("triton")}
        inputs = {impl: [x, idx, gates, w1, w2] for impl in impls}
        smoe, extra = _scattermoe(args.scattermoe, d, H, E, w1, w2)
        if smoe is not None:
            impls["scattermoe"] = smoe
            inputs["scattermoe"] = [x, idx, gates, *extra]
        elif f"scattermoe {extra}" not in notes:
            notes.append(f"scattermoe {extra}")

        # correctness first: every MoE impl vs the fp32 reference, values and gradients of x, gates, w1, w2
        ref = [_leaf(t.float()) if t.is_floating_point() else t for t in (x, idx, gates, w1, w2)]
        y_ref = expert_mlp_ref(ref[0], idx, ref[2], ref[3], ref[4], activation="gelu")
        dy = torch.randn_like(y_ref)
        g_ref = torch.autograd.grad(y_ref, [ref[i] for i in (0, 2, 3, 4)], dy)
        errors = {}
        for impl, fn in impls.items():
            ls = [_leaf(t) for t in inputs[impl]]
            y = fn(*ls)
            grads = list(torch.autograd.grad(y, [ls[i] for i in (0, 2, 3, 4)], dy.to(y.dtype)))
            if impl == "scattermoe":  # its weights are [E, out, in]
                grads[2:] = [g.transpose(1, 2) for g in grads[2:]]
            errors[impl] = max(rel_rms(y, y_ref), *(rel_rms(a, b) for a, b in zip(grads, g_ref)))
            flag = "" if errors[impl] < 3e-2 else "  <-- MISMATCH"
            print(f"{shape_s} {impl}: max rel RMS vs fp32 reference (y, grads) {errors[impl]:.1e}{flag}", flush=True)

        dense_w1 = (torch.randn(d, TOP_K * H, device=device) * d ** -0.5).to(dtype)
        dense_w2 = (torch.randn(TOP_K * H, d, device=device) * (TOP_K * H) ** -0.5).to(dtype)

        def dense(x_, idx_, g_, w1_, w2_):
            return F.gelu(x_ @ w1_) @ w2_

        for mode in ("fwd", "fwdbwd"):
            times = {}
            runs = [("dense", dense, [x, idx, gates, dense_w1, dense_w2])]
            runs += [(impl, fn, inputs[impl]) for impl, fn in impls.items()]
            for impl, fn, ls in runs:
                ms = _timer(_runner(fn, ls, mode), cuda)
                times[impl] = ms
                print(f"{shape_s} {mode} {impl}: {ms:.4f} ms", flush=True)
                row = dict(op="moe_expert_mlp", shape=shape_s, mode=mode, impl=impl, dtype="bf16", ms=round(ms, 4))
                if impl in errors:
                    row["max_rel_rms_vs_ref"] = float(f"{errors[impl]:.2e}")
                rows.append(row)
            ours = times["ours"]
            for r in rows[-len(runs):]:
                if r["impl"] == "ours":
                    for peer in ("grouped_mm", "scattermoe", "loop"):
                        if peer in times:
                            r[f"{peer}_over_ours"] = round(times[peer] / ours, 3)
                    r["ours_over_dense"] = round(ours / times["dense"], 3)
            fastest = "ours" if ours <= times["grouped_mm"] else "grouped_mm"
            print(f"{shape_s} {mode}: faster of ours / grouped_mm: {fastest}", flush=True)
        write_results(name, rows, out_dir=args.out, extra_meta={"notes": notes})  # a cut-short run keeps its rows
        if cuda:
            torch.cuda.empty_cache()

    path = write_results(name, rows, out_dir=args.out, extra_meta={"notes": notes})
    print(f"\nwrote {path} ({time.perf_counter() - started:.0f} s)")
    for n in notes:
        print("note:", n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
