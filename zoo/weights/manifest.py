"""The weights manifest (``zoo/weights/manifest.json``): the zoo's own published tags, read and written here.

``zoo publish`` writes a record per tag; the registry turns every record into a :class:`PretrainedTag` at
import. A record carries the tag's kind and preprocessing: an audio tag (its ``preprocess.audio`` holds the
Kaldi fbank front end) is of kind ``audio``, with the spectrogram's input size and the front end's
normalisation as its ``mean`` / ``std``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"


def _folder(folder: Path | None) -> Path:
    from zoo.weights import weights_dir

    return Path(folder) if folder is not None else weights_dir()


def check_tag(tag: str, example: str) -> None:
    """A tag is a non-empty name without '.' (``name.tag`` splits at the first dot); checked before evaluating."""
    from zoo.errors import ConfigError

    if not tag or "." in tag:
        raise ConfigError(f"tag {tag!r} must be a non-empty name without '.' (e.g. {example})")


def ship_file(export: Path, model: str, tag: str, folder: Path | None = None) -> tuple[Path, str, str]:
    """Copy ``export`` atomically to ``<folder>/<model>.<tag>.safetensors``; returns (folder, file name, sha256).

    The one place both publish commands (classifiers, CLIP) write a shipped weight file.
    """
    from zoo.hub import replace_atomically, sha256_of

    folder = _folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    file = f"{model}.{tag}.safetensors"
    replace_atomically(folder / file, lambda tmp: shutil.copyfile(export, tmp))
    return folder, file, sha256_of(folder / file)


def read_manifest(folder: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {tag: record}}`` of ``folder`` (default: the package's weights folder); {} without a file."""
    path = _folder(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(model: str, tag: str, record: dict[str, Any], folder: Path | None = None) -> Path:
    """Add or replace ``model.tag`` in the manifest, atomically (a temporary file, then a rename)."""
    folder = _folder(folder)
    manifest = read_manifest(folder)
    manifest.setdefault(model, {})[tag] = record
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def record_kind(record: dict[str, Any]) -> str:
    """A record's kind: the one it states, else ``audio`` for an fbank front end, else ``image``."""
    if record.get("kind"):
        return record["kind"]
    return "audio" if (record.get("preprocess") or {}).get("audio") else "image"


def record_preprocess(record: dict[str, Any]) -> dict[str, Any]:
    """The record's preprocessing in timm's keys (tuples); an audio tag's mean / std are its front end's."""
    pre = {k: tuple(v) if isinstance(v, list) else v for k, v in (record.get("preprocess") or {}).items()}
    audio = pre.get("audio")
    if audio:
        chans = (pre.get("input_size") or (1,))[0]
        if audio.get("mean") is not None and audio.get("std") is not None:
            pre.setdefault("mean", (float(audio["mean"]),) * chans)
            pre.setdefault("std", (float(audio["std"]),) * chans)
    return pre


def tags_from_manifest(folder: Path | None = None) -> Iterator[tuple[str, Any]]:
    """(model name, PretrainedTag) for every published weight set."""
    from zoo.registry import PretrainedTag, WeightSource

    for model, tags in read_manifest(folder).items():
        for tag, t in tags.items():
            yield model, PretrainedTag(
                tag=tag, source=WeightSource(package_file=t["file"]), kind=record_kind(t), sha256=t["sha256"],
                license=t.get("license", ""), num_classes=t["num_classes"],
                label_names=tuple(t["label_names"]) if t.get("label_names") else None,
                preprocess=record_preprocess(t), metrics=t.get("metrics", {}), notes=t.get("notes", ""),
                arch_overrides=t.get("arch_overrides", {}))


__all__ = ["MANIFEST", "read_manifest", "write_record", "record_kind", "record_preprocess", "tags_from_manifest"]
