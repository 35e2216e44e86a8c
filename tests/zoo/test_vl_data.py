"""Image-caption data: Flickr8k's layout straight from the zips, open_clip's CSV/TSV layout, bad input counted
and skipped before training (never mid-epoch), per-epoch caption sampling, cached int8 text embeddings."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.image_text import ImageTextDataModule, decode_images, open_caption_csv, open_flickr8k, open_image_text
from zoo.errors import DataError
from zoo.vl.embeddings import dequantize, load_embeddings, quantisation_error, quantize


def _jpeg(color=(200, 30, 30), size=(20, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _flickr_zip(path, rows, images, splits):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("f8k/captions.tsv", "image\tsplit\tcaption_id\tcaption\n" +
                   "".join(f"{i}\ttrain\t{c}\t{t}\n" for i, c, t in rows))
        for name, data in images.items():
            z.writestr(f"f8k/images/{name}", data)
        for split, names in splits.items():
            z.writestr(f"f8k/{split}.txt", "\n".join(names) + "\n")
    return path


def test_flickr8k_slice_of_the_real_zips(shared_data):
    train = open_flickr8k(shared_data / "flickr8k-128-train.zip", "train", limit=8)
    assert len(train) == 8 and all(len(c) == 5 for c in train.captions) and not train.skipped
    assert train.images[0].endswith("images/" + train.caption_keys()[0].split("#")[0])
    test = open_image_text("flickr8k", "test", limit=4)     # the name resolves under ZOO_DATA (eval zip)
    assert len(test) == 4 and len(test.flat_captions()) == 20
    assert test.text_to_image().tolist() == [i for i in range(4) for _ in range(5)]
    images = decode_images(test, 32)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    with pytest.raises(DataError, match="split 'nosuch' has no list.*available: dev, extra, test, train"):
        open_flickr8k(shared_data / "flickr8k-128-eval.zip", "nosuch")


def test_bad_input_is_counted_and_skipped(tmp_path):
    rows = [("a.jpg", 0, "a red square"), ("a.jpg", 1, "   "),          # one empty caption
            ("gone.jpg", 0, "an image that is not in the zip"),
            ("broken.jpg", 0, "bytes that are no image")]
    images = {"a.jpg": _jpeg(), "lonely.jpg": _jpeg(), "broken.jpg": b"not a jpeg at all"}
    z = _flickr_zip(tmp_path / "f.zip", rows, images, {"train": ["a.jpg", "gone.jpg", "lonely.jpg", "broken.jpg"]})
    ds = open_flickr8k(z, "train")
    assert ds.skipped == {"empty caption": 1, "caption names a missing image": 1, "image without a caption": 1}
    assert ds.images == ["f8k/images/a.jpg", "f8k/images/broken.jpg"]
    x = decode_images(ds, 8)
    assert x.shape == (1, 3, 8, 8) and ds.skipped["unreadable image"] == 1 and len(ds) == 1
    assert ds.captions == [["a red square"]]
    nothing = _flickr_zip(tmp_path / "g.zip", [("gone.jpg", 0, "x")], {}, {"train": ["gone.jpg"]})
    with pytest.raises(DataError, match="no usable image-caption pairs.*missing image"):
        open_flickr8k(nothing, "train").report()
    with zipfile.ZipFile(tmp_path / "h.zip", "w") as zf:
        zf.writestr("captions.tsv", "img\tcaption\nx.jpg\thello\n")
    with pytest.raises(DataError, match="lacks the column"):
        open_flickr8k(tmp_path / "h.zip")


def test_open_clip_csv_layout(tmp_path):
    (tmp_path / "img").mkdir()
    for n in ("a", "b"):
        (tmp_path / "img" / f"{n}.jpg").write_bytes(_jpeg())
    (tmp_path / "train.csv").write_text("filepath,title\nimg/a.jpg,a cat\nimg/a.jpg,a small cat\nimg/b.jpg,\n"
                                        "img/c.jpg,missing\n")
    ds = open_caption_csv(tmp_path / "train.csv")
    assert ds.images == ["img/a.jpg"] and ds.captions == [["a cat", "a small cat"]]
    assert ds.skipped == {"empty caption": 1, "caption names a missing image": 1, "image without a caption": 1}
    (tmp_path / "t.tsv").write_text("path\ttext\nimg/b.jpg\ta dog\n")
    assert open_image_text(tmp_path / "t.tsv", img_key="path", caption_key="text").captions == [["a dog"]]
    with pytest.raises(DataError, match="no column 'filepath'.*data.img_key"):
        open_caption_csv(tmp_path / "t.tsv")


def test_int8_embeddings_round_trip_and_key_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 384, generator=g) * 0.3
    q, s = quantize(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    cos = torch.nn.functional.cosine_similarity(x, dequantize(q, s), dim=1)
    err = quantisation_error(x)
    assert err["cos_min"] == pytest.approx(float(cos.min()), abs=1e-6) and err["cos_min"] > 0.9999
    from safetensors.torch import save_file
    import json
    keys = [f"im{i}.jpg#0" for i in range(50)]
    path = tmp_path / "e.safetensors"
    save_file({"q": q, "scale": s}, str(path), metadata={"format": "speedzoo-text-embeddings-v1",
                                                         "keys": json.dumps(keys)})
    q2, s2 = load_embeddings(path, [keys[3], keys[1]])
    assert torch.equal(q2, q[[3, 1]]) and torch.equal(s2, s[[3, 1]])
    with pytest.raises(DataError, match="no embedding for 1 of the 2"):
        load_embeddings(path, [keys[0], "other.jpg#0"])
    with pytest.raises(DataError, match="does not exist.*zoo.vl.embeddings"):
        load_embeddings(tmp_path / "none.safetensors", keys)


def test_data_module_samples_a_caption_per_epoch_and_feeds_embeddings(tmp_path):
    rows = [(f"{i}.jpg", c, f"image {i} caption {c}") for i in range(6) for c in range(5)]
    images = {f"{i}.jpg": _jpeg((40 * i, 0, 0)) for i in range(6)}
    z = _flickr_zip(tmp_path / "f.zip", rows, images, {"train": [f"{i}.jpg" for i in range(6)]})
    ds = open_flickr8k(z, "train")
    # embeddings whose first entry encodes (image, caption) so the lookup can be checked
    emb = torch.zeros(30, 384)
    for n, (i, c) in enumerate(ds.caption_pairs()):
        emb[n, 0], emb[n, 1] = i + 1, c + 1
    q, s = quantize(emb)
    from safetensors.torch import save_file
    import json
    save_file({"q": q, "scale": s}, str(tmp_path / "e.safetensors"),
              metadata={"format": "speedzoo-text-embeddings-v1", "keys": json.dumps(ds.caption_keys())})
    dm = ImageTextDataModule(str(z), img_size=16, batch_size=4, text_embeddings=str(tmp_path / "e.safetensors"))
    dm.setup("fit")
    c0, c1 = dm.caption_choice(0), dm.caption_choice(1)
    assert torch.equal(c0, dm.caption_choice(0)) and not torch.equal(c0, c1)
    assert int(c0.min()) >= 0 and int(c0.max()) <= 4
    idx = torch.tensor([5, 0, 2])
    x, text = dm.on_after_batch_transfer(idx)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert text.shape == (3, 384)     # int8 error < 0.5 on these small integers: rounding recovers them
    assert torch.equal(text[:, 0].round(), idx.float() + 1) and torch.equal(text[:, 1].round(), c0[idx].float() + 1)
    boxes_a = dm.augment(x.clone(), idx, epoch=0)
    assert boxes_a.shape == x.shape and torch.equal(boxes_a, dm.augment(x.clone(), idx, epoch=0))
    assert len(dm.train_dataloader()) == 1   # 6 images, batch 4, drop_last


def test_data_module_feeds_several_captions_per_image(tmp_path):
    # image 3 has only two captions: its set repeats them
    rows = [(f"{i}.jpg", c, f"image {i} caption {c}") for i in range(6) for c in range(2 if i == 3 else 5)]
    images = {f"{i}.jpg": _jpeg((40 * i, 0, 0)) for i in range(6)}
    z = _flickr_zip(tmp_path / "f.zip", rows, images, {"train": [f"{i}.jpg" for i in range(6)]})
    ds = open_flickr8k(z, "train")
    emb = torch.zeros(len(ds.caption_pairs()), 384)
    for n, (i, c) in enumerate(ds.caption_pairs()):
        emb[n, 0], emb[n, 1] = i + 1, c + 1
    q, s = quantize(emb)
    from safetensors.torch import save_file
    import json
    save_file({"q": q, "scale": s}, str(tmp_path / "e.safetensors"),
              metadata={"format": "speedzoo-text-embeddings-v1", "keys": json.dumps(ds.caption_keys())})
    dm = ImageTextDataModule(str(z), img_size=16, batch_size=4, text_embeddings=str(tmp_path / "e.safetensors"),
                             captions_per_image=5)
    dm.setup("fit")
    idx = torch.tensor([5, 3, 0])
    _, text = dm.on_after_batch_transfer(idx)
    assert text.shape == (3, 5, 384)
    assert torch.equal(text[:, :, 0].round(), (idx.float() + 1)[:, None].expand(3, 5))
    drawn = dm.caption_choice(0)[idx]
    counts = torch.tensor([5, 2, 5])
    want = (drawn[:, None] + torch.arange(5)) % counts[:, None] + 1
    assert torch.equal(text[:, :, 1].round(), want.float())
    assert sorted(text[0, :, 1].round().tolist()) == [1, 2, 3, 4, 5]   # all five captions of image 5
    dm_tok = ImageTextDataModule(str(z), img_size=16, batch_size=4, captions_per_image=3,
                                 tokenizer=None)
    dm_tok.train_set = ds
    dm_tok._images["train"] = decode_images(ds, 16)
    dm_tok._tokenizer = lambda texts: {"input_ids": torch.arange(len(texts))[:, None].repeat(1, 7),
                                       "attention_mask": torch.ones(len(texts), 7, dtype=torch.int64)}
    _, tok = dm_tok.on_after_batch_transfer(idx)
    assert tok["input_ids"].shape == (3, 3, 7) and tok["input_ids"][1, 2, 0].item() == 5
    with pytest.raises(Exception, match="captions_per_image=0"):
        ImageTextDataModule(str(z), captions_per_image=0)
