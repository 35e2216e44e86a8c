"""``zoo demo``: the zoo at a glance, then real predictions from models loaded by name.

It classifies the bundled CIFAR-10 test images with the zoo's CIFAR-10 weights and the bundled spoken
digits with the audio weights. Everything it needs ships with the package: it runs without network.
"""
from __future__ import annotations

import collections
import time

import torch

import zoo
from zoo.assets import asset_files
from zoo.registry import get_entry, split_name

IMAGE_DEMO_MODELS = ("vim_micro_patch4_32.cifar10", "vit_micro_patch4_32.cifar10")
FALLBACK_IMAGE_MODEL = "vit_micro_patch4_32"


def _print_zoo() -> None:
    names = zoo.list_models()
    by_family = collections.Counter(get_entry(n).family for n in names)
    tagged = zoo.list_pretrained()
    print(f"speedzoo {zoo.__version__}: {len(names)} architectures, {len(tagged)} pretrained weight sets")
    for family, count in sorted(by_family.items()):
        members = [n for n in names if get_entry(n).family == family]
        print(f"  {family:<6} {count:>2}  {', '.join(members)}")
    print()


def _topk_line(probs: torch.Tensor, labels: list[str], k: int = 3) -> str:
    values, idx = probs.topk(min(k, probs.numel()))
    return "  ".join(f"{labels[i]} {v:.0%}" for v, i in zip(values.tolist(), idx.tolist()))


def _report(files, probs: torch.Tensor, labels: list[str]) -> float:
    """One line per sample (true class from the file name's prefix, top-3); returns the fraction correct."""
    width = max(len(f.name) for f in files)
    correct = 0
    for f, p in zip(files, probs):
        truth = f.name.split("_")[0]
        correct += labels[int(p.argmax())] == truth
        print(f"  {f.name:<{width}}  true {truth:<10} -> {_topk_line(p, labels)}")
    print(f"  {correct}/{len(files)} correct\n")
    return correct / len(files)


def classify_images(model_name: str, pretrained: bool = True) -> float:
    """Classify the bundled CIFAR-10 images; returns the fraction classified correctly."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = zoo.create_model(model_name, pretrained=pretrained).eval()
    cfg = model.pretrained_cfg
    labels = list(cfg.get("label_names") or range(model.num_classes))
    labels = [str(x) for x in labels]
    transform = create_transform(**resolve_data_config({}, model=model))
    files = asset_files("cifar10")
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    start = time.perf_counter()
    with torch.inference_mode():
        probs = model(batch).softmax(-1)
    elapsed = time.perf_counter() - start
    status = "" if pretrained else "  (untrained weights: predictions are chance)"
    print(f"{model_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
          f"{len(files)} images in {elapsed * 1000:.0f} ms{status}")
    return _report(files, probs, labels)


def classify_digits(model_name: str) -> float:
    """Classify the bundled spoken digits with an audio model; returns the fraction correct."""
    from zoo.data.audio import FbankFrontEnd, load_audio

    model = zoo.create_model(model_name, pretrained=True).eval()
    front = FbankFrontEnd.from_config(model.pretrained_cfg["audio"])
    labels = [str(x) for x in model.pretrained_cfg.get("label_names") or range(model.num_classes)]
    files = asset_files("fsdd")
    feats = torch.stack([front(load_audio(f, target_sr=front.sample_rate)) for f in files])
    with torch.inference_mode():
        probs = model(feats).softmax(-1)
    print(f"{model_name}: {len(files)} spoken digits (FSDD test split), log-mel {tuple(feats.shape[1:])}")
    return _report(files, probs, labels)


def run_demo(list_only: bool = False) -> int:
    _print_zoo()
    if list_only:
        return 0
    available = set(zoo.list_pretrained())
    image_models = [m for m in IMAGE_DEMO_MODELS if m in available]
    if image_models:
        for name in image_models:
            classify_images(name)
    else:
        classify_images(FALLBACK_IMAGE_MODEL, pretrained=False)
    for name in sorted(available):  # audio weights carry their front end in the tag's preprocessing
        base, tag = split_name(name)
        if "audio" in get_entry(base).tags[tag].preprocess:
            classify_digits(name)
    from zoo.vl.demo import run as vision_language_demo
    vision_language_demo()  # CLIP weights on bundled Flickr8k / CIFAR-10 images (skipped, saying why, when absent)
    from zoo.kinds.captioner import demo as captioning_demo
    captioning_demo()  # shipped captioners on the same Flickr8k images, easy-VQA ones on bundled questions (or why not)
    from zoo.generate import demo as language_model_demo
    language_model_demo()  # Tiny Shakespeare samples from the shipped LM weights (skipped, saying why, when absent)
    return 0
