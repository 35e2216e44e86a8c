"""Captioning: the diffusion captioner (masked answer tokens, MDLM loss) or its AR twin (next-token loss on the
answer) on (image, prompt + caption) batches of zoo.data.captions.

The base task (zoo.recipes.task.Task) brings AdamW, warmup + cosine per step or over a ``trainer.max_time``
budget, EMA, clipping, exact resume and the export; this task says what a batch means:

- the image prefix runs once per batch (``Captioner.image_prefix``); the text pass reads it from the cache.
- ``caption_mdlm_*`` (LLaDA-V's answer-only masking): one antithetic t per caption, answer tokens masked at the
  log-linear rate, the prompt never (``heads.lm.diffusion.mask_tokens`` with the answer mask), SUBS, masked
  cross-entropy weighted by 1/t, normalised by the answer's length. ``complementary: true`` (LaViDa): each
  caption is trained twice on the one image prefix, under a mask and under its complement within the answer
  (time t' with mask rate 1 - rate(t)), so every answer token is trained at every step.
- ``caption_ar_*``: next-token cross-entropy over the answer positions (the prompt is not predicted).

Validation: ``val/loss`` per epoch in nats per answer token (MDLM: the loss at ``val_nelbo_samples`` seeded
antithetic times per caption, an estimate of the NELBO; AR: the exact cross-entropy).

    zoo fit --config configs/flickr8k_caption_mdlm.yaml [--trainer.max_steps 2 ...]
    zoo caption IMAGE... --checkpoint runs/flickr8k_caption_mdlm/export.safetensors
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from heads.lm.diffusion import LogLinearSchedule, antithetic_t, mask_tokens, mdlm_loss
from zoo.errors import ConfigError
from zoo.recipes.task import Task

log = logging.getLogger(__name__)

__all__ = ["CaptioningTask", "answer_masked_loss", "complementary_masks"]


def complementary_masks(tokens: torch.Tensor, t: torch.Tensor, mask_id: int, schedule: LogLinearSchedule,
                        maskable: torch.Tensor, generator: Optional[torch.Generator] = None):
    """LaViDa's pair: z_t (answer tokens masked at rate(t)) and its complement within the answer, at the time
    t' whose rate is 1 - rate(t). Returns (z [2B, L], t [2B]) in ``torch.cat([first, second])`` order."""
    r = torch.rand(tokens.shape, generator=generator, device=tokens.device if generator is None else generator.device)
    first = (r.to(tokens.device) < schedule.mask_rate(t)[:, None]) & maskable
    second = ~first & maskable
    t2 = ((1 - schedule.mask_rate(t)) / (1 - schedule.eps)).clamp(1e-4, 1.0)
    mask = torch.full_like(tokens, mask_id)
    return torch.cat([torch.where(first, mask, tokens), torch.where(second, mask, tokens)]), torch.cat([t, t2])


def answer_masked_loss(model, images: torch.Tensor, tokens: torch.Tensor, maskable: torch.Tensor,
                       schedule: LogLinearSchedule, complementary: bool = False,
                       generator: Optional[torch.Generator] = None, repeats: int = 1) -> torch.Tensor:
    """The diffusion captioner's loss in nats per answer token: answer-only masking (LLaDA-V), SUBS, 1/t.

    ``repeats`` noised copies of every caption (antithetic times) share one image prefix; with
    ``complementary`` each copy is a complementary pair."""
    mask_id = model.tokenizer.mask_id
    prefix = model.image_prefix(images)
    B = tokens.shape[0]
    t = antithetic_t(B * repeats, device=tokens.device, generator=generator)
    x0, m = tokens.repeat(repeats, 1), maskable.repeat(repeats, 1)
    if complementary:
        zt, t = complementary_masks(x0, t, mask_id, schedule, m, generator)
        x0, m, copies = torch.cat([x0, x0]), torch.cat([m, m]), 2 * repeats
    else:
        zt, copies = mask_tokens(x0, t, mask_id, schedule, m, generator), repeats
    logits = model(images, zt, prefix=prefix.repeat(copies) if copies > 1 else prefix)
    return mdlm_loss(logits, x0, zt, t, mask_id, schedule, m)


def answer_next_token_loss(model, images: torch.Tensor, tokens: torch.Tensor, maskable: torch.Tensor,
                           reduction: str = "mean"):
    """The AR twin's loss: cross-entropy of every answer token given the image, the prompt and the answer so far
    (nats per answer token; ``reduction='sum'`` gives (nats, tokens))."""
    logits = model(images, tokens)
    target, keep = tokens[:, 1:], maskable[:, 1:].float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, reduction="none")
    if reduction == "sum":
        return (nll * keep).sum(), keep.sum()
    return (nll * keep).sum() / keep.sum().clamp_min(1)


class CaptioningTask(Task):
    """Train ``caption_mdlm_*`` (diffusion) or ``caption_ar_*`` (AR twin) on image-caption batches.

    Args (besides the base task's):
        tower_from: a registered CLIP tag (``clip_vit_tiny_d6_minilm_128.flickr8k``) or a CLIP export whose image
            tower initialises this one.
        freeze_tower: keep that tower frozen (LLaVA-style: projector + decoder train; the tower runs in eval
            mode without gradients or optimizer state). From a tag, the export then holds only the trainable
            parts and names the tower's tag and sha256 (``tower_tag``, ``tower_sha256``; loaders rebuild it).
        complementary: LaViDa's complementary masking (diffusion only).
        lr_tower: the tower's learning rate as a multiple of ``lr`` (1: one rate; lower keeps a CLIP tower close).
        mask_eps: the schedule's eps. val_nelbo_samples: seeded antithetic t per validation caption (diffusion).
    """

    task_name = "captioning"

    def __init__(self, model: str = "caption_mdlm_vit_tiny_d6_128", pretrained: bool = False,
                 model_args: Optional[dict[str, Any]] = None, checkpoint_path: Optional[str] = None,
                 lr: float = 1e-3, lr_base_batch_size: Optional[int] = None, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_epochs: float = 1.0,
                 warmup_steps: Optional[int] = None, min_lr: float = 1e-5, ema_decay: float = 0.0,
                 compile: bool = False, tower_from: Optional[str] = None, complementary: bool = False,
                 lr_tower: float = 1.0, mask_eps: float = 1e-3, val_nelbo_samples: int = 4,
                 freeze_tower: bool = False):
        super().__init__(model=model, pretrained=pretrained, model_args=model_args, checkpoint_path=checkpoint_path,
                         lr=lr, lr_base_batch_size=lr_base_batch_size, weight_decay=weight_decay, betas=betas,
                         warmup_epochs=warmup_epochs, warmup_steps=warmup_steps, min_lr=min_lr,
                         ema_decay=ema_decay, compile=compile)
        self.save_hyperparameters()
        from zoo.registry import get_entry, split_name

        entry = get_entry(split_name(str(model))[0])
        if entry.kind != "captioner":
            raise ConfigError(f"model.model={model} is a {entry.kind} model; the captioning task trains captioners "
                              f"(zoo list --kind captioner)")
        self.diffusion = entry.default_cfg.get("kind") == "diffusion-captioner"
        if complementary and not self.diffusion:
            raise ConfigError("model.complementary masks answer tokens: it is for the diffusion captioner, not the AR twin")
        if val_nelbo_samples < 1 or not 0 < mask_eps < 1 or lr_tower <= 0:
            raise ConfigError(f"need val_nelbo_samples >= 1, 0 < mask_eps < 1 and lr_tower > 0 (got "
                              f"{val_nelbo_samples}, {mask_eps}, {lr_tower})")
        if freeze_tower and not tower_from:
            raise ConfigError("model.freeze_tower keeps a loaded tower: give model.tower_from (e.g. "
                              "clip_vit_tiny_d6_minilm_128.flickr8k)")
        self.schedule = LogLinearSchedule(mask_eps)
        self.build()

    def build_model(self):
        from zoo import create_model

        hp = self.hparams
        args = dict(hp.model_args or {})
        if hp.tower_from:
            args["tower_from"] = hp.tower_from
        if hp.freeze_tower:
            args["freeze_tower"] = True
        return create_model(hp.model, pretrained=hp.pretrained, checkpoint_path=hp.checkpoint_path, **args)

    def check_data(self, datamodule) -> None:
        vocab = getattr(datamodule, "tokenizer", None)
        if vocab is None or not hasattr(vocab, "pieces"):
            raise ConfigError("the captioning task needs zoo.data.captions.CaptionDataModule (a caption vocabulary); "
                              "set data.class_path to it")
        if vocab.pieces != self.model.tokenizer.pieces:
            raise ConfigError(f"the data's caption vocabulary ({vocab.vocab_size} ids) differs from the model's "
                              f"({self.model.tokenizer.vocab_size}); give both the same file (data.vocab, "
                              f"model.model_args.vocab)")

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            self.check_data(dm)
        super().setup(stage)

    def param_groups(self) -> list[dict]:
        groups = super().param_groups()
        if self.hparams.lr_tower == 1.0:
            return groups
        tower = {id(p) for p in self.model.visual.parameters()}
        out = []
        for g in groups:
            for is_tower in (False, True):
                params = [p for p in g["params"] if (id(p) in tower) == is_tower]
                if params:
                    out.append({**g, "params": params, **({"lr_scale": self.hparams.lr_tower} if is_tower else {})})
        return out

    def configure_optimizers(self):
        cfg = super().configure_optimizers()
        for g in cfg["optimizer"].param_groups:  # the tower's share of the one schedule
            if "lr_scale" in g:
                g["lr"] = g["initial_lr"] = g["lr"] * g["lr_scale"]
        sched = cfg["lr_scheduler"]["scheduler"]
        sched.base_lrs = [g["initial_lr"] for g in cfg["optimizer"].param_groups]
        return cfg

    # -- steps -------------------------------------------------------------------------------------------
    @staticmethod
    def unpack(batch):
        images, text = batch
        return images, text["tokens"], text["maskable"]

    def shared_step(self, batch, stage: str):
        images, tokens, maskable = self.unpack(batch)
        model = self.net(stage)
        if not self.diffusion:
            return answer_next_token_loss(model, images, tokens, maskable), {}
        if stage == "train":
            return answer_masked_loss(model, images, tokens, maskable, self.schedule, self.hparams.complementary), {}
        step = self._eval_batches = getattr(self, "_eval_batches", 0) + 1  # the same noised copies every epoch
        gen = torch.Generator(device=tokens.device).manual_seed(10_000 + step)
        loss = answer_masked_loss(model, images, tokens, maskable, self.schedule, generator=gen,
                                  repeats=self.hparams.val_nelbo_samples)
        return loss, {}

    def on_validation_epoch_start(self) -> None:
        self._eval_batches = 0

    # -- export ------------------------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, str]:
        import json

        meta = super().export_metadata()
        cfg = self.model.pretrained_cfg
        meta.update(kind=self.model.kind, vocab=self.model.tokenizer.to_json(),
                    answer_length=str(self.model.answer_length), complementary=str(bool(self.hparams.complementary)),
                    tower_from=str(self.hparams.tower_from or ""), freeze_tower=str(bool(self.hparams.freeze_tower)),
                    tower_included=str(self.model.tower_ref is None),
                    tower_tag=(self.model.tower_ref or {}).get("tag", ""),
                    tower_sha256=(self.model.tower_ref or {}).get("sha256", ""),
                    preprocess=json.dumps({k: cfg[k] for k in ("input_size", "mean", "std") if k in cfg}, default=list))
        return meta
