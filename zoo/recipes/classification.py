"""Image and audio classification: the Task (zoo.recipes.task) for any registered classifier.

The base task owns the optimizer, schedule, EMA, clipping, resume and export; this one adds what is
classification's: the class count (from the data module when not given, checked against it when given),
label smoothing, optional mixup/cutmix (timm), freezing (full fine-tune, linear probe, first N blocks),
top-1/top-5 metrics and the export fields a classifier tag needs (classes, input shape, preprocessing).
Data-specific work (decoding, augmentation, normalisation) stays in the data module.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from zoo.errors import ConfigError
from zoo.recipes.task import Task, unreadable_names

log = logging.getLogger(__name__)

FREEZE_HELP = "'full' (train everything), 'linear_probe' (only the head trains) or 'freeze_blocks:N' (stem and first N blocks frozen)"


def parse_freeze(freeze: Union[str, int, None]) -> tuple[str, int]:
    """``'full' | 'linear_probe' | 'freeze_blocks:N'`` (an int N means the same) -> (mode, N)."""
    if freeze is None or freeze == "full":
        return "full", 0
    if isinstance(freeze, int):
        return ("freeze_blocks", freeze) if freeze > 0 else ("full", 0)
    if freeze == "linear_probe":
        return "linear_probe", 0
    m = re.fullmatch(r"freeze_blocks\s*[:=]\s*(\d+)", str(freeze).strip())
    if m:
        return "freeze_blocks", int(m.group(1))
    raise ConfigError(f"model.freeze={freeze!r} is not understood; use {FREEZE_HELP}.")


def _block_index(name: str, matcher: dict) -> Optional[int]:
    """Block number of a parameter from the model's timm-style group_matcher, or name prefixes as fallback."""
    blocks = matcher.get("blocks") if matcher else None
    patterns = [blocks] if isinstance(blocks, str) else [p for p, idx in (blocks or []) if idx is None]
    patterns += [r"^backbone\.(?:blocks|layers)\.(\d+)"]
    for pat in patterns:
        m = re.match(pat, name)
        if m and m.groups():
            return int(m.group(1))
    return None


def _is_stem(name: str, matcher: dict) -> bool:
    stem = matcher.get("stem") if matcher else None
    if isinstance(stem, str) and re.match(stem, name):
        return True
    return bool(re.match(r"^backbone\.(patch_embed|cls_token|pos_embed|reg_token|dist_token)", name))


def check_num_classes(task: "ClassificationTask", datamodule) -> None:
    """ConfigError (naming both numbers and the fix) when model.num_classes disagrees with the data."""
    data_classes = getattr(datamodule, "num_classes", None) if datamodule is not None else None
    given = task.hparams.num_classes
    if data_classes is not None and given is not None and int(given) != int(data_classes):
        names = list(getattr(datamodule, "class_names", []) or [])
        shown = f" ({', '.join(map(str, names[:5]))}{', …' if len(names) > 5 else ''})" if names else ""
        raise ConfigError(
            f"model.num_classes={given} but the data ({type(datamodule).__name__}) has {data_classes} classes"
            f"{shown}. Set model.num_classes: {data_classes}, or remove model.num_classes so it follows the data.")


class ClassificationTask(Task):
    """Fine-tune or train a registered zoo model for classification.

    Args (besides the Task's: model, pretrained, model_args, checkpoint_path, lr, lr_base_batch_size,
    weight_decay, betas, warmup_epochs, warmup_steps, min_lr, ema_decay, compile):
        num_classes: classifier size; ``None`` takes the data module's. A value that disagrees with the data
            raises ConfigError.
        in_chans, img_size, drop_path_rate: passed to ``zoo.create_model`` (1 channel and (n_mels, frames) for
            spectrograms).
        label_smoothing: for the hard-label loss and for mixup's soft targets.
        mixup_alpha / cutmix_alpha: > 0 turns on timm's Mixup for training batches.
        freeze: ``'full'``, ``'linear_probe'`` or ``'freeze_blocks:N'``.
    """

    task_name = "classification"

    def __init__(self, model: str = "vit_micro_patch4_32", num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                 img_size: Optional[Union[int, tuple[int, int]]] = None, drop_path_rate: Optional[float] = None,
                 label_smoothing: float = 0.0, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 mixup_prob: float = 1.0, mixup_switch_prob: float = 0.5,
                 freeze: Union[Literal["full", "linear_probe"], str] = "full", **kwargs):
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()
        self.freeze_mode, self.freeze_n = parse_freeze(freeze)
        self.mixup_fn = None
        if num_classes is not None:
            self.build()

    # -- construction ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from zoo import create_model

        hp = self.hparams
        return create_model(hp.model, pretrained=hp.pretrained, num_classes=hp.num_classes,
                            in_chans=hp.in_chans, img_size=hp.img_size, checkpoint_path=hp.checkpoint_path,
                            drop_path_rate=hp.drop_path_rate, **dict(hp.model_args or {}))

    def on_model_built(self) -> None:
        hp = self.hparams
        num_classes = int(hp.num_classes)
        self._apply_freeze()
        metrics = {}
        for split in ("train", "val", "test"):
            metrics[f"{split}_top1"] = MulticlassAccuracy(num_classes, top_k=1, average="micro")
            if num_classes >= 5 and split != "train":
                metrics[f"{split}_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.metrics = nn.ModuleDict(metrics)
        if hp.mixup_alpha > 0 or hp.cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(mixup_alpha=hp.mixup_alpha, cutmix_alpha=hp.cutmix_alpha, prob=hp.mixup_prob,
                                  switch_prob=hp.mixup_switch_prob, label_smoothing=hp.label_smoothing,
                                  num_classes=num_classes)

    def _apply_freeze(self) -> None:
        if self.freeze_mode == "full":
            return
        head = {id(p) for p in self.model.get_classifier().parameters()} | \
               {id(p) for p in self.model.head.parameters()}
        matcher = self.model.group_matcher() if hasattr(self.model, "group_matcher") else {}
        frozen = 0
        for name, p in self.model.named_parameters():
            if self.freeze_mode == "linear_probe":
                freeze = id(p) not in head
            else:
                idx = _block_index(name, matcher)
                freeze = _is_stem(name, matcher) or (idx is not None and idx < self.freeze_n)
            if freeze:
                p.requires_grad_(False)
                frozen += p.numel()
        if frozen == 0:
            raise ConfigError(f"model.freeze={self.hparams.freeze!r} froze nothing in {self.hparams.model}; "
                              f"use {FREEZE_HELP}.")
        log.info("freeze=%s: %d parameters frozen, %d trainable", self.hparams.freeze, frozen,
                 sum(p.numel() for p in self.model.parameters() if p.requires_grad))

    def check_data(self, datamodule) -> None:
        check_num_classes(self, datamodule)

    def setup(self, stage: str) -> None:
        """Check num_classes against the data module (and take it from there when not given)."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        check_num_classes(self, dm)
        if self.model is None:
            data_classes = getattr(dm, "num_classes", None) if dm is not None else None
            if data_classes is None:
                raise ConfigError("model.num_classes is not set and the data module does not say how many "
                                  "classes it has; set model.num_classes.")
            self.hparams["num_classes"] = int(data_classes)
        super().setup(stage)

    # -- steps -------------------------------------------------------------------------------------------
    @staticmethod
    def unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) from a (x, y, ...) tuple/list or a dict with input/image and label/target keys."""
        if isinstance(batch, dict):
            x = next((batch[k] for k in ("input", "image", "inputs", "x") if k in batch), None)
            y = next((batch[k] for k in ("label", "target", "labels", "y") if k in batch), None)
            if x is None or y is None:
                raise ConfigError(f"batch dict has keys {sorted(batch)}; expected an input and a label key.")
            return x, y
        return batch[0], batch[1]

    def on_train_batch_start(self, batch, batch_idx):
        if self.freeze_mode == "linear_probe":  # frozen features: no dropout/drop-path/BN updates in them
            self.model.backbone.eval()

    def shared_step(self, batch, stage: str):
        x, y = self.unpack(batch)
        if stage == "train" and self.mixup_fn is not None:
            if x.shape[0] % 2 and x.shape[0] > 1 and unreadable_names(batch):
                x, y = x[:-1], y[:-1]  # an unreadable file made the batch odd: mixup pairs need an even one
            if x.shape[0] % 2:
                raise ConfigError(f"mixup/cutmix need an even batch size, got {x.shape[0]}; set "
                                  f"data.batch_size even and data.drop_last true.")
            x, soft = self.mixup_fn(x, y)
            logits = self.net(stage)(x)
            return torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean(), {}
        logits = self.net(stage)(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        metrics = {}
        for k in (1, 5):
            metric = self.metrics[f"{stage}_top{k}"] if f"{stage}_top{k}" in self.metrics else None
            if metric is not None:
                metric(logits.detach(), y)
                metrics[f"top{k}"] = metric
        return loss, metrics

    def predict_step(self, batch, batch_idx):
        x = self.unpack(batch)[0] if isinstance(batch, (tuple, list, dict)) else batch
        return self.eval_model()(x).softmax(-1)

    # -- export ------------------------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, str]:
        """The base fields plus a classifier tag's: classes, input shape, preprocessing, final val/top1."""
        meta = super().export_metadata()
        dm = self.trainer.datamodule if self._trainer is not None else None
        val_top1 = self.trainer.callback_metrics.get("val/top1") if self._trainer is not None else None
        cfg = dict(getattr(self.model, "pretrained_cfg", {}) or {})
        data_cfg = getattr(dm, "data_config", None)
        audio_cfg = dm.front_end_config() if hasattr(dm, "front_end_config") else None
        meta.update({
            "val_top1": "" if val_top1 is None else f"{float(val_top1):.6f}",
            "num_classes": str(self.model.num_classes),
            "class_names": json.dumps(list(getattr(dm, "class_names", []) or [])),
            "in_chans": str(cfg.get("input_size", (None,))[0]),
            "img_size": json.dumps(list(cfg.get("input_size", (None, None, None))[1:])),
            "preprocess": json.dumps(audio_cfg if audio_cfg else (data_cfg or {}), default=list),
        })
        return meta
