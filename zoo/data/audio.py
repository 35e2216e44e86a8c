"""Audio decoding, the AST/AuM Kaldi-fbank front end, SpecAugment and audio classification data sets.

Decoding is soundfile's (torchaudio 2.9+ dropped its own backends, see reference/audio.md §5), resampling
and features are torchaudio's. Every data set yields `(features, label)`: the front end's
`[1, n_mels, frames]` tensor (channels, freq, time — an image for any backbone with in_chans=1 and
img_size=(n_mels, frames)) or, without a front end, the waveform `[1, samples]` at `sample_rate`.

Bad files: a data set checks every file's header with soundfile.info at construction and drops the
unreadable or empty ones, logging one warning with their count. A file that still fails in __getitem__ (a
damaged body behind a valid header, or a clip shorter than one analysis frame, e.g. 8 samples of a
truncated .wav) raises AudioDecodeError under zoo.data.sources.SkipUnreadable, which skips and counts it
exactly as it does undecodable images (the zoo's loaders use it). A bare data set, outside that wrapper,
keeps an epoch going by substituting silence of the target length with the true label and logging a
warning (`decode_failures` counts them in the process that loaded them).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from zoo.data.sources import FileTree, select_split
from zoo.errors import AudioDecodeError, ConfigError, DataError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus")

# (mean, std) of the 128-bin AST fbank per data set, from the AST recipes (reference/audio.md §1.1)
FBANK_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}
# AST's target_length per data set
TARGET_LENGTHS = {"audioset": 1024, "esc50": 512, "speechcommands": 128}


def _is_audio(rel: str) -> bool:
    return rel.lower().endswith(AUDIO_EXTENSIONS)


def _name_of(src: Any) -> str:
    return str(getattr(src, "name", None) or src) if not isinstance(src, (str, os.PathLike)) else str(src)


# ------------------------------------------------------------------------------------------------ decode
def load_audio(src: str | os.PathLike | BinaryIO, target_sr: int | None = 16000, mono: bool = True,
               name: str | None = None) -> torch.Tensor:
    """Decode a file path or file object (e.g. a zip member) to float32 [channels, frames] at target_sr.

    mono averages the channels to [1, frames]; target_sr None keeps the file's rate. Raises
    AudioDecodeError naming the file when it cannot be decoded or holds no samples.
    """
    import soundfile as sf  # here, not at the top: image-only work needs no audio stack

    label = name or _name_of(src)
    try:
        data, sr = sf.read(src, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports corrupt/unsupported files in several exception types
        raise AudioDecodeError(
            f"Cannot decode audio {label}: {e}. The file is corrupt or not a format libsndfile reads "
            f"(WAV, FLAC, OGG, MP3); re-encode it (e.g. `ffmpeg -i in -ar 16000 out.wav`) or remove it.") from e
    if data.shape[0] == 0:
        raise AudioDecodeError(f"Audio file {label} holds no samples; remove it or replace it with a real recording.")
    wav = torch.from_numpy(np.ascontiguousarray(data.T))  # (frames, channels) -> (channels, frames)
    if mono and wav.shape[0] > 1:
        wav = wav.mean(dim=0, keepdim=True)
    if target_sr is not None and sr != target_sr:
        from torchaudio.functional import resample
        wav = resample(wav, orig_freq=int(sr), new_freq=int(target_sr))
    return wav


def audio_info(src: str | os.PathLike | BinaryIO) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) from the header only; raises AudioDecodeError."""
    import soundfile as sf

    try:
        info = sf.info(src)
    except Exception as e:
        raise AudioDecodeError(f"Cannot read the audio header of {_name_of(src)}: {e}.") from e
    return int(info.samplerate), int(info.channels), int(info.frames)


# -------------------------------------------------------------------------------------------- front end
class FbankFrontEnd(nn.Module):
    """AST's front end: waveform -> Kaldi log-mel fbank -> pad/crop -> [SpecAugment] -> (x - mean)/(2 std).

    Defaults are AST's AudioSet ones (reference/audio.md §1.1): subtract the waveform mean, kaldi.fbank with
    htk_compat, Hann window, 128 bins, 25/10 ms, no dither or energy; zero-pad or crop to target_length.
    freqm/timem > 0 add AST-style SpecAugment (masks set to 0 before normalisation, as AST does), applied
    only when `augment` is true (default: the module's training mode). mean/std None skip normalisation
    (what compute_fbank_stats needs). Input [samples], [channels, samples] (downmixed) or
    [B, channels, samples]; output [1, n_mels, target_length] (or [B, 1, n_mels, target_length]).
    """

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 128, target_length: int | None = 1024,
                 frame_shift: float = 10.0, frame_length: float = 25.0, stats: str | None = "audioset",
                 mean: float | None = None, std: float | None = None, freqm: int = 0, timem: int = 0,
                 subtract_mean: bool = True):
        super().__init__()
        if stats is not None and stats not in FBANK_STATS:
            raise ConfigError(f"Unknown fbank stats preset '{stats}'; use one of {sorted(FBANK_STATS)}, or None "
                              f"with mean=/std= (compute_fbank_stats gives them for a new data set).")
        if stats is not None and mean is None and std is None:
            mean, std = FBANK_STATS[stats]
        if (mean is None) != (std is None) or (std is not None and std <= 0):
            raise ConfigError(f"Give both mean and a positive std for fbank normalisation, got mean={mean}, std={std}.")
        if target_length is not None and target_length < 1:
            raise ConfigError(f"target_length must be >= 1 frame or None, got {target_length}.")
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.target_length = None if target_length is None else int(target_length)
        self.frame_shift = float(frame_shift)
        self.frame_length = float(frame_length)
        self.stats = stats
        self.mean = None if mean is None else float(mean)
        self.std = None if std is None else float(std)
        self.freqm = int(freqm)
        self.timem = int(timem)
        self.subtract_mean = subtract_mean
        self.spec_augment = SpecAugment(freqm, timem, normalised=False) if (freqm or timem) else None

    def kaldi_kwargs(self) -> dict:
        return dict(htk_compat=True, sample_frequency=self.sample_rate, use_energy=False, window_type="hanning",
                    num_mel_bins=self.num_mel_bins, dither=0.0, frame_shift=self.frame_shift,
                    frame_length=self.frame_length)

    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """Unpadded, unnormalised log-mel fbank [frames, n_mels] of one mono waveform [1, samples]."""
        from torchaudio.compliance import kaldi

        if self.subtract_mean:
            waveform = waveform - waveform.mean()
        if waveform.shape[-1] < self.min_samples:  # kaldi.fbank cannot frame clips shorter than a window
            waveform = torch.nn.functional.pad(waveform, (0, self.min_samples - waveform.shape[-1]))
        return kaldi.fbank(waveform, **self.kaldi_kwargs())

    @property
    def min_samples(self) -> int:
        return int(self.sample_rate * self.frame_length / 1000)

    def samples_for(self, frames: int) -> int:
        """Waveform length giving exactly `frames` frames (snip_edges framing)."""
        return self.min_samples + (frames - 1) * int(self.sample_rate * self.frame_shift / 1000)

    def forward(self, waveform: torch.Tensor, augment: bool | None = None) -> torch.Tensor:
        if waveform.dim() == 3:
            return torch.stack([self.forward(w, augment) for w in waveform])
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ConfigError(f"FbankFrontEnd takes [samples], [channels, samples] or [B, channels, samples]; "
                              f"got shape {tuple(waveform.shape)}.")
        if waveform.shape[0] > 1:
            waveform = waveform.mean(dim=0, keepdim=True)
        x = self.fbank(waveform.float())  # [T, F]
        if self.target_length is not None:
            t = x.shape[0]
            if t < self.target_length:
                x = torch.nn.functional.pad(x, (0, 0, 0, self.target_length - t))
            elif t > self.target_length:
                x = x[: self.target_length]
        x = x.transpose(0, 1).unsqueeze(0)  # [1, F, T]
        if self.spec_augment is not None and (self.training if augment is None else augment):
            x = self.spec_augment(x, force=True)
        if self.mean is not None:
            x = (x - self.mean) / (2 * self.std)
        return x

    def front_end_config(self) -> dict:
        """Every parameter that changes the features; pretrained tags store this dict."""
        return {"type": "kaldi_fbank", "sample_rate": self.sample_rate, "num_mel_bins": self.num_mel_bins,
                "target_length": self.target_length, "frame_shift": self.frame_shift,
                "frame_length": self.frame_length, "window_type": "hanning", "htk_compat": True,
                "use_energy": False, "dither": 0.0, "subtract_mean": self.subtract_mean, "stats": self.stats,
                "mean": self.mean, "std": self.std, "norm": "(x - mean) / (2 * std)",
                "freqm": self.freqm, "timem": self.timem}

    @classmethod
    def from_config(cls, cfg: dict) -> "FbankFrontEnd":
        """Inverse of front_end_config (fixed Kaldi options are checked, not taken)."""
        if cfg.get("type", "kaldi_fbank") != "kaldi_fbank":
            raise ConfigError(f"Front end type '{cfg.get('type')}' is not 'kaldi_fbank'.")
        fixed = {"window_type": "hanning", "htk_compat": True, "use_energy": False, "dither": 0.0}
        bad = {k: cfg[k] for k in fixed if k in cfg and cfg[k] != fixed[k]}
        if bad:
            raise ConfigError(f"FbankFrontEnd supports only {fixed}; config has {bad}.")
        keys = ("sample_rate", "num_mel_bins", "target_length", "frame_shift", "frame_length", "mean", "std",
                "freqm", "timem", "subtract_mean")
        kw = {k: cfg[k] for k in keys if k in cfg}
        return cls(stats=cfg.get("stats", None if "mean" in cfg else "audioset"), **kw)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.front_end_config().items() if k not in ("type", "norm"))


class SpecAugment(nn.Module):
    """AST-style SpecAugment on [..., freq, time]: one frequency mask (width < freqm) and one time mask
    (width < timem), torchaudio's FrequencyMasking/TimeMasking. Active only in training mode (or force=True).

    normalised=True (for use on already-normalised batches, e.g. on the GPU) fills masks with 0 of the
    normalised scale; the front end uses normalised=False, masking the raw log-mel with 0 like AST.
    """

    def __init__(self, freqm: int = 48, timem: int = 192, normalised: bool = True):
        super().__init__()
        import torchaudio.transforms as T

        if freqm < 0 or timem < 0:
            raise ConfigError(f"freqm and timem must be >= 0, got {freqm}, {timem}.")
        self.freqm, self.timem, self.normalised = int(freqm), int(timem), normalised
        self.freq_mask = T.FrequencyMasking(freqm) if freqm else None
        self.time_mask = T.TimeMasking(timem) if timem else None

    def forward(self, x: torch.Tensor, force: bool = False) -> torch.Tensor:
        if not (self.training or force):
            return x
        if self.freq_mask is not None:
            x = self.freq_mask(x)
        if self.time_mask is not None:
            x = self.time_mask(x)
        return x


# -------------------------------------------------------------------------------------------- data sets
class AudioDataset(Dataset):
    """Labelled audio files in a FileTree (folder or zip): the base of every audio layout.

    items: (relative path, label index). Yields (front_end(waveform) or waveform, label); `training`
    turns on the front end's SpecAugment. See the module docstring for how bad files are handled.
    """

    def __init__(self, tree: FileTree, items: Sequence[tuple[str, int]], classes: Sequence[str],
                 front_end: Callable | None = None, sample_rate: int = 16000, training: bool = False,
                 check_files: bool = True, silence_seconds: float = 1.0, layout: str = "audio"):
        self.tree = tree
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.front_end = front_end
        self.sample_rate = int(getattr(front_end, "sample_rate", sample_rate))
        self.training = training
        self.silence_seconds = silence_seconds
        self.layout = layout
        self.decode_failures = 0
        self.on_unreadable = "silence"  # SkipUnreadable sets "raise": the loader skips and counts instead
        items = list(items)
        self.skipped: list[str] = []
        if check_files:
            good = []
            for rel, label in items:
                try:
                    with tree.open(rel) as f:
                        ok = audio_info(f)[2] > 0
                except (AudioDecodeError, OSError, KeyError):
                    ok = False
                (good if ok else self.skipped).append((rel, label) if ok else rel)
            if self.skipped:
                log.warning("skipped %d of %d files as unreadable or empty in %s: first few names %s",
                            len(self.skipped), len(items), tree.describe(), ", ".join(self.skipped[:3]))
            items = good
        if not items:
            raise DataError(f"No readable audio files for this split under {tree.describe()} ({layout} layout"
                            + (f"; {len(self.skipped)} were unreadable or empty" if self.skipped else "") + ").")
        self.items = items
        self.targets = [label for _, label in items]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def min_samples(self) -> int:
        """Fewest samples of a real clip: one analysis frame of the front end (1 without an fbank front end)."""
        return self.front_end.min_samples if isinstance(self.front_end, FbankFrontEnd) else 1

    def load_waveform(self, index: int) -> torch.Tensor:
        """Mono float32 [1, samples] at sample_rate; raises AudioDecodeError (also for a clip shorter than one
        analysis frame: a truncated file, which padding would otherwise score as a real clip)."""
        rel = self.items[index][0]
        where = self.tree.describe(rel)
        try:
            with self.tree.open(rel) as f:
                wav = load_audio(f, self.sample_rate, mono=True, name=where)
        except AudioDecodeError as e:
            e.file = rel
            raise
        except (OSError, KeyError) as e:
            raise AudioDecodeError(f"Cannot read audio {where}: {e}; restore or remove it.", file=rel) from e
        if wav.shape[-1] < self.min_samples:
            raise AudioDecodeError(
                f"Audio {where} holds {wav.shape[-1]} samples at {self.sample_rate} Hz, shorter than one analysis "
                f"frame ({self.min_samples}): it is truncated or not a real recording; remove or replace it.", file=rel)
        return wav

    def _silence(self) -> torch.Tensor:
        fe = self.front_end
        if isinstance(fe, FbankFrontEnd) and fe.target_length is not None:
            n = fe.samples_for(fe.target_length)
        else:
            n = int(round(self.silence_seconds * self.sample_rate))
        return torch.zeros(1, n)

    def __getitem__(self, index: int):
        label = self.items[index][1]
        try:
            wav = self.load_waveform(index)
        except AudioDecodeError as e:
            if self.on_unreadable == "raise":
                raise
            self.decode_failures += 1
            log.warning("substituting silence for an undecodable item (%d so far in this process): %s",
                        self.decode_failures, e)
            wav = self._silence()
        if self.front_end is None:
            return wav, label
        if isinstance(self.front_end, FbankFrontEnd):
            return self.front_end(wav, augment=self.training), label
        return self.front_end(wav), label


def _folder_items(tree: FileTree, classes: Sequence[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    files = [f for f in tree.files() if "/" in f and _is_audio(f)]
    found = sorted({f.split("/", 1)[0] for f in files} - {"_background_noise_"})
    if classes is None:
        classes = found
    idx = {c: i for i, c in enumerate(classes)}
    return [(f, idx[f.split("/", 1)[0]]) for f in files if f.split("/", 1)[0] in idx], list(classes)


class AudioFolderDataset(AudioDataset):
    """`<class>/<file>` audio (optionally below split folders, as for images); classes are sorted names."""

    def __init__(self, root: str | os.PathLike | FileTree, split: str | None = None,
                 classes: Sequence[str] | None = None, **kw: Any):
        tree = select_split(root if isinstance(root, FileTree) else FileTree(root), split, "audio files")
        items, classes = _folder_items(tree, classes)
        if not items:
            raise DataError(f"No audio files found under {tree.describe()}; expected <class>/<file> subfolders "
                            f"with extensions {', '.join(AUDIO_EXTENSIONS)}.")
        super().__init__(tree, items, classes, layout="folder", **kw)


FSDD_NAME = re.compile(r"(?:^|/)(\d)_([A-Za-z]+)_(\d+)\.wav$")


def _fsdd_tree(tree: FileTree) -> FileTree | None:
    """The folder holding FSDD's `{digit}_{speaker}_{index}.wav` files: `recordings/` or the tree itself."""
    for cand in ([tree.subtree("recordings")] if "recordings" in tree.top_dirs() else []) + [tree]:
        names = [f for f in cand.files() if "/" not in f]
        if names and sum(bool(FSDD_NAME.search(f)) for f in names) >= 0.9 * len(names):
            return cand
    return None


class FSDDDataset(AudioDataset):
    """Free Spoken Digit Dataset: `recordings/{digit}_{speaker}_{index}.wav`, 8 kHz, label = digit.

    Official split: index 0–4 test (300), 5–49 train (2,700); 'val' is the test set (there is no other).
    Reads the repository folder, the recordings folder, or fsdd.zip in place.
    """

    def __init__(self, root: str | os.PathLike | FileTree, split: str | None = "train", **kw: Any):
        base = root if isinstance(root, FileTree) else FileTree(root)
        tree = _fsdd_tree(base)
        if tree is None:
            raise DataError(f"{base.describe()} is not the FSDD layout: expected recordings/{{digit}}_{{speaker}}_"
                            f"{{index}}.wav files.")
        s = (split or "train").lower()
        if s not in ("train", "val", "valid", "validation", "test"):
            raise DataError(f"Unknown FSDD split '{split}'; use 'train' or 'test' ('val' = test).")
        want_test = s != "train"
        items = []
        for f in tree.files():
            m = FSDD_NAME.search(f)
            if m and "/" not in f and (int(m.group(3)) < 5) == want_test:
                items.append((f, int(m.group(1))))
        super().__init__(tree, items, [str(d) for d in range(10)], layout="fsdd", **kw)


class SpeechCommandsDataset(AudioDataset):
    """Speech Commands v2 as published: class folders plus validation_list.txt / testing_list.txt.

    train = every file in neither list; `_background_noise_` is excluded. Classes: the 35 sorted folder names.
    """

    def __init__(self, root: str | os.PathLike | FileTree, split: str | None = "train", **kw: Any):
        tree = root if isinstance(root, FileTree) else FileTree(root)
        s = (split or "train").lower()
        lists = {"val": "validation_list.txt", "valid": "validation_list.txt", "validation": "validation_list.txt",
                 "test": "testing_list.txt", "testing": "testing_list.txt"}
        if s not in lists and s not in ("train", "training"):
            raise DataError(f"Unknown Speech Commands split '{split}'; use 'train', 'val' or 'test'.")

        def read_list(name: str) -> set[str]:
            if not tree.exists(name):
                raise DataError(f"{tree.describe(name)} is missing; Speech Commands needs validation_list.txt "
                                f"and testing_list.txt next to the class folders.")
            return {ln.strip() for ln in tree.read_bytes(name).decode().splitlines() if ln.strip()}

        items, classes = _folder_items(tree)
        if s in lists:
            keep = read_list(lists[s])
            items = [it for it in items if it[0] in keep]
        else:
            held_out = read_list("validation_list.txt") | read_list("testing_list.txt")
            items = [it for it in items if it[0] not in held_out]
        super().__init__(tree, items, classes, layout="speechcommands", **kw)


def _read_csv(tree: FileTree, rel: str) -> list[dict]:
    text = tree.read_bytes(rel).decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def _fold_filter(split: str, fold: int, val_fold: int) -> bool:
    return (fold != val_fold) if split in ("train", "training") else (fold == val_fold)


class ESC50Dataset(AudioDataset):
    """ESC-50: audio/*.wav + meta/esc50.csv (filename, fold, target, category). 5-fold cross-validation:
    'train' = folds other than val_fold, 'val'/'test' = val_fold. Classes ordered by target index."""

    def __init__(self, root: str | os.PathLike | FileTree, split: str | None = "train", val_fold: int = 5, **kw: Any):
        tree = root if isinstance(root, FileTree) else FileTree(root)
        rows = _read_csv(tree, "meta/esc50.csv")
        missing = {"filename", "fold", "target", "category"} - set(rows[0] if rows else {})
        if missing:
            raise DataError(f"{tree.describe('meta/esc50.csv')} lacks columns {sorted(missing)}.")
        folds = sorted({int(r["fold"]) for r in rows})
        if int(val_fold) not in folds:
            raise ConfigError(f"val_fold={val_fold} is not one of ESC-50's folds {folds}.")
        names = {int(r["target"]): r["category"] for r in rows}
        classes = [names.get(i, str(i)) for i in range(max(names) + 1)]
        s = (split or "train").lower()
        items = [(f"audio/{r['filename']}", int(r["target"])) for r in rows
                 if _fold_filter(s, int(r["fold"]), int(val_fold))]
        super().__init__(tree, items, classes, layout="esc50", **kw)


class CsvManifestDataset(AudioDataset):
    """A CSV manifest with columns path,label and optionally split or fold. Paths are relative to the
    CSV's folder (or absolute). Labels are class names (sorted; numerically if all are integers). With a
    split column, rows whose split equals `split` are kept ('val' also matches 'validation'); with a fold
    column, 'train' keeps folds != val_fold and other splits fold == val_fold."""

    def __init__(self, csv_path: str | os.PathLike, split: str | None = None, val_fold: int | None = None,
                 classes: Sequence[str] | None = None, **kw: Any):
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise DataError(f"Manifest {csv_path} does not exist.")
        tree = FileTree(csv_path.parent)
        rows = _read_csv(tree, csv_path.name)
        if not rows or not {"path", "label"} <= set(rows[0]):
            raise DataError(f"Manifest {csv_path} must have a header with columns path,label[,split|fold] and at "
                            f"least one row; found columns {list(rows[0]) if rows else []}.")
        all_labels = sorted({r["label"] for r in rows})
        if classes is None:
            numeric = all(lbl.lstrip("-").isdigit() for lbl in all_labels)
            classes = sorted(all_labels, key=int) if numeric else all_labels
        idx = {c: i for i, c in enumerate(classes)}
        if split is not None and "split" in rows[0]:
            aliases = {"val": {"val", "valid", "validation"}, "test": {"test", "testing"}, "train": {"train", "training"}}
            want = aliases.get(split.lower(), {split.lower()})
            rows = [r for r in rows if r["split"].strip().lower() in want]
        elif split is not None and "fold" in rows[0]:
            if val_fold is None:
                raise ConfigError(f"Manifest {csv_path} has a fold column: pass val_fold= to choose the held-out fold.")
            rows = [r for r in rows if _fold_filter(split.lower(), int(r["fold"]), int(val_fold))]
        root = csv_path.parent.resolve()
        items = []
        for r in rows:
            if r["label"] not in idx:
                continue
            p = Path(r["path"])
            if p.is_absolute():
                try:
                    p = p.resolve().relative_to(root)
                except ValueError:
                    raise DataError(f"Manifest path {p} lies outside {root}; give paths relative to the CSV's "
                                    f"folder or inside it.") from None
            items.append((p.as_posix(), idx[r["label"]]))
        super().__init__(tree, items, classes, layout="csv", **kw)


# -------------------------------------------------------------------------------------------- detection
def detect_audio_layout(path: str | os.PathLike) -> tuple[str, FileTree | None]:
    """('csv'|'fsdd'|'esc50'|'speechcommands'|'folder', tree) or DataError; looks through one wrapper folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"Data path {p} does not exist. Check the path (absolute, or relative to {Path.cwd()}).")
    if p.is_file() and p.suffix.lower() == ".csv":
        return "csv", None
    tree = FileTree(p)
    for t in (tree, *([tree.subtree(tree.top_dirs()[0])] if len(tree.top_dirs()) == 1 else [])):
        if t.exists("meta/esc50.csv"):
            return "esc50", t
        if t.exists("validation_list.txt") and t.exists("testing_list.txt"):
            return "speechcommands", t
        if _fsdd_tree(t) is not None:
            return "fsdd", t
    if not any(_is_audio(f) for f in tree.files()):
        raise DataError(f"No audio files found under {tree.describe()}; expected <class>/<file> subfolders "
                        f"(or FSDD, Speech Commands, ESC-50 layouts, or a CSV manifest path,label).")
    if any(_is_audio(f) and "/" in f for f in tree.files()):
        return "folder", tree
    raise DataError(f"Unknown audio data layout at {tree.describe()}: audio files lie at the top level without "
                    f"class folders. Put them in <class>/ subfolders or describe them in a CSV manifest (path,label).")


def open_audio_dataset(path: str | os.PathLike, split: str | None = "train", front_end: Callable | None = None,
                       sample_rate: int = 16000, training: bool | None = None, val_fold: int | None = None,
                       check_files: bool = True, classes: Sequence[str] | None = None,
                       subset: int | None = None, subset_per_class: bool = True,
                       subset_seed: int | None = None) -> Dataset:
    """Open an audio classification data set, detecting its layout (CSV manifest, FSDD, Speech Commands
    v2, ESC-50, class folders; folder or zip). training defaults to split == 'train' (turns on the front
    end's SpecAugment). `subset` trims it for smoke runs (see images.subset_indices)."""
    from zoo.data.images import make_subset

    layout, tree = detect_audio_layout(path)
    kw = dict(front_end=front_end, sample_rate=sample_rate, check_files=check_files,
              training=(split or "train").lower() in ("train", "training") if training is None else training)
    if layout == "csv":
        ds: AudioDataset = CsvManifestDataset(path, split, val_fold=val_fold, classes=classes, **kw)
    elif layout == "fsdd":
        ds = FSDDDataset(tree, split, **kw)
    elif layout == "esc50":
        ds = ESC50Dataset(tree, split, val_fold=5 if val_fold is None else val_fold, **kw)
    elif layout == "speechcommands":
        ds = SpeechCommandsDataset(tree, split, **kw)
    else:
        ds = AudioFolderDataset(tree, split, classes=classes, **kw)
    log.info("opened %s audio data %s split=%s: %d files, %d classes", layout, path, split, len(ds), len(ds.classes))
    return make_subset(ds, subset, subset_per_class, subset_seed)


# ------------------------------------------------------------------------------------------------ stats
def compute_fbank_stats(data: Dataset | Iterable[torch.Tensor], front_end: FbankFrontEnd | None = None,
                        max_items: int | None = None) -> tuple[float, float]:
    """(mean, std) of the unnormalised fbank over a data set, for FbankFrontEnd(mean=, std=).

    `data` is an AudioDataset (its waveforms are used; its front end is ignored) or an iterable of
    waveforms. Only real frames count: zero padding to target_length would drag the mean toward 0 (AST's
    own script included it, so its published stats differ a little from this on short clips). Accumulates
    in float64.
    """
    fe = front_end or FbankFrontEnd()
    base = getattr(data, "dataset", data)  # a LabeledSubset
    if isinstance(base, AudioDataset):
        idx = getattr(data, "indices", range(len(base)))
        waves = (base.load_waveform(i) for i in idx)
    else:
        waves = iter(data)
    total, total_sq, count = 0.0, 0.0, 0
    for k, w in enumerate(waves):
        if max_items is not None and k >= max_items:
            break
        w = w.unsqueeze(0) if w.dim() == 1 else w.mean(0, keepdim=True)
        x = fe.fbank(w.float()).double()
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    if count == 0:
        raise DataError("compute_fbank_stats got no audio; pass a non-empty data set.")
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))
