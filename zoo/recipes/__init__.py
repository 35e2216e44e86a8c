"""Lightning recipes: the classification task, an in-memory image data module for small images, and the
``zoo fit`` CLI that wires them from YAML (``configs/*.yaml``, shipped as ``zoo.configs``).

Imports are lazy because Lightning is slow to import and ``zoo`` itself must stay light.
"""
from __future__ import annotations

__all__ = ["ClassificationTask", "InMemoryImageDataModule"]


def __getattr__(name):
    if name == "ClassificationTask":
        from zoo.recipes.classification import ClassificationTask
        return ClassificationTask
    if name == "InMemoryImageDataModule":
        from zoo.recipes.memory_data import InMemoryImageDataModule
        return InMemoryImageDataModule
    raise AttributeError(f"module 'zoo.recipes' has no attribute {name!r}")
