"""The CIFAR-10 MoE table: one row per fit of benchmarks/train_moe_h200.sh (dense ViT, MoE variants, upcycled,
dense continued), with total and active parameters, active GMACs, training images/s (timed alone by zoo bench
throughput, and as measured in the side-by-side fit) and the final top-1 of the fit's validation split.

    python -m benchmarks.moe_cifar_table --runs runs/moe_h200 --recipes dense moe moe_ec ... --out out/moe

Reads ``<runs>/<recipe>/fit_summary.json``, ``<runs>/<recipe>/eval.csv`` (zoo eval of the export: the top-1
of the final weights; else the fit's last validation) and ``<runs>/throughput_<model>.json``; writes
``cifar10_moe.{json,md}`` in the results format (zoo.bench.results). The dense row is the reference of the
``top1_vs_dense`` and ``speed_vs_dense`` columns (the issue's target: +1 point at >= 0.8x its images/s).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

RECIPE_MODEL = {
    "dense": "vit_micro_patch4_32", "dense_continued": "vit_micro_patch4_32",
    "moe": "vit_micro_moe_patch4_32", "moe_ec": "vit_micro_moe_ec_patch4_32",
    "moe_soft": "vit_micro_moe_soft_patch4_32", "moe_ds": "vit_micro_moe_ds_patch4_32",
    "moe_upcycled": "vit_micro_moe_patch4_32",
}
"""Run label -> registered model (configs/cifar10_vit_micro[_<label>].yaml; dense_continued is the dense recipe
started from vit_micro_patch4_32.cifar10, the baseline of the upcycled run)."""

TOKENS = 65  # 8x8 patches + the class token at 32 px, patch 4


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _bench_img_per_s(doc: dict | None) -> tuple[float | None, float | None]:
    rows = [r for r in (doc or {}).get("rows", []) if r.get("mode") == "train" and "img_per_s" in r]
    return (rows[0]["img_per_s"], rows[0].get("gmacs")) if rows else (None, None)


def _eval_top1(path: Path) -> float | None:
    """top-1 of the last row of a zoo eval --csv file."""
    if not path.exists():
        return None
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return round(float(rows[-1]["top1"]), 2) if rows else None


def table(runs: Path, recipes: list[str]) -> list[dict]:
    """Rows for ``recipes`` (missing fits are rows with a note)."""
    from backbones.layers.moe import active_params
    from zoo import create_model

    rows = []
    for r in recipes:
        model_name = RECIPE_MODEL[r]
        model = create_model(model_name)
        summary = _read(runs / r / "fit_summary.json")
        alone, gmacs = _bench_img_per_s(_read(runs / f"throughput_{model_name}.json"))
        row = {"model": model_name, "recipe": r, "img_size": 32, "mode": "train", "impl": "ours", "dtype": "bf16",
               "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
               "active_params_m": round(active_params(model, TOKENS) / 1e6, 3), "active_gmacs": gmacs,
               "img_per_s": alone}
        if summary is None:
            row["note"] = "no fit_summary.json (the fit failed or was cut off; see its log)"
        else:
            top1 = summary.get("val_top1")
            row["dtype"] = "bf16" if "bf16" in str(summary.get("precision")) else "fp32"
            row.update(epochs=summary.get("epochs"),
                       steps=summary.get("global_step"), train_s=summary.get("train_seconds"),
                       img_per_s_side_by_side=round(summary["img_per_s"], 1) if summary.get("img_per_s") else None,
                       top1=round(100 * top1, 2) if top1 is not None else None, top1_of="last validation")
        test = _eval_top1(runs / r / "eval.csv")
        if test is not None:
            row.update(top1=test, top1_of="zoo eval of the export (final weights)")
        rows.append(row)
    ref = next((x for x in rows if x["recipe"] == "dense"), None)
    for x in rows:
        if ref and x is not ref and x.get("top1") is not None and ref.get("top1") is not None:
            x["top1_vs_dense"] = round(x["top1"] - ref["top1"], 2)
        if ref and x.get("img_per_s") and ref.get("img_per_s"):
            x["speed_vs_dense"] = round(x["img_per_s"] / ref["img_per_s"], 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="the folder with one run directory per recipe")
    p.add_argument("--recipes", nargs="+", required=True, choices=sorted(RECIPE_MODEL))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--note", default="", help="recorded in meta (budget, GPU minutes, validation split)")
    args = p.parse_args(argv)
    from zoo.bench.results import write_results

    rows = table(args.runs, args.recipes)
    path = write_results("cifar10_moe", rows, command=" ".join(sys.argv), out_dir=args.out,
                         extra_meta={"note": args.note} if args.note else None)
    for x in rows:
        print(f"{x['recipe']:16s} {x['model']:30s} params {x['params_m']:.2f}M active {x['active_params_m']:.2f}M "
              f"img/s {x.get('img_per_s')} top1 {x.get('top1')} {x.get('note', '')}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
