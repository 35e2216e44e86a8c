"""Sampling benchmark of the language models: tokens/s and sample quality for each diffusion sampler and for the
AR twin with its key/value cache, at batch 1 and 64, 256-character generations.

Quality of a sample set: its perplexity under the AR twin (``ar_ppl``: exp of the mean negative
log-likelihood of the generated characters given the prompt and the earlier ones; the judge is the AR export
passed with --ar) and its own likelihood (``own_nats``: the MDLM's NELBO of the whole window per character, or
the AR model's exact nats per generated character for AR samples). Every sampler runs at the same temperature
as AR sampling, so ``ar_ppl`` compares like for like. ``pareto`` marks the rows no other row beats on both
tokens/s and ar_ppl.

    python3 -m benchmarks.lm_sampling --mdlm runs/tinyshakespeare_mdlm_attn/export.safetensors \\
        --ar runs/tinyshakespeare_ar_attn/export.safetensors [--length 256 --batch-sizes 1,64 --temperature 1]

Results: benchmarks/results/lm_sampling.json and .md (``--name`` to change). CPU check at a tiny size:
``--length 16 --batch-sizes 1,2 --block 8 --repeats 1``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from heads.lm.diffusion import nelbo
from heads.lm.sampling import generate
from zoo.bench.results import write_results
from zoo.bench.timing import sync
from zoo.kinds.language_model import load_language_model


def sampler_grid(length: int, block: int, threshold: float, graphs: bool = False) -> list[tuple[str, dict]]:
    """(label, generate kwargs) of every diffusion configuration measured; ``graphs`` adds each one replayed from
    CUDA graphs (label ``+graphs``; with the prefix cache, one windowed graph per block)."""
    full, half, quarter = length, length // 2, length // 4
    grid = [
        ("low_confidence", dict(sampler="low_confidence", steps=full, block=block)),
        ("low_confidence", dict(sampler="low_confidence", steps=half, block=block)),
        ("low_confidence", dict(sampler="low_confidence", steps=quarter, block=block)),
        ("low_confidence+cache", dict(sampler="low_confidence", steps=full, block=block, cache=True)),
        ("low_confidence+cache", dict(sampler="low_confidence", steps=half, block=block, cache=True)),
        ("random", dict(sampler="random", steps=full, block=block)),
        ("threshold", dict(sampler="threshold", threshold=threshold, block=block)),
        ("threshold+cache", dict(sampler="threshold", threshold=threshold, block=block, cache=True)),
        ("ddpm", dict(sampler="ddpm", steps=full)),
        ("ddpm_cache", dict(sampler="ddpm_cache", steps=full)),
    ]
    if graphs:
        grid += [(label + "+graphs", dict(kw, graphs=True)) for label, kw in grid]
    return grid


@torch.no_grad()
def ar_nll(judge, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Per-sequence mean NLL (nats) of the generated positions under the AR ``judge``."""
    logits = judge(ids).float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    return nll[:, prompt_len - 1:].mean(1)


def timed(fn, device, repeats: int):
    """(result of the last run, median seconds) after one warm-up run."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return out, sorted(times)[len(times) // 2]


def pareto(rows: list[dict]) -> None:
    for r in rows:
        r["pareto"] = not any(o is not r and o["tok_per_s"] >= r["tok_per_s"] and o["ar_ppl"] <= r["ar_ppl"]
                              and (o["tok_per_s"] > r["tok_per_s"] or o["ar_ppl"] < r["ar_ppl"])
                              and o["batch"] == r["batch"] for o in rows)


def run(mdlm_paths: list[str], ar_path: str, length: int, batch_sizes: list[int], block: int, threshold: float,
        temperature: float, prompt: str, repeats: int, seed: int, num_t: int, device: torch.device,
        on_rows=None, graphs: bool = False) -> list[dict]:
    """Every row; ``on_rows(rows)`` after each one, so a run cut short by a time limit keeps what it measured."""
    judge = load_language_model(ar_path, device)
    if not judge.causal:
        raise SystemExit(f"--ar {ar_path} is not a causal-lm export")
    ids = judge.tokenizer.encode(prompt)
    amp = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    rows = []

    def record(model_name, label, kw, bs, out, seconds, stats, own):
        gen_ids = out.to(device)
        ppl = math.exp(float(ar_nll(judge, gen_ids, len(ids)).mean()))
        rows.append({"model": model_name, "sampler": label, "mode": "infer", "impl": "ours",
                     "dtype": "bf16" if device.type == "cuda" else "fp32", "shape": f"{bs}x{length}",
                     "batch": bs, "steps": stats.steps, "forwards": stats.forwards,
                     "cached_forwards": stats.cached_forwards, "ms": round(seconds * 1e3, 2),
                     "tok_per_s": round(bs * length / seconds, 1), "ar_ppl": round(ppl, 4),
                     "own_nats": round(own, 4), "temperature": temperature,
                     **{k: v for k, v in kw.items() if k in ("block", "threshold") and v is not None}})
        pareto(rows)
        if on_rows is not None:
            on_rows(rows)

    # the AR twin with its key/value cache and, with graphs, the graphable AR (full padded window, no cache)
    ar_variants = [("ar+kv_cache", dict(cache=True))] + ([("ar+graphs", dict(graphs=True))] if graphs else [])
    for bs in batch_sizes:
        for label, kw in ar_variants:
            with amp:
                (out, stats), sec = timed(lambda: generate(judge, ids, length, temperature=temperature, seed=seed,
                                                           batch_size=bs, return_stats=True, **kw), device, repeats)
                own = float(ar_nll(judge, out, len(ids)).mean())
            record(judge.pretrained_cfg.get("architecture", "ar"), label, {}, bs, out, sec, stats, own)
        for path in mdlm_paths:
            model = load_language_model(path, device)
            name = model.pretrained_cfg.get("architecture", Path(path).stem)
            for label, kw in sampler_grid(length, block, threshold, graphs):
                with amp:
                    (out, stats), sec = timed(lambda: generate(model, ids, length, temperature=temperature,
                                                               seed=seed, batch_size=bs, return_stats=True, **kw),
                                              device, repeats)
                    nats, tokens = nelbo(model, out, model.tokenizer.mask_id, num_t=num_t,
                                         generator=torch.Generator(device=device).manual_seed(seed))
                record(name, label + (f"@{kw['steps']}" if "steps" in kw else ""), kw, bs, out, sec, stats,
                       float(nats.sum() / tokens.sum()))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mdlm", nargs="+", required=True, help="MDLM export(s) (zoo fit export.safetensors)")
    p.add_argument("--ar", required=True, help="the AR twin's export: the baseline sampler and the judge")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--prompt", default="\n")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-t", type=int, default=8, help="antithetic t per sample for its own NELBO")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="also time every uncached sampler (and the AR twin on its full window) replayed from CUDA "
                        "graphs (default: on with CUDA)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="lm_sampling")
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = {"length": a.length, "prompt": a.prompt, "temperature": a.temperature}

    def save(rows):
        return write_results(a.name, rows, out_dir=a.out, extra_meta=meta)

    rows = run(a.mdlm, a.ar, a.length, [int(b) for b in a.batch_sizes.split(",")], a.block, a.threshold,
               a.temperature, a.prompt, a.repeats, a.seed, a.num_t, device, on_rows=save,
               graphs=device.type == "cuda" if a.graphs is None else a.graphs)
    path = save(rows)
    for r in rows:
        print(f"{r['model']:<18} {r['sampler']:<24} b={r['batch']:<3} {r['tok_per_s']:>10.1f} tok/s "
              f"ar_ppl {r['ar_ppl']:.3f} own {r['own_nats']:.3f}{'  *' if r['pareto'] else ''}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
