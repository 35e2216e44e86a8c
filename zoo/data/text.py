"""Text data: a character tokenizer, the Tiny Shakespeare data module, prompt/answer examples, and a subword
tokenizer wrapper (MiniLM's WordPiece through ``transformers``) for the captioning work.

Tiny Shakespeare (the named set ``tinyshakespeare``: ``$ZOO_DATA/tinyshakespeare.txt``, 1,115,394 characters, 65 symbols): the first 90% of
the characters train, the last 10% validate (the usual split of char-rnn and nanoGPT). Every training
window start is one sample (a seeded, resumable permutation of all starts per epoch); validation and test
use the split's non-overlapping windows of ``context`` characters (the last partial window is dropped:
111,360 of the 111,540 validation characters are scored at context 256).

Character vocabulary: the text's symbols in sorted order, then the end-of-text token (variable-length
generation stops there) and the [MASK] token of the diffusion models: 65 + 2 = 67 ids for Tiny Shakespeare.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.sampling import ResumableRandomSampler, shard_kwargs
from zoo.errors import ConfigError, DataError

__all__ = ["CharTokenizer", "TinyShakespeareDataModule", "TextWindows", "prompt_answer_example",
           "SubwordTokenizer", "shakespeare_path", "TINYSHAKESPEARE_CHARS", "load_text", "split_text", "TINYSHAKESPEARE"]

TINYSHAKESPEARE = "tinyshakespeare.txt"
TINYSHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""sorted(set(text)) of Tiny Shakespeare: a model's vocabulary without reading the file."""
END, MASK = "<end>", "<mask>"


class CharTokenizer:
    """Characters <-> ids: ``chars`` in order, then ``<end>`` and ``<mask>`` (ids ``len(chars)``, ``+1``)."""

    def __init__(self, chars: Sequence[str] | str):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars) or not chars:
            raise ConfigError("a character vocabulary needs distinct single characters")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}
        self.end_id = len(chars)
        self.mask_id = len(chars) + 1
        self.vocab_size = len(chars) + 2

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; a character outside the vocabulary is a ConfigError naming it."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise ConfigError(f"character {c!r} (U+{ord(c):04X}) is not in this model's vocabulary of "
                              f"{len(self.chars)} symbols; use only: {''.join(self.chars)!r}") from None

    def decode(self, ids, stop_at_end: bool = True, mask_char: str = "_") -> str:
        """Text of ``ids``; stops at the first ``<end>`` (or writes nothing for it), [MASK] as ``mask_char``."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.end_id:
                if stop_at_end:
                    break
                continue
            out.append(mask_char if i == self.mask_id else self.chars[i])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": "".join(self.chars)})

    @classmethod
    def from_json(cls, s: str) -> "CharTokenizer":
        d = json.loads(s)
        if d.get("type") != "char":
            raise ConfigError(f"not a character tokenizer: {s[:80]}")
        return cls(d["chars"])

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self.chars)} symbols + <end> + <mask>)"


def shakespeare_path(path: Optional[str | os.PathLike] = None) -> Path:
    """``path`` (a file or a catalog name), by default the named set ``tinyshakespeare`` under ``ZOO_DATA``."""
    from zoo.data.catalog import resolve_path

    return resolve_path(path or "tinyshakespeare", "data.path")


def load_text(path: Optional[str | os.PathLike] = None) -> str:
    text = shakespeare_path(path).read_text(encoding="utf-8")
    if not text:
        raise DataError(f"{shakespeare_path(path)} is empty")
    return text


def split_text(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """The first ``train_fraction`` of the characters and the rest."""
    n = int(len(text) * train_fraction)
    return text[:n], text[n:]


class TextWindows(Dataset):
    """Windows of ``length`` ids over one token stream: every start (``stride=1``) or disjoint (``stride=length``)."""

    def __init__(self, ids: torch.Tensor, length: int, stride: int = 1):
        if ids.numel() < length:
            raise DataError(f"a text of {ids.numel()} tokens is shorter than one window of {length}")
        self.ids, self.length, self.stride = ids, length, stride

    def __len__(self) -> int:
        return (self.ids.numel() - self.length) // self.stride + 1

    def __getitem__(self, i: int) -> torch.Tensor:
        s = i * self.stride
        return self.ids[s:s + self.length]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        idx = torch.as_tensor(indices)[:, None] * self.stride + torch.arange(self.length)
        return self.ids[idx]


def _as_batch(batch):
    return batch if isinstance(batch, torch.Tensor) else torch.stack(batch)


def prompt_answer_example(tokenizer: CharTokenizer, prompt: str, answer: str, length: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [length], maskable [length]) for SFT: the prompt, the answer, then ``<end>`` padding that counts
    as answer (the model learns where its answer ends); only answer positions are maskable."""
    p, a = tokenizer.encode(prompt), tokenizer.encode(answer)
    if len(p) + len(a) + 1 > length:
        raise ConfigError(f"prompt ({len(p)}) + answer ({len(a)}) + <end> do not fit in {length} tokens")
    ids = p + a + [tokenizer.end_id] * (length - len(p) - len(a))
    maskable = [False] * len(p) + [True] * (length - len(p))
    return torch.tensor(ids), torch.tensor(maskable)


try:
    import lightning.pytorch as pl

    from zoo.data.modules import ResumableLoader, _ClassificationDataModule
except ImportError:  # pragma: no cover - the recipes need lightning; the tokenizers above do not
    pl = None


class TinyShakespeareDataModule(pl.LightningDataModule if pl is not None else object):
    """Character-level Tiny Shakespeare for the language-model recipes.

    Args:
        path: the text file or a named data set (default ``tinyshakespeare``, under ``ZOO_DATA``).
        context: window length in characters (the model's sequence length).
        batch_size / eval_batch_size: training / validation windows per batch.
        train_fraction: the share of characters that train (first part); the rest validates and tests.
        val_windows: score only the first N validation windows (tiny runs); None: all of them.
        seed: the training order's seed (a permutation of every window start per epoch).
    """

    def __init__(self, path: Optional[str] = None, context: int = 256, batch_size: int = 64,
                 eval_batch_size: int = 64, train_fraction: float = 0.9, val_windows: Optional[int] = None,
                 seed: int = 0):
        super().__init__()
        if context < 2:
            raise ConfigError(f"data.context must be >= 2, got {context}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
        if not 0 < train_fraction < 1:
            raise ConfigError(f"data.train_fraction must be in (0, 1), got {train_fraction}")
        self.save_hyperparameters()
        self.batch_size, self.eval_batch_size, self.context = batch_size, eval_batch_size, context
        self.tokenizer: Optional[CharTokenizer] = None
        self.train_data = self.val_data = None
        self.train_sampler: Optional[ResumableRandomSampler] = None
        self._pending_sampler_state = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_data is not None:
            return
        text = load_text(self.hparams.path)
        self.tokenizer = CharTokenizer.from_text(text)
        train, val = split_text(text, self.hparams.train_fraction)
        self.train_data = TextWindows(torch.tensor(self.tokenizer.encode(train)), self.context, 1)
        val_ids = torch.tensor(self.tokenizer.encode(val))
        self.val_data = TextWindows(val_ids, self.context, self.context)
        if self.hparams.val_windows is not None:
            n = min(int(self.hparams.val_windows), len(self.val_data))
            self.val_data = TextWindows(val_ids[: (n - 1) * self.context + self.context], self.context, self.context)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        world, rank = shard_kwargs(self.trainer)
        n = len(self.train_data)
        s = self.train_sampler
        if s is None or s.n != n or (s.num_replicas, s.rank) != (world, rank):
            self.train_sampler = ResumableRandomSampler(n, self.hparams.seed, world, rank, drop_last=True)
        if self._pending_sampler_state is not None:
            self.train_sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        # resumable through this module's state (the sampler's): no false "not resumable" warning
        return ResumableLoader(self.train_data, batch_size=self.batch_size, sampler=self.train_sampler,
                               drop_last=True, collate_fn=_as_batch, num_workers=0,
                               generator=torch.Generator().manual_seed(self.hparams.seed))

    def _eval_loader(self) -> DataLoader:
        self.setup("validate")
        return DataLoader(self.val_data, batch_size=self.eval_batch_size, shuffle=False, collate_fn=_as_batch)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    # the resume position, as the data layer's modules keep it: the sampler's (epoch, samples consumed by all
    # ranks), saved by Lightning in every checkpoint and handed back before the loaders are built
    if pl is not None:
        _consumed = _ClassificationDataModule._consumed
        state_dict = _ClassificationDataModule.state_dict
        load_state_dict = _ClassificationDataModule.load_state_dict


class SubwordTokenizer:
    """MiniLM's WordPiece tokenizer through ``transformers`` (offline, from the data folder's zip), with the
    ids a decoder needs: ``[MASK]`` for diffusion, ``[SEP]`` as the end token, ``[PAD]``."""

    def __init__(self, path: Optional[str | os.PathLike] = None):
        from zoo.vl.text import load_tokenizer

        self.hf = load_tokenizer(path)
        self.mask_id = int(self.hf.mask_token_id)
        self.end_id = int(self.hf.sep_token_id)
        self.pad_id = int(self.hf.pad_token_id)
        self.vocab_size = int(len(self.hf))

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids, stop_at_end: bool = True) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if stop_at_end and self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        return self.hf.decode([i for i in ids if i not in (self.mask_id, self.pad_id)])
