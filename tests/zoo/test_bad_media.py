"""Bad media are skipped and counted the same way for images and audio, with any number of DataLoader
workers: the metric covers the good files, one summary line names the bad ones, a threshold makes it an error."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

import zoo
import zoo.evaluate as ev
from zoo import hub
from zoo.data.audio import AudioFolderDataset, FbankFrontEnd
from zoo.data.images import ImageFolderDataset
from zoo.data.sources import SkipUnreadable, UnreadableTally, collate_skipping
from zoo.errors import DataError

CLASSES = [str(d) for d in range(10)]


def _images(root: Path, per_class: int = 2) -> None:
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def _bad_images(root: Path) -> set[str]:
    good = (root / "1" / "0.png").read_bytes()
    (root / "1" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + good[100:600])  # a JPEG header, then junk
    (root / "2" / "empty.png").write_bytes(b"")
    (root / "3" / "notes.jpg").write_text("not an image at all")
    (root / "3" / "readme.txt").write_text("not media, no image extension: not part of the data set")
    return {"1/corrupt.jpg", "2/empty.png", "3/notes.jpg"}


def _wavs(root: Path) -> None:
    rng = np.random.default_rng(1)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        sf.write(root / c / "0.wav", (0.1 * rng.standard_normal(4000)).astype("float32"), 8000)


def _bad_wavs(root: Path) -> set[str]:
    sf.write(root / "4" / "short.wav", np.zeros(8, dtype="float32"), 8000)  # 8 samples: shorter than a frame
    (root / "5" / "garbage.wav").write_bytes(b"RIFF....WAVEjunk")
    return {"4/short.wav", "5/garbage.wav"}


@pytest.fixture
def captured(monkeypatch):
    results = []
    real = ev.evaluate

    def spy(*a, **kw):
        results.append(real(*a, **kw))
        return results[-1]

    monkeypatch.setattr(ev, "evaluate", spy)
    return results


def _eval(model: str, data: Path, workers: int, *extra: str) -> None:
    torch.manual_seed(0)  # the same random weights in every call
    assert ev.main([model, "--data", str(data), "--batch-size", "4", "--workers", str(workers), "--device", "cpu",
                    *extra]) == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_zoo_eval_skips_and_counts_bad_images(tmp_path, zoo_cache, captured, caplog, workers):
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    _images(clean)
    shutil.copytree(clean, dirty)
    bad = _bad_images(dirty)
    args = ("--model-args", '{"depth": 1}')
    _eval("vit_micro_patch4_32", clean, 0, *args)
    with caplog.at_level(logging.WARNING):
        _eval("vit_micro_patch4_32", dirty, workers, *args, "--max-bad", "0.2")
    ref, got = captured
    assert got["num_samples"] == ref["num_samples"] == 20 and got["skipped"] == 3
    assert got["top1"] == ref["top1"] and got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    lines = [r.getMessage() for r in caplog.records if "as unreadable" in r.getMessage()]
    assert len(lines) == 1 and "skipped 3 of 23 files" in lines[0]
    assert set(got["skipped_files"]) == bad and all(b in lines[0] for b in bad)
    with pytest.raises(DataError, match=r"unreadable \(more than the 1\.0% allowed\).*--max-bad"):
        _eval("vit_micro_patch4_32", dirty, workers, *args)  # default threshold: 1%


def _audio_export(path: Path) -> Path:
    """A small audio classifier as a zoo fit export (weights + the metadata zoo eval rebuilds it from)."""
    fe = FbankFrontEnd(sample_rate=8000, num_mel_bins=32, target_length=32, stats=None, mean=-6.0, std=4.0)
    torch.manual_seed(0)
    model = zoo.create_model("vit_micro_patch4_32", num_classes=10, in_chans=1, img_size=32, depth=1)
    meta = {"format": "speedzoo-export-v1", "model": "vit_micro_patch4_32", "num_classes": "10", "in_chans": "1",
            "img_size": "[32, 32]", "model_args": json.dumps({"depth": 1}),
            "preprocess": json.dumps(fe.front_end_config()), "class_names": json.dumps(CLASSES)}
    return hub.save_state_dict(model.state_dict(), path, metadata=meta)


@pytest.mark.parametrize("workers", [0, 2])
def test_zoo_eval_skips_and_counts_bad_audio(tmp_path, zoo_cache, captured, caplog, workers):
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    _wavs(clean)
    shutil.copytree(clean, dirty)
    bad = _bad_wavs(dirty)
    export = ("--checkpoint", str(_audio_export(tmp_path / "export.safetensors")))
    _eval("vit_micro_patch4_32", clean, 0, *export)
    with caplog.at_level(logging.WARNING):
        _eval("vit_micro_patch4_32", dirty, workers, *export, "--max-bad", "0.2")
    ref, got = captured
    assert got["num_samples"] == ref["num_samples"] == 10 and got["skipped"] == 2
    assert got["top1"] == ref["top1"] and got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped 2 of 12 files")]
    assert len(summary) == 1 and all(b in summary[0] for b in bad)


def test_training_loader_counts_across_workers(tmp_path):
    _images(tmp_path)
    bad = _bad_images(tmp_path)
    from torchvision import transforms as T

    ds = SkipUnreadable(ImageFolderDataset(tmp_path, transform=T.ToTensor()))
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, collate_fn=collate_skipping,
                        generator=torch.Generator().manual_seed(0))
    tally = UnreadableTally.for_dataset(ds, max_fraction=0.5)
    seen = 0
    for batch in loader:
        batch = tally.take(batch)
        if batch is not None:
            seen += len(batch[1])
    assert seen == 20 and sorted(tally.names) == sorted(bad) and ds.classes == CLASSES


def test_audio_under_the_wrapper_is_skipped_not_silenced(tmp_path):
    _wavs(tmp_path)
    _bad_wavs(tmp_path)
    fe = FbankFrontEnd(sample_rate=8000, num_mel_bins=64, target_length=96)
    raw = AudioFolderDataset(tmp_path, front_end=fe)
    assert raw.skipped == ["5/garbage.wav"]  # its header is unreadable: dropped when opened
    short = [p for p, _ in raw.items].index("4/short.wav")
    wrapped = SkipUnreadable(raw)
    item = wrapped[short]
    assert item.name == "4/short.wav" and "shorter than one analysis frame" in item.reason
    assert raw.decode_failures == 0
    tally = UnreadableTally.for_dataset(wrapped, max_fraction=0.5)
    assert tally.names == ["5/garbage.wav"] and tally.total == 12


def test_threshold_counts_and_rejects_bad_values():
    with pytest.raises(DataError, match="2 of 10 files"):
        t = UnreadableTally(10, 0.1)
        t.add(["a"])
        t.add(["b"])
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        UnreadableTally(10, 5)


class _Breaks(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 5:
            raise DataError("the label file of item 5 is missing; restore it")
        return torch.zeros(3, 32, 32), 0


def test_worker_error_surfaces_as_its_one_line_message():
    model = zoo.create_model("vit_micro_patch4_32", depth=1)
    with pytest.raises(DataError) as err:
        ev.evaluate(model, DataLoader(_Breaks(), batch_size=2, num_workers=2))
    assert str(err.value) == "the label file of item 5 is missing; restore it"


def _fit_folder(tmp_path: Path, data: Path, run: str, *extra: str) -> int:
    """zoo fit of a depth-1 ViT on an image folder (train and val), one epoch on the CPU."""
    from zoo.recipes.cli import main

    cfg = tmp_path / "folder.yaml"
    cfg.write_text(
        "model:\n  model: vit_micro_patch4_32\n  img_size: 32\n  model_args: {depth: 1}\n  warmup_steps: 0\n"
        "data:\n  class_path: zoo.data.modules.ImageDataModule\n  init_args:\n"
        f"    path: {data}\n    val_path: {data}\n    img_size: 32\n    augment: none\n    eval_batch_size: 8\n"
        "trainer:\n  accelerator: cpu\n  max_epochs: 1\n  limit_val_batches: 1\n  num_sanity_val_steps: 0\n"
        "  enable_model_summary: false\n")
    return main(["--config", str(cfg), "--progress", "none", "--export", "false", "--checkpoint_every_n_steps", "0",
                 "--trainer.default_root_dir", str(tmp_path / run), *extra])


@pytest.mark.parametrize("workers, batch, extra", [
    (0, 1, ["--model.ema_decay", "0.9", "--data.drop_last", "false"]),  # each bad file is a batch of its own
    (2, 4, ["--model.mixup_alpha", "0.8", "--model.cutmix_alpha", "1.0"]),   # odd batches left by bad files
])
def test_zoo_fit_skips_and_counts_bad_images(tmp_path, zoo_cache, caplog, workers, batch, extra):
    """Training reads past a corrupt jpg, an empty file and a non-image (all-bad batches are skipped steps,
    EMA and mixup cope), logs one line per epoch with the count, and stops above data.max_bad."""
    data = tmp_path / "dirty"
    _images(data)
    shutil.copy(data / "0" / "0.png", data / "0" / "extra.png")  # 24 files: batches of 4 drop none
    bad = _bad_images(data)
    args = ["--data.num_workers", str(workers), "--data.batch_size", str(batch), *extra]
    with caplog.at_level(logging.WARNING, logger="zoo.data.sources"):
        assert _fit_folder(tmp_path, data, "ok", *args, "--data.max_bad", "0.2") == 0
    lines = [r.getMessage() for r in caplog.records if "as unreadable in the training data" in r.getMessage()]
    assert len(lines) == 1 and "skipped 3 of 24 files" in lines[0] and all(b in lines[0] for b in bad)
    with pytest.raises(DataError, match=r"unreadable \(more than the 1\.0% allowed\).*--max-bad"):
        _fit_folder(tmp_path, data, "strict", *args)  # default data.max_bad: 1%
    assert not (tmp_path / "strict" / "run.lock").exists()
