"""The pretrained text tower: sentence-transformers' all-MiniLM-L6-v2 on ``transformers``, mean-pooled.

Mean pooling over the attention mask is what sentence-transformers' ``1_Pooling`` does for this model (its
final Normalize step is left to the CLIP model, which normalises after the projection). The model folder is
the fp16 zip of the data root (``$ZOO_DATA/all-MiniLM-L6-v2-fp16.zip``), extracted once into
``$ZOO_CACHE/text/all-MiniLM-L6-v2-fp16``; only ``transformers`` reads it, offline.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from zoo.errors import DataError

log = logging.getLogger(__name__)

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_ZIP = "all-MiniLM-L6-v2-fp16.zip"
MINILM_FOLDER = "all-MiniLM-L6-v2-fp16"
MINILM_FP16_SHA256 = "860248b56eb1b3bac9afebc1cb832e7aac40f6cceb7b36be35057b6ad8894648"
"""sha256 of the fp16 ``model.safetensors`` the zip holds: what an export's text tower must be."""
MINILM_WIDTH = 384
MINILM_CONTEXT = 128  # the model's max_seq_length (sentence_bert_config.json); Flickr8k captions are far shorter


def minilm_zip(path: str | os.PathLike | None = None) -> Path:
    """The MiniLM zip (or an extracted folder): ``path`` when given, else the data set ``minilm`` under
    ``$ZOO_DATA`` (zoo.data.catalog)."""
    from zoo.data import catalog

    if path is None:
        return catalog.resolve("minilm")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"MiniLM text tower file {p} does not exist; pass the {MINILM_ZIP} zip or an extracted "
                        f"model folder, or leave it out to use ZOO_DATA's.")
    return p


def minilm_folder(path: str | os.PathLike | None = None) -> Path:
    """An extracted Hugging Face folder of MiniLM: a folder given as is, a zip extracted once into the cache."""
    from zoo.hub import cache_dir

    src = minilm_zip(path)
    if src.is_dir():
        return src
    dest = cache_dir() / "text" / src.stem
    marker = dest / ".complete"
    if marker.exists():
        return dest
    try:
        with zipfile.ZipFile(src) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            prefix = os.path.commonpath(names) if len(names) > 1 else ""
            if "config.json" not in {n[len(prefix):].lstrip("/") for n in names}:
                raise DataError(f"{src} holds no Hugging Face model folder (no config.json)")
            tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            for n in names:
                rel = n[len(prefix):].lstrip("/")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(n))
    except zipfile.BadZipFile as e:
        raise DataError(f"{src} is not a readable zip ({e}); re-copy it from the data folder.") from None
    from zoo.hub import sha256_of

    digest = sha256_of(tmp / "model.safetensors") if (tmp / "model.safetensors").exists() else ""
    if digest != MINILM_FP16_SHA256:
        log.warning("%s: model.safetensors has sha256 %s, not the fp16 all-MiniLM-L6-v2 the zoo's CLIP models "
                    "were trained with (%s); their text side will not match", src, digest, MINILM_FP16_SHA256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():  # another process finished first
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    marker.touch()
    log.info("extracted %s to %s", src, dest)
    return dest


def load_tokenizer(path: str | os.PathLike | None = None):
    """The MiniLM folder's Hugging Face tokenizer (the CLIP models' tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_folder(path)), local_files_only=True)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: the average of the token states the attention mask keeps."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class MeanPoolTextEncoder(nn.Module):
    """A Hugging Face encoder (BERT) whose output is the mean-pooled last hidden state [B, width]."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.width = int(encoder.config.hidden_size)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
        from transformers import AutoModel

        folder = minilm_folder(path)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
        return cls(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = (input_ids != 0).long()
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return mean_pool(out.last_hidden_state, attention_mask)


class CaptionTokenizer:
    """Captions -> ``input_ids`` / ``attention_mask`` padded to the batch's longest, cut at ``context_length``."""

    def __init__(self, tokenizer, context_length: int = MINILM_CONTEXT):
        self.tokenizer, self.context_length = tokenizer, context_length

    def __call__(self, texts: list[str] | str):
        """A ``BatchEncoding`` of ``input_ids`` and ``attention_mask`` (``.to(device)`` works, as open_clip's
        zero-shot builder expects of a tokenizer's output)."""
        from transformers import BatchEncoding

        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return BatchEncoding({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})


@torch.no_grad()
def embed_texts(encoder: MeanPoolTextEncoder, tokenizer: CaptionTokenizer, texts: list[str], batch_size: int = 256,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Mean-pooled embeddings [N, width] (fp32, CPU) of ``texts``, in batches."""
    encoder.eval().to(device)
    out = []
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i:i + batch_size])
        out.append(encoder(**{k: v.to(device) for k, v in tok.items()}).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, encoder.width)


def minilm_state_dict(path: str | os.PathLike | None = None, prefix: str = "text.encoder.") -> dict[str, torch.Tensor]:
    """The pretrained MiniLM encoder's weights under ``prefix`` (a CLIP model's text-encoder keys)."""
    enc = MeanPoolTextEncoder.from_pretrained(path)
    return {prefix + k: v for k, v in enc.encoder.state_dict().items()}


def fill_text_tower(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Converter for CLIP exports: a file without text-encoder keys (the locked MiniLM was referenced, not
    copied) gets the pretrained MiniLM's, so it loads strictly into a model built with the MiniLM tower."""
    if any(k.startswith("text.") for k in state_dict):
        return dict(state_dict)
    return {**state_dict, **minilm_state_dict()}
