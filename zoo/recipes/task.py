"""The base of every training task: what classification, language modelling and contrastive training share.

A task is a LightningModule that builds a registered model by name and trains it. The base owns the parts
that do not depend on the kind of model: the model build (``zoo.create_model``), AdamW with no decay on
norms, biases and ``no_weight_decay()`` names, a per-step linear warmup + cosine schedule (which also anneals
by a ``trainer.max_time`` budget), an optional EMA of the weights (used for validation, test and export),
gradient clipping that works under FSDP, exact resume (EMA and RNG states in the checkpoint), the auxiliary
losses modules record during the forward (backbones.layers.aux_loss), and the weights and metadata of the
export. A subclass says what a batch means:

    class MyTask(Task):
        def shared_step(self, batch, stage):            # stage: 'train', 'val' or 'test'
            x, y = batch
            out = self.net(stage)(x)                    # the compiled model in training, the EMA in eval
            return F.mse_loss(out, y), {"mae": (out - y).abs().mean()}

The base's training/validation/test steps call ``shared_step``, except for a batch whose files were all
unreadable (zoo.data.sources.collate_skipping's ``(None, None, names)``), which is skipped; the training loss is the task loss plus the
sum of every aux loss collected from the model (each logged as ``train/aux/<name>``, statistics as
``train/stat/<name>``); the task loss as ``<stage>/loss`` (in training: the total optimised) and each metric as
``<stage>/<name>``. A metric may be a tensor or a torchmetrics Metric (logged per epoch, Lightning resets it).

Interface note: the schedule's floor is ``min_lr`` (an absolute learning rate, as in timm and the shipped
recipes), not a ratio; the ratio is min_lr / peak lr. Subclasses that need the data before building the model
(a class count, a vocabulary) leave ``self.model`` None in ``__init__``; ``setup`` builds it then.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import Timer

from backbones.layers.aux_loss import collect_aux_losses, collect_aux_stats
from zoo.errors import ConfigError
from zoo.distributed import is_fsdp

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")

# wrappers FSDP, activation checkpointing and torch.compile put into parameter names
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """A parameter name without the wrapper parts distributed strategies insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


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


def batch_size_of(batch: Any) -> Optional[int]:
    """Leading size of the first tensor in a batch (tensor, tuple/list or dict), for logging and throughput."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    for item in items:
        n = batch_size_of(item)
        if n is not None:
            return n
    return None


def unreadable_names(batch: Any) -> list[str]:
    """Names of the unreadable files a zoo.data.sources.collate_skipping batch ``(x, y, names)`` left out."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3 and isinstance(batch[2], list):
        return batch[2]
    return []


def all_unreadable(batch: Any) -> bool:
    """True for a batch whose every file was unreadable: collate_skipping's ``(None, None, names)``."""
    return batch[0] is None if unreadable_names(batch) else False


class Task(pl.LightningModule):
    """What every task shares (see the module docstring); subclasses implement ``shared_step``.

    Args:
        model: registered name (``zoo list``), ``name.tag`` for pretrained weights.
        pretrained: load the (default) tag's weights.
        model_args: further builder arguments (e.g. ``depth``, ``patch_size``).
        checkpoint_path: start from a local weight file instead (any layout the family converter reads).
        lr: peak learning rate. With ``lr_base_batch_size`` it is scaled by global_batch / lr_base_batch_size.
        weight_decay: AdamW decay for weight matrices; 1-D params and ``no_weight_decay()`` names get none.
        warmup_epochs / warmup_steps: linear warmup length (steps win when given); then cosine to ``min_lr``
            over the run's steps, or over ``trainer.max_time`` when the clock runs out first.
        ema_decay: > 0 keeps an EMA of the weights, used for validation, test and export.
        compile: ``torch.compile`` the model's forward (the state dict keeps its plain keys).
    """

    task_name = "task"  # recorded in the export; subclasses name themselves

    def __init__(self, model: str = "vit_micro_patch4_32", pretrained: bool = False,
                 model_args: Optional[dict[str, Any]] = None, checkpoint_path: Optional[str] = None,
                 lr: float = 1e-3, lr_base_batch_size: Optional[int] = None, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_epochs: float = 0.0,
                 warmup_steps: Optional[int] = None, min_lr: float = 1e-6, ema_decay: float = 0.0,
                 compile: bool = False):
        super().__init__()
        # a subclass's save_hyperparameters() (called after this) records its own arguments as well
        self.save_hyperparameters()
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay must be in [0, 1) (0 turns EMA off), got {ema_decay}.")
        if lr <= 0:
            raise ConfigError(f"model.lr must be positive, got {lr}.")
        if min_lr < 0:
            raise ConfigError(f"model.min_lr must be >= 0, got {min_lr}.")
        self.model: Optional[nn.Module] = None
        # kept out of the registered submodules so the Lightning state dict holds exactly the model's
        # 'model.*' keys (readable by zoo.hub.read_state_dict); saved in on_save_checkpoint instead
        self.__dict__["_ema"] = None
        self.__dict__["_compiled"] = None
        self._no_decay: set[str] = set()
        self._pending_rng: Optional[dict] = None

    # -- construction ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The model to train; subclasses add their own builder arguments (class count, input shape)."""
        from zoo import create_model

        hp = self.hparams
        return create_model(hp.model, pretrained=hp.pretrained, checkpoint_path=hp.checkpoint_path,
                            **dict(hp.model_args or {}))

    def on_model_built(self) -> None:
        """Hook after ``build`` set ``self.model`` (before EMA and compile): freezing, metrics, extras."""

    def build(self) -> None:
        """Build the model and what depends on it: the no-decay names, the EMA copy, the compiled forward."""
        self.model = self.build_model()
        # decided now, on the unwrapped model: under FSDP (use_orig_params) a weight matrix seen by the optimizer
        # may be a flat 1-D shard, which an ndim test would take for a bias
        skip = set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()
        self._no_decay = {n for n, p in self.model.named_parameters() if p.ndim <= 1 or n in skip}
        self.on_model_built()
        if self.hparams.ema_decay > 0:
            ema = copy.deepcopy(self.model).eval()
            for p in ema.parameters():
                p.requires_grad_(False)
            self.__dict__["_ema"] = ema
        if self.hparams.compile:
            self.__dict__["_compiled"] = torch.compile(self.model)

    def check_data(self, datamodule) -> None:
        """Raise ConfigError when the task's arguments disagree with the data (``zoo fit`` calls it before
        any work starts); the base has nothing to check."""

    def setup(self, stage: str) -> None:
        if self.model is None:
            self.build()

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
        bs = getattr(self.trainer.datamodule, "batch_size", None)
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
    def forward(self, *args, **kwargs):
        # `is not None`: a compiled module has no truth value (OptimizedModule raises on len())
        return (self._compiled if self._compiled is not None else self.model)(*args, **kwargs)

    def eval_model(self) -> nn.Module:
        """The weights used for validation and export: the EMA when enabled."""
        if self._ema is not None:
            if next(self._ema.parameters()).device != self.device:
                self._ema.to(self.device)
            return self._ema
        return self.model

    def net(self, stage: str) -> nn.Module:
        """The module a step of ``stage`` runs: the (compiled) trained model in training, the EMA otherwise."""
        if stage == "train":
            return self._compiled if self._compiled is not None else self.model
        return self.eval_model()

    def shared_step(self, batch, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """(task loss, metrics) of one batch; metrics are tensors or torchmetrics Metrics, logged as
        ``<stage>/<name>``. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement shared_step(batch, stage)")

    def _log_metrics(self, metrics: dict[str, Any], stage: str, batch_size: Optional[int]) -> None:
        for i, (name, value) in enumerate(metrics.items()):
            on_step = stage == "train" and isinstance(value, torch.Tensor)
            self.log(f"{stage}/{name}", value, on_step=on_step, on_epoch=True, batch_size=batch_size,
                     prog_bar=stage == "val" and i == 0, sync_dist=stage != "train" and isinstance(value, torch.Tensor))

    def _skipped_step(self) -> Optional[torch.Tensor]:
        """What a training step over a batch of unreadable files returns: None (Lightning skips the step) in
        one process; under DDP every rank must join the gradient all-reduce, so a zero loss through all
        trainable parameters (this rank adds zero gradients)."""
        if self.trainer.world_size == 1:
            return None
        return sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)

    def training_step(self, batch, batch_idx):
        if all_unreadable(batch):
            return self._skipped_step()
        loss, metrics = self.shared_step(batch, "train")
        n = batch_size_of(batch)
        aux = collect_aux_losses(self.model)
        for name, value in aux.items():
            self.log(f"train/aux/{name}", value.detach().float(), on_step=True, on_epoch=True, batch_size=n)
            loss = loss + value.to(loss.dtype)
        for name, value in collect_aux_stats(self.model).items():
            if value.numel() == 1:
                self.log(f"train/stat/{name}", value.float().reshape(()), on_step=True, on_epoch=True, batch_size=n)
            else:  # a distribution (load per expert): its extremes relative to the mean show the imbalance
                mean = value.float().mean().clamp_min(1e-12)
                self.log(f"train/stat/{name}_max", value.max().float() / mean, on_step=True, on_epoch=True, batch_size=n)
                self.log(f"train/stat/{name}_min", value.min().float() / mean, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self._log_metrics(metrics, "train", n)
        sched = self.lr_schedulers()
        if sched is not None:
            self.log("lr", sched.get_last_lr()[0], on_step=True, on_epoch=False, prog_bar=False)
        return loss

    def _eval_step(self, batch, stage: str):
        if all_unreadable(batch):
            return None
        loss, metrics = self.shared_step(batch, stage)
        model = self.net(stage)
        collect_aux_losses(model)   # evaluated on the task loss alone; cleared so nothing is held
        collect_aux_stats(model)
        n = batch_size_of(batch)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", sync_dist=True, batch_size=n)
        self._log_metrics(metrics, stage, n)
        return loss

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

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

    def export_metadata(self) -> dict[str, str]:
        """What the export records besides the weights (safetensors metadata: str -> str). Subclasses extend
        it with their kind's fields (classes, input shape, preprocessing, vocabulary)."""
        hp = self.hparams
        trainer = self._trainer
        final = {}
        if trainer is not None:
            final = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()
                     if k.startswith(("val/", "test/")) and isinstance(v, torch.Tensor) and v.numel() == 1}
        cfg = dict(getattr(self.model, "pretrained_cfg", {}) or {})
        return {
            "model": str(hp.model).split(".")[0],
            "task": self.task_name,
            "kind": str(cfg.get("kind", "")),
            "data": type(trainer.datamodule).__name__ if trainer is not None and trainer.datamodule is not None else "",
            "epochs": str(trainer.current_epoch if trainer is not None else 0),
            "global_step": str(trainer.global_step if trainer is not None else 0),
            "metrics": json.dumps(final, sort_keys=True),
            "model_args": json.dumps(dict(hp.model_args or {})),
            "ema": str(bool(hp.ema_decay > 0)),
        }
