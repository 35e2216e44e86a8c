"""Kinds of model: what a user gets from ``create_model``, one composition per kind.

A *kind* names a task-level composition of a backbone (``backbones/``) and a head (``heads/``) with a small
contract of its own. The registry (``zoo.registry``) accepts only the kinds in ``KINDS`` below; a registry
entry says which kind its builder returns (``ModelEntry.kind``) and each pretrained tag says which kind its
weights were trained for (``PretrainedTag.kind``; one architecture can serve several kinds through its tags,
e.g. ``vim_micro_patch4_32`` is an image model whose ``fsdd`` tag is an audio classifier).

What a kind module (``zoo/kinds/<kind>.py``) provides:

1. The composed ``nn.Module`` class, built from a backbone and a head, with the kind's contract:

   - ``image`` / ``audio`` (``zoo.kinds.classifier.Classifier``): timm's model contract --
     ``forward(x) -> logits``, ``forward_features``, ``forward_head(x, pre_logits=False)``,
     ``reset_classifier(num_classes, global_pool=None)``, ``get_classifier()``, ``num_classes``,
     ``num_features``, ``pretrained_cfg``, ``forward_intermediates`` where the backbone has it. Audio
     models take log-mel spectrograms [B, 1, n_mels, frames]; their ``pretrained_cfg['audio']`` is the front end.
   - ``vision-language`` (``zoo/kinds/vision_language.py``): open_clip's contract --
     ``encode_image(images, normalize=False)``, ``encode_text(tokens, normalize=False)`` and
     ``forward(images, tokens) -> (image_features, text_features, logit_scale)``.
   - ``causal-lm`` / ``diffusion-lm`` (``zoo/kinds/language_model.py``):
     ``forward(tokens [B, T]) -> logits [B, T, vocab]`` and ``generate(prompt_tokens, max_new_tokens, ...)``
     (autoregressive decoding, or the masked-diffusion sampler).
   - ``captioner`` (``zoo/kinds/captioner.py``): ``generate_caption(images, steps=, block=, threshold=,
     temperature=, seed=) -> list[str]`` (an image tower's tokens as the text decoder's prefix).

2. A builder helper a family uses for its registry entries: ``builder(**kwargs) -> the composed module``.
   ``create_model`` calls ``entry.builder`` with the arguments the user gave (``num_classes``,
   ``in_chans``, ``img_size`` only where the kind has them) plus architecture overrides. The classifier
   kind's helper is ``zoo.families.classifier_builder``.

3. A line in ``KINDS`` below (name, module, one-line contract, whether timm's registry should see it).
   That line is the one place a new kind is added; ``zoo list --kind`` and ``list_models(kind=)`` accept
   exactly these names.

A family registers models of a kind in ``zoo/families/<family>.py``: ``register(ModelEntry(name=...,
kind=..., family=..., builder=..., default_cfg=..., adapt=WeightAdapt(...), tags=...))``, where ``adapt``
declares what the factory may adapt when loading weights (first conv, position embeddings, head).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One kind of model the zoo builds."""

    name: str
    module: str          # the module holding the composed class
    contract: str        # what a user can call on it, in a line
    timm: bool = False   # exposed through timm's registry as zoo_<name> (the timm contract holds)


_TABLE = (
    Kind("image", "zoo.kinds.classifier", "timm classifier: forward(images) -> logits", timm=True),
    Kind("audio", "zoo.kinds.classifier", "timm classifier on log-mel spectrograms [B, 1, mels, frames]", timm=True),
    Kind("vision-language", "zoo.kinds.vision_language",
         "CLIP: encode_image / encode_text, forward(images, text) -> (image_features, text_features, logit_scale)"),
    Kind("diffusion-lm", "zoo.kinds.language_model", "masked diffusion LM: forward(tokens) -> logits, generate(prompt, length, ...)"),
    Kind("causal-lm", "zoo.kinds.language_model", "autoregressive LM: forward(tokens) -> logits, generate(prompt, length)"),
    Kind("captioner", "zoo.kinds.captioner",
         "image tower -> projector -> text decoder prefix: generate_caption(images, steps=, block=, threshold=) -> list[str]"),
)

KIND_TABLE: dict[str, Kind] = {k.name: k for k in _TABLE}
KINDS: tuple[str, ...] = tuple(KIND_TABLE)
"""The kinds that exist; the registry refuses any other."""

__all__ = ["Kind", "KIND_TABLE", "KINDS"]
