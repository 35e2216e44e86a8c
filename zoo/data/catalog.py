"""Named data sets: a short name (``cifar10``, ``fsdd``, ``flickr8k``, ``tinyshakespeare``, ``minilm``) stands
for its file(s) under one data folder, the ``ZOO_DATA`` environment variable.

Why: recipes and commands should say *which* data set they use, not where one machine keeps it. Library code
names no paths; a user points ``ZOO_DATA`` at the folder holding the files once (``export
ZOO_DATA=/data/speedzoo``) and ``zoo fit``/``zoo eval --data cifar10`` find them. A name with several files
picks one by split (``cifar10`` -> ``cifar10-train.zip`` for 'train', ``cifar10-test.zip`` for 'test'), and
``name-split`` (``cifar10-train``) names one file directly. Anything that is not a name is a path.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Optional, Union

from zoo.errors import DataError

ENV = "ZOO_DATA"

# name -> file, or {split: file} with the first split the default (what `zoo eval --data NAME` reads)
CATALOG: dict[str, Union[str, dict[str, str]]] = {
    "cifar10": {"test": "cifar10-test.zip", "train": "cifar10-train.zip"},
    "fsdd": "fsdd.zip",
    "flickr8k": {"eval": "flickr8k-128-eval.zip", "train": "flickr8k-128-train.zip"},
    "tinyshakespeare": "tinyshakespeare.txt",
    "minilm": "all-MiniLM-L6-v2-fp16.zip",
}
# splits served by another split's file (CIFAR-10's test set is its validation set; Flickr8k's dev and test
# images are in the eval zip)
_SPLIT_FILES = {"cifar10": {"val": "test", "validation": "test"},
                "flickr8k": {"dev": "eval", "test": "eval", "val": "eval", "validation": "eval"}}


def names() -> list[str]:
    """Every name resolve() accepts: the data sets and their ``name-split`` forms."""
    out = []
    for name, files in CATALOG.items():
        out.append(name)
        if isinstance(files, dict):
            out += [f"{name}-{split}" for split in files]
    return out


def is_name(value: Union[str, os.PathLike]) -> bool:
    """True when ``value`` is a catalog name (not a path)."""
    return str(value) in names()


def _file(name: str, split: Optional[str]) -> str:
    base, _, named_split = name.partition("-") if name not in CATALOG else (name, "", "")
    files = CATALOG[base]
    if isinstance(files, str):
        return files
    split = named_split or _SPLIT_FILES.get(base, {}).get(split or "", split)
    if split in files:
        return files[split]
    return next(iter(files.values()))   # the default file (a split the set has no own file for)


def data_root() -> Path:
    """The folder ``ZOO_DATA`` names; DataError saying how to set it when unset or not a folder."""
    root = os.environ.get(ENV)
    if not root:
        raise DataError(f"Named data sets ({', '.join(CATALOG)}) are looked up under the {ENV} folder, and {ENV} "
                        f"is not set. Point it at the folder holding the files, e.g. export {ENV}=/data/speedzoo, "
                        f"or give a path instead of a name.")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{ENV}={root} is not a folder. Point {ENV} at the folder holding the data files "
                        f"(e.g. export {ENV}=/data/speedzoo).")
    return path


def resolve(name: Union[str, os.PathLike], split: Optional[str] = None) -> Path:
    """The file a data set name stands for under ``ZOO_DATA`` (``split`` picks among several files);
    DataError naming the file and how to set ``ZOO_DATA`` when it is unset or the file is not there."""
    name = str(name)
    if not is_name(name):
        close = difflib.get_close_matches(name, names(), n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(f"{name!r} is not a named data set ({', '.join(names())}).{hint}")
    filename = _file(name, split)
    path = data_root() / filename
    if not path.exists():
        raise DataError(f"Data set {name!r} is the file {filename} under {ENV}, but {path} does not exist. Put "
                        f"{filename} there or point {ENV} at the folder that holds it.")
    return path


def resolve_path(value: Union[str, os.PathLike], what: str = "data.path", split: Optional[str] = None) -> Path:
    """A data set name (see resolve) or a path, relative ones taken against the current directory;
    DataError with the fix when it does not exist."""
    if is_name(value):
        return resolve(value, split).resolve()
    p = Path(os.path.expandvars(str(value))).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p
    if not p.exists():
        raise DataError(f"{what}={value} does not exist (resolved to {p}). Give an existing path or a named data "
                        f"set ({', '.join(CATALOG)}) found under {ENV}.")
    return p.resolve()
