"""The captioners (zoo.kinds.captioner): answer-only masking, the cached image prefix against recomputation, the
registered parts, a 2-step fit and its export, ``zoo caption`` and its bad-input errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zoo
from heads.lm.diffusion import LogLinearSchedule, mask_tokens, mdlm_loss
from zoo.errors import ConfigError, DataError, InputShapeError, WeightLoadError
from zoo.recipes.captioning import answer_masked_loss, answer_next_token_loss, complementary_masks

SAMPLES = sorted((Path(zoo.__file__).parent / "vl" / "static" / "samples").glob("*.jpg"))


def _tiny(kind: str = "mdlm", **kw):
    torch.manual_seed(0)
    return zoo.create_model(f"caption_{kind}_tiny_test", **kw).eval()


def _batch(model, B: int = 2, answer: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, 128, 128, generator=g)
    tokens = torch.randint(4, model.vocab_size, (B, 1 + answer), generator=g)
    tokens[:, 0] = model.tokenizer.bos_id
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, 0] = False
    return images, tokens, maskable


def test_answer_only_masking():
    model = _tiny()
    images, tokens, maskable = _batch(model, B=4)
    sched, mask_id = LogLinearSchedule(), model.tokenizer.mask_id
    t = torch.full((4,), 0.999)
    zt = mask_tokens(tokens, t, mask_id, sched, maskable, torch.Generator().manual_seed(1))
    assert not (zt[:, 0] == mask_id).any() and (zt[:, 1:] == mask_id).float().mean() > 0.9
    pair, t2 = complementary_masks(tokens, torch.full((4,), 0.3), mask_id, sched, maskable,
                                   torch.Generator().manual_seed(2))
    a, b = pair[:4] == mask_id, pair[4:] == mask_id
    assert not (a & b).any() and torch.equal(a | b, maskable)  # every answer token trained exactly once
    assert torch.allclose(sched.mask_rate(t2[4:] if len(t2) > 4 else t2), torch.full((4,), 0.7), atol=1e-3)
    # the loss reads answer positions only: changing the logits at the prompt changes nothing
    with torch.no_grad():
        logits = model(images, zt)
        base = mdlm_loss(logits, tokens, zt, t, mask_id, sched, maskable)
        logits[:, 0] += 100 * torch.randn_like(logits[:, 0])
        assert torch.equal(base, mdlm_loss(logits, tokens, zt, t, mask_id, sched, maskable))
    loss = answer_masked_loss(model.train(), images, tokens, maskable, sched, complementary=True)
    assert loss.isfinite() and loss > 0
    nats, count = answer_next_token_loss(_tiny("ar"), images, tokens, maskable, reduction="sum")
    assert count == maskable[:, 1:].sum()  # the AR twin predicts the answer, never the prompt


def test_cached_prefix_equals_recomputation():
    images, _, _ = _batch(_tiny())
    for kind, settings in (("mdlm", [dict(steps=4, block=4), dict(threshold=0.3, block=4, steps=2),
                                     dict(steps=8, temperature=1.0, seed=3)]),
                           ("ar", [dict(temperature=1.0, seed=5)])):
        model = _tiny(kind)
        for s in settings:
            cached = model.generate_ids(images, length=8, **s)
            ref = model.generate_ids(images, length=8, cache=False, recompute_prefix=True, **s)
            assert torch.equal(cached, ref), (kind, s)
        question = torch.tensor([[1, 20, 30], [1, 40, 50]])  # a prompt after the image (short answers)
        cached = model.generate_ids(images, length=4, prompt=question)
        assert cached.shape == (2, 4) and torch.equal(
            cached, model.generate_ids(images, length=4, prompt=question, cache=False, recompute_prefix=True))
    # the AR twin's two passes (image prefix into the cache, then the text) are one causal pass over both
    ar = _tiny("ar")
    _, tokens, _ = _batch(ar)
    with torch.no_grad():
        two = ar(images, tokens)
        emb = torch.cat([ar.image_tokens(images), ar.decoder.embed(tokens)], 1)
        one = ar.head(ar.decoder.forward_features(None, embeds=emb))[:, ar.num_image_tokens:]
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4)


def test_builds_from_registered_parts():
    assert {"caption_mdlm_vit_tiny_d6_128", "caption_ar_vit_tiny_d6_128"} <= set(zoo.list_models(kind="captioner"))
    mdlm, ar = zoo.create_model("caption_mdlm_vit_tiny_d6_128"), zoo.create_model("caption_ar_vit_tiny_d6_128")
    tower = zoo.create_model("vit_tiny_patch16_224", num_classes=0, img_size=128, depth=6)
    assert type(mdlm.visual) is type(tower) and len(mdlm.visual.backbone.blocks) == 6
    assert mdlm.visual.state_dict().keys() == tower.state_dict().keys()
    assert mdlm.num_image_tokens == 64 and mdlm.decoder.layout == ["attn"] * 3 and mdlm.vocab_size == 2780
    assert not mdlm.causal and ar.causal and mdlm.kind == "diffusion-captioner" and ar.kind == "causal-captioner"
    n = sum(p.numel() for p in mdlm.parameters())
    assert n == sum(p.numel() for p in ar.parameters()) and n < 7.5e6  # int8 weights under the 8 MB budget
    assert zoo.create_model("caption_mdlm_tiny_test", pool=2).num_image_tokens == 4


def test_tower_from_clip_export(tmp_path):
    from zoo.hub import save_state_dict

    clip = zoo.create_model("clip_vit_tiny_d6_minilm_128", text_tower="cached")
    path = save_state_dict({k: v.contiguous() for k, v in clip.state_dict().items()}, tmp_path / "clip.safetensors", {})
    cap = zoo.create_model("caption_mdlm_vit_tiny_d6_128", tower_from=str(path))
    for k, v in cap.visual.state_dict().items():
        assert torch.equal(v, clip.state_dict()[f"visual.{k}"]), k
    with pytest.raises(WeightLoadError, match="does not hold this image tower"):
        zoo.create_model("caption_mdlm_tiny_test", tower_from=str(path))


def test_vocab_roundtrip(shared_data):
    from zoo.data.captions import CaptionVocab

    vocab = CaptionVocab.load()
    text = "A black dog is running through the grass ."
    ids = vocab.encode(text)
    assert vocab.unk_id not in ids and vocab.decode(ids + [vocab.end_id, 7]) == "a black dog is running through the grass."
    batch = vocab.answer_batch([text, "zzyzx qqq"], answer_length=6)
    assert batch["tokens"].shape == (2, 7) and batch["tokens"][0, 0] == vocab.bos_id
    assert batch["tokens"][0, -1] == vocab.end_id and not batch["maskable"][:, 0].any() and batch["maskable"][:, 1:].all()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A 2-step fit of the tiny diffusion captioner on 16 real Flickr8k images, exported."""
    from zoo.cli import main

    if not Path(__file__).resolve().parents[2].parent.joinpath("shared", "data").is_dir():
        pytest.skip("real data folder is missing")
    run = tmp_path_factory.mktemp("caption_fit")
    rc = main(["fit", "--config", "configs/flickr8k_caption_mdlm.yaml", "--model.init_args.model", "caption_mdlm_tiny_test",
               "--model.init_args.complementary", "true", "--model.init_args.tower_from", "null",
               "--model.init_args.freeze_tower", "false", "--data.init_args.train_subset", "16",
               "--data.init_args.val_subset", "8", "--data.init_args.batch_size", "8", "--trainer.max_steps", "2",
               "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(run),
               "--progress", "none"])
    assert rc == 0
    return run / "export.safetensors"


def test_tiny_fit_exports(tiny_export):
    from safetensors import safe_open

    from zoo.kinds.captioner import load_captioner

    with safe_open(str(tiny_export), "pt") as f:
        meta = f.metadata()
    import json

    assert meta["kind"] == "diffusion-captioner" and meta["complementary"] == "True" and meta["global_step"] == "2"
    assert json.loads(meta["metrics"])["val/loss"] > 0  # validated once per epoch
    model = load_captioner(tiny_export)
    caps = model.generate_caption(torch.randn(2, 3, 128, 128), steps=8, block=16)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)


def test_zoo_caption_cli(tiny_export, capsys):
    from zoo.cli import main
    from zoo.kinds.captioner import caption_files, load_captioner

    assert main(["caption", *map(str, SAMPLES[:2]), "--checkpoint", str(tiny_export), "--steps", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expect = caption_files(load_captioner(tiny_export), SAMPLES[:2], steps=8)
    assert [ln.split("\t") for ln in lines] == [[str(f), c] for f, c in zip(SAMPLES[:2], expect)]


def test_bad_input(tmp_path, capsys):
    from PIL import Image

    from zoo.cli import main
    from zoo.kinds.captioner import read_image

    model = _tiny()
    gray = tmp_path / "gray.png"
    Image.new("L", (40, 30)).save(gray)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(InputShapeError, match="1 channel"):
        read_image(gray, (128, 128))
    assert read_image(gray, (128, 128), rgb=True).shape == (3, 128, 128)
    with pytest.raises(InputShapeError, match="not an image"):
        read_image(tmp_path / "notes.jpg", (128, 128))
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.jpg", (128, 128))
    with pytest.raises(InputShapeError, match="3-channel"):
        model.generate_caption(torch.randn(1, 1, 128, 128))
    for bad, words in ((torch.zeros(1, 3, 128, 128, dtype=torch.uint8), "x.float() / 255"),
                       (torch.zeros(3, 128, 128), "x.unsqueeze(0)"), (torch.zeros(0, 3, 128, 128), "at least one"),
                       (torch.zeros(1, 3, 128, 128, dtype=torch.float64), "x.to(torch.float32)")):
        with pytest.raises(InputShapeError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            model.generate_caption(bad)
    with pytest.raises(InputShapeError, match="token ids"):
        model(torch.randn(1, 3, 128, 128), torch.full((1, 4), model.vocab_size))
    with pytest.raises(ConfigError, match="steps"):
        model.generate_caption(torch.randn(1, 3, 128, 128), steps=0)
    with pytest.raises(ConfigError, match="block"):
        model.generate_caption(torch.randn(1, 3, 128, 128), block=5)
    with pytest.raises(ConfigError, match="Mamba"):
        zoo.create_model("caption_mdlm_tiny_test", layout="mamba")
    for argv, msg in (([str(gray), "--model", "caption_ar_tiny_test"], "channel"),
                      ([str(SAMPLES[0]), "--model", "caption_ar_tiny_test", "--steps", "0"], "steps"),
                      ([str(tmp_path / "missing.jpg"), "--model", "caption_ar_tiny_test"], "does not exist"),
                      ([str(SAMPLES[0]), "--checkpoint", str(gray)], "not a readable"),
                      ([str(SAMPLES[0]), "--model", "vit_tiny_patch16_224"], "captioner")):
        assert main(["caption", *argv]) == 2
        assert msg in capsys.readouterr().err
