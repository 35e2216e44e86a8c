"""Contrastive image-text training (CLIP / SigLIP) of the zoo's vision-language models.

The loss is open_clip's (``ClipLoss``: symmetric cross-entropy over the batch's image-text similarities,
gathered across ranks with gradients under DDP; ``SigLipLoss``: pairwise sigmoid with a learnable bias). The
base task (zoo.recipes.task.Task) brings AdamW, warmup + cosine, EMA, clipping, exact resume and the
export; this task adds what a pair of towers needs:

- ``lock_text`` (LiT, the default): the pretrained MiniLM text tower stays frozen and only the image tower,
  both projections and the temperature train. With ``text_tower: cached`` the model has no text encoder at
  all and the data module feeds the captions' cached, mean-pooled MiniLM embeddings (zoo.vl.embeddings):
  the GPU needs neither the text weights nor their compute. ``lock_text: false`` with
  ``text_tower: minilm`` trains both towers from tokenized captions.
- several captions per image (``data.captions_per_image: k``): the loss is the mean of the k losses of the
  images against each caption set; the image tower runs once, the text side (cached embeddings) is cheap.
- metrics: in-batch image->text and text->image top-1 (of the batch's captions), the temperature.
- the export holds the image tower, the projections and the temperature (fp16); a locked MiniLM tower is
  not copied but named by its Hub id and the sha256 of its fp16 weights in the export's metadata.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Literal, Optional

import torch

from zoo.errors import ConfigError
from zoo.recipes.task import Task

log = logging.getLogger(__name__)

LOSSES = ("clip", "siglip")


def in_batch_accuracy(image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of images whose own caption is the closest of the batch's, and of captions whose own image is."""
    sim = image_features.float() @ text_features.float().t()
    target = torch.arange(sim.shape[0], device=sim.device)
    return (sim.argmax(1) == target).float().mean(), (sim.argmax(0) == target).float().mean()


def _flatten_caption_sets(text, batch_size: int):
    """Text of a batch with k captions per image ([B, k, D] embeddings or [B, k, T] token tensors, from
    ``data.captions_per_image``) -> the B * k captions image-major, and k (1 for ordinary [B, ...] text)."""
    lead = text["input_ids"] if isinstance(text, Mapping) else text
    if not isinstance(lead, torch.Tensor) or lead.ndim != 3 or lead.shape[0] != batch_size:
        return text, 1
    k = lead.shape[1]
    if isinstance(text, Mapping):
        return {key: v.flatten(0, 1) for key, v in text.items()}, k
    return text.flatten(0, 1), k


class ContrastiveTask(Task):
    """Train a registered vision-language model on image-caption pairs.

    Args (besides the base task's):
        loss: ``'clip'`` (open_clip's ClipLoss) or ``'siglip'`` (SigLipLoss; the model is built with its
            learnable logit bias).
        lock_text: freeze the text encoder (LiT); only its projection trains.
        text_tower: ``'cached'`` (train from the data module's cached text embeddings; needs lock_text) or
            ``'minilm'`` (the encoder itself, from the MiniLM zip under ZOO_DATA or ``text_path``).
        text_path: the MiniLM zip or folder (default: ``$ZOO_DATA/all-MiniLM-L6-v2-fp16.zip``).
        checkpoint_path: start from an export of this architecture (image tower + projections).
        tower_init: start the image tower from a registered tag of its backbone (``vit_micro_patch4_32.cifar10``;
            zoo list --pretrained), its classifier head dropped and its patch embedding resampled to the
            tower's patch size; the projections start fresh.
    """

    task_name = "contrastive"

    def __init__(self, model: str = "clip_vit_tiny_d6_minilm_128", pretrained: bool = False,
                 model_args: Optional[dict[str, Any]] = None, checkpoint_path: Optional[str] = None,
                 lr: float = 1e-3, lr_base_batch_size: Optional[int] = None, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_epochs: float = 1.0,
                 warmup_steps: Optional[int] = None, min_lr: float = 1e-6, ema_decay: float = 0.0,
                 compile: bool = False, loss: Literal["clip", "siglip"] = "clip", lock_text: bool = True,
                 text_tower: Literal["cached", "minilm"] = "cached", text_path: Optional[str] = None,
                 tower_init: Optional[str] = None):
        super().__init__(model=model, pretrained=pretrained, model_args=model_args, checkpoint_path=checkpoint_path,
                         lr=lr, lr_base_batch_size=lr_base_batch_size, weight_decay=weight_decay, betas=betas,
                         warmup_epochs=warmup_epochs, warmup_steps=warmup_steps, min_lr=min_lr,
                         ema_decay=ema_decay, compile=compile)
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r}: choose one of {', '.join(LOSSES)}.")
        if text_tower == "cached" and not lock_text:
            raise ConfigError("model.text_tower=cached trains from fixed text embeddings, so the text tower cannot "
                              "train: set model.lock_text true, or model.text_tower minilm to train it.")
        self._loss_fn = None
        self.build()

    # -- construction --------------------------------------------------------------------------------------
    def build_model(self):
        from zoo import create_model
        from zoo.hub import read_state_dict

        from zoo.registry import get_entry, split_name

        hp = self.hparams
        entry = get_entry(split_name(hp.model)[0])
        if entry.kind != "vision-language":
            raise ConfigError(f"model.model={hp.model} is a {entry.kind} model; the contrastive task trains "
                              f"vision-language models (`zoo list --kind vision-language`).")
        args = dict(hp.model_args or {})
        if hp.loss == "siglip":
            args.setdefault("init_logit_bias", -10.0)
            args.setdefault("init_logit_scale", 10.0)
        model = create_model(hp.model, pretrained=hp.pretrained, text_tower=hp.text_tower, text_path=hp.text_path,
                             lock_text=hp.lock_text, **args)
        if hp.tower_init:
            from zoo.factory import load_tag_into

            tower = model.pretrained_cfg.get("image_tower")
            if split_name(hp.tower_init)[0] != tower:
                raise ConfigError(f"model.tower_init={hp.tower_init} is not a tag of this model's image tower "
                                  f"{tower} (zoo info {tower} lists its tags)")
            load_tag_into(model.visual, hp.tower_init)
            log.info("image tower initialised from %s", hp.tower_init)
        if hp.checkpoint_path:
            model.load_export(read_state_dict(hp.checkpoint_path))
        return model

    def loss_fn(self):
        if self._loss_fn is None:
            from open_clip.loss import ClipLoss, SigLipLoss

            trainer = self._trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            if self.hparams.loss == "siglip":
                self._loss_fn = SigLipLoss(rank=rank, world_size=world)
            else:
                self._loss_fn = ClipLoss(gather_with_grad=world > 1, cache_labels=True, rank=rank, world_size=world)
        return self._loss_fn

    # -- steps -----------------------------------------------------------------------------------------------
    def shared_step(self, batch, stage: str):
        images, text = batch
        text, k = _flatten_caption_sets(text, len(images))
        out = self.net(stage)(images, text)
        image_features, text_features, scale = out[:3]
        text_sets = text_features.view(len(images), k, -1).unbind(1)
        loss_fn = self.loss_fn()
        if self.hparams.loss == "siglip":
            loss = sum(loss_fn(image_features, t, scale, out[3]) for t in text_sets) / k
        else:
            loss = sum(loss_fn(image_features, t, scale) for t in text_sets) / k
        i2t, t2i = in_batch_accuracy(image_features.detach(), text_sets[0].detach())
        return loss, {"i2t_top1": i2t, "t2i_top1": t2i, "logit_scale": scale.detach().float()}

    # -- export ----------------------------------------------------------------------------------------------
    def export_state_dict(self, dtype: torch.dtype = torch.float16, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """Image tower, projections and temperature (and the text encoder only when it trained)."""
        model = self._ema if (use_ema and self._ema is not None) else self.model
        return {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
                for k, v in model.export_state_dict(include_text=not self.hparams.lock_text).items()}

    def export_metadata(self) -> dict[str, str]:
        from zoo.vl.text import MINILM_FP16_SHA256, MINILM_HUB_ID

        meta = super().export_metadata()
        hp = self.hparams
        cfg = dict(self.model.pretrained_cfg)
        dm = self._trainer.datamodule if self._trainer is not None else None
        meta.update({
            "kind": "vision-language", "loss": hp.loss, "lock_text": str(bool(hp.lock_text)),
            "image_tower": str(cfg.get("image_tower", "")),
            "text_tower": MINILM_HUB_ID, "text_tower_sha256": MINILM_FP16_SHA256,
            "text_included": str(not hp.lock_text), "embed_dim": str(self.model.embed_dim),
            "preprocess": json.dumps(getattr(dm, "data_config", None) or
                                     {k: cfg[k] for k in ("input_size", "mean", "std") if k in cfg}, default=list),
        })
        return meta
