"""``create_model``: build a registered model of any kind by name and load weights into it.

Loading adapts a checkpoint to the model asked for, as timm does, where the family allows it
(``ModelEntry.adapt``, a :class:`~zoo.registry.WeightAdapt`): a head that does not fit (another
``num_classes`` or head type) is re-initialised, a different ``in_chans`` folds or repeats the first
convolution (1 channel for spectrograms), and a new ``img_size`` resamples the position embeddings.
Anything else that does not fit is reported, key by key.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
import torch.nn as nn

from zoo import hub
from zoo.errors import ConfigError, WeightLoadError
from zoo.registry import ModelEntry, PretrainedTag, WeightAdapt, builder_params, get_entry, get_tag, split_name

log = logging.getLogger(__name__)

PREPROCESS_KEYS = ("input_size", "mean", "std", "crop_pct", "crop_mode", "interpolation", "label_names")
"""Entry defaults a tag of another kind replaces rather than inherits (an audio tag keeps no image stats)."""


def create_model(model_name: str, pretrained: bool = False, num_classes: int | None = None, in_chans: int | None = None,
                 img_size: int | tuple[int, int] | None = None, checkpoint_path: str | os.PathLike | None = None,
                 **overrides: Any) -> nn.Module:
    """Build ``model_name`` (``'name'`` or ``'name.tag'``), optionally with weights.

    ``pretrained=True`` loads the tag's (or the default tag's) weights, from the cache or by download;
    ``checkpoint_path`` loads a local file instead (any layout the family's converter understands).
    ``num_classes``, ``in_chans`` and ``img_size`` reach the builder where given (or set by the tag), so a
    kind without them (a language model) is built the same way; other keywords are architecture overrides.
    """
    name, tag_name = split_name(model_name)
    entry = get_entry(name)
    # As in timm: a tag selects a weight set's config; weights load only with pretrained=True.
    tag: PretrainedTag | None = get_tag(entry, tag_name) if (tag_name or pretrained) else None

    kwargs = dict(tag.arch_overrides) if tag else {}
    in_chans = in_chans if in_chans is not None else kwargs.pop("in_chans", None)
    img_size = img_size if img_size is not None else kwargs.pop("img_size", None)
    kwargs.pop("in_chans", None), kwargs.pop("img_size", None)
    if isinstance(img_size, list):
        img_size = tuple(img_size)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if num_classes is None:
        num_classes = tag.num_classes if tag else entry.default_cfg.get("num_classes")
    given = dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    model = _build(entry, **{k: v for k, v in given.items() if v is not None}, **kwargs)
    model.pretrained_cfg = _pretrained_cfg(entry, tag, model)
    model.default_cfg = model.pretrained_cfg

    if checkpoint_path is not None:
        state = hub.read_state_dict(checkpoint_path)
        converter = (tag.converter if tag and tag.converter else None) or entry.converter
        load_weights(model, state, converter, source=str(checkpoint_path), src_img_size=_src_img_size(entry, tag),
                     adapt=entry.adapt)
    elif pretrained:
        assert tag is not None
        _load_tag(model, entry, tag, source=tag.source.describe())
    return model


def _load_tag(model: nn.Module, entry: ModelEntry, tag: PretrainedTag, source: str) -> dict[str, list[str]]:
    """The tag's weights (cache or download) into ``model``, converted and adapted as ``entry``'s family allows."""
    state = hub.read_state_dict(hub.resolve(tag))
    return load_weights(model, state, tag.converter or entry.converter, source=source,
                        src_img_size=_src_img_size(entry, tag), adapt=entry.adapt)


def load_tag_into(model: nn.Module, spec: str) -> dict[str, list[str]]:
    """Start ``model`` from the weights of the registered tag ``spec`` (``'name.tag'``), adapted as the tag's
    family allows (head, input channels, patch size, position grid): e.g. a CLIP image tower of patch 16 at
    128 px from ``vit_micro_patch4_32.cifar10``. Returns what was re-initialised (see :func:`load_weights`)."""
    name, tag_name = split_name(spec)
    if tag_name is None:
        raise ConfigError(f"{spec!r} names no weights: give a tag as name.tag (zoo list --pretrained)")
    entry = get_entry(name)
    tag = get_tag(entry, tag_name)
    return _load_tag(model, entry, tag, source=f"{spec} ({tag.source.describe()})")


def load_named_or_export(name: str | None, checkpoint: str | None, device: str, *, kinds, load_export,
                         need: str, drop_flag: str, logger: logging.Logger = log) -> nn.Module:
    """The model a one-model command runs (zoo generate, zoo caption), in eval mode on ``device``: ``name``
    (``name.tag`` with its weights; a bare name has random weights, with a warning on ``logger``), or the zoo fit
    export at ``checkpoint`` read by ``load_export(path, device)``, which must hold ``name`` when both are given.
    A registered model of a kind outside ``kinds`` is a ConfigError ending in ``need`` (what the command takes);
    ``drop_flag`` is the option the name/export mismatch message offers to drop."""
    if checkpoint:
        model = load_export(checkpoint, device)
        arch = model.pretrained_cfg.get("architecture")
        if name and split_name(name)[0] != arch:
            raise ConfigError(f"{checkpoint} holds {arch}, not {name}; name that model or drop {drop_flag}")
        return model
    base, tag = split_name(name)
    entry = get_entry(base)
    if entry.kind not in kinds:
        raise ConfigError(f"{base} is a {entry.kind} model; {need}")
    if tag is None:
        logger.warning("%s without a tag has random weights; name a tag (zoo list --pretrained) or pass "
                       "--checkpoint EXPORT for trained ones", base)
    return create_model(name, pretrained=tag is not None).to(device).eval()


def _build(entry: ModelEntry, **kwargs) -> nn.Module:
    try:
        return entry.builder(**kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot build {entry.name} with {kwargs}: {e}. Valid arguments: "
                          f"{', '.join(builder_params(entry))}") from None


def _src_img_size(entry: ModelEntry, tag: PretrainedTag | None) -> tuple[int, int] | None:
    size = (tag.preprocess.get("input_size") if tag else None) or entry.default_cfg.get("input_size")
    return tuple(size[-2:]) if size else None


def _pretrained_cfg(entry: ModelEntry, tag: PretrainedTag | None, model: nn.Module) -> dict[str, Any]:
    """timm-style pretrained cfg for the model as built: the tag's kind and preprocessing over the entry's
    defaults (input size follows in_chans / img_size), plus where the first conv and classifier are."""
    cfg = dict(entry.default_cfg)
    kind = entry.tag_kind(tag) if tag else entry.kind
    if tag:
        if kind != entry.kind:
            for key in PREPROCESS_KEYS:
                cfg.pop(key, None)
        cfg.update(tag.preprocess)
        cfg.update(tag=tag.tag, source=tag.source.describe(), license=tag.license, num_classes=tag.num_classes)
        if tag.label_names:
            cfg["label_names"] = list(tag.label_names)
    cfg["kind"] = kind
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "img_size"):
        cfg["input_size"] = (backbone.in_chans, *backbone.img_size)
        if backbone.in_chans != len(cfg.get("mean", ())) and "mean" in cfg:
            cfg["mean"] = (sum(cfg["mean"]) / len(cfg["mean"]),) * backbone.in_chans
            cfg["std"] = (sum(cfg["std"]) / len(cfg["std"]),) * backbone.in_chans
    if entry.adapt.first_conv:
        cfg["first_conv"] = entry.adapt.first_conv[0]
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    name = next((n for n, m in model.named_modules() if m is classifier), None)
    if name:
        cfg["classifier"] = name
    cfg["architecture"] = entry.name
    if hasattr(model, "num_classes"):
        cfg["num_classes"] = model.num_classes
    return cfg


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a first-conv weight [O, I, kh, kw] to ``in_chans``: sum RGB for 1 channel, else repeat and rescale."""
    src = weight.shape[1]
    if src == in_chans:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        reps = math.ceil(in_chans / src)
        w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (src / in_chans)
    return w.to(weight.dtype)


def resample_patch_kernel(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A patch embedding's kernel [O, I, kh, kw] at patch ``size``. An integer multiple r of the kernel repeats
    each tap r x r times over r^2, so the new patch embedding is exactly r x r average pooling followed by the old
    one (a 128-px image is seen as its 32-px reduction, as a CIFAR tower was trained); any other size uses
    FlexiViT's pseudo-inverse resize (timm.layers'). In fp32: a checkpoint's fp16 taps over r^2 would round again."""
    old = weight.shape[-2:]
    if all(n % o == 0 for n, o in zip(size, old)):
        rh, rw = size[0] // old[0], size[1] // old[1]
        return weight.float().repeat_interleave(rh, -2).repeat_interleave(rw, -1) / (rh * rw)
    from timm.layers import resample_patch_embed

    return resample_patch_embed(weight.float(), list(size))


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], converter=None, source: str = "state dict",
                 src_img_size: tuple[int, int] | None = None, strict: bool = True,
                 adapt: WeightAdapt | None = None) -> dict[str, list[str]]:
    """Convert, adapt (as ``adapt`` allows; default: the registered entry's) and strictly load ``state_dict``;
    returns what was re-initialised.

    Raises :class:`WeightLoadError` with every missing, unexpected or mis-shaped key otherwise.
    """
    if converter is not None:
        try:
            state_dict = converter(state_dict)
        except KeyError as e:
            raise WeightLoadError(f"{source} is not in a layout this model's converter knows (missing key {e})") from None
    if adapt is None:
        adapt = _registered_adapt(model)
    own = model.state_dict()
    state_dict = dict(state_dict)
    for conv in adapt.first_conv:
        key = conv + ".weight"
        if key in state_dict and key in own and state_dict[key].shape[1] != own[key].shape[1]:
            log.info("adapted %s from %d to %d input channels", key, state_dict[key].shape[1], own[key].shape[1])
            state_dict[key] = adapt_input_conv(state_dict[key], own[key].shape[1])
    for conv in adapt.patch_embed:
        key = conv + ".weight"
        if key in state_dict and key in own and state_dict[key].shape[-2:] != own[key].shape[-2:]:
            src_patch, patch = tuple(state_dict[key].shape[-2:]), tuple(own[key].shape[-2:])
            log.info("resampled %s from patch %s to %s", key, src_patch, patch)
            state_dict[key] = resample_patch_kernel(state_dict[key], patch)
            if src_img_size is not None:  # the checkpoint's grid, as the image size that gives it at the new patch
                src_img_size = tuple(i * n // o for i, o, n in zip(src_img_size, src_patch, patch))
    for key in adapt.pos_embed:
        if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
            state_dict[key] = adapt.resize_pos_embed(model, state_dict[key], src_img_size)
    reinit: list[str] = []
    if adapt.head:  # a head that does not fit as a whole (classes, type, absent) starts afresh as a whole
        prefix = adapt.head + "."
        own_head = [k for k in own if k.startswith(prefix)]
        ckpt_head = [k for k in state_dict if k.startswith(prefix)]
        if set(own_head) != set(ckpt_head) or any(state_dict[k].shape != own[k].shape for k in own_head):
            for key in ckpt_head:
                del state_dict[key]
            reinit = own_head
            log.info("head re-initialised (%s classes): the checkpoint's head does not fit",
                     getattr(model, "num_classes", "?"))
    missing = [k for k in own if k not in state_dict and k not in reinit]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        lines = [f"weights from {source} do not fit {arch}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", … ({len(keys) - 12} more)" if len(keys) > 12 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        lines.append("Check that the file belongs to this architecture (zoo info NAME shows its tags).")
        raise WeightLoadError("\n".join(lines))
    own_keys = set(own)
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own_keys and v.shape == own[k].shape}, strict=False)
    return {"reinitialised": reinit, "missing": missing, "unexpected": unexpected}


def _registered_adapt(model: nn.Module) -> WeightAdapt:
    """The adaptation the model's registry entry declares (nothing adapts for an unregistered model)."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return get_entry(arch).adapt if arch else WeightAdapt()
