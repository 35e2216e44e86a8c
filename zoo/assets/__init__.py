"""Real samples bundled for the demo: one CIFAR-10 test image per class and spoken digits (FSDD test split)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def asset_files(kind: str) -> list[Path]:
    """Bundled sample files of ``kind`` ('cifar10' or 'fsdd'), sorted by name."""
    root = Path(str(resources.files("zoo.assets").joinpath(kind)))
    return sorted(p for p in root.iterdir() if p.is_file())
