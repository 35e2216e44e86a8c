"""Small images held in memory as one uint8 tensor, augmented and normalised in batch form on the device.

Why: a 1.6M-parameter model on 32-px CIFAR trains at tens of thousands of images per second on one GPU;
decoding a JPEG and running PIL transforms per sample in DataLoader workers cannot keep up. Here the data set
is decoded once (by the data layer's readers: ImageFolder folders or zips, CIFAR pickles, IDX), cached as
``$ZOO_CACHE/datasets/<hash>.pt`` (written atomically), and each batch is a single index into the tensor.
Random crop (zero or reflect padding) and horizontal flip run in ``on_after_batch_transfer``, i.e. on the GPU
when training there, on the CPU in tests.

Resuming is exact: the order is ResumableRandomSampler's (a function of seed and epoch), the sampler skips
the samples a checkpoint says were trained, and the crop offsets and flips of an epoch are a table drawn
from (seed, epoch) and looked up by sample index, so they do not depend on batching, ranks or restarts.

Under DDP/FSDP (``--trainer.strategy ddp --trainer.devices N``) each rank takes a strided, equally long
share of the epoch's permutation (the sampler is a DistributedSampler, so Lightning does not re-wrap it);
the checkpointed position counts all ranks' samples, so a run resumes on another number of processes with
exactly the samples its epoch had left. Evaluation loaders are plain, and Lightning shards them with its
DistributedSampler (which repeats up to N-1 samples to even the ranks out: ``zoo eval`` gives exact figures).
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

from zoo.data.images import open_image_dataset
from zoo.data.sampling import ResumableRandomSampler, shard_kwargs
from zoo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CACHE_VERSION = 1
_VAL_FALLBACK = {"val": ("val", "validation", "test"), "validation": ("validation", "val", "test")}


def resolve_data_path(path: Union[str, os.PathLike], what: str = "data.path") -> Path:
    """A data path, relative ones taken against the current directory; DataError (with the fix) if missing."""
    p = Path(os.path.expandvars(str(path))).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p
    if not p.exists():
        raise DataError(f"{what}={path} does not exist (resolved to {p}). Run from the repository root so the "
                        f"default ../shared/data/... paths resolve, or pass --{what} /absolute/path.")
    return p.resolve()


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


class InMemoryImageDataModule(pl.LightningDataModule):
    """An image classification data set decoded once into memory, with batch-wise crop + flip on the device.

    Args:
        path: training data (ImageFolder folder or .zip, CIFAR pickle folder, IDX folder); relative paths are
            taken against the current directory.
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

    def __init__(self, path: str = "../shared/data/cifar10-train.zip",
                 val_path: Optional[str] = "../shared/data/cifar10-test.zip", test_path: Optional[str] = None,
                 train_split: str = "train", val_split: str = "test", test_split: str = "test",
                 batch_size: int = 512, eval_batch_size: Optional[int] = None,
                 mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD,
                 img_size: Optional[Union[int, tuple[int, int]]] = None, augment: bool = True,
                 crop_padding: int = 4, padding_mode: Literal["reflect", "zeros"] = "reflect", hflip: bool = True,
                 train_subset: Optional[int] = None, val_subset: Optional[int] = None, subset_per_class: bool = True,
                 seed: int = 0, cache: bool = True, decode_workers: Optional[int] = None, drop_last: bool = True,
                 pin_memory: bool = True):
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}.")
        self.path, self.val_path, self.test_path = path, val_path, test_path
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.img_size = None if img_size is None else ((img_size, img_size) if isinstance(img_size, int) else tuple(img_size))
        self.train_data: Optional[TensorImages] = None
        self.val_data: Optional[TensorImages] = None
        self.test_data: Optional[TensorImages] = None
        self.train_sampler: Optional[ResumableRandomSampler] = None
        self._pending_sampler_state: Optional[dict] = None
        self._classes: Optional[list[str]] = None
        self._aug_table: Optional[tuple[int, torch.Tensor]] = None
        self._norm: dict = {}

    # -- classes -----------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class names in label order; available before setup (from the file listing only)."""
        if self._classes is None:
            if self.train_data is not None:
                self._classes = self.train_data.classes
            else:
                ds = open_image_dataset(resolve_data_path(self.path), self.hparams.train_split)
                self._classes = list(ds.classes)
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def data_config(self) -> dict:
        """timm-style preprocessing of the tensors the model sees (for export metadata and eval)."""
        size = self.img_size or (tuple(self.train_data.images.shape[-2:]) if self.train_data is not None else None)
        chans = self.train_data.images.shape[1] if self.train_data is not None else len(self.hparams.mean)
        return {"input_size": (chans, *size) if size else None, "mean": tuple(self.hparams.mean),
                "std": tuple(self.hparams.std), "interpolation": "bilinear", "crop_pct": 1.0}

    # -- loading -----------------------------------------------------------------------------------------
    def _cache_file(self, path: Path, split: str, subset: Optional[int]) -> Path:
        from zoo.hub import cache_dir

        st = path.stat()
        key = json.dumps({"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns, "split": split,
                          "subset": subset, "per_class": self.hparams.subset_per_class,
                          "seed": self.hparams.seed if subset is not None else None,
                          "img_size": self.img_size, "v": CACHE_VERSION}, sort_keys=True)
        return cache_dir() / "datasets" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".pt")

    def _open_split(self, path: Path, split: str, subset: Optional[int]):
        tf = _ToUint8(self.img_size)
        first_error = None
        for s in _VAL_FALLBACK.get(split, (split,)):
            try:
                ds = open_image_dataset(path, s, transform=tf, subset=subset,
                                        subset_per_class=self.hparams.subset_per_class,
                                        subset_seed=self.hparams.seed if subset is not None else None)
                if s != split:
                    log.info("no '%s' split in %s; using '%s'", split, path, s)
                return ds, s
            except DataError as e:
                first_error = first_error or e
                if "not found" not in str(e):
                    break
        raise first_error

    def load(self, path: Union[str, os.PathLike], split: str, subset: Optional[int] = None,
             what: str = "data.path") -> TensorImages:
        """Decode (or read from the cache) one split as a TensorImages."""
        p = resolve_data_path(path, what)
        cache_file = self._cache_file(p, split, subset) if self.hparams.cache else None
        if cache_file is not None and cache_file.exists():
            try:
                blob = torch.load(cache_file, map_location="cpu", weights_only=True)
                log.info("loaded %d cached images of %s[%s] from %s", len(blob["labels"]), p, split, cache_file)
                return TensorImages(blob["images"], blob["labels"], blob["classes"])
            except Exception as e:  # a stale or damaged cache file is rebuilt, never fatal
                log.warning("ignoring unreadable cache file %s (%s); decoding again", cache_file, e)
        ds, used_split = self._open_split(p, split, subset)
        workers = self.hparams.decode_workers
        if workers is None:
            workers = min(16, os.cpu_count() or 1) if len(ds) > 4000 else 0
        log.info("decoding %d images of %s[%s] into memory (%d workers)", len(ds), p, used_split, workers)
        images, labels = decode_dataset(ds, workers, f"{p.name}[{used_split}]")
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            torch.save({"images": images, "labels": labels, "classes": list(ds.classes), "source": str(p),
                        "split": used_split}, tmp)
            os.replace(tmp, cache_file)
            log.info("cached %s[%s] (%.1f MB) at %s", p.name, used_split, images.numel() / 2**20, cache_file)
        return TensorImages(images, labels, ds.classes)

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        if stage in (None, "fit") and self.train_data is None:
            self.train_data = self.load(self.path, hp.train_split, hp.train_subset, "data.path")
            self._classes = self.train_data.classes
        if stage in (None, "fit", "validate") and self.val_data is None:
            self.val_data = self.load(self.val_path or self.path, hp.val_split, hp.val_subset,
                                      "data.val_path" if self.val_path else "data.path")
            self._check_classes(self.val_data)
        if stage in (None, "test", "predict") and self.test_data is None:
            tp = self.test_path or self.val_path or self.path
            self.test_data = self.load(tp, hp.test_split, hp.val_subset, "data.test_path")
            self._check_classes(self.test_data)

    def _check_classes(self, data: TensorImages) -> None:
        if self._classes is None:
            self._classes = data.classes
        elif list(data.classes) != list(self._classes):
            raise DataError(f"Evaluation classes {data.classes[:5]}… differ from training classes "
                            f"{self._classes[:5]}…; train and eval data must share one class list.")

    # -- loaders -----------------------------------------------------------------------------------------
    def _loader(self, data: TensorImages, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        # an own generator: creating the iterator then draws no number from the global RNG, so a resumed
        # run's dropout/mixup streams match an uninterrupted run's. A plain batch_size (not a batch_sampler)
        # keeps the loader one Lightning can shard; each batch is still one __getitems__ index op.
        return DataLoader(data, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
                          collate_fn=_as_batch, num_workers=0,
                          pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(self.hparams.seed))

    def train_dataloader(self) -> DataLoader:
        if self.train_data is None:
            self.setup("fit")
        n = len(self.train_data)
        if self.batch_size > n and self.hparams.drop_last:
            raise ConfigError(f"data.batch_size={self.batch_size} exceeds the {n} training images with "
                              f"drop_last; lower the batch size or set data.drop_last false.")
        world, rank = shard_kwargs(self.trainer)
        if self.batch_size * world > n and self.hparams.drop_last:
            raise ConfigError(f"data.batch_size={self.batch_size} on {world} processes exceeds the {n} training "
                              f"images with drop_last; lower the batch size or set data.drop_last false.")
        s = self.train_sampler
        if s is None or s.n != n or (s.num_replicas, s.rank) != (world, rank):
            self.train_sampler = ResumableRandomSampler(n, self.hparams.seed, world, rank,
                                                        drop_last=self.hparams.drop_last)
        if self._pending_sampler_state is not None:
            self.train_sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        return self._loader(self.train_data, self.batch_size, self.train_sampler, self.hparams.drop_last)

    def _eval_loader(self, data: TensorImages) -> DataLoader:
        return self._loader(data, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        if self.val_data is None:
            self.setup("validate")
        return self._eval_loader(self.val_data)

    def test_dataloader(self) -> DataLoader:
        if self.test_data is None:
            self.setup("test")
        return self._eval_loader(self.test_data)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -- device-side augmentation ------------------------------------------------------------------------
    def _epoch_table(self, epoch: int, n: int) -> torch.Tensor:
        """[n, 3] int64: crop offset y, crop offset x, flip, drawn from (seed, epoch) for every sample."""
        if self._aug_table is None or self._aug_table[0] != epoch or len(self._aug_table[1]) != n:
            g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + 7919 * epoch + 1)
            p = self.hparams.crop_padding
            offs = torch.randint(0, 2 * p + 1, (n, 2), generator=g)
            flip = (torch.rand(n, generator=g) < 0.5).long() if self.hparams.hflip else torch.zeros(n, dtype=torch.long)
            self._aug_table = (epoch, torch.cat([offs, flip[:, None]], 1))
        return self._aug_table[1]

    def augment_batch(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """Random crop (padded by crop_padding) and horizontal flip of a float batch [B, C, H, W]."""
        table = self._epoch_table(epoch, len(self.train_data)).to(x.device)[idx.to(x.device)]
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

    # -- resumable state (Lightning stores it in every checkpoint) ---------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.train_sampler is None:
            return {}
        consumed = None
        trainer = self.trainer
        if trainer is not None and getattr(trainer, "fit_loop", None) is not None:
            # batches Lightning counts as trained (a save in on_train_batch_end includes the current one), on
            # every rank: the sampler's position is global, so it resumes on any number of processes
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
