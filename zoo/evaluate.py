"""``zoo eval``: accuracy, loss and throughput of registered models on image or audio data.

    zoo eval MODEL[.tag] [MODEL2 ...] --data PATH_OR_NAME [--split test] [--batch-size 256] [--device cuda]
             [--csv results.csv] [--checkpoint PATH] [--subset N] [--workers N]

Each model is built by ``zoo.create_model`` (``pretrained=True`` when a tag is given; ``--checkpoint`` loads a
file instead: a ``zoo fit`` export, whose metadata also rebuilds the architecture and its preprocessing, a
Lightning ``.ckpt`` of a recipe, or any weight file). Preprocessing follows the model's pretrained_cfg: timm's
eval transform for images, the Kaldi fbank front end of ``pretrained_cfg['audio']`` for audio. Rows are
appended to a CSV in timm's ``validate.py`` columns plus ``dataset`` and ``split``.

Several processes split the evaluation set and add up their counts, so the figures equal one process's
(every sample counted once: rank r takes samples r, r + N, ...; no padding, since evaluation needs no
collective per batch and ranks may hold one sample more or less):

    zoo eval MODEL --data cifar10 --nproc 4                      # starts 4 local processes itself
    torchrun --nproc-per-node 4 -m zoo.cli eval MODEL --data cifar10

Each rank uses ``cuda:LOCAL_RANK`` (NCCL) on GPUs, gloo on the CPU; rank 0's weights are broadcast to the
others and rank 0 alone prints and writes the CSV.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from zoo.data import catalog
from zoo.data.sources import SkipUnreadable, collate_skipping
from zoo.distributed import all_reduce_values, broadcast, init_process_group, launch, shard, world
from zoo.errors import ConfigError, DataError, WeightLoadError

log = logging.getLogger(__name__)

CSV_COLUMNS = ["model", "img_size", "top1", "top1_err", "top5", "top5_err", "param_count", "crop_pct",
               "interpolation", "dataset", "split"]


# ------------------------------------------------------------------------------------------ core
@torch.no_grad()
def evaluate(model: nn.Module, dataloader, device: str | torch.device = "cpu", amp: bool = False,
             num_classes: Optional[int] = None, max_bad_fraction: float = 0.01) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%), mean cross-entropy, per-class accuracy (%) and samples/s of ``model``.

    ``dataloader`` yields (inputs, labels); the model is moved to ``device`` and put in eval mode. Inside a
    process group each rank passes its shard and all ranks get the totals (integer counts, so accuracies
    equal one process's exactly; the loss sum may differ in the last bits from the summation order).
    A loader over :class:`~zoo.data.sources.SkipUnreadable` with ``collate_skipping`` yields (inputs, labels,
    unreadable names): the metrics cover the readable files, ``skipped`` counts the others (one warning line),
    and more than ``max_bad_fraction`` of them raises :class:`DataError`.
    """
    from zoo.data.sources import UnreadableTally, worker_errors_in_one_line

    device = torch.device(device)
    model = model.to(device).eval()
    n_cls = num_classes or getattr(model, "num_classes", None)
    correct1 = correct5 = 0
    total = 0
    loss_sum = 0.0
    per_class_correct: dict[int, int] = {}
    per_class_total: dict[int, int] = {}
    use_amp = amp and device.type == "cuda"
    t_model = 0.0
    ds = getattr(dataloader, "dataset", None)
    # files dropped when the data set was opened are every rank's: rank 0 alone counts them
    tally = (UnreadableTally.for_dataset(ds, max_bad_fraction, count_opened=world()[0] == 0) if ds is not None
             else UnreadableTally(0, 1.0))
    for batch in worker_errors_in_one_line(dataloader):
        batch = tally.take(batch)
        if batch is None:  # every sample of this batch was unreadable
            continue
        x, y = batch
        x = x.to(device, non_blocking=True)
        y = torch.as_tensor(y).to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_model += time.perf_counter() - t0
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        hit1 = topk[:, 0] == y
        correct1 += int(hit1.sum())
        correct5 += int((topk == y[:, None]).any(-1).sum())
        total += y.numel()
        for cls, h in zip(y.tolist(), hit1.tolist()):
            per_class_total[cls] = per_class_total.get(cls, 0) + 1
            per_class_correct[cls] = per_class_correct.get(cls, 0) + int(h)
    if world()[1] > 1:
        n = max([int(n_cls or 0)] + [c + 1 for c in per_class_total])
        n = int(all_reduce_values([float(n)], dist.ReduceOp.MAX)[0])
        counts = [float(correct1), float(correct5), float(total), loss_sum, float(len(tally.names)),
                  float(tally.total)]
        counts += [float(per_class_total.get(c, 0)) for c in range(n)]
        counts += [float(per_class_correct.get(c, 0)) for c in range(n)]
        counts = all_reduce_values(counts)
        correct1, correct5, total, loss_sum = int(counts[0]), int(counts[1]), int(counts[2]), counts[3]
        skipped, files = int(counts[4]), int(counts[5])
        per_class_total = {c: int(counts[6 + c]) for c in range(n) if counts[6 + c] > 0}
        per_class_correct = {c: int(counts[6 + n + c]) for c in per_class_total}
        t_model = all_reduce_values([t_model], dist.ReduceOp.MAX)[0]  # ranks run side by side
    else:
        skipped, files = len(tally.names), tally.total
    if skipped and world()[0] == 0:
        tally.summary(count=skipped, total=files)
    if total == 0:
        raise DataError("The evaluation data is empty" + (f": all {skipped} files were unreadable." if skipped else "."))
    per_class = {c: 100.0 * per_class_correct[c] / per_class_total[c] for c in sorted(per_class_total)}
    out = {
        "top1": 100.0 * correct1 / total,
        "loss": loss_sum / total,
        "num_samples": total,
        "samples_per_sec": total / max(t_model, 1e-9),
        "per_class_top1": per_class,
        "mean_per_class_top1": sum(per_class.values()) / len(per_class),
        "param_count": sum(p.numel() for p in model.parameters()),
        "skipped": skipped,
        "skipped_files": list(tally.names),  # this rank's
    }
    if (n_cls or 0) >= 5:
        out["top5"] = 100.0 * correct5 / total
    return out


# ------------------------------------------------------------------------------------------ models
def export_info(path: str | os.PathLike) -> dict[str, Any]:
    """Build info from a ``zoo fit`` export's metadata alone (no tensors read); ``{}`` for other files."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightLoadError(f"checkpoint {p} does not exist")
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if not meta.get("format", "").startswith("speedzoo-export"):
        return {}
    return {"model": meta.get("model"), "num_classes": int(meta["num_classes"]),
            "in_chans": int(meta["in_chans"]) if meta.get("in_chans", "None") != "None" else None,
            "img_size": tuple(json.loads(meta.get("img_size", "[]"))) or None,
            "model_args": json.loads(meta.get("model_args", "{}")),
            "preprocess": json.loads(meta.get("preprocess", "{}")),
            "class_names": json.loads(meta.get("class_names", "[]")),
            "recipe": meta.get("recipe"), "epochs": meta.get("epochs"), "init": meta.get("init")}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, build info) of a zoo export (.safetensors with metadata), a recipe's Lightning .ckpt or
    any weight file. Build info may hold model, num_classes, in_chans, img_size, model_args, preprocess."""
    from zoo.hub import check_finite, load_torch_file, read_state_dict

    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightLoadError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        state = read_state_dict(p)
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, export_info(p)
    info: dict[str, Any] = {}
    if p.suffix == ".ckpt":
        ckpt = load_torch_file(p)
        if not isinstance(ckpt, dict):
            raise WeightLoadError(f"{p} is not a Lightning checkpoint (it holds a {type(ckpt).__name__}); pass a "
                                  f"recipe's .ckpt, a zoo fit export or a weight file.")
        hp = ckpt.get("hyper_parameters", {}) or {}
        info = {k: hp.get(k) for k in ("model", "num_classes", "in_chans", "img_size", "model_args")}
        ema = ckpt.get("zoo_ema")
        state = ema if ema is not None else {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items()
                                             if k.startswith("model.")}
        if not state:
            raise WeightLoadError(f"{p} holds no 'model.*' weights; is it a zoo recipe checkpoint?")
        check_finite(p, state)
        return state, info
    return read_state_dict(p), info


def build_model(name: str, checkpoint: Optional[str] = None, model_args: Optional[dict] = None,
                num_classes: Optional[int] = None) -> tuple[nn.Module, dict[str, Any]]:
    """A model in eval mode plus build info (see read_checkpoint)."""
    import zoo
    from zoo.factory import load_weights
    from zoo.registry import get_entry, split_name

    base, tag = split_name(name)
    info: dict[str, Any] = {}
    state = None
    if checkpoint:
        state, info = read_checkpoint(checkpoint)
        if info.get("model") and split_name(info["model"])[0] != base:
            log.warning("checkpoint %s was trained as %s; building %s as asked", checkpoint, info["model"], base)
    kwargs = dict(info.get("model_args") or {})
    kwargs.update(model_args or {})
    nc = num_classes or info.get("num_classes")
    model = zoo.create_model(name, pretrained=bool(tag) and state is None, num_classes=nc,
                             in_chans=info.get("in_chans"), img_size=info.get("img_size"), **kwargs)
    if state is not None:
        entry = get_entry(base)
        load_weights(model, state, entry.converter, source=str(checkpoint))
    return model.eval(), info


# ------------------------------------------------------------------------------------------ data
def resolve_data(data: str) -> Path:
    """A path (relative to the cwd) or a data set name under $ZOO_DATA (zoo.data.catalog: cifar10, fsdd, ...)."""
    return catalog.resolve_path(data, "--data")


def is_audio_model(model: nn.Module, info: dict) -> bool:
    pre = info.get("preprocess") or {}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return bool(cfg.get("audio")) or pre.get("type") == "kaldi_fbank" or cfg.get("kind") == "audio"


def build_dataset(model: nn.Module, info: dict, path: Path, split: str, subset: Optional[int]) -> tuple[Dataset, dict]:
    """The eval data set with the model's preprocessing, and that preprocessing's config."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    pre = dict(info.get("preprocess") or {})
    if is_audio_model(model, info):
        from zoo.data.audio import FbankFrontEnd, open_audio_dataset

        fe_cfg = pre if pre.get("type") == "kaldi_fbank" else cfg.get("audio")
        fe = FbankFrontEnd.from_config(fe_cfg)
        ds = open_audio_dataset(path, split, front_end=fe, training=False, subset=subset, subset_seed=0)
        return ds, {"input_size": (1, fe.num_mel_bins, fe.target_length), "crop_pct": "", "interpolation": ""}
    from zoo.data.images import build_image_transform, open_image_dataset, resolve_image_data_config

    if pre.get("input_size"):  # a zoo export: the preprocessing it was trained with
        cfg.update({k: v for k, v in pre.items() if v is not None})
    data_cfg = resolve_image_data_config(cfg)
    chans = data_cfg["input_size"][0]
    tf = build_image_transform(data_cfg, is_training=False, style="timm")
    try:
        ds = open_image_dataset(path, split, transform=tf, subset=subset, subset_seed=0, to_rgb=chans == 3)
    except DataError as e:
        raise DataError(f"{e} (model {cfg.get('architecture', '?')} takes images; for audio data evaluate an audio "
                        f"model or a zoo fit export of one)") from None
    return ds, data_cfg


def check_classes(name: str, model: nn.Module, ds: Dataset) -> None:
    n_data = len(ds.classes)
    if model.num_classes != n_data:
        raise ConfigError(
            f"{name} has {model.num_classes} classes but the data has {n_data} ({', '.join(map(str, ds.classes[:5]))}"
            f"{', …' if n_data > 5 else ''}). Evaluate weights trained on this data: fine-tune with `zoo fit` and "
            f"pass --checkpoint runs/<recipe>/export.safetensors, or pick a tag trained on it (zoo info {name.split('.')[0]}).")


def append_csv(path: str | os.PathLike, row: dict) -> None:
    """Append one row in timm's validate.py columns (+ dataset, split); writes the header for a new file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    if not new:
        with open(p, newline="") as f:
            header = next(csv.reader(f), [])
        if header != CSV_COLUMNS:
            raise ConfigError(f"{p} has columns {header}, not zoo eval's {CSV_COLUMNS}; pass another --csv file.")
    with open(p, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def csv_row(name: str, res: dict, data_cfg: dict, dataset: str, split: str) -> dict:
    size = tuple(data_cfg.get("input_size", (None,))[1:])
    img_size = size[0] if len(set(size)) == 1 else "x".join(map(str, size))
    top5 = res.get("top5")
    return {"model": name, "img_size": img_size, "top1": round(res["top1"], 4),
            "top1_err": round(100 - res["top1"], 4), "top5": "" if top5 is None else round(top5, 4),
            "top5_err": "" if top5 is None else round(100 - top5, 4),
            "param_count": round(res["param_count"] / 1e6, 2), "crop_pct": data_cfg.get("crop_pct", ""),
            "interpolation": data_cfg.get("interpolation", ""), "dataset": dataset, "split": split}


# ------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo eval", description="Evaluate models on image or audio data.")
    p.add_argument("models", nargs="+", help="MODEL or MODEL.tag (a tag loads pretrained weights)")
    p.add_argument("--data", required=True, help="data path (folder, .zip, CIFAR/IDX folder, audio set) or "
                                                 f"a name: {', '.join(catalog.names())} (under $ZOO_DATA)")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", action="store_true", help="fp32 on the GPU (default: bf16 autocast there)")
    p.add_argument("--csv", default=None, help="append one row per model to this CSV")
    p.add_argument("--checkpoint", default=None, help="weights to load (zoo fit export, .ckpt or weight file)")
    p.add_argument("--model-args", default=None, help="JSON architecture overrides, e.g. '{\"depth\": 2}'")
    p.add_argument("--subset", type=int, default=None, help="evaluate only N samples per class")
    p.add_argument("--max-bad", type=float, default=0.01, help="unreadable files are skipped and counted; more "
                                                                 "than this fraction of them is an error")
    p.add_argument("--nproc", type=int, default=1, help="split the data over N local processes (GPUs when "
                                                         "--device cuda); or launch with torchrun")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from zoo.vl import evaluate as vl_eval
    if vl_eval.handles(argv):  # vision-language models: retrieval and zero-shot, CLIP_benchmark JSON
        return vl_eval.main(argv)
    from zoo.kinds import language_model as lm_eval
    if lm_eval.handles(argv):  # language models: NELBO / exact nats and bits per character
        return lm_eval.eval_main(argv)
    args = build_parser().parse_args(argv)
    if args.nproc > 1:
        rest = [a for i, a in enumerate(argv) if not a.startswith("--nproc") and (i == 0 or argv[i - 1] != "--nproc")]
        return launch(main, args.nproc, rest)
    if args.checkpoint and len(args.models) > 1:
        raise ConfigError("--checkpoint applies to one model; evaluate several checkpoints in separate calls.")
    try:
        model_args = json.loads(args.model_args) if args.model_args else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-args is not valid JSON ({e}); e.g. --model-args '{{\"depth\": 2}}'") from None
    path = resolve_data(args.data)
    dataset_name = path.name.split(".")[0]
    own_group = not (dist.is_available() and dist.is_initialized())
    rank, world_size, device = init_process_group(args.device)
    try:
        rows = []
        for name in args.models:
            model, info = build_model(name, args.checkpoint, model_args)
            if world_size > 1:  # identical weights everywhere, also for a randomly initialised model
                for t in model.state_dict().values():
                    t.data.copy_(broadcast(t))
            ds, data_cfg = build_dataset(model, info, path, args.split, args.subset)
            check_classes(name, model, ds)
            loader = DataLoader(SkipUnreadable(shard(ds, rank, world_size)), batch_size=args.batch_size,
                                shuffle=False, num_workers=args.workers, pin_memory=device.startswith("cuda"),
                                collate_fn=collate_skipping)
            res = evaluate(model, loader, device, amp=not args.no_amp, max_bad_fraction=args.max_bad)
            row = csv_row(name, res, data_cfg, dataset_name, args.split)
            rows.append((row, res))
            if args.csv and rank == 0:
                append_csv(args.csv, row)
    finally:
        if world_size > 1 and own_group and dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return 0
    print(f"{'model':<36} {'img':>7} {'top1':>8} {'top5':>8} {'mean/cls':>8} {'loss':>7} {'samples/s':>10} {'params':>7}")
    for row, res in rows:
        top5 = f"{res['top5']:.2f}" if "top5" in res else "-"
        print(f"{row['model']:<36} {str(row['img_size']):>7} {res['top1']:>8.2f} {top5:>8} "
              f"{res['mean_per_class_top1']:>8.2f} {res['loss']:>7.4f} {res['samples_per_sec']:>10.0f} "
              f"{row['param_count']:>6.2f}M")
    if world_size > 1:
        print(f"{world_size} processes, {rows[0][1]['num_samples']} samples per model")
    if args.csv:
        print(f"appended {len(rows)} row(s) to {args.csv}")
    return 0

