"""The vision-language kind: a CLIP-style pair of towers with open_clip's model contract.

``encode_image(images, normalize=False)``, ``encode_text(text, normalize=False)`` and
``forward(images, text) -> (image_features, text_features, logit_scale[, logit_bias])`` (normalised features,
the exponentiated scale), as open_clip's ``CLIP`` has them, so open_clip's losses, zero-shot classifier and
CLIP_benchmark-style evaluation take the model as they take theirs.

Why a class of ours and not open_clip's ``CLIP`` with ``TimmModel`` (which the shipped open_clip configs,
``zoo/vl/model_configs``, still build): open_clip's TimmModel builds the trunk at its default image size (the
config's ``image_size`` is not passed to timm), and its HF text tower fuses encoder and projection, so a
locked text tower could not train from cached sentence embeddings. Here the image tower is any zoo image
backbone at any ``img_size``, the text tower is separable (``text`` = the pretrained MiniLM encoder, or
absent when training from its cached, mean-pooled outputs), and ``heads.contrastive`` holds the projections
and the temperature.

``text`` for ``encode_text``: a dict of ``input_ids`` / ``attention_mask`` (the HF tokenizer's output), a
LongTensor of ids (padding id 0), or a float tensor [B, text_width] of mean-pooled text-encoder outputs
(the LiT cache: only the projection runs).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from heads.contrastive import ContrastiveProjection, LogitScale
from zoo.errors import ConfigError, InputShapeError

TEXT_PREFIX = "text."
"""State-dict prefix of the text encoder: left out of exports when the tower is the locked, pretrained one."""


class VisionLanguageModel(nn.Module):
    """Image tower + projection, text tower + projection, and a learnable temperature.

    Args:
        visual: a zoo image model without classifier (``num_classes=0``): ``forward(x) -> [B, head_hidden_size]``.
        text: a text encoder ``forward(input_ids, attention_mask) -> [B, text_width]`` or None (cached
            embeddings only; attach one later with :meth:`attach_text`).
        text_width: width of the text encoder's pooled output.
        embed_dim: the shared embedding width.
        image_proj / text_proj: ``'linear'``, ``'mlp'`` or ``'none'`` (heads.contrastive).
        init_logit_bias: a float turns on SigLIP's learnable bias (use with SigLipLoss).
    """

    def __init__(self, visual: nn.Module, text: nn.Module | None, text_width: int, embed_dim: int = 256,
                 image_proj: str = "linear", text_proj: str = "linear", init_logit_scale: float = 1 / 0.07,
                 init_logit_bias: float | None = None, pretrained_cfg: dict[str, Any] | None = None):
        super().__init__()
        self.visual = visual
        self.text = text
        self.text_width = int(text_width)
        self.embed_dim = int(embed_dim)
        # the pooled (pre-logits) width: timm's head_hidden_size, which differs from num_features where the
        # family's head has a hidden layer (EfficientViT's 1280-wide MLP over 128 channels)
        width = getattr(visual, "head_hidden_size", None) or visual.num_features
        self.image_proj = ContrastiveProjection(width, embed_dim, image_proj)
        self.text_proj = ContrastiveProjection(self.text_width, embed_dim, text_proj)
        self.logit = LogitScale(init_logit_scale, init_logit_bias)
        self.pretrained_cfg = dict(pretrained_cfg or {})
        self.default_cfg = self.pretrained_cfg
        self.text_locked = False

    # -- towers -------------------------------------------------------------------------------------------
    def attach_text(self, text: nn.Module) -> None:
        """Put a (pretrained) text encoder in place, e.g. after loading an export that left it out."""
        width = getattr(text, "width", self.text_width)
        if width != self.text_width:
            raise ConfigError(f"text encoder width {width} does not fit this model's text projection "
                              f"({self.text_width}); use the text tower the model was trained with.")
        self.text = text
        if self.text_locked:
            self.lock_text_tower()

    def lock_text_tower(self) -> None:
        """Freeze the text encoder (LiT): only the text projection trains on the text side."""
        self.text_locked = True
        if self.text is not None:
            self.text.eval()
            for p in self.text.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.text_locked and self.text is not None:
            self.text.eval()  # a locked tower keeps its dropout off
        return self

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.visual, "no_weight_decay", lambda: set())()
        return {f"visual.{n}" for n in inner} | {"logit.logit_scale", "logit.logit_bias"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.visual, "set_grad_checkpointing"):
            self.visual.set_grad_checkpointing(enable)

    @property
    def logit_scale(self) -> torch.Tensor:
        """open_clip's attribute: the log of the temperature multiplier."""
        return self.logit.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor | None:
        return self.logit.logit_bias

    # -- encoders -----------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.image_proj(self.visual(images))
        return F.normalize(x, dim=-1) if normalize else x

    def text_features(self, text) -> torch.Tensor:
        """The text encoder's pooled output [B, text_width] (or the cached one passed in)."""
        if isinstance(text, torch.Tensor) and text.is_floating_point():
            if text.ndim != 2 or text.shape[-1] != self.text_width:
                raise InputShapeError(f"cached text embeddings must be [B, {self.text_width}], got "
                                      f"{tuple(text.shape)}")
            return text
        if self.text is None:
            raise ConfigError("this model has no text encoder attached (it was built for cached text embeddings); "
                              "build it with text_tower='minilm' (needs ZOO_DATA), or pass pooled embeddings.")
        if isinstance(text, Mapping):
            ids, mask = text["input_ids"], text.get("attention_mask")
        elif isinstance(text, torch.Tensor):
            ids, mask = text, None
        else:
            raise InputShapeError(f"encode_text takes token ids, a tokenizer's dict or pooled embeddings, not "
                                  f"{type(text).__name__}")
        vocab = getattr(getattr(getattr(self.text, "encoder", None), "config", None), "vocab_size", None)
        if ids.is_floating_point() or ids.ndim != 2:
            raise InputShapeError(f"token ids must be an integer tensor [B, T], got {ids.dtype} {tuple(ids.shape)}")
        if vocab is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InputShapeError(f"token ids must lie in [0, {vocab}) (the text tower's vocabulary), got "
                                  f"{int(ids.min())}..{int(ids.max())}; tokenize captions with the model's tokenizer "
                                  f"(zoo.vl.text.load_tokenizer).")
        if self.text_locked:
            with torch.no_grad():
                return self.text(ids, mask).float()
        return self.text(ids, mask)

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        feats = self.text_features(text)
        x = self.text_proj(feats.to(self.text_proj_dtype()))
        return F.normalize(x, dim=-1) if normalize else x

    def text_proj_dtype(self) -> torch.dtype:
        return next(self.text_proj.parameters(), self.logit.logit_scale).dtype

    def forward(self, images: torch.Tensor | None = None, text=None):
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale = self.logit()
        if self.logit.logit_bias is not None:
            return image_features, text_features, scale, self.logit.logit_bias
        return image_features, text_features, scale

    # -- export -------------------------------------------------------------------------------------------
    def export_state_dict(self, include_text: bool | None = None) -> dict[str, torch.Tensor]:
        """Weights to ship: everything but the text encoder when it is the locked, pretrained one."""
        include_text = (not self.text_locked) if include_text is None else include_text
        return {k: v for k, v in self.state_dict().items() if include_text or not k.startswith(TEXT_PREFIX)}

    def load_export(self, state: dict[str, torch.Tensor]) -> None:
        """Load an export; text-encoder keys may be absent (then the attached pretrained tower stays). A SigLIP
        export carries its learned logit bias: a model built without one gains it (the bias is the export's, and
        retrieval and zero-shot rankings do not depend on it)."""
        bias = state.get("logit.logit_bias")
        if bias is not None and self.logit.logit_bias is None:
            self.logit.logit_bias = nn.Parameter(bias.detach().float().reshape(()).clone())
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.startswith(TEXT_PREFIX)]
        unexpected = [k for k in state if k not in own]
        bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
               if k in own and v.shape != own[k].shape]
        if missing or unexpected or bad:
            from zoo.errors import WeightLoadError

            raise WeightLoadError(
                f"weights do not fit {self.pretrained_cfg.get('architecture', type(self).__name__)}: "
                f"missing {missing[:6]}, unexpected {unexpected[:6]}, shape mismatch {bad[:6]}. Check that the "
                f"file is an export of this architecture (zoo info NAME).")
        self.load_state_dict(state, strict=False)


TEXT_TOWERS = ("minilm", "cached")
"""``minilm``: the pretrained all-MiniLM-L6-v2 encoder (needs its zip under ZOO_DATA); ``cached``: no encoder,
the text side takes mean-pooled MiniLM embeddings computed beforehand (zoo.vl.embeddings)."""


def vision_language_builder(image_tower: str, tower_args: dict[str, Any] | None = None, img_size: int = 128,
                            embed_dim: int = 256, image_proj: str = "linear", text_proj: str = "linear",
                            init_logit_bias: float | None = None):
    """A registry builder: zoo image backbone ``image_tower`` (at ``img_size``) + MiniLM text tower.

    The builder's own arguments (``text_tower``, ``text_path``, ``lock_text``, ``img_size``, ``embed_dim``,
    the projections, the temperature's initial values, ``drop_path_rate``) and the image tower's overrides
    (``depth``, ...) may be given to ``create_model``.
    """
    defaults = dict(tower_args or {})

    def build(text_tower: str = "minilm", text_path: str | None = None, lock_text: bool = True,
              img_size: int | tuple[int, int] | None = img_size, drop_path_rate: float | None = None,
              embed_dim: int = embed_dim, image_proj: str = image_proj, text_proj: str = text_proj,
              init_logit_scale: float = 1 / 0.07, init_logit_bias: float | None = init_logit_bias,
              **overrides: Any) -> VisionLanguageModel:
        from zoo.factory import create_model
        from zoo.vl.text import MINILM_HUB_ID, MINILM_WIDTH, MeanPoolTextEncoder

        if text_tower not in TEXT_TOWERS:
            raise ConfigError(f"text_tower={text_tower!r}: choose one of {', '.join(TEXT_TOWERS)}")
        args = {**defaults, **overrides}
        if drop_path_rate is not None:
            args["drop_path_rate"] = drop_path_rate
        visual = create_model(image_tower, num_classes=0, img_size=img_size, **args)
        text = MeanPoolTextEncoder.from_pretrained(text_path) if text_tower == "minilm" else None
        vcfg = dict(getattr(visual, "pretrained_cfg", {}) or {})
        cfg = {k: vcfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct") if k in vcfg}
        cfg.update(kind="vision-language", image_tower=image_tower, tower_args=args, embed_dim=embed_dim,
                   text_tower=MINILM_HUB_ID, crop_pct=1.0)
        try:
            model = VisionLanguageModel(visual, text, MINILM_WIDTH, embed_dim, image_proj, text_proj,
                                        init_logit_scale, init_logit_bias, pretrained_cfg=cfg)
        except ValueError as e:
            raise ConfigError(f"cannot build the {image_tower} CLIP model: {e}") from None
        if lock_text:
            model.lock_text_tower()
        return model

    build.__name__ = f"build_clip_{image_tower}"
    return build
