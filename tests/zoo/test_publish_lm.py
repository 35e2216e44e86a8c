"""`zoo publish` of a language-model export with --int8 / --quant int4: the shipped tag loads by name, generates, and `zoo eval`
reproduces its registered nats/char; bad input and the size budget are zoo.errors messages."""
import json

import pytest
import torch

import zoo
import zoo.weights
from zoo import hub
from zoo.errors import ConfigError
from zoo.registry import get_entry
from zoo.weights import manifest

ARCH = "mdlm_tiny"
EVAL = dict(context=16, num_t=2, max_windows=3)


def _lm_export(path, arch=ARCH, **model_args):
    """A file in the layout the LM recipe exports (fp16 weights; kind, tokenizer and model_args metadata)."""
    torch.manual_seed(0)
    model = zoo.create_model(arch, **model_args)
    meta = {"format": "speedzoo-export-v1", "model": arch, "kind": model.kind, "task": "language_model",
            "tokenizer": model.tokenizer.to_json(), "model_args": json.dumps(model_args),
            "recipe": "tinyshakespeare_mdlm_attn", "epochs": "0", "global_step": "6", "init": "",
            "selected_by": "min val/loss 2.5 at step 6"}
    hub.save_state_dict({k: v.half() for k, v in model.state_dict().items()}, path, metadata=meta)
    return model


@pytest.fixture(params=["int8", "int4"])
def shipped(request, tmp_path, shared_data, zoo_cache, monkeypatch):
    """Publish a tiny MDLM export with --int8 (the alias) / --quant int4 into a temporary weights folder and
    register its tag."""
    from zoo.cli import main as zoo_main

    export = tmp_path / "run" / "export.safetensors"
    _lm_export(export, max_len=64)
    folder = tmp_path / "weights"
    monkeypatch.setattr(zoo.weights, "weights_dir", lambda: folder)
    quant = ["--int8"] if request.param == "int8" else ["--quant", request.param]
    assert zoo_main(["publish", str(export), "--tag", "unittest", *quant, "--context", "16", "--num-t", "2",
                     "--max-windows", "3"]) == 0
    (name, tag), = list(manifest.tags_from_manifest(folder))
    monkeypatch.setitem(get_entry(name).tags, tag.tag, tag)
    return export, folder, manifest.read_manifest(folder)[name][tag.tag], request.param


def test_published_lm_tag_loads_generates_and_reproduces(shipped, tmp_path, capsys):
    from zoo.cli import main as zoo_main
    from zoo.weights.quant import FORMATS, dequantize, quantize

    export, folder, rec, quant = shipped
    assert rec["kind"] == "diffusion-lm" and rec["weights_format"] == FORMATS[quant]
    assert rec["sha256"] == hub.sha256_of(folder / rec["file"]) and rec["file"] == "mdlm_tiny.unittest.safetensors"
    assert (folder / rec["file"]).stat().st_size < {"int8": 0.75, "int4": 0.5}[quant] * export.stat().st_size
    assert f"{quant} weight-only ({FORMATS[quant]})" in rec["notes"]
    assert rec["arch_overrides"]["max_len"] == 64 and len(rec["arch_overrides"]["chars"]) == 65
    assert rec["eval"] == {"data": "tinyshakespeare.txt", "context": 16, "num_t": 2, "batch_size": 64, "seed": 0,
                           "windows": 3, "max_windows": 3, "chars_scored": 48, "device": "cpu"}
    assert "public domain" in rec["notes"] and rec["license"] == "apache-2.0"
    assert "(tinyshakespeare_mdlm_attn, weights of the min val/loss 2.5 at step 6)" in rec["notes"]
    assert "reproduce: zoo eval mdlm_tiny.unittest --num-t 2 --context 16 --batch-size 64 --device cpu --max-windows 3" in rec["notes"]
    (dataset, figures), = rec["metrics"].items()
    assert dataset.startswith("tinyshakespeare (val, first 3 windows of 16, nelbo, 2 antithetic t")
    assert 0 < figures["nats_per_char"] < 10

    assert "mdlm_tiny.unittest" in zoo.list_pretrained()
    assert zoo_main(["info", "mdlm_tiny.unittest", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pretrained"]["mdlm_tiny.unittest"]["metrics"] == rec["metrics"]

    model = zoo.create_model("mdlm_tiny.unittest", pretrained=True).eval()    # the weights are the quantized copy's
    expect = dequantize(*quantize(hub.read_state_dict(export), None, quant))
    assert expect.keys() == model.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], expect[k].float()) for k in expect)

    assert zoo_main(["generate", "mdlm_tiny.unittest", "--prompt", "ROMEO:", "--length", "8", "--steps", "4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) >= 6

    out = tmp_path / "eval.json"
    assert zoo_main(["eval", "mdlm_tiny.unittest", "--num-t", "2", "--context", "16", "--max-windows", "3",
                     "--out", str(out)]) == 0
    assert json.loads(out.read_text())["nats_per_char"] == pytest.approx(figures["nats_per_char"], abs=1e-3)


def test_lm_publish_refuses_bad_input(tmp_path, shared_data, zoo_cache, monkeypatch):
    from zoo.publish import main as publish_main, publish_language_model

    folder = tmp_path / "weights"
    export = tmp_path / "export.safetensors"
    _lm_export(export, max_len=64)
    with pytest.raises(ConfigError, match="without '.'"):
        publish_language_model(export, "a.b", folder=folder)
    plain = tmp_path / "plain.safetensors"
    hub.save_state_dict({"w": torch.zeros(2, 2)}, plain)
    with pytest.raises(ConfigError, match="not a language-model export"):
        publish_language_model(plain, "x", folder=folder)
    assert publish_main([str(plain), "--tag", "x"]) == 2          # the dispatcher: not a zoo fit export
    assert publish_main([str(tmp_path / "missing.safetensors"), "--tag", "x"]) == 2
    assert not folder.exists()

    # the budget: a file over the per-file limit, then one that breaks the total with what is shipped
    monkeypatch.setattr(manifest, "MAX_FILE_BYTES", export.stat().st_size - 1)
    with pytest.raises(ConfigError, match="--quant int8"):
        publish_language_model(export, "big", folder=folder, **EVAL)
    monkeypatch.setattr(manifest, "MAX_FILE_BYTES", 8 * 10**6)
    folder.mkdir()
    (folder / "other.safetensors").write_bytes(b"\0" * 1000)
    monkeypatch.setattr(manifest, "MAX_TOTAL_BYTES", 1000 + export.stat().st_size - 1)
    with pytest.raises(ConfigError, match="budget"):
        publish_language_model(export, "big", folder=folder, **EVAL)
    assert sorted(p.name for p in folder.iterdir()) == ["other.safetensors"]   # nothing shipped, no record
    rec = publish_language_model(export, "small", folder=folder, quant="int8", **EVAL)  # int8 fits
    assert (folder / rec["file"]).is_file() and manifest.read_manifest(folder)["mdlm_tiny"]["small"]


def test_a_failed_measurement_ships_nothing(tmp_path, shared_data, zoo_cache):
    from zoo.publish import publish_language_model

    export = tmp_path / "export.safetensors"
    _lm_export(export, max_len=64)
    folder = tmp_path / "weights"
    with pytest.raises(ConfigError, match="exceeds the model's 64 positions"):
        publish_language_model(export, "x", folder=folder, context=128, num_t=1, max_windows=1)
    assert not (folder / "mdlm_tiny.x.safetensors").exists() and not manifest.read_manifest(folder)
