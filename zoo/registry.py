"""The registry: every model by name, with its kind, builder, default config, weight adaptation and tags.

Names follow timm: ``family_size_patchN_res`` for architectures and ``name.tag`` for pretrained weights.
The registry is the zoo's one piece of global state; family modules in ``zoo.families`` fill it at import.

Kinds (``zoo.kinds``): an entry has the kind its builder returns, and each tag the kind its weights were
trained for (``None``: the entry's). An architecture thus serves several kinds through its tags:
``list_models(kind=k)`` lists architectures whose own kind or any tag's kind is ``k``, and with
``pretrained=True`` the ``name.tag`` whose tag is of kind ``k``.
"""
from __future__ import annotations

import fnmatch
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from zoo.errors import ConfigError, PretrainedNotAvailableError, UnknownModelError
from zoo.kinds import KINDS

log = logging.getLogger(__name__)

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
    kind: str | None = None  # the kind the weights were trained for; None: the entry's kind
    sha256: str = ""  # empty until the file has been seen; loading then logs the hash it computed
    converter: Converter | None = None
    license: str = ""
    num_classes: int = 1000
    label_names: tuple[str, ...] | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)  # input_size, mean, std, interpolation, crop_pct or audio front end
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # dataset -> {top1: ..., ...}
    notes: str = ""
    arch_overrides: dict[str, Any] = field(default_factory=dict)  # builder kwargs the weights need


PosEmbedResizer = Callable[[nn.Module, torch.Tensor, "tuple[int, int] | None"], torch.Tensor]


@dataclass(frozen=True)
class WeightAdapt:
    """What a family lets the factory adapt when a checkpoint does not fit the model asked for.

    - ``first_conv``: modules whose ``.weight`` [O, I, kh, kw] follows ``in_chans`` (summed to 1 channel,
      else repeated and rescaled); the first is timm's ``pretrained_cfg['first_conv']``.
    - ``pos_embed`` + ``resize_pos_embed``: position-embedding keys and how to resample one to the model's
      grid, ``resize_pos_embed(model, tensor, src_img_size) -> tensor`` (``src_img_size``: the image size
      the checkpoint was trained at).
    - ``head``: the module prefix of the task head; its keys re-initialise when the checkpoint's do not
      fit (another ``num_classes``, another head type) instead of failing the load.
    - ``patch_embed``: patch-embedding convolutions whose kernel follows ``patch_size``; a checkpoint's kernel
      of another size is resampled to the model's (zoo.factory.resample_patch_kernel), so a patch-4 CIFAR tower
      starts a patch-16 tower at 4x the image size.
    """

    first_conv: tuple[str, ...] = ()
    pos_embed: tuple[str, ...] = ()
    patch_embed: tuple[str, ...] = ()
    resize_pos_embed: PosEmbedResizer | None = None
    head: str | None = None

    def __post_init__(self):
        if self.pos_embed and self.resize_pos_embed is None:
            raise ValueError("WeightAdapt with pos_embed keys needs resize_pos_embed")


@dataclass
class ModelEntry:
    name: str
    kind: str
    family: str
    builder: Callable[..., nn.Module]  # builder(**kwargs) -> the kind's composed module (zoo.kinds)
    default_cfg: dict[str, Any]
    converter: Converter | None = None  # the family's converter for foreign state dicts (checkpoint_path=)
    tags: dict[str, PretrainedTag] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    adapt: WeightAdapt = field(default_factory=WeightAdapt)

    @property
    def default_tag(self) -> str | None:
        return next(iter(self.tags), None)

    def tag_kind(self, tag: str | PretrainedTag) -> str:
        """The kind of one of this entry's tags (the entry's own kind unless the tag says otherwise)."""
        record = self.tags[tag] if isinstance(tag, str) else tag
        return record.kind or self.kind

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind this architecture serves: its own, then its tags' (in first-seen order)."""
        return tuple(dict.fromkeys([self.kind, *(self.tag_kind(t) for t in self.tags.values())]))


_REGISTRY: dict[str, ModelEntry] = {}


def check_kind(kind: str, what: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"{what}: unknown kind {kind!r}; known: {KINDS} (a new kind is a line in zoo/kinds)")


def register(entry: ModelEntry) -> ModelEntry:
    check_kind(entry.kind, entry.name)
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    for tag in entry.tags.values():
        add_tag(entry, tag, replace=True)
    _REGISTRY[entry.name] = entry
    return entry


def add_tag(entry: ModelEntry, tag: PretrainedTag, replace: bool = False) -> None:
    """Attach ``tag`` to ``entry`` (checked); an existing tag of that name stays unless ``replace``."""
    if "." in tag.tag or not tag.tag:
        raise ValueError(f"tag {tag.tag!r} of {entry.name} must be non-empty without '.'")
    if tag.kind is not None:
        check_kind(tag.kind, f"{entry.name}.{tag.tag}")
    if replace or tag.tag not in entry.tags:
        entry.tags[tag.tag] = tag


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
    """Registered names matching an fnmatch ``pattern``; with ``pretrained=True`` one ``name.tag`` per weight set.

    ``kind`` keeps architectures that serve that kind (their own or a tag's), or with ``pretrained=True``
    the tags of that kind.
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    out = []
    for name, entry in sorted(_REGISTRY.items()):
        if pretrained:
            out.extend(f"{name}.{t}" for t, rec in entry.tags.items()
                       if (kind is None or entry.tag_kind(rec) == kind)
                       and (fnmatch.fnmatch(f"{name}.{t}", pattern) or fnmatch.fnmatch(name, pattern)))
        elif fnmatch.fnmatch(name, pattern) and (kind is None or kind in entry.kinds):
            out.append(name)
    return out


def kind_of(name: str) -> str:
    """The kind of ``'name'`` (the entry's) or ``'name.tag'`` (the tag's)."""
    entry = get_entry(name)
    tag = split_name(name)[1]
    return entry.tag_kind(get_tag(entry, tag)) if tag else entry.kind


def list_pretrained(pattern: str = "*") -> list[str]:
    return list_models(pattern, pretrained=True)


def builder_params(entry: ModelEntry) -> list[str]:
    return [p for p in inspect.signature(entry.builder).parameters if p not in ("self",)]
