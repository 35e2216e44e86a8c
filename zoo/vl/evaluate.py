"""``zoo eval`` for vision-language models: Flickr8k retrieval and CIFAR-10 zero-shot, CLIP_benchmark's JSON.

    zoo eval MODEL[.tag] --data flickr8k [--split test] [--zero-shot cifar10] [--checkpoint EXPORT]
             [--output DIR] [--subset N] [--batch-size 256] [--device cpu]

Retrieval: the split's images (Flickr8k test: 1,000) against all their captions (5,000), R@1/5/10 both ways.
Zero-shot: CIFAR-10 test (10,000 images, resized to the model's input) against open_clip's
``SIMPLE_IMAGENET_TEMPLATES`` with the class names. The text side is the real pretrained MiniLM tower (the
model is built with it; an export's locked-tower weights are the referenced MiniLM's). Each task's result is
one JSON in CLIP_benchmark's format, ``{dataset, model, pretrained, task, metrics, language}``, written to
``<output>/<dataset>_<pretrained>_<model>_en_<task>.json`` (its ``--output`` template's default) and printed.
Metrics are fractions in [0, 1], as CLIP_benchmark writes them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from zoo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LANGUAGE = "en"


def is_vision_language(name: str, checkpoint: Optional[str] = None) -> bool:
    """Whether ``name`` (or the export ``checkpoint``/``name`` as a file) is a vision-language model."""
    from zoo.registry import get_entry, split_name

    if checkpoint is None and Path(name).is_file():
        checkpoint, name = name, None
    if checkpoint is not None:
        meta = export_metadata(checkpoint)
        if meta.get("kind") == "vision-language":
            return True
        name = name or meta.get("model")
    if not name:
        return False
    try:
        return get_entry(split_name(name)[0]).kind == "vision-language"
    except Exception:  # noqa: BLE001 - an unknown name is the classifier path's error to report
        return False


def export_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - not a safetensors export: no metadata
        return {}


def load_model(name: str, checkpoint: Optional[str] = None, text_path: Optional[str] = None) -> tuple[nn.Module, dict]:
    """A vision-language model with the real MiniLM tower: ``name`` (``.tag`` loads its weights), an export
    file as ``name``, or ``name`` + ``checkpoint``. Returns (model in eval mode, info for the result)."""
    from zoo import create_model
    from zoo.registry import split_name

    if checkpoint is None and Path(name).is_file():
        checkpoint, name = name, None
    meta = export_metadata(checkpoint) if checkpoint else {}
    arch = name or meta.get("model")
    if not arch:
        raise ConfigError(f"{checkpoint} does not say which model it belongs to; pass the model name too "
                          f"(zoo eval NAME --checkpoint FILE).")
    args = json.loads(meta.get("model_args") or "{}")
    base, tag = split_name(arch)
    model = create_model(arch if checkpoint is None else base, pretrained=checkpoint is None and tag is not None,
                         text_tower="minilm", text_path=text_path, **args)
    if model.pretrained_cfg.get("kind") != "vision-language":
        raise ConfigError(f"{arch} is not a vision-language model (`zoo list --kind vision-language`).")
    if checkpoint:
        from zoo.hub import read_state_dict

        model.load_export(read_state_dict(checkpoint))
    pretrained = Path(checkpoint).stem if checkpoint else (tag or "random")
    return model.eval(), {"model": base, "pretrained": pretrained}


def preprocess(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 [B, 3, h, w] -> the model's input: bicubic resize to its input size, its mean/std."""
    from zoo.data.image_text import normalise

    cfg = model.pretrained_cfg
    size = tuple(cfg["input_size"][-2:])
    x = images.float()
    if tuple(x.shape[-2:]) != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(0, 255)
    return normalise(x, cfg["mean"], cfg["std"])


@torch.no_grad()
def encode_images(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """Normalised image embeddings [N, D] (fp32, CPU) of uint8 images [N, 3, h, w]."""
    model.to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i:i + batch_size], model).to(device)
        out.append(model.encode_image(x, normalize=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 256,
                 device: str = "cpu") -> torch.Tensor:
    model.to(device)
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(list(texts[i:i + batch_size])).to(device)
        out.append(model.encode_text(tok, normalize=True).float().cpu())
    return torch.cat(out)


def tokenizer_for(text_path: Optional[str] = None):
    from zoo.vl.text import CaptionTokenizer, load_tokenizer

    return CaptionTokenizer(load_tokenizer(text_path))


def eval_retrieval(model: nn.Module, tokenizer, data: str = "flickr8k", split: str = "test",
                   subset: Optional[int] = None, batch_size: int = 256, device: str = "cpu") -> dict[str, float]:
    """Recall@1/5/10 both ways over the split's images and all their captions."""
    from zoo.data.image_text import decode_images, open_image_text
    from zoo.vl.metrics import retrieval_metrics

    ds = open_image_text(data, split, subset)
    images = decode_images(ds, tuple(model.pretrained_cfg["input_size"][-2:]))
    img = encode_images(model, images, batch_size, device)
    txt = encode_texts(model, tokenizer, ds.flat_captions(), batch_size, device)
    return retrieval_metrics(img, txt, ds.text_to_image())


def zero_shot_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    return tuple(t("{}") if callable(t) else t for t in SIMPLE_IMAGENET_TEMPLATES)


def eval_zero_shot(model: nn.Module, tokenizer, data: str = "cifar10", split: str = "test",
                   subset: Optional[int] = None, batch_size: int = 256, device: str = "cpu") -> dict[str, float]:
    """acc1 / acc5 / mean_per_class_recall of zero-shot classification with class-name prompts."""
    from torch.utils.data import DataLoader

    from zoo.data.catalog import resolve_path
    from zoo.data.images import open_image_dataset
    from zoo.vl.metrics import classification_metrics, zero_shot_classifier

    path = resolve_path(data, "--zero-shot", split)
    ds = open_image_dataset(path, split, transform=_to_uint8, subset=subset, subset_per_class=True, subset_seed=0)
    classes = [c.replace("_", " ") for c in ds.classes]
    weights = zero_shot_classifier(model, tokenizer, classes, zero_shot_templates(), device)   # [D, C]
    logits, targets = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, num_workers=0):
        feats = encode_images(model, x, batch_size, device)
        logits.append(100.0 * feats @ weights.float().cpu())
        targets.append(y)
    if not logits:
        raise DataError(f"{path} holds no images for zero-shot classification.")
    return classification_metrics(torch.cat(logits), torch.cat(targets))


def _to_uint8(img) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def benchmark_result(dataset: str, info: dict, task: str, metrics: dict[str, float]) -> dict[str, Any]:
    """One result in CLIP_benchmark's JSON layout."""
    return {"dataset": dataset, "model": info["model"], "pretrained": info["pretrained"], "task": task,
            "metrics": {k: round(float(v), 6) for k, v in metrics.items()}, "language": LANGUAGE}


def write_result(result: dict, folder: str | os.PathLike) -> Path:
    """``<folder>/<dataset>_<pretrained>_<model>_<language>_<task>.json`` (CLIP_benchmark's default name)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "{dataset}_{pretrained}_{model}_{language}_{task}.json".format(**result)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def run(name: str, checkpoint: Optional[str] = None, data: str = "flickr8k", split: str = "test",
        zero_shot: Optional[str] = "cifar10", output: Optional[str] = None, subset: Optional[int] = None,
        batch_size: int = 256, device: str = "cpu", text_path: Optional[str] = None) -> list[dict]:
    """Both evaluations of one model; returns the CLIP_benchmark results (and writes them under ``output``)."""
    model, info = load_model(name, checkpoint, text_path)
    tokenizer = tokenizer_for(text_path)
    results = []
    t0 = time.perf_counter()
    if data:
        m = eval_retrieval(model, tokenizer, data, split, subset, batch_size, device)
        results.append(benchmark_result(Path(str(data)).name.split(".")[0], info, "zeroshot_retrieval", m))
    if zero_shot:
        m = eval_zero_shot(model, tokenizer, zero_shot, "test", subset, batch_size, device)
        results.append(benchmark_result(Path(str(zero_shot)).name.split(".")[0], info, "zeroshot_classification", m))
    log.info("evaluated %s in %.0f s", name, time.perf_counter() - t0)
    if output:
        for r in results:
            write_result(r, output)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo eval", description="Evaluate vision-language models: retrieval and "
                                                             "zero-shot classification (CLIP_benchmark JSON).")
    p.add_argument("models", nargs="+", help="MODEL, MODEL.tag or an export file")
    p.add_argument("--data", default="flickr8k", help="retrieval data: a name (flickr8k) or a Flickr8k-layout "
                                                      "zip/folder or open_clip CSV/TSV")
    p.add_argument("--split", default="test")
    p.add_argument("--zero-shot", default="cifar10", help="zero-shot classification data ('' to skip)")
    p.add_argument("--checkpoint", default=None, help="an export of MODEL (zoo fit's export.safetensors)")
    p.add_argument("--output", default=None, help="folder for the CLIP_benchmark JSON files")
    p.add_argument("--subset", type=int, default=None, help="first N images (retrieval) / N per class (zero-shot)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--text-tower", default=None, help="MiniLM zip or folder (default: the data set minilm)")
    return p


def handles(argv: Sequence[str]) -> bool:
    """Whether a ``zoo eval`` command line names vision-language models (then this module evaluates them)."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # not ours to report: the classifier parser says it
            args, _ = build_parser().parse_known_args(list(argv))
    except SystemExit:
        return False
    return bool(args.models) and all(is_vision_language(m, args.checkpoint) for m in args.models)


def main(argv: Optional[list[str]] = None) -> int:
    args, unknown = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if unknown:
        log.warning("ignoring options the vision-language evaluation does not use: %s", " ".join(unknown))
    if args.checkpoint and len(args.models) > 1:
        raise ConfigError("--checkpoint applies to one model; evaluate several checkpoints in separate calls.")
    for name in args.models:
        for r in run(name, args.checkpoint, args.data, args.split, args.zero_shot or None, args.output,
                     args.subset, args.batch_size, args.device, args.text_tower):
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
