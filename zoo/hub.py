"""Finding, verifying and reading weight files.

Files come from the package (``zoo/weights``), the Hugging Face Hub or a URL, and are cached under
``$ZOO_CACHE`` (default ``~/.cache/speedzoo``) as ``<cache>/<hf repo>/<file>`` or ``<cache>/url/<file>``, a
layout simple enough to place a file by hand. Every registered sha256 is checked after download and on
each load. ``ZOO_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids network access.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path

import torch

import zoo.weights
from zoo.errors import ChecksumError, PretrainedNotAvailableError, WeightLoadError
from zoo.registry import PretrainedTag, WeightSource

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("ZOO_CACHE") or Path.home() / ".cache" / "speedzoo").expanduser()


def offline() -> bool:
    return any(os.environ.get(v, "0").lower() in ("1", "true", "yes") for v in ("ZOO_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_path(source: WeightSource) -> Path:
    """Where the cache keeps (or a user may place) the file of ``source``."""
    if source.hf_repo:
        return cache_dir() / source.hf_repo / source.hf_file
    if source.url:
        return cache_dir() / "url" / source.filename
    raise ValueError("package files are not cached")


def _not_available(source: WeightSource, tag: PretrainedTag, path: Path, reason: str) -> PretrainedNotAvailableError:
    expected = tag.sha256 or "(not yet recorded)"
    return PretrainedNotAvailableError(
        f"Weights {source.describe()} are not available: {reason}. Expected sha256 {expected}. Download the file "
        f"by hand and either pass it as checkpoint_path=..., or place it at {path} (set ZOO_CACHE to move the cache).")


def _download(source: WeightSource, tag: PretrainedTag, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if source.hf_repo:
            from huggingface_hub import hf_hub_download

            hf_hub_download(source.hf_repo, source.hf_file, local_dir=cache_dir() / source.hf_repo)
        else:
            tmp = dest.with_suffix(dest.suffix + ".part")
            torch.hub.download_url_to_file(source.url, str(tmp), progress=True)
            os.replace(tmp, dest)
    except Exception as e:  # network errors come in many types; all mean "not available"
        raise _not_available(source, tag, dest, f"download failed ({type(e).__name__}: {e})") from None
    if not dest.exists():
        raise _not_available(source, tag, dest, "download finished but the file is missing")


def verify(path: Path, tag: PretrainedTag) -> None:
    actual = sha256_of(path)
    if tag.sha256:
        if actual != tag.sha256:
            raise ChecksumError(str(path), tag.sha256, actual)
    else:
        log.warning("no sha256 registered for %s; this file has sha256 %s", tag.source.describe(), actual)


def resolve(tag: PretrainedTag) -> Path:
    """Local path of a tag's weight file, downloading it when allowed; verified against its sha256."""
    source = tag.source
    if source.package_file:
        path = zoo.weights.weights_dir() / source.package_file
        if not path.exists():
            raise PretrainedNotAvailableError(f"packaged weight file {path} is missing; reinstall speedzoo")
    else:
        path = cached_path(source)
        if not path.exists():
            if offline():
                raise _not_available(source, tag, path, "offline (ZOO_OFFLINE/HF_HUB_OFFLINE) and not in the cache")
            _download(source, tag, path)
    verify(path, tag)
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors first; .pth/.pt/.bin/.ckpt through ``torch.load(weights_only=True)``.

    Official pickles often carry an ``argparse.Namespace`` of training args, which is allow-listed; weights
    nested under ``model``, ``state_dict`` or ``module`` are unwrapped (Lightning's ``model.`` prefix too).
    """
    path = Path(path)
    if not path.exists():
        raise WeightLoadError(f"weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightLoadError(
            f"cannot read weight file {path} ({type(e).__name__}: {e}). Expected a .safetensors file or a torch "
            f"checkpoint loadable with weights_only=True; convert untrusted pickles to safetensors first.") from None
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightLoadError(f"{path} holds no state dict of tensors (found {type(obj).__name__})")
    if obj and all(k.startswith("model.") for k in obj):  # a Lightning checkpoint of a recipe
        obj = {k[len("model."):]: v for k, v in obj.items()}
    return obj


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write safetensors atomically (temp file + rename), so a crash never leaves a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path
