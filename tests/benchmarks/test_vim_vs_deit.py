"""The Vim-vs-DeiT benchmark script's logic, on the CPU at a tiny size (the numbers mean nothing here)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import vim_vs_deit


def test_cpu_check_run_writes_rows(tmp_path, capsys):
    """On the CPU without the interpreter the models run (the unfused mixer) and the stage profile, whose stages
    are the fused mixer's Triton launches, is left out with a warning."""
    rc = vim_vs_deit.main(["--device", "cpu", "--sizes", "32,240", "--batch-224", "2", "--batch", "1", "--warmup", "0",
                           "--iters", "1", "--profile-size", "48", "--depth", "1", "--out-dir", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "vim_vs_deit.json").read_text())
    rows = data["rows"]
    assert [(r["model"], r["img_size"], r["impl"], r["batch"]) for r in rows] == [
        ("vim_tiny_patch16_224", 32, "ours", 2), ("deit_tiny_patch16_224", 32, "timm", 2),
        ("vim_tiny_patch16_224", 240, "ours", 1), ("deit_tiny_patch16_224", 240, "timm", 1)]
    for r in rows:
        assert r["mode"] == "infer" and r["dtype"] == "bf16" and r["img_per_s"] > 0 and r["peak_gib"] is None
    assert rows[0]["ratio"] == round(rows[0]["img_per_s"] / rows[1]["img_per_s"], 3)
    assert data["meta"]["command"].startswith("python -m benchmarks.vim_vs_deit --device cpu")
    assert not (tmp_path / "vim_vs_deit_stages.json").exists()
    assert (tmp_path / "vim_vs_deit.md").exists()
    assert "img/s" in capsys.readouterr().out


@pytest.mark.slow
def test_stage_profile_under_the_interpreter(tmp_path):
    """The stage profile (the fused mixer's stages) at 48 px under TRITON_INTERPRET=1, in a process of its own
    (~2 min on 2 cores): every stage timed, the shape of the forward."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-m", "benchmarks.vim_vs_deit", "--device", "cpu", "--sizes", "",
                    "--profile-size", "48", "--batch-224", "1", "--depth", "1", "--warmup", "0", "--iters", "1",
                    "--out-dir", str(tmp_path)], check=True, env=env, cwd=Path(__file__).resolve().parents[2])
    stages = json.loads((tmp_path / "vim_vs_deit_stages.json").read_text())["rows"]
    names = [r["stage"] for r in stages]
    assert any(n.startswith("scan, both directions") for n in names) and names[-1] == "whole forward_features"
    assert all(r["ms"] > 0 for r in stages if not r["stage"].startswith("other"))
    assert "L10 " in stages[0]["shape"]  # 3x3 patches + the class token at 48 px


def test_cuda_requested_without_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(vim_vs_deit.torch.cuda, "is_available", lambda: False)
    assert vim_vs_deit.main(["--sizes", "224"]) == 2
    assert "--device cpu" in capsys.readouterr().err
