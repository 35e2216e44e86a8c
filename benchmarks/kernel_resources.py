"""What a Triton kernel costs on the H200 before it ever runs there: shared memory, registers and spills.

    python -m benchmarks.kernel_resources [--family gla|linear_attention|selective_scan|causal_conv1d|all] [--dim 128]

Triton compiles for a named target without a GPU: ``triton.compile`` on an ``ASTSource`` for sm_90 gives the
cubin and its shared-memory need (what the H200 refused at launch: "out of resource: shared memory"), and
ptxas (shipped with Triton) reports registers per thread and spill bytes for the same PTX. So launch
configurations can be checked and compared on the CPU, and the GPU's time goes to timing them.

The figures are the compiler's for the specialisation given (argument types, constexprs, warps, stages);
Triton's launcher may specialise further on the GPU (e.g. 16-byte aligned pointers), which changes
pipelining: treat them as a close estimate, not a reading (the H200 reported 256 KB where this reports 384 KB
for one linear-attention kernel: the estimate errs high there).
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Optional

SM90_SHARED_LIMIT = 232448  # bytes of shared memory per block on the H200 (what its launcher reports)


def sm90_resources(fn, constexprs: dict[str, Any], arg_types: Optional[dict[str, str]] = None, num_warps: int = 4,
                   num_stages: int = 3) -> dict[str, Any]:
    """Compile the @triton.jit ``fn`` for sm_90; returns {shared, regs, spill_bytes, shuffles (static SHFL count),
    ttgir}.

    ``arg_types`` maps argument names to Triton type strings ("*bf16", "fp32", "i64"; names the kernel lacks
    are ignored, so one map serves a family); the other ``*_ptr`` arguments are "*fp32", the rest "i32".
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(fn, JITFunction):
        raise TypeError(f"{getattr(fn, '__name__', fn)} is not a compiled-mode @triton.jit function "
                        "(TRITON_INTERPRET=1 was set when it was defined)")
    names = list(inspect.signature(fn.fn).parameters)
    unknown = set(constexprs) - set(names)
    if unknown:
        raise ValueError(f"{fn.__name__} has no argument(s) {sorted(unknown)}")
    types = {}
    for n in names:
        if n in constexprs:
            types[n] = "constexpr"
        elif arg_types and n in arg_types:
            types[n] = arg_types[n]
        else:
            types[n] = "*fp32" if n.endswith("_ptr") else "i32"
    src = ASTSource(fn, types, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        report = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.o")],
                                capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", report)
    spill = re.search(r"(\d+) bytes spill stores", report)
    if regs is None:
        raise RuntimeError(f"ptxas gave no register count for {fn.__name__}: {report[-500:]}")
    return {"shared": int(kernel.metadata.shared), "regs": int(regs.group(1)),
            "spill_bytes": int(spill.group(1)) if spill else 0, "shuffles": _sass_count(kernel, "SHFL"),
            "ttgir": kernel.asm["ttgir"]}


def _sass_count(kernel, opcode: str) -> int:
    """Static count of one SASS opcode in the compiled kernel (cuobjdump ships with Triton)."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
    return len(re.findall(rf"\b{opcode}\b", sass))


def scan_layouts(ttgir: str) -> list[str]:
    """The layouts (``#blocked`` definitions) of every ``tt.scan`` operand in a TTGIR module."""
    defs = dict(re.findall(r"^(#\w+) = (#ttg\.blocked<\{[^}]*\}>)", ttgir, flags=re.M))
    used = re.findall(r'"tt\.scan"\(.*?\}\) : \(tensor<[^,>]*, (#\w+)>', ttgir, flags=re.S)
    return [defs.get(u, u) for u in used]


def selective_scan_rows() -> list[dict[str, Any]]:
    """The selective-scan backward (bf16 activations, N 16, Vim's flags) at its autotuned configs, CHUNK 16 and 8."""
    import kernels.selective_scan.triton as ss

    bf16 = {n: "*bf16" for n in ("u_ptr", "dt_ptr", "z_ptr", "dout_ptr", "B_ptr", "C_ptr", "du_ptr", "ddt_ptr",
                                 "dz_ptr")}
    flags = dict(N=16, NP=16, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, REVERSE=False,
                 CARRY_ONLY=False, HAS_CARRY=False)
    rows = []
    for chunk in (16, 8):
        for cfg in ss._BWD_CONFIGS[:3]:
            r = sm90_resources(ss._bwd_kernel, {**flags, "CHUNK": chunk, **cfg.kwargs}, bf16,
                               num_warps=cfg.num_warps, num_stages=1)
            rows.append({"family": "selective_scan", "kernel": "_bwd_kernel",
                         "config": f"CHUNK {chunk} BLOCK_D {cfg.kwargs['BLOCK_D']}", **r})
    return rows


def linear_attention_rows(D: int, DV: int) -> list[dict[str, Any]]:
    """The four bidirectional linear-attention kernels at the launch configuration the op uses for (D, Dv)."""
    import kernels.linear_attention.triton as la

    BD, BDV, bt, opts = la._blocks(D, DV)
    const = dict(BT=bt, BD=BD, BDV=BDV, FEAT=0, PREC="tf32x3")
    rows = []
    for name in ("_state_kernel", "_apply_kernel", "_bwd_q_kernel", "_bwd_kv_kernel"):
        r = sm90_resources(getattr(la, name), const, {"eps": "fp32"}, num_stages=opts.get("num_stages", 3))
        rows.append({"family": "linear_attention", "kernel": name, "config": f"D {D} Dv {DV} BT {bt}", **r})
    return rows


def gla_rows(K: int, V: int) -> list[dict[str, Any]]:
    """The chunked GLA / delta-rule kernels (bf16 inputs, chunk 64) at the launch configurations of
    kernels.gla.triton for (K, V): forward, the dS walk, and the fused, chunked and split backward."""
    import kernels.gla.triton as g

    bf16 = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "o_ptr")}
    common = dict(C=64, DOT=1)
    rows = []

    def add(kernel, config, fn, const, types, warps):
        r = sm90_resources(fn, {**common, **const}, {**types, "scale": "fp32"}, num_warps=warps,
                           num_stages=g.NUM_STAGES)
        rows.append({"family": "gla", "kernel": kernel, "config": config, **r})

    for gate in (0, 1, 2):
        for delta in ((0, 1) if gate < 2 else (0,)):
            types = {**bf16, "v_ptr": "*fp32"} if delta else bf16
            tag = f"K {K} V {V} gate {gate}" + (" delta" if delta else "")
            BK, BV, warps = g._blocks(K, V, bwd=False)
            add("_fwd_kernel", f"{tag} BV {BV}", g._fwd_kernel,
                dict(BK=BK, BV=BV, GATE=gate, DELTA=delta, HAS_H0=False, STORE_HT=False, STORE_ST=True,
                     LIMIT=g.FAST_LIMIT), types, warps)
            if not delta:
                add("_bwd_dh_kernel", f"{tag} BV {BV}", g._bwd_dh_kernel,
                    dict(BK=BK, BV=BV, GATE=gate, HAS_DHT=True, STORE_DH0=True), bf16, warps)
                BKS, BVS = g.split_blocks(K, V)
                add("_split_dv_kernel", f"{tag} BK {BKS} BV {BVS}", g._split_dv_kernel,
                    dict(BKS=BKS, BV=BVS, GATE=gate), bf16, g.SPLIT_WARPS)
                add("_split_dqk_kernel", f"{tag} BK {BKS} BV {BVS}", g._split_dqk_kernel,
                    dict(BKS=BKS, BVS=BVS, GATE=gate), bf16, g.SPLIT_WARPS)
            BK, BV, warps = g._blocks(K, V, bwd=True)
            for parallel in ((0, 1) if not delta else (0,)):
                add("_bwd_kernel" + (" chunked" if parallel else " fused"), f"{tag} BV {BV}", g._bwd_kernel,
                    dict(BK=BK, BV=BV, GATE=gate, DELTA=delta, HAS_DHT=False, STORE_DH0=False,
                         LIMIT=g.FAST_LIMIT, PARALLEL=parallel), types, warps)
    return rows


def conv_rows() -> list[dict[str, Any]]:
    """The depthwise conv backward (width 4, SiLU, bias; one and two directions) at the tiles it launches for
    Vim-micro's and Vim-Ti's (channels, tokens)."""
    import kernels.causal_conv1d.triton as cc

    types = {"X": "*bf16", "DY": "*bf16", "DX": "*bf16", "Wt": "*fp32", "Bias": "*fp32", "DWp": "*fp32",
             "DBp": "*fp32"}
    rows = []
    for d, length in ((256, 65), (384, 197), (384, 4097)):
        block_d, block_l, warps = cc._bwd_blocks(d, length)
        for dirs in (1, 2):
            const = dict(W=4, OFF=-3, STEP=1, HAS_BIAS=True, SILU=True, DIRS=dirs, BLOCK_D=block_d, BLOCK_L=block_l)
            r = sm90_resources(cc._conv_bwd_kernel, const, types, num_warps=warps, num_stages=1)
            rows.append({"family": "causal_conv1d", "kernel": "_conv_bwd_kernel",
                         "config": f"D {d} L {length} dirs {dirs} {block_d}x{block_l}", **r})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_resources", description=__doc__.split("\n\n")[0])
    families = ("gla", "linear_attention", "selective_scan", "causal_conv1d", "all")
    p.add_argument("--family", choices=families, default="all")
    p.add_argument("--dim", type=int, default=128, help="head dimension (K = V, D = Dv)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("unset TRITON_INTERPRET: the kernels must be defined in compiled mode")
    rows = []
    if args.family in ("linear_attention", "all"):
        rows += linear_attention_rows(args.dim, args.dim)
    if args.family in ("gla", "all"):
        rows += gla_rows(args.dim, args.dim)
    if args.family in ("selective_scan", "all"):
        rows += selective_scan_rows()
    if args.family in ("causal_conv1d", "all"):
        rows += conv_rows()
    print(f"{'family':<17}{'kernel':<22}{'config':<28}{'shared KB':>10}{'regs':>6}{'spill B':>9}{'SHFL':>6}")
    for r in rows:
        flag = "  over the H200's shared memory" if r["shared"] > SM90_SHARED_LIMIT else ""
        print(f"{r['family']:<17}{r['kernel']:<22}{r['config']:<28}{r['shared'] / 1024:>10.1f}{r['regs']:>6}"
              f"{r['spill_bytes']:>9}{r['shuffles']:>6}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
