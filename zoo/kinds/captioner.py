"""The captioner kind: a zoo image tower -> 2-layer MLP projector -> prefix of a text decoder -> token head.

Two twins share the network and differ only in the decoder's mixers and the objective (zoo.recipes.captioning):

- ``diffusion-captioner`` (LLaDA-V / LaViDa style): the decoder is bidirectional within the text (prompt +
  answer) and attends to the image prefix; only answer tokens are masked in training; the masked-diffusion
  samplers of ``heads.lm.sampling`` decode the answer.
- ``causal-captioner``: the same network with causal mixers, next-token loss on the answer, AR decoding.

The image prefix is a prefix-LM block: the projected image tokens attend among themselves and never to the
text, so their keys/values (GLA: the carried state) do not depend on the caption and are computed once per
generation (``image_prefix``, the decoder's ``DecoderCache``) and reused by every decoding step, exactly. The
same two-pass forward (image prefix into the cache, then the text on it) is what training runs, so training and
cached decoding see the same network. Mamba layers keep no cache and are refused as captioner layouts.

Contract: ``forward(images, tokens, prefix=None) -> logits [B, T, vocab]`` (``prefix``: an ``image_prefix``
cache to reuse), ``image_prefix(images) -> DecoderCache``, ``generate_caption(images, steps=, block=,
threshold=, temperature=, seed=) -> list[str]``, ``tokenizer`` (zoo.data.captions.CaptionVocab),
``pretrained_cfg`` (the tower's preprocessing: input_size, mean, std).

Question answering is the same decoding after a text prompt: a captioner trained on easy-VQA (``prompt_length``
set: the question's positions) answers ``zoo caption --question``, is scored by accuracy in ``zoo eval --data
easy-vqa`` and ``zoo publish`` (zoo.data.easy_vqa), and ``zoo demo`` asks it the bundled easy-VQA questions.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbones.layers.mlp import Mlp
from backbones.text_decoder import DecoderCache, TextDecoder
from heads.lm import TokenHead
from zoo.errors import ConfigError, InputShapeError, WeightLoadError, ZooError
from zoo.inputs import check_image_batch

__all__ = ["Captioner", "captioner_builder", "load_captioner", "evaluate_captioner", "publish_captioner",
           "resolve_tower", "trained_on_easy_vqa", "vqa_samples", "CAPTION_KINDS"]

CAPTION_KINDS = ("diffusion-captioner", "causal-captioner")
KIND_NAME = "captioner"
"""The registry kind of both twins (zoo.kinds.KINDS); ``Captioner.kind`` says which twin."""


class _Conditioned(nn.Module):
    """The language-model face the samplers need (``heads.lm.sampling.generate``), bound to one image prefix.

    ``forward(x, cache=None, commit=0)``: token logits of text positions; ``new_cache()`` starts from the image
    prefix, so the samplers' own prefix cache (Fast-dLLM's, the AR key/value cache) extends it. Without a cache
    the image prefix is reused as it is (``recompute=False``) or computed again from the images on every call
    (``recompute=True``: the reference the cached decoding is tested against).
    """

    def __init__(self, captioner: "Captioner", images: torch.Tensor, recompute: bool = False):
        super().__init__()
        self.captioner = captioner
        self.backbone = captioner.decoder
        self.tokenizer = captioner.tokenizer
        self.__dict__["images"] = images
        self.recompute = recompute
        self.prefix = None if recompute else captioner.image_prefix(images)
        self.prefix_len = captioner.num_image_tokens

    causal = property(lambda self: self.captioner.decoder.causal)
    vocab_size = property(lambda self: self.captioner.vocab_size)
    max_len = property(lambda self: self.captioner.decoder.max_len - self.prefix_len)

    def new_cache(self) -> DecoderCache:
        return (self.captioner.image_prefix(self.images) if self.recompute else self.prefix).clone()

    def forward(self, x: torch.Tensor, cache: Optional[DecoderCache] = None, commit: int = 0) -> torch.Tensor:
        if cache is None:
            cache = self.new_cache()
        return self.captioner.head(self.captioner.decoder.forward_features(x, cache=cache, commit=commit))


class Captioner(nn.Module):
    """Image tower + projector + text decoder + tied token head + caption vocabulary.

    Args:
        visual: a zoo image model without classifier (``num_classes=0``) whose ``forward_features`` gives
            tokens ``[B, T, C]`` (``backbone.num_prefix_tokens`` leading class tokens are dropped) or a map
            ``[B, C, H, W]``.
        decoder: the text decoder (causal for the AR twin); its layout must keep a cache (no Mamba).
        tokenizer: a ``CaptionVocab`` of the decoder's vocabulary size.
        pool: average-pool the tower's patch grid to ``pool x pool`` tokens (None: every patch token).
        answer_length: caption + end positions a generation writes.
        prompt_length: text positions of the question prompt (start token + question pieces, end-padded) the
            model was trained with (easy-VQA, zoo.data.easy_vqa); None: trained without prompts (it captions).
    """

    def __init__(self, visual: nn.Module, decoder: TextDecoder, tokenizer, kind: str, pool: Optional[int] = None,
                 answer_length: int = 32, pretrained_cfg: Optional[dict] = None, prompt_length: Optional[int] = None):
        super().__init__()
        if kind not in CAPTION_KINDS:
            raise ConfigError(f"a captioner's kind is one of {CAPTION_KINDS}, got {kind!r}")
        if (kind == "causal-captioner") != decoder.causal:
            raise ConfigError(f"{kind} needs a {'causal' if kind == 'causal-captioner' else 'bidirectional'} decoder")
        if not decoder.supports_cache:
            raise ConfigError(f"decoder layout {decoder.layout} has Mamba layers, which keep no cache; a captioner's "
                              f"image prefix is cached, so choose attn, gla or hybrid (gla) mixers")
        if tokenizer.vocab_size != decoder.vocab_size:
            raise ConfigError(f"the vocabulary has {tokenizer.vocab_size} ids but the decoder {decoder.vocab_size}")
        if pool is not None and (not isinstance(pool, int) or pool < 1):
            raise ConfigError(f"pool must be a positive grid side or None, got {pool!r}")
        if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 2):
            raise ConfigError(f"prompt_length must be >= 2 (the start token and a piece) or None, got "
                              f"{prompt_length!r}")
        self.visual = visual
        width = getattr(visual, "num_features", None) or visual.backbone.num_features
        self.projector = Mlp(width, decoder.dim, decoder.dim)
        self.decoder = decoder
        self.head = TokenHead(decoder.dim, decoder.vocab_size, decoder.embed)
        self.tokenizer = tokenizer
        self.kind, self.pool, self.answer_length = kind, pool, int(answer_length)
        self.prompt_length = prompt_length
        self.pretrained_cfg = dict(pretrained_cfg or {})
        # the size the tower is built for: create_model replaces pretrained_cfg by the entry's defaults (128 px)
        self._input_size = tuple(self.pretrained_cfg.get("input_size", (3, 128, 128)))
        self.tower_frozen = False
        self.tower_ref: Optional[dict] = None
        self._register_state_dict_hook(_drop_referenced_tower)
        self.register_load_state_dict_post_hook(_allow_referenced_tower)
        self.num_image_tokens = self._count_image_tokens()
        if self.num_image_tokens + (prompt_length or 1) + self.answer_length > decoder.max_len:
            raise ConfigError(f"{self.num_image_tokens} image tokens + {prompt_length or 1} prompt + "
                              f"{self.answer_length} answer positions exceed the decoder's max_len {decoder.max_len}; "
                              f"raise max_len or pool the image")

    @property
    def causal(self) -> bool:
        return self.decoder.causal

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    def freeze_tower(self, ref: Optional[dict] = None) -> "Captioner":
        """Freeze the image tower (LLaVA-style: only projector + decoder train): no gradients, so no optimizer
        state and no backward through it, and eval mode for good (``train()`` leaves it there). With ``ref``
        (``{"tag", "sha256"}`` of the registered tag it was loaded from) the tower is a reference, not state:
        ``state_dict()`` leaves out ``visual.*`` and loads accept their absence, so exports and shipped files
        hold only the trainable parts and builders reload the tower from the tag."""
        self.visual.requires_grad_(False)
        self.visual.eval()
        self.tower_frozen, self.tower_ref = True, dict(ref) if ref else None
        return self

    def train(self, mode: bool = True) -> "Captioner":
        super().train(mode)
        if self.tower_frozen:
            self.visual.eval()
        return self

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self._input_size

    @property
    def answers_questions(self) -> bool:
        """Trained with question prompts (easy-VQA): ``zoo caption --question`` and ``zoo eval --data easy-vqa``."""
        return self.prompt_length is not None

    def _count_image_tokens(self) -> int:
        with torch.no_grad():
            was = self.training
            self.eval()
            n = self.image_tokens(torch.zeros(1, *self.input_size)).shape[1]
            self.train(was)
        return int(n)

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.visual, "no_weight_decay", lambda: set())()
        return {f"visual.{n}" for n in inner} | {f"decoder.{n}" for n in self.decoder.no_weight_decay()}

    # -- the image prefix ---------------------------------------------------------------------------------
    def check_images(self, images) -> None:
        check_image_batch(images, next(self.parameters()).dtype)
        c = self.input_size[0]
        if images.shape[1] != c:
            raise InputShapeError(f"the image tower takes {c}-channel images, got {images.shape[1]} channels "
                                  f"(shape {tuple(images.shape)}); convert them (PIL: .convert('RGB')).")

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image tokens ``[B, N, dim]``: the tower's patch tokens (pooled to ``pool x pool``)."""
        with torch.no_grad() if self.tower_frozen else contextlib.nullcontext():
            feats = self.visual.forward_features(images)
        if feats.dim() == 4:                      # a feature map [B, C, H, W]
            grid = feats
        else:
            n_prefix = getattr(getattr(self.visual, "backbone", self.visual), "num_prefix_tokens", 0)
            feats = feats[:, n_prefix:]
            side = int(round(feats.shape[1] ** 0.5))
            grid = feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], side, -1) \
                if self.pool is not None and side * side == feats.shape[1] else None
            if grid is None:
                if self.pool is not None:
                    raise ConfigError(f"pool needs a square patch grid, got {feats.shape[1]} tokens")
                return self.projector(feats)
        if self.pool is not None:
            grid = F.adaptive_avg_pool2d(grid, self.pool)
        return self.projector(grid.flatten(2).transpose(1, 2))

    def image_prefix(self, images: torch.Tensor) -> DecoderCache:
        """The decoder's cache after the image tokens (prefix-LM: they attend only among themselves)."""
        self.check_images(images)
        cache = self.decoder.new_cache()
        emb = self.image_tokens(images)
        self.decoder.forward_features(None, cache=cache, commit=emb.shape[1], embeds=emb)
        return cache

    # -- training forward ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, tokens: torch.Tensor, prefix: Optional[DecoderCache] = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` of the text ``tokens`` (prompt + answer) after the images' prefix."""
        from zoo.inputs import check_token_batch

        if tokens.device.type == "cpu":  # the id range needs min/max: a host sync on a GPU, so CPU batches only
            check_token_batch(tokens, self.vocab_size, self.decoder.max_len - self.num_image_tokens)
        elif tokens.dim() != 2 or tokens.is_floating_point():
            raise InputShapeError(f"expected integer token ids [B, T], got {tokens.dtype} {tuple(tokens.shape)}")
        cache = self.image_prefix(images) if prefix is None else prefix
        if cache.length != self.num_image_tokens:
            raise ValueError(f"the prefix holds {cache.length} positions, not the {self.num_image_tokens} image tokens")
        return self.head(self.decoder.forward_features(tokens.long(), cache=cache))

    # -- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(self, images: torch.Tensor, steps: Optional[int] = None, block: Optional[int] = None,
                     threshold: Optional[float] = None, temperature: float = 0.0, seed: int = 0,
                     sampler: Optional[str] = None, cache: bool = True, recompute_prefix: bool = False,
                     length: Optional[int] = None, return_stats: bool = False, prompt: Optional[torch.Tensor] = None):
        """Answer ids ``[B, length]`` (end-padded) for ``images``; ``threshold`` picks Fast-dLLM's parallel
        decoder (diffusion), ``cache`` the samplers' text cache on top of the image prefix, ``recompute_prefix``
        runs the image tower again at every step (the reference for the cached prefix). ``prompt``: text ids
        ``[B, P]`` after the image (a question; default the start token), never rewritten."""
        from heads.lm.sampling import generate

        length = self.answer_length if length is None else length
        was = self.training
        self.eval()
        try:
            self.check_images(images)
            if steps is not None and (not isinstance(steps, int) or steps <= 0):
                raise ConfigError(f"steps must be a positive integer, got {steps!r}")
            if sampler is None and not self.causal:
                sampler = "threshold" if threshold is not None else "low_confidence"
            lm = _Conditioned(self, images, recompute=recompute_prefix)
            if prompt is None:
                prompt = torch.full((images.shape[0], 1), self.tokenizer.bos_id, dtype=torch.long, device=images.device)
            prompt = torch.as_tensor(prompt, dtype=torch.long, device=images.device)
            if prompt.dim() != 2 or prompt.shape[0] != images.shape[0]:
                raise InputShapeError(f"prompt ids must be [B, P] with one row per image ({images.shape[0]}), got "
                                      f"shape {tuple(prompt.shape)}")
            out = generate(lm, prompt, length, steps=None if self.causal else steps, block=None if self.causal else block,
                           sampler=sampler, threshold=threshold, temperature=temperature, seed=seed, cache=cache,
                           return_stats=return_stats)
        except ValueError as e:
            if isinstance(e, ZooError):
                raise
            raise ConfigError(f"generate_caption: {e}") from None
        finally:
            self.train(was)
        ids, stats = out if return_stats else (out, None)
        ids = ids[:, prompt.shape[1]:]
        return (ids, stats) if return_stats else ids

    def generate_caption(self, images: torch.Tensor, steps: Optional[int] = None, block: Optional[int] = None,
                         threshold: Optional[float] = None, temperature: float = 0.0, seed: int = 0, **kw) -> list[str]:
        """One caption per image of the normalised batch ``images [B, 3, H, W]``."""
        ids = self.generate_ids(images, steps=steps, block=block, threshold=threshold, temperature=temperature,
                                seed=seed, **kw)
        return [self.tokenizer.decode(row) for row in ids]


# -- building -------------------------------------------------------------------------------------------------
def _drop_referenced_tower(module: "Captioner", state: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: a tower that is a reference to a registered tag is not part of the state."""
    if module.tower_ref is not None:
        for k in [k for k in state if k.startswith(prefix + "visual.")]:
            del state[k]


def _allow_referenced_tower(module: "Captioner", incompatible) -> None:
    """load_state_dict hook: a referenced tower's keys may be absent (the builder loaded it from its tag)."""
    if module.tower_ref is not None:
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                        if not (k.startswith("visual.") or ".visual." in k)]


def resolve_tower(spec: str, sha256: Optional[str] = None) -> tuple[str, Optional[dict]]:
    """(weight file, reference) of ``tower_from``: a registered tag (``clip_vit_tiny_d6_minilm_128.flickr8k``;
    reference ``{"tag", "sha256"}``, checked against ``sha256`` when given) or a file path (reference None)."""
    from pathlib import Path

    from zoo import hub
    from zoo.registry import get_entry, get_tag, split_name

    spec = str(spec)
    if Path(spec).is_file():
        return spec, None
    name, tag_name = split_name(spec)
    try:
        entry = get_entry(name)
    except ZooError:
        entry = None
    if entry is None or tag_name is None or tag_name not in entry.tags:
        raise WeightLoadError(
            f"tower_from={spec} is neither a file nor a registered tag"
            + (f" ({name} has tags: {', '.join(entry.tags) or 'none'})" if entry is not None else "")
            + (f"; this captioner's image tower is the tag {spec} (sha256 {sha256[:12]}...), which this "
               f"installation does not ship: install the speedzoo that ships it" if sha256 else
               "; pass a CLIP export or a tag of `zoo list --pretrained clip_*`"))
    tag = get_tag(entry, tag_name)
    path = hub.resolve(tag)
    digest = tag.sha256 or hub.sha256_of(path)
    if sha256 and digest != sha256:
        raise WeightLoadError(f"this captioner was trained on the image tower of {spec} with sha256 {sha256[:12]}..., "
                              f"but the installed tag's file has sha256 {digest[:12]}...: its projector and decoder do "
                              f"not fit that tower; install the speedzoo version it was published with")
    return str(path), {"tag": spec, "sha256": digest}


def _is_backbone_tag(spec: str) -> bool:
    """Whether ``tower_from`` names a registered backbone's tag (a classifier's: it starts the tower, adapted as
    its family allows: head dropped, patch size resampled) rather than a CLIP tag or file."""
    from pathlib import Path

    from zoo.registry import get_entry, split_name

    name, tag = split_name(str(spec))
    if tag is None or Path(str(spec)).is_file():
        return False
    try:
        return get_entry(name).kind not in ("vision-language", "captioner")
    except ZooError:
        return False


def load_tower(model: Captioner, path: str) -> None:
    """Initialise the image tower from a CLIP export (``visual.*`` keys) or a captioner export."""
    from zoo import hub

    try:
        state = hub.read_state_dict(path)
    except ZooError:
        raise
    except Exception as e:  # safetensors' own error types
        raise WeightLoadError(f"tower_from={path}: not a readable weight file ({e})") from None
    own = model.visual.state_dict()
    tower = {k[len("visual."):]: v.float() for k, v in state.items() if k.startswith("visual.")}
    missing = [k for k in own if k not in tower]
    bad = [k for k in own if k in tower and tower[k].shape != own[k].shape]
    if missing or bad:
        raise WeightLoadError(f"tower_from={path} does not hold this image tower: missing {missing[:4]}, shape "
                              f"mismatch {bad[:4]}; pass a CLIP export of the same tower (e.g. "
                              f"clip_vit_tiny_d6_minilm_128 for vit_tiny_patch16_224 depth 6)")
    model.visual.load_state_dict({k: tower[k] for k in own})


def captioner_builder(kind: str, image_tower: str, tower_args: Optional[dict] = None, img_size: int = 128,
                      decoder: Optional[dict] = None, mean=None, std=None):
    """A registry builder: ``builder(vocab=None, pool=None, answer_length=32, prompt_length=None, tower_from=None,
    img_size=, drop_path_rate=None, **decoder overrides)``; ``vocab`` is a CaptionVocab or a vocabulary file (default
    the packaged Flickr8k list). ``tower_from``: a CLIP tag or export (its image tower), or a classifier tag of the
    tower's backbone (``vit_micro_patch4_32.cifar10``: the classifier's backbone, adapted by zoo.factory)."""
    tower_defaults, dec_defaults = dict(tower_args or {}), dict(decoder or {})

    def build(vocab=None, pool: Optional[int] = None, answer_length: int = 32, tower_from: Optional[str] = None,
              img_size: int = img_size, drop_path_rate: Optional[float] = None, tower_args: Optional[dict] = None,
              freeze_tower: bool = False, tower_sha256: Optional[str] = None, prompt_length: Optional[int] = None,
              **overrides: Any) -> Captioner:
        from zoo.data.captions import CaptionVocab
        from zoo.factory import create_model

        if freeze_tower and not tower_from:
            raise ConfigError("freeze_tower keeps the image tower as it is loaded: give tower_from (a CLIP tag such "
                              "as clip_vit_tiny_d6_minilm_128.flickr8k, or a CLIP export)")
        if isinstance(vocab, CaptionVocab):
            tok = vocab
        elif isinstance(vocab, (list, tuple)) or (isinstance(vocab, str) and vocab.lstrip().startswith("[")):
            tok = CaptionVocab.from_json(vocab) if isinstance(vocab, str) else CaptionVocab(vocab)
        else:
            tok = CaptionVocab.load(vocab)
        targs = {**tower_defaults, **dict(tower_args or {})}
        if drop_path_rate is not None:
            targs["drop_path_rate"] = drop_path_rate
        visual = create_model(image_tower, num_classes=0, img_size=img_size, **targs)
        cfg = {**dec_defaults, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            dec = TextDecoder(tok.vocab_size, causal=kind == "causal-captioner", **cfg)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot build the captioner's text decoder with {overrides}: {e}") from None
        pcfg = dict(input_size=(3, img_size, img_size), mean=tuple(mean or visual.pretrained_cfg.get("mean")),
                    std=tuple(std or visual.pretrained_cfg.get("std")), interpolation="bicubic", crop_pct=1.0,
                    kind=kind, image_tower=image_tower, tower_args=targs)
        model = Captioner(visual, dec, tok, kind, pool=pool, answer_length=answer_length, pretrained_cfg=pcfg,
                          prompt_length=prompt_length)
        if tower_from and _is_backbone_tag(tower_from):  # a classifier's weights (vit_micro_patch4_32.cifar10)
            from zoo.factory import load_tag_into

            load_tag_into(model.visual, tower_from)
            model.pretrained_cfg["tower"] = {"backbone_tag": str(tower_from)}
            if freeze_tower:
                model.freeze_tower()
        elif tower_from:
            path, ref = resolve_tower(tower_from, tower_sha256)
            load_tower(model, path)
            model.pretrained_cfg["tower"] = ref or {"file": str(path)}
            if freeze_tower:
                model.freeze_tower(ref)
        return model

    build.__name__ = f"build_{kind.replace('-', '_')}_{image_tower}"
    return build


VQA_DATA_MODULE = "EasyVQADataModule"
"""An export's ``data`` metadata when it was trained on easy-VQA (zoo.data.easy_vqa)."""
VQA_DATA_NAMES = ("easy-vqa", "easyvqa")
"""What ``zoo eval --data`` / ``zoo publish --data`` call easy-VQA (it comes from its PyPI package, not ZOO_DATA)."""


def trained_on_easy_vqa(meta: dict) -> bool:
    """Whether an export's metadata says easy-VQA (the data module it was fitted on)."""
    return meta.get("data") == VQA_DATA_MODULE


def scored_on(answers_questions: bool, data: Optional[str], what: str) -> str:
    """The data ``zoo eval`` / ``zoo publish`` score a captioner on: ``easy-vqa`` (accuracy) for one trained on its
    questions, a caption set (BLEU / CIDEr; default flickr8k) otherwise. ``what`` names the model in the
    ConfigError for the other pairing: a question model's captions and a caption model's answers mean nothing."""
    if data is None:
        return "easy-vqa" if answers_questions else "flickr8k"
    vqa = data.lower() in VQA_DATA_NAMES
    if vqa:
        need_prompts(answers_questions, what, "easy-VQA")
    if answers_questions and not vqa:
        raise ConfigError(f"{what} answers easy-VQA questions (trained with question prompts), so it is scored by "
                          f"accuracy on --data easy-vqa (its default), not on the captions of {data}")
    return "easy-vqa" if vqa else data


def load_captioner(path, device: str | torch.device = "cpu") -> Captioner:
    """A captioner from an export of ``zoo.recipes.captioning`` (its metadata names the model, the builder
    arguments and the vocabulary), weights in fp32."""
    from safetensors import safe_open

    from zoo import create_model, hub
    from zoo.data.captions import CaptionVocab
    from zoo.factory import load_weights

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except FileNotFoundError:
        raise WeightLoadError(f"{path} does not exist; pass a captioner export (runs/<recipe>/export.safetensors)") from None
    except Exception as e:  # safetensors raises its own error types for unreadable files
        raise WeightLoadError(f"{path} is not a readable safetensors export ({e})") from None
    if meta.get("kind") not in CAPTION_KINDS or "vocab" not in meta:
        raise WeightLoadError(f"{path} is not a captioner export (no captioner kind/vocab metadata); export one "
                              f"with zoo fit --config configs/flickr8k_caption_mdlm.yaml")
    args = json.loads(meta.get("model_args") or "{}")
    for k in ("tower_from", "freeze_tower", "tower_sha256", "vocab"):  # the export's vocabulary, its own tower ...
        args.pop(k, None)
    if meta.get("tower_included") == "False":  # ... or a frozen one by reference to its registered tag
        args.update(tower_from=meta["tower_tag"], tower_sha256=meta.get("tower_sha256") or None, freeze_tower=True)
    if trained_on_easy_vqa(meta):  # the question is the prompt (the data module's layout; exports predate the arg)
        from zoo.data.easy_vqa import PROMPT_LENGTH

        args.setdefault("prompt_length", PROMPT_LENGTH)
    model = create_model(meta["model"], vocab=CaptionVocab.from_json(meta["vocab"]), **args)
    load_weights(model, {k: v.float() for k, v in hub.read_state_dict(path).items()}, source=str(path))
    model.pretrained_cfg.update(architecture=meta["model"], source=str(path), input_size=model.input_size)
    return model.to(device).eval()


# -- evaluation -------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_captioner(model: Captioner, data: str = "flickr8k", split: str = "test", limit: Optional[int] = None,
                       batch_size: int = 100, settings: Optional[list[dict]] = None, amp: bool = True,
                       warmup: bool = True) -> list[dict[str, Any]]:
    """Caption every image of ``split`` once per sampler setting; BLEU-1..4 and CIDEr against its references
    (zoo.vl.caption_metrics), decoding tokens/s (caption pieces up to the end token, over the wall time of the
    generation) and seconds per image at ``batch_size``. ``settings``: dicts of generate_caption arguments."""
    from zoo.data.image_text import decode_images, normalise, open_image_text
    from zoo.vl.caption_metrics import caption_scores

    ds = open_image_text(data, split, limit)
    images = decode_images(ds, model.input_size[1:])
    refs = {i: caps for i, caps in enumerate(ds.captions)}
    device = next(model.parameters()).device
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    settings = settings or [{}]
    rows = []
    for setting in settings:
        setting = dict(setting)
        if warmup:  # first-call costs (allocator, kernels) are not decoding speed
            model.generate_ids(normalise(images[:batch_size].float().to(device), mean, std), **setting)
        preds, pieces, seconds = {}, 0, 0.0
        for lo in range(0, len(images), batch_size):
            x = normalise(images[lo:lo + batch_size].float().to(device), mean, std)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
                ids, stats = model.generate_ids(x, return_stats=True, **setting)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            ended = (ids == model.tokenizer.end_id).long().cumsum(-1) == 0
            pieces += int(ended.sum()) + int(((ids == model.tokenizer.end_id).any(-1)).sum())
            for j, row in enumerate(ids):
                preds[lo + j] = model.tokenizer.decode(row)
        scores = caption_scores(preds, refs)
        rows.append({"model": model.pretrained_cfg.get("architecture", ""), "kind": model.kind, **setting,
                     "images": len(images), "batch_size": batch_size, **scores,
                     "tokens_per_s": pieces / max(seconds, 1e-9), "ms_per_image": 1000 * seconds / len(images),
                     "seconds": round(seconds, 3), "examples": [preds[i] for i in range(min(3, len(preds)))]})
    return rows


def _setting_words(setting: dict, causal: bool) -> str:
    """A sampler setting in words (tables, manifest metrics)."""
    if causal:
        return "greedy, kv cache"
    if setting.get("threshold") is not None:
        return f"threshold {setting['threshold']}, block {setting.get('block')}"
    steps = setting.get("steps")
    steps = f"{steps} steps" if steps is not None else "one step per answer position"
    return f"{steps}, block {setting.get('block') or 'the whole answer'}"


# -- zoo eval / zoo publish -----------------------------------------------------------------------------------------
def handles(argv: list[str]) -> bool:
    """Whether ``zoo eval argv`` names a captioner: a registered one (``name[.tag]``) or a captioner export."""
    from pathlib import Path

    from zoo.registry import get_entry, split_name
    from zoo.vl.evaluate import export_metadata

    names = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or not argv[i - 1].startswith("--"))]
    if not names:
        return False
    if Path(names[0]).is_file():
        return export_metadata(names[0]).get("kind") in CAPTION_KINDS
    try:
        return get_entry(split_name(names[0])[0]).kind == KIND_NAME
    except ZooError:
        return False


def eval_main(argv: list[str]) -> int:
    """``zoo eval CAPTIONER[.tag]|EXPORT [--data flickr8k|easy-vqa] [--split test] [--limit N] [--steps --block
    --threshold]``: BLEU-1..4, CIDEr-D, tokens/s and ms/image on a caption set's images against their references
    (evaluate_captioner), or easy-VQA test accuracy over its questions (zoo.data.easy_vqa.evaluate_vqa; the default
    data of a captioner trained on it)."""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(prog="zoo eval", description="Caption a split's images and score them (BLEU, CIDEr), "
                                "or answer easy-VQA's questions (accuracy).")
    p.add_argument("model", help="a captioner name[.tag] or a zoo fit export of one")
    p.add_argument("--checkpoint", default=None, help="a zoo fit export of the named captioner")
    p.add_argument("--data", default=None, help="an image-caption set (name under ZOO_DATA, zip or folder), or "
                   "easy-vqa (its PyPI package); default easy-vqa for a captioner trained on it, else flickr8k")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (easy-VQA: and their questions)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: one per answer position)")
    p.add_argument("--block", type=int, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", action="store_true", help="fp32 on the GPU (default: bf16 autocast there)")
    p.add_argument("--out", default=None, help="also write the result row to this JSON file")
    a = p.parse_args(argv)
    if a.steps is not None and a.steps <= 0:
        raise ConfigError(f"--steps must be a positive integer, got {a.steps}")
    if a.limit is not None and a.limit < 1 or a.batch_size < 1:
        raise ConfigError(f"--limit and --batch-size must be >= 1 (got {a.limit}, {a.batch_size})")
    name, checkpoint = (None, a.model) if Path(a.model).is_file() else (a.model, a.checkpoint)
    model = load_model(name, checkpoint, a.device)
    data = scored_on(model.answers_questions, a.data, a.model)
    setting = {k: v for k, v in (("steps", a.steps), ("block", a.block), ("threshold", a.threshold)) if v is not None}
    words = _setting_words(setting, model.causal)
    if data == "easy-vqa":  # what zoo publish measured: zoo.data.easy_vqa's evaluation (python -m ... --evaluate)
        from zoo.data.easy_vqa import evaluate_vqa

        (row,) = evaluate_vqa(model, a.split, a.limit, a.batch_size, [setting], amp=not a.no_amp)
        row = {"name": a.model, "data": data, "split": a.split, "setting": words, **row}
        print(f"{a.model} on easy-VQA {row['split']} ({row['questions']} questions on {row['images']} images, "
              f"{words}): accuracy {100 * row['accuracy']:.2f}%; {row['tokens_per_s']:.0f} tokens/s, "
              f"{row['ms_per_question']:.2f} ms/question at batch {a.batch_size}")
        examples = [f"{q} -> {ans}" for q, ans in row["examples"]]
    else:
        (row,) = evaluate_captioner(model, data, a.split, a.limit, a.batch_size, [setting], amp=not a.no_amp)
        row = {"name": a.model, "data": data, "split": a.split, "setting": words, **row}
        print(f"{a.model} on {data} {a.split} ({row['images']} images, {words}): "
              + ", ".join(f"{k} {row[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider"))
              + f"; {row['tokens_per_s']:.0f} tokens/s, {row['ms_per_image']:.2f} ms/image at batch {a.batch_size}")
        examples = row["examples"]
    for ex in examples:
        print(f"  {ex}")
    if a.out:
        Path(a.out).write_text(json.dumps(row, indent=1) + "\n")
    return 0


def need_prompts(answers_questions: bool, name: str, what: str) -> None:
    """ConfigError unless the captioner ``name`` was trained with question prompts (easy-VQA): ``what`` asks it."""
    if not answers_questions:
        raise ConfigError(f"{name} was trained without question prompts (it captions images), so {what} has nothing "
                          f"to ask it; use a captioner trained on easy-VQA ({DEFAULT_VQA_CAPTIONER} where installed, "
                          f"or the export of zoo fit --config configs/easyvqa_mdlm.yaml)")


FLICKR8K_LICENSE = ("Flickr8k captions and images: research and non-commercial use only (Hodosh, Young, Hockenmaier, "
                    "JAIR 2013)")
EASY_VQA_LICENSE = "easy-VQA questions and images: MIT license (Victor Zhou; PyPI easy-vqa 1.0)"


def publish_captioner(export, tag: str, data: Optional[str] = None, license: str = "apache-2.0", folder=None,
                      device: str = "cpu", quant: str | None = None, limit: Optional[int] = None,
                      batch_size: int = 100) -> dict[str, Any]:
    """Measure the shipped copy of a captioner ``export`` with the default sampler (one answer position a step /
    AR greedy; fp32), ship it as ``<model>.<tag>``; returns the manifest record. ``data``: the test images of a
    caption set (BLEU-1..4, CIDEr-D; default flickr8k) or, for an export trained on easy-VQA (its default),
    ``easy-vqa``: accuracy over every test question (``limit``: the first N images, either way). An export whose
    frozen tower is a reference ships only the projector and decoder, and the record names the tower's tag and
    sha256 (``arch_overrides.tower_from``): loading rebuilds it from that tag."""
    import datetime
    from pathlib import Path

    from zoo.vl.evaluate import export_metadata
    from zoo.weights.manifest import check_tag, publish_record, ship_file
    from zoo.weights.quant import storage

    check_tag(tag, example="flickr8k")
    export = Path(export)
    if not export.is_file():
        raise ConfigError(f"export {export} does not exist; publish the export.safetensors of a `zoo fit` run")
    meta = export_metadata(export)
    name = meta.get("model")
    if meta.get("kind") not in CAPTION_KINDS or not name or "vocab" not in meta:
        raise ConfigError(f"{export} is not a captioner export of zoo fit (kind {meta.get('kind')!r}); export one "
                          f"with zoo fit --config configs/flickr8k_caption_mdlm.yaml")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    vqa = trained_on_easy_vqa(meta)
    data = scored_on(vqa, data, str(export))
    measured: dict[str, Any] = {}

    def measure(shipped: Path) -> None:
        model = load_captioner(shipped, device)
        if vqa:
            from zoo.data.easy_vqa import evaluate_vqa

            (row,) = evaluate_vqa(model, "test", limit, batch_size, [{}], amp=False)
        else:
            (row,) = evaluate_captioner(model, data, "test", limit, batch_size, [{}], amp=False, warmup=False)
        measured.update(row, causal=model.causal, cfg=model.pretrained_cfg, prompt_length=model.prompt_length)

    folder, file, sha256 = ship_file(export, name, tag, folder, quant=quant, check=measure)
    res = measured
    args = {k: v for k, v in json.loads(meta.get("model_args") or "{}").items()
            if k not in ("tower_from", "freeze_tower", "tower_sha256", "vocab")}
    tower = None
    if meta.get("tower_included") == "False":
        tower = {"tag": meta["tower_tag"], "sha256": meta.get("tower_sha256", "")}
        args.update(tower_from=tower["tag"], tower_sha256=tower["sha256"], freeze_tower=True)
    from zoo.data.captions import CaptionVocab

    pieces = json.loads(meta["vocab"])
    if pieces != CaptionVocab.load().pieces:  # not the builder's default list: the record carries it
        args["vocab"] = pieces
    setting = _setting_words({}, res["causal"])
    first = f", first {limit}" + (" images" if vqa else "") if limit else ""
    if vqa:  # the builder needs the prompt layout; the figure is accuracy over the questions
        args["prompt_length"] = res["prompt_length"]
        metrics = {f"easy-vqa (test{first}, {res['questions']} questions, {setting})":
                   {"accuracy": round(100 * float(res["accuracy"]), 2)}}
    else:
        metrics = {f"{data} (test{first}, {res['images']} images, {setting})":
                   {k: round(float(res[k]), 4) for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider")}}
    data_license = EASY_VQA_LICENSE if vqa else FLICKR8K_LICENSE if "flickr" in data else data + ": see its source"
    again = (f"zoo eval {name}.{tag} --data {data} --device {device}" + (f" --limit {limit}" if limit else "")
             + ("" if str(device) == "cpu" else " --no-amp"))  # measured in fp32; eval's GPU default is bf16
    trained = meta.get("recipe") or export.parent.name
    cfg = res["cfg"]
    record = {
        "file": file, "kind": KIND_NAME, "caption_kind": meta["kind"], "sha256": sha256, "license": license,
        "num_classes": None, "label_names": [], "arch_overrides": args,
        "preprocess": {k: list(cfg[k]) for k in ("input_size", "mean", "std")},  # the tower's, as built
        "metrics": metrics,
        "eval": {"data": data, "split": "test", "limit": limit, "images": res["images"], "batch_size": batch_size,
                 "device": str(device), **({"questions": res["questions"]} if vqa else {})},
        "notes": (f"trained with `zoo fit` ({trained}, {meta.get('global_step', '?')} steps"
                  + (f", image tower frozen from {tower['tag']}, not in this file" if tower else "")
                  + f"); weights {license}, {data_license}; {storage(quant)} weights measured by `zoo publish` "
                  f"(fp32) on {datetime.date.today().isoformat()}; reproduce: {again}"),
    }
    if tower:
        record["tower"] = tower
    return publish_record(name, tag, record, quant, folder)


# -- zoo caption ------------------------------------------------------------------------------------------------
def read_image(path, size: tuple[int, int], channels: int = 3, rgb: bool = False) -> torch.Tensor:
    """An image file as uint8 ``[C, H, W]`` resized to ``size`` (bicubic, as the training data was). An image
    whose channel count is not the tower's is refused (InputShapeError) unless ``rgb`` converts it."""
    from pathlib import Path

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from zoo.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file {p} does not exist" + (" (it is a folder)" if p.is_dir() else "")
                        + "; pass the path of a JPEG or PNG")
    try:
        with Image.open(p) as im:
            bands = 3 if im.mode == "P" else len(im.getbands())  # a palette image is a colour image
            if bands != channels and not rgb:
                raise InputShapeError(f"{p} has {bands} channel(s) (mode {im.mode}) but the image tower takes "
                                      f"{channels}; convert it to RGB (--rgb, or PIL .convert('RGB')).")
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        if isinstance(e, ZooError):
            raise
        raise InputShapeError(f"{p} is not an image file this can read ({e}); pass a JPEG or PNG.") from None
    t = torch.from_numpy(arr)
    return (t[None] if t.dim() == 2 else t.permute(2, 0, 1)).contiguous()


def load_model(name: Optional[str], checkpoint: Optional[str] = None, device: str = "cpu") -> Captioner:
    """The captioner ``name`` (``name.tag`` with its weights), or the export at ``checkpoint``."""
    import logging

    from zoo.factory import load_named_or_export

    return load_named_or_export(name, checkpoint, device, kinds=(KIND_NAME,), load_export=load_captioner,
                                need="zoo caption needs a captioner (zoo list --kind captioner)",
                                drop_flag="--model", logger=logging.getLogger(__name__))


def caption_files(model: Captioner, files, batch_size: int = 32, rgb: bool = False,
                  questions: Optional[list[str]] = None, **kw) -> list[str]:
    """One caption per image file, or with ``questions`` (one per file; a captioner trained on easy-VQA) the answer
    to each file's question (``kw``: generate_caption's sampler arguments)."""
    from zoo.data.image_text import normalise

    if questions is not None:
        need_prompts(model.answers_questions, model.pretrained_cfg.get("architecture", "this captioner"), "a question")
        if len(questions) != len(files):
            raise ConfigError(f"one question per image file: {len(questions)} questions for {len(files)} files")
    c, h, w = model.input_size
    device = next(model.parameters()).device
    images = [read_image(f, (h, w), c, rgb) for f in files]  # every file is checked before any decoding
    out = []
    for lo in range(0, len(images), batch_size):
        x = normalise(torch.stack(images[lo:lo + batch_size]).float().to(device), model.pretrained_cfg["mean"],
                      model.pretrained_cfg["std"])
        if questions is None:
            out += model.generate_caption(x, **kw)
        else:
            from zoo.data.easy_vqa import answer_questions

            out += answer_questions(model, x, questions[lo:lo + batch_size], **kw)
    return out


DEFAULT_CAPTIONER = "caption_mdlm_vit_tiny_d6_128.flickr8k"
"""What ``zoo caption`` uses when neither --model nor --checkpoint is given: the shipped diffusion captioner."""
DEFAULT_VQA_CAPTIONER = "caption_mdlm_vit_micro_p16_128.easyvqa"
"""What ``zoo caption --question`` uses then: the diffusion captioner trained on easy-VQA, once published."""


def _default_captioner(question: bool = False) -> str:
    import zoo

    name = DEFAULT_VQA_CAPTIONER if question else DEFAULT_CAPTIONER
    if name not in zoo.list_pretrained():
        raise ConfigError(f"name a captioner{' trained on easy-VQA' if question else ''}: --checkpoint EXPORT (a zoo "
                          f"fit export) or --model NAME[.tag] (the default {name} is not installed)")
    return name


def vqa_samples() -> list[tuple[str, str, str]]:
    """(file, question, answer) of the bundled easy-VQA test images (zoo/vl/static/vqa, MIT: its README), one of
    each image's own test questions."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "vl" / "static" / "vqa"
    rows = json.loads((folder / "questions.json").read_text())
    return [(str(folder / f), r["question"], r["answer"]) for f, r in rows.items()]


def _answers_questions(name: str) -> bool:
    """Whether the registered ``name.tag`` was trained with question prompts (its record's prompt_length)."""
    from zoo.registry import get_entry, get_tag, split_name

    base, tag = split_name(name)
    return get_tag(get_entry(base), tag).arch_overrides.get("prompt_length") is not None


def _demo_block(name: str, on: str, run) -> None:
    """One shipped captioner's block of ``zoo demo``: the lines ``run(model)`` returns, timed on the CPU."""
    model = load_model(name, None, "cpu")
    t0 = time.perf_counter()
    lines = run(model)
    print(f"{name} ({model.kind}, {on} in {time.perf_counter() - t0:.1f} s):")
    print("".join(f"  {ln}\n" for ln in lines))


def demo() -> int:
    """``zoo demo``'s section: every shipped captioner on bundled test images (default sampler, greedy): captions of
    the Flickr8k ones, or from a captioner trained on easy-VQA its answers to the easy-VQA images' questions beside
    the truth; a line saying so where either has no tag. Returns how many captioners ran."""
    import zoo
    from zoo.registry import kind_of
    from zoo.vl.service import sample_files

    tags = [n for n in zoo.list_pretrained() if kind_of(n) == "captioner"]
    vqa = [n for n in tags if _answers_questions(n)]
    captioners = [n for n in tags if n not in vqa]
    files = [str(f) for f in sample_files()]
    if not captioners:
        print("captioners: no shipped weights yet (zoo list --kind captioner); skipping captions\n")
    for name in captioners:
        _demo_block(name, f"{len(files)} bundled Flickr8k test images", lambda m: [
            f"{f.rsplit('/', 1)[-1]}  {c}" for f, c in zip(files, caption_files(m, files, len(files)))])
    samples = vqa_samples()
    if not vqa:
        print("easy-VQA captioners: no shipped weights yet (zoo publish EXPORT --tag easyvqa); skipping questions\n")
    images, questions = [f for f, _, _ in samples], [q for _, q, _ in samples]
    for name in vqa:
        _demo_block(name, f"{len(samples)} bundled easy-VQA test images and questions", lambda m: [
            f"{f.rsplit('/', 1)[-1]}  {q} -> {ans}  (truth: {truth})" for (f, q, truth), ans in
            zip(samples, caption_files(m, images, len(images), questions=questions))])
    return len(tags)


def main(argv: Optional[list[str]] = None) -> int:
    """``zoo caption IMAGE...|--example [--question TEXT] [--model NAME | --checkpoint EXPORT] [--steps N]
    [--block B] [--threshold T] [--temperature T] [--seed S] [--device cpu]``: one line ``file<TAB>caption`` per
    image, or ``file<TAB>question<TAB>answer`` from a captioner trained on easy-VQA."""
    import argparse

    p = argparse.ArgumentParser(prog="zoo caption", description="Caption images with a captioner (diffusion or AR), "
                                "or answer a question about them (a captioner trained on easy-VQA).")
    p.add_argument("images", nargs="*", help="image files (JPEG, PNG)")
    p.add_argument("--example", action="store_true", help="the bundled test images: Flickr8k's (zoo/vl/static/"
                   "samples; research and non-commercial use only), or for an easy-VQA captioner easy-VQA's with "
                   "one of their test questions each (zoo/vl/static/vqa; MIT)")
    p.add_argument("--question", default=None, help="ask this question about every image (a captioner trained on "
                   "easy-VQA, e.g. 'what color is the shape?'); default model: " + DEFAULT_VQA_CAPTIONER
                   + " where installed")
    p.add_argument("--model", default=None, help="a captioner (zoo list --kind captioner), .tag for its weights; "
                   "default: the shipped " + DEFAULT_CAPTIONER)
    p.add_argument("--checkpoint", default=None, help="a zoo fit export of a captioner")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: one per answer position)")
    p.add_argument("--block", type=int, default=None, help="semi-autoregressive block length (divides the answer)")
    p.add_argument("--threshold", type=float, default=None, help="Fast-dLLM parallel decoding: commit above it")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rgb", action="store_true", help="convert grayscale / RGBA images to RGB instead of refusing")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if not a.images and not a.example:
        raise ConfigError("name image files to caption, or --example for the bundled ones")
    if a.question is not None:
        a.question = " ".join(a.question.split())  # one line of output per image, whatever the shell passed
        if not a.question:
            raise ConfigError("--question is empty; ask about the image, e.g. --question 'what color is the shape?'")
    if a.steps is not None and a.steps <= 0:
        raise ConfigError(f"--steps must be a positive integer, got {a.steps}")
    if a.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {a.batch_size}")
    if not a.model and not a.checkpoint:
        a.model = _default_captioner(question=a.question is not None)
    model = load_model(a.model, a.checkpoint, a.device)
    asked = [a.question] * len(a.images)
    if a.example and model.answers_questions:
        samples = vqa_samples()
        a.images += [f for f, _, _ in samples]
        asked += [a.question or q for _, q, _ in samples]
    elif a.example:
        from zoo.vl.service import sample_files

        a.images += [str(f) for f in sample_files()]
        asked += [a.question] * (len(a.images) - len(asked))
    if model.answers_questions and None in asked:
        raise ConfigError(f"{a.model or a.checkpoint} answers questions about images (trained on easy-VQA): give "
                          f"--question, e.g. --question 'what color is the shape?' (or --example alone: the bundled "
                          f"images with their questions)")
    questions = asked if a.question is not None or model.answers_questions else None
    out = caption_files(model, a.images, a.batch_size, a.rgb, questions=questions, steps=a.steps, block=a.block,
                        threshold=a.threshold, temperature=a.temperature, seed=a.seed)
    for f, q, c in zip(a.images, asked, out):
        print(f"{f}\t{q}\t{c}" if questions is not None else f"{f}\t{c}")
    return 0
