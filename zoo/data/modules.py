"""Lightning data modules for image and audio classification, configurable from LightningCLI YAML: the one
home of the zoo's data modules (the recipes import them).

- ImageDataModule / AudioDataModule stream from files (folders or zips) through DataLoader workers, with
  timm's transforms or the AST fbank front end.
- InMemoryImageDataModule decodes a small-image set once into one uint8 tensor (cached under
  ``$ZOO_CACHE/datasets``) and augments whole batches on the device: a 1.6M-parameter model on 32-px CIFAR
  trains at tens of thousands of images per second on one GPU, faster than per-sample decoding can feed it.

The streaming modules skip files they cannot decode, as ``zoo eval`` does (zoo.data.sources): their batches
are ``(inputs, labels, names of the unreadable files left out)``, ``(None, None, names)`` when none was
readable (the task skips that step), and zoo fit's UnreadableFiles callback logs one line per epoch and raises
DataError above ``max_bad`` (a fraction, default 1%).

``path``/``val_path``/``test_path`` take a path or a data set name (``cifar10``, ``fsdd``: zoo.data.catalog,
files under ``$ZOO_DATA``). All three shuffle training data with ResumableRandomSampler: the order is a
function of (seed, epoch), and the module's ``state_dict`` (Lightning stores it in every checkpoint) records
how far into the epoch training got, so ``fit(ckpt_path=...)`` on a mid-epoch checkpoint continues with
exactly the unseen samples.

Under DDP/FSDP the sampler shards itself over the ranks (``trainer.distributed_sampler_kwargs``; it is a
DistributedSampler, so Lightning does not re-wrap it) and the saved position counts the samples of all ranks,
so a checkpoint resumes on another number of processes too. Evaluation loaders are plain, and Lightning shards
them with its DistributedSampler (which repeats up to N-1 samples to even the ranks out: ``zoo eval`` gives
exact figures).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from zoo.data.audio import FbankFrontEnd, open_audio_dataset
from zoo.data.catalog import resolve_path
from zoo.data.images import (build_image_transform, detect_image_layout, make_subset, open_image_dataset,
                             resolve_image_data_config)
from zoo.data.sampling import ResumableRandomSampler, shard_kwargs
from zoo.data.sources import SkipUnreadable, collate_skipping
from zoo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_VAL_FALLBACK = {"val": ["val", "validation", "test"], "validation": ["validation", "val", "test"]}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CACHE_VERSION = 1


class ResumableLoader(DataLoader):
    """The training DataLoader, marked resumable for Lightning.

    Its position is its data module's state (the sampler's (epoch, consumed), in ``state_dict``), which
    Lightning restores before it builds the loaders, so a mid-epoch resume continues exactly. Lightning's
    check before warning "dataloader is not resumable" looks only at the loader, though; this one says it
    is. It holds no state of its own (an empty dict): Lightning does not restore loader states when
    ``estimated_stepping_batches`` built the loader first (the schedule does), and one home for the position
    is enough."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to load: the position comes back through the data module."""


class _ClassificationDataModule(pl.LightningDataModule):
    """Shared plumbing: data set names or paths, split opening with a val->test fallback, subsets, class
    checks, loaders and the resumable training sampler."""

    def __init__(self, path: str, val_path: Optional[str], test_path: Optional[str], train_split: str,
                 val_split: str, test_split: str, batch_size: int, eval_batch_size: Optional[int], num_workers: int,
                 train_subset: Optional[int], val_subset: Optional[int], subset_per_class: bool, seed: int,
                 pin_memory: Optional[bool], drop_last: bool, max_bad: float = 0.01):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}.")
        if not 0 <= max_bad <= 1:
            raise ConfigError(f"data.max_bad must be a fraction in [0, 1] (e.g. 0.05 for 5%), got {max_bad}.")
        self.max_bad = float(max_bad)
        self.path, self.val_path, self.test_path = path, val_path, test_path
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or batch_size, num_workers
        self.train_subset, self.val_subset, self.subset_per_class = train_subset, val_subset, subset_per_class
        self.seed, self.pin_memory, self.drop_last = seed, pin_memory, drop_last
        self.train_dataset: Optional[Dataset] = None
        self.val_dataset: Optional[Dataset] = None
        self.test_dataset: Optional[Dataset] = None
        self.train_sampler: Optional[ResumableRandomSampler] = None
        self._pending_sampler_state: Optional[dict] = None
        self._class_names: Optional[list[str]] = None

    # subclasses provide these
    def _open(self, path: Path, split: str, training: bool) -> Dataset:
        raise NotImplementedError

    def _open_listing(self) -> Dataset:
        """The train split opened cheaply (no transforms, no file checks) just for its class names."""
        raise NotImplementedError

    def _dataset(self, path: Path, split: str, training: bool, subset: Optional[int]) -> Dataset:
        """One split, cut to ``subset`` (n per class with subset_per_class, else n in total); a file that cannot
        be decoded becomes a marker the loader drops and counts (zoo.data.sources.SkipUnreadable), as in
        ``zoo eval``."""
        return SkipUnreadable(make_subset(self._open(path, split, training), subset, self.subset_per_class, self.seed))

    def resolve(self, path: Optional[str], split: str, what: str) -> Path:
        """``path`` (a data set name or a path; None: data.path) as the file or folder holding ``split``."""
        return resolve_path(path or self.path, what if path else "data.path", split)

    def _open_split(self, path: Optional[str], split: str, what: str, subset: Optional[int],
                    training: bool = False) -> Dataset:
        """The split, or for 'val'/'validation' the first of val, validation, test that exists (CIFAR has
        no val split)."""
        first_error = None
        for s in ([split] if training else _VAL_FALLBACK.get(split, [split])):
            try:
                ds = self._dataset(self.resolve(path, s, what), s, training, subset)
                if s != split:
                    log.info("no '%s' split in %s; using '%s'", split, path or self.path, s)
                return ds
            except DataError as e:
                first_error = first_error or e
                if "not found" not in str(e):
                    break
        raise first_error

    def prepare_data(self) -> None:
        """Nothing to download: the zoo reads data in place."""

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._open_split(self.path, self.train_split, "data.path", self.train_subset,
                                                  training=True)
            self._class_names = list(self.train_dataset.classes)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            self.val_dataset = self._open_split(self.val_path, self.val_split, "data.val_path", self.val_subset)
            self._check_classes(self.val_dataset)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            self.test_dataset = self._open_split(self.test_path or self.val_path, self.test_split,
                                                 "data.test_path", self.val_subset)
            self._check_classes(self.test_dataset)

    def _check_classes(self, ds: Dataset) -> None:
        if self._class_names is None:
            self._class_names = list(ds.classes)
        elif list(ds.classes) != self._class_names:
            raise DataError(f"Evaluation classes {list(ds.classes)[:5]}… differ from training classes "
                            f"{self._class_names[:5]}…; the splits must share one class list.")

    @property
    def class_names(self) -> list[str]:
        """Class names in label order; available before setup (read from the file listing only)."""
        if self._class_names is None:
            self._class_names = list(self._open_listing().classes)
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _loader_kwargs(self) -> dict[str, Any]:
        """DataLoader arguments besides data, batch size, sampler and drop_last. Batches are (inputs, labels,
        names of the unreadable files left out); (None, None, names) when all were unreadable."""
        return dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0, collate_fn=collate_skipping,
                    pin_memory=torch.cuda.is_available() if self.pin_memory is None else self.pin_memory)

    def _loader(self, ds: Optional[Dataset], batch_size: int) -> DataLoader:
        if ds is None:
            raise DataError("Data module used before setup(); call setup(stage) or let the Trainer do it.")
        return DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=False, **self._loader_kwargs())

    def _consumed(self) -> Optional[int]:
        """Samples (all ranks) the model has trained on in this epoch, as Lightning counts batches (a save in
        on_train_batch_end includes the current one); None outside a fit."""
        trainer = self.trainer
        if trainer is None or getattr(trainer, "fit_loop", None) is None or self.train_sampler is None:
            return None
        return (trainer.fit_loop.epoch_loop.batch_progress.current.processed * self.batch_size
                * self.train_sampler.num_replicas)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        n = len(self.train_dataset)
        world, rank = shard_kwargs(self.trainer)
        if self.drop_last and self.batch_size * world > n:
            on = f" on {world} processes" if world > 1 else ""
            raise ConfigError(f"data.batch_size={self.batch_size}{on} exceeds the {n} training samples with "
                              f"drop_last; lower the batch size or set data.drop_last false.")
        s = self.train_sampler
        if s is None or s.n != n or (s.num_replicas, s.rank) != (world, rank):
            self.train_sampler = ResumableRandomSampler(n, self.seed, world, rank, drop_last=self.drop_last)
        if self._pending_sampler_state is not None:
            self.train_sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        return ResumableLoader(self.train_dataset, batch_size=self.batch_size, sampler=self.train_sampler,
                               shuffle=False, drop_last=self.drop_last, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return self._loader(self.val_dataset, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None:
            self.setup("test")
        return self._loader(self.test_dataset, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # Lightning saves this into checkpoints and hands it back on resume (before the loaders are built)
    def state_dict(self) -> dict[str, Any]:
        if self.train_sampler is None:
            return {}
        return {"sampler": self.train_sampler.state_dict(consumed=self._consumed())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "sampler" not in state_dict:
            return
        if self.train_sampler is not None:
            self.train_sampler.load_state_dict(state_dict["sampler"])
        else:
            self._pending_sampler_state = state_dict["sampler"]


class ImageDataModule(_ClassificationDataModule):
    """Image classification data: ImageFolder folders/zips, CIFAR pickles or Fashion-MNIST IDX (see
    open_image_dataset), with timm transforms from a model's data config.

    data_config is a model's pretrained_cfg-style dict (input_size, mean, std, interpolation, crop_pct);
    img_size/mean/std/interpolation/crop_pct override it. augment: 'timm' (create_transform with hflip,
    color_jitter, auto_augment, re_prob), 'cifar' (pad-4 random crop + flip; use it for 32-px training) or
    'none'. val_path/test_path default to path, whose 'val' split falls back to 'test' when absent.
    Undecodable files are skipped and counted; more than ``max_bad`` (a fraction) of them raises DataError.
    """

    def __init__(self, path: str, val_path: Optional[str] = None, test_path: Optional[str] = None,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 batch_size: int = 128, eval_batch_size: Optional[int] = None, num_workers: int = 4,
                 img_size: Optional[Union[int, tuple[int, int]]] = None, data_config: Optional[dict] = None,
                 mean: Optional[tuple[float, ...]] = None, std: Optional[tuple[float, ...]] = None,
                 interpolation: Optional[str] = None, crop_pct: Optional[float] = None,
                 augment: Literal["timm", "cifar", "none"] = "timm", hflip: float = 0.5,
                 color_jitter: float = 0.4, auto_augment: Optional[str] = None, re_prob: float = 0.0,
                 to_rgb: bool = False, train_subset: Optional[int] = None, val_subset: Optional[int] = None,
                 subset_per_class: bool = True, seed: int = 0, pin_memory: Optional[bool] = None, drop_last: bool = True,
                 max_bad: float = 0.01):
        super().__init__(path, val_path, test_path, train_split, val_split, test_split, batch_size, eval_batch_size,
                         num_workers, train_subset, val_subset, subset_per_class, seed, pin_memory, drop_last, max_bad)
        self.save_hyperparameters()
        self.augment, self.to_rgb = augment, to_rgb
        self.aug = dict(hflip=hflip, color_jitter=color_jitter, auto_augment=auto_augment, re_prob=re_prob)
        self._overrides = dict(img_size=img_size, mean=mean, std=std, interpolation=interpolation, crop_pct=crop_pct)
        self._given_config = data_config
        self._data_config: Optional[dict] = None

    @property
    def in_chans(self) -> int:
        """1 for grayscale IDX data (unless to_rgb), else 3."""
        layout = detect_image_layout(self.resolve(None, self.train_split, "data.path"))
        return 1 if (layout == "idx" and not self.to_rgb) else 3

    @property
    def data_config(self) -> dict:
        """timm data config actually used (input_size, mean, std, interpolation, crop_pct, crop_mode)."""
        if self._data_config is None:
            cfg = dict(self._given_config or {})
            chans = self.in_chans
            if "input_size" in cfg:
                cfg["input_size"] = (chans, *tuple(cfg["input_size"])[-2:])
            elif self._overrides["img_size"] is None:
                cfg["input_size"] = (chans, 224, 224)
            ov = dict(self._overrides)
            if ov["img_size"] is not None:
                ov["input_size"] = (chans,)
            cfg = resolve_image_data_config(cfg, **ov)
            for key in ("mean", "std"):
                if len(cfg[key]) != chans:
                    if chans == 1:
                        cfg[key] = (sum(cfg[key]) / len(cfg[key]),)
                    else:
                        raise DataError(f"{key}={cfg[key]} has {len(cfg[key])} values for {chans}-channel images.")
            self._data_config = cfg
        return self._data_config

    def _open(self, path: Path, split: str, training: bool) -> Dataset:
        aug = self.aug if self.augment == "timm" and training else {}
        tf = build_image_transform(self.data_config, is_training=training, style=self.augment, **aug)
        return open_image_dataset(path, split, transform=tf, to_rgb=self.to_rgb)

    def _open_listing(self) -> Dataset:
        return open_image_dataset(self.resolve(None, self.train_split, "data.path"), self.train_split,
                                  to_rgb=self.to_rgb)


class AudioDataModule(_ClassificationDataModule):
    """Audio classification data (class folders, CSV manifests, FSDD, Speech Commands v2, ESC-50; folder or
    zip) turned into AST fbank images [1, num_mel_bins, target_length].

    stats picks published normalisation (audioset, esc50, speechcommands); for other data pass norm_mean/
    norm_std (compute_fbank_stats). freqm/timem > 0 add SpecAugment to training items only. Undecodable
    files are skipped and counted; more than ``max_bad`` (a fraction) of them raises DataError.
    """

    def __init__(self, path: str, val_path: Optional[str] = None, test_path: Optional[str] = None,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 batch_size: int = 32, eval_batch_size: Optional[int] = None, num_workers: int = 4,
                 sample_rate: int = 16000, num_mel_bins: int = 128, target_length: int = 1024,
                 frame_shift: float = 10.0, frame_length: float = 25.0,
                 stats: Optional[Literal["audioset", "esc50", "speechcommands"]] = "audioset",
                 norm_mean: Optional[float] = None, norm_std: Optional[float] = None,
                 freqm: int = 0, timem: int = 0, val_fold: Optional[int] = None, check_files: bool = True,
                 train_subset: Optional[int] = None, val_subset: Optional[int] = None,
                 subset_per_class: bool = True, seed: int = 0, pin_memory: Optional[bool] = None, drop_last: bool = True,
                 max_bad: float = 0.01):
        super().__init__(path, val_path, test_path, train_split, val_split, test_split, batch_size, eval_batch_size,
                         num_workers, train_subset, val_subset, subset_per_class, seed, pin_memory, drop_last, max_bad)
        self.save_hyperparameters()
        if norm_mean is not None or norm_std is not None:
            stats = None
        fe_kw = dict(sample_rate=sample_rate, num_mel_bins=num_mel_bins, target_length=target_length,
                     frame_shift=frame_shift, frame_length=frame_length, stats=stats, mean=norm_mean, std=norm_std)
        self.train_front_end = FbankFrontEnd(**fe_kw, freqm=freqm, timem=timem)
        self.eval_front_end = FbankFrontEnd(**fe_kw)
        self.val_fold, self.check_files = val_fold, check_files

    def front_end_config(self) -> dict:
        """The eval front end's parameters (what a pretrained tag stores)."""
        return self.eval_front_end.front_end_config()

    @property
    def img_size(self) -> tuple[int, int]:
        """(n_mels, frames): the img_size a backbone with in_chans=1 needs."""
        return self.eval_front_end.num_mel_bins, self.eval_front_end.target_length

    def _open(self, path: Path, split: str, training: bool) -> Dataset:
        fe = self.train_front_end if training else self.eval_front_end
        return open_audio_dataset(path, split, front_end=fe, training=training, val_fold=self.val_fold,
                                  check_files=self.check_files)

    def _open_listing(self) -> Dataset:
        return open_audio_dataset(self.resolve(None, self.train_split, "data.path"), self.train_split,
                                  check_files=False, val_fold=self.val_fold)


# ------------------------------------------------------------------------------------------ in memory
class _ToUint8:
    """PIL image -> uint8 tensor [C, H, W], resized (bilinear) when a size is given and differs."""

    def __init__(self, size: Optional[tuple[int, int]] = None):
        self.size = size

    def __call__(self, img) -> torch.Tensor:
        if self.size is not None and (img.size[1], img.size[0]) != tuple(self.size):
            from PIL import Image
            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _stack(items):
    xs, ys = zip(*items)
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise DataError(f"Images have different sizes {sorted(shapes)[:4]}; set data.img_size to resize them "
                        f"once while caching.")
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def decode_dataset(ds: Dataset, workers: int = 0, desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every item of a (transform=_ToUint8) data set into ([N, C, H, W] uint8, [N] int64)."""
    # own generator: decoding (a cache miss) must not advance the global RNG, or model init would differ
    # between a first run and a rerun
    loader = DataLoader(ds, batch_size=256, num_workers=workers, collate_fn=_stack, generator=torch.Generator())
    xs, ys = [], []
    for i, (x, y) in enumerate(loader):
        xs.append(x)
        ys.append(y)
        if i % 40 == 39:
            log.info("decoding %s: %d/%d images", desc, sum(len(v) for v in ys), len(ds))
    if not xs:
        raise DataError(f"{desc} holds no images.")
    return torch.cat(xs), torch.cat(ys)


class TensorImages(Dataset):
    """uint8 images [N, C, H, W] and labels [N]; a batch is fetched with one index op (``__getitems__``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]):
        self.images, self.labels, self.classes = images, labels, list(classes)
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], torch.tensor(i)

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.images[idx], self.labels[idx], idx


def _as_batch(batch):
    """collate_fn for TensorImages.__getitems__: already a batch."""
    return batch


class InMemoryImageDataModule(_ClassificationDataModule):
    """An image classification data set decoded once into memory, with batch-wise crop + flip on the device.

    The set is decoded by the data layer's readers (ImageFolder folders or zips, CIFAR pickles, IDX), cached
    as ``$ZOO_CACHE/datasets/<hash>.pt`` (written atomically), and each batch is a single index into the
    tensor. Random crop (zero or reflect padding) and horizontal flip run in ``on_after_batch_transfer``, i.e.
    on the GPU when training there. Resuming is exact: besides the sampler's position, the crop offsets and
    flips of an epoch are a table drawn from (seed, epoch) and looked up by sample index, so they do not
    depend on batching, ranks or restarts.

    Args:
        path: training data: a data set name (``cifar10``, under ``$ZOO_DATA``) or a path (ImageFolder folder
            or .zip, CIFAR pickle folder, IDX folder), relative ones taken against the current directory.
        val_path / test_path: evaluation data (default: ``path``; test defaults to val). A 'val' split that
            does not exist falls back to 'test' (CIFAR has none).
        batch_size / eval_batch_size: per-device batch sizes.
        mean / std: normalisation applied on the device (default CIFAR-10's).
        img_size: resize once while caching (None keeps the stored size; all images must share it).
        augment: random crop with ``crop_padding`` pixels (``padding_mode`` reflect or zeros) + hflip.
        train_subset / val_subset: tiny runs (n per class with ``subset_per_class``, else n in total).
        cache: keep the decoded tensors under ``$ZOO_CACHE/datasets``.
        decode_workers: processes for the one-time decode (None: up to 16 for large sets, 0 for small).
    """

    def __init__(self, path: str = "cifar10", val_path: Optional[str] = "cifar10", test_path: Optional[str] = None,
                 train_split: str = "train", val_split: str = "test", test_split: str = "test",
                 batch_size: int = 512, eval_batch_size: Optional[int] = None,
                 mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD,
                 img_size: Optional[Union[int, tuple[int, int]]] = None, augment: bool = True,
                 crop_padding: int = 4, padding_mode: Literal["reflect", "zeros"] = "reflect", hflip: bool = True,
                 train_subset: Optional[int] = None, val_subset: Optional[int] = None, subset_per_class: bool = True,
                 seed: int = 0, cache: bool = True, decode_workers: Optional[int] = None, drop_last: bool = True,
                 pin_memory: bool = True):
        super().__init__(path, val_path, test_path, train_split, val_split, test_split, batch_size, eval_batch_size,
                         0, train_subset, val_subset, subset_per_class, seed, pin_memory, drop_last)
        self.save_hyperparameters()
        self.img_size = None if img_size is None else ((img_size, img_size) if isinstance(img_size, int) else tuple(img_size))
        self._aug_table: Optional[tuple[int, torch.Tensor]] = None
        self._norm: dict = {}

    @property
    def data_config(self) -> dict:
        """timm-style preprocessing of the tensors the model sees (for export metadata and eval)."""
        data = self.train_dataset
        size = self.img_size or (tuple(data.images.shape[-2:]) if data is not None else None)
        chans = data.images.shape[1] if data is not None else len(self.hparams.mean)
        return {"input_size": (chans, *size) if size else None, "mean": tuple(self.hparams.mean),
                "std": tuple(self.hparams.std), "interpolation": "bilinear", "crop_pct": 1.0}

    # -- loading -----------------------------------------------------------------------------------------
    def _open_listing(self) -> Dataset:
        return open_image_dataset(self.resolve(None, self.train_split, "data.path"), self.train_split)

    def _cache_file(self, path: Path, split: str, subset: Optional[int]) -> Path:
        from zoo.hub import cache_dir

        st = path.stat()
        key = json.dumps({"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns, "split": split,
                          "subset": subset, "per_class": self.subset_per_class,
                          "seed": self.seed if subset is not None else None,
                          "img_size": self.img_size, "v": CACHE_VERSION}, sort_keys=True)
        return cache_dir() / "datasets" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".pt")

    def _dataset(self, path: Path, split: str, training: bool, subset: Optional[int]) -> TensorImages:
        """Decode (or read from the cache) one split, the subset taken before decoding."""
        cache_file = self._cache_file(path, split, subset) if self.hparams.cache else None
        if cache_file is not None and cache_file.exists():
            try:
                blob = torch.load(cache_file, map_location="cpu", weights_only=True)
                log.info("loaded %d cached images of %s[%s] from %s", len(blob["labels"]), path, split, cache_file)
                return TensorImages(blob["images"], blob["labels"], blob["classes"])
            except Exception as e:  # a stale or damaged cache file is rebuilt, never fatal
                log.warning("ignoring unreadable cache file %s (%s); decoding again", cache_file, e)
        ds = open_image_dataset(path, split, transform=_ToUint8(self.img_size), subset=subset,
                                subset_per_class=self.subset_per_class,
                                subset_seed=self.seed if subset is not None else None)
        workers = self.hparams.decode_workers
        if workers is None:
            workers = min(16, os.cpu_count() or 1) if len(ds) > 4000 else 0
        log.info("decoding %d images of %s[%s] into memory (%d workers)", len(ds), path, split, workers)
        images, labels = decode_dataset(ds, workers, f"{path.name}[{split}]")
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            torch.save({"images": images, "labels": labels, "classes": list(ds.classes), "source": str(path),
                        "split": split}, tmp)
            os.replace(tmp, cache_file)
            log.info("cached %s[%s] (%.1f MB) at %s", path.name, split, images.numel() / 2**20, cache_file)
        return TensorImages(images, labels, ds.classes)

    # -- loaders -----------------------------------------------------------------------------------------
    def _loader_kwargs(self) -> dict[str, Any]:
        # in the main process (a batch is one index op), with an own generator: creating the iterator then
        # draws no number from the global RNG, so a resumed run's dropout/mixup streams match an
        # uninterrupted run's. A plain batch_size (not a batch_sampler) keeps the loader one Lightning can shard.
        return dict(collate_fn=_as_batch, num_workers=0, pin_memory=self.pin_memory and torch.cuda.is_available(),
                    generator=torch.Generator().manual_seed(self.seed))

    # -- device-side augmentation ------------------------------------------------------------------------
    def _epoch_table(self, epoch: int, n: int) -> torch.Tensor:
        """[n, 3] int64: crop offset y, crop offset x, flip, drawn from (seed, epoch) for every sample."""
        if self._aug_table is None or self._aug_table[0] != epoch or len(self._aug_table[1]) != n:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * epoch + 1)
            p = self.hparams.crop_padding
            offs = torch.randint(0, 2 * p + 1, (n, 2), generator=g)
            flip = (torch.rand(n, generator=g) < 0.5).long() if self.hparams.hflip else torch.zeros(n, dtype=torch.long)
            self._aug_table = (epoch, torch.cat([offs, flip[:, None]], 1))
        return self._aug_table[1]

    def augment_batch(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """Random crop (padded by crop_padding) and horizontal flip of a float batch [B, C, H, W]."""
        table = self._epoch_table(epoch, len(self.train_dataset)).to(x.device)[idx.to(x.device)]
        B, C, H, W = x.shape
        p = self.hparams.crop_padding
        if p > 0:
            mode = "reflect" if self.hparams.padding_mode == "reflect" else "constant"
            x = F.pad(x, (p, p, p, p), mode=mode)
        ar_h = torch.arange(H, device=x.device)
        ar_w = torch.arange(W, device=x.device)
        rows = table[:, 0:1] + ar_h                                           # [B, H]
        flip = table[:, 2:3].bool()
        cols = table[:, 1:2] + torch.where(flip, (W - 1) - ar_w, ar_w)        # [B, W]
        b = torch.arange(B, device=x.device)[:, None, None]
        out = x.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]    # [B, H, W, C]
        return out.permute(0, 3, 1, 2).contiguous()

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.shape[1])
        if key not in self._norm:
            mean, std = list(self.hparams.mean), list(self.hparams.std)
            if len(mean) != x.shape[1]:
                if x.shape[1] == 1:
                    mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
                else:
                    raise ConfigError(f"data.mean/std have {len(mean)} values for {x.shape[1]}-channel images.")
            self._norm[key] = (torch.tensor(mean, device=x.device).view(1, -1, 1, 1) * 255.0,
                               torch.tensor(std, device=x.device).view(1, -1, 1, 1) * 255.0)
        mean, std = self._norm[key]
        return (x - mean) / std

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        x, y, idx = batch
        x = x.float()
        trainer = self.trainer
        if trainer is not None and trainer.training and self.hparams.augment:
            x = self.augment_batch(x, idx, trainer.current_epoch)
        return self._normalise(x), y
