"""The mixer benchmark script's logic, on the CPU at a tiny size (the numbers mean nothing here)."""
import json

from benchmarks import mixers


def test_cpu_check_run_all_mixers(tmp_path, capsys):
    rc = mixers.main(["--device", "cpu", "--sizes", "32", "--batch-224", "2", "--warmup", "0", "--iters", "1",
                      "--depth", "1", "--train", "--out-dir", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "mixers.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * len(mixers.MIXERS)
    assert [r["mixer"] for r in rows[:7]] == list(mixers.MIXERS)
    for r in rows:
        assert r["img_per_s"] and r["img_per_s"] > 0, r
        assert r["dtype"] == "bf16" and r["batch"] == 2 and r["peak_gib"] is None
        assert {"model", "mixer", "img_size", "mode", "impl", "ratio_vs_softmax"} <= set(r)
    soft = {(r["img_size"], r["mode"]): r["img_per_s"] for r in rows if r["mixer"] == "softmax"}
    for r in rows:
        assert r["ratio_vs_softmax"] == round(r["img_per_s"] / soft[(r["img_size"], r["mode"])], 3)
    assert {r["mode"] for r in rows} == {"infer", "train"}
    assert rows[1]["model"] == "vit_tiny_window_patch16_224" and rows[1]["impl"] == "sdpa_dense_mask"
    assert data["meta"]["command"].startswith("python -m benchmarks.mixers --device cpu")
    assert (tmp_path / "mixers.md").exists() and "vs softmax" in capsys.readouterr().out


def test_bad_arguments(capsys, monkeypatch):
    assert mixers.main(["--device", "cpu", "--mixers", "softmax,performer"]) == 2
    assert "performer" in capsys.readouterr().err
    monkeypatch.setattr(mixers.torch.cuda, "is_available", lambda: False)
    assert mixers.main(["--sizes", "224"]) == 2
    assert "--device cpu" in capsys.readouterr().err
