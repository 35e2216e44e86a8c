"""`kernels` imports on a machine without a GPU and compiles nothing at import (Triton compiles at first call)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("selective_scan", "causal_conv1d", "norm", "linear_attention", "gla", "delta_rule")
MODULES = (["kernels"] + [f"kernels.{f}" for f in FAMILIES] + [f"kernels.{f}.reference" for f in FAMILIES]
           + [f"kernels.{f}.triton" for f in FAMILIES if f != "delta_rule"])   # the delta rule runs on gla's kernels


def test_import_without_gpu_compiles_nothing(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_CACHE_DIR=str(tmp_path / "triton"),
               TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), PYTHONPATH=str(REPO))
    env.pop("TRITON_INTERPRET", None)
    code = "import importlib, torch\n" \
           f"for m in {MODULES!r}: importlib.import_module(m)\n" \
           "print('cuda', torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cuda False" in out.stdout
    assert not [p for p in (tmp_path / "triton").rglob("*") if p.is_file()], "Triton compiled at import"
    assert not (tmp_path / "ext").exists(), "a C++/CUDA extension was built at import"
