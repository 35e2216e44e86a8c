"""The scaling benchmark's logic: its fit command lines, its rows, its refusals; a slow CPU run with gloo."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scaling import build_rows, fit_command, main

REPO = Path(__file__).resolve().parents[2]


def test_scaling_bench_rows_and_command(tmp_path):
    cmd = fit_command("cifar10_vit_micro.yaml", "fsdp", 4, 3, 512, tmp_path / "r", "gpu", ["--model.lr", "1e-3"])
    assert cmd[1:4] == ["-m", "zoo.cli", "fit"] and "--trainer.devices" in cmd and cmd[-2:] == ["--model.lr", "1e-3"]
    cells = [{"strategy": s, "gpus": n, "per_device_batch": bs,
              "summary": {"img_per_s": rate, "val_top1": 0.5, "precision": "bf16-mixed"}}
             for s, n, bs, rate in [("ddp", 1, 512, 100.0), ("ddp", 2, 512, 180.0), ("fsdp", 2, 256, 150.0),
                                    ("fsdp", 1, 512, 90.0)]]
    rows = build_rows(cells, "vit_micro_patch4_32", 32)
    by = {(r["strategy"], r["gpus"]): r for r in rows}
    assert by[("ddp", 2)]["efficiency"] == pytest.approx(0.9) and by[("fsdp", 1)]["efficiency"] == 1.0
    assert by[("ddp", 2)]["global_batch"] == 1024 and by[("fsdp", 2)]["global_batch"] == 512
    assert [r["strategy"] for r in rows] == ["ddp", "ddp", "fsdp", "fsdp"]


def test_scaling_bench_refuses_an_uneven_global_batch(tmp_path):
    with pytest.raises(SystemExit):
        main(["--gpus", "3", "--global-batch", "512", "--accelerator", "cpu", "--out-dir", str(tmp_path)])


@pytest.mark.slow
def test_scaling_bench_runs_on_cpu(shared_data, zoo_cache, tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, ZOO_CACHE=str(zoo_cache), ZOO_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("TRITON_INTERPRET", None)  # set by the kernel tests' conftest when collected in the same process
    args = ["--gpus", "2", "--strategies", "ddp", "--accelerator", "cpu", "--epochs", "2", "--global-batch", "10",
            "--run-root", str(tmp_path / "runs"), "--out-dir", str(out), "--",
            "--data.train_subset", "4", "--data.val_subset", "2", "--model.model_args", "{depth: 1}",
            "--data.eval_batch_size", "20", "--model.mixup_alpha", "0", "--model.cutmix_alpha", "0"]
    run = subprocess.run([sys.executable, "-m", "benchmarks.scaling", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads((out / "scaling.json").read_text())
    assert [(r["strategy"], r["gpus"]) for r in data["rows"]] == [("ddp", 1), ("ddp", 2)]
    assert data["rows"][0]["efficiency"] == 1.0 and data["rows"][1]["final_top1"] is not None
    assert [r["per_device_batch"] for r in data["rows"]] == [10, 5] and data["meta"]["batch"] == "global 10"
