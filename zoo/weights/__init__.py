"""Weight files shipped with the package (fp16 safetensors of the zoo's own small models) and their
manifest, written by ``zoo publish``."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def weights_dir() -> Path:
    """The folder holding the shipped weight files and manifest.json."""
    return Path(str(resources.files("zoo.weights")))
