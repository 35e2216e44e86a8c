"""Lightning data modules for image and audio classification, configurable from LightningCLI YAML.

Both shuffle training data with ResumableRandomSampler: the order is a function of (seed, epoch), and the
module's state_dict (saved by Lightning into every checkpoint) records how far into the epoch training got,
so `fit(ckpt_path=...)` on a mid-epoch checkpoint continues with exactly the unseen samples.

Under DDP/FSDP the sampler shards itself over the ranks (``trainer.distributed_sampler_kwargs``) and the
saved position counts the samples of all ranks, so a checkpoint resumes on another number of processes too.
"""
from __future__ import annotations

import logging
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.audio import FbankFrontEnd, open_audio_dataset
from zoo.data.images import (build_image_transform, detect_image_layout, make_subset, open_image_dataset,
                             resolve_image_data_config)
from zoo.data.sampling import ResumableRandomSampler, shard_kwargs
from zoo.errors import DataError

log = logging.getLogger(__name__)

_VAL_FALLBACK = {"val": ["val", "validation", "test"], "validation": ["validation", "val", "test"]}


class _ClassificationDataModule(pl.LightningDataModule):
    """Shared plumbing: split opening with a val->test fallback, subsets, loaders, the resumable sampler."""

    def __init__(self, path: str, val_path: Optional[str], test_path: Optional[str], train_split: str,
                 val_split: str, test_split: str, batch_size: int, eval_batch_size: Optional[int], num_workers: int,
                 train_subset: Optional[int], val_subset: Optional[int], subset_per_class: bool, seed: int,
                 pin_memory: Optional[bool], drop_last: bool):
        super().__init__()
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
    def _open(self, path: str, split: str, training: bool) -> Dataset:
        raise NotImplementedError

    def _open_listing(self) -> Dataset:
        """The train split opened cheaply (no transforms, no file checks) just for its class names."""
        raise NotImplementedError

    def _open_eval(self, path: Optional[str], split: str) -> Dataset:
        candidates = _VAL_FALLBACK.get(split, [split])
        first_error = None
        for s in candidates:
            try:
                ds = self._open(path or self.path, s, training=False)
                if s != split:
                    log.info("no '%s' split in %s; evaluating on '%s'", split, path or self.path, s)
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
            ds = self._open(self.path, self.train_split, training=True)
            self.train_dataset = make_subset(ds, self.train_subset, self.subset_per_class, self.seed)
            self._class_names = list(ds.classes)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            ds = self._open_eval(self.val_path, self.val_split)
            self.val_dataset = make_subset(ds, self.val_subset, self.subset_per_class, self.seed)
            self._check_classes(ds)
        if stage in (None, "test", "predict") and self.test_dataset is None:
            ds = self._open_eval(self.test_path or self.val_path, self.test_split)
            self.test_dataset = make_subset(ds, self.val_subset, self.subset_per_class, self.seed)
            self._check_classes(ds)

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

    def _loader(self, ds: Optional[Dataset], batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        if ds is None:
            raise DataError("Data module used before setup(); call setup(stage) or let the Trainer do it.")
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available() if self.pin_memory is None else self.pin_memory,
                          drop_last=drop_last,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        shard = shard_kwargs(getattr(self, "trainer", None))
        s = self.train_sampler
        if s is None or s.n != len(self.train_dataset) or (s.num_replicas, s.rank) != shard:
            self.train_sampler = ResumableRandomSampler(len(self.train_dataset), self.seed, *shard,
                                                        drop_last=self.drop_last)
        if self._pending_sampler_state is not None:
            self.train_sampler.load_state_dict(self._pending_sampler_state)
            self._pending_sampler_state = None
        return self._loader(self.train_dataset, self.batch_size, self.train_sampler, self.drop_last)

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

    # Lightning saves this into checkpoints and hands it back on resume
    def state_dict(self) -> dict[str, Any]:
        if self.train_sampler is None:
            return {}
        consumed = None
        trainer = getattr(self, "trainer", None)
        if trainer is not None and getattr(trainer, "fit_loop", None) is not None:
            # batches that count as done on restart (Lightning treats a batch saved on_train_batch_end as done),
            # on every rank: the sampler's position is global
            consumed = (trainer.fit_loop.epoch_loop.batch_progress.current.processed * self.batch_size
                        * self.train_sampler.num_replicas)
        return {"sampler": self.train_sampler.state_dict(consumed=consumed)}

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
                 subset_per_class: bool = True, seed: int = 0, pin_memory: Optional[bool] = None, drop_last: bool = True):
        super().__init__(path, val_path, test_path, train_split, val_split, test_split, batch_size, eval_batch_size,
                         num_workers, train_subset, val_subset, subset_per_class, seed, pin_memory, drop_last)
        self.save_hyperparameters()
        self.augment, self.to_rgb = augment, to_rgb
        self.aug = dict(hflip=hflip, color_jitter=color_jitter, auto_augment=auto_augment, re_prob=re_prob)
        self._overrides = dict(img_size=img_size, mean=mean, std=std, interpolation=interpolation, crop_pct=crop_pct)
        self._given_config = data_config
        self._data_config: Optional[dict] = None

    @property
    def in_chans(self) -> int:
        """1 for grayscale IDX data (unless to_rgb), else 3."""
        return 1 if (detect_image_layout(self.path) == "idx" and not self.to_rgb) else 3

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

    def _open(self, path: str, split: str, training: bool) -> Dataset:
        aug = self.aug if self.augment == "timm" and training else {}
        tf = build_image_transform(self.data_config, is_training=training, style=self.augment, **aug)
        return open_image_dataset(path, split, transform=tf, to_rgb=self.to_rgb)

    def _open_listing(self) -> Dataset:
        return open_image_dataset(self.path, self.train_split, to_rgb=self.to_rgb)


class AudioDataModule(_ClassificationDataModule):
    """Audio classification data (class folders, CSV manifests, FSDD, Speech Commands v2, ESC-50; folder or
    zip) turned into AST fbank images [1, num_mel_bins, target_length].

    stats picks published normalisation (audioset, esc50, speechcommands); for other data pass norm_mean/
    norm_std (compute_fbank_stats). freqm/timem > 0 add SpecAugment to training items only.
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
                 subset_per_class: bool = True, seed: int = 0, pin_memory: Optional[bool] = None, drop_last: bool = True):
        super().__init__(path, val_path, test_path, train_split, val_split, test_split, batch_size, eval_batch_size,
                         num_workers, train_subset, val_subset, subset_per_class, seed, pin_memory, drop_last)
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

    def _open(self, path: str, split: str, training: bool) -> Dataset:
        fe = self.train_front_end if training else self.eval_front_end
        return open_audio_dataset(path, split, front_end=fe, training=training, val_fold=self.val_fold,
                                  check_files=self.check_files)

    def _open_listing(self) -> Dataset:
        return open_audio_dataset(self.path, self.train_split, check_files=False, val_fold=self.val_fold)

