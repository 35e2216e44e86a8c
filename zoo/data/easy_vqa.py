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

Question answering as captioning (zoo.recipes.captioning trains it, configs/easyvqa_{mdlm,ar}.yaml):
``EasyVQADataModule`` gives the captioning task's batches ``(images, {"tokens", "maskable"})`` with the question as
the prompt: ``[CLS] + question pieces + [SEP] padding`` to ``prompt_length``, then the answer's pieces and ``[SEP]``
to ``answer_length``; ``maskable`` (the answer mask) is True on the answer positions only, so the diffusion
captioner masks and predicts the answer (LLaDA-V) and the AR twin is scored on it. The vocabulary is the 30 MiniLM
pieces of easy-VQA's training questions and answers (``easyvqa_vocab.txt`` beside this file; ``python -m
zoo.data.easy_vqa --write-vocab`` rebuilds it). ``answer_questions`` decodes answers after such prompts, and
``evaluate_vqa`` reports test accuracy and decoding speed.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.image_text import CLIP_MEAN, CLIP_STD, ImageTextSet, decode_images, normalise
from zoo.data.images import _normalise_split
from zoo.data.sampling import ResumableRandomSampler, shard_kwargs
from zoo.data.sources import FileTree
from zoo.errors import ConfigError, DataError, InputShapeError, ZooError
from zoo.vl.caption_metrics import ptb_tokenize

log = logging.getLogger(__name__)

IMAGE_SIZE = 64
PIN = "easy-vqa==1.0"
DEFAULT_VOCAB = Path(__file__).with_name("easyvqa_vocab.txt")
PROMPT_LENGTH = 12   # [CLS] + the longest question (11 MiniLM pieces)
ANSWER_LENGTH = 4    # the longest answer (2 pieces: "rec ##tangle", "tea ##l") + end, one spare


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


# -- question answering as captioning ------------------------------------------------------------------------
def qa_batch(vocab, questions: Sequence[str], answers: Optional[Sequence[str]] = None,
             prompt_length: int = PROMPT_LENGTH, answer_length: int = ANSWER_LENGTH) -> dict[str, torch.Tensor]:
    """``{"tokens": [B, prompt_length + answer_length], "maskable": same}`` (see the module doc); without
    ``answers`` the answer positions are end tokens (only the prompt matters then: ``tokens[:, :prompt_length]``)."""
    B = len(questions)
    tokens = torch.full((B, prompt_length + answer_length), vocab.end_id, dtype=torch.long)
    tokens[:, 0] = vocab.bos_id
    for i, ids in enumerate(vocab.encode_batch(list(questions))):
        if len(ids) > prompt_length - 1:
            raise DataError(f"question {questions[i]!r} is {len(ids)} pieces, longer than prompt_length - 1 = "
                            f"{prompt_length - 1}; raise prompt_length.")
        tokens[i, 1:1 + len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    if answers is not None:
        for i, ids in enumerate(vocab.encode_batch(list(answers))):
            ids = ids[: answer_length - 1]
            tokens[i, prompt_length:prompt_length + len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    maskable = torch.zeros_like(tokens, dtype=torch.bool)
    maskable[:, prompt_length:] = True
    return {"tokens": tokens, "maskable": maskable}


class _Rows(Dataset):
    """Question indices; the data module's collate builds the batch (one tensor gather, no per-item work)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class EasyVQADataModule(pl.LightningDataModule):
    """easy-VQA batches for the captioning task: ``(images [B, 3, 64, 64] normalised, {"tokens", "maskable"})``.

    Args: ``vocab``: the vocabulary file (default the packaged easy-VQA one; the model must use the same);
    ``tokenizer``: the MiniLM zip or folder (default ZOO_DATA's); ``prompt_length`` / ``answer_length``: the
    text layout (module doc); ``train_subset`` / ``val_subset``: the first N images of each split (quick checks).
    Validation is easy-VQA's test split (it has no other). ``mean``/``std``: the image tower's normalisation.
    """

    def __init__(self, batch_size: int = 256, eval_batch_size: int = 1000, vocab: Optional[str] = None,
                 tokenizer: Optional[str] = None, prompt_length: int = PROMPT_LENGTH,
                 answer_length: int = ANSWER_LENGTH, train_subset: Optional[int] = None,
                 val_subset: Optional[int] = None, seed: int = 0, drop_last: bool = True, num_workers: int = 0,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        from zoo.data.captions import CaptionVocab

        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} / eval_batch_size={eval_batch_size} must be >= 1.")
        if prompt_length < 2 or answer_length < 2:
            raise ConfigError(f"data.prompt_length={prompt_length} and data.answer_length={answer_length} must be "
                              f">= 2 (the start token and a piece; an answer piece and the end token).")
        self.batch_size = batch_size
        self.vocab = CaptionVocab.load(vocab or str(DEFAULT_VOCAB), tokenizer)
        self.sets: dict[str, EasyVQASet] = {}
        self.text: dict[str, dict[str, torch.Tensor]] = {}
        self.train_sampler: Optional[ResumableRandomSampler] = None

    @property
    def tokenizer(self):
        """What the captioning task reads to check the model's vocabulary."""
        return self.vocab

    @property
    def data_config(self) -> dict:
        hp = self.hparams
        return {"input_size": (3, IMAGE_SIZE, IMAGE_SIZE), "mean": tuple(hp.mean), "std": tuple(hp.std),
                "interpolation": "bicubic", "crop_pct": 1.0}

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        wanted = (["train"] if stage in (None, "fit") else []) + ["test"]
        for split in wanted:
            if split not in self.sets:
                ds = open_easy_vqa(split, hp.train_subset if split == "train" else hp.val_subset)
                self.sets[split] = ds
                self.text[split] = qa_batch(self.vocab, ds.questions, ds.answers, hp.prompt_length, hp.answer_length)

    def _collate(self, split: str):
        ds, text, hp = self.sets[split], self.text[split], self.hparams

        def collate(rows: list[int]):
            idx = torch.as_tensor(rows, dtype=torch.long)
            images = normalise(ds.images[ds.image_index[idx]].float(), hp.mean, hp.std)
            return images, {"tokens": text["tokens"][idx], "maskable": text["maskable"][idx]}
        return collate

    def train_dataloader(self) -> DataLoader:
        if "train" not in self.sets:
            self.setup("fit")
        replicas, rank = shard_kwargs(self.trainer)
        self.train_sampler = ResumableRandomSampler(len(self.sets["train"]), seed=self.hparams.seed,
                                                    num_replicas=replicas, rank=rank)
        return DataLoader(_Rows(len(self.sets["train"])), batch_size=self.batch_size, sampler=self.train_sampler,
                          drop_last=self.hparams.drop_last, collate_fn=self._collate("train"),
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        if "test" not in self.sets:
            self.setup("validate")
        return DataLoader(_Rows(len(self.sets["test"])), batch_size=self.hparams.eval_batch_size,
                          collate_fn=self._collate("test"), num_workers=self.hparams.num_workers)


def check_questions(vocab, questions: Sequence[str], prompt_length: int = PROMPT_LENGTH) -> None:
    """Questions a prompt of ``prompt_length`` holds, checked before decoding: ConfigError for an empty one,
    InputShapeError for one of more than ``prompt_length - 1`` pieces; words the vocabulary lacks read as [UNK]
    (the model knows easy-VQA's question words only), which is logged, not refused."""
    empty = [i for i, q in enumerate(questions) if not isinstance(q, str) or not q.strip()]
    if empty:
        raise ConfigError(f"question {empty[0]} is empty ({questions[empty[0]]!r}); ask about the image, e.g. "
                          f"'what color is the shape?'")
    for q, ids in zip(questions, vocab.encode_batch(list(questions))):
        if len(ids) > prompt_length - 1:
            raise InputShapeError(f"question {q!r} is {len(ids)} pieces, but this model's prompt holds "
                                  f"{prompt_length - 1} (after the start token); ask a shorter question, e.g. "
                                  f"'what color is the shape?'")
        if vocab.unk_id in ids:
            log.warning("question %r has words outside the model's %d-piece vocabulary (easy-VQA's question "
                        "words); they read as [UNK]", q, vocab.vocab_size)


def _layout(model, prompt_length: Optional[int], answer_length: Optional[int]) -> tuple[int, int]:
    """The text layout a captioner answers in: the given lengths, else the model's own, else this module's."""
    return (prompt_length or getattr(model, "prompt_length", None) or PROMPT_LENGTH,
            answer_length or getattr(model, "answer_length", None) or ANSWER_LENGTH)


@torch.no_grad()
def answer_questions(model, images: torch.Tensor, questions: Sequence[str], prompt_length: Optional[int] = None,
                     answer_length: Optional[int] = None, return_stats: bool = False, **sampler: Any):
    """One answer per (normalised image, question) from a captioner trained on ``qa_batch`` layouts: the question
    is the prompt of ``Captioner.generate_ids``; ``sampler``: its arguments (steps, block, threshold, seed, cache).
    ``prompt_length`` / ``answer_length``: the layout (default the model's, else this module's)."""
    if len(questions) != images.shape[0]:
        raise DataError(f"answer_questions needs one question per image: {len(questions)} questions for "
                        f"{images.shape[0]} images.")
    prompt_length, answer_length = _layout(model, prompt_length, answer_length)
    check_questions(model.tokenizer, questions, prompt_length)
    prompt = qa_batch(model.tokenizer, questions, None, prompt_length, answer_length)["tokens"][:, :prompt_length]
    out = model.generate_ids(images, prompt=prompt, length=answer_length, return_stats=return_stats, **sampler)
    ids, stats = out if return_stats else (out, None)
    answers = [model.tokenizer.decode(row) for row in ids]
    return (answers, stats) if return_stats else answers


@torch.no_grad()
def evaluate_vqa(model, split: str = "test", limit: Optional[int] = None, batch_size: int = 500,
                 settings: Optional[list[dict]] = None, amp: bool = True, prompt_length: Optional[int] = None,
                 answer_length: Optional[int] = None) -> list[dict[str, Any]]:
    """easy-VQA accuracy of a captioner per sampler setting, with decoding tokens/s and ms per question
    (``limit``: the first N images and their questions; the layout as in ``answer_questions``)."""
    prompt_length, answer_length = _layout(model, prompt_length, answer_length)
    ds = open_easy_vqa(split, limit)
    device = next(model.parameters()).device
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    rows = []
    for setting in settings or [{}]:
        preds, seconds = [], 0.0
        for lo in range(0, len(ds), batch_size):
            idx = torch.arange(lo, min(lo + batch_size, len(ds)))
            x = normalise(ds.images[ds.image_index[idx]].float().to(device), mean, std)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
                preds += answer_questions(model, x, ds.questions[lo:lo + len(idx)], prompt_length, answer_length,
                                          **dict(setting))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
        rows.append({"model": model.pretrained_cfg.get("architecture", ""), "kind": model.kind, **setting,
                     "split": ds.split, "images": len(ds.images), "questions": len(ds), "batch_size": batch_size,
                     "accuracy": vqa_accuracy(preds, ds.answers),
                     "tokens_per_s": len(ds) * answer_length / max(seconds, 1e-9),
                     "ms_per_question": 1000 * seconds / len(ds), "seconds": round(seconds, 3),
                     "examples": list(zip(ds.questions[:3], preds[:3]))})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m zoo.data.easy_vqa --write-vocab`` (the vocabulary) or ``--evaluate EXPORT`` (test accuracy)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m zoo.data.easy_vqa", description=__doc__.split("\n\n")[0])
    p.add_argument("--write-vocab", action="store_true")
    p.add_argument("--out", default=str(DEFAULT_VOCAB))
    p.add_argument("--evaluate", metavar="EXPORT", help="a captioner export trained on easy-VQA")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--steps", type=int, nargs="*", default=[None], help="diffusion steps per setting")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokenizer", default=None, help="the MiniLM zip or folder that splits the questions "
                   "(default ZOO_DATA's all-MiniLM-L6-v2-fp16.zip)")
    p.add_argument("--json", default=None, help="also write the evaluation rows to this JSON file")
    a = p.parse_args(argv)
    if not (a.write_vocab or a.evaluate):
        p.error("give --write-vocab or --evaluate EXPORT")
    try:
        _run(a)
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _run(a) -> None:
    if a.write_vocab:
        from zoo.data.captions import SPECIALS, build_vocab
        from zoo.vl.text import load_tokenizer

        rows = json.loads((package_root() / "train" / "questions.json").read_text())
        pieces = build_vocab([q for q, _, _ in rows] + answer_vocabulary(), load_tokenizer(), min_count=1)
        Path(a.out).write_text("\n".join(list(SPECIALS) + pieces) + "\n", encoding="utf-8")
        print(f"{a.out}: {len(pieces)} pieces + {len(SPECIALS)} specials")
    if a.evaluate:
        from zoo.kinds.captioner import load_captioner

        model = load_captioner(a.evaluate, a.device)
        model.tokenizer.tokenizer_path = a.tokenizer
        settings = [{} if s is None else {"steps": s} for s in a.steps]
        rows = evaluate_vqa(model, "test", a.limit, settings=settings)
        for row in rows:
            print(json.dumps(row))
        if a.json:
            Path(a.json).write_text(json.dumps({"export": str(a.evaluate), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
