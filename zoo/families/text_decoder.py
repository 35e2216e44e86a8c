"""Registry entries of the text decoders: ``mdlm_<size>`` (kind diffusion-lm) and ``ar_<size>`` (causal-lm,
the same network with causal mixers), for every size of ``backbones.text_decoder.TEXT_DECODER_CONFIGS``.

Sizes name the mixer layout: ``small_attn`` (softmax attention with RoPE), ``small_gla`` (gated linear
attention), ``small_mamba`` (Vim's bidirectional Mamba), ``small_hybrid`` (GLA, GLA, attention repeated),
``tiny`` for tests. The builder takes the character vocabulary (``chars``, default Tiny Shakespeare's 65
symbols; ``<end>`` and ``<mask>`` follow) and any decoder override (``layout``, ``depth``, ``dropout``,
``max_len`` ...).
"""
from __future__ import annotations

from backbones.text_decoder import TEXT_DECODER_CONFIGS
from zoo.kinds.language_model import language_model_builder
from zoo.registry import ModelEntry, WeightAdapt, register

PAPERS = {"diffusion-lm": "arXiv:2406.07524 (MDLM), arXiv:2502.09992 (LLaDA)",
          "causal-lm": "autoregressive twin of the MDLM decoder (same network, causal mixers)"}


def _register() -> None:
    for prefix, kind in (("mdlm", "diffusion-lm"), ("ar", "causal-lm")):
        for size, cfg in TEXT_DECODER_CONFIGS.items():
            layout = cfg.get("layout", "attn")
            register(ModelEntry(
                name=f"{prefix}_{size}", kind=kind, family="text_decoder",
                builder=language_model_builder(kind, size),
                default_cfg={"input_size": (256,), "context": 256, "layout": layout, "kind": kind,
                             "vocab": "tinyshakespeare chars + <end> + <mask>"},  # input: 256 token ids
                adapt=WeightAdapt(),
                description=(f"{'masked-diffusion' if kind == 'diffusion-lm' else 'autoregressive'} text decoder, "
                             f"{cfg['depth']} x {cfg['dim']}, mixers {layout}"),
                paper=PAPERS[kind]))


_register()
