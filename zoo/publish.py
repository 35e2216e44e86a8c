"""``zoo publish``: turn a ``zoo fit`` export into a pretrained tag shipped with the package.

    zoo publish runs/cifar10_vim_micro/export.safetensors --tag cifar10 --data cifar10 [--split test] [--quant int8|int4]
    zoo publish runs/flickr8k_clip_vit/export.safetensors --tag flickr8k --int8
    zoo publish runs/tinyshakespeare_mdlm_attn/export.safetensors --tag tinyshakespeare --quant int4
    zoo publish runs/easyvqa_mdlm/export.safetensors --tag easyvqa --quant int4    # easy-VQA test accuracy

The export's metadata ``kind`` picks the publisher: classifiers (image, audio) here, vision-language in
zoo.vl.publish, captioners in zoo.kinds.captioner (BLEU / CIDEr on Flickr8k, or easy-VQA accuracy for one trained
on its questions), language models (diffusion-lm, causal-lm) here too. Each measures the file exactly as it
ships (``--quant int8`` / ``int4``: the weight-only quantized copy, zoo.weights.quant), writes it to
``zoo/weights/<model>.<tag>.safetensors`` within the size budget (zoo.weights.manifest.check_budget) and the
tag into ``zoo/weights/manifest.json`` with its sha256, architecture overrides, preprocessing and metrics. The
registry reads the manifest at import, so ``create_model('<model>.<tag>', pretrained=True)``, ``zoo eval``
and (language models) ``zoo generate`` then load it by name.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, ZooError
from zoo.weights.quant import storage
from zoo.weights.manifest import add_quant_arguments, check_tag, publish_record, read_manifest, ship_file, tags_from_manifest, write_record  # noqa: F401  (the manifest's home)

log = logging.getLogger(__name__)

LM_DATA_LICENSES = {"tinyshakespeare": "Tiny Shakespeare text: public domain"}


def _trained(info: dict[str, Any], export: Path) -> str:
    trained = info.get("recipe") or export.parent.name
    trained += f", {info['epochs']} epochs" if info.get("epochs") else ""
    trained += f", starting from {info['init']}" if info.get("init") else ""
    return trained


def publish(export: str | os.PathLike, tag: str, data: str, split: str = "test", license: str = "apache-2.0",
            folder: Path | None = None, batch_size: int = 500, device: str = "cpu", quant: str | None = None
            ) -> dict[str, Any]:
    """Evaluate the shipped copy of the classifier ``export`` on ``data``/``split``, ship it as
    ``<model>.<tag>``; returns the manifest record."""
    from torch.utils.data import DataLoader

    from zoo.evaluate import build_dataset, build_model, check_classes, evaluate, export_info, resolve_data

    check_tag(tag, example="cifar10")
    export = Path(export)
    info = export_info(export)                 # metadata only: build_model reads the weights once
    name = info.get("model")
    if not name:
        raise ConfigError(f"{export} is not a zoo fit export (no model in its metadata); publish the "
                          f"export.safetensors that `zoo fit` writes at the end of a run")
    path = resolve_data(data)
    measured: dict[str, Any] = {}

    def measure(shipped: Path) -> None:
        model, built = build_model(name, str(shipped))
        ds, data_cfg = build_dataset(model, built, path, split, None)
        check_classes(name, model, ds)
        result = evaluate(model, DataLoader(ds, batch_size=batch_size, shuffle=False), device)
        measured.update(model=model, data_cfg=data_cfg, result=result)

    folder, file, sha256 = ship_file(export, name, tag, folder, quant=quant, check=measure)
    model, data_cfg, result = measured["model"], measured["data_cfg"], measured["result"]
    metrics = {k: round(float(result[k]), 2) for k in ("top1", "top5", "mean_per_class_top1") if k in result}
    dataset = f"{path.name.split('.')[0]} ({split}, {result['num_samples']} samples)"
    pre = dict(info.get("preprocess") or {})
    arch = dict(info.get("model_args") or {})
    for key in ("in_chans", "img_size"):
        if info.get(key) is not None:
            arch[key] = list(info[key]) if isinstance(info[key], tuple) else info[key]
    audio = pre.get("type") == "kaldi_fbank"
    record = {
        "file": file,
        "kind": "audio" if audio else "image",
        "sha256": sha256,
        "license": license,
        "num_classes": model.num_classes,
        "label_names": list(info.get("class_names") or []),
        "arch_overrides": arch,
        "preprocess": {"audio": pre, "input_size": list(data_cfg["input_size"])} if audio
                      else {k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()},
        "metrics": {dataset: metrics},
        "notes": f"trained with `zoo fit` ({_trained(info, export)}); {storage(quant)} weights measured by "
                 f"`zoo publish` on {datetime.date.today().isoformat()}",
    }
    return publish_record(name, tag, record, quant, folder)


def publish_language_model(export: str | os.PathLike, tag: str, data: str | None = None,
                           license: str = "apache-2.0", folder: Path | None = None, device: str = "cpu",
                           quant: str | None = None, context: int = 256, num_t: int = 32, batch_size: int = 64,
                           max_windows: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure the shipped copy of a language-model ``export`` on the validation split (nats/char and
    bits/char through ``evaluate_language_model``: MDLM NELBO over ``num_t`` antithetic t per window, exact
    for AR; fp32, so ``zoo eval <model>.<tag>`` with the same settings reproduces it), ship it as
    ``<model>.<tag>``; returns the manifest record. Defaults are the recipes' (256-character windows, 32 t).
    The NELBO's t and masks come from a seeded generator of ``device``'s type, so a figure measured on the
    CPU (the default) is reproduced on a CPU, one measured on a GPU on a GPU."""
    from zoo.data.text import CharTokenizer, shakespeare_path
    from zoo.kinds.language_model import LM_KINDS, evaluate_language_model, load_language_model, parse_lm_name
    from zoo.vl.evaluate import export_metadata

    check_tag(tag, example="tinyshakespeare")
    export = Path(export)
    if not export.is_file():
        raise ConfigError(f"export {export} does not exist; publish the export.safetensors of a `zoo fit` run")
    meta = export_metadata(export)
    name = meta.get("model")
    if meta.get("kind") not in LM_KINDS or not name or not meta.get("tokenizer"):
        raise ConfigError(f"{export} is not a language-model export of zoo fit (kind {meta.get('kind')!r}, "
                          f"{'a' if meta.get('tokenizer') else 'no'} tokenizer); export one with "
                          f"zoo fit --config configs/tinyshakespeare_mdlm_attn.yaml")
    parse_lm_name(name)                                 # ConfigError for a name the registry cannot build
    tokenizer = json.loads(meta["tokenizer"])
    if tokenizer.get("type") != "char":
        raise ConfigError(f"{export} uses a {tokenizer.get('type')!r} tokenizer; only character-level language "
                          f"models are published as tags (their vocabulary travels in the manifest)")
    chars = "".join(CharTokenizer.from_json(meta["tokenizer"]).chars)
    text = shakespeare_path(data)
    measured: dict[str, Any] = {}

    def measure(shipped: Path) -> None:
        model = load_language_model(shipped, device)
        measured.update(evaluate_language_model(model, str(text), context, num_t, batch_size, max_windows=max_windows,
                                                seed=seed, amp=False))

    folder, file, sha256 = ship_file(export, name, tag, folder, quant=quant, check=measure)
    res = measured
    split = f"val, {'first ' if max_windows else ''}{res['windows']} windows of {context}"
    data_name = text.name.split(".")[0]
    dataset = f"{data_name} ({split}, {res['estimator']}, seed {seed})"
    again = f"zoo eval {name}.{tag}" + (f" --data {data}" if data else "") + (
        f" --num-t {num_t} --context {context} --batch-size {batch_size} --device {device}")
    again += f" --max-windows {max_windows}" if max_windows else ""
    record = {
        "file": file,
        "kind": meta["kind"],
        "sha256": sha256,
        "license": license,
        "num_classes": None,
        "label_names": [],
        "arch_overrides": {"chars": chars, **json.loads(meta.get("model_args") or "{}")},
        "preprocess": {"input_size": [context], "tokenizer": tokenizer},
        "metrics": {dataset: {"nats_per_char": round(res["nats_per_char"], 4),
                              "bits_per_char": round(res["bits_per_char"], 4)}},
        "eval": {"data": text.name, "context": context, "num_t": num_t, "batch_size": batch_size, "seed": seed,
                 "windows": res["windows"], "max_windows": max_windows, "chars_scored": res["chars_scored"],
                 "device": str(device)},
        "notes": f"trained with `zoo fit` ({_trained({**meta, 'epochs': None}, export)}, "
                 + (f"weights of the {meta['selected_by']}"
                    if meta.get("selected_by") else f"{meta.get('global_step', '?')} steps")
                 + f"); weights {license}, "
                 f"{LM_DATA_LICENSES.get(data_name, data_name + ' text: see its source')}; {storage(quant)} weights "
                 f"measured by `zoo publish` (fp32 compute) on {datetime.date.today().isoformat()}; reproduce: {again}",
    }
    return publish_record(name, tag, record, quant, folder)


def export_kind(export: str | os.PathLike) -> str:
    """The kind an export's metadata states (``image`` for classifier exports, which predate the field);
    ConfigError for a file that is not a safetensors export of zoo fit."""
    from zoo.vl.evaluate import export_metadata

    path = Path(export)
    if not path.is_file():
        raise ConfigError(f"export {path} does not exist; publish the export.safetensors of a `zoo fit` run")
    meta = export_metadata(path)
    if not meta.get("model"):
        raise ConfigError(f"{path} is not a zoo fit export (no model in its metadata); publish the "
                          f"export.safetensors that `zoo fit` writes at the end of a run")
    return meta.get("kind") or "image"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zoo publish", description=__doc__.split("\n\n")[0])
    p.add_argument("export", help="export.safetensors written by zoo fit")
    p.add_argument("--tag", required=True, help="tag name, e.g. cifar10, flickr8k, tinyshakespeare")
    p.add_argument("--data", default=None, help="evaluation data (path or named set): required for classifiers "
                                                "(cifar10 / fsdd); default flickr8k (vision-language, captioners; "
                                                "easy-vqa for a captioner trained on it), tinyshakespeare (language "
                                                "models)")
    p.add_argument("--split", default="test", help="classifiers: the split to measure")
    add_quant_arguments(p)
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--zero-shot", default="cifar10", help="vision-language: the zero-shot classification set")
    p.add_argument("--num-t", type=int, default=32, help="diffusion LMs: antithetic t per window (NELBO)")
    p.add_argument("--context", type=int, default=256, help="language models: window length")
    p.add_argument("--max-windows", type=int, default=None, help="language models: measure the first N windows")
    p.add_argument("--limit", type=int, default=None, help="captioners: measure the first N test images (easy-VQA: "
                                                           "and their questions)")
    args = p.parse_args(argv)

    def dispatch() -> dict[str, Any]:  # by the export's kind
        from zoo.kinds.language_model import LM_KINDS

        kind = export_kind(args.export)
        if kind in LM_KINDS:
            return publish_language_model(args.export, args.tag, args.data, args.license, device=args.device,
                                          quant=args.quant, context=args.context, num_t=args.num_t,
                                          max_windows=args.max_windows)
        from zoo.kinds.captioner import CAPTION_KINDS, publish_captioner
        if kind in CAPTION_KINDS:
            return publish_captioner(args.export, args.tag, args.data, args.license,  # its default: the export's
                                     device=args.device, quant=args.quant, limit=args.limit)
        if kind == "vision-language":
            from zoo.vl.publish import publish as publish_vl

            return publish_vl(args.export, args.tag, args.data or "flickr8k", args.zero_shot, args.license,
                              device=args.device, quant=args.quant)
        if not args.data:
            raise ConfigError(f"{args.export} is a {kind} classifier export: name its evaluation data with "
                              f"--data (a path, or cifar10 / fsdd)")
        return publish(args.export, args.tag, args.data, args.split, args.license, device=args.device,
                       quant=args.quant)

    return run_and_report(dispatch)


def run_and_report(publish_call) -> int:
    """Run a publisher; print the published record (exit 0) or the zoo error (exit 2): both publish commands."""
    try:
        rec = publish_call()
    except ZooError as e:
        print(f"error: {e}")
        return 2
    report(rec)
    return 0


def report(rec: dict[str, Any]) -> None:
    """What both publish commands print for a published record."""
    print(f"published {rec['model']}: {rec['file']} sha256 {rec['sha256']}")
    print(f"  metrics {rec['metrics']}")
