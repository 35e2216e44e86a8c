"""Cached text-tower outputs for LiT training: mean-pooled MiniLM embeddings of every caption, int8-quantised.

Why: with the text tower locked its outputs never change, so they are computed once (on any machine; MiniLM
over Flickr8k's 30,000 training captions takes a few minutes on two CPU cores) and training needs neither
the text encoder's weights nor its compute. Per-row symmetric int8 (scale = max |x| / 127, one fp16 scale a
row) makes the file a quarter of fp32: 30,000 x 384 -> 11.6 MB, small enough to travel with the images to a
GPU machine. ``quantisation_error`` measures what it costs (cosine between the fp32 and the dequantised
embedding; ``python -m zoo.vl.embeddings`` prints it).

The step is resumable: chunks are written as they finish under ``<out>.parts/`` and a rerun skips the ones
present; the final file is a safetensors with ``q`` (int8 [N, D]), ``scale`` (fp16 [N]) and the caption keys
(``image#n``) in its metadata, so the data module matches rows to captions by key, not by position.

    python -m zoo.vl.embeddings --data $ZOO_DATA/flickr8k-128-train.zip --split train \\
        --out .data/flickr8k-train-minilm-int8.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from zoo.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "speedzoo-text-embeddings-v1"


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: ``x ~= q * scale[:, None]``; returns (q int8 [N, D], scale fp16 [N])."""
    x = x.float()
    scale = (x.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    scale = scale.half().float().clamp(min=6e-8)  # the scale as it will be stored
    q = torch.round(x / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.half()


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantisation_error(x: torch.Tensor) -> dict[str, float]:
    """Cosine similarity between rows of ``x`` and their int8 round trip: mean, min, and 1 - mean."""
    q, s = quantize(x)
    cos = torch.nn.functional.cosine_similarity(x.float(), dequantize(q, s), dim=1)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "one_minus_cos_mean": float(1 - cos.mean())}


def _digest(keys: Sequence[str], texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for k, t in zip(keys, texts):
        h.update(k.encode() + b"\t" + t.encode() + b"\n")
    return h.hexdigest()


def compute_embeddings(texts: Sequence[str], keys: Sequence[str], out: str | os.PathLike,
                       text_tower: Optional[str] = None, chunk: int = 2048, batch_size: int = 256,
                       device: str = "cpu") -> Path:
    """Embed ``texts`` with MiniLM (mean pooling), chunk by chunk (resumable), and write the int8 file."""
    from safetensors.torch import save_file

    from zoo.vl.text import CaptionTokenizer, MeanPoolTextEncoder, MINILM_HUB_ID, embed_texts, load_tokenizer

    if len(texts) != len(keys) or not texts:
        raise DataError(f"need one key per caption and at least one caption (got {len(texts)} texts, {len(keys)} keys)")
    out = Path(out)
    digest = _digest(keys, texts)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    stamp = parts / "digest.txt"
    if stamp.exists() and stamp.read_text().strip() != digest:  # captions changed: old chunks are wrong
        for f in parts.glob("*.pt"):
            f.unlink()
    stamp.write_text(digest)
    encoder = tokenizer = None
    chunks = []
    for n, start in enumerate(range(0, len(texts), chunk)):
        f = parts / f"{n:05d}.pt"
        if not f.exists():
            if encoder is None:
                encoder = MeanPoolTextEncoder.from_pretrained(text_tower)
                tokenizer = CaptionTokenizer(load_tokenizer(text_tower))
            emb = embed_texts(encoder, tokenizer, list(texts[start:start + chunk]), batch_size, device)
            tmp = f.with_suffix(".tmp")
            torch.save(emb, tmp)
            os.replace(tmp, f)
            log.info("embedded captions %d-%d of %d", start, min(start + chunk, len(texts)), len(texts))
        chunks.append(torch.load(f, weights_only=True))
    emb = torch.cat(chunks)
    q, scale = quantize(emb)
    err = quantisation_error(emb)
    meta = {"format": FORMAT, "text_tower": MINILM_HUB_ID, "pooling": "mean", "digest": digest,
            "keys": json.dumps(list(keys)), "quantisation": json.dumps(err)}
    tmp = out.with_name(out.name + ".tmp")
    save_file({"q": q.contiguous(), "scale": scale.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, out)
    log.info("wrote %s (%d x %d int8, cosine to fp32: mean %.6f, min %.6f)", out, *q.shape, err["cos_mean"],
             err["cos_min"])
    return out


def load_embeddings(path: str | os.PathLike, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) rows of the cached file in the order of ``keys``; DataError names captions it lacks."""
    from safetensors import safe_open

    p = Path(os.path.expandvars(str(path))).expanduser()
    if not p.is_file():
        raise DataError(f"text embeddings file {p} does not exist; write it with `python -m zoo.vl.embeddings "
                        f"--data <captions zip> --split <split> --out {path}` (or drop data.text_embeddings to "
                        f"tokenize captions instead).")
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
            q, scale = f.get_tensor("q"), f.get_tensor("scale")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(f"{p} is not a readable text-embeddings file ({type(e).__name__}: {e}); write it again.") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{p} is not a {FORMAT} file (format {meta.get('format')!r}); write it again.")
    row = {k: i for i, k in enumerate(json.loads(meta["keys"]))}
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{p} has no embedding for {len(missing)} of the {len(keys)} captions (e.g. {missing[:3]}); "
                        f"it was written for other captions. Write it again for this data and split.")
    idx = torch.tensor([row[k] for k in keys], dtype=torch.int64)
    return q[idx], scale[idx]


def main(argv: Optional[list[str]] = None) -> int:
    from zoo.data.image_text import open_image_text

    p = argparse.ArgumentParser(prog="python -m zoo.vl.embeddings", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="Flickr8k zip/folder or an open_clip CSV/TSV")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="the .safetensors to write (e.g. under the git-ignored .data/)")
    p.add_argument("--text-tower", default=None, help="MiniLM zip or folder (default: $ZOO_DATA's)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (quick checks)")
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ds = open_image_text(args.data, args.split, args.limit)
    out = compute_embeddings(ds.flat_captions(), ds.caption_keys(), args.out, args.text_tower,
                             batch_size=args.batch_size)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    print(json.dumps({"file": str(out), "bytes": out.stat().st_size, "captions": len(ds.caption_keys()),
                      "quantisation": json.loads(meta["quantisation"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
