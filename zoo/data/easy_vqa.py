"""easy-VQA: short-answer visual questions for the captioner's question-answering demo.

The data is the PyPI package ``easy-vqa==1.0`` (MIT, by Victor Zhou): 64x64 synthetic images of one coloured
shape, questions about its shape and colour ("what color is the triangle?", "is there a red shape?") and 13 one-word
answers (shapes, colours, yes/no). The package ships its images, so nothing is downloaded; its own split is kept:
train 4,000 images / 38,575 questions, test 1,000 / 9,673 (there is no validation split: ``val`` reads test).

``open_easy_vqa(split)`` decodes the split's images once into a uint8 tensor (question-answering is
image-conditioned decoding where each image has several questions); items are ``(image, question, answer)``:
uint8 [3, 64, 64], text, text, so torch's default collate gives ``(images [B, 3, 64, 64], questions, answers)``.
``vqa_accuracy`` scores answers as easy-VQA's classification demo does: exact match, after the caption metrics'
tokenisation (lower case, punctuation dropped) so a decoder's ``"Yes."`` counts as ``yes``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from zoo.data.image_text import ImageTextSet, decode_images
from zoo.data.images import _normalise_split
from zoo.data.sources import FileTree
from zoo.errors import ConfigError, DataError
from zoo.vl.caption_metrics import ptb_tokenize

log = logging.getLogger(__name__)

IMAGE_SIZE = 64
PIN = "easy-vqa==1.0"


def package_root() -> Path:
    """The installed easy_vqa package's ``data`` folder; DataError naming the install command when it is absent."""
    try:
        import easy_vqa
    except ImportError as e:
        raise DataError(f"easy-VQA data comes from its PyPI package, which is not installed: run `pip install {PIN}` "
                        f"(MIT, 3 MB; the images ship inside it), or `pip install speedzoo[vqa]`.") from e
    root = Path(easy_vqa.__file__).resolve().parent / "data"
    if not (root / "answers.txt").is_file():
        raise DataError(f"The easy_vqa package at {root.parent} has no data/answers.txt: it is damaged or not "
                        f"version 1.0. Reinstall it: `pip install --force-reinstall {PIN}`.")
    return root


def answer_vocabulary() -> list[str]:
    """The 13 answers, in the package's order (the class order of its classification demo)."""
    return [a.strip() for a in (package_root() / "answers.txt").read_text().splitlines() if a.strip()]


@dataclass
class EasyVQASet(Dataset):
    """One split: decoded images and every question about them, with its answer."""

    images: torch.Tensor          # uint8 [n_images, 3, 64, 64]
    image_ids: list[int]          # the package's image id of each row of ``images``
    questions: list[str]
    answers: list[str]
    image_index: torch.Tensor     # int64 [n_questions]: the row of ``images`` each question is about
    split: str
    transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str]:
        image = self.images[self.image_index[i]]
        return (self.transform(image) if self.transform else image), self.questions[i], self.answers[i]

    @property
    def vocabulary(self) -> list[str]:
        return answer_vocabulary()

    def references(self) -> dict[int, list[str]]:
        """``{question index: [answer]}``, the references layout of zoo.vl.caption_metrics."""
        return {i: [a] for i, a in enumerate(self.answers)}


def open_easy_vqa(split: str = "train", limit: Optional[int] = None,
                  transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> EasyVQASet:
    """easy-VQA's ``train`` or ``test`` split; ``limit`` keeps the first ``limit`` images (by id) and their
    questions, for quick runs. ``transform`` maps each uint8 [3, 64, 64] image (e.g. to normalised floats)."""
    split = _normalise_split(split)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive number of images, got {limit!r}; leave it out for the whole split.")
    root = package_root() / split
    try:
        rows = json.loads((root / "questions.json").read_text())
        questions = [(str(q), str(a), int(i)) for q, a, i in rows]
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"Cannot read easy-VQA's {root / 'questions.json'} ({e}); the package is damaged: reinstall "
                        f"it with `pip install --force-reinstall {PIN}`.") from e
    ids = sorted({i for _, _, i in questions})
    if limit is not None:
        ids = ids[:limit]
    tree = FileTree(root / "images")
    missing = [i for i in ids if not tree.exists(f"{i}.png")]
    if missing:
        raise DataError(f"easy-VQA {split}: {len(missing)} image(s) named by its questions are missing (e.g. "
                        f"{missing[0]}.png in {tree.describe()}); reinstall the package: `pip install "
                        f"--force-reinstall {PIN}`.")
    # one decoder for image sets: unreadable files are dropped (and logged) there, their questions here
    ds = ImageTextSet(tree, [f"{i}.png" for i in ids], [[f"{i}.png"] for i in ids], name=f"easy-VQA {split}")
    images = decode_images(ds, IMAGE_SIZE)
    row = {int(Path(rel).stem): r for r, rel in enumerate(ds.images)}
    kept = [(q, a, row[i]) for q, a, i in questions if i in row]
    log.info("easy-VQA %s: %d images, %d questions", split, len(row), len(kept))
    return EasyVQASet(images=images, image_ids=[int(Path(rel).stem) for rel in ds.images],
                      questions=[q for q, _, _ in kept], answers=[a for _, a, _ in kept],
                      image_index=torch.tensor([r for _, _, r in kept], dtype=torch.int64), split=split,
                      transform=transform)


def normalise_answer(text: str) -> str:
    """An answer as it is compared: the caption metrics' tokenisation (lower case, PTB punctuation dropped)."""
    return ptb_tokenize(text)


def vqa_accuracy(predicted: Sequence[str], answers: Sequence[str]) -> float:
    """Share of predictions equal to their answer after ``normalise_answer`` (easy-VQA has one answer a question)."""
    if isinstance(predicted, str) or isinstance(answers, str):
        raise DataError("vqa_accuracy takes lists of answers (one string per question), not a single string; wrap "
                        "it in a list.")
    if len(predicted) != len(answers):
        raise DataError(f"vqa_accuracy needs one prediction per question: got {len(predicted)} predictions for "
                        f"{len(answers)} answers.")
    if not answers:
        raise DataError("vqa_accuracy got no questions to score; pass at least one prediction and answer.")
    hits = sum(normalise_answer(p) == normalise_answer(a) for p, a in zip(predicted, answers))
    return hits / len(answers)
