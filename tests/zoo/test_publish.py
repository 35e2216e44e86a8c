"""`zoo publish`: a fit export becomes a shipped, checksummed tag whose metrics zoo eval reproduces."""
import json
import zipfile

import pytest
import torch

import zoo
import zoo.weights
from zoo import hub
from zoo.errors import ConfigError
from zoo.publish import publish, tags_from_manifest
from zoo.registry import get_entry

ARCH = "vit_micro_patch4_32"


def _export(path, model, class_names, depth):
    """A file in the layout `zoo fit` exports (fp16 weights plus build metadata)."""
    cfg = model.pretrained_cfg
    meta = {"format": "speedzoo-export-v1", "model": ARCH, "num_classes": str(model.num_classes),
            "class_names": json.dumps(class_names), "in_chans": "3", "img_size": json.dumps([32, 32]),
            "model_args": json.dumps({"depth": depth}), "recipe": "cifar10_vit_micro", "epochs": "3",
            "init": "vit_micro_patch4_32.cifar10 (sha256 0123456789ab)",
            "preprocess": json.dumps({k: cfg[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation")})}
    hub.save_state_dict({k: v.half() for k, v in model.state_dict().items()}, path, metadata=meta)


@pytest.fixture
def tiny_test_split(tmp_path, shared_data):
    """Two real CIFAR-10 test images per class in an ImageFolder tree."""
    root = tmp_path / "data"
    with zipfile.ZipFile(shared_data / "cifar10-test.zip") as z:
        for name in sorted(z.namelist()):
            parts = name.split("/")
            if name.endswith(".jpg") and parts[2] in ("0000.jpg", "0001.jpg"):
                dest = root / "test" / parts[1] / parts[2]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(z.read(name))
    return root


def test_publish_then_load_by_name(tmp_path, tiny_test_split, zoo_cache, monkeypatch):
    torch.manual_seed(0)
    model = zoo.create_model(ARCH, depth=1).eval()
    export = tmp_path / "run" / "export.safetensors"
    _export(export, model, list(model.pretrained_cfg["label_names"]), depth=1)
    shipped = tmp_path / "weights"
    rec = publish(export, "unittest", str(tiny_test_split), split="test", folder=shipped)

    assert rec["sha256"] == hub.sha256_of(shipped / rec["file"])
    assert rec["arch_overrides"]["depth"] == 1 and len(rec["label_names"]) == 10
    assert "cifar10_vit_micro, 3 epochs, starting from vit_micro_patch4_32.cifar10 (sha256 0123456789ab)" in rec["notes"]
    (dataset, metrics), = rec["metrics"].items()
    assert "20 samples" in dataset and 0 <= metrics["top1"] <= 100

    monkeypatch.setattr(zoo.weights, "weights_dir", lambda: shipped)
    (name, tag), = list(tags_from_manifest(shipped))
    monkeypatch.setitem(get_entry(name).tags, tag.tag, tag)
    loaded = zoo.create_model(f"{ARCH}.unittest", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the shipped fp16 weights give the fp16-rounded model's logits
        ref = zoo.create_model(ARCH, depth=1).eval()
        ref.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        assert torch.allclose(loaded(x), ref(x), atol=1e-5)
    assert loaded.pretrained_cfg["label_names"][0] == "airplane"


def test_publish_refuses_a_non_export(tmp_path):
    plain = tmp_path / "plain.safetensors"
    hub.save_state_dict(zoo.create_model(ARCH, depth=1).state_dict(), plain)
    with pytest.raises(ConfigError, match="not a zoo fit export"):
        publish(plain, "x", "cifar10", folder=tmp_path / "w")
    with pytest.raises(ConfigError, match="without '.'"):
        publish(plain, "a.b", "cifar10", folder=tmp_path / "w")


def test_publish_int8_measures_and_ships_the_int8_copy(tmp_path, tiny_test_split, zoo_cache, monkeypatch):
    """--int8: the shipped file is the int8 copy (about half the fp16 export), the tag loads the dequantized
    weights, and the registered figure is the int8 file's (zoo eval of the shipped file gives it back)."""
    from zoo.cli import main as zoo_main
    from zoo.weights.quant import dequantize, quantize

    torch.manual_seed(0)
    model = zoo.create_model(ARCH, depth=1).eval()
    export = tmp_path / "run" / "export.safetensors"
    _export(export, model, list(model.pretrained_cfg["label_names"]), depth=1)
    shipped = tmp_path / "weights"
    monkeypatch.setattr(zoo.weights, "weights_dir", lambda: shipped)
    assert zoo_main(["publish", str(export), "--tag", "unittest8", "--data", str(tiny_test_split), "--int8"]) == 0
    rec = json.loads((shipped / "manifest.json").read_text())[ARCH]["unittest8"]
    assert rec["weights_format"] == "int8-rowwise-v1" and "int8 weight-only" in rec["notes"]
    assert (shipped / rec["file"]).stat().st_size < 0.7 * export.stat().st_size
    (name, tag), = list(tags_from_manifest(shipped))
    monkeypatch.setitem(get_entry(name).tags, tag.tag, tag)
    loaded = zoo.create_model(f"{ARCH}.unittest8", pretrained=True).eval()
    expect = dequantize(*quantize(hub.read_state_dict(export)))
    assert all(torch.equal(loaded.state_dict()[k], expect[k].float()) for k in expect)
    out = tmp_path / "eval.csv"
    assert zoo_main(["eval", f"{ARCH}.unittest8", "--data", str(tiny_test_split), "--split", "test",
                     "--csv", str(out)]) == 0
    (metrics,) = rec["metrics"].values()
    import csv

    (row,) = csv.DictReader(open(out))
    assert float(row["top1"]) == pytest.approx(metrics["top1"], abs=0.01)


def test_publish_needs_data_for_a_classifier_and_keeps_the_budget(tmp_path, monkeypatch):
    from zoo.publish import main as publish_main
    from zoo.weights import manifest

    model = zoo.create_model(ARCH, depth=1)
    export = tmp_path / "export.safetensors"
    _export(export, model, list(model.pretrained_cfg["label_names"]), depth=1)
    assert publish_main([str(export), "--tag", "x"]) == 2                 # classifiers name their --data
    monkeypatch.setattr(manifest, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ConfigError, match="must stay under"):
        publish(export, "x", "cifar10", folder=tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_vl_publish_int8_with_the_real_text_tower(tmp_path, shared_data, monkeypatch):
    """A one-block CLIP export through `zoo publish --int8` (4 test images): int8 file, record, metrics."""
    from zoo.cli import main as zoo_main
    from zoo.hub import save_state_dict
    from zoo.recipes.contrastive import ContrastiveTask

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    task = ContrastiveTask("clip_vit_tiny_d6_minilm_128", model_args={"depth": 1})
    meta = {"model": "clip_vit_tiny_d6_minilm_128", "kind": "vision-language", "model_args": '{"depth": 1}',
            "text_included": "False"}
    export = save_state_dict(task.export_state_dict(), tmp_path / "export.safetensors", metadata=meta)
    from zoo.vl.publish import publish as publish_vl

    folder = tmp_path / "weights"
    rec = publish_vl(export, "unittest", folder=folder, subset=4, quant="int8")
    assert rec["kind"] == "vision-language" and rec["weights_format"] == "int8-rowwise-v1"
    assert (folder / rec["file"]).stat().st_size < 0.7 * export.stat().st_size
    assert rec["sha256"] == hub.sha256_of(folder / rec["file"])
    assert set(rec["metrics"]) == {"flickr8k (test retrieval, subset 4)", "cifar10 (test zero-shot, subset 4)"}
    assert zoo_main(["publish", str(export), "--tag", "a.b", "--int8"]) == 2   # the dispatcher reaches check_tag
