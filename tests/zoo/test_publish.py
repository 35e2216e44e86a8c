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
