"""Finding, verifying and reading weight files.

Files come from the package (``zoo/weights``), the Hugging Face Hub or a URL, and are cached under
``$ZOO_CACHE`` (default ``~/.cache/speedzoo``) as ``<cache>/<hf repo>/<file>`` or ``<cache>/url/<file>``, a
layout simple enough to place a file by hand. ``ZOO_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids network access.

Integrity: a tag's registered sha256 is checked after download and on each load. A tag without one gets its
hash recorded when our download brings the file into the cache, in a sidecar ``<file>.sha256`` (sha256sum's
format, written atomically), and every later load is checked against it. A file placed by hand with no
known hash loads with a warning that names its hash. Every weight file read is also checked for NaN/inf.
A process remembers what it verified by (path, size, mtime), so loading the same file again costs no rehash.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

import zoo.weights
from zoo.errors import CacheError, ChecksumError, PretrainedNotAvailableError, WeightLoadError
from zoo.registry import PretrainedTag, WeightSource

log = logging.getLogger(__name__)

# errnos of local file-system trouble (as opposed to network errors, which are OSErrors too)
_FS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
              errno.EISDIR}
# (path, size, mtime_ns) -> sha256 of files verified in this process; (path, size, mtime_ns) checked finite
_VERIFIED: dict[tuple[str, int, int], str] = {}
_FINITE: set[tuple[str, int, int]] = set()


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


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


# ------------------------------------------------------------------------------------------ cache folder
def _cache_reason(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on device)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (the folder is read-only)"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a file stands where a folder is needed ({e.filename or e})"
    return f"{type(e).__name__}: {e.strerror or e}"


def is_cache_fs_error(e: BaseException) -> bool:
    """True for a local file-system failure (full, read-only, a file in the way), not a network error."""
    return isinstance(e, OSError) and e.errno in _FS_ERRNOS


def ensure_cache_folder(folder: Path) -> Path:
    """Create ``folder`` (and parents) or raise :class:`CacheError` naming it and ``ZOO_CACHE``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(folder))
    except OSError as e:
        raise CacheError(str(folder), _cache_reason(e)) from None
    return folder


def replace_atomically(dest: Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temp file of a unique name beside ``dest``, then rename it over ``dest``.

    Two processes writing one file never tear it: each writes its own temp file and the rename is atomic, so
    ``dest`` is always one whole file, and a crash leaves at most a hidden ``.part`` file. The result has the
    mode of any file the user writes (0666 less the umask), not mkstemp's 0600.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def atomic_write(dest: Path, write: Callable[[Path], None]) -> Path:
    """:func:`replace_atomically` into the cache: folder trouble raises :class:`CacheError` naming ZOO_CACHE."""
    ensure_cache_folder(dest.parent)
    try:
        return replace_atomically(dest, write)
    except OSError as e:
        if is_cache_fs_error(e):
            raise CacheError(str(dest.parent), _cache_reason(e)) from None
        raise


# ------------------------------------------------------------------------------------------ hash records
def record_path(path: Path) -> Path:
    """The sidecar holding the sha256 recorded when ``path`` entered the cache."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str:
    """The sha256 recorded beside ``path`` at download ('' when there is none or it is unreadable)."""
    try:
        text = record_path(path).read_text().split()
    except (OSError, UnicodeDecodeError):
        return ""
    digest = text[0].lower() if text else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else ""


def record_sha256(path: Path, digest: str) -> Path:
    """Write ``<path>.sha256`` in sha256sum's format (``sha256sum -c`` checks it), atomically."""
    return atomic_write(record_path(path), lambda tmp: tmp.write_text(f"{digest}  {path.name}\n"))


# ------------------------------------------------------------------------------------------ resolving
def _not_available(source: WeightSource, tag: PretrainedTag, path: Path, reason: str) -> PretrainedNotAvailableError:
    expected = tag.sha256 or "(not yet recorded)"
    return PretrainedNotAvailableError(
        f"Weights {source.describe()} are not available: {reason}. Expected sha256 {expected}. Download the file "
        f"by hand and either pass it as checkpoint_path=..., or place it at {path} (set ZOO_CACHE to move the cache).")


def _download(source: WeightSource, tag: PretrainedTag, dest: Path) -> None:
    """Fetch into the cache (temp file + rename: never a torn file), check or record its sha256."""
    ensure_cache_folder(dest.parent)
    try:
        if source.hf_repo:
            from huggingface_hub import hf_hub_download

            # huggingface_hub downloads to an .incomplete file under a lock and moves it into place
            hf_hub_download(source.hf_repo, source.hf_file, local_dir=cache_dir() / source.hf_repo)
        else:
            atomic_write(dest, lambda tmp: torch.hub.download_url_to_file(source.url, str(tmp), progress=True))
    except CacheError:
        raise
    except Exception as e:  # network errors come in many types; all mean "not available"
        if is_cache_fs_error(e):
            raise CacheError(str(dest.parent), _cache_reason(e)) from None
        raise _not_available(source, tag, dest, f"download failed ({type(e).__name__}: {e})") from None
    if not dest.exists():
        raise _not_available(source, tag, dest, "download finished but the file is missing")
    actual = sha256_of(dest)
    if tag.sha256 and actual != tag.sha256:
        raise ChecksumError(str(dest), tag.sha256, actual)
    if not tag.sha256:
        record_sha256(dest, actual)
        log.info("recorded sha256 %s of %s in %s", actual, source.describe(), record_path(dest))
    _VERIFIED[_stat_key(dest)] = actual


def verify(path: Path, tag: PretrainedTag) -> None:
    """Check ``path`` against the tag's sha256, else the one recorded at download; warn when neither exists."""
    recorded = "" if tag.sha256 or tag.source.package_file else recorded_sha256(path)
    expected = tag.sha256 or recorded
    key = _stat_key(path)
    if key in _VERIFIED and (not expected or _VERIFIED[key] == expected):
        return
    actual = sha256_of(path)
    if expected and actual != expected:
        raise ChecksumError(str(path), expected, actual, recorded_in=None if tag.sha256 else str(record_path(path)))
    if not expected:
        log.warning(
            "%s has no known sha256: it was placed in the cache by hand, not downloaded by the zoo. Its sha256 is "
            "%s; compare it with the publisher's, then record it (echo '%s  %s' > %s) so every later load is "
            "checked.", path, actual, actual, path.name, record_path(path))
    _VERIFIED[key] = actual


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


# ------------------------------------------------------------------------------------------ reading
_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"RIFF", "a RIFF (WAV/WebP) file"), (b"fLaC", "a FLAC file"), (b"%PDF", "a PDF document"),
          (b"\x1f\x8b", "a gzip archive"), (b"BM", "a BMP image"))


def _file_kind(path: Path) -> str:
    """'safetensors', 'torch' (zip or legacy pickle), or what the file is instead, in words."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "a damaged or truncated zip archive (torch checkpoints are zips)"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return f"a zip archive that is not a torch checkpoint (it holds {', '.join(names[:3]) or 'nothing'})"
    if head[:1] == b"\x80":
        return "torch"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a safetensors or torch file"


def _bad_file(path: Path, what: str) -> WeightLoadError:
    return WeightLoadError(
        f"cannot read weight file {path}: it is {what}. Pass a .safetensors file or a torch checkpoint "
        f"(.pth/.pt/.bin/.ckpt) saved from this model's state dict; a downloaded file that is damaged should be "
        f"deleted (rm {path}) and fetched again.")


def load_torch_file(path: str | os.PathLike):
    """``torch.load(weights_only=True)`` with our message on failure (never torch's advice to unpickle)."""
    path = Path(path)
    kind = _file_kind(path)
    if kind != "torch":
        raise _bad_file(path, kind)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Unsupported global" in text or "GLOBAL" in text:
            found = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln), "a Python object")
            raise WeightLoadError(
                f"cannot read weight file {path}: besides tensors it pickles Python objects ({found[:160]}), which "
                f"are not loaded for safety. Load it where you trust it and save only its state dict: "
                f"torch.save(model.state_dict(), 'weights.pth') or safetensors' save_file.") from None
        raise _bad_file(path, f"a damaged or truncated torch file ({type(e).__name__})") from None


def check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Raise :class:`WeightLoadError` when a floating tensor holds NaN or inf (once per file and process)."""
    key = _stat_key(path)
    if key in _FINITE:
        return
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f", … ({len(bad) - 5} more)" if len(bad) > 5 else "")
        raise WeightLoadError(
            f"weight file {path} holds NaN or inf values in {len(bad)} tensor(s) ({shown}): the file is damaged, "
            f"or it was saved from a diverged run. Delete it (rm {path}) so it is downloaded again, or pass "
            f"another checkpoint_path=.")
    _FINITE.add(key)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors (recognised by content; an int8 file of zoo.weights.quant comes
    back dequantized) or a torch checkpoint through ``torch.load(weights_only=True)``; NaN/inf values are
    refused (:func:`check_finite`).

    Official pickles often carry an ``argparse.Namespace`` of training args, which is allow-listed; weights
    nested under ``model``, ``state_dict`` or ``module`` are unwrapped (Lightning's ``model.`` prefix too).
    Anything else (an image, a text file, an empty or truncated file) raises our own :class:`WeightLoadError`.
    """
    path = Path(path)
    if not path.exists():
        raise WeightLoadError(f"weight file {path} does not exist")
    if path.is_dir():
        raise WeightLoadError(f"weight file {path} is a folder; pass the weight file inside it")
    kind = _file_kind(path)
    if kind == "safetensors":
        from safetensors import safe_open

        from zoo.weights.quant import dequantize

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                obj = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise _bad_file(path, f"a damaged or truncated safetensors file ({e})") from None
        obj = dequantize(obj, meta, source=str(path))  # int8 shipped files (zoo.weights.quant); others as stored
    else:
        obj = load_torch_file(path)
        for key in ("model", "state_dict", "module"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightLoadError(f"{path} holds no state dict of tensors (found {type(obj).__name__})")
        if obj and all(k.startswith("model.") for k in obj):  # a Lightning checkpoint of a recipe
            obj = {k[len("model."):]: v for k, v in obj.items()}
    check_finite(path, obj)
    return obj


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write safetensors atomically (temp file + rename), so a crash never leaves a half-written file.

    The bytes are serialised in memory and written into :func:`replace_atomically`'s temp file, so the file
    has the user's default mode (0666 less the umask); safetensors' own ``save_file`` would leave it 0600."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.contiguous() for k, v in state_dict.items()}, metadata=metadata)
    return replace_atomically(path, lambda tmp: tmp.write_bytes(blob))
