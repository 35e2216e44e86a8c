"""Kernel tests check the Triton path against the PyTorch reference.

Without a GPU the Triton kernels run through Triton's CPU interpreter, which must be switched on before
triton is imported: this conftest does it when TRITON_INTERPRET is unset and CUDA is absent. On a GPU the
kernels are compiled (Triton 3.6 can miscompile where the interpreter is right, so the GPU run matters).
`make test` runs these tests in a pytest process of their own for the same reason.
"""
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
