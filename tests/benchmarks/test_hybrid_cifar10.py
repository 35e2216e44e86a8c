"""The hybrid comparison's table writer on made-up run outputs: the join, the row format and the verdicts."""
import csv
import json

import pytest

from benchmarks import hybrid_cifar10 as hc

MODELS = {"softmax": "vit_micro_patch4_32", "gla": "vit_micro_gla_patch4_32",
          "gla3softmax1": "vit_micro_gla3softmax1_patch4_32"}


def _outputs(tmp_path, top1, train_speed):
    runs = tmp_path / "runs"
    for infix in MODELS:
        (runs / f"cifar10_hybrid_{infix}").mkdir(parents=True)
        (runs / f"cifar10_hybrid_{infix}" / "fit_summary.json").write_text(json.dumps(
            {"epochs": 7, "global_step": 700, "img_per_s": 1234.5, "val_top1": 0.5}))
    with (tmp_path / "eval.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "top1"])
        w.writeheader()
        w.writerows({"model": MODELS[k], "top1": v} for k, v in top1.items())
    rows = [{"model": MODELS[k], "mode": mode, "img_size": 32, "batch": 512, "dtype": "bf16",
             "img_per_s": v if mode == "train" else 3 * v, "peak_gib": 0.5} for k, v in train_speed.items()
            for mode in ("infer", "train")]
    (tmp_path / "speed.json").write_text(json.dumps({"meta": {}, "rows": rows}))
    return ["--runs", str(runs), "--eval-csv", str(tmp_path / "eval.csv"), "--speed", str(tmp_path / "speed.json"),
            "--models", ",".join(MODELS), "--out", str(tmp_path / "res")]


def test_table_rows_and_a_winning_hybrid(tmp_path, capsys):
    args = _outputs(tmp_path, {"softmax": 80.0, "gla": 78.0, "gla3softmax1": 81.5},
                    {"softmax": 10000, "gla": 8000, "gla3softmax1": 7500})
    assert hc.main(args) == 0
    data = json.loads((tmp_path / "res" / "hybrid_cifar10.json").read_text())
    rows = data["rows"]
    assert [(r["model"], r["mode"]) for r in rows] == [(m, mode) for m in MODELS.values() for mode in ("train", "infer")]
    train = {r["layout"]: r for r in rows if r["mode"] == "train"}
    assert set(train) == {"softmax", "gla", "gla*3,softmax"}
    hyb = train["gla*3,softmax"]
    assert hyb["top1"] == 81.5 and hyb["img_per_s"] == 7500 and hyb["epochs"] == 7 and hyb["steps"] == 700
    assert hyb["fit_img_per_s"] == 1234.5 and hyb["impl"] == "ours" and hyb["dtype"] == "bf16"
    assert train["softmax"]["params_m"] == pytest.approx(1.606, abs=1e-3)
    infer = [r for r in rows if r["mode"] == "infer"]
    assert all("top1" not in r for r in infer) and infer[0]["img_per_s"] == 30000
    md = (tmp_path / "res" / "hybrid_cifar10.md").read_text()
    assert "beats both at equal speed" in md and "Answer: yes, 1 of 1" in md  # 7500 >= 0.9 * 8000
    assert "## Reading" in capsys.readouterr().out


@pytest.mark.parametrize("top1, speed, verdict", [
    ({"softmax": 80.0, "gla": 78.0, "gla3softmax1": 79.0}, 8000, "does not beat both at equal speed"),
    ({"softmax": 80.0, "gla": 78.0, "gla3softmax1": 82.0}, 7000, "beats both (slower)"),
])
def test_losing_hybrids(tmp_path, top1, speed, verdict):
    args = _outputs(tmp_path, top1, {"softmax": 10000, "gla": 8000, "gla3softmax1": speed})
    assert hc.main(args) == 0
    md = (tmp_path / "res" / "hybrid_cifar10.md").read_text()
    assert verdict in md and "Answer: no, 0 of 1" in md


def test_missing_outputs_give_no_verdict_and_unknown_models_fail(tmp_path):
    args = _outputs(tmp_path, {"softmax": 80.0, "gla3softmax1": 81.0}, {"softmax": 10000, "gla3softmax1": 9000})
    assert hc.main(args) == 0
    md = (tmp_path / "res" / "hybrid_cifar10.md").read_text()
    assert "no verdict" in md and "Answer: none" in md
    with pytest.raises(SystemExit, match="known models:.*gla3softmax1"):
        hc.config_model("performer")
