"""The registry: every model kind by name, with its builder, default config and pretrained tags.

Names follow timm: ``family_size_patchN_res`` for architectures and ``name.tag`` for pretrained weights.
The registry is the zoo's one piece of global state; family modules in ``zoo.models`` fill it at import.
"""
from __future__ import annotations

import fnmatch
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from zoo.errors import ConfigError, PretrainedNotAvailableError, UnknownModelError

log = logging.getLogger(__name__)

KINDS = ("image", "audio", "vision-language", "diffusion-lm")
"""Model kinds the registry knows: image backbone/classifier, audio classifier, CLIP-style, diffusion LM."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Converter = Callable[[dict], dict]


@dataclass(frozen=True)
class WeightSource:
    """Where a weight file comes from: a Hugging Face Hub file, a URL, or a file shipped in ``zoo/weights``."""

    hf_repo: str | None = None
    hf_file: str | None = None
    url: str | None = None
    package_file: str | None = None

    def __post_init__(self):
        kinds = [bool(self.hf_repo and self.hf_file), bool(self.url), bool(self.package_file)]
        if sum(kinds) != 1:
            raise ValueError("a WeightSource names exactly one of hf_repo+hf_file, url, package_file")

    @property
    def filename(self) -> str:
        if self.package_file:
            return self.package_file
        if self.hf_file:
            return self.hf_file.rsplit("/", 1)[-1]
        return self.url.rsplit("/", 1)[-1].split("?")[0]

    def describe(self) -> str:
        if self.hf_repo:
            return f"hf-hub:{self.hf_repo}/{self.hf_file}"
        if self.url:
            return self.url
        return f"package:zoo/weights/{self.package_file}"


@dataclass
class PretrainedTag:
    """One set of weights for an architecture, with what it needs and what it was measured to do."""

    tag: str
    source: WeightSource
    sha256: str = ""  # empty until the file has been seen; loading then logs the hash it computed
    converter: Converter | None = None
    license: str = ""
    num_classes: int = 1000
    label_names: tuple[str, ...] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)  # input_size, mean, std, interpolation, crop_pct or audio front end
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> {top1: ..., ...}
    notes: str = ""
    arch_overrides: dict[str, Any] = field(default_factory=dict)  # builder kwargs the weights need


@dataclass
class ModelEntry:
    name: str
    kind: str
    family: str
    builder: Callable[..., nn.Module]  # builder(num_classes=, in_chans=, img_size=, **overrides) -> ZooModel
    default_cfg: dict[str, Any]
    converter: Converter | None = None  # the family's converter for foreign state dicts (checkpoint_path=)
    tags: dict[str, PretrainedTag] = field(default_factory=dict)
    description: str = ""
    paper: str = ""

    @property
    def default_tag(self) -> str | None:
        return next(iter(self.tags), None)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.kind not in KINDS:
        raise ValueError(f"unknown kind {entry.kind!r}; known: {KINDS}")
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    for tag in entry.tags:
        if "." in tag:
            raise ValueError(f"tag {tag!r} of {entry.name} must not contain '.'")
    _REGISTRY[entry.name] = entry
    return entry


def split_name(name_or_tagged: str) -> tuple[str, str | None]:
    """``'vim_tiny_patch16_224.in1k'`` -> ``('vim_tiny_patch16_224', 'in1k')``."""
    name, _, tag = name_or_tagged.partition(".")
    return name, (tag or None)


def get_entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a model name must be a non-empty string, got {name!r}")
    base, _ = split_name(name)
    if base not in _REGISTRY:
        raise UnknownModelError(base, _REGISTRY)
    return _REGISTRY[base]


def get_tag(entry: ModelEntry, tag: str | None) -> PretrainedTag:
    if not entry.tags:
        raise PretrainedNotAvailableError(
            f"{entry.name} has no pretrained weights; build it with pretrained=False, or load your own file with "
            f"checkpoint_path=. `zoo list --pretrained` shows models with weights.")
    tag = tag or entry.default_tag
    if tag not in entry.tags:
        raise PretrainedNotAvailableError(
            f"{entry.name} has no pretrained tag '{tag}'; available: {', '.join(entry.name + '.' + t for t in entry.tags)}")
    return entry.tags[tag]


def list_models(pattern: str = "*", pretrained: bool = False, kind: str | None = None) -> list[str]:
    """Registered names matching an fnmatch ``pattern``; with ``pretrained=True`` one ``name.tag`` per weight set."""
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    out = []
    for name, entry in sorted(_REGISTRY.items()):
        if kind is not None and entry.kind != kind:
            continue
        if pretrained:
            out.extend(f"{name}.{t}" for t in entry.tags
                       if fnmatch.fnmatch(f"{name}.{t}", pattern) or fnmatch.fnmatch(name, pattern))
        elif fnmatch.fnmatch(name, pattern):
            out.append(name)
    return out


def list_pretrained(pattern: str = "*") -> list[str]:
    return list_models(pattern, pretrained=True)


def builder_params(entry: ModelEntry) -> list[str]:
    return [p for p in inspect.signature(entry.builder).parameters if p not in ("self",)]
