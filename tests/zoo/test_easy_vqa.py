"""easy-VQA data (zoo.data.easy_vqa) on a slice of the real package data (it ships its images), the accuracy
helper, and bad input."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zoo.errors import ConfigError, DataError

from zoo.data import easy_vqa as ev   # needs the easy-vqa package, a test dependency (pyproject's dev extra)


def _package_questions(split):
    return json.loads((ev.package_root() / split / "questions.json").read_text())


def test_vocabulary_is_the_packages_13_answers():
    vocab = ev.answer_vocabulary()
    assert len(vocab) == 13 and len(set(vocab)) == 13
    assert {"yes", "no", "circle", "rectangle", "triangle", "red", "teal"} <= set(vocab)


def test_a_slice_of_the_train_split_pairs_images_questions_and_answers():
    from PIL import Image

    ds = ev.open_easy_vqa("train", limit=6)
    rows = [r for r in _package_questions("train") if r[2] < 6]      # the package's questions about images 0..5
    assert ds.images.shape == (6, 3, 64, 64) and ds.images.dtype == torch.uint8
    assert ds.image_ids == list(range(6))
    assert len(ds) == len(rows)
    assert ds.questions == [q for q, _, _ in rows] and ds.answers == [a for _, a, _ in rows]
    assert set(ds.answers) <= set(ds.vocabulary)
    # each question's image is the package's PNG of the id the question names
    for k in (0, len(ds) // 2, len(ds) - 1):
        image, question, answer = ds[k]
        png = ev.package_root() / "train" / "images" / f"{rows[k][2]}.png"
        expected = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(image, expected) and (question, answer) == tuple(rows[k][:2])


def test_colour_answers_agree_with_the_pixels():
    # a shape answered "red" / "blue" is drawn in pure red / blue: the commonest pixel after the background
    ds = ev.open_easy_vqa("train", limit=12)
    pure = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    checked = 0
    for q, a, r in zip(ds.questions, ds.answers, ds.image_index.tolist()):
        if q == "what color is the shape?" and a in pure:
            pixels, counts = ds.images[r].reshape(3, -1).t().unique(dim=0, return_counts=True)
            second = pixels[counts.argsort(descending=True)[1]]
            assert tuple(second.tolist()) == pure[a]
            checked += 1
    assert checked >= 2


def test_test_split_val_alias_transform_and_collate():
    ds = ev.open_easy_vqa("val", limit=4, transform=lambda x: x.float() / 255)
    assert ds.split == "test"
    assert ds.questions[0] == _package_questions("test")[0][0]
    images, questions, answers = next(iter(DataLoader(ds, batch_size=5)))
    assert images.shape == (5, 3, 64, 64) and images.dtype == torch.float32 and float(images.max()) <= 1.0
    assert len(questions) == len(answers) == 5 and all(isinstance(q, str) for q in questions)
    assert ds.references()[0] == [ds.answers[0]]


def test_vqa_accuracy_exact_match_after_normalisation():
    # "Yes." -> yes (hit), " RED " -> red (hit), "no" vs yes (miss), "a circle" vs circle (miss: one word more)
    assert ev.vqa_accuracy(["Yes.", " RED ", "no", "a circle"], ["yes", "red", "yes", "circle"]) == 2 / 4
    assert ev.vqa_accuracy(["circle"], ["circle"]) == 1.0
    assert ev.vqa_accuracy(["blue"], ["teal"]) == 0.0


def test_vqa_accuracy_bad_input():
    with pytest.raises(DataError, match="one prediction per question"):
        ev.vqa_accuracy(["yes"], ["yes", "no"])
    with pytest.raises(DataError, match="no questions"):
        ev.vqa_accuracy([], [])
    with pytest.raises(DataError, match="wrap it in a list"):
        ev.vqa_accuracy("yes", "yes")
    with pytest.raises(DataError, match="must be a string"):
        ev.vqa_accuracy([None], ["yes"])


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)     # import easy_vqa now raises ImportError
    with pytest.raises(DataError, match=r"pip install easy-vqa==1\.0"):
        ev.open_easy_vqa("train", limit=1)
    with pytest.raises(DataError, match=r"pip install easy-vqa"):
        ev.answer_vocabulary()


def test_bad_split_and_limit():
    with pytest.raises(DataError, match="Unknown split"):
        ev.open_easy_vqa("dev2")
    with pytest.raises(ConfigError, match="positive number of images"):
        ev.open_easy_vqa("train", limit=0)


def _fake_package(tmp_path, monkeypatch, images: dict[int, bytes], questions):
    """A package-like data folder: answers.txt, train/questions.json and train/images/<id>.png."""
    root = tmp_path / "data"
    (root / "train" / "images").mkdir(parents=True)
    shutil.copy(ev.package_root() / "answers.txt", root / "answers.txt")
    (root / "train" / "questions.json").write_text(json.dumps(questions))
    for i, data in images.items():
        (root / "train" / "images" / f"{i}.png").write_bytes(data)
    monkeypatch.setattr(ev, "package_root", lambda: root)
    return root


def test_unreadable_images_drop_their_questions(tmp_path, monkeypatch):
    good = (ev.package_root() / "train" / "images" / "0.png").read_bytes()
    _fake_package(tmp_path, monkeypatch, {0: good, 1: b"not a png"},
                  [["what color is the shape?", "blue", 0], ["is there a circle?", "no", 1],
                   ["what is the blue shape?", "rectangle", 0]])
    ds = ev.open_easy_vqa("train")
    assert ds.image_ids == [0] and ds.images.shape == (1, 3, 64, 64)
    assert ds.answers == ["blue", "rectangle"] and ds.image_index.tolist() == [0, 0]


def test_damaged_package_data_says_reinstall(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, {}, [["what color is the shape?", "blue", 7]])
    with pytest.raises(DataError, match="missing.*7.png.*force-reinstall"):
        ev.open_easy_vqa("train")
    (tmp_path / "data" / "train" / "questions.json").write_text("{not json")
    with pytest.raises(DataError, match="force-reinstall"):
        ev.open_easy_vqa("train")
