"""Image-caption data for contrastive (CLIP-style) training and retrieval evaluation.

Two layouts, read straight from a zip or a folder:

- Flickr8k's: ``<root>/captions.tsv`` (tab-separated, header ``image split caption_id caption``), the images
  under ``<root>/images/<image>``, and split lists ``<root>/{train,dev,test,extra}.txt`` (one image a line).
  The root may be the zip's top folder (``flickr8k-128/``). Splits combine with ``+`` (``train+extra``).
- open_clip's CSV/TSV (its ``--csv-img-key filepath --csv-caption-key title --csv-separator '\\t'``): one
  row per (image path, caption); paths are relative to the file's folder; an image may have many rows.

Bad input never stops an epoch half way: rows with an empty caption, captions naming an image that is not
there, images with no caption, and images that do not decode are skipped while the set is read and decoded
(before training starts), counted in ``ImageTextSet.skipped`` and logged; a set left empty raises DataError.

Training (``ImageTextDataModule``): the images are decoded once into a uint8 tensor; each epoch every image
pairs with one of its captions, drawn from (seed, epoch), so a resumed run sees the same pairs. With
``captions_per_image: k`` a batch brings k distinct captions of each image ([B, k, ...] text, the drawn caption
and the next k-1 of that image): the task scores the images against each of the k caption sets, so one image
forward learns from all of an image's captions. The text side
is either the captions' token ids (the MiniLM tokenizer) or, for a locked text tower, their cached mean-pooled
MiniLM embeddings (``zoo.vl.embeddings``, int8 + per-row scale), kept on the device and looked up per batch.
Random resized crops are cut on the device with ``torchvision.ops.roi_align`` (one call per batch).
"""
from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.sampling import ResumableRandomSampler
from zoo.data.sources import FileTree
from zoo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FLICKR_COLUMNS = ("image", "split", "caption_id", "caption")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN / STD
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageTextSet:
    """Images (relative paths in ``tree``) and their captions, with what was skipped and why."""

    tree: FileTree
    images: list[str]
    captions: list[list[str]]
    skipped: Counter = field(default_factory=Counter)
    name: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def caption_pairs(self) -> list[tuple[int, int]]:
        """(image index, caption index) of every caption, image by image."""
        return [(i, j) for i, caps in enumerate(self.captions) for j in range(len(caps))]

    def flat_captions(self) -> list[str]:
        return [c for caps in self.captions for c in caps]

    def caption_keys(self) -> list[str]:
        """A stable key per caption (``image#n``), to match cached embeddings to captions."""
        return [f"{Path(self.images[i]).name}#{j}" for i, j in self.caption_pairs()]

    def text_to_image(self) -> torch.Tensor:
        """[n_captions] index of the image each caption describes (retrieval ground truth)."""
        return torch.tensor([i for i, _ in self.caption_pairs()], dtype=torch.int64)

    def drop(self, keep: Sequence[int], reason: str) -> None:
        """Keep only images ``keep`` (indices), counting the others under ``reason``."""
        keep = list(keep)
        n = len(self.images) - len(keep)
        if n:
            self.skipped[reason] += n
            self.images = [self.images[i] for i in keep]
            self.captions = [self.captions[i] for i in keep]

    def report(self) -> None:
        if self.skipped:
            log.warning("%s: skipped %s", self.name, ", ".join(f"{n} ({why})" for why, n in self.skipped.items()))
        if not self.images:
            why = "; ".join(f"{n} {r}" for r, n in self.skipped.items()) or "no rows"
            raise DataError(f"{self.name} holds no usable image-caption pairs ({why}). Check the captions file and "
                            f"that the images it names are in the same zip or folder.")


def _clean(text: Optional[str]) -> str:
    return " ".join((text or "").split())


def _flickr_root(tree: FileTree) -> Optional[str]:
    """The folder prefix ('' or 'flickr8k-128/') holding captions.tsv, or None."""
    files = tree.files()
    hits = sorted((f for f in files if f == "captions.tsv" or f.endswith("/captions.tsv")), key=len)
    return hits[0][: -len("captions.tsv")] if hits else None


def open_flickr8k(path: Union[str, os.PathLike, FileTree], split: str = "train", limit: Optional[int] = None) -> ImageTextSet:
    """Flickr8k's layout (see the module docstring); ``split`` a split list name or names joined by '+'."""
    tree = path if isinstance(path, FileTree) else FileTree(path)
    root = _flickr_root(tree)
    if root is None:
        raise DataError(f"{tree.describe()} has no captions.tsv: not Flickr8k's layout (captions.tsv, images/, "
                        f"split lists). For another layout pass a CSV/TSV of image paths and captions.")
    text = tree.read_bytes(root + "captions.tsv").decode("utf-8", errors="replace")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    missing_cols = [c for c in FLICKR_COLUMNS if c not in (reader.fieldnames or [])]
    if missing_cols:
        raise DataError(f"{tree.describe(root + 'captions.tsv')} lacks the column(s) {', '.join(missing_cols)}; "
                        f"expected a tab-separated header {' '.join(FLICKR_COLUMNS)}.")
    wanted: list[str] = []
    for name in split.split("+"):
        rel = f"{root}{name}.txt"
        if not tree.exists(rel):
            have = sorted(f[len(root):-4] for f in tree.files() if f.startswith(root) and f.endswith(".txt")
                          and "/" not in f[len(root):])
            raise DataError(f"split '{name}' has no list {tree.describe(rel)}; available: {', '.join(have) or 'none'}.")
        wanted += [ln.strip() for ln in tree.read_bytes(rel).decode().splitlines() if ln.strip()]
    if limit is not None:
        wanted = wanted[:limit]
    order = {img: i for i, img in enumerate(dict.fromkeys(wanted))}
    caps: list[list[tuple[int, str]]] = [[] for _ in order]
    skipped: Counter = Counter()
    for row in reader:
        img = (row.get("image") or "").strip()
        if img not in order:
            continue
        cap = _clean(row.get("caption"))
        if not cap:
            skipped["empty caption"] += 1
            continue
        try:
            cid = int(row.get("caption_id") or len(caps[order[img]]))
        except ValueError:
            cid = len(caps[order[img]])
        caps[order[img]].append((cid, cap))
    ds = ImageTextSet(tree, [f"{root}images/{img}" for img in order], [[c for _, c in sorted(cs)] for cs in caps],
                      skipped, name=f"{tree.describe()}[{split}]")
    _check_pairs(ds)
    return ds


def open_caption_csv(path: Union[str, os.PathLike], img_key: str = "filepath", caption_key: str = "title",
                     separator: Optional[str] = None, limit: Optional[int] = None) -> ImageTextSet:
    """open_clip's CSV/TSV layout: a row per (image path, caption), paths relative to the file's folder."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"caption file {p} does not exist.")
    sep = separator or ("\t" if p.suffix.lower() in (".tsv", ".txt") else ",")
    with open(p, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=sep)
        cols = reader.fieldnames or []
        for key, flag in ((img_key, "img_key"), (caption_key, "caption_key")):
            if key not in cols:
                raise DataError(f"{p} has no column '{key}' (columns: {', '.join(cols) or 'none'}); set "
                                f"data.{flag} to the column holding the image {'path' if flag == 'img_key' else 'caption'}.")
        order: dict[str, int] = {}
        caps: list[list[str]] = []
        skipped: Counter = Counter()
        for row in reader:
            img = (row.get(img_key) or "").strip()
            cap = _clean(row.get(caption_key))
            if not img:
                skipped["row without an image path"] += 1
                continue
            if img not in order:
                if limit is not None and len(order) >= limit:
                    continue
                order[img] = len(order)
                caps.append([])
            if not cap:
                skipped["empty caption"] += 1
                continue
            caps[order[img]].append(cap)
    ds = ImageTextSet(FileTree(p.parent), list(order), caps, skipped, name=str(p))
    _check_pairs(ds)
    return ds


def _check_pairs(ds: ImageTextSet) -> None:
    present = ds.tree.files()
    have = set(present)
    ds.drop([i for i, img in enumerate(ds.images) if img in have], "caption names a missing image")
    ds.drop([i for i, caps in enumerate(ds.captions) if caps], "image without a caption")


def open_image_text(path: Union[str, os.PathLike], split: str = "train", limit: Optional[int] = None,
                    img_key: str = "filepath", caption_key: str = "title", separator: Optional[str] = None) -> ImageTextSet:
    """Flickr8k's layout for a zip or folder, open_clip's for a ``.csv``/``.tsv`` file; ``path`` may be a data
    set name (``flickr8k``: its file for ``split`` under ``$ZOO_DATA``, zoo.data.catalog)."""
    from zoo.data.catalog import resolve_path

    p = resolve_path(path, "data.path", split.split("+")[0])
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
        return open_caption_csv(p, img_key, caption_key, separator, limit)
    return open_flickr8k(p, split, limit)


def decode_images(ds: ImageTextSet, size: int | tuple[int, int]) -> torch.Tensor:
    """Every image of ``ds`` as uint8 [N, 3, H, W] (resized when needed); undecodable ones are dropped from
    ``ds`` and counted, so the tensor and ``ds.images`` stay aligned."""
    from PIL import Image, UnidentifiedImageError

    h, w = (size, size) if isinstance(size, int) else tuple(size)
    out, keep = [], []
    for i, rel in enumerate(ds.images):
        try:
            with Image.open(ds.tree.open(rel)) as im:
                im = im.convert("RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.BICUBIC)
                out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
            keep.append(i)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            log.debug("cannot decode %s: %s", ds.tree.describe(rel), e)
    ds.drop(keep, "unreadable image")
    ds.report()
    return torch.stack(out)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8-range float images [B, 3, H, W] -> normalised."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1) * 255.0
    return (x - m) / s


def random_resized_boxes(n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
                         generator: torch.Generator) -> torch.Tensor:
    """[n, 4] crop boxes (x0, y0, x1, y1) as torchvision's RandomResizedCrop draws them (area share in
    ``scale``, log-uniform aspect ratio in ``ratio``), clamped to the image."""
    area = torch.empty(n).uniform_(*scale, generator=generator) * h * w
    logr = torch.empty(n).uniform_(np.log(ratio[0]), np.log(ratio[1]), generator=generator)
    r = logr.exp()
    cw = (area * r).sqrt().clamp(max=w)
    ch = (area / r).sqrt().clamp(max=h)
    x0 = torch.rand(n, generator=generator) * (w - cw)
    y0 = torch.rand(n, generator=generator) * (h - ch)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], 1)


class _Indices(Dataset):
    """A batch is its indices; images and captions are looked up on the device."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor(i)

    def __getitems__(self, indices: list[int]):
        return torch.as_tensor(indices, dtype=torch.int64)


def _as_batch(batch):
    return batch


class ImageTextDataModule(pl.LightningDataModule):
    """Image-caption pairs for contrastive training (see the module docstring).

    Args:
        path: Flickr8k zip/folder or an open_clip CSV/TSV; split: its split list(s) (``train``, ``train+extra``).
        val_path / val_split: optional validation pairs (caption 0 of each image), e.g. the eval zip's ``dev``.
        img_size: images are decoded (and resized when needed) to this size.
        text_embeddings: cached mean-pooled text embeddings of ``path``'s captions (a locked text tower trains
            from them; written by ``python -m zoo.vl.embeddings``). None: captions are tokenized instead.
        tokenizer: the MiniLM zip or folder whose tokenizer to use (default: the data set ``minilm``).
        crop_scale / crop_ratio: RandomResizedCrop's area and aspect ranges; ``augment=False`` turns it off.
        captions_per_image: captions of each image per batch (1: one drawn per epoch; 5: all of Flickr8k's). An
            image with fewer captions repeats them.
        train_subset: only the first N images (quick checks).
        img_key / caption_key / separator: the CSV columns and separator (open_clip's names).
    """

    def __init__(self, path: str = "flickr8k-128-train.zip", split: str = "train", val_path: Optional[str] = None,
                 val_split: str = "dev", img_size: int = 128, batch_size: int = 256, eval_batch_size: int = 500,
                 text_embeddings: Optional[str] = None, tokenizer: Optional[str] = None,
                 context_length: int = 64, augment: bool = True, crop_scale: tuple[float, float] = (0.5, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, seed: int = 0, train_subset: Optional[int] = None,
                 val_subset: Optional[int] = None, drop_last: bool = True, img_key: str = "filepath",
                 caption_key: str = "title", separator: Optional[str] = None, num_workers: int = 0,
                 captions_per_image: int = 1):
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 2:
            raise ConfigError(f"data.batch_size={batch_size}: contrastive training needs at least 2 pairs a batch.")
        if captions_per_image < 1:
            raise ConfigError(f"data.captions_per_image={captions_per_image} must be at least 1.")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale={crop_scale} must satisfy 0 < min <= max <= 1.")
        self.batch_size = batch_size
        self.captions_per_image = int(captions_per_image)  # an attribute: a subclass's hparams hold its own arguments
        self.train_set: Optional[ImageTextSet] = None
        self.val_set: Optional[ImageTextSet] = None
        self._images: dict[str, torch.Tensor] = {}
        self._emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (int8 [N, D], scale [N]) in caption order
        self._dev_emb: dict = {}
        self._choices: Optional[tuple] = None  # (epoch, device, [n_images, k] caption choices)
        self._tokenizer = None
        self.train_sampler: Optional[ResumableRandomSampler] = None
        self._pending_sampler_state: Optional[dict] = None

    # -- data -----------------------------------------------------------------------------------------------
    def _open(self, path: str, split: str, subset: Optional[int]) -> ImageTextSet:
        hp = self.hparams
        return open_image_text(path, split, subset, hp.img_key, hp.caption_key, hp.separator)

    @property
    def data_config(self) -> dict:
        hp = self.hparams
        return {"input_size": (3, hp.img_size, hp.img_size), "mean": tuple(hp.mean), "std": tuple(hp.std),
                "interpolation": "bicubic", "crop_pct": 1.0}

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._open(hp.path, hp.split, hp.train_subset)
            self._images["train"] = decode_images(self.train_set, hp.img_size)
            if hp.text_embeddings:
                from zoo.vl.embeddings import load_embeddings

                self._emb = load_embeddings(hp.text_embeddings, self.train_set.caption_keys())
            log.info("image-text train set: %d images, %d captions", len(self.train_set),
                     len(self.train_set.caption_pairs()))
        if self.val_set is None and hp.val_path and stage in (None, "fit", "validate"):
            self.val_set = self._open(hp.val_path, hp.val_split, hp.val_subset)
            self._images["val"] = decode_images(self.val_set, hp.img_size)
        if not hp.text_embeddings or (self.val_set is not None):
            self._ensure_tokenizer()

    def _ensure_tokenizer(self):
        if self._tokenizer is None:
            from zoo.vl.text import CaptionTokenizer, load_tokenizer

            self._tokenizer = CaptionTokenizer(load_tokenizer(self.hparams.tokenizer), self.hparams.context_length)
        return self._tokenizer

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self.train_sampler = ResumableRandomSampler(len(self.train_set), seed=self.hparams.seed,
                                                    num_replicas=world, rank=rank, drop_last=True)
        if self._pending_sampler_state is not None:
            self.train_sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        if len(self.train_set) // world < self.batch_size and self.hparams.drop_last:
            raise ConfigError(f"data.batch_size={self.batch_size} is larger than the {len(self.train_set)} training "
                              f"images (per device); lower it or set data.drop_last false.")
        return DataLoader(_Indices(len(self.train_set)), batch_size=self.batch_size, sampler=self.train_sampler,
                          collate_fn=_as_batch, drop_last=self.hparams.drop_last)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(_Indices(len(self.val_set)), batch_size=self.hparams.eval_batch_size, collate_fn=_as_batch)

    # -- the pairs of a batch, on the device ----------------------------------------------------------------
    def caption_counts(self) -> torch.Tensor:
        """[n_images] how many captions each training image has."""
        return torch.tensor([len(c) for c in self.train_set.captions])

    def caption_choice(self, epoch: int) -> torch.Tensor:
        """[n_images] which caption each training image pairs with in ``epoch`` (drawn from seed, epoch)."""
        counts = self.caption_counts()
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + 104_729 * epoch + 17)
        return (torch.rand(len(counts), generator=g) * counts).long().clamp(max=counts - 1)

    def caption_choices(self, epoch: int) -> torch.Tensor:
        """[n_images, captions_per_image]: the drawn caption of each image and the next ones, cyclically."""
        counts = self.caption_counts()
        step = torch.arange(self.captions_per_image)
        return (self.caption_choice(epoch)[:, None] + step[None, :]) % counts[:, None]

    def _epoch_choices(self, epoch: int, device) -> torch.Tensor:
        """caption_choices(epoch) on ``device``, drawn once per epoch rather than once per batch."""
        if self._choices is None or self._choices[:2] != (epoch, device):
            self._choices = (epoch, device, self.caption_choices(epoch).to(device))
        return self._choices[2]

    def _offsets(self) -> torch.Tensor:
        counts = self.caption_counts()
        return torch.cumsum(counts, 0) - counts

    def _device_embeddings(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._dev_emb:
            q, s = self._emb
            self._dev_emb[device] = (q.to(device), s.to(device), self._offsets().to(device))
        return self._dev_emb[device]

    def augment(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """Random resized crops of float images [B, 3, H, W], boxes drawn per (seed, epoch, image)."""
        from torchvision.ops import roi_align

        B, _, H, W = x.shape
        g = torch.Generator().manual_seed(self.hparams.seed * 7_919 + 15_485_863 * epoch + 3)
        boxes = random_resized_boxes(len(self.train_set), H, W, tuple(self.hparams.crop_scale),
                                     tuple(self.hparams.crop_ratio), g)[idx.cpu()].to(x.device, x.dtype)
        rois = torch.cat([torch.arange(B, device=x.device, dtype=x.dtype)[:, None], boxes], 1)
        return roi_align(x, rois, output_size=(H, W), spatial_scale=1.0, sampling_ratio=2, aligned=True)

    def on_after_batch_transfer(self, idx: torch.Tensor, dataloader_idx: int = 0):
        """Indices -> (normalised images [B, 3, H, W], text: embeddings [B, D] or token dict)."""
        trainer = self.trainer
        training = trainer is not None and trainer.training
        split = "train" if training or self.val_set is None else "val"
        data = self.train_set if split == "train" else self.val_set
        images = self._images[split]
        if images.device != idx.device:
            images = self._images[split] = images.to(idx.device)
        x = images[idx].float()
        if training and self.hparams.augment:
            x = self.augment(x, idx, trainer.current_epoch)
        x = normalise(x, self.hparams.mean, self.hparams.std)
        k = self.captions_per_image if split == "train" else 1
        if split == "train":
            choice = self._epoch_choices(trainer.current_epoch if trainer is not None else 0, idx.device)[idx]
        else:
            choice = torch.zeros_like(idx)[:, None]
        if split == "train" and self._emb is not None:
            q, s, off = self._device_embeddings(idx.device)
            rows = off[idx][:, None] + choice
            from zoo.vl.embeddings import dequantize

            emb = dequantize(q[rows.flatten()], s[rows.flatten()])
            return x, (emb.view(*rows.shape, -1) if k > 1 else emb)
        texts = [data.captions[i][c] for i, cs in zip(idx.tolist(), choice.tolist()) for c in cs]
        tok = {key: v.to(idx.device) for key, v in self._ensure_tokenizer()(texts).items()}
        return x, ({key: v.view(len(idx), k, -1) for key, v in tok.items()} if k > 1 else tok)

    # -- resumable state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.train_sampler is None:
            return {}
        consumed = None
        trainer = self.trainer
        if trainer is not None and getattr(trainer, "fit_loop", None) is not None:
            consumed = (trainer.fit_loop.epoch_loop.batch_progress.current.processed * self.batch_size
                        * self.train_sampler.num_replicas)
        return {"sampler": self.train_sampler.state_dict(consumed=consumed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("sampler")
        if state is None:
            return
        if self.train_sampler is not None:
            self.train_sampler.load_state_dict(state)
        else:
            self._pending_sampler_state = state
