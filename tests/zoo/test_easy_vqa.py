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


# ---------------------------------------------------------------- question answering as captioning

@pytest.fixture(scope="module")
def vocab():
    """The packaged easy-VQA vocabulary on the MiniLM tokenizer of ZOO_DATA (the shared data, see conftest)."""
    from zoo.data.captions import CaptionVocab

    v = CaptionVocab.load(str(ev.DEFAULT_VOCAB))
    try:
        v.table()
    except DataError as e:
        pytest.skip(f"the MiniLM tokenizer is not available: {e}")
    return v


def test_packaged_vocabulary_covers_every_question_and_answer(vocab):
    assert vocab.vocab_size == 34
    texts = [q for split in ("train", "test") for q, _, _ in _package_questions(split)] + ev.answer_vocabulary()
    ids = vocab.encode_batch(texts)
    assert all(vocab.unk_id not in row for row in ids)
    assert max(len(row) for row in ids) == ev.PROMPT_LENGTH - 1        # the longest question fills the prompt
    assert [vocab.decode(vocab.encode(a)) for a in ev.answer_vocabulary()] == ev.answer_vocabulary()


def test_qa_batch_layout_masks_only_the_answer(vocab):
    b = ev.qa_batch(vocab, ["what color is the shape?", "is there a circle?"], ["teal", "yes"], 12, 4)
    tokens, maskable = b["tokens"], b["maskable"]
    assert tokens.shape == maskable.shape == (2, 16)
    assert (tokens[:, 0] == vocab.bos_id).all()
    assert vocab.decode(tokens[0, 1:12]) == "what color is the shape?"
    assert [vocab.decode(r[12:]) for r in tokens] == ["teal", "yes"]
    assert tokens[0, 12:].tolist() == vocab.encode("teal") + [vocab.end_id] * 2     # "tea ##l" + end padding
    assert tokens[1, 6:12].tolist() == [vocab.end_id] * 6                          # the prompt's padding
    assert not maskable[:, :12].any() and maskable[:, 12:].all()
    with pytest.raises(DataError, match="raise prompt_length"):
        ev.qa_batch(vocab, ["what color is the shape in the image?"], ["red"], 4, 4)


def test_data_module_gives_the_captioning_tasks_batches(vocab):
    from zoo.data.image_text import CLIP_MEAN

    dm = ev.EasyVQADataModule(batch_size=8, train_subset=3, val_subset=2, tokenizer=vocab.tokenizer_path)
    dm.setup("fit")
    images, text = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert text["tokens"].shape == text["maskable"].shape == (8, 16)
    assert dm.tokenizer.pieces == vocab.pieces and dm.data_config["input_size"] == (3, 64, 64)
    val_images, val_text = next(iter(dm.val_dataloader()))
    ds = dm.sets["test"]
    # the first validation row: test question 0 on its own image, normalised with the tower's mean/std
    expected = (ds.images[ds.image_index[0]].float() - torch.tensor(CLIP_MEAN).view(3, 1, 1) * 255)
    assert torch.allclose(val_images[0] * (torch.tensor(ev.CLIP_STD).view(3, 1, 1) * 255), expected, atol=1e-3)
    assert vocab.decode(val_text["tokens"][0, 12:]) == ds.answers[0]
    with pytest.raises(ConfigError, match="answer_length"):
        ev.EasyVQADataModule(answer_length=1)


@pytest.mark.parametrize("name", ["caption_mdlm_tiny_test", "caption_ar_tiny_test"])
def test_answer_questions_on_a_tiny_captioner(vocab, name):
    from heads.lm.diffusion import LogLinearSchedule
    from zoo import create_model
    from zoo.recipes.captioning import answer_masked_loss, answer_next_token_loss

    torch.manual_seed(0)
    model = create_model(name, vocab=vocab, img_size=64, answer_length=4)
    ds = ev.open_easy_vqa("test", limit=2)
    x = ev.normalise(ds.images[ds.image_index[:4]].float(), ev.CLIP_MEAN, ev.CLIP_STD)
    batch = ev.qa_batch(vocab, ds.questions[:4], ds.answers[:4])
    # the captioning task's losses run on the layout (finite, and they reach the tower)
    if model.causal:
        loss = answer_next_token_loss(model, x, batch["tokens"], batch["maskable"])
    else:
        loss = answer_masked_loss(model, x, batch["tokens"], batch["maskable"], LogLinearSchedule(1e-3))
    loss.backward()
    tower_grads = [p.grad for p in model.visual.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and tower_grads and sum(float(g.abs().sum()) for g in tower_grads) > 0
    answers = ev.answer_questions(model, x, ds.questions[:4], steps=None if model.causal else 2)
    assert len(answers) == 4 and all(set(a.split()) <= set(vocab.pieces) for a in answers)
    # the cached image prefix and text cache decode what the uncached reference decodes
    assert ev.answer_questions(model, x, ds.questions[:4], cache=False) == ev.answer_questions(model, x, ds.questions[:4])
    with pytest.raises(DataError, match="one question per image"):
        ev.answer_questions(model, x, ds.questions[:3])
    if not model.causal:
        with pytest.raises(ConfigError, match="steps"):
            ev.answer_questions(model, x, ds.questions[:4], steps=0)
    rows = ev.evaluate_vqa(model, limit=1, settings=[{}])
    assert rows[0]["questions"] == len(ev.open_easy_vqa("test", limit=1)) and 0 <= rows[0]["accuracy"] <= 1


def test_fit_then_evaluate_writes_the_accuracy_json(vocab, tmp_path):
    """configs/easyvqa_mdlm.yaml for 2 steps, then ``--evaluate EXPORT --json`` (what the H200 script reports)."""
    from zoo.cli import main

    run = tmp_path / "run"
    assert main(["fit", "--config", "configs/easyvqa_mdlm.yaml", "--data.init_args.train_subset", "8",
                 "--data.init_args.val_subset", "2", "--data.init_args.batch_size", "8",
                 "--data.init_args.eval_batch_size", "8", "--trainer.max_steps", "2", "--trainer.max_epochs", "1",
                 "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(run), "--progress", "none"]) == 0
    out = tmp_path / "easyvqa.json"
    assert ev.main(["--evaluate", str(run / "export.safetensors"), "--limit", "2", "--steps", "4", "2",
                    "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    n = len(ev.open_easy_vqa("test", limit=2))
    assert [r["steps"] for r in rows] == [4, 2] and all(r["questions"] == n and 0 <= r["accuracy"] <= 1 for r in rows)
    assert ev.main(["--evaluate", str(tmp_path / "missing.safetensors"), "--device", "cpu"]) == 2
