"""A folder or a .zip seen as one read-only tree of files.

Datasets index files by their posix path relative to the tree, so the same dataset code reads a folder or a
zip in place (no extraction). The zip handle is opened lazily, once per process, and never pickled: a
DataLoader worker (fork or spawn) opens its own, because a ZipFile shared across a fork shares one file
offset and returns garbage.

Bad files are one mechanism for images and audio: a data set raises :class:`~zoo.errors.MediaDecodeError`
for a file it cannot decode, :class:`SkipUnreadable` turns it into a marker, :func:`collate_skipping` drops
markers from the batch and :class:`UnreadableTally` counts them in the main process, logs one summary line
and raises a :class:`~zoo.errors.DataError` above a threshold (default 1% of the files).
"""
from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from torch.utils.data import Dataset

from zoo.errors import ConfigError, DataError, MediaDecodeError, ZooError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing", "eval")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


class FileTree:
    """Files of a folder or a zip under an optional prefix, addressed by relative posix paths."""

    def __init__(self, root: str | os.PathLike, prefix: str = ""):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DataError(f"Data path {self.root} does not exist. Check the path (absolute, or relative to "
                            f"{Path.cwd()}).")
        self.is_zip = self.root.is_file() and zipfile.is_zipfile(self.root)
        if self.root.is_file() and not self.is_zip:
            raise DataError(f"{self.root} is a file but not a zip archive; pass a folder or a .zip of one.")
        self.prefix = prefix.strip("/")
        self._files: list[str] | None = None
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None

    # pickling: the open handle and the (possibly large) listing stay behind
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zip"] = None
        state["_zip_pid"] = None
        state["_files"] = None
        return state

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.root)
            self._zip_pid = os.getpid()
        return self._zip

    def _full(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def files(self) -> list[str]:
        """Sorted relative paths of all regular, non-hidden files below the prefix."""
        if self._files is None:
            pre = self.prefix + "/" if self.prefix else ""
            if self.is_zip:
                names = [n for n in self._zipfile().namelist() if not n.endswith("/") and n.startswith(pre)]
                rels = [n[len(pre):] for n in names]
            else:
                base = self.root / self.prefix if self.prefix else self.root
                rels = []
                for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
                    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                    rel_dir = Path(dirpath).relative_to(base).as_posix()
                    for f in filenames:
                        rels.append(f if rel_dir == "." else f"{rel_dir}/{f}")
            self._files = sorted(r for r in rels if not _hidden(r))
        return self._files

    def top_dirs(self) -> list[str]:
        """Sorted names of the first-level folders (those holding at least one file)."""
        return sorted({f.split("/", 1)[0] for f in self.files() if "/" in f})

    def exists(self, rel: str) -> bool:
        if self.is_zip:
            try:
                self._zipfile().getinfo(self._full(rel))
                return True
            except KeyError:
                return False
        return (self.root / self._full(rel)).is_file()

    def subtree(self, sub: str) -> "FileTree":
        """The tree below folder `sub`, sharing nothing mutable with this one."""
        t = FileTree.__new__(FileTree)
        t.__dict__.update(self.__getstate__())
        t._zip, t._zip_pid = self._zip, self._zip_pid  # same process: reuse the open zip (never pickled)
        t.prefix = self._full(sub.strip("/"))
        return t

    def open(self, rel: str) -> BinaryIO:
        """A binary file object for one member (zip members are read into memory: they are small)."""
        if self.is_zip:
            return io.BytesIO(self._zipfile().read(self._full(rel)))
        return open(self.root / self._full(rel), "rb")

    def read_bytes(self, rel: str) -> bytes:
        with self.open(rel) as f:
            return f.read()

    def describe(self, rel: str = "") -> str:
        """Human-readable location for messages: `/d/x.zip::inner/path` or `/d/inner/path`."""
        inner = self._full(rel) if rel else self.prefix
        if self.is_zip:
            return f"{self.root}::{inner}" if inner else str(self.root)
        return str(self.root / inner) if inner else str(self.root)

    def __repr__(self) -> str:
        return f"FileTree({self.describe()!r})"


def select_split(tree: FileTree, split: str | None, what: str = "files") -> FileTree:
    """Descend into the split folder (`train/`, `test/`, …) when the tree is organised by split.

    A tree whose first-level folders are all split names is split-organised: `split` must name one of them
    (None picks the only one). Otherwise the tree is taken as a whole and `split` is ignored (logged), so a
    plain `<class>/<file>` folder works for any split. A single wrapper folder (`cifar10/train/...`) is
    looked through.
    """
    top = tree.top_dirs()
    if len(top) == 1 and top[0].lower() not in SPLIT_NAMES:
        inner = tree.subtree(top[0])
        inner_top = inner.top_dirs()
        if inner_top and all(d.lower() in SPLIT_NAMES for d in inner_top):
            tree, top = inner, inner_top
    if top and all(d.lower() in SPLIT_NAMES for d in top):
        if split is None:
            if len(top) == 1:
                return tree.subtree(top[0])
            raise DataError(f"{tree.describe()} holds the splits {top}; pass split= one of them.")
        for d in top:
            if d == split:
                return tree.subtree(d)
        for d in top:
            if d.lower() == split.lower():
                return tree.subtree(d)
        raise DataError(f"Split '{split}' not found in {tree.describe()}: it holds the splits {top}. Pass "
                        f"split= one of them, or the path of the file/folder that holds '{split}'.")
    if split is not None:
        log.info("%s has no split folders; using all its %s for split '%s'", tree.describe(), what, split)
    return tree


# ------------------------------------------------------------------------------------------- bad files
@dataclass(frozen=True)
class Unreadable:
    """What :class:`SkipUnreadable` yields in place of a sample whose file cannot be decoded."""

    name: str
    reason: str


def _base_dataset(ds):
    while hasattr(ds, "dataset") and not hasattr(ds, "items") and not hasattr(ds, "samples"):
        ds = ds.dataset
    return ds


class SkipUnreadable(Dataset):
    """A data set whose undecodable items (any :class:`MediaDecodeError`: corrupt, truncated, empty, too short,
    not media) become :class:`Unreadable` markers, for images and audio alike.

    Pair it with :func:`collate_skipping` as the DataLoader's ``collate_fn``: the markers are dropped from the
    batch and their names ride along as the batch's third element, so the main process counts them
    (:class:`UnreadableTally`) whatever the number of workers. The sample order stays exact (resumable
    training). ``classes``, ``targets`` and other attributes are the wrapped data set's.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        base = _base_dataset(dataset)
        if hasattr(base, "on_unreadable"):  # audio sets substitute silence on their own unless told to raise
            base.on_unreadable = "raise"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except MediaDecodeError as e:
            return Unreadable(getattr(e, "file", None) or str(index), str(e))

    def __getattr__(self, name: str):
        if name == "dataset":  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def skipped_at_open(self) -> list[str]:
        """Files the wrapped data set already dropped when it was opened (audio header checks)."""
        return list(getattr(_base_dataset(self.dataset), "skipped", []) or [])


def collate_skipping(batch: list) -> tuple:
    """``default_collate`` of the readable samples, plus the list of the unreadable ones' names.

    Returns ``(inputs, labels, names)``; ``(None, None, names)`` when every sample of the batch was unreadable.
    """
    from torch.utils.data import default_collate

    good = [b for b in batch if not isinstance(b, Unreadable)]
    names = [b.name for b in batch if isinstance(b, Unreadable)]
    if not good:
        return None, None, names
    x, y = default_collate(good)[:2]
    return x, y, names


class UnreadableTally:
    """Counts, in the main process, the unreadable files a loader skipped; logs one summary line and raises
    :class:`DataError` once more than ``max_fraction`` of the ``total`` files are unreadable."""

    def __init__(self, total: int, max_fraction: float = 0.01, already: Sequence[str] = (), where: str = "the data"):
        if not 0 <= max_fraction <= 1:
            raise ConfigError(f"max_bad_fraction must lie in [0, 1], got {max_fraction}.")
        self.total = int(total) + len(already)
        self.max_fraction = float(max_fraction)
        self.where = where
        self.names: list[str] = []
        self.add(already)

    @classmethod
    def for_dataset(cls, dataset, max_fraction: float = 0.01, where: str = "the data",
                    count_opened: bool = True) -> "UnreadableTally":
        """A tally over ``dataset``, counting the files a :class:`SkipUnreadable` set dropped when opened."""
        opened = isinstance(dataset, SkipUnreadable) and count_opened
        return cls(len(dataset), max_fraction, dataset.skipped_at_open if opened else (), where)

    def add(self, names: Sequence[str]) -> None:
        self.names.extend(names)
        if names and len(self.names) > self.max_fraction * self.total:
            raise DataError(
                f"{len(self.names)} of {self.total} files in {self.where} are unreadable (more than the "
                f"{self.max_fraction:.1%} allowed), e.g. {self._first()}. Fix or remove them, or allow more with "
                f"--max-bad / max_bad_fraction= (a fraction, e.g. 0.05).")

    def take(self, batch):
        """``(inputs, labels)`` of a :func:`collate_skipping` batch (None for an all-unreadable one), counted."""
        if isinstance(batch, (tuple, list)) and len(batch) == 3 and isinstance(batch[2], list):
            self.add(batch[2])
            return None if batch[0] is None else (batch[0], batch[1])
        return batch[0], batch[1]

    def _first(self, n: int = 3) -> str:
        return ", ".join(self.names[:n]) + (", …" if len(self.names) > n else "")

    def summary(self, count: int | None = None, total: int | None = None) -> str:
        """The one line logged (as a warning) when files were skipped; '' when none were. ``count`` and
        ``total`` replace this tally's figures (the sums over ranks; the names stay this tally's)."""
        count = len(self.names) if count is None else count
        if not count:
            return ""
        line = (f"skipped {count} of {self.total if total is None else total} files as unreadable in "
                f"{self.where}: first few names {self._first()}")
        log.warning(line)
        return line


def worker_errors_in_one_line(loader):
    """Iterate ``loader``; a zoo error raised in a DataLoader worker comes out as itself, with its own message,
    instead of torch's "Caught ... in DataLoader worker process N" and the worker's whole traceback."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ZooError as e:
            text = str(e)
            marker = f"{type(e).__module__}.{type(e).__qualname__}: "
            if not text.startswith("Caught ") or marker not in text:
                raise
            raise type(e)(text.rsplit(marker, 1)[1].strip()) from None
        yield batch
