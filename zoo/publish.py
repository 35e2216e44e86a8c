"""``zoo publish``: turn a ``zoo fit`` export into a pretrained tag shipped with the package.

    zoo publish runs/cifar10_vim_micro/export.safetensors --tag cifar10 --data cifar10 [--split test]

It evaluates the export on the given split with ``zoo.evaluate`` (the figure the tag records), copies the
fp16 file to ``zoo/weights/<model>.<tag>.safetensors``, and writes the tag into ``zoo/weights/manifest.json``
with its sha256, architecture overrides, preprocessing (image config or the audio front end), class names
and metrics. The registry reads the manifest at import, so ``create_model('<model>.<tag>', pretrained=True)``
then loads it by name.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, ZooError
from zoo.weights.manifest import check_tag, read_manifest, ship_file, tags_from_manifest, write_record  # noqa: F401  (the manifest's home)

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 * 1024 * 1024  # every tracked file travels to the GPU machine with each run


def publish(export: str | os.PathLike, tag: str, data: str, split: str = "test", license: str = "apache-2.0",
            folder: Path | None = None, batch_size: int = 500, device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``export`` on ``data``/``split``, ship it as ``<model>.<tag>``; returns the manifest record."""
    from torch.utils.data import DataLoader

    from zoo.evaluate import build_dataset, build_model, check_classes, evaluate, export_info, resolve_data

    check_tag(tag, example="cifar10")
    export = Path(export)
    info = export_info(export)                 # metadata only: build_model reads the weights once
    name = info.get("model")
    if not name:
        raise ConfigError(f"{export} is not a zoo fit export (no model in its metadata); publish the "
                          f"export.safetensors that `zoo fit` writes at the end of a run")
    size = export.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{export} is {size / 2**20:.1f} MiB; shipped weights must stay under "
                          f"{MAX_FILE_BYTES / 2**20:.0f} MiB (choose a smaller config)")
    trained = info.get("recipe") or export.parent.name
    trained += f", {info['epochs']} epochs" if info.get("epochs") else ""
    trained += f", starting from {info['init']}" if info.get("init") else ""
    model, info = build_model(name, str(export))
    path = resolve_data(data)
    ds, data_cfg = build_dataset(model, info, path, split, None)
    check_classes(name, model, ds)
    result = evaluate(model, DataLoader(ds, batch_size=batch_size, shuffle=False), device)
    metrics = {k: round(float(result[k]), 2) for k in ("top1", "top5", "mean_per_class_top1") if k in result}
    dataset = f"{path.name.split('.')[0]} ({split}, {result['num_samples']} samples)"

    folder, file, sha256 = ship_file(export, name, tag, folder)
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
        "notes": f"trained with `zoo fit` ({trained}); measured by `zoo publish` on "
                 f"{datetime.date.today().isoformat()}",
    }
    write_record(name, tag, record, folder)
    return {"model": f"{name}.{tag}", **record}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="zoo publish", description=__doc__.split("\n\n")[0])
    p.add_argument("export", help="export.safetensors written by zoo fit")
    p.add_argument("--tag", required=True, help="tag name, e.g. cifar10")
    p.add_argument("--data", required=True, help="evaluation data (path, or cifar10 / fsdd)")
    p.add_argument("--split", default="test")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        rec = publish(args.export, args.tag, args.data, args.split, args.license, device=args.device)
    except ZooError as e:
        print(f"error: {e}")
        return 2
    print(f"published {rec['model']}: {rec['file']} sha256 {rec['sha256']}")
    print(f"  metrics {rec['metrics']}")
    return 0
