"""Expert-parallel scaling of the CIFAR-10 MoE recipe: the experts over 1, 2, ..., N GPUs (``--trainer.strategy
ep``), beside plain DDP (every GPU holds every expert), for a fixed epoch budget at a fixed global batch.

    python -m benchmarks.moe_ep_scaling [--counts 1,2,4] [--strategies ep,ddp] [--epochs 5] [--global-batch 512]
                                        [--out-dir benchmarks/results] [-- more zoo fit overrides]

Each cell is one ``zoo fit`` (benchmarks.scaling's command line, plus a callback that records each rank's peak
GPU memory). Columns: GPUs, experts per GPU, training images/s over all GPUs (fit_summary.json: first batches
and validation left out), efficiency (img/s at n / (n x img/s at 1 GPU, same strategy)), peak memory per GPU
(the largest rank's ``torch.cuda.max_memory_allocated``), final top-1 (last validation) and its difference from
the one-GPU run. A fixed global batch keeps steps and learning rate equal at every n, so accuracy compares
like for like. Rows go to ``<out-dir>/moe_ep_scaling.{json,md}``. ``--accelerator cpu --counts 1,2`` checks the
script with gloo processes (not a figure). benchmarks/train_moe_ep.sh is the one-command launcher.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback

from benchmarks.scaling import _recipe_model, build_rows, fit_command

log = logging.getLogger(__name__)

CONFIG = "cifar10_vit_micro_moe.yaml"


class PeakMemory(Callback):
    """Writes this rank's peak GPU memory of the fit to <run dir>/peak_rank<r>.json (null on the CPU)."""

    def on_fit_start(self, trainer, pl_module):
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_fit_end(self, trainer, pl_module):
        import torch

        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None
        (Path(trainer.default_root_dir) / f"peak_rank{trainer.global_rank}.json").write_text(json.dumps(peak))


def peak_gib(run_dir: Path, devices: int) -> Optional[float]:
    """The largest rank's peak memory (GiB) of a cell, None when not recorded (CPU, failed rank)."""
    peaks = []
    for r in range(devices):
        f = run_dir / f"peak_rank{r}.json"
        v = json.loads(f.read_text()) if f.is_file() else None
        if v is None:
            return None
        peaks.append(v)
    return round(max(peaks), 3)


def num_experts(config: str) -> int:
    """Experts per MoE layer of the recipe's model."""
    from zoo import create_model

    model, _ = _recipe_model(config)
    from backbones.layers.moe import MoEMlp

    layers = [m for m in create_model(model).modules() if isinstance(m, MoEMlp)]
    if not layers:
        raise SystemExit(f"{config}: {model} has no MoE layer; expert parallelism needs an MoE recipe")
    return layers[0].num_experts


def ep_rows(cells: list[dict[str, Any]], model: str, img_size: Any, experts: int) -> list[dict[str, Any]]:
    """benchmarks.scaling's rows (efficiency against the same strategy at one GPU) with experts per GPU, peak
    memory per GPU and the top-1 difference from the one-GPU run of the same strategy."""
    rows = build_rows(cells, model, img_size)
    peaks = {(c["strategy"], c["gpus"]): c.get("peak_gib") for c in cells}
    base = {r["strategy"]: r["final_top1"] for r in rows if r["gpus"] == 1}
    for r in rows:
        r["experts_per_gpu"] = experts // r["gpus"] if r["strategy"] == "ep" else experts
        r["peak_gib"] = peaks.get((r["strategy"], r["gpus"]))
        ref = base.get(r["strategy"])
        r["top1_vs_1gpu"] = (round(r["final_top1"] - ref, 4) if r["final_top1"] is not None and ref is not None
                             else None)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    from zoo.bench.results import write_results
    from zoo.distributed import set_distributed_env

    p = argparse.ArgumentParser(prog="python -m benchmarks.moe_ep_scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default=None, help="GPU counts, e.g. 1,2,4,8 (default 1, 2, 4, ... up to all)")
    p.add_argument("--strategies", default="ep,ddp", help="ep (experts sharded) and/or ddp (experts replicated)")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--global-batch", type=int, default=512, help="split evenly over the GPUs of a cell")
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--run-root", default="runs/moe_ep_scaling")
    p.add_argument("--out-dir", default=None, help="default benchmarks/results")
    p.add_argument("--name", default="moe_ep_scaling")
    p.add_argument("extra", nargs="*", help="further zoo fit overrides, after --")
    args = p.parse_args(argv)
    gpus = torch.cuda.device_count() if args.accelerator == "gpu" else 2
    counts = ([int(c) for c in args.counts.split(",")] if args.counts
              else [n for n in (1, 2, 4, 8, 16) if n <= gpus])
    if not counts:
        p.error("no GPU found; pass --accelerator cpu --counts 1,2 to check the script on the CPU")
    experts = num_experts(args.config)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [n for n in counts if args.global_batch % n or ("ep" in strategies and experts % n)]
    if bad:
        p.error(f"device counts {bad} must divide --global-batch {args.global_batch} and the {experts} experts")
    set_distributed_env()
    model, img_size = _recipe_model(args.config)
    cells = []
    for strategy in strategies:
        for n in counts:
            run_dir = Path(args.run_root) / f"{strategy}_{n}"
            per_device = args.global_batch // n
            cmd = fit_command(args.config, strategy, n, args.epochs, per_device, run_dir, args.accelerator,
                              ["--trainer.callbacks", "benchmarks.moe_ep_scaling.PeakMemory", *args.extra])
            log.info("%s on %d device(s): %s", strategy, n, " ".join(cmd))
            for f in [run_dir / "fit_summary.json", *run_dir.glob("peak_rank*.json")]:
                f.unlink(missing_ok=True)
            proc = subprocess.run(cmd)
            summary_file = run_dir / "fit_summary.json"
            if proc.returncode != 0 or not summary_file.is_file():
                log.error("%s on %d device(s) failed (exit %d); row left out", strategy, n, proc.returncode)
                continue
            cells.append({"strategy": strategy, "gpus": n, "per_device_batch": per_device,
                          "summary": json.loads(summary_file.read_text()), "peak_gib": peak_gib(run_dir, n)})
            log.info("%s x%d: %s", strategy, n, cells[-1])
    rows = ep_rows(cells, model, img_size, experts)
    command = "python -m benchmarks.moe_ep_scaling " + " ".join(argv or sys.argv[1:])
    path = write_results(args.name, rows, command=command, out_dir=args.out_dir, extra_meta={"config": args.config, "epochs": args.epochs, "global_batch": args.global_batch,
                                     "experts": experts})
    log.info("wrote %s", path)
    return 0 if len(cells) == len(counts) * len(strategies) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
