"""`zoo bench throughput` on the CPU with a tiny model (the figures mean nothing here; the rows and files do)."""
import csv
import json

import pytest

from zoo.bench import throughput
from zoo.cli import main as zoo_main
from zoo.errors import ConfigError


def test_cli_rows_csv_and_results(tmp_path, capsys):
    rc = zoo_main(["bench", "throughput", "vit_micro_patch4_32", "--img-size", "32", "--batch-size", "2",
                   "--warmup", "1", "--iters", "2", "--device", "cpu", "--model-kwargs", "depth=1", "--csv", str(tmp_path / "t.csv"),
                   "--out", str(tmp_path), "--name", "tp"])
    assert rc == 0
    (line,) = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert list(line)[:len(throughput.TIMM_COLUMNS)] == throughput.TIMM_COLUMNS  # timm's column order
    assert line["model"] == "vit_micro_patch4_32" and line["infer_img_size"] == line["train_img_size"] == "32"
    assert line["infer_batch_size"] == line["train_batch_size"] == "2"
    for mode in ("infer", "train"):
        step_ms, rate = float(line[f"{mode}_step_time"]), float(line[f"{mode}_samples_per_sec"])
        assert step_ms > 0 and rate == pytest.approx(2 / step_ms * 1e3, rel=1e-2)
    assert float(line["param_count"]) > 0 and float(line["infer_gmacs"]) > 0
    data = json.loads((tmp_path / "tp.json").read_text())
    assert {"date", "commit", "gpu", "torch", "command"} <= set(data["meta"])
    assert data["meta"]["command"].startswith("zoo bench throughput vit_micro_patch4_32")
    assert [(r["mode"], r["impl"], r["dtype"], r["img_size"]) for r in data["rows"]] == [
        ("infer", "ours", "fp32", 32), ("train", "ours", "fp32", 32)]
    assert all(r["peak_gib"] is None and r["img_per_s"] > 0 for r in data["rows"])  # no CUDA peak on the CPU
    assert (tmp_path / "tp.md").is_file() and "samples/s" in capsys.readouterr().out


def test_sizes_and_batches_make_one_row_each():
    """Two image sizes x two batch sizes of a one-block ViT, inference only."""
    import torch

    rows = throughput.run(["vit_micro_patch4_32"], [16, 32], [1, 2], ["infer"], torch.device("cpu"),
                          dtype=torch.float32, warmup=0, iters=1, depth=1)
    assert [(r["img_size"], r["batch"]) for r in rows] == [(16, 1), (16, 2), (32, 1), (32, 2)]
    merged = throughput.timm_rows(rows)
    assert len(merged) == 4 and all("train_step_time" not in m for m in merged)


def test_bad_arguments_are_clear_errors(capsys):
    with pytest.raises(ConfigError, match="--img-size"):
        throughput.main(["vit_micro_patch4_32", "--img-size", "224,big"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        throughput.main(["vit_micro_patch4_32", "--model-kwargs", "depth"])
    with pytest.raises(ConfigError, match="--mode"):
        throughput.main(["vit_micro_patch4_32", "--mode", "infer,fit"])
    with pytest.raises(ConfigError, match="drop the pretrained tag"):
        throughput.main(["vit_micro_patch4_32.cifar10", "--device", "cpu"])
    assert zoo_main(["bench", "throughput", "no_such_model", "--device", "cpu"]) == 2
    assert "zoo list" in capsys.readouterr().err


def test_zoo_bench_lists_what_is_installed(capsys):
    assert zoo_main(["bench"]) == 0
    out = capsys.readouterr().out
    assert "throughput" in out and "benchmarks/" in out
    assert zoo_main(["bench", "selective_scan"]) == 2  # the lab is not a `zoo bench` command
    assert "unknown benchmark 'selective_scan'" in capsys.readouterr().err


def test_results_commit_comes_from_speedzoo_commit_when_set(tmp_path, monkeypatch):
    """A device copy of the tree has no (or a stale) .git: ZOO_BENCH_COMMIT names the tree in the results' meta."""
    from zoo.bench.results import collect_meta, write_results

    monkeypatch.setenv("ZOO_BENCH_COMMIT", "abc1234")
    path = write_results("r", [{"op": "x", "ms": 1.0}], command="cmd", out_dir=tmp_path)
    assert json.loads(path.read_text())["meta"]["commit"] == "abc1234"
    assert "- commit: `abc1234`" in (tmp_path / "r.md").read_text()
    monkeypatch.delenv("ZOO_BENCH_COMMIT")
    assert collect_meta()["commit"] != "abc1234"
