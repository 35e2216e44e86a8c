"""Caption data for the captioners: a small subword vocabulary over the MiniLM tokenizer, and Flickr8k batches of
(image, prompt + caption, answer mask).

Vocabulary (``CaptionVocab``): the MiniLM (BERT uncased WordPiece) tokenizer splits a caption; its 30,522
pieces would make the decoder's embedding alone 7.8 M parameters at width 256, so the captioners keep only the
pieces the Flickr8k *training* captions use at least 5 times (2,776 pieces covering 98.1% of the training
tokens; the list ships as ``flickr8k_caption_vocab.txt`` beside this file, rebuilt by ``python -m
zoo.data.captions --write-vocab``), mapped at tokenisation, with an unknown id for the rest. Four ids come
first: ``[UNK]`` 0, ``[CLS]`` 1 (the prompt: start of a caption), ``[SEP]`` 2 (end, also the padding), ``[MASK]``
3. Decoding needs only the piece list (no tokenizer files): ``zoo caption`` runs without the MiniLM zip.

Batches (``CaptionDataModule``): the CLIP data module's images, crops and per-epoch caption choice
(``zoo.data.image_text.ImageTextDataModule``: every image with one of its 5 captions per epoch, drawn from
(seed, epoch)); the text side is ``{"tokens": [B, 1 + answer_length], "maskable": [B, 1 + answer_length]}``:
``[CLS]`` + the caption's ids cut to ``answer_length - 1`` + ``[SEP]`` padding, the answer mask False on the
prompt and True on every later position (the padding ends included: the model learns where a caption ends).
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch

from zoo.data.image_text import CLIP_MEAN, CLIP_STD, ImageTextDataModule
from zoo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["CaptionVocab", "CaptionDataModule", "build_vocab", "DEFAULT_VOCAB", "SPECIALS"]

SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_VOCAB = Path(__file__).with_name("flickr8k_caption_vocab.txt")
ANSWER_LENGTH = 32  # caption + end: Flickr8k's training captions are 12 pieces at the median, 24 at the 99th percentile


class CaptionVocab:
    """MiniLM pieces restricted to a list (see the module doc): ``encode``/``decode``, ``mask_id``, ``end_id``."""

    unk_id, bos_id, end_id, mask_id = 0, 1, 2, 3

    def __init__(self, pieces: Sequence[str], tokenizer_path: Optional[str] = None):
        pieces = list(pieces)
        if list(pieces[:len(SPECIALS)]) != list(SPECIALS):
            pieces = list(SPECIALS) + [p for p in pieces if p not in SPECIALS]
        if len(set(pieces)) != len(pieces):
            raise ConfigError("the caption vocabulary repeats a piece; every line of the vocabulary file must differ")
        self.pieces = pieces
        self.index = {p: i for i, p in enumerate(pieces)}
        self.tokenizer_path = tokenizer_path
        self._hf = None
        self._table: Optional[torch.Tensor] = None

    @classmethod
    def load(cls, path: Optional[str] = None, tokenizer_path: Optional[str] = None) -> "CaptionVocab":
        p = Path(path) if path else DEFAULT_VOCAB
        if not p.is_file():
            raise DataError(f"caption vocabulary {p} does not exist; pass a file of one MiniLM piece a line "
                            f"(python -m zoo.data.captions --write-vocab makes one)")
        return cls([ln for ln in p.read_text(encoding="utf-8").splitlines() if ln], tokenizer_path)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def to_json(self) -> str:
        return json.dumps(self.pieces, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "CaptionVocab":
        return cls(json.loads(text))

    # -- encoding: the MiniLM tokenizer (needs its zip under ZOO_DATA, or tokenizer_path) ------------------
    def hf(self):
        if self._hf is None:
            from zoo.vl.text import load_tokenizer

            self._hf = load_tokenizer(self.tokenizer_path)
        return self._hf

    def table(self) -> torch.Tensor:
        """MiniLM id -> our id (``unk_id`` for pieces outside the list)."""
        if self._table is None:
            hf = self.hf()
            table = torch.full((len(hf),), self.unk_id, dtype=torch.long)
            ids = hf.convert_tokens_to_ids(self.pieces[len(SPECIALS):])
            table[torch.tensor(ids, dtype=torch.long)] = torch.arange(len(SPECIALS), self.vocab_size)
            self._table = table
        return self._table

    def encode(self, text: str) -> list[int]:
        """A caption's ids (no start or end token)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        hf_ids = self.hf()(list(texts), add_special_tokens=False)["input_ids"]
        table = self.table()
        return [table[torch.tensor(ids, dtype=torch.long)].tolist() if ids else [] for ids in hf_ids]

    def answer_batch(self, texts: Sequence[str], answer_length: int = ANSWER_LENGTH,
                     prompt: Sequence[int] = (bos_id,)) -> dict[str, torch.Tensor]:
        """``prompt + caption[:answer_length - 1] + [SEP] padding`` as ``tokens`` with the ``maskable`` answer mask."""
        P = len(prompt)
        tokens = torch.full((len(texts), P + answer_length), self.end_id, dtype=torch.long)
        tokens[:, :P] = torch.as_tensor(list(prompt), dtype=torch.long)
        for i, ids in enumerate(self.encode_batch(texts)):
            ids = ids[: answer_length - 1]
            tokens[i, P:P + len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        maskable = torch.ones_like(tokens, dtype=torch.bool)
        maskable[:, :P] = False
        return {"tokens": tokens, "maskable": maskable}

    # -- decoding: the piece list alone -----------------------------------------------------------------------
    def decode(self, ids) -> str:
        """Text of ids up to the first end token; start, mask and unknown ids are left out, pieces joined as
        WordPiece does (``##`` glues to the piece before), spaces before punctuation dropped."""
        words: list[str] = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)):
            i = int(i)
            if i == self.end_id:
                break
            if i < len(SPECIALS) or i >= self.vocab_size:
                continue
            piece = self.pieces[i]
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
            else:
                words.append(piece)
        text = " ".join(words)
        text = re.sub(r" ([.,!?;:])", r"\1", text)
        return re.sub(r" ' (s|t|re|ve|m|ll|d)\b", r"'\1", text)


def build_vocab(captions: Sequence[str], tokenizer, min_count: int = 5) -> list[str]:
    """The MiniLM pieces used at least ``min_count`` times in ``captions``, most frequent first (ties by piece)."""
    counts = Counter(p for ids in tokenizer(list(captions), add_special_tokens=False)["input_ids"]
                     for p in tokenizer.convert_ids_to_tokens(ids))
    kept = [p for p, n in counts.items() if n >= min_count and p not in SPECIALS]
    return sorted(kept, key=lambda p: (-counts[p], p))


class _AnswerEncoder:
    """The data module's text side: captions -> the answer batch of a vocabulary."""

    def __init__(self, vocab: CaptionVocab, answer_length: int):
        self.vocab, self.answer_length = vocab, answer_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.vocab.answer_batch(texts, self.answer_length)


class CaptionDataModule(ImageTextDataModule):
    """Flickr8k (image, caption) batches for captioning: ``(images [B, 3, H, W], {"tokens", "maskable"})``.

    Args (besides ImageTextDataModule's image arguments): ``vocab``: the caption vocabulary file (default the
    packaged Flickr8k one); ``answer_length``: caption + end positions (captions are cut to fit);
    ``tokenizer``: the MiniLM zip or folder (default ZOO_DATA's). Validation: caption 0 of each image of
    ``val_path``/``val_split`` (e.g. the eval zip's ``dev`` split).
    """

    def __init__(self, path: str = "flickr8k", split: str = "train", val_path: Optional[str] = None,
                 val_split: str = "dev", img_size: int = 128, batch_size: int = 128, eval_batch_size: int = 250,
                 vocab: Optional[str] = None, answer_length: int = ANSWER_LENGTH, tokenizer: Optional[str] = None,
                 augment: bool = True, crop_scale: tuple[float, float] = (0.7, 1.0), seed: int = 0,
                 train_subset: Optional[int] = None, val_subset: Optional[int] = None, drop_last: bool = True,
                 num_workers: int = 0, crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, img_key: str = "filepath",
                 caption_key: str = "title", separator: Optional[str] = None, text_embeddings: Optional[str] = None,
                 context_length: int = 64):
        # (every argument of the base is named here too: Lightning's hparams read this frame's arguments)
        if text_embeddings is not None:
            raise ConfigError("data.text_embeddings is for contrastive training; a captioner reads the captions' "
                              "token ids: leave it out")
        if answer_length < 2:
            raise ConfigError(f"data.answer_length={answer_length}: a caption needs at least 2 positions "
                              f"(one piece and the end token).")
        super().__init__(path=path, split=split, val_path=val_path, val_split=val_split, img_size=img_size,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, tokenizer=tokenizer,
                         augment=augment, crop_scale=crop_scale, seed=seed, train_subset=train_subset,
                         val_subset=val_subset, drop_last=drop_last, num_workers=num_workers, crop_ratio=crop_ratio,
                         mean=mean, std=std, img_key=img_key, caption_key=caption_key, separator=separator)
        self.answer_length = int(answer_length)  # (the base's hparams hold its own arguments)
        self.vocab = CaptionVocab.load(vocab, tokenizer)

    @property
    def tokenizer(self) -> CaptionVocab:
        """What the captioning task reads to check the model's vocabulary."""
        return self.vocab

    def _ensure_tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _AnswerEncoder(self.vocab, self.answer_length)
        return self._tokenizer


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m zoo.data.captions --write-vocab [--data flickr8k] [--min-count 5] [--out FILE]``."""
    import argparse

    from zoo.data.image_text import open_image_text
    from zoo.vl.text import load_tokenizer

    p = argparse.ArgumentParser(prog="python -m zoo.data.captions", description=__doc__.split("\n\n")[0])
    p.add_argument("--write-vocab", action="store_true", required=True)
    p.add_argument("--data", default="flickr8k")
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--out", default=str(DEFAULT_VOCAB))
    a = p.parse_args(argv)
    ds = open_image_text(a.data, "train")
    pieces = build_vocab(ds.flat_captions(), load_tokenizer(), a.min_count)
    Path(a.out).write_text("\n".join(list(SPECIALS) + pieces) + "\n", encoding="utf-8")
    print(f"{a.out}: {len(pieces)} pieces + {len(SPECIALS)} specials from {len(ds.flat_captions())} captions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
