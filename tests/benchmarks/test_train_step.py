"""The training-step benchmark's logic on the CPU at a tiny depth (the numbers mean nothing here)."""
import json

from benchmarks import train_step


def test_cpu_check_run_rows_per_model_and_scan_chunk(tmp_path, capsys, monkeypatch):
    chunks_seen = []
    real = train_step.measure_step

    def spy(step, *a, **kw):  # the scan chunk of every mixer while the step is timed
        import backbones.layers.mamba as mamba

        real_dir = mamba.mamba_direction  # the per-direction path the CPU takes
        monkeypatch.setattr(mamba, "mamba_direction", lambda *x, **k: chunks_seen.append(k.get("chunk")) or
                            real_dir(*x, **k))
        try:
            return real(step, *a, **kw)
        finally:
            monkeypatch.setattr(mamba, "mamba_direction", real_dir)

    monkeypatch.setattr(train_step, "measure_step", spy)
    rc = train_step.main(["--device", "cpu", "--batch", "2", "--depth", "1", "--warmup", "0", "--iters", "1",
                          "--scan-chunks", "32,8", "--out-dir", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "train_step.json").read_text())["rows"]
    # the chunk applies to the scan model only; the ViT gets one row
    assert [(r["model"], r["scan_chunk"]) for r in rows] == [
        ("vim_micro_patch4_32", 32), ("vim_micro_patch4_32", 8), ("vit_micro_patch4_32", "default")]
    for r in rows:
        assert r["ms_step"] > 0 and r["host_ms"] > 0 and r["img_per_s"] == round(2 / r["ms_step"] * 1e3, 1)
    # the chunk reached the kernel call as its keyword argument (None: the kernel's default, for the ViT)
    assert set(chunks_seen) == {32, 8}
    assert "ms/step" in capsys.readouterr().out
