"""Lightning recipes: the base Task every kind of training shares (zoo.recipes.task), the classification
task, and the ``zoo fit`` CLI that wires a task and a data module (zoo.data.modules) from YAML
(``configs/*.yaml``, shipped as ``zoo.configs``).

Imports are lazy because Lightning is slow to import and ``zoo`` itself must stay light.
"""
from __future__ import annotations

__all__ = ["Task", "ClassificationTask"]


def __getattr__(name):
    if name == "Task":
        from zoo.recipes.task import Task
        return Task
    if name == "ClassificationTask":
        from zoo.recipes.classification import ClassificationTask
        return ClassificationTask
    raise AttributeError(f"module 'zoo.recipes' has no attribute {name!r}")
