"""The zoo's data layer: image and audio data sets read in place (folders or zips), timm image transforms,
the AST fbank front end, Lightning data modules, a resumable sampler, and named data sets under $ZOO_DATA
(zoo.data.catalog)."""
from zoo.data.audio import (FBANK_STATS, TARGET_LENGTHS, AudioDataset, AudioFolderDataset, CsvManifestDataset,
                            ESC50Dataset, FbankFrontEnd, FSDDDataset, SpecAugment, SpeechCommandsDataset,
                            audio_info, compute_fbank_stats, load_audio, open_audio_dataset)
from zoo.data.images import (CifarDataset, IdxImageDataset, ImageFolderDataset, LabeledSubset,
                             build_image_transform, make_subset, open_image_dataset, read_idx,
                             resolve_image_data_config, subset_indices)
from zoo.data.sampling import ResumableRandomSampler
from zoo.data.sources import FileTree

__all__ = [
    "FBANK_STATS", "TARGET_LENGTHS", "AudioDataset", "AudioFolderDataset", "CsvManifestDataset", "ESC50Dataset",
    "FbankFrontEnd", "FSDDDataset", "SpecAugment", "SpeechCommandsDataset", "audio_info", "compute_fbank_stats",
    "load_audio", "open_audio_dataset", "CifarDataset", "IdxImageDataset", "ImageFolderDataset", "LabeledSubset",
    "build_image_transform", "make_subset", "open_image_dataset", "read_idx", "resolve_image_data_config",
    "subset_indices", "ResumableRandomSampler", "FileTree", "ImageDataModule", "AudioDataModule",
    "InMemoryImageDataModule",
]


def __getattr__(name):
    # the Lightning data modules import lightning (slow); load them on first use
    if name in ("ImageDataModule", "AudioDataModule", "InMemoryImageDataModule"):
        from zoo.data import modules
        return getattr(modules, name)
    raise AttributeError(f"module 'zoo.data' has no attribute {name!r}")
