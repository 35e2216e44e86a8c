"""Question answering with a captioner trained on easy-VQA (issue #21): a tiny CPU fit's export is published (its
easy-VQA test accuracy into a temporary manifest), `zoo eval` reproduces the figure, `zoo caption --question` answers,
bad input fails with a zoo error, and `zoo demo`'s question section runs with and without a tag; the bundled images
are the package's, under its license."""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

import torch

import zoo
from zoo.data import easy_vqa as ev   # needs the easy-vqa package, a test dependency (pyproject's dev extra)
from zoo.errors import ConfigError, InputShapeError

REPO = Path(__file__).resolve().parents[2]
NAME = "caption_mdlm_tiny_test"
TAG = "unittest"
LIMIT = 3                                   # test images measured (27 questions)
VQA = REPO / "zoo" / "vl" / "static" / "vqa"


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model on one CPU thread: 13 s for the fit below, against 30 s on two idle cores and minutes on two
    shared ones (intra-op threads waiting on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vqa_export(tmp_path_factory, one_thread):
    """60 CPU steps of configs/easyvqa_mdlm.yaml on the tiny captioner: enough to answer some yes/no questions
    right, so the published accuracy is not a trivial 0."""
    from tests.conftest import SHARED_DATA
    from zoo.cli import main

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing (the MiniLM tokenizer)")
    run = tmp_path_factory.mktemp("vqa_fit")
    args = {"vocab": str(REPO / "zoo" / "data" / "easyvqa_vocab.txt"), "img_size": 64, "answer_length": 4}
    rc = main(["fit", "--config", str(REPO / "configs" / "easyvqa_mdlm.yaml"), "--model.init_args.model", NAME,
               "--model.init_args.model_args", json.dumps(args), "--model.init_args.tower_from", "null",
               "--model.init_args.lr", "3e-3", "--model.init_args.warmup_epochs", "0",
               "--data.init_args.train_subset", "40", "--data.init_args.val_subset", "2",
               "--data.init_args.batch_size", "32", "--data.init_args.eval_batch_size", "64",
               "--trainer.max_steps", "60", "--trainer.max_epochs", "100", "--trainer.accelerator", "cpu",
               "--trainer.default_root_dir", str(run), "--progress", "none"])
    assert rc == 0
    return run / "export.safetensors"


@pytest.fixture(scope="module")
def published(vqa_export, tmp_path_factory):
    """`zoo publish EXPORT --tag unittest --quant int4 --limit 3` into a temporary weights folder, the tag then
    registered as the real manifest's are: (record, shipped file)."""
    from zoo.cli import main
    from zoo.registry import get_entry
    from zoo.weights import manifest

    folder = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zoo.weights, "weights_dir", lambda: folder)
        assert main(["publish", str(vqa_export), "--tag", TAG, "--quant", "int4", "--limit", str(LIMIT)]) == 0
        rec = manifest.read_manifest(folder)[NAME][TAG]
        tags = dict(manifest.tags_from_manifest(folder))
        mp.setitem(get_entry(NAME).tags, TAG, tags[NAME])
        yield rec, folder / rec["file"]


def _figure(rec) -> tuple[str, float]:
    (dataset, figures), = rec["metrics"].items()
    return dataset, figures["accuracy"]


def test_publish_records_easy_vqa_accuracy_as_easy_vqa_evaluate_measures_it(published, tmp_path):
    from zoo import hub
    from zoo.data.captions import CaptionVocab

    rec, shipped = published
    dataset, accuracy = _figure(rec)
    n = len(ev.open_easy_vqa("test", limit=LIMIT))
    assert dataset.startswith(f"easy-vqa (test, first {LIMIT} images, {n} questions, one step per answer position")
    assert rec["kind"] == "captioner" and rec["caption_kind"] == "diffusion-captioner"
    assert rec["weights_format"].startswith("int4") and rec["sha256"] == hub.sha256_of(shipped)
    assert rec["arch_overrides"]["prompt_length"] == ev.PROMPT_LENGTH and rec["arch_overrides"]["img_size"] == 64
    assert rec["arch_overrides"]["vocab"] == CaptionVocab.load(str(ev.DEFAULT_VOCAB)).pieces  # not Flickr8k's
    assert rec["preprocess"]["input_size"] == [3, 64, 64]
    assert rec["eval"] == {"data": "easy-vqa", "split": "test", "limit": LIMIT, "images": LIMIT, "questions": n,
                           "batch_size": 100, "device": "cpu"}
    assert "MIT" in rec["notes"]
    assert f"reproduce: zoo eval {NAME}.{TAG} --data easy-vqa --device cpu --limit {LIMIT}" in rec["notes"]
    assert 0 < accuracy < 100  # the fit answers some yes/no questions, not all
    # one implementation: python -m zoo.data.easy_vqa --evaluate on the shipped file measures the same figure
    out = tmp_path / "rows.json"
    assert ev.main(["--evaluate", str(shipped), "--limit", str(LIMIT), "--device", "cpu", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["questions"] == n and round(100 * row["accuracy"], 2) == accuracy


def test_zoo_eval_reproduces_the_published_figure(published, vqa_export, tmp_path, capsys):
    from zoo.cli import main

    rec, _ = published
    _, accuracy = _figure(rec)
    out = tmp_path / "eval.json"
    # the record's reproduce command (easy-vqa is the default data of a captioner trained on it)
    assert main(["eval", f"{NAME}.{TAG}", "--device", "cpu", "--limit", str(LIMIT), "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["name"] == f"{NAME}.{TAG}" and row["data"] == "easy-vqa" and row["split"] == "test"
    assert row["questions"] == rec["eval"]["questions"] and row["images"] == LIMIT
    assert round(100 * row["accuracy"], 2) == accuracy
    assert f"accuracy {accuracy:.2f}%" in capsys.readouterr().out
    # an export evaluates too, named by its path
    assert main(["eval", str(vqa_export), "--data", "easy-vqa", "--device", "cpu", "--limit", "1"]) == 0
    assert "on easy-VQA test" in capsys.readouterr().out


def test_zoo_eval_refuses_the_wrong_data(published, capsys):
    from zoo.cli import main

    assert main(["eval", f"{NAME}.{TAG}", "--data", "flickr8k", "--device", "cpu"]) == 2
    assert "scored by accuracy on --data easy-vqa" in capsys.readouterr().err
    assert main(["eval", "caption_ar_tiny_test", "--data", "easy-vqa", "--device", "cpu"]) == 2
    assert "trained without question prompts" in capsys.readouterr().err


def test_zoo_caption_answers_the_question(published, vqa_export, capsys):
    from zoo.cli import main
    from zoo.data.image_text import normalise
    from zoo.kinds.captioner import load_model, read_image, vqa_samples

    files = [str(VQA / "test_0.png"), str(VQA / "test_6.png")]
    question = "what color is the shape?"
    assert main(["caption", *files, "--question", question, "--model", f"{NAME}.{TAG}"]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.splitlines()]
    # what the library decodes for the same images and question
    model = load_model(f"{NAME}.{TAG}")
    x = normalise(torch.stack([read_image(f, (64, 64)) for f in files]).float(), model.pretrained_cfg["mean"],
                  model.pretrained_cfg["std"])
    expect = ev.answer_questions(model, x, [question] * 2)
    assert rows == [[f, question, a] for f, a in zip(files, expect)]
    # --example alone: the bundled images with their own questions; an export by --checkpoint as well
    assert main(["caption", "--example", "--checkpoint", str(vqa_export), "--steps", "2"]) == 0
    rows = [ln.split("\t") for ln in capsys.readouterr().out.splitlines()]
    assert [r[:2] for r in rows] == [[f, q] for f, q, _ in vqa_samples()] and all(len(r) == 3 for r in rows)


def test_question_errors(published, monkeypatch, capsys):
    from zoo.cli import main
    from zoo.kinds.captioner import DEFAULT_VQA_CAPTIONER, caption_files, load_model

    image = str(VQA / "test_0.png")
    cases = (
        # a captioner not trained with question prompts
        ([image, "--model", "caption_ar_tiny_test", "--question", "what color is the shape?"],
         "trained without question prompts"),
        ([image, "--model", f"{NAME}.{TAG}", "--question", "  "], "--question is empty"),
        ([image, "--model", f"{NAME}.{TAG}"], "give --question"),                 # a VQA model needs a question
        ([image, "--model", f"{NAME}.{TAG}", "--question", "what is the colour of the shape in the top left corner "
          "of this picture?"], "prompt holds 11"),
    )
    for argv, msg in cases:
        assert main(["caption", *argv]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    # --question without a model names the easy-VQA default, which is not installed here
    monkeypatch.setattr(zoo, "list_pretrained", lambda pattern="*": [])
    assert main(["caption", image, "--question", "what color is the shape?"]) == 2
    err = capsys.readouterr().err
    assert "trained on easy-VQA" in err and f"{DEFAULT_VQA_CAPTIONER} is not installed" in err
    # the library refuses the same way
    with pytest.raises(ConfigError, match="without question prompts"):
        caption_files(load_model("caption_ar_tiny_test"), [image], questions=["is there a circle?"])
    model = load_model(f"{NAME}.{TAG}")
    with pytest.raises(ConfigError, match="one question per image"):
        caption_files(model, [image], questions=["is there a circle?"] * 2)
    with pytest.raises(ConfigError, match="empty"):
        caption_files(model, [image], questions=[""])
    with pytest.raises(InputShapeError, match="prompt holds"):
        caption_files(model, [image], questions=["is there " * 6 + "a circle?"])


def test_demo_answers_the_bundled_questions_with_a_tag(published, monkeypatch, capsys):
    from zoo.kinds.captioner import demo, vqa_samples

    monkeypatch.setattr(zoo, "list_pretrained", lambda pattern="*": [f"{NAME}.{TAG}"])
    assert demo() == 1
    out = capsys.readouterr().out
    assert f"{NAME}.{TAG} (diffusion-captioner, 4 bundled easy-VQA test images and questions" in out
    lines = [ln.strip() for ln in out.splitlines() if "(truth:" in ln]
    assert [ln.split("  ")[0] for ln in lines] == [Path(f).name for f, _, _ in vqa_samples()]
    for ln, (_, q, truth) in zip(lines, vqa_samples()):
        assert f"  {q} -> " in ln and ln.endswith(f"(truth: {truth})")
    assert "no shipped weights yet (zoo publish" not in out


def test_demo_says_so_without_a_tag(monkeypatch, capsys):
    from zoo.kinds.captioner import demo

    monkeypatch.setattr(zoo, "list_pretrained", lambda pattern="*": [])   # no captioner tag at all
    assert demo() == 0
    vqa_lines = [ln for ln in capsys.readouterr().out.splitlines() if "easy-VQA" in ln]
    assert vqa_lines == ["easy-VQA captioners: no shipped weights yet (zoo publish EXPORT --tag easyvqa); "
                         "skipping questions"]


def test_bundled_images_are_the_packages_test_images_under_its_license():
    rows = json.loads((VQA / "questions.json").read_text())
    package = ev.package_root() / "test"
    test_questions = [tuple(r) for r in json.loads((package / "questions.json").read_text())]
    assert len(rows) == 4
    for file, r in rows.items():
        image_id = int(file.removeprefix("test_").removesuffix(".png"))
        assert (VQA / file).read_bytes() == (package / "images" / f"{image_id}.png").read_bytes()
        assert (r["question"], r["answer"], image_id) in test_questions
    readme = [ln.strip() for ln in (VQA / "README.md").read_text().splitlines()]
    license_text = importlib.metadata.distribution("easy-vqa").read_text("LICENSE")
    assert all(ln.strip() in readme for ln in license_text.splitlines())
    assert '"static/vqa/*"' in (REPO / "pyproject.toml").read_text()      # shipped as zoo.vl package data
