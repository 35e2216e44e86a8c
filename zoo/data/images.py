"""Image datasets (ImageFolder from folder or zip, CIFAR pickles, Fashion-MNIST IDX) and timm transforms.

Every dataset returns `(image, label)` with `image` a PIL image (or whatever `transform` makes of it) and
exposes `classes`, `class_to_idx` and `targets`, so subsets, data modules and heads need no per-format code.
"""
from __future__ import annotations

import gzip
import logging
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from zoo.data.sources import FileTree, select_split
from zoo.errors import ConfigError, DataError, ImageDecodeError

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(i) for i in range(10))


def _is_image(rel: str) -> bool:
    return rel.lower().endswith(IMG_EXTENSIONS)


class ImageFolderDataset(Dataset):
    """`<class>/<image>` layout (ImageFolder, ImageNet train/val) read from a folder or straight from a zip.

    `split` picks the top-level split folder when the tree has them (`train/`, `test/`, `val/`). Class names
    are the sorted first-level folder names unless `classes` is given (then only those folders are read, in
    that label order). Images may sit deeper below their class folder.
    """

    def __init__(self, root: str | os.PathLike | FileTree, split: str | None = None,
                 classes: Sequence[str] | None = None, transform: Callable | None = None):
        tree = root if isinstance(root, FileTree) else FileTree(root)
        self.tree = select_split(tree, split, "images")
        self.split = split
        self.transform = transform
        images = [f for f in self.tree.files() if "/" in f and _is_image(f)]
        found = sorted({f.split("/", 1)[0] for f in images})
        if not images:
            raise DataError(
                f"No images found under {self.tree.describe()}; expected <class>/<image> subfolders "
                f"(e.g. cat/0001.jpg) with extensions {', '.join(IMG_EXTENSIONS)}"
                + (f", optionally below a split folder such as {split}/" if split else "") + ".")
        if classes is None:
            self.classes = found
        else:
            self.classes = list(classes)
            missing = [c for c in self.classes if c not in found]
            if missing:
                raise DataError(f"Classes {missing} have no images under {self.tree.describe()}; it holds "
                                f"{found}. Fix classes= or the path.")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(f, self.class_to_idx[f.split("/", 1)[0]]) for f in images
                        if f.split("/", 1)[0] in self.class_to_idx]
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        rel = self.samples[index][0]
        try:
            with self.tree.open(rel) as f:
                img = Image.open(f)
                img.load()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageDecodeError(f"Cannot decode image {self.tree.describe(rel)}: {e}. The file is corrupt, empty "
                                   f"or not an image; delete or replace it.", file=rel) from e
        return img.convert("RGB")

    def __getitem__(self, index: int):
        img = self.load_image(index)
        return (self.transform(img) if self.transform else img), self.samples[index][1]


def _normalise_split(split: str | None) -> str:
    """CIFAR and Fashion-MNIST ship only train and test: 'val' falls back to the test set (logged)."""
    s = (split or "train").lower()
    if s in ("train", "training"):
        return "train"
    if s in ("test", "testing", "val", "valid", "validation", "eval"):
        if s not in ("test", "testing"):
            log.info("this data set has no validation split; split '%s' uses the test set", split)
        return "test"
    raise DataError(f"Unknown split '{split}'; use 'train', 'val' or 'test'.")


class ArrayImageDataset(Dataset):
    """Images held in memory as a uint8 array [N, H, W] (grayscale) or [N, H, W, 3] (RGB)."""

    def __init__(self, data: np.ndarray, targets: Sequence[int], classes: Sequence[str],
                 transform: Callable | None = None, to_rgb: bool = False):
        self.data = data
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.to_rgb = to_rgb

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])  # [H, W] -> "L", [H, W, 3] -> "RGB"
        if self.to_rgb:
            img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[index]


def _find_cifar_dir(root: Path) -> tuple[Path, int] | None:
    """(folder, 10|100) for torchvision's CIFAR pickle folders, given the folder or its parent."""
    for cand in (root, root / "cifar-10-batches-py", root / "cifar-100-python"):
        if (cand / "batches.meta").is_file() and (cand / "test_batch").is_file():
            return cand, 10
        if (cand / "meta").is_file() and (cand / "train").is_file() and (cand / "test").is_file():
            return cand, 100
    return None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # pickle raises many types on bad input
        raise DataError(f"Cannot read CIFAR pickle {path}: {e}. Re-download the python version "
                        f"(cifar-10-python.tar.gz / cifar-100-python.tar.gz) and extract it.") from e


class CifarDataset(ArrayImageDataset):
    """CIFAR-10/100 from torchvision's pickle folders (`cifar-10-batches-py/`, `cifar-100-python/`).

    Read directly (no md5 check, unlike torchvision.datasets.CIFAR10) so partial or re-packed copies work.
    CIFAR-100 uses the 100 fine labels.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = "train", transform: Callable | None = None):
        found = _find_cifar_dir(Path(root))
        if found is None:
            raise DataError(f"{root} is not a CIFAR pickle folder: expected cifar-10-batches-py/ "
                            f"(data_batch_1..5, test_batch, batches.meta) or cifar-100-python/ (train, test, meta).")
        folder, kind = found
        split = _normalise_split(split)
        if kind == 10:
            files = sorted(folder.glob("data_batch_*")) if split == "train" else [folder / "test_batch"]
            if not files:
                raise DataError(f"No data_batch_* files in {folder}; the CIFAR-10 training batches are missing.")
            classes = _unpickle(folder / "batches.meta")["label_names"]
            label_key = "labels"
        else:
            files = [folder / split]
            classes = _unpickle(folder / "meta")["fine_label_names"]
            label_key = "fine_labels"
        data, targets = [], []
        for f in files:
            entry = _unpickle(f)
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            targets.extend(entry[label_key])
        arr = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))  # -> N, H, W, C
        super().__init__(arr, targets, classes, transform)
        self.root = folder


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (LeCun's MNIST format, optionally gzipped) into a numpy array."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code not in _IDX_DTYPES:
            raise ValueError("bad magic number")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        arr = np.frombuffer(raw, dtype=_IDX_DTYPES[dtype_code], offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"Cannot read IDX file {path}: {e}. Re-download it (Fashion-MNIST: "
                        f"`apt-get install dataset-fashion-mnist`).") from e


_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _find_idx(root: Path, prefix: str, kind: str) -> Path | None:
    """`{prefix}-{kind}-ubyte[.gz]`, also the `images.idx3-ubyte` spelling some mirrors use."""
    for name in (f"{prefix}-{kind}-ubyte", f"{prefix}-{kind.replace('-', '.')}-ubyte"):
        for cand in (root / name, root / f"{name}.gz"):
            if cand.is_file():
                return cand
    return None


def _is_idx_folder(root: Path) -> bool:
    return root.is_dir() and any(_find_idx(root, p, "images-idx3") is not None for p in ("train", "t10k"))


class IdxImageDataset(ArrayImageDataset):
    """Fashion-MNIST (or MNIST) from its IDX files, raw or .gz: grayscale 28×28 'L' images.

    Class names default to Fashion-MNIST's unless the folder path names plain MNIST; `to_rgb=True` gives
    3-channel images for RGB backbones.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = "train", transform: Callable | None = None,
                 classes: Sequence[str] | None = None, to_rgb: bool = False):
        root = Path(root)
        prefix = _IDX_PREFIX[_normalise_split(split)]
        img_path = _find_idx(root, prefix, "images-idx3")
        lbl_path = _find_idx(root, prefix, "labels-idx1")
        if img_path is None or lbl_path is None:
            raise DataError(f"Missing {prefix}-images-idx3-ubyte[.gz] or {prefix}-labels-idx1-ubyte[.gz] in "
                            f"{root}. Fashion-MNIST: `apt-get install dataset-fashion-mnist` installs them in "
                            f"/usr/share/datasets/fashion-mnist/.")
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"IDX files in {root} disagree: images {images.shape}, labels {labels.shape}; "
                            f"expected [N, H, W] and [N].")
        if classes is None:
            lower = str(root).lower()
            classes = MNIST_CLASSES if ("mnist" in lower and "fashion" not in lower) else FASHION_MNIST_CLASSES
        if labels.size and int(labels.max()) >= len(classes):
            raise DataError(f"Labels in {lbl_path} go up to {int(labels.max())} but there are {len(classes)} "
                            f"classes; pass classes= with all class names.")
        super().__init__(np.ascontiguousarray(images.astype(np.uint8)), labels.tolist(), classes, transform, to_rgb)
        self.root = root


# ----------------------------------------------------------------------------------------------- subsets
class LabeledSubset(Subset):
    """torch Subset that keeps `classes`, `class_to_idx` and `targets` of its parent."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        super().__init__(dataset, list(indices))
        self.classes = dataset.classes
        self.class_to_idx = getattr(dataset, "class_to_idx", {c: i for i, c in enumerate(self.classes)})
        parent = dataset.targets
        self.targets = [parent[i] for i in self.indices]

    @property
    def transform(self):
        return getattr(self.dataset, "transform", None)


def subset_indices(targets: Sequence[int], n: int, per_class: bool = True, seed: int | None = None) -> list[int]:
    """Indices of a small subset for smoke runs.

    per_class: n samples of each class (all of a class if it has fewer); else n samples in total.
    seed None takes the first ones (in dataset order), an int a seeded random choice. Indices come back
    sorted, so the subset keeps the dataset's order.
    """
    if n is None or n < 0:
        raise ConfigError(f"subset size must be a non-negative int, got {n!r}.")
    order = list(range(len(targets)))
    if seed is not None:
        g = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(len(targets), generator=g).tolist()
    if not per_class:
        return sorted(order[:n])
    taken: dict[int, int] = {}
    chosen = []
    for i in order:
        t = int(targets[i])
        if taken.get(t, 0) < n:
            taken[t] = taken.get(t, 0) + 1
            chosen.append(i)
    return sorted(chosen)


def make_subset(dataset: Dataset, n: int | None, per_class: bool = True, seed: int | None = None) -> Dataset:
    """`dataset` itself when n is None, else a LabeledSubset (see subset_indices)."""
    if n is None:
        return dataset
    return LabeledSubset(dataset, subset_indices(dataset.targets, n, per_class, seed))


# ------------------------------------------------------------------------------------------- transforms
def resolve_image_data_config(cfg: dict | None = None, **overrides: Any) -> dict:
    """timm's data config (input_size, interpolation, mean, std, crop_pct, crop_mode) from a model's
    pretrained_cfg-style dict, with explicit overrides (e.g. input_size=(3, 32, 32))."""
    from timm.data import resolve_data_config

    args = {k: v for k, v in overrides.items() if v is not None}
    if "img_size" in args:
        size = args.pop("img_size")
        size = (size, size) if isinstance(size, int) else tuple(size)
        chans = (args.get("input_size") or (cfg or {}).get("input_size") or (3,))[0]
        args["input_size"] = (chans, *size)
    return resolve_data_config(args=args, pretrained_cfg=dict(cfg or {}))


class _ResizeIfNeeded:
    """Resize to (h, w) only when the image differs, so 32-px CIFAR stays untouched at 32 px."""

    def __init__(self, size: tuple[int, int], interpolation):
        from torchvision.transforms import Resize
        self.size = size
        self.resize = Resize(size, interpolation=interpolation, antialias=True)

    def __call__(self, img):
        w, h = img.size
        return img if (h, w) == tuple(self.size) else self.resize(img)

    def __repr__(self) -> str:
        return f"ResizeIfNeeded(size={self.size})"


AUG_STYLES = ("timm", "cifar", "none")


def build_image_transform(data_config: dict, is_training: bool, style: str = "timm", **aug: Any):
    """The image transform for a model's data config.

    style 'timm': timm.data.create_transform(**data_config, is_training, **aug) — RandomResizedCrop, flip,
    color jitter, auto_augment=..., re_prob=... in training; resize + center crop by crop_pct in eval.
    style 'cifar': random crop with 4-px zero padding + horizontal flip (training), then normalize; no
    crop_pct in eval. RandomResizedCrop throws away too much of a 32-px image, this is the standard CIFAR recipe.
    style 'none': resize if needed and normalize, for training and eval alike.
    """
    from timm.data import create_transform
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    if style not in AUG_STYLES:
        raise ConfigError(f"Unknown augmentation style '{style}'; use one of {AUG_STYLES}.")
    cfg = dict(data_config)
    if "input_size" not in cfg:
        raise ConfigError("data_config has no input_size; build it with resolve_image_data_config(...).")
    if style == "timm":
        keep = {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode") if k in cfg}
        return create_transform(**keep, is_training=is_training, **aug)
    if aug:
        raise ConfigError(f"Options {sorted(aug)} only apply to style='timm'; style '{style}' takes none.")
    size = tuple(cfg["input_size"][-2:])
    interp = {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
        cfg.get("interpolation", "bilinear"), InterpolationMode.BILINEAR)
    steps: list = [_ResizeIfNeeded(size, interp)]
    if is_training and style == "cifar":
        steps += [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean=cfg["mean"], std=cfg["std"])]
    return T.Compose(steps)


# ------------------------------------------------------------------------------------------- detection
def detect_image_layout(path: str | os.PathLike) -> str:
    """'imagefolder' (folder or zip), 'cifar' or 'idx'; DataError when missing or unrecognised."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"Data path {p} does not exist. Check the path (absolute, or relative to {Path.cwd()}).")
    if p.is_file():
        import zipfile
        if zipfile.is_zipfile(p):
            return "imagefolder"
        raise DataError(f"Unknown image data layout at {p}: a file that is not a zip. Pass a folder of "
                        f"<class>/<image> subfolders, a .zip of one, a CIFAR pickle folder or a folder of IDX files.")
    if _find_cifar_dir(p) is not None:
        return "cifar"
    if _is_idx_folder(p):
        return "idx"
    return "imagefolder"


def open_image_dataset(path: str | os.PathLike, split: str | None = "train", transform: Callable | None = None,
                       classes: Sequence[str] | None = None, subset: int | None = None,
                       subset_per_class: bool = True, subset_seed: int | None = None,
                       to_rgb: bool = False) -> Dataset:
    """Open an image data set, detecting its layout: ImageFolder folder or zip (ImageNet-style val folders
    included), CIFAR-10/100 pickles, Fashion-MNIST IDX. `subset` trims it for smoke runs (make_subset)."""
    layout = detect_image_layout(path)
    if layout == "cifar":
        ds: Dataset = CifarDataset(path, split, transform)
    elif layout == "idx":
        ds = IdxImageDataset(path, split, transform, classes=classes, to_rgb=to_rgb)
    else:
        ds = ImageFolderDataset(path, split, classes=classes, transform=transform)
    log.info("opened %s image data %s split=%s: %d images, %d classes", layout, path, split, len(ds),
             len(ds.classes))
    return make_subset(ds, subset, subset_per_class, subset_seed)
