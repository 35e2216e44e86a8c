"""What every kernel family shares: choosing between the Triton path and the PyTorch reference.

The public op of a family calls :func:`use_triton` on its tensor arguments. The Triton path runs on CUDA
tensors; ``TRITON_INTERPRET=1`` (set before triton is imported) forces it on the CPU so tests can check the
kernels without a GPU. ``SPEEDZOO_KERNELS=reference`` or ``=triton`` overrides the choice, for comparisons
and benchmarks. The variable is read at call time, so a benchmark can switch between the two in one process.
"""
from __future__ import annotations

import os

import torch

__all__ = ["use_triton", "interpreting", "rel_rms"]

_BACKEND_ENV = "SPEEDZOO_KERNELS"


def interpreting() -> bool:
    """True when Triton runs through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether a kernel family should take its Triton path for these tensors."""
    choice = os.environ.get(_BACKEND_ENV, "auto").lower()
    if choice == "reference":
        return False
    if choice not in ("auto", "triton"):
        raise ValueError(f"{_BACKEND_ENV} must be 'auto', 'triton' or 'reference', got {choice!r}")
    present = [t for t in tensors if t is not None]
    if interpreting():
        return True
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if choice == "triton" and not on_cuda:
        raise ValueError(f"{_BACKEND_ENV}=triton needs CUDA tensors (or TRITON_INTERPRET=1)")
    return on_cuda


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative RMS error ||actual - expected|| / ||expected|| in fp64: the tolerance metric of the kernel tests."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.norm().item()
    diff = (a - e).norm().item()
    return diff / denom if denom > 0 else diff
