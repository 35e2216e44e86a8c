"""What the demo and the web page ask of a vision-language model, over fixed banks of captions and images.

``VLIndex`` embeds once (at start) a bank of captions (Flickr8k's test captions, or the bundled samples'
when the data set is not at hand), a gallery of images and the zero-shot classifier of a label set (CIFAR-10's
classes with open_clip's templates), then answers per query: an image -> zero-shot labels with
probabilities and the closest captions; a caption -> the closest gallery images.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from zoo.errors import DataError, InputShapeError

log = logging.getLogger(__name__)

SAMPLES = Path(__file__).with_name("static") / "samples"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def sample_files() -> list[Path]:
    """The bundled Flickr8k test images (research use only, as the data set)."""
    return sorted(SAMPLES.glob("*.jpg"))


def decode_image(data: bytes) -> torch.Tensor:
    """Image file bytes -> uint8 [3, H, W]; InputShapeError when they are no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputShapeError(f"the upload is not an image this server can read ({e}); send a JPEG or PNG.") from None
    return torch.from_numpy(arr).permute(2, 0, 1)


def flickr_test_bank(limit: Optional[int] = None) -> tuple[list[str], list[str], list[torch.Tensor]]:
    """(captions, image names, images uint8) of Flickr8k's test split under ZOO_DATA (first ``limit`` images)."""
    from zoo.data.image_text import decode_images, open_image_text

    ds = open_image_text("flickr8k", "test", limit)
    images = decode_images(ds, 128)
    return ds.flat_captions(), [Path(p).name for p in ds.images], list(images)


@dataclass
class Match:
    text: str
    score: float


class VLIndex:
    """Caption bank, image gallery and zero-shot classifier of one model, embedded once."""

    def __init__(self, model: nn.Module, tokenizer, captions: Sequence[str], gallery: Sequence[tuple[str, torch.Tensor]],
                 classes: Sequence[str] = CIFAR10_CLASSES, batch_size: int = 128, device: str = "cpu"):
        from zoo.vl.evaluate import encode_images, encode_texts, zero_shot_templates
        from zoo.vl.metrics import zero_shot_classifier

        if not captions:
            raise DataError("the caption bank is empty; give captions (the Flickr8k test split or your own).")
        self.model, self.tokenizer, self.device, self.batch_size = model.eval(), tokenizer, device, batch_size
        self.captions = list(captions)
        self.classes = list(classes)
        self.caption_emb = encode_texts(model, tokenizer, self.captions, batch_size, device)
        self.gallery_names = [n for n, _ in gallery]
        self.gallery_images = [img for _, img in gallery]
        self.gallery_emb = (self._encode(self.gallery_images) if gallery else torch.zeros(0, self.caption_emb.shape[1]))
        self.classifier = zero_shot_classifier(model, tokenizer, self.classes, zero_shot_templates(), device).float().cpu()

    def _encode(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        from zoo.vl.evaluate import encode_images

        size = tuple(self.model.pretrained_cfg["input_size"][-2:])
        batch = torch.stack([torch.nn.functional.interpolate(im[None].float(), size=size, mode="bicubic",
                                                             align_corners=False).clamp(0, 255)[0]
                             if tuple(im.shape[-2:]) != size else im.float() for im in images])
        return encode_images(self.model, batch, self.batch_size, self.device)

    def describe(self, image: torch.Tensor, k_labels: int = 5, k_captions: int = 5) -> dict:
        """Zero-shot labels (softmax of 100 * cosine, CLIP's) and the closest captions of one uint8 image."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputShapeError(f"expected one RGB image [3, H, W], got {tuple(image.shape)}")
        emb = self._encode([image])[0]
        probs = (100.0 * emb @ self.classifier).softmax(-1)
        top = probs.topk(min(k_labels, len(self.classes)))
        sims = self.caption_emb @ emb
        best = sims.topk(min(k_captions, len(self.captions)))
        return {"labels": [{"label": self.classes[i], "prob": round(float(p), 4)} for p, i in zip(top.values, top.indices)],
                "captions": [{"caption": self.captions[i], "score": round(float(s), 4)}
                             for s, i in zip(best.values, best.indices)]}

    def search(self, text: str, k: int = 6) -> list[dict]:
        """The gallery images closest to a caption, best first."""
        text = " ".join(str(text).split())
        if not text:
            raise InputShapeError("type a caption to search for (the text was empty).")
        if not self.gallery_names:
            return []
        from zoo.vl.evaluate import encode_texts

        emb = encode_texts(self.model, self.tokenizer, [text], 1, self.device)[0]
        sims = self.gallery_emb @ emb
        best = sims.topk(min(k, len(self.gallery_names)))
        return [{"image": self.gallery_names[i], "score": round(float(s), 4)} for s, i in zip(best.values, best.indices)]
