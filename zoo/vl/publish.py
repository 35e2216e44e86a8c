"""Ship a CLIP export as a pretrained tag: ``python -m zoo.vl.publish EXPORT --tag flickr8k``.

The vision-language publisher (``zoo publish`` dispatches a vision-language export here): it evaluates the
file as it ships (Flickr8k test retrieval, CIFAR-10 zero-shot: zoo.vl.evaluate; ``--quant int8`` / ``int4``: the quantized
weight-only copy, zoo.weights.quant), writes it to ``zoo/weights/<model>.<tag>.safetensors`` (within the
size budget of zoo.weights.manifest) and writes the tag into the manifest (zoo.weights.manifest) with
its sha256, kind ``vision-language``, preprocessing and metrics in percent. The file holds the image tower,
the projections and the temperature; the locked text tower is not copied: the record names it by Hub id and
the sha256 of the fp16 weights it was trained against (the zoo's data set ``minilm``), and loading fills it
in from there (zoo.vl.text.fill_text_tower). Then ``zoo.create_model('<model>.<tag>', pretrained=True)``
and ``zoo eval <model>.<tag> --data flickr8k`` work by name.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any, Optional

from zoo.errors import ConfigError


def publish(export: str | os.PathLike, tag: str, data: str = "flickr8k", zero_shot: str = "cifar10",
            license: str = "apache-2.0", folder: Optional[Path] = None, device: str = "cpu",
            subset: Optional[int] = None, quant: str | None = None) -> dict[str, Any]:
    """Evaluate the shipped copy of ``export`` (``quant``: its int8 / int4 copy), ship it as ``<model>.<tag>``;
    returns the manifest record. ``subset`` (quick checks only) measures the first N test images / N per
    class, and the metric names say so."""
    from zoo.vl.evaluate import export_metadata, run
    from zoo.vl.text import MINILM_FP16_SHA256, MINILM_HUB_ID
    from zoo.weights.manifest import check_tag, publish_record, ship_file
    from zoo.weights.quant import storage

    import json

    check_tag(tag, example="flickr8k")
    export = Path(export)
    meta = export_metadata(export)
    name = meta.get("model")
    if meta.get("kind") != "vision-language" or not name:
        raise ConfigError(f"{export} is not a vision-language export of zoo fit (kind {meta.get('kind')!r}); "
                          f"classifier exports go through `zoo publish`.")
    if meta.get("text_included") == "True":
        raise ConfigError(f"{export} carries its own (fine-tuned) text tower; only locked-text (LiT) exports, "
                          f"which reference the pretrained MiniLM, are shipped.")
    measured: list = []

    def measure(shipped):
        measured.extend(run(str(shipped), data=data, zero_shot=zero_shot, device=device, subset=subset))

    folder, file, sha256 = ship_file(export, name, tag, folder, quant=quant, check=measure)
    metrics = {}
    for r in measured:
        what = ("test retrieval" if r["task"] == "zeroshot_retrieval" else "test zero-shot")
        what += f", subset {subset}" if subset else ""
        metrics[f"{r['dataset']} ({what})"] = {k: round(100 * v, 2) for k, v in r["metrics"].items()}
    pre = json.loads(meta.get("preprocess") or "{}")
    record = {
        "file": file,
        "kind": "vision-language",
        "sha256": sha256,
        "license": license,
        "num_classes": None,
        "label_names": [],
        "arch_overrides": json.loads(meta.get("model_args") or "{}"),
        "preprocess": {k: pre[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k in pre},
        "metrics": metrics,
        "text_tower": {"hub_id": MINILM_HUB_ID, "sha256": meta.get("text_tower_sha256") or MINILM_FP16_SHA256,
                       "pooling": "mean", "dtype": "float16"},
        "notes": f"trained with `zoo fit` ({meta.get('recipe') or export.parent.name}, {meta.get('epochs')} epochs, "
                 f"{meta.get('loss', 'clip')} loss, text tower locked); {storage(quant)} weights measured by zoo publish "
                 f"on {datetime.date.today().isoformat()}",
    }
    return publish_record(name, tag, record, quant, folder)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.vl.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("export", help="export.safetensors written by zoo fit for a CLIP recipe")
    p.add_argument("--tag", required=True, help="tag name, e.g. flickr8k")
    p.add_argument("--data", default="flickr8k")
    p.add_argument("--zero-shot", default="cifar10")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--device", default="cpu")
    from zoo.weights.manifest import add_quant_arguments

    add_quant_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from zoo.publish import run_and_report

    return run_and_report(lambda: publish(args.export, args.tag, args.data, args.zero_shot, args.license,
                                          device=args.device, quant=args.quant))


if __name__ == "__main__":
    sys.exit(main())
