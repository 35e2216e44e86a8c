"""What a user measures on their own device: ``zoo bench <name> [args]``.

Only user-facing benchmarks live here (installed with the package). The comparisons against peers (official
CUDA builds, fla, mamba_ssm, causal-conv1d), kernel variants side by side and kernel resource reports are the
lab in the repository's top-level ``benchmarks/`` folder, which is not installed and which nothing here
imports: ``python -m benchmarks.<name>`` from a checkout. Results of both use :mod:`zoo.bench.results`.
"""
from __future__ import annotations

# name -> (module with main(argv), one line on what it measures)
BENCHMARKS = {
    "throughput": ("zoo.bench.throughput",
                   "samples/s and peak memory of registered models across image and batch sizes, inference and "
                   "training, in timm's benchmark CSV columns"),
}
