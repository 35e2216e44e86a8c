"""The CIFAR-10 hybrid comparison table: top-1 of each fit beside its speed and memory measured alone.

    python -m benchmarks.hybrid_cifar10 --runs runs --eval-csv out/hybrid/eval.csv --speed out/hybrid/hybrid_speed.json
                                        [--models softmax,mamba,...] [--out benchmarks/results]

benchmarks/train_hybrid_h200.sh trains the models of ``configs/cifar10_hybrid_<infix>.yaml`` side by side on one
GPU (same recipe and time budget), evaluates each export with ``zoo eval`` (top-1 on the 10,000 test images)
and times each model alone with ``zoo bench throughput`` (concurrent fits distort speed). This script joins
the three: per model a ``train`` row (top-1, epochs and steps reached within the budget, the training img/s
and peak memory of the lone benchmark, and the fit's own img/s, which shared the GPU) and an ``infer`` row
(img/s, peak memory), written as ``hybrid_cifar10.{json,md}`` in the results format. The Markdown ends with
the reading the issue asks for: does a hybrid beat both of its pure parents (the uniform models of the mixers
it contains) on top-1 at equal speed (training img/s at least 0.9x the slower parent's)?
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from backbones.layers.hybrid import format_layout
from zoo.bench.results import write_results

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = ("softmax", "mamba", "gla", "gla3softmax1", "mamba6softmax6", "hybrid")
"""Infixes of configs/cifar10_hybrid_<infix>.yaml, in table order: the pure models first."""
SPEED_TOLERANCE = 0.9
"""'Equal speed': a hybrid's training img/s at least this share of its slower parent's."""


def config_model(infix: str) -> str:
    """The registered model a comparison config trains (its ``model.model``)."""
    path = CONFIGS / f"cifar10_hybrid_{infix}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("cifar10_hybrid_") for p in CONFIGS.glob("cifar10_hybrid_*.yaml"))
        raise SystemExit(f"error: no config {path.name}; known models: {','.join(known)}")
    return yaml.safe_load(path.read_text())["model"]["model"]


def model_layout(name: str) -> tuple[list[str], int]:
    """Per-block mixers and parameter count of a registered model (built on the CPU, random weights)."""
    import zoo

    model = zoo.create_model(name)
    blocks = [f"hybrid({b.attn.ssm_kind})" if kind == "hybrid" else kind  # name the intra-layer SSM
              for kind, b in zip(model.backbone.layout, model.backbone.blocks)]
    return blocks, sum(p.numel() for p in model.parameters())


def _parents(blocks: list[str]) -> set[str]:
    """The pure mixers a layout is made of (an intra-layer hybrid counts for softmax and its SSM)."""
    out: set[str] = set()
    for b in blocks:
        out |= {"softmax", b[len("hybrid("):-1]} if b.startswith("hybrid(") else {b}
    return out


def read_eval(path: Path) -> dict[str, float]:
    """model -> top-1 (%) from a zoo eval CSV (the last row of a model wins)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {r["model"]: float(r["top1"]) for r in csv.DictReader(f) if r.get("top1")}


def read_speed(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, mode) -> the zoo bench throughput row."""
    if not path.is_file():
        return {}
    return {(r["model"], r["mode"]): r for r in json.loads(path.read_text())["rows"]}


def build_rows(infixes: list[str], runs: Path, top1: dict[str, float],
               speed: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for infix in infixes:
        name = config_model(infix)
        blocks, params = model_layout(name)
        summary_path = runs / f"cifar10_hybrid_{infix}" / "fit_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        base = {"model": name, "layout": format_layout(blocks), "img_size": 32, "impl": "ours",
                "params_m": round(params / 1e6, 3)}
        for mode in ("train", "infer"):
            bench = speed.get((name, mode), {})
            row = {**base, "mode": mode, "dtype": bench.get("dtype", "bf16"), "batch": bench.get("batch")}
            if mode == "train":
                row.update(top1=top1.get(name), epochs=summary.get("epochs"), steps=summary.get("global_step"),
                           fit_img_per_s=round(summary["img_per_s"], 1) if summary.get("img_per_s") else None)
            row.update(img_per_s=bench.get("img_per_s"), peak_gib=bench.get("peak_gib"))
            if "note" in bench:
                row["note"] = bench["note"]
            rows.append(row)
    return rows


def reading(rows: list[dict[str, Any]]) -> list[str]:
    """Per hybrid: top-1 and training speed against each pure parent, and the verdict."""
    train = {r["layout"]: r for r in rows if r["mode"] == "train"}
    pure = {r["layout"]: r for r in train.values() if "," not in r["layout"] and "*" not in r["layout"]
            and not r["layout"].startswith("hybrid")}
    lines = ["", "## Reading", "",
             f"A hybrid 'beats both pure models' when its top-1 exceeds each pure parent's (the uniform models "
             f"of the mixers in its layout), 'at equal speed' when its training img/s (measured alone) is at "
             f"least {SPEED_TOLERANCE}x the slower parent's.", ""]
    verdicts = []
    for layout, r in train.items():
        if layout in pure:
            continue
        blocks = layout.split(",")
        parents = [pure.get(p) for p in sorted(_parents([b.split("*")[0] for b in blocks]))]
        if any(p is None for p in parents) or r.get("top1") is None or any(p.get("top1") is None for p in parents):
            lines.append(f"- {r['model']} ({layout}): a parent or its top-1 is missing; no verdict.")
            continue
        beats = all(r["top1"] > p["top1"] for p in parents)
        speeds = [p.get("img_per_s") for p in parents]
        equal = (r.get("img_per_s") is not None and all(speeds)
                 and r["img_per_s"] >= SPEED_TOLERANCE * min(speeds))
        vs = ", ".join(f"{p['layout']} {p['top1']:.2f}%" + (f" / {p['img_per_s']:.0f} img/s" if p.get("img_per_s") else "")
                       for p in parents)
        mine = f"{r['top1']:.2f}%" + (f" / {r['img_per_s']:.0f} img/s" if r.get("img_per_s") else "")
        verdict = "beats both" if beats else "does not beat both"
        verdict += (" at equal speed" if equal else " (slower)" if r.get("img_per_s") and all(speeds) else
                    " (speed not measured)")
        verdicts.append(beats and equal)
        lines.append(f"- {r['model']} ({layout}): {mine} vs {vs}: {verdict}.")
    if verdicts:
        lines += ["", f"Answer: {'yes' if any(verdicts) else 'no'}, "
                      f"{sum(verdicts)} of {len(verdicts)} hybrids beat both pure parents on top-1 at equal speed."]
    else:
        lines += ["", "Answer: none; no hybrid has its pure parents' figures in this table."]
    lines += ["", "fit_img_per_s is the fits' own rate while all shared the GPU; img_per_s and peak_gib come from "
                  "zoo bench throughput with each model alone."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hybrid_cifar10", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs", help="folder holding the runs cifar10_hybrid_<infix>/")
    p.add_argument("--eval-csv", required=True, help="zoo eval CSV of the exports (top-1 on the test set)")
    p.add_argument("--speed", required=True, help="zoo bench throughput --out JSON of the same models")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated infixes (default {','.join(MODELS)})")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="hybrid_cifar10")
    args = p.parse_args(argv)
    infixes = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = build_rows(infixes, Path(args.runs), read_eval(Path(args.eval_csv)), read_speed(Path(args.speed)))
    path = write_results(args.name, rows, command="python -m benchmarks.hybrid_cifar10 " + " ".join(argv or sys.argv[1:]),
                         out_dir=args.out)
    md = path.with_suffix(".md")
    md.write_text(md.read_text() + "\n".join(reading(rows)) + "\n")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
