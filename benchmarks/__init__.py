"""The benchmark lab: speedzoo against its peers (official CUDA builds, fla, mamba_ssm, causal-conv1d),
kernel variants side by side and kernel resource reports.

Not installed and never imported by the library (benchmarks may import zoo, never the reverse). Run from
the repository root: ``python -m benchmarks.<name> --help``; results land in benchmarks/results/.
"""
