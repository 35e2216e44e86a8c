"""The one exception family users see. Every message says what went wrong and how to fix it."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ZooError(Exception):
    """Base class of every error a user can cause through the zoo's API or CLI."""


class UnknownModelError(ZooError, KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        self.name = name
        close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        super().__init__(f"Unknown model '{name}'.{hint} `zoo list` shows every registered model.")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class PretrainedNotAvailableError(ZooError):
    """A pretrained tag does not exist, or its file cannot be had (offline and not cached)."""


class ChecksumError(ZooError):
    def __init__(self, path: str, expected: str, actual: str, recorded_in: str | None = None):
        self.path = path
        origin = f"recorded in {recorded_in} when it was downloaded" if recorded_in else "registered for this tag"
        super().__init__(
            f"Checksum mismatch for {path}: expected sha256 {expected} ({origin}), got {actual}. The file is "
            f"corrupt or not the one registered; delete it (rm {path}) so it is downloaded again, or pass the right "
            f"file as checkpoint_path=."
        )


class WeightLoadError(ZooError):
    """A weight file is unreadable, or its keys or shapes do not fit the model."""


class InputShapeError(ZooError, ValueError):
    """An input tensor has the wrong rank, channel count or size for the model."""


class ConfigError(ZooError, ValueError):
    """A bad model, recipe or CLI configuration value."""

    @classmethod
    def unknown_key(cls, key: str, known: Iterable[str], where: str = "config") -> "ConfigError":
        close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Valid keys: {', '.join(sorted(known))}."
        return cls(f"Unknown {where} key '{key}'.{hint}")


class DataError(ZooError):
    """A data set is missing, empty, or in a layout the zoo does not recognise."""


class CacheError(ZooError):
    """The weight cache folder cannot be created or written: read-only, full, or a file stands in its way."""

    def __init__(self, folder: str, reason: str):
        self.folder = folder
        super().__init__(
            f"Cannot write to the weight cache folder {folder}: {reason}. Free space or fix permissions there, or "
            f"choose another cache folder with the ZOO_CACHE environment variable (e.g. export ZOO_CACHE=/data/speedzoo).")


class MediaDecodeError(DataError):
    """One image or audio file cannot be decoded (corrupt, truncated, empty or not media); data sets skip and
    count these (zoo.data.sources.SkipUnreadable) instead of stopping. ``file`` names it within its data set."""

    def __init__(self, message: str, file: str | None = None):
        super().__init__(message)
        self.file = file


class ImageDecodeError(MediaDecodeError):
    """An image file cannot be decoded or is empty."""


class AudioDecodeError(MediaDecodeError):
    """An audio file cannot be decoded, holds no samples or is shorter than one analysis frame."""
