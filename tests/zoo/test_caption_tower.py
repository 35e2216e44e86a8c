"""The captioner's frozen image tower as a reference to the shipped CLIP tag: frozen (no gradients, no optimizer
state, eval mode), left out of the state and rebuilt from the tag; the int4 trainable part fits the weight budget;
a CPU fit's export evaluates (`zoo eval`), publishes (`zoo publish --int8`) and loads by name (`zoo caption`); the shipped tag is `zoo caption`'s default and has a `zoo demo` section."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import zoo
import zoo.weights
from zoo import hub
from zoo.errors import ConfigError, PretrainedNotAvailableError, WeightLoadError

TOWER = "clip_vit_tiny_d6_minilm_128.flickr8k"
SMALL = dict(dim=64, depth=1, num_heads=2, mlp_hidden=128)  # a small decoder on the real tower, for speed


def _frozen(**kw):
    torch.manual_seed(0)
    return zoo.create_model("caption_mdlm_vit_tiny_d6_128", tower_from=TOWER, freeze_tower=True, **SMALL, **kw)


def test_frozen_tower_is_a_reference_to_its_tag():
    model = _frozen()
    tag_state = hub.read_state_dict(hub.resolve(zoo.registry.get_tag(zoo.registry.get_entry(TOWER.split(".")[0]),
                                                                      "flickr8k")))
    for k, v in model.visual.state_dict().items():
        assert torch.equal(v, tag_state[f"visual.{k}"].float()), k
    assert model.tower_ref["tag"] == TOWER and len(model.tower_ref["sha256"]) == 64
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("visual."))
    model.train()
    assert model.training and not model.visual.training and not any(m.training for m in model.visual.modules())
    state = model.state_dict()
    assert state and not any(k.startswith("visual.") for k in state)
    other = _frozen()
    with torch.no_grad():
        for p in other.decoder.parameters():
            p.add_(1.0)
    other.load_state_dict(state)  # strict: the tower's keys may be absent
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), state.values()))
    plain = zoo.create_model("caption_mdlm_vit_tiny_d6_128", **SMALL)  # a tower of its own must be in the state
    with pytest.raises(RuntimeError, match="visual"):
        plain.load_state_dict(state)

    images = torch.randn(2, 3, 128, 128)
    tokens = torch.randint(4, model.vocab_size, (2, 9))
    model(images, tokens).float().logsumexp(-1).mean().backward()
    assert all(p.grad is None for p in model.visual.parameters())
    assert model.projector.fc1.weight.grad is not None


def test_trainable_part_fits_the_weight_budget():
    """decoder + projector of the full-size captioner, int4 as the shipped tag is (zoo publish --quant int4),
    beside the other tracked files."""
    from zoo.weights.manifest import MAX_TOTAL_BYTES
    from zoo.weights.quant import quantized_bytes

    model = zoo.create_model("caption_mdlm_vit_tiny_d6_128", tower_from=TOWER, freeze_tower=True)
    ar = zoo.create_model("caption_ar_vit_tiny_d6_128", tower_from=TOWER, freeze_tower=True)
    assert model.state_dict().keys() == ar.state_dict().keys()  # the twins share the network
    blob = quantized_bytes(model.state_dict(), {"vocab": model.tokenizer.to_json()}, "int4")
    others = sum(p.stat().st_size for p in zoo.weights.weights_dir().glob("*.safetensors")
                 if not p.name.startswith("caption_"))
    assert len(blob) < 1.8e6 and others + len(blob) < MAX_TOTAL_BYTES


def test_task_trains_only_projector_and_decoder():
    from zoo.recipes.captioning import CaptioningTask

    task = CaptioningTask(tower_from=TOWER, freeze_tower=True, model_args=SMALL)
    trained = {id(p) for g in task.param_groups() for p in g["params"]}
    assert trained and not trained & {id(p) for p in task.model.visual.parameters()}
    assert trained == {id(p) for n, p in task.model.named_parameters() if not n.startswith("visual.")}
    with pytest.raises(ConfigError, match="tower_from"):
        CaptioningTask(freeze_tower=True, model_args=SMALL)
    with pytest.raises(ConfigError, match="tower_from"):
        zoo.create_model("caption_mdlm_tiny_test", freeze_tower=True)


def test_tower_reference_errors():
    with pytest.raises(WeightLoadError, match="neither a file nor a registered tag"):
        zoo.create_model("caption_mdlm_tiny_test", tower_from="clip_vit_tiny_d6_minilm_128.nosuchtag")
    with pytest.raises(WeightLoadError, match="installation does not ship"):
        zoo.create_model("caption_mdlm_tiny_test", tower_from="no_such_clip.flickr8k", tower_sha256="ab" * 32)
    with pytest.raises(WeightLoadError, match="sha256"):
        _frozen(tower_sha256="0" * 64)


@pytest.fixture(scope="module")
def frozen_export(tmp_path_factory):
    """2 steps of configs/flickr8k_caption_mdlm.yaml (frozen tower from the shipped tag) with a small decoder."""
    from tests.conftest import SHARED_DATA
    from zoo.cli import main

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing")

    run = tmp_path_factory.mktemp("caption_frozen")
    rc = main(["fit", "--config", "configs/flickr8k_caption_mdlm.yaml", "--model.init_args.model_args",
               json.dumps(SMALL), "--data.init_args.train_subset", "16", "--data.init_args.val_subset", "8",
               "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8",
               "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
               "--trainer.default_root_dir", str(run), "--progress", "none"])
    assert rc == 0
    return run / "export.safetensors"


def test_export_holds_only_the_trainable_parts(frozen_export):
    from zoo.kinds.captioner import load_captioner
    from zoo.vl.evaluate import export_metadata

    meta = export_metadata(frozen_export)
    assert meta["tower_included"] == "False" and meta["tower_tag"] == TOWER and meta["freeze_tower"] == "True"
    keys = hub.read_state_dict(frozen_export).keys()
    assert keys and not any(k.startswith("visual.") for k in keys)
    model = load_captioner(frozen_export)
    assert model.tower_frozen and model.tower_ref["sha256"] == meta["tower_sha256"]
    assert model.decoder.dim == 64 and len(model.generate_caption(torch.randn(1, 3, 128, 128), steps=4)) == 1


def test_zoo_eval_of_an_export(frozen_export, tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", str(frozen_export), "--data", "flickr8k", "--limit", "4", "--batch-size", "2",
                 "--steps", "4", "--device", "cpu", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["images"] == 4 and row["steps"] == 4 and 0 <= row["cider"] and 0 <= row["bleu4"] <= 1
    assert "flickr8k test (4 images, 4 steps" in capsys.readouterr().out
    assert main(["eval", str(frozen_export), "--steps", "0"]) == 2


def test_publish_then_load_by_name(frozen_export, tmp_path, monkeypatch, capsys):
    from zoo.cli import main
    from zoo.kinds.captioner import load_captioner
    from zoo.registry import get_entry
    from zoo.weights import manifest

    folder = tmp_path / "weights"
    folder.mkdir()
    src = zoo.weights.weights_dir()
    os.symlink(src / f"{TOWER}.safetensors", folder / f"{TOWER}.safetensors")  # the tower's tag, as shipped
    monkeypatch.setattr(zoo.weights, "weights_dir", lambda: folder)
    assert main(["publish", str(frozen_export), "--tag", "unittest", "--int8", "--limit", "4"]) == 0
    name = "caption_mdlm_vit_tiny_d6_128"
    rec = manifest.read_manifest(folder)[name]["unittest"]
    shipped = folder / rec["file"]
    assert rec["kind"] == "captioner" and rec["caption_kind"] == "diffusion-captioner"
    assert rec["weights_format"] == "int8-rowwise-v1" and rec["sha256"] == hub.sha256_of(shipped)
    assert rec["tower"]["tag"] == TOWER and rec["arch_overrides"]["tower_from"] == TOWER
    assert "vocab" not in rec["arch_overrides"]  # the packaged default list
    assert not any(k.startswith("visual.") for k in hub.read_state_dict(shipped))
    (dataset, figures), = rec["metrics"].items()
    assert dataset.startswith("flickr8k (test, first 4, 4 images") and set(figures) >= {"bleu4", "cider"}
    assert "non-commercial" in rec["notes"]

    tags = {n: t for n, t in manifest.tags_from_manifest(folder)}
    monkeypatch.setitem(get_entry(name).tags, "unittest", tags[name])
    model = zoo.create_model(f"{name}.unittest", pretrained=True).eval()
    ref = load_captioner(shipped)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(model.visual.state_dict().values(), ref.visual.state_dict().values()))
    capsys.readouterr()
    assert main(["caption", "--example", "--model", f"{name}.unittest", "--steps", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(ln.split("\t")[0].endswith(".jpg") for ln in lines)

    (folder / f"{TOWER}.safetensors").unlink()  # the tower's file gone: a clear error, not a half-built model
    with pytest.raises(PretrainedNotAvailableError, match="missing"):
        zoo.create_model(f"{name}.unittest", pretrained=True)


def test_zoo_caption_needs_images_or_example(capsys):
    from zoo.cli import main

    assert main(["caption", "--model", "caption_ar_tiny_test"]) == 2
    assert "--example" in capsys.readouterr().err


def test_shipped_captioner_is_the_default_of_zoo_caption_and_has_a_demo_section(capsys):
    """The shipped tag loads offline on the CPU with its tower rebuilt from the CLIP tag: `zoo caption --example`
    without --model uses it, one `file<TAB>caption` line per bundled image; `zoo demo` prints the same captions."""
    import zoo
    from zoo.cli import main
    from zoo.kinds.captioner import DEFAULT_CAPTIONER, demo
    from zoo.vl.service import sample_files

    assert DEFAULT_CAPTIONER in zoo.list_pretrained()
    files = [str(f) for f in sample_files()]
    assert main(["caption", "--example"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == files
    captions = [ln.split("\t")[1] for ln in lines]
    assert all(len(c.split()) >= 2 for c in captions), captions      # real words, not an empty decode
    assert demo() >= 1
    out = capsys.readouterr().out
    assert DEFAULT_CAPTIONER in out and all(c in out for c in captions)
    assert main(["caption", "--example", "--steps", "0"]) == 2          # bad input: a clear message, exit 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
