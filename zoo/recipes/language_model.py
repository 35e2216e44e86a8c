"""Language modelling: masked diffusion (MDLM loss) or next-token prediction (the AR twin) on any text decoder.

The task inherits the optimisation and checkpoint machinery of the classification task (AdamW with no decay
on norms and biases, warmup + cosine per step or over a ``trainer.max_time`` budget, EMA, clipping, RNG
states in the checkpoint for an exact resume) and brings its own steps:

- ``diffusion-lm`` (``mdlm_<size>``): one antithetic t per sequence, tokens masked at the log-linear rate,
  SUBS, masked cross-entropy weighted by 1/t (``heads.lm.diffusion``). Validation reports the NELBO over
  ``val_nelbo_samples`` antithetic t per window (``val/nelbo`` = ``val/loss`` in nats/char, ``val/bpc``).
- ``causal-lm`` (``ar_<size>``): next-token cross-entropy; validation is the exact likelihood (nats/char).

Batches are token windows ``[B, L]`` or ``(tokens, maskable)`` for prompt/answer training (prompt never
masked, loss normalised by the answer's length).

Running a recipe (LightningCLI-style YAML: ``model``/``data`` as ``class_path`` + ``init_args``, ``trainer``):

    python -m zoo.recipes.language_model --config configs/tinyshakespeare_mdlm_attn.yaml [--resume]
        [--trainer.max_steps 20 --data.init_args.val_windows 8 ...]

writes, in ``trainer.default_root_dir``: ``checkpoints/last.ckpt``, ``csv/version_N/metrics.csv`` curves (one version per start), ``export.safetensors``
(fp16, metadata with the tokenizer and the final validation figures) and ``lm_summary.json``.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torchmetrics import SumMetric

from heads.lm.diffusion import BITS_PER_NAT, LogLinearSchedule, antithetic_t, mask_tokens, mdlm_loss, next_token_loss
from zoo.errors import ConfigError
from zoo.kinds.language_model import LanguageModel, language_model_builder, parse_lm_name
from zoo.recipes.classification import ClassificationTask

log = logging.getLogger(__name__)

__all__ = ["LanguageModelTask", "export_language_model", "main"]


class LanguageModelTask(ClassificationTask):
    """Train ``mdlm_<size>`` (diffusion-lm) or ``ar_<size>`` (causal-lm) on character or subword windows.

    Args:
        model: ``mdlm_<size>`` or ``ar_<size>`` (sizes: ``backbones.text_decoder.TEXT_DECODER_CONFIGS``).
        model_args: decoder overrides (``layout``, ``depth``, ``dim``, ``dropout``, ``max_len`` ...).
        chars: the character vocabulary; None takes the data module's tokenizer.
        checkpoint_path: start from these weights (an export or a state dict).
        mask_eps: the log-linear schedule's eps. val_nelbo_samples: antithetic t per window for val/nelbo.
        lr, weight_decay, betas, warmup_steps, min_lr, ema_decay, lr_base_batch_size, compile: as for images.
    """

    def __init__(self, model: str = "mdlm_small_attn", model_args: Optional[dict[str, Any]] = None,
                 chars: Optional[str] = None, checkpoint_path: Optional[str] = None, mask_eps: float = 1e-3,
                 val_nelbo_samples: int = 8, lr: float = 1e-3, lr_base_batch_size: Optional[int] = None,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.99), warmup_steps: int = 100,
                 min_lr: float = 1e-4, ema_decay: float = 0.0, compile: bool = False):
        import lightning.pytorch as pl

        args = {k: v for k, v in locals().items() if k not in ("self", "pl", "__class__")}
        pl.LightningModule.__init__(self)  # the LightningModule's init, not the classification task's
        self.save_hyperparameters(args)
        self.kind, self.size = parse_lm_name(model)
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay must be in [0, 1) (0 turns EMA off), got {ema_decay}.")
        if lr <= 0:
            raise ConfigError(f"model.lr must be positive, got {lr}.")
        if val_nelbo_samples < 1:
            raise ConfigError(f"model.val_nelbo_samples must be >= 1, got {val_nelbo_samples}.")
        self.hparams.update(pretrained=False, warmup_epochs=0.0, freeze="full")
        self.freeze_mode, self.freeze_n = "full", 0
        self.schedule = LogLinearSchedule(mask_eps)
        self.model: Optional[LanguageModel] = None
        self.mixup_fn = None
        self.__dict__["_ema"] = None
        self.__dict__["_compiled"] = None
        self._pending_rng = None
        self._pending_ema = None
        self.val_nats, self.val_tokens = SumMetric(), SumMetric()
        if chars is not None:
            self._build(chars)

    # -- construction ------------------------------------------------------------------------------------
    def _build(self, chars: str) -> None:
        hp = self.hparams
        self.model = language_model_builder(self.kind, self.size)(size=self.size, chars=chars,
                                                                  **dict(hp.model_args or {}))
        if hp.checkpoint_path:
            from zoo import hub
            from zoo.factory import load_weights

            load_weights(self.model, hub.read_state_dict(hp.checkpoint_path), source=str(hp.checkpoint_path))
        self.hparams["chars"] = chars
        skip = self.model.no_weight_decay()
        self._no_decay = {n for n, p in self.model.named_parameters() if p.ndim <= 1 or n in skip}
        if hp.ema_decay > 0:
            ema = copy.deepcopy(self.model).eval()
            for p in ema.parameters():
                p.requires_grad_(False)
            self.__dict__["_ema"] = ema
        if hp.compile:
            self.__dict__["_compiled"] = torch.compile(self.model)

    def setup(self, stage: str) -> None:
        """Take the vocabulary from the data module's tokenizer (and check a given one against it)."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        tok = getattr(dm, "tokenizer", None) if dm is not None else None
        if tok is None and dm is not None and hasattr(dm, "setup"):
            dm.setup(stage)
            tok = getattr(dm, "tokenizer", None)
        chars = "".join(tok.chars) if tok is not None and hasattr(tok, "chars") else None
        if self.model is None:
            if chars is None:
                raise ConfigError("model.chars is not set and the data module has no character tokenizer; "
                                  "set model.chars.")
            self._build(chars)
        elif chars is not None and chars != self.hparams.chars:
            raise ConfigError(f"model.chars ({len(self.hparams.chars)} symbols) differs from the data's "
                              f"vocabulary ({len(chars)}); drop model.chars so it follows the data.")

    # -- steps -------------------------------------------------------------------------------------------
    @staticmethod
    def unpack(batch) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if isinstance(batch, torch.Tensor):
            return batch, None
        if isinstance(batch, dict):
            return batch["tokens"], batch.get("maskable")
        return batch[0], (batch[1] if len(batch) > 1 else None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return (self._compiled if self._compiled is not None else self.model)(tokens)

    def lm_loss(self, tokens: torch.Tensor, maskable: Optional[torch.Tensor]) -> torch.Tensor:
        """One training loss: MDLM (diffusion-lm) or next-token cross-entropy (causal-lm)."""
        if self.kind == "causal-lm":
            return next_token_loss(self(tokens), tokens)
        t = antithetic_t(tokens.shape[0], device=tokens.device)
        zt = mask_tokens(tokens, t, self.model.tokenizer.mask_id, self.schedule, maskable)
        return mdlm_loss(self(zt), tokens, zt, t, self.model.tokenizer.mask_id, self.schedule, maskable)

    def training_step(self, batch, batch_idx):
        tokens, maskable = self.unpack(batch)
        loss = self.lm_loss(tokens, maskable)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=tokens.shape[0])
        sched = self.lr_schedulers()
        if sched is not None:
            self.log("lr", sched.get_last_lr()[0], on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch, split: str, batch_idx: int = 0):
        tokens, maskable = self.unpack(batch)
        model = self.eval_model()
        if self.kind == "causal-lm":
            nats, count = model.likelihood(tokens)
        else:  # a fixed seed per batch: every validation scores the same noised copies
            gen = torch.Generator(device=tokens.device).manual_seed(10_000 + batch_idx)
            from heads.lm.diffusion import nelbo

            nats, count = nelbo(model, tokens, model.tokenizer.mask_id, self.hparams.val_nelbo_samples,
                                self.schedule, maskable, gen)
        self.val_nats.update(nats.sum())
        self.val_tokens.update(count.sum())

    def _eval_epoch_end(self, split: str) -> None:
        tokens = self.val_tokens.compute()
        if float(tokens) == 0:
            return
        per_char = self.val_nats.compute() / tokens
        self.log(f"{split}/loss", per_char, prog_bar=split == "val")
        self.log(f"{split}/bpc", per_char * BITS_PER_NAT)
        if self.kind == "diffusion-lm":
            self.log(f"{split}/nelbo", per_char)
        self.val_nats.reset()
        self.val_tokens.reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch, batch_idx):
        return self.eval_model()(self.unpack(batch)[0])


# -- export -----------------------------------------------------------------------------------------------
def export_language_model(task: LanguageModelTask, trainer, run_dir: Path, recipe: str) -> Path:
    """fp16 safetensors of the final (EMA when enabled) weights, with what a pretrained tag needs."""
    from zoo import __version__
    from zoo.hub import save_state_dict

    m = trainer.callback_metrics
    hp = task.hparams
    meta = {
        "format": "speedzoo-export-v1", "kind": task.kind, "model": str(hp.model), "recipe": recipe,
        "global_step": str(trainer.global_step), "epochs": str(trainer.current_epoch),
        "val_loss": f"{float(m['val/loss']):.6f}" if "val/loss" in m else "",
        "tokenizer": task.model.tokenizer.to_json(), "model_args": json.dumps(dict(hp.model_args or {})),
        "ema": str(bool(hp.ema_decay > 0)), "init": str(hp.checkpoint_path or ""), "zoo_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return save_state_dict(task.export_state_dict(torch.float16), run_dir / "export.safetensors", metadata=meta)


# -- evaluation -----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_language_model(model: LanguageModel, path: Optional[str] = None, context: int = 256,
                            num_t: int = 32, batch_size: int = 64, train_fraction: float = 0.9,
                            max_windows: Optional[int] = None, seed: int = 0) -> dict[str, Any]:
    """nats/char and bits/char on the validation split (its non-overlapping windows of ``context``).

    causal-lm: the exact likelihood of every window's characters after its first. diffusion-lm: the NELBO of
    every character over ``num_t`` antithetic t per window (an upper bound on -log p).
    """
    from zoo.data.text import TextWindows, load_text, split_text

    text = split_text(load_text(path), train_fraction)[1]
    ids = torch.tensor(model.tokenizer.encode(text))
    windows = TextWindows(ids, context, context)
    n = len(windows) if max_windows is None else min(len(windows), int(max_windows))
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    nats = count = 0.0
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        batch = windows.__getitems__(list(range(i, min(n, i + batch_size)))).to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            a, b = model.likelihood(batch, num_t=num_t, generator=gen)
        nats, count = nats + float(a.sum()), count + float(b.sum())
    per_char = nats / count
    return {"kind": model.kind, "split": "val", "windows": n, "context": context, "chars_scored": int(count),
            "nats_per_char": per_char, "bits_per_char": per_char * BITS_PER_NAT,
            "estimator": "exact" if model.causal else f"nelbo, {num_t} antithetic t per window",
            "seconds": round(time.perf_counter() - t0, 2)}


def eval_main(argv: list[str]) -> int:
    """``python -m zoo.recipes.language_model eval EXPORT [--num-t 32] [--context 256] [--out FILE.json]``."""
    import argparse

    from zoo.kinds.language_model import load_language_model

    p = argparse.ArgumentParser(prog="python -m zoo.recipes.language_model eval")
    p.add_argument("export")
    p.add_argument("--data", default=None, help="text file (default $ZOO_DATA/tinyshakespeare.txt)")
    p.add_argument("--num-t", type=int, default=32)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-windows", type=int, default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    model = load_language_model(a.export, "cuda" if torch.cuda.is_available() else "cpu")
    res = evaluate_language_model(model, a.data, a.context, a.num_t, a.batch_size, max_windows=a.max_windows)
    res["export"] = a.export
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


# -- runner -------------------------------------------------------------------------------------------------
def _set(config: dict, dotted: str, value: Any) -> None:
    node = config
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def load_recipe(paths: list[Path], overrides: list[tuple[str, Optional[str]]]) -> dict:
    """The YAML recipe(s) merged, then ``--a.b value`` overrides (values parsed as YAML)."""
    import yaml

    from zoo.recipes.cli import _load_yaml

    config = _load_yaml(paths)
    for key, val in overrides:
        if key in ("resume", "config"):
            continue
        _set(config, key, yaml.safe_load(val) if val is not None else True)
    unknown = set(config) - {"model", "data", "trainer", "seed_everything", "recipe", "checkpoint_every_n_steps",
                             "progress_every_n_steps", "export"}
    if unknown:
        raise ConfigError(f"unknown recipe keys {sorted(unknown)}; a language-model recipe has model, data, trainer, "
                          f"seed_everything, recipe, checkpoint_every_n_steps, progress_every_n_steps, export")
    return config


def _instantiate(spec: Any, what: str):
    from zoo.recipes.cli import _import_class

    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ConfigError(f"{what} must be a mapping with class_path and init_args")
    cls = _import_class(spec["class_path"])
    if cls is None:
        raise ConfigError(f"{what}.class_path {spec['class_path']!r} cannot be imported")
    try:
        return cls(**dict(spec.get("init_args") or {}))
    except TypeError as e:
        raise ConfigError(f"{what}: {e}") from None


def main(argv: Optional[list[str]] = None) -> int:
    """Fit a language-model recipe; ``--resume`` continues the run's last.ckpt (see the module doc)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from zoo.recipes.cli import (_atomic_checkpoint_io, _make_callbacks, _parse_overrides, _preparse,
                                 _setup_logging, find_resume_checkpoint)

    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    args, opts = _preparse(argv)
    if not opts["configs"]:
        raise ConfigError("pass a recipe: --config configs/tinyshakespeare_mdlm_attn.yaml")
    overrides = [(k, v) for k, v in _parse_overrides(args) if k != "config"]
    config = load_recipe(opts["configs"], overrides)
    pl.seed_everything(int(config.get("seed_everything", 0)), workers=True)
    model_spec = config.get("model") or {}
    task = _instantiate(model_spec if "class_path" in model_spec else
                        {"class_path": "zoo.recipes.language_model.LanguageModelTask", "init_args": model_spec},
                        "model")
    dm = _instantiate(config.get("data"), "data")
    tcfg = dict(config.get("trainer") or {})
    run_dir = Path(tcfg.pop("default_root_dir", "runs/lm")).expanduser()
    if "precision" not in tcfg:
        tcfg["precision"] = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    fast = bool(tcfg.get("fast_dev_run"))
    callbacks = _make_callbacks(run_dir, int(config.get("checkpoint_every_n_steps", 500)), "log",
                                int(config.get("progress_every_n_steps", 100)), checkpoints=not fast)
    trainer = pl.Trainer(default_root_dir=str(run_dir), callbacks=callbacks, enable_progress_bar=False,
                         logger=CSVLogger(run_dir, name="csv"), plugins=[_atomic_checkpoint_io()],
                         **tcfg)
    ckpt = find_resume_checkpoint(opts["resume"], run_dir)
    t0 = time.perf_counter()
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    if trainer.interrupted:
        return 130
    seconds = time.perf_counter() - t0
    recipe = config.get("recipe") or opts["configs"][-1].stem
    m = trainer.callback_metrics
    summary = {"recipe": recipe, "model": task.hparams.model, "kind": task.kind, "global_step": trainer.global_step,
               "fit_seconds": round(seconds, 1),
               "params": sum(p.numel() for p in task.model.parameters()),
               **{k.replace("/", "_"): float(v) for k, v in m.items() if k.startswith(("val/", "train/"))}}
    if config.get("export", True) and trainer.is_global_zero:
        summary["export"] = str(export_language_model(task, trainer, run_dir, recipe))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "lm_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.getLogger("zoo.fit").info("%s: %s", recipe, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(eval_main(sys.argv[2:]) if sys.argv[1:2] == ["eval"] else main())
