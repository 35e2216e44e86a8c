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
    def __init__(self, path: str, expected: str, actual: str):
        super().__init__(
            f"Checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file is corrupt or "
            f"not the one registered; delete it so it is downloaded again, or pass the right file as checkpoint_path=."
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


class AudioDecodeError(DataError):
    """An audio file cannot be decoded or holds no samples."""
