"""Official CUDA peers for benchmarks, built from their sources on the GPU machine at run time.

The sources are not part of this repository: ``.official/`` (gitignored) holds ``csrc`` of mamba-ssm 2.3.2.post1
(``mamba_selective_scan/``) and causal-conv1d 1.7.0 (``causal_conv1d/``), taken from their PyPI sdists. They
are compiled with ``torch.utils.cpp_extension.load`` for sm_90 into a build folder under /tmp, so a warm
machine reuses the build. Nothing here is imported by library code.
"""
from __future__ import annotations

import os
import shutil
import glob
from pathlib import Path
from typing import Callable

import torch

OFFICIAL_DIR = Path(__file__).resolve().parents[2] / ".official"

# The flags of the projects' setup.py files (nvcc part), for sm_90 only.
NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "-gencode=arch=compute_90,code=sm_90",
    "--use_fast_math",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "-lineinfo",
]


def cuda_home() -> str | None:
    """A CUDA toolkit folder with headers. torch guesses dirname(dirname(which nvcc)), which is wrong when
    nvcc is a wrapper script in /usr/local/bin (as on our machines), so look for include/cuda_runtime_api.h."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parents[1]))
    for c in cands:
        if c and (Path(c) / "include" / "cuda_runtime_api.h").is_file() and (Path(c) / "bin" / "nvcc").exists():
            return c
    return None


def prepare_cuda_build():
    """Point torch's extension builder at the real toolkit; returns (cpp_extension module, extra ldflags)."""
    home = cuda_home()
    if home is not None:
        os.environ["CUDA_HOME"] = home  # read when cpp_extension is first imported ...
    import torch.utils.cpp_extension as cpp_ext

    if home is not None:
        cpp_ext.CUDA_HOME = home  # ... and patched in case it was imported before
    ldflags = []
    if home is not None and (Path(home) / "lib").is_dir() and not (Path(home) / "lib64").is_dir():
        ldflags.append(f"-L{Path(home) / 'lib'}")  # torch links -L$CUDA_HOME/lib64 -lcudart
    return cpp_ext, ldflags


def build_extension(name: str, source_dir: str | os.PathLike, build_root: str = "/tmp/speedzoo_official",
                    max_jobs: int = 16):
    """Compile every .cpp/.cu file of `source_dir` into a Python extension module and return it."""
    cpp_ext, ldflags = prepare_cuda_build()
    src = Path(source_dir)
    sources = sorted(str(p) for p in src.iterdir() if p.suffix in (".cpp", ".cu"))
    if not sources:
        raise FileNotFoundError(f"no .cpp/.cu sources in {src}; extract the sdist's csrc there first")
    build_dir = Path(build_root) / name
    build_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", str(max_jobs))
    return cpp_ext.load(name=name, sources=sources, extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=NVCC_FLAGS,
                        extra_ldflags=ldflags, extra_include_paths=[str(src)], build_directory=str(build_dir),
                        verbose=False)


def load_selective_scan_cuda(official_dir: str | os.PathLike | None = None):
    """The official ``selective_scan_cuda`` extension (fwd/bwd), built on first use."""
    root = Path(official_dir) if official_dir is not None else OFFICIAL_DIR
    return build_extension("speedzoo_selective_scan_cuda", root / "mamba_selective_scan")


def load_causal_conv1d_cuda(official_dir: str | os.PathLike | None = None):
    """The official ``causal_conv1d_cuda`` extension, built on first use."""
    root = Path(official_dir) if official_dir is not None else OFFICIAL_DIR
    return build_extension("speedzoo_causal_conv1d_cuda", root / "causal_conv1d")


def official_selective_scan_fn(ext) -> Callable:
    """A callable with mamba_ssm's ``selective_scan_fn`` semantics on top of the compiled extension.

    Mirrors ``SelectiveScanFn`` at the call level: fwd returns (out, x[, out_z]) where x holds chunk states
    (last state = x[:, :, -1, 1::2]); bwd takes (u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz,
    softplus, recompute_out_z) and returns (du, ddelta, dA, dB, dC, dD, ddelta_bias[, dz]).
    """

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
            u, delta = u.contiguous(), delta.contiguous()
            B, C = B.contiguous(), C.contiguous()
            z = z.contiguous() if z is not None else None
            D = D.contiguous() if D is not None else None
            ctx.squeeze_B, ctx.squeeze_C = B.dim() == 3, C.dim() == 3
            if B.dim() == 3:
                B = B.unsqueeze(1)
            if C.dim() == 3:
                C = C.unsqueeze(1)
            out, x, *rest = ext.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
            ctx.delta_softplus = delta_softplus
            ctx.has_z = z is not None
            ctx.has_D, ctx.has_bias = D is not None, delta_bias is not None
            last_state = x[:, :, -1, 1::2]
            ctx.mark_non_differentiable(last_state)
            if z is None:
                ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
                result = out
            else:
                ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
                result = rest[0]
            return result, last_state

        @staticmethod
        def backward(ctx, dout, _dlast):
            if ctx.has_z:
                u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
            else:
                u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
                z, out = None, None
            du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = ext.bwd(
                u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), x, out, None, ctx.delta_softplus, False)
            dz = rest[0] if ctx.has_z else None
            dB = dB.squeeze(1) if ctx.squeeze_B else dB
            dC = dC.squeeze(1) if ctx.squeeze_C else dC
            return (du, ddelta, dA, dB, dC, dD if ctx.has_D else None, dz,
                    ddelta_bias if ctx.has_bias else None, None, None)

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        out, last = _Fn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        return (out, last) if return_last_state else out

    return selective_scan_fn


def install_mamba_ssm(official_dir: str | os.PathLike | None = None) -> None:
    """Make ``import mamba_ssm.ops.selective_scan_interface`` give mamba_ssm's ``selective_scan_fn`` on the
    compiled official extension, for peer code that imports it (the official MambaVision): mamba_ssm itself
    is not installable offline, its kernel is (``load_selective_scan_cuda``)."""
    import sys
    import types

    if "mamba_ssm.ops.selective_scan_interface" in sys.modules:
        return
    fn = official_selective_scan_fn(load_selective_scan_cuda(official_dir))
    names = ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface")
    mods = [types.ModuleType(n) for n in names]
    for parent, child in zip(mods, mods[1:]):
        parent.__path__ = []
        setattr(parent, child.__name__.rsplit(".", 1)[1], child)
    mods[-1].selective_scan_fn = fn
    sys.modules.update(zip(names, mods))
