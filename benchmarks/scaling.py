"""Data-parallel scaling of a training recipe: DDP and FSDP at 1, 2, ..., N GPUs for a fixed budget.

    python -m benchmarks.scaling [--gpus N] [--strategies ddp,fsdp] [--config cifar10_vit_micro.yaml] [--epochs 3]
                      [--batch-size 512 | --global-batch 512] [--out-dir benchmarks/results]

Each cell is one ``zoo fit`` process (Lightning starts one more per extra device). By default the per-device
batch size is fixed, so the global batch grows with the GPU count and the recipe's ``lr_base_batch_size``
scales the learning rate with it (weak scaling: fewer, larger steps). ``--global-batch`` fixes the global
batch instead (per device = global / n): the same steps at the same learning rate at every n, so final
accuracy compares like for like (strong scaling). Throughput is the run's ``fit_summary.json`` figure:
training images/s over all devices with each epoch's first batch and validation left out. Efficiency =
img/s at n GPUs / (n × img/s at one GPU, same strategy). Final accuracy is the last validation top-1 (a
fixed epoch budget: the same number of images seen at every n). Rows go to ``benchmarks/results/scaling.{json,md}``.
``--accelerator cpu --gpus 2`` runs the same code with gloo processes (a check of the script, not a figure).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)


def fit_command(config: str, strategy: str, devices: int, epochs: int, batch_size: int, run_dir: Path,
                accelerator: str = "gpu", extra: Optional[list[str]] = None) -> list[str]:
    """The ``zoo fit`` command line of one cell: no intermediate checkpoints, no export."""
    return [sys.executable, "-m", "zoo.cli", "fit", "--config", config, "--trainer.accelerator", accelerator,
            "--trainer.strategy", strategy, "--trainer.devices", str(devices), "--trainer.max_epochs", str(epochs),
            "--data.batch_size", str(batch_size), "--trainer.default_root_dir", str(run_dir),
            "--checkpoint_every_n_steps", "0", "--export", "false", "--progress", "log", *(extra or [])]


def build_rows(cells: list[dict[str, Any]], model: str, img_size: Any) -> list[dict[str, Any]]:
    """Result rows from cells {strategy, gpus, per_device_batch, summary (fit_summary.json)}, with efficiency
    against the same strategy's one-GPU cell."""
    base = {c["strategy"]: c["summary"].get("img_per_s") for c in cells if c["gpus"] == 1}
    rows = []
    for c in sorted(cells, key=lambda c: (c["strategy"], c["gpus"])):
        s = c["summary"]
        rate = s.get("img_per_s")
        ref = base.get(c["strategy"])
        rows.append({
            "model": model, "img_size": img_size, "mode": "train", "impl": c["strategy"],
            "dtype": s.get("precision"), "gpus": c["gpus"], "strategy": c["strategy"],
            "per_device_batch": c["per_device_batch"], "global_batch": c["per_device_batch"] * c["gpus"],
            "img_per_s": rate,
            "efficiency": (rate / (c["gpus"] * ref)) if (rate and ref) else None,
            "final_top1": s.get("val_top1"), "epochs": s.get("epochs"), "steps": s.get("global_step"),
        })
    return rows


def _recipe_model(config: str) -> tuple[str, Any]:
    import yaml

    from zoo.recipes.config import resolve_config

    cfg = yaml.safe_load(resolve_config(config).read_text()) or {}
    model = (cfg.get("model") or {}).get("model", "?")
    return model, (cfg.get("model") or {}).get("img_size") or 32


def main(argv: Optional[list[str]] = None) -> int:
    import torch

    from zoo.bench.results import write_results
    from zoo.distributed import set_distributed_env

    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=torch.cuda.device_count(), help="largest device count (N)")
    p.add_argument("--counts", default=None, help="device counts to run, e.g. 1,2,4,8 (default 1..N)")
    p.add_argument("--strategies", default="ddp,fsdp")
    p.add_argument("--config", default="cifar10_vit_micro.yaml")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=512, help="per device")
    p.add_argument("--global-batch", type=int, default=None,
                   help="fix the global batch instead (per device = global / n; must divide)")
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--run-root", default="runs/scaling")
    p.add_argument("--out-dir", default=None, help="default benchmarks/results")
    p.add_argument("--name", default="scaling")
    p.add_argument("extra", nargs="*", help="further zoo fit overrides, after --")
    args = p.parse_args(argv)
    if args.gpus < 1:
        p.error("no GPU found; pass --gpus N (with --accelerator cpu to check the script on the CPU)")
    counts = [int(c) for c in args.counts.split(",")] if args.counts else list(range(1, args.gpus + 1))
    if args.global_batch is not None and any(args.global_batch % n for n in counts):
        p.error(f"--global-batch {args.global_batch} does not split evenly over {counts} devices")
    set_distributed_env()
    model, img_size = _recipe_model(args.config)
    cells = []
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        for n in counts:
            run_dir = Path(args.run_root) / f"{strategy}_{n}"
            per_device = args.global_batch // n if args.global_batch is not None else args.batch_size
            cmd = fit_command(args.config, strategy, n, args.epochs, per_device, run_dir, args.accelerator,
                              args.extra)
            log.info("%s on %d device(s): %s", strategy, n, " ".join(cmd))
            (run_dir / "fit_summary.json").unlink(missing_ok=True)
            proc = subprocess.run(cmd)
            summary_file = run_dir / "fit_summary.json"
            if proc.returncode != 0 or not summary_file.is_file():
                log.error("%s on %d device(s) failed (exit %d); row left out", strategy, n, proc.returncode)
                continue
            cells.append({"strategy": strategy, "gpus": n, "per_device_batch": per_device,
                          "summary": json.loads(summary_file.read_text())})
            log.info("%s x%d: %s", strategy, n, cells[-1]["summary"])
    rows = build_rows(cells, model, img_size)
    path = write_results(args.name, rows, command="python -m benchmarks.scaling " + " ".join(argv or sys.argv[1:]),
                         out_dir=args.out_dir, extra_meta={"gpus": args.gpus, "config": args.config,
                                                          "epochs": args.epochs,
                                                          "batch": (f"global {args.global_batch}" if args.global_batch
                                                                    else f"per device {args.batch_size}")})
    log.info("wrote %s", path)
    return 0 if len(cells) == len(counts) * len(args.strategies.split(",")) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
