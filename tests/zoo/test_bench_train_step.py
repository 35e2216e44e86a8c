"""The training-step benchmark's logic on the CPU at a tiny depth (the numbers mean nothing here)."""
import json

from zoo.bench import train_step


def test_cpu_check_run_rows_per_model_and_scan_chunk(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(train_step.CHUNK_ENV, raising=False)
    rc = train_step.main(["--device", "cpu", "--batch", "2", "--depth", "1", "--warmup", "0", "--iters", "1",
                          "--scan-chunks", "32,8", "--out-dir", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    # the chunk applies to the scan model only; the ViT gets one row
    assert [(r["model"], r["scan_chunk"]) for r in rows] == [
        ("vim_micro_patch4_32", 32), ("vim_micro_patch4_32", 8), ("vit_micro_patch4_32", "default")]
    for r in rows:
        assert r["ms_step"] > 0 and r["host_ms"] > 0 and r["img_per_s"] == round(2 / r["ms_step"] * 1e3, 1)
    assert train_step.CHUNK_ENV not in __import__("os").environ  # restored after the run
    assert "ms/step" in capsys.readouterr().out
