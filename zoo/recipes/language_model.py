"""Language modelling: masked diffusion (MDLM loss) or next-token prediction (the AR twin) on any text decoder.

The base task (zoo.recipes.task.Task) brings AdamW, warmup + cosine per step or over a ``trainer.max_time``
budget, EMA, clipping, exact resume and the export; this task says what a batch means:

- ``diffusion-lm`` (``mdlm_<size>``): one antithetic t per sequence, tokens masked at the log-linear rate,
  SUBS, masked cross-entropy weighted by 1/t (``heads.lm.diffusion``). Validation reports the NELBO over
  ``val_nelbo_samples`` antithetic t per window (``val/nelbo`` = ``val/loss`` in nats/char, ``val/bpc``).
- ``causal-lm`` (``ar_<size>``): next-token cross-entropy; validation is the exact likelihood (nats/char).

Batches are token windows ``[B, L]`` or ``(tokens, maskable)`` for prompt/answer training (prompt never
masked, loss normalised by the answer's length). The vocabulary comes from the data module's tokenizer
(``model.chars`` to fix it), so the model is built in ``setup``.

    zoo fit --config configs/tinyshakespeare_mdlm_attn.yaml [--resume] [--trainer.max_steps 20 ...]
    zoo eval mdlm_small_attn --checkpoint runs/tinyshakespeare_mdlm_attn/export.safetensors [--num-t 32]
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torchmetrics import SumMetric

from heads.lm.diffusion import BITS_PER_NAT, LogLinearSchedule, antithetic_t, mask_tokens, mdlm_loss, nelbo, \
    next_token_loss
from zoo.errors import ConfigError
from zoo.kinds.language_model import LanguageModel, parse_lm_name
from zoo.recipes.task import Task

log = logging.getLogger(__name__)

__all__ = ["LanguageModelTask"]


class _SumRatio(SumMetric):
    """Sum of nats; ``compute`` divides by the tokens summed beside it (nats per token over the epoch)."""

    def __init__(self):
        super().__init__()
        self.add_state("tokens", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nats: torch.Tensor, tokens: torch.Tensor) -> None:
        super().update(nats.double().sum())
        self.tokens += tokens.double().sum()

    def compute(self) -> torch.Tensor:
        return (super().compute() / self.tokens.clamp_min(1)).float()


class LanguageModelTask(Task):
    """Train ``mdlm_<size>`` (diffusion-lm) or ``ar_<size>`` (causal-lm) on character windows.

    Args (besides the base task's):
        chars: the character vocabulary; None takes the data module's tokenizer.
        mask_eps: the log-linear schedule's eps. val_nelbo_samples: antithetic t per window for val/nelbo.
    """

    task_name = "language_model"

    def __init__(self, model: str = "mdlm_small_attn", pretrained: bool = False,
                 model_args: Optional[dict[str, Any]] = None, checkpoint_path: Optional[str] = None,
                 lr: float = 1e-3, lr_base_batch_size: Optional[int] = None, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.99), warmup_epochs: float = 0.0,
                 warmup_steps: Optional[int] = 100, min_lr: float = 1e-4, ema_decay: float = 0.0,
                 compile: bool = False, chars: Optional[str] = None, mask_eps: float = 1e-3,
                 val_nelbo_samples: int = 8):
        super().__init__(model=model, pretrained=pretrained, model_args=model_args, checkpoint_path=checkpoint_path,
                         lr=lr, lr_base_batch_size=lr_base_batch_size, weight_decay=weight_decay, betas=betas,
                         warmup_epochs=warmup_epochs, warmup_steps=warmup_steps, min_lr=min_lr,
                         ema_decay=ema_decay, compile=compile)
        self.save_hyperparameters()
        self.kind, self.size = parse_lm_name(str(model).split(".")[0])
        if val_nelbo_samples < 1:
            raise ConfigError(f"model.val_nelbo_samples must be >= 1, got {val_nelbo_samples}.")
        if not 0 < mask_eps < 1:
            raise ConfigError(f"model.mask_eps must be in (0, 1), got {mask_eps}.")
        self.schedule = LogLinearSchedule(mask_eps)
        self.likelihood = {stage: _SumRatio() for stage in ("val", "test")}
        self._metrics = torch.nn.ModuleDict(self.likelihood)
        if chars is not None:
            self.build()

    # -- construction ------------------------------------------------------------------------------------
    def build_model(self) -> LanguageModel:
        from zoo import create_model

        hp = self.hparams
        return create_model(hp.model, pretrained=hp.pretrained, checkpoint_path=hp.checkpoint_path,
                            chars=hp.chars, **dict(hp.model_args or {}))

    def check_data(self, datamodule) -> None:
        tok = getattr(datamodule, "tokenizer", None) if datamodule is not None else None
        if tok is None and datamodule is not None and hasattr(datamodule, "setup") and self.hparams.chars is None:
            datamodule.setup("fit")
            tok = getattr(datamodule, "tokenizer", None)
        chars = "".join(tok.chars) if tok is not None and hasattr(tok, "chars") else None
        if chars is None:
            if self.hparams.chars is None:
                raise ConfigError("model.chars is not set and the data module has no character tokenizer; "
                                  "set model.chars.")
        elif self.hparams.chars is None:
            self.hparams["chars"] = chars
        elif chars != self.hparams.chars:
            raise ConfigError(f"model.chars ({len(self.hparams.chars)} symbols) differs from the data's "
                              f"vocabulary ({len(chars)}); drop model.chars so it follows the data.")

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        self.check_data(dm)
        super().setup(stage)

    # -- steps -------------------------------------------------------------------------------------------
    @staticmethod
    def unpack(batch) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if isinstance(batch, torch.Tensor):
            return batch, None
        if isinstance(batch, dict):
            return batch["tokens"], batch.get("maskable")
        return batch[0], (batch[1] if len(batch) > 1 else None)

    def lm_loss(self, tokens: torch.Tensor, maskable: Optional[torch.Tensor], net=None) -> torch.Tensor:
        """One training loss: MDLM (diffusion-lm) or next-token cross-entropy (causal-lm)."""
        net = net if net is not None else self.net("train")
        if self.kind == "causal-lm":
            return next_token_loss(net(tokens), tokens)
        mask_id = self.model.tokenizer.mask_id
        t = antithetic_t(tokens.shape[0], device=tokens.device)
        zt = mask_tokens(tokens, t, mask_id, self.schedule, maskable)
        return mdlm_loss(net(zt), tokens, zt, t, mask_id, self.schedule, maskable)

    def shared_step(self, batch, stage: str):
        tokens, maskable = self.unpack(batch)
        if stage == "train":
            return self.lm_loss(tokens, maskable), {}
        model = self.net(stage)
        if self.kind == "causal-lm":
            nats, count = model.likelihood(tokens)
        else:  # a seed per batch position: every validation scores the same noised copies
            step = self._eval_batches = getattr(self, "_eval_batches", 0) + 1
            gen = torch.Generator(device=tokens.device).manual_seed(10_000 + step)
            nats, count = nelbo(model, tokens, model.tokenizer.mask_id, self.hparams.val_nelbo_samples,
                                self.schedule, maskable, gen)
        metric = self.likelihood[stage]
        metric.update(nats, count)
        loss = nats.sum() / count.sum()
        metrics = {"bpc": loss * BITS_PER_NAT, "nats_per_char": metric}
        if self.kind == "diffusion-lm":
            metrics["nelbo"] = loss
        return loss, metrics

    def on_validation_epoch_start(self) -> None:
        self._eval_batches = 0

    def on_test_epoch_start(self) -> None:
        self._eval_batches = 0

    # -- export ------------------------------------------------------------------------------------------
    def export_metadata(self) -> dict[str, str]:
        meta = super().export_metadata()
        meta.update(kind=self.kind, tokenizer=self.model.tokenizer.to_json(),
                    val_loss=meta_value(self._trainer, "val/nats_per_char"))
        return meta


def meta_value(trainer, key: str) -> str:
    v = trainer.callback_metrics.get(key) if trainer is not None else None
    return "" if v is None else f"{float(v):.6f}"
