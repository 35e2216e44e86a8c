"""The language-model kinds: ``diffusion-lm`` (masked diffusion, MDLM / LLaDA) and ``causal-lm`` (its
autoregressive twin), one composition of a ``backbones.text_decoder.TextDecoder`` and a ``heads.lm.TokenHead``.

Contract: ``forward(tokens [B, T], cache=None, commit=0) -> logits [B, T, vocab]`` (raw logits; the
diffusion loss and samplers apply SUBS), ``generate(prompt_ids, length, ...)`` (``heads.lm.sampling``), the
attached ``tokenizer`` (``encode``/``decode``, ``mask_id``, ``end_id``) and ``pretrained_cfg``. The two kinds
differ only in ``causal`` (the decoder's mixers) and the objective the recipe trains them with, so an MDLM
and its twin compare with the same network.

Input checks (``zoo.inputs.check_token_batch``: integer ids ``[B, T]``, B, T >= 1, T <= max_len, ids in the
vocabulary) run in ``forward``, ``generate`` and ``likelihood``. The id range needs the ids' min and max, a host
sync on a GPU, so ``forward`` reads them only for CPU tensors or with ``check_token_values = True`` (a debug
flag): the training step on a GPU pays no sync. ``generate`` and ``likelihood`` always check the range, once per
call. The shape and dtype checks are free and always run.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from backbones.text_decoder import TEXT_DECODER_CONFIGS, DecoderCache, TextDecoder
from heads.lm import TokenHead
from zoo.errors import ConfigError, InputShapeError, ZooError
from zoo.inputs import check_token_batch

__all__ = ["LanguageModel", "language_model_builder", "load_language_model", "parse_lm_name", "LM_KINDS"]

LM_KINDS = ("diffusion-lm", "causal-lm")


class LanguageModel(nn.Module):
    """Decoder + token head (tied by default) + tokenizer; ``kind`` is 'diffusion-lm' or 'causal-lm'."""

    def __init__(self, backbone: TextDecoder, tokenizer, kind: str, tie_embeddings: bool = True,
                 pretrained_cfg: dict | None = None):
        super().__init__()
        if kind not in LM_KINDS:
            raise ConfigError(f"a language model's kind is one of {LM_KINDS}, got {kind!r}")
        if (kind == "causal-lm") != backbone.causal:
            raise ConfigError(f"kind {kind!r} needs a {'causal' if kind == 'causal-lm' else 'bidirectional'} decoder")
        if tokenizer.vocab_size != backbone.vocab_size:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} ids but the decoder {backbone.vocab_size}")
        self.backbone = backbone
        self.head = TokenHead(backbone.dim, backbone.vocab_size, backbone.embed if tie_embeddings else None)
        self.tokenizer = tokenizer
        self.kind = kind
        self.pretrained_cfg = dict(pretrained_cfg or {})
        self.num_features = backbone.num_features

    @property
    def causal(self) -> bool:
        return self.backbone.causal

    @property
    def vocab_size(self) -> int:
        return self.backbone.vocab_size

    @property
    def max_len(self) -> int:
        return self.backbone.max_len

    def new_cache(self) -> DecoderCache:
        return self.backbone.new_cache()

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict:
        return {k: (v.replace("^", "^backbone\\.") if isinstance(v, str)
                    else [(p.replace("^", "^backbone\\."), i) for p, i in v])
                for k, v in self.backbone.group_matcher(coarse).items()}

    check_token_values = False
    """Debug flag: also check the ids' range in ``forward`` on GPU tensors (one host sync per call)."""

    def check_tokens(self, tokens, values: bool | None = None, max_len: int | None = -1) -> torch.Tensor:
        """``tokens`` checked (InputShapeError naming the fix) and as ``long``/``int`` ids for the embedding.

        ``values``: whether to check the id range (reads min/max); None: for CPU tensors or with
        ``check_token_values``. Without it, a zero-stride stand-in of the ids' shape and dtype takes the
        shape and dtype checks (no device memory is read). ``max_len``: -1 is the model's, None no limit."""
        if values is None:
            values = (self.check_token_values or not isinstance(tokens, torch.Tensor)
                      or tokens.device.type == "cpu")
        probe = tokens if values else torch.zeros((), dtype=tokens.dtype).expand(tokens.shape)
        check_token_batch(probe, self.vocab_size, self.max_len if max_len == -1 else max_len)
        return tokens if tokens.dtype in (torch.long, torch.int) else tokens.long()  # uint8/int16 ids

    def forward_features(self, tokens: torch.Tensor, cache: DecoderCache | None = None, commit: int = 0):
        # with a cache the window starts at cache.length; the decoder checks start + T <= max_len there
        tokens = self.check_tokens(tokens, max_len=-1 if cache is None else None)
        return self.backbone.forward_features(tokens, cache=cache, commit=commit)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, tokens: torch.Tensor, cache: DecoderCache | None = None, commit: int = 0) -> torch.Tensor:
        return self.forward_head(self.forward_features(tokens, cache=cache, commit=commit))

    @torch.no_grad()
    def likelihood(self, tokens: torch.Tensor, num_t: int = 32, generator: torch.Generator | None = None,
                   chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(nats [B], scored tokens [B]) of each sequence: the exact -log p of tokens 1.. given the earlier ones
        (causal-lm), or the MDLM NELBO of all tokens over ``num_t`` antithetic times (diffusion-lm)."""
        from heads.lm.diffusion import nelbo, next_token_loss

        tokens = self.check_tokens(tokens, values=True)
        if self.causal:
            B, L = tokens.shape
            if L < 2:
                raise InputShapeError(f"a causal model scores each token after the first; pass sequences of at "
                                      f"least 2 tokens, got shape {tuple(tokens.shape)}")
            nll = next_token_loss(self(tokens), tokens, reduction="none").reshape(B, L - 1).sum(1)
            return nll, torch.full((B,), float(L - 1), device=tokens.device)
        return nelbo(self, tokens, self.tokenizer.mask_id, num_t=num_t, generator=generator, chunk=chunk)

    def generate(self, prompt_ids, length: int, **kw) -> torch.Tensor:
        """Sample ``length`` tokens after ``prompt_ids`` (``[P]``, a list or ``[B, P]``; see
        ``heads.lm.sampling.generate``). Bad ids: InputShapeError; bad sampling arguments: ConfigError. An empty
        prompt is a diffusion model's unconditional sample; an autoregressive model refuses it."""
        from heads.lm.sampling import generate

        prompt = prompt_ids
        if not isinstance(prompt, torch.Tensor):
            try:
                prompt = torch.as_tensor(prompt_ids)
            except (TypeError, ValueError, RuntimeError):
                raise InputShapeError(f"prompt ids must be a list or tensor of integer ids, got "
                                      f"{type(prompt_ids).__name__}; encode text with model.tokenizer.encode(text)"
                                      ) from None
            if prompt.numel() == 0:
                prompt = prompt.long()
        if prompt.ndim == 1:
            prompt = prompt[None]
        if not (prompt.ndim == 2 and prompt.shape[0] > 0 and prompt.shape[1] == 0 and not prompt.is_floating_point()):
            prompt = self.check_tokens(prompt, values=True)
        try:
            return generate(self, prompt, length, **kw)
        except ValueError as e:  # the sampler's argument checks (length, steps, block, sampler, ...)
            if isinstance(e, ZooError):
                raise
            raise ConfigError(f"generate: {e}") from None


def parse_lm_name(name: str) -> tuple[str, str]:
    """``'mdlm_small_attn'`` -> ('diffusion-lm', 'small_attn'); ``'ar_small_gla'`` -> ('causal-lm', 'small_gla')."""
    prefix, _, size = str(name).partition("_")
    kinds = {"mdlm": "diffusion-lm", "ar": "causal-lm"}
    if prefix not in kinds or size not in TEXT_DECODER_CONFIGS:
        raise ConfigError(f"language model {name!r} is not 'mdlm_<size>' or 'ar_<size>' with a size in "
                          f"{sorted(TEXT_DECODER_CONFIGS)}")
    return kinds[prefix], size


def language_model_builder(kind: str, size: str):
    """The builder a family registers for ``size``: ``builder(chars=None, tie_embeddings=True, **decoder
    overrides)``; ``chars`` is the character vocabulary (default: Tiny Shakespeare's 65 symbols)."""
    if size not in TEXT_DECODER_CONFIGS:
        raise ConfigError(f"unknown text decoder size {size!r}; choose one of {sorted(TEXT_DECODER_CONFIGS)}")

    def builder(chars: str | None = None, tie_embeddings: bool = True, **overrides: Any) -> LanguageModel:
        from zoo.data.text import TINYSHAKESPEARE_CHARS, CharTokenizer

        tokenizer = CharTokenizer(chars or TINYSHAKESPEARE_CHARS)
        cfg = dict(TEXT_DECODER_CONFIGS[size])
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        try:
            backbone = TextDecoder(tokenizer.vocab_size, causal=kind == "causal-lm", **cfg)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot build the {size} text decoder with {overrides}: {e}") from None
        return LanguageModel(backbone, tokenizer, kind, tie_embeddings)

    builder.__name__ = f"build_{kind.replace('-', '_')}_{size}"
    return builder


def load_language_model(path, device: str | torch.device = "cpu") -> LanguageModel:
    """A language model from an export of ``zoo.recipes.language_model`` (its metadata names the model, the
    decoder overrides and the tokenizer), weights in fp32."""
    import json

    from safetensors import safe_open

    from zoo import hub
    from zoo.data.text import CharTokenizer
    from zoo.errors import WeightLoadError
    from zoo.factory import load_weights

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for unreadable files
        raise WeightLoadError(f"{path} is not a readable safetensors export ({e})") from None
    if meta.get("kind") not in LM_KINDS or "tokenizer" not in meta:
        raise WeightLoadError(f"{path} is not a language-model export (no kind/tokenizer metadata); export one "
                              f"with python -m zoo.recipes.language_model")
    kind, size = parse_lm_name(meta["model"])
    tok = CharTokenizer.from_json(meta["tokenizer"])
    model = language_model_builder(kind, size)(chars="".join(tok.chars), **json.loads(meta.get("model_args") or "{}"))
    load_weights(model, {k: v.float() for k, v in hub.read_state_dict(path).items()}, source=str(path))
    model.pretrained_cfg.update(architecture=meta["model"], kind=kind, source=str(path),
                                val_loss=meta.get("val_loss", ""))
    return model.to(device).eval()


# -- evaluation (zoo eval for language models) ---------------------------------------------------------------
@torch.no_grad()
def evaluate_language_model(model: LanguageModel, path=None, context: int = 256, num_t: int = 32,
                            batch_size: int = 64, train_fraction: float = 0.9, max_windows: int | None = None,
                            seed: int = 0, amp: bool = True) -> dict[str, Any]:
    """nats/char and bits/char on the validation split (its non-overlapping windows of ``context``).

    causal-lm: the exact likelihood of every window's characters after its first. diffusion-lm: the NELBO of
    every character over ``num_t`` antithetic t per window (an upper bound on -log p). ``amp``: bf16 autocast
    on a GPU.
    """
    import time

    from heads.lm.diffusion import BITS_PER_NAT
    from zoo.data.text import TextWindows, load_text, split_text

    if context < 2 or num_t < 1 or batch_size < 1:
        raise ConfigError(f"need context >= 2, num_t >= 1 and batch_size >= 1 (got {context}, {num_t}, {batch_size})")
    if context > model.max_len:
        raise ConfigError(f"context {context} exceeds the model's {model.max_len} positions")
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
        with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
            a, b = model.likelihood(batch, num_t=num_t, generator=gen)
        nats, count = nats + float(a.sum()), count + float(b.sum())
    per_char = nats / count
    return {"kind": model.kind, "params": sum(p.numel() for p in model.parameters()), "split": "val",
            "windows": n, "context": context, "chars_scored": int(count), "nats_per_char": per_char,
            "bits_per_char": per_char * BITS_PER_NAT,
            "estimator": "exact" if model.causal else f"nelbo, {num_t} antithetic t per window",
            "seconds": round(time.perf_counter() - t0, 2)}


def handles(argv: list[str]) -> bool:
    """Whether ``zoo eval argv`` names a language model (a registered LM or an LM export as --checkpoint)."""
    from zoo.registry import get_entry, split_name
    from zoo.errors import ZooError

    names = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or not argv[i - 1].startswith("--"))]
    for name in names[:1]:
        try:
            return get_entry(split_name(name)[0]).kind in LM_KINDS
        except ZooError:
            return False
    return False


def eval_main(argv: list[str]) -> int:
    """``zoo eval MODEL[.tag] [--checkpoint EXPORT] [--data tinyshakespeare] [--num-t 32] [--context 256]``:
    nats/char and bits/char on the validation split (AR: exact; MDLM: NELBO), printed and optionally --out JSON."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="zoo eval", description="Evaluate a language model on its validation split.")
    p.add_argument("model", help="mdlm_<size>[.tag] or ar_<size>[.tag]")
    p.add_argument("--checkpoint", default=None, help="a zoo fit export of this model")
    p.add_argument("--data", default=None, help="text file or named set (default tinyshakespeare under ZOO_DATA)")
    p.add_argument("--split", default="val", choices=["val"], help="the last 10%% of the characters")
    p.add_argument("--num-t", type=int, default=32, help="antithetic t per window for the NELBO")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    from zoo.generate import load_lm

    model = load_lm(a.model, a.checkpoint, a.device)
    res = evaluate_language_model(model, a.data, a.context, a.num_t, a.batch_size, max_windows=a.max_windows,
                                  amp=not a.no_amp)
    res.update(model=a.model, checkpoint=a.checkpoint or "")
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0
