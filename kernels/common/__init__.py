"""What every kernel family shares: choosing between the Triton path and the PyTorch reference.

The public op of a family calls :func:`use_triton` on its tensor arguments. The Triton path runs on CUDA
tensors; ``TRITON_INTERPRET=1`` (set before triton is imported) forces it on the CPU so tests can check the
kernels without a GPU. ``SPEEDZOO_KERNELS=reference`` or ``=triton`` overrides the choice, for comparisons
and benchmarks. The variable is read at call time, so a benchmark can switch between the two in one process.
It is the only ``SPEEDZOO_*`` switch, and this module the only reader (:func:`backend`); kernel variants are
keyword arguments of the ops.
"""
from __future__ import annotations

import os

import torch

__all__ = ["use_triton", "interpreting", "backend", "rel_rms", "needs_grad"]

_BACKEND_ENV = "SPEEDZOO_KERNELS"


def interpreting() -> bool:
    """True when Triton runs through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend() -> str:
    """The ``SPEEDZOO_KERNELS`` choice: 'auto' (the default), 'triton' or 'reference'."""
    choice = os.environ.get(_BACKEND_ENV, "auto").lower()
    if choice not in ("auto", "triton", "reference"):
        raise ValueError(f"{_BACKEND_ENV} must be 'auto', 'triton' or 'reference', got {choice!r}")
    return choice


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether a kernel family should take its Triton path for these tensors."""
    choice = backend()
    if choice == "reference":
        return False
    present = [t for t in tensors if t is not None]
    if interpreting():
        return True
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if choice == "triton" and not on_cuda:
        raise ValueError(f"{_BACKEND_ENV}=triton needs CUDA tensors (or TRITON_INTERPRET=1)")
    return on_cuda


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will want gradients of any of ``tensors`` (grad mode on and one requires grad): the
    kernels' launchers pick inference-only paths by it."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative RMS error ||actual - expected|| / ||expected|| in fp64: the tolerance metric of the kernel tests."""
    a, e = actual.detach().double(), expected.detach().double()
    denom = e.norm().item()
    diff = (a - e).norm().item()
    return diff / denom if denom > 0 else diff
