"""zoo eval: evaluate() against a hand-computed argmax, CSV rows in timm's columns, class-count errors."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_evaluate_matches_hand_computed_argmax():
    import zoo
    from zoo.evaluate import evaluate

    torch.manual_seed(0)
    model = zoo.create_model("vit_micro_patch4_32", num_classes=10, depth=1).eval()
    x = torch.randn(37, 3, 32, 32)
    y = torch.randint(0, 10, (37,))
    with torch.no_grad():
        logits = model(x)
    res = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=8), "cpu")
    assert res["num_samples"] == 37
    assert res["top1"] == pytest.approx(100.0 * (logits.argmax(-1) == y).float().mean().item())
    top5 = (logits.topk(5, -1).indices == y[:, None]).any(-1).float().mean().item()
    assert res["top5"] == pytest.approx(100.0 * top5)
    assert res["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    per_cls = [(logits.argmax(-1)[y == c] == c).float().mean().item() * 100 for c in sorted(set(y.tolist()))]
    assert res["mean_per_class_top1"] == pytest.approx(sum(per_cls) / len(per_cls))


def test_zoo_eval_writes_csv_row(tmp_path, zoo_cache):
    if not SHARED.is_dir():
        pytest.skip("shared data missing")
    from zoo.cli import main
    from zoo.evaluate import CSV_COLUMNS

    out = tmp_path / "results.csv"
    args = ["eval", "vit_micro_patch4_32", "--data", str(SHARED / "cifar10-test.zip"), "--subset", "2",
            "--batch-size", "8", "--workers", "0", "--model-args", '{"depth": 1}', "--csv", str(out)]
    assert main(args) == 0
    assert main(args) == 0  # appends
    rows = list(csv.reader(out.open()))
    assert rows[0] == CSV_COLUMNS and len(rows) == 3
    row = dict(zip(rows[0], rows[1]))
    assert row["model"] == "vit_micro_patch4_32" and row["img_size"] == "32" and row["dataset"] == "cifar10-test"
    assert row["split"] == "test" and 0 <= float(row["top1"]) <= 100
    assert float(row["top1"]) + float(row["top1_err"]) == pytest.approx(100)


def test_zoo_eval_class_count_mismatch(zoo_cache):
    if not SHARED.is_dir():
        pytest.skip("shared data missing")
    from zoo.errors import ConfigError
    from zoo.evaluate import main

    with pytest.raises(ConfigError, match=r"1000 classes but the data has 10.*zoo fit"):
        main(["vit_tiny_patch16_224", "--data", str(SHARED / "cifar10-test.zip"), "--subset", "1",
              "--workers", "0", "--model-args", '{"depth": 1}'])
