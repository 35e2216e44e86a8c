"""zoo.data images, sampler and data modules: real CIFAR-10 zips (listing + a few decodes) and tiny made-up files."""
from __future__ import annotations

import gzip
import pickle
import struct
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from zoo.data import (CifarDataset, IdxImageDataset, ImageFolderDataset, ResumableRandomSampler,
                      build_image_transform, make_subset, open_image_dataset, resolve_image_data_config,
                      subset_indices)
from zoo.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CIFAR_TEST = DATA / "cifar10-test.zip"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
needs_cifar = pytest.mark.skipif(not CIFAR_TEST.is_file(), reason=f"shared data file {CIFAR_TEST} not present")


def _cfg32(**kw):
    return resolve_image_data_config({"input_size": (3, 224, 224), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                                      "crop_pct": 0.875, "interpolation": "bicubic"}, img_size=32, **kw)


def _png(path: Path, color, size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


# ------------------------------------------------------------------------------------------- CIFAR-10 zip
@needs_cifar
def test_cifar10_test_zip_classes_and_counts_from_listing():
    ds = open_image_dataset(CIFAR_TEST, "test")
    assert ds.classes == CIFAR_CLASSES
    assert len(ds) == 10_000
    assert Counter(ds.targets) == {i: 1000 for i in range(10)}
    # split None picks the only split folder
    assert len(open_image_dataset(CIFAR_TEST, None)) == 10_000


@needs_cifar
def test_cifar10_decode_one_image_eval_and_cifar_train_transforms():
    ds = open_image_dataset(CIFAR_TEST, "test", transform=build_image_transform(_cfg32(), is_training=False,
                                                                                style="cifar"))
    x, y = ds[1500]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    # eval 'cifar' style is just normalisation: undo it and compare with the decoded pixels
    raw = np.asarray(ds.load_image(1500), dtype=np.float32) / 255.0
    assert torch.allclose(x * 0.25 + 0.5, torch.from_numpy(raw).permute(2, 0, 1), atol=1e-5)
    ds.transform = build_image_transform(_cfg32(), is_training=True, style="cifar")
    assert ds[3][0].shape == (3, 32, 32)
    ds.transform = build_image_transform(_cfg32(), is_training=True)  # timm RandomResizedCrop path
    assert ds[3][0].shape == (3, 32, 32)


@needs_cifar
def test_zip_dataset_works_with_workers_and_pickles_without_handle():
    tf = build_image_transform(_cfg32(), is_training=False, style="none")
    ds = make_subset(open_image_dataset(CIFAR_TEST, "test", transform=tf), 1)  # first image of each class
    assert len(ds) == 10
    first = ds[0][0]  # opens the zip in this process
    assert ds.dataset.tree._zip is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.dataset.tree._zip is None
    assert torch.equal(clone[0][0], first)
    xs, ys = zip(*DataLoader(ds, batch_size=5, num_workers=2))
    assert torch.equal(torch.cat(xs)[0], first)
    assert torch.cat(ys).tolist() == list(range(10))


@needs_cifar
def test_missing_split_in_zip_raises_data_error():
    with pytest.raises(DataError, match="Split 'train' not found"):
        open_image_dataset(CIFAR_TEST, "train")


# -------------------------------------------------------------------------------------------- errors
def test_bad_paths_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_image_dataset(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found under"):
        open_image_dataset(tmp_path / "empty", "train")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="Unknown image data layout"):
        open_image_dataset(tmp_path / "notes.txt", "train")
    empty_zip = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty_zip, "w") as z:
        z.writestr("train/readme.txt", "no images")
    with pytest.raises(DataError, match="No images found under"):
        open_image_dataset(empty_zip, "train")


def test_corrupt_image_raises_data_error(tmp_path):
    _png(tmp_path / "a" / "ok.png", (1, 2, 3))
    (tmp_path / "a" / "bad.png").write_bytes(b"not a png at all")
    ds = open_image_dataset(tmp_path, None)
    assert len(ds) == 2
    with pytest.raises(DataError, match="bad.png"):
        [ds[i] for i in range(len(ds))]


# ----------------------------------------------------------------------------------- folder layouts
def test_image_folder_splits_explicit_classes_and_zip_equivalence(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 1)):
        for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
            for i in range(n):
                _png(root / split / cls / f"{i}.png", color)
        _png(root / split / "dog" / "deeper" / "x.jpg", (0, 255, 0))  # nested below the class folder
    train = open_image_dataset(root, "train")
    assert train.classes == ["cat", "dog"] and len(train) == 7
    assert train[0][0].mode == "RGB" and train[0][0].getpixel((0, 0)) == (255, 0, 0)
    assert len(open_image_dataset(root, "val")) == 3
    rev = ImageFolderDataset(root, "train", classes=["dog", "cat"])
    assert rev.class_to_idx == {"dog": 0, "cat": 1} and Counter(rev.targets) == {0: 4, 1: 3}
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(root, "train", classes=["cat", "cow"])
    # the same tree zipped below a wrapper folder reads identically
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                z.write(f, "wrapper/" + f.relative_to(root).as_posix())
    ztrain = open_image_dataset(zpath, "train")
    assert ztrain.classes == train.classes and ztrain.targets == train.targets
    assert ztrain[4][0].tobytes() == train[4][0].tobytes()


def test_folder_without_split_folders_serves_any_split(tmp_path):
    _png(tmp_path / "a" / "1.png", (0, 0, 0))
    _png(tmp_path / "b" / "1.png", (9, 9, 9))
    ds = open_image_dataset(tmp_path, "val")
    assert ds.classes == ["a", "b"] and len(ds) == 2


# ----------------------------------------------------------------------------------------- CIFAR pickle
def _write_cifar10(root: Path, n_train_batches=2, per_batch=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(10)]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    arrays = {}
    for name in [f"data_batch_{i + 1}" for i in range(n_train_batches)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        arrays[name] = (data, labels)
        with open(d / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    return d, names, arrays


def test_cifar10_pickle_layout(tmp_path):
    d, names, arrays = _write_cifar10(tmp_path)
    train = open_image_dataset(tmp_path, "train")
    assert isinstance(train, CifarDataset) and train.classes == names and len(train) == 8
    assert train.targets == arrays["data_batch_1"][1] + arrays["data_batch_2"][1]
    img, label = train[5]  # second batch, second row
    expect = arrays["data_batch_2"][0][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert img.size == (32, 32) and np.array_equal(np.asarray(img), expect)
    test = open_image_dataset(d, "val")  # the folder itself; val falls back to the test batch
    assert len(test) == 4 and test.targets == arrays["test_batch"][1]
    tf = build_image_transform(_cfg32(), is_training=True, style="cifar")
    assert CifarDataset(d, "test", transform=tf)[0][0].shape == (3, 32, 32)


def test_cifar100_pickle_layout(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []}, f)
    for split, labels in (("train", [99, 3, 5]), ("test", [7])):
        with open(d / split, "wb") as f:
            pickle.dump({"data": np.zeros((len(labels), 3072), np.uint8), "fine_labels": labels,
                         "coarse_labels": [0] * len(labels)}, f)
    ds = open_image_dataset(tmp_path, "train")
    assert len(ds.classes) == 100 and ds.targets == [99, 3, 5]
    assert len(open_image_dataset(tmp_path, "test")) == 1


# ----------------------------------------------------------------------------------------- Fashion IDX
def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_fashion_mnist_idx_raw_and_gz(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 2], dtype=np.uint8)
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    (root / "train-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    (root / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(imgs[:2])))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels[:2])))
    train = open_image_dataset(root, "train")
    assert isinstance(train, IdxImageDataset) and len(train) == 6 and train.targets == labels.tolist()
    assert train.classes[9] == "Ankle boot"
    img, y = train[1]
    assert img.mode == "L" and y == 9 and np.array_equal(np.asarray(img), imgs[1])
    test = open_image_dataset(root, "test")
    assert len(test) == 2
    cfg = resolve_image_data_config({"input_size": (1, 28, 28), "mean": (0.5,), "std": (0.5,), "crop_pct": 1.0})
    test.transform = build_image_transform(cfg, is_training=False)
    assert test[0][0].shape == (1, 28, 28)
    rgb = IdxImageDataset(root, "test", to_rgb=True)
    assert rgb[0][0].mode == "RGB"
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="IDX"):
        open_image_dataset(root, "test")


# ------------------------------------------------------------------------------------------- subsets
def test_subsets_first_per_class_and_seeded():
    targets = [0, 1, 2] * 10
    assert subset_indices(targets, 2) == [0, 1, 2, 3, 4, 5]
    a = subset_indices(targets, 3, seed=7)
    assert a == subset_indices(targets, 3, seed=7) and a != subset_indices(targets, 3, seed=8)
    assert Counter(targets[i] for i in a) == {0: 3, 1: 3, 2: 3}
    b = subset_indices(targets, 5, per_class=False, seed=1)
    assert len(b) == 5 and b == sorted(b)
    with pytest.raises(ConfigError):
        subset_indices(targets, -1)


# ----------------------------------------------------------------------------------------- transforms
def test_transform_styles():
    cfg = _cfg32()
    assert cfg["input_size"] == (3, 32, 32) and cfg["interpolation"] == "bicubic"
    cifar = repr(build_image_transform(cfg, is_training=True, style="cifar"))
    assert "RandomCrop" in cifar and "padding=4" in cifar and "RandomHorizontalFlip" in cifar
    assert "RandomResized" in repr(build_image_transform(cfg, is_training=True))
    aa = repr(build_image_transform(cfg, is_training=True, auto_augment="rand-m9-mstd0.5", re_prob=0.25))
    assert "RandAugment" in aa and "RandomErasing" in aa
    with pytest.raises(ConfigError):
        build_image_transform(cfg, True, style="fancy")
    with pytest.raises(ConfigError):
        build_image_transform(cfg, True, style="cifar", re_prob=0.2)


# ------------------------------------------------------------------------------------------- sampler
def test_sampler_reproducible_per_epoch():
    s = ResumableRandomSampler(50, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(50)) and e0 == list(ResumableRandomSampler(50, seed=3))
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and sorted(e1) == list(range(50))
    assert list(ResumableRandomSampler(50, seed=4)) != e0


def test_sampler_resumes_mid_epoch():
    s = ResumableRandomSampler(20, seed=0)
    s.set_epoch(2)
    full = s.permutation()
    it = iter(s)
    seen = [next(it) for _ in range(7)]
    state = s.state_dict()
    assert state["epoch"] == 2 and state["consumed"] == 7 and seen == full[:7]
    r = ResumableRandomSampler(20, seed=0)
    r.load_state_dict(state)
    r.set_epoch(2)  # Lightning calls this on restart: must keep the offset
    assert len(r) == 20 and r.remaining == 13
    assert list(r) == full[7:]
    r.set_epoch(3)
    assert list(r) == r.permutation(3) and len(list(r)) == 20
    # an explicit consumed count wins over the sampler's own (worker prefetch runs ahead)
    assert s.state_dict(consumed=4)["consumed"] == 4
    with pytest.raises(DataError, match="seed"):
        ResumableRandomSampler(21, seed=0).load_state_dict(state)


# --------------------------------------------------------------------------------------- data module
def _tiny_tree(root: Path, per_class=6):
    for split in ("train", "val"):
        for c, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
            for i in range(per_class):
                _png(root / split / f"k{c}" / f"{i}.png", tuple(v + i for v in color), size=(12, 12))


def test_image_data_module(tmp_path):
    from zoo.data import ImageDataModule

    _tiny_tree(tmp_path)
    kw = dict(path=str(tmp_path), img_size=8, augment="none", batch_size=4, num_workers=0, train_subset=4, seed=5)
    dm = ImageDataModule(**kw)
    assert dm.num_classes == 3 and dm.class_names == ["k0", "k1", "k2"]  # before setup
    dm.setup("fit")
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 18
    x, y, _ = next(iter(dm.train_dataloader()))  # (images, labels, names of files skipped as unreadable)
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.int64
    order = [b[1].tolist() for b in dm.train_dataloader()]
    assert len(order) == 3  # drop_last with 12 samples
    dm2 = ImageDataModule(**kw)
    dm2.setup("fit")
    assert [b[1].tolist() for b in dm2.train_dataloader()] == order
    assert dm.hparams.img_size == 8
    # Lightning checkpoint round trip of the sampler state
    state = dm.state_dict()
    assert state["sampler"]["n"] == 12
    dm3 = ImageDataModule(**kw)
    dm3.load_state_dict({"sampler": {**state["sampler"], "consumed": 4}})
    dm3.setup("fit")
    assert [b[1].tolist() for b in dm3.train_dataloader()] == order[1:]


class _IndexData(Dataset):
    classes = ["even", "odd"]

    def __init__(self, n):
        self.targets = [i % 2 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), self.targets[i]


def test_lightning_mid_epoch_resume_sees_exactly_the_rest(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from zoo.data.modules import _ClassificationDataModule

    class DM(_ClassificationDataModule):
        def __init__(self):
            super().__init__(str(tmp_path), None, None, "train", "val", "test", 4, None, 0, None, None, True, 11,
                             False, True)

        def _open(self, path, split, training):
            return _IndexData(24)

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 2)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch[0].flatten().int().tolist()))
            return torch.nn.functional.cross_entropy(self.lin(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    common = dict(max_epochs=2, limit_val_batches=0, logger=False, enable_progress_bar=False,
                  enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    full = Recorder()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{epoch}-{step}")
    pl.Trainer(callbacks=[ckpt], **common).fit(full, datamodule=DM())
    assert len(full.seen) == 12
    resumed = Recorder()
    pl.Trainer(**common).fit(resumed, datamodule=DM(), ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    assert resumed.seen == full.seen[2:]


def test_image_data_needs_no_audio_stack():
    """Image training imports nothing of soundfile (machines without it can still train on images)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['soundfile'] = None\n"
            "import zoo.data, zoo.data.modules\n"
            "from zoo.data import AudioFolderDataset\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ------------------------------------------------------------------------------------------ named data sets
def test_named_data_sets_resolve_under_zoo_data(tmp_path, monkeypatch):
    from zoo.data import catalog

    for f in ("cifar10-train.zip", "cifar10-test.zip", "fsdd.zip"):
        (tmp_path / f).write_bytes(b"")
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    assert catalog.resolve("cifar10", "train") == tmp_path / "cifar10-train.zip"
    assert catalog.resolve("cifar10") == tmp_path / "cifar10-test.zip"          # eval's default: test
    assert catalog.resolve("cifar10", "val") == tmp_path / "cifar10-test.zip"   # CIFAR's test set validates
    assert catalog.resolve("cifar10-train", "test") == tmp_path / "cifar10-train.zip"   # name-split wins
    assert catalog.resolve("fsdd", "train") == tmp_path / "fsdd.zip"
    monkeypatch.chdir(tmp_path)
    assert catalog.resolve_path("fsdd.zip") == tmp_path / "fsdd.zip"            # a path, not a name
    with pytest.raises(DataError, match=r"tinyshakespeare.txt under ZOO_DATA.*point ZOO_DATA"):
        catalog.resolve("tinyshakespeare")
    with pytest.raises(DataError, match=r"Did you mean: cifar10"):
        catalog.resolve("cifar1O")
    with pytest.raises(DataError, match=r"does not exist.*named data set"):
        catalog.resolve_path("no/such.zip")
    monkeypatch.delenv("ZOO_DATA")
    with pytest.raises(DataError, match=r"ZOO_DATA is not set.*export ZOO_DATA="):
        catalog.resolve("cifar10")
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"is not a folder"):
        catalog.resolve("fsdd")


def test_data_modules_take_data_set_names(tmp_path, monkeypatch):
    """A data module given a name reads the file ZOO_DATA holds for each split."""
    from zoo.data import ImageDataModule

    _tiny_tree(tmp_path / "tree")
    import shutil
    shutil.make_archive(str(tmp_path / "data" / "cifar10-train"), "zip", tmp_path / "tree")
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    dm = ImageDataModule(path="cifar10", img_size=8, augment="none", batch_size=4, num_workers=0)
    assert dm.class_names == ["k0", "k1", "k2"]
    with pytest.raises(DataError, match="cifar10-test.zip"):   # val falls back to test: CIFAR-10's test zip
        dm.setup("fit")


def test_zoo_eval_data_names_come_from_the_catalog(tmp_path, monkeypatch):
    from zoo.evaluate import resolve_data

    (tmp_path / "cifar10-test.zip").write_bytes(b"")
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    assert resolve_data("cifar10") == tmp_path / "cifar10-test.zip"
    with pytest.raises(DataError, match="fsdd.zip under ZOO_DATA"):
        resolve_data("fsdd")
