"""The captioning table: the diffusion captioner against its AR twin on Flickr8k's 1,000 test images.

Each export captions every test image once per sampler setting (batch ``--batch-size``, bf16 autocast on a GPU,
the image prefix computed once per batch and cached); BLEU-1..4 and CIDEr-D against the 5 references
(zoo.vl.caption_metrics, pycocoevalcap's numbers), decoding tokens/s (caption pieces written up to and with the
end token, over the generation's wall time) and milliseconds per image at that batch. The diffusion rows add
their CIDEr as a share of the AR twin's and their speed-up in images/s over it (the issue's targets: >= 0.9x the
CIDEr at >= 2x the speed).

    python -m benchmarks.caption --mdlm runs/caption_h200/mdlm/export.safetensors \\
        --ar runs/caption_h200/ar/export.safetensors [--limit 8 --device cpu]   # ZOO_DATA: the eval zip
Writes benchmarks/results/caption.{json,md} (``--out-dir`` elsewhere).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from zoo.bench.results import write_results
from zoo.kinds.captioner import evaluate_captioner, load_captioner


def export_meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def diffusion_settings(length: int = 32) -> list[dict]:
    """LLaDA's low-confidence remasking at 1, 2 and 4 tokens a step (one block, then semi-AR blocks of 8), and
    Fast-dLLM's threshold decoder on blocks of 8."""
    return [dict(steps=length, block=length), dict(steps=length // 2, block=length),
            dict(steps=length // 4, block=8), dict(threshold=0.9, block=8, steps=length // 8)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.caption", description=__doc__.split("\n\n")[0])
    p.add_argument("--mdlm", required=True, nargs="+", help="exports of the diffusion captioner (e.g. with and "
                   "without complementary masking)")
    p.add_argument("--ar", required=True, help="export of its AR twin")
    p.add_argument("--data", default="flickr8k")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (checks)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--name", default="caption")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    ar = load_captioner(a.ar, a.device)
    (ar_row,) = evaluate_captioner(ar, a.data, a.split, a.limit, a.batch_size, [{}])
    rows.append({**ar_row, "setting": "ar greedy, kv cache", "cider_vs_ar": 1.0, "speedup_vs_ar": 1.0})
    rows[0]["masking"] = "-"
    for path in a.mdlm:
        mdlm = load_captioner(path, a.device)
        masking = "complementary" if export_meta(path).get("complementary") == "True" else "answer-only"
        for row in evaluate_captioner(mdlm, a.data, a.split, a.limit, a.batch_size,
                                      diffusion_settings(mdlm.answer_length)):
            how = (f"threshold {row['threshold']}, block {row['block']}" if row.get("threshold") is not None
                   else f"{row['steps']} steps, block {row['block']}")
            row.update(setting=how, masking=masking, cider_vs_ar=row["cider"] / max(ar_row["cider"], 1e-9),
                       speedup_vs_ar=ar_row["ms_per_image"] / max(row["ms_per_image"], 1e-9))
            rows.append(row)
    cols = ("model", "kind", "masking", "setting", "bleu1", "bleu4", "cider", "tokens_per_s", "ms_per_image", "cider_vs_ar",
            "speedup_vs_ar", "images", "batch_size", "bleu2", "bleu3", "seconds", "examples")
    table = [{k: r[k] for k in cols if k in r} for r in rows]
    for r in table:
        r["mode"], r["impl"], r["img_size"] = "infer", "ours", 128
        r["dtype"] = "bf16" if a.device.startswith("cuda") else "fp32"
        r["examples"] = " / ".join(r.get("examples", []))
    path = write_results(a.name, table, out_dir=a.out_dir,
                         extra_meta={"mdlm": " ".join(a.mdlm), "ar": a.ar, "split": a.split, "wall_s": round(time.perf_counter() - t0, 1)})
    print(json.dumps([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "examples"}
                      for r in table], indent=1))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
