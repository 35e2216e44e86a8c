"""The weights manifest (``zoo/weights/manifest.json``): the zoo's own published tags, read and written here.

``zoo publish`` writes a record per tag; the registry turns every record into a :class:`PretrainedTag` at
import. A record carries the tag's kind and preprocessing: an audio tag (its ``preprocess.audio`` holds the
Kaldi fbank front end) is of kind ``audio``, with the spectrogram's input size and the front end's
normalisation as its ``mean`` / ``std``; a vision-language record names its text tower; a language-model
record (kind ``diffusion-lm`` / ``causal-lm``) carries its character vocabulary in ``arch_overrides.chars``
(the builder's argument) and the evaluation settings its nats/char was measured with. Shipped files are fp16,
int8 or int4 (``weights_format`` ``int8-rowwise-v1`` / ``int4-group32-v1``, zoo.weights.quant) within
:data:`MAX_FILE_BYTES` / :data:`MAX_TOTAL_BYTES`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "manifest.json"


def _folder(folder: Path | None) -> Path:
    from zoo.weights import weights_dir

    return Path(folder) if folder is not None else weights_dir()


def check_tag(tag: str, example: str) -> None:
    """A tag is a non-empty name without '.' (``name.tag`` splits at the first dot); checked before evaluating."""
    from zoo.errors import ConfigError

    if not tag or "." in tag:
        raise ConfigError(f"tag {tag!r} must be a non-empty name without '.' (e.g. {example})")


MAX_FILE_BYTES = 8 * 10**6
"""What one shipped weight file may weigh (issues #16/#17: a tag ships under 8 MB)."""
MAX_TOTAL_BYTES = 20 * 10**6
"""What all shipped weight files weigh together: every tracked file travels with each checkout and GPU run."""


def check_budget(size: int, folder: Path, file: str) -> None:
    """ConfigError unless a ``size``-byte ``file`` fits the per-file limit and, with the folder's other
    weight files (the one it replaces not counted), the total."""
    from zoo.errors import ConfigError

    if size > MAX_FILE_BYTES:
        raise ConfigError(f"{file} would be {size / 1e6:.2f} MB; a shipped weight file must stay under "
                          f"{MAX_FILE_BYTES / 1e6:.0f} MB: publish with --quant int8 (about half the fp16 size) "
                          f"or --quant int4 (about a quarter), or choose a smaller config")
    others = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors") if p.name != file)
    if others + size > MAX_TOTAL_BYTES:
        raise ConfigError(f"{file} ({size / 1e6:.2f} MB) with the {others / 1e6:.2f} MB already in {folder} would "
                          f"ship {(others + size) / 1e6:.2f} MB of weights, over the {MAX_TOTAL_BYTES / 1e6:.0f} MB "
                          f"budget: publish with --quant int8 / int4, or re-publish a shipped tag with one first")


def shipped_bytes(export: Path, quant: str | None = None) -> bytes:
    """The bytes a tag ships for ``export``: the file itself, or (``quant``: ``int8`` / ``int4``) its quantized
    copy with the export's metadata (zoo.weights.quant). An export already quantized ships as it is."""
    from zoo.hub import read_state_dict
    from zoo.vl.evaluate import export_metadata
    from zoo.weights.quant import is_quantized, quantized_bytes

    meta = export_metadata(export)
    if not quant or is_quantized(meta):
        return Path(export).read_bytes()
    return quantized_bytes(read_state_dict(export), meta, quant)   # read_state_dict refuses NaN/inf before anything ships


def ship_file(export: Path, model: str, tag: str, folder: Path | None = None, quant: str | None = None,
              check: Callable[[Path], Any] | None = None) -> tuple[Path, str, str]:
    """Write ``export`` (``quant``: its quantized copy) atomically to ``<folder>/<model>.<tag>.safetensors``;
    returns (folder, file name, sha256).

    The one place every publish command (classifiers, CLIP, language models) writes a shipped weight file.
    The size budget (:func:`check_budget`) is checked first; then ``check(path)`` runs on the exact bytes
    that will ship, staged in a temporary folder under the final name, before anything in ``folder`` is
    replaced: publishers measure the shipped file there, and an error leaves the folder as it was.
    """
    from zoo.hub import replace_atomically, sha256_of

    folder = _folder(folder)
    file = f"{model}.{tag}.safetensors"
    blob = shipped_bytes(Path(export), quant)
    check_budget(len(blob), folder, file)
    if check is not None:
        with tempfile.TemporaryDirectory(prefix="zoo-publish-") as tmp:
            staged = Path(tmp) / file
            staged.write_bytes(blob)
            check(staged)
    folder.mkdir(parents=True, exist_ok=True)
    replace_atomically(folder / file, lambda tmp: tmp.write_bytes(blob))
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


def publish_record(model: str, tag: str, record: dict[str, Any], quant: str | None = None,
                   folder: Path | None = None) -> dict[str, Any]:
    """The last step of every publisher: mark a quantized file's storage format, write ``model.tag`` into the
    manifest and return the published record with its full name (``model``)."""
    if quant:
        from zoo.weights.quant import FORMATS

        record["weights_format"] = FORMATS[quant]
    write_record(model, tag, record, folder)
    return {"model": f"{model}.{tag}", **record}


def add_quant_arguments(parser) -> None:
    """``--quant {int8,int4}`` (and ``--int8``, the same as ``--quant int8``) of every publish command."""
    from zoo.weights.quant import FORMATS

    parser.add_argument("--quant", choices=sorted(FORMATS), default=None,
                        help="ship weight-only quantized storage: int8 (about half of fp16) or int4 (about a quarter)")
    parser.add_argument("--int8", dest="quant", action="store_const", const="int8", help="same as --quant int8")


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
                license=t.get("license", ""), num_classes=t.get("num_classes"),
                label_names=tuple(t["label_names"]) if t.get("label_names") else None,
                preprocess=record_preprocess(t), metrics=t.get("metrics", {}), notes=t.get("notes", ""),
                arch_overrides=t.get("arch_overrides", {}))


__all__ = ["MANIFEST", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES", "check_tag", "check_budget", "ship_file",
           "shipped_bytes", "read_manifest", "write_record", "publish_record", "record_kind", "record_preprocess", "tags_from_manifest"]
