"""Image and audio classification as one LightningModule: any registered model, built by name.

The task owns what is the same for every modality: the model (``zoo.create_model``), AdamW with no decay on
norms, biases and position embeddings, a per-step cosine schedule with linear warmup, label smoothing,
optional mixup/cutmix (timm), an optional EMA of the weights used for validation and export, freezing
(full fine-tune, linear probe, first N blocks) and top-1/top-5 metrics. Data-specific work (decoding,
augmentation, normalisation) stays in the data module.

Resuming is exact: Lightning restores weights, optimizer, scheduler and loop counters; this module adds the
EMA weights and the RNG states (torch, CUDA, numpy, python) to the checkpoint, so dropout, drop-path and
mixup draw the same numbers after a restart as they would have without one.
"""
from __future__ import annotations

import copy
import logging
import math
import random
import re
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from torchmetrics.classification import MulticlassAccuracy

from zoo.factory import create_model
from zoo.errors import ConfigError
from zoo.recipes.distributed import is_fsdp

log = logging.getLogger(__name__)

# wrappers FSDP, activation checkpointing and torch.compile put into parameter names
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """A parameter name without the wrapper parts distributed strategies insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


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


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float,
                  time_fraction: Optional[float] = None) -> float:
    """LR multiplier: linear warmup over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``.

    ``time_fraction`` (share of a ``trainer.max_time`` budget used) moves the cosine on when the clock is
    ahead of the step count, so a run stopped by its time budget still ends annealed instead of mid-schedule.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    if time_fraction is not None:
        progress = max(progress, time_fraction)
    progress = min(progress, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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


class ClassificationTask(pl.LightningModule):
    """Fine-tune or train a registered zoo model for classification.

    Args:
        model: registered name (``zoo list``), ``name.tag`` for pretrained weights.
        pretrained: load the (default) tag's weights.
        num_classes: classifier size; ``None`` takes the data module's. A value that disagrees with the data
            raises ConfigError.
        in_chans, img_size, drop_path_rate: passed to ``zoo.create_model`` (1 channel and (n_mels, frames) for
            spectrograms).
        checkpoint_path: start from a local weight file instead (any layout the family converter reads).
        model_args: further architecture overrides for the builder (e.g. ``depth``, ``patch_size``).
        lr: peak learning rate. With ``lr_base_batch_size`` it is scaled by global_batch / lr_base_batch_size.
        weight_decay: AdamW decay for weight matrices; 1-D params and ``no_weight_decay()`` names get none.
        warmup_epochs / warmup_steps: linear warmup length (steps win when given); then cosine to ``min_lr``
            over the run's steps, or over ``trainer.max_time`` when the clock runs out first.
        label_smoothing: for the hard-label loss and for mixup's soft targets.
        mixup_alpha / cutmix_alpha: > 0 turns on timm's Mixup for training batches.
        ema_decay: > 0 keeps an EMA of the weights, used for validation, test and export.
        freeze: ``'full'``, ``'linear_probe'`` or ``'freeze_blocks:N'``.
        compile: ``torch.compile`` the model's forward (the state dict keeps its plain keys).
    """

    def __init__(self, model: str = "vit_micro_patch4_32", pretrained: bool = False,
                 num_classes: Optional[int] = None, in_chans: Optional[int] = None,
                 img_size: Optional[Union[int, tuple[int, int]]] = None, drop_path_rate: Optional[float] = None,
                 checkpoint_path: Optional[str] = None, model_args: Optional[dict[str, Any]] = None,
                 lr: float = 1e-3, lr_base_batch_size: Optional[int] = None, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_epochs: float = 0.0,
                 warmup_steps: Optional[int] = None, min_lr: float = 1e-6, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mixup_prob: float = 1.0,
                 mixup_switch_prob: float = 0.5, ema_decay: float = 0.0,
                 freeze: Union[Literal["full", "linear_probe"], str] = "full", compile: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.freeze_mode, self.freeze_n = parse_freeze(freeze)
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay must be in [0, 1) (0 turns EMA off), got {ema_decay}.")
        if lr <= 0:
            raise ConfigError(f"model.lr must be positive, got {lr}.")
        self.model: Optional[nn.Module] = None
        self.mixup_fn = None
        # kept out of the registered submodules so the Lightning state dict holds exactly the model's
        # 'model.*' keys (readable by zoo.hub.read_state_dict); saved in on_save_checkpoint instead
        self.__dict__["_ema"] = None
        self.__dict__["_compiled"] = None
        self._pending_rng: Optional[dict] = None
        self._pending_ema: Optional[dict] = None
        if num_classes is not None:
            self._build(num_classes)

    # -- construction ------------------------------------------------------------------------------------
    def _build(self, num_classes: int) -> None:
        hp = self.hparams
        self.model = create_model(hp.model, pretrained=hp.pretrained, num_classes=num_classes,
                                 in_chans=hp.in_chans, img_size=hp.img_size, checkpoint_path=hp.checkpoint_path,
                                 drop_path_rate=hp.drop_path_rate, **dict(hp.model_args or {}))
        self.hparams["num_classes"] = num_classes
        # decided now, on the unwrapped model: under FSDP (use_orig_params) a weight matrix seen by the optimizer
        # may be a flat 1-D shard, which an ndim test would take for a bias
        skip = set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()
        self._no_decay = {n for n, p in self.model.named_parameters() if p.ndim <= 1 or n in skip}
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
        if hp.ema_decay > 0:
            ema = copy.deepcopy(self.model).eval()
            for p in ema.parameters():
                p.requires_grad_(False)
            self.__dict__["_ema"] = ema
        if hp.compile:
            self.__dict__["_compiled"] = torch.compile(self.model)

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

    def setup(self, stage: str) -> None:
        """Check num_classes against the data module (and take it from there when not given)."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        check_num_classes(self, dm)
        data_classes = getattr(dm, "num_classes", None) if dm is not None else None
        if self.model is None:
            if data_classes is None:
                raise ConfigError("model.num_classes is not set and the data module does not say how many "
                                  "classes it has; set model.num_classes.")
            self._build(int(data_classes))

    # -- optimisation ------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Two AdamW groups: decayed weight matrices; no decay for 1-D params and no_weight_decay() names
        (by name, as the unwrapped model had them)."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if plain_name(name) in self._no_decay else decay).append(p)
        return [{"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def _peak_lr(self) -> float:
        hp = self.hparams
        if not hp.lr_base_batch_size:
            return hp.lr
        dm = self.trainer.datamodule
        bs = getattr(dm, "batch_size", None)
        if bs is None:
            raise ConfigError("model.lr_base_batch_size needs a data module with a batch_size.")
        global_bs = bs * self.trainer.accumulate_grad_batches * self.trainer.world_size
        return hp.lr * global_bs / hp.lr_base_batch_size

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Norm clipping under FSDP goes through the root FSDP module (it knows every shard; Lightning's
        FSDPPrecision refuses ``gradient_clip_algorithm='norm'``); everything else takes Lightning's path."""
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and is_fsdp(self.trainer.strategy):
            self.trainer.strategy.model.clip_grad_norm_(float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        hp = self.hparams
        lr = self._peak_lr()
        # foreach, not fused: Lightning's mixed-precision plugin refuses gradient clipping with fused optimizers
        opt = torch.optim.AdamW(self.param_groups(), lr=lr, betas=tuple(hp.betas),
                                foreach=True if self.device.type == "cuda" else None)
        total = int(self.trainer.estimated_stepping_batches)
        if hp.warmup_steps is not None:
            warmup = int(hp.warmup_steps)
        else:
            batches = self.trainer.num_training_batches
            per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches) if math.isfinite(batches) else 0
            warmup = int(round(hp.warmup_epochs * per_epoch))
        warmup = min(warmup, max(total - 1, 0))
        min_ratio = min(hp.min_lr / lr, 1.0)
        timer = next((cb for cb in self.trainer.callbacks
                      if isinstance(cb, Timer) and cb.time_remaining() is not None), None)

        def factor(step: int) -> float:
            time_fraction = None
            if timer is not None:  # a max_time budget: anneal by whichever runs out first
                elapsed = timer.time_elapsed()
                time_fraction = elapsed / max(elapsed + timer.time_remaining(), 1e-9)
            return warmup_cosine(step, warmup, total, min_ratio, time_fraction)

        log.info("AdamW lr %.3g, wd %.3g; %d warmup + cosine over %d steps%s", lr, hp.weight_decay, warmup, total,
                 " or the max_time budget, whichever ends first" if timer is not None else "")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self._ema is not None:
            self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        step = self.trainer.global_step if self._trainer is not None else 0
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        ema = self._ema
        if next(ema.parameters()).device != self.device:
            ema.to(self.device)
        e_params = [p for p in ema.parameters()]
        m_params = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
        for eb, mb in zip(ema.buffers(), self.model.buffers()):
            eb.copy_(mb)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `is not None`: a compiled module has no truth value (OptimizedModule raises on len())
        return (self._compiled if self._compiled is not None else self.model)(x)

    def eval_model(self) -> nn.Module:
        """The weights used for validation and export: the EMA when enabled."""
        if self._ema is not None:
            if next(self._ema.parameters()).device != self.device:
                self._ema.to(self.device)
            return self._ema
        return self.model

    def on_train_batch_start(self, batch, batch_idx):
        if self.freeze_mode == "linear_probe":  # frozen features: no dropout/drop-path/BN updates in them
            self.model.backbone.eval()

    def training_step(self, batch, batch_idx):
        x, y = self.unpack(batch)
        if self.mixup_fn is not None:
            if x.shape[0] % 2:
                raise ConfigError(f"mixup/cutmix need an even batch size, got {x.shape[0]}; set "
                                  f"data.batch_size even and data.drop_last true.")
            x, soft = self.mixup_fn(x, y)
            logits = self(x)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
            self.metrics["train_top1"](logits.detach(), y)
            self.log("train/top1", self.metrics["train_top1"], on_step=False, on_epoch=True)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        sched = self.lr_schedulers()
        if sched is not None:
            self.log("lr", sched.get_last_lr()[0], on_step=True, on_epoch=False, prog_bar=False)
        return loss

    def _eval_step(self, batch, split: str):
        x, y = self.unpack(batch)
        logits = self.eval_model()(x)
        loss = F.cross_entropy(logits.float(), y)
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=split == "val", sync_dist=True, batch_size=x.shape[0])
        for k in (1, 5):
            metric = self.metrics[f"{split}_top{k}"] if f"{split}_top{k}" in self.metrics else None
            if metric is not None:
                metric(logits, y)
                self.log(f"{split}/top{k}", metric, on_epoch=True, prog_bar=(k == 1 and split == "val"))
        return loss

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = self.unpack(batch)[0] if isinstance(batch, (tuple, list, dict)) else batch
        return self.eval_model()(x).softmax(-1)

    # -- checkpoint state --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._ema is not None:
            checkpoint["zoo_ema"] = {k: v.detach().cpu() for k, v in self._ema.state_dict().items()}
        np_state = np.random.get_state()
        checkpoint["zoo_rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the model exists by now (Lightning restores after setup/configure_model); RNG is applied at train start
        self._pending_rng = checkpoint.get("zoo_rng")
        ema_state = checkpoint.get("zoo_ema")
        if ema_state is not None:
            if self._ema is None:
                log.warning("checkpoint holds EMA weights but model.ema_decay is 0; ignoring them")
            else:
                self._ema.load_state_dict(ema_state)

    def on_train_start(self) -> None:
        state, self._pending_rng = self._pending_rng, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, key, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])

    # -- export ------------------------------------------------------------------------------------------
    def export_state_dict(self, dtype: torch.dtype = torch.float16, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The model's weights (EMA when enabled and ``use_ema``) on CPU, floating tensors cast to ``dtype``."""
        model = self._ema if (use_ema and self._ema is not None) else self.model
        return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
                for k, v in model.state_dict().items()}
