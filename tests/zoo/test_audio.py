"""zoo.data audio: decoding, the AST fbank front end, SpecAugment, the audio layouts (real FSDD zip + made-up files)."""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torchaudio.compliance import kaldi

from zoo.data import (FBANK_STATS, AudioFolderDataset, FbankFrontEnd, FSDDDataset, SpecAugment, compute_fbank_stats,
                      load_audio, open_audio_dataset)
from zoo.errors import AudioDecodeError, ConfigError, DataError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FSDD = DATA / "fsdd.zip"
needs_fsdd = pytest.mark.skipif(not FSDD.is_file(), reason=f"shared data file {FSDD} not present")


def _tone(freq=440.0, seconds=0.5, sr=16000, channels=1, seed=0):
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def _wav(path: Path, data=None, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _tone(sr=sr) if data is None else data, sr, subtype="PCM_16")
    return path


def _empty_wav(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    return path


def _garbage(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF....this is not audio" * 20)
    return path


# ---------------------------------------------------------------------------------------------- decoding
def test_load_audio_downmix_and_resample(tmp_path):
    p = _wav(tmp_path / "st.wav", _tone(sr=8000, channels=2), sr=8000)
    w = load_audio(p, target_sr=16000)
    assert w.shape == (1, 8000) and w.dtype == torch.float32
    both = load_audio(p, target_sr=None, mono=False)
    assert both.shape == (2, 4000)
    assert torch.allclose(load_audio(p, target_sr=None), both.mean(0, keepdim=True))


def test_load_audio_bad_files_raise_audio_decode_error(tmp_path):
    with pytest.raises(AudioDecodeError, match="empty.wav"):
        load_audio(_empty_wav(tmp_path / "empty.wav"))
    with pytest.raises(AudioDecodeError, match="junk.wav"):
        load_audio(_garbage(tmp_path / "junk.wav"))
    with pytest.raises(DataError):  # AudioDecodeError is a DataError
        load_audio(io.BytesIO(b"nope"), name="member.wav")


@needs_fsdd
def test_load_audio_reads_zip_members():
    with zipfile.ZipFile(FSDD) as z:
        raw = z.read("recordings/3_theo_7.wav")
    frames = sf.info(io.BytesIO(raw)).frames
    native = load_audio(io.BytesIO(raw), target_sr=None)
    assert native.shape == (1, frames)
    up = load_audio(io.BytesIO(raw), target_sr=16000)
    assert up.shape == (1, 2 * frames)


# --------------------------------------------------------------------------------------------- front end
def test_fbank_matches_direct_kaldi_call_ast_recipe():
    wav = torch.from_numpy(_tone(seconds=0.7).T)
    fe = FbankFrontEnd(target_length=100, stats="esc50")
    out = fe(wav)
    ref = kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=16000, use_energy=False,
                      window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    n = ref.shape[0]
    assert n == 1 + (wav.shape[1] - 400) // 160 == 68
    ref = torch.nn.functional.pad(ref, (0, 0, 0, 100 - n))
    mean, std = FBANK_STATS["esc50"]
    assert out.shape == (1, 128, 100)
    torch.testing.assert_close(out, ((ref - mean) / (2 * std)).T.unsqueeze(0))


def test_fbank_shape_crop_pad_and_normalisation():
    wav = torch.from_numpy(_tone(seconds=1.0).T)
    raw = FbankFrontEnd(target_length=50, stats=None)(wav)
    assert raw.shape == (1, 128, 50)
    norm = FbankFrontEnd(target_length=50, mean=-3.0, std=2.0, stats=None)(wav)
    torch.testing.assert_close(norm, (raw + 3.0) / 4.0)
    padded = FbankFrontEnd(target_length=200, stats=None)(wav)
    assert padded.shape == (1, 128, 200)
    torch.testing.assert_close(padded[..., :50], raw)
    assert torch.count_nonzero(padded[..., 98:]) == 0  # 98 real frames, zeros after
    batch = FbankFrontEnd(target_length=50)(torch.stack([wav, wav]))
    assert batch.shape == (2, 1, 128, 50)
    assert FbankFrontEnd(target_length=8)(torch.zeros(100)).shape == (1, 128, 8)  # shorter than one window
    with pytest.raises(ConfigError):
        FbankFrontEnd(stats="librispeech")
    with pytest.raises(ConfigError):
        FbankFrontEnd(stats=None, mean=1.0)


def test_front_end_config_roundtrip():
    fe = FbankFrontEnd(target_length=128, stats="speechcommands", freqm=48, timem=48)
    cfg = fe.front_end_config()
    assert cfg["window_type"] == "hanning" and cfg["htk_compat"] and cfg["mean"] == FBANK_STATS["speechcommands"][0]
    again = FbankFrontEnd.from_config(cfg)
    assert again.front_end_config() == cfg
    custom = FbankFrontEnd.from_config({**cfg, "stats": None, "mean": -5.0, "std": 3.0})
    assert (custom.mean, custom.std) == (-5.0, 3.0)
    with pytest.raises(ConfigError):
        FbankFrontEnd.from_config({**cfg, "window_type": "hamming"})


def test_spec_augment_masks_only_in_training():
    torch.manual_seed(0)
    wav = torch.from_numpy(_tone(seconds=1.0).T)
    fe = FbankFrontEnd(target_length=98, freqm=30, timem=30)
    clean = fe.eval()(wav)
    assert torch.equal(fe(wav), clean)  # eval: deterministic, no masks
    fe.train()
    masked = fe(wav)
    fill = (0 - fe.mean) / (2 * fe.std)  # AST masks the raw log-mel with 0, then normalises
    assert not torch.equal(masked, clean)
    assert torch.isclose(masked, torch.tensor(fill)).any()
    assert torch.equal(fe(wav, augment=False), clean)
    sa = SpecAugment(freqm=20, timem=20)
    x = torch.randn(4, 1, 128, 100) + 5
    assert torch.equal(sa.eval()(x), x)
    y = sa.train()(x)
    assert (y == 0).any() and not torch.equal(y, x)


def test_compute_fbank_stats_matches_direct(tmp_path):
    for c in ("a", "b"):
        _wav(tmp_path / c / "1.wav", _tone(freq=300 if c == "a" else 900, seconds=0.4))
    ds = open_audio_dataset(tmp_path, "train")
    mean, std = compute_fbank_stats(ds)
    fe = FbankFrontEnd(target_length=None, stats=None)
    allx = torch.cat([fe(ds.load_waveform(i)).flatten() for i in range(len(ds))]).double()
    assert mean == pytest.approx(allx.mean().item(), rel=1e-6)
    assert std == pytest.approx(allx.std(unbiased=False).item(), rel=1e-5)
    with pytest.raises(DataError):
        compute_fbank_stats([])


# ---------------------------------------------------------------------------------------------- layouts
@needs_fsdd
def test_fsdd_zip_official_split_sizes():
    fe = FbankFrontEnd(target_length=128, stats="speechcommands")
    train = open_audio_dataset(FSDD, "train", front_end=fe)
    test = open_audio_dataset(FSDD, "test", front_end=fe, check_files=False)
    assert isinstance(train, FSDDDataset) and len(train) == 2700 and len(test) == 300
    assert train.classes == [str(d) for d in range(10)] and train.skipped == []
    assert np.bincount(train.targets).tolist() == [270] * 10
    assert all(int(p.split("_")[2][:-4]) < 5 for p, _ in test.items)
    x, y = test[0]
    assert x.shape == (1, 128, 128) and y == int(test.items[0][0][0])


def test_audio_folder_skips_bad_files_and_survives_late_failures(tmp_path, caplog):
    for c in ("cat", "dog"):
        for i in range(2):
            _wav(tmp_path / c / f"{i}.wav")
    _empty_wav(tmp_path / "cat" / "empty.wav")
    _garbage(tmp_path / "dog" / "garbage.wav")
    fe = FbankFrontEnd(target_length=64)
    with caplog.at_level("WARNING"):
        ds = open_audio_dataset(tmp_path, "train", front_end=fe)
    assert len(ds) == 4 and sorted(ds.skipped) == ["cat/empty.wav", "dog/garbage.wav"]
    assert "skipped 2" in caplog.text
    # a file breaking after construction becomes silence with its label, the epoch goes on
    (tmp_path / "dog" / "1.wav").write_bytes(b"truncated")
    idx = [p for p, _ in ds.items].index("dog/1.wav")
    x, y = ds[idx]
    assert x.shape == (1, 128, 64) and y == 1 and ds.decode_failures == 1
    assert torch.equal(x, fe(torch.zeros(1, fe.samples_for(64))))
    raw = AudioFolderDataset(tmp_path, None, front_end=None, check_files=False)
    assert len(raw) == 6  # unchecked: bad files stay in


def test_speech_commands_layout(tmp_path):
    for c in ("no", "yes"):
        for i in range(3):
            _wav(tmp_path / c / f"spk{i}_nohash_0.wav")
    _wav(tmp_path / "_background_noise_" / "white_noise.wav")
    (tmp_path / "validation_list.txt").write_text("yes/spk0_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("no/spk1_nohash_0.wav\nyes/spk1_nohash_0.wav\n")
    train = open_audio_dataset(tmp_path, "train")
    assert train.layout == "speechcommands" and train.classes == ["no", "yes"] and len(train) == 3
    assert len(open_audio_dataset(tmp_path, "val")) == 1
    test = open_audio_dataset(tmp_path, "test")
    assert sorted(p for p, _ in test.items) == ["no/spk1_nohash_0.wav", "yes/spk1_nohash_0.wav"]
    assert train.training and not test.training


def test_esc50_layout_by_fold(tmp_path):
    rows = [("1-a.wav", 1, 0, "dog"), ("2-b.wav", 2, 1, "rooster"), ("5-c.wav", 5, 0, "dog"), ("5-d.wav", 5, 1, "rooster")]
    (tmp_path / "meta").mkdir()
    with open(tmp_path / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for r in rows:
            _wav(tmp_path / "audio" / r[0])
            w.writerow([*r, "True", "x", "A"])
    train = open_audio_dataset(tmp_path, "train")
    assert train.layout == "esc50" and train.classes == ["dog", "rooster"] and len(train) == 2
    val = open_audio_dataset(tmp_path, "val")
    assert sorted(p for p, _ in val.items) == ["audio/5-c.wav", "audio/5-d.wav"] and val.targets == [0, 1]
    assert len(open_audio_dataset(tmp_path, "val", val_fold=1)) == 1
    with pytest.raises(ConfigError):
        open_audio_dataset(tmp_path, "val", val_fold=9)


def test_csv_manifest(tmp_path):
    for name in ("a.wav", "b.wav", "c.wav"):
        _wav(tmp_path / "clips" / name)
    (tmp_path / "m.csv").write_text("path,label,split\nclips/a.wav,10,train\nclips/b.wav,2,train\n"
                                    "clips/c.wav,2,validation\n")
    train = open_audio_dataset(tmp_path / "m.csv", "train")
    assert train.classes == ["2", "10"] and train.targets == [1, 0]  # numeric labels sort numerically
    val = open_audio_dataset(tmp_path / "m.csv", "val")
    assert val.items == [("clips/c.wav", 0)]
    (tmp_path / "bad.csv").write_text("file,class\nx.wav,1\n")
    with pytest.raises(DataError, match="path,label"):
        open_audio_dataset(tmp_path / "bad.csv", "train")


def test_open_audio_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_audio_dataset(tmp_path / "missing", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No audio files"):
        open_audio_dataset(tmp_path / "empty", "train")
    _wav(tmp_path / "flat" / "x.wav")
    with pytest.raises(DataError, match="Unknown audio data layout"):
        open_audio_dataset(tmp_path / "flat", "train")
    _empty_wav(tmp_path / "allbad" / "c" / "e.wav")
    with pytest.raises(DataError, match="unreadable or empty"):
        open_audio_dataset(tmp_path / "allbad", "train")


def test_audio_data_module(tmp_path):
    from zoo.data import AudioDataModule

    for split in ("train", "val"):
        for c in ("down", "up"):
            for i in range(4):
                _wav(tmp_path / split / c / f"{i}.wav", _tone(freq=200 + 100 * i, seconds=0.3))
    dm = AudioDataModule(path=str(tmp_path), target_length=32, stats=None, norm_mean=-8.0, norm_std=4.0,
                         freqm=8, timem=8, batch_size=3, num_workers=0, seed=1)
    assert dm.num_classes == 2 and dm.class_names == ["down", "up"] and dm.img_size == (128, 32)
    dm.setup("fit")
    x, y, _ = next(iter(dm.train_dataloader()))  # (clips, labels, names of files skipped as unreadable)
    assert x.shape == (3, 1, 128, 32) and y.dtype == torch.int64
    assert dm.train_dataset.training and not dm.val_dataset.training
    cfg = dm.front_end_config()
    assert (cfg["mean"], cfg["std"], cfg["target_length"]) == (-8.0, 4.0, 32)
