"""zoo generate: text from an export on the CPU, and a clear error for each kind of bad input."""
from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.errors import ConfigError


def _export(tmp_path, name="mdlm_tiny"):
    from zoo.recipes.export import write_safetensors

    torch.manual_seed(0)
    model = zoo.create_model(name)
    meta = {"kind": model.kind, "model": name, "tokenizer": model.tokenizer.to_json(),
            "model_args": json.dumps({})}
    path = tmp_path / f"{name}.safetensors"
    write_safetensors({k: v.half() for k, v in model.state_dict().items()}, path, meta)
    return path


@pytest.mark.parametrize("name,extra", [("mdlm_tiny", ["--steps", "8", "--block", "8", "--cache"]),
                                        ("ar_tiny", ["--cache", "--temperature", "0.8"])])
def test_generate_prints_text_from_an_export(tmp_path, capsys, name, extra):
    from zoo.cli import main

    path = _export(tmp_path, name)
    assert main(["generate", name, "--checkpoint", str(path), "--prompt", "ROMEO:", "--length", "16", *extra]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) >= len("ROMEO:")
    assert main(["generate", name, "--checkpoint", str(path), "--prompt", "ROMEO:", "--length", "16", *extra]) == 0
    assert capsys.readouterr().out == out                      # the same seed, the same text


@pytest.mark.parametrize("args,match", [
    (["ar_tiny", "--prompt", ""], "needs a prompt"),
    (["mdlm_tiny", "--prompt", "café"], "not in this model's vocabulary"),
    (["mdlm_tiny", "--length", "0"], "positive number of tokens"),
    (["mdlm_tiny", "--length", "4", "--steps", "8"], "exceed the 4 tokens"),
    (["mdlm_tiny", "--length", "8", "--block", "3"], "divisor"),
    (["mdlm_tiny", "--sampler", "threshold"], "threshold"),
    (["vit_micro_patch4_32"], "needs a language model"),
])
def test_bad_input_is_a_config_error(args, match, capsys):
    from zoo.cli import main
    from zoo.generate import main as generate_main

    with pytest.raises(ConfigError, match=match):
        generate_main(args)
    assert main(["generate", *args]) == 2 and "error:" in capsys.readouterr().err


def test_checkpoint_of_another_model_is_refused(tmp_path):
    from zoo.generate import load_lm

    with pytest.raises(ConfigError, match="holds mdlm_tiny"):
        load_lm("ar_tiny", str(_export(tmp_path)))


def test_demo_section_samples_every_shipped_lm_tag(monkeypatch, capsys):
    import zoo.generate as gen
    import zoo.registry as registry

    shipped = gen.demo()
    assert (shipped == 0) == ("no shipped weights" in capsys.readouterr().out)
    monkeypatch.setattr(zoo, "list_pretrained", lambda *a: ["mdlm_tiny.shakespeare", "ar_tiny.shakespeare"])
    monkeypatch.setattr(registry, "kind_of", lambda n: "diffusion-lm" if n.startswith("mdlm") else "causal-lm")
    monkeypatch.setattr(gen, "load_lm", lambda name, *a: zoo.create_model(name.split(".")[0]).eval())
    assert gen.demo(length=64) == 2
    out = capsys.readouterr().out
    assert "mdlm_tiny.shakespeare (diffusion-lm, 64 characters" in out and "ar_tiny.shakespeare (causal-lm" in out


def test_sampling_benchmark_at_a_tiny_size(tmp_path):
    """benchmarks/lm_sampling.py end to end on CPU: one row per sampler plus the AR twin, the project's result
    format, a Pareto front that no other row dominates."""
    import importlib

    bench = importlib.import_module("benchmarks.lm_sampling")
    mdlm, ar = _export(tmp_path, "mdlm_tiny"), _export(tmp_path, "ar_tiny")
    assert bench.main(["--mdlm", str(mdlm), "--ar", str(ar), "--length", "8", "--batch-sizes", "1",
                       "--block", "4", "--repeats", "1", "--num-t", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "lm_sampling.json").read_text())
    rows = data["rows"]
    assert {"date", "commit", "gpu", "torch", "command"} <= set(data["meta"])
    assert len(rows) == 1 + len(bench.sampler_grid(8, 4, 0.9)) and rows[0]["sampler"] == "ar+kv_cache"
    for r in rows:
        assert r["tok_per_s"] > 0 and r["ar_ppl"] >= 1 and {"model", "shape", "mode", "impl", "dtype"} <= set(r)
        dominated = any(o["tok_per_s"] > r["tok_per_s"] and o["ar_ppl"] < r["ar_ppl"] for o in rows)
        assert not (r["pareto"] and dominated)
    assert any(r["pareto"] for r in rows) and (tmp_path / "lm_sampling.md").exists()


def test_a_bare_name_samples_from_random_weights_with_a_warning(capsys, caplog, zoo_cache):
    """No tag and no --checkpoint: text from a randomly initialised model, and a log warning that says so."""
    from zoo.generate import main

    with caplog.at_level("WARNING", logger="zoo.generate"):
        assert main(["mdlm_tiny", "--prompt", "ROMEO:", "--length", "8", "--steps", "4"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert "random weights" in caplog.text and "--checkpoint" in caplog.text


def test_checkpoint_loads_the_exports_weights(tmp_path, caplog):
    from zoo import hub
    from zoo.generate import generate_text, load_lm

    path = _export(tmp_path, "ar_tiny")
    with caplog.at_level("WARNING", logger="zoo.generate"):
        model = load_lm("ar_tiny", str(path))
    assert "random weights" not in caplog.text
    saved, got = hub.read_state_dict(path), model.state_dict()
    assert saved.keys() == got.keys() and all(torch.equal(got[k], saved[k].float()) for k in saved)
    assert model.pretrained_cfg["source"] == str(path) and not model.training
    ids = torch.tensor([model.tokenizer.encode("ROMEO:")])
    torch.manual_seed(1)
    fresh = zoo.create_model("ar_tiny").eval()  # another init: the export's weights, not a random model, sample
    with torch.no_grad():
        assert not torch.allclose(model(ids), fresh(ids))
    assert generate_text(model, "ROMEO:", 8)[0].startswith("ROMEO:")
