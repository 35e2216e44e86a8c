"""Zero-shot classification and image-text retrieval metrics, with CLIP_benchmark's definitions and names.

Retrieval (CLIP_benchmark ``zeroshot_retrieval``): ``scores = text @ image.T``; ``image_retrieval_recall@k``
is the share of captions whose image is among the k best-scored images (text -> image),
``text_retrieval_recall@k`` the share of images with at least one of their captions among the k best-scored
captions (image -> text). Zero-shot classification (``zeroshot_classification``): the class embeddings are
open_clip's ``build_zero_shot_classifier`` (the templates' normalised text embeddings averaged per class),
logits = 100 * image @ classifier; metrics ``acc1``, ``acc5`` and ``mean_per_class_recall``.
"""
from __future__ import annotations

from typing import Sequence

import torch


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int) -> float:
    """Share of rows (queries) with at least one positive column among their ``k`` highest scores."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hit = positives.gather(1, top).any(dim=1)
    return float(hit.float().mean())


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """CLIP_benchmark's retrieval recalls (fractions in [0, 1]) from normalised features.

    ``text_to_image[t]`` is the index of the image caption ``t`` describes.
    """
    if text_to_image.numel() != text_features.shape[0]:
        raise ValueError(f"text_to_image has {text_to_image.numel()} entries for {text_features.shape[0]} captions")
    scores = text_features.float() @ image_features.float().t()              # [n_text, n_image]
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(text_to_image)), text_to_image] = True
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = recall_at_k(scores, positives, k)
        out[f"text_retrieval_recall@{k}"] = recall_at_k(scores.t(), positives.t(), k)
    return out


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``acc@k`` as ``acc1``/``acc5`` and ``mean_per_class_recall`` (the mean over classes of top-1 recall)."""
    out = {}
    for k in ks:
        k_ = min(k, logits.shape[1])
        top = logits.topk(k_, dim=1).indices
        out[f"acc{k}"] = float((top == targets[:, None]).any(dim=1).float().mean())
    pred = logits.argmax(1)
    recalls = [float((pred[targets == c] == c).float().mean()) for c in targets.unique().tolist()]
    out["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return out


def zero_shot_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                         device: str | torch.device = "cpu") -> torch.Tensor:
    """[embed_dim, n_classes] class embeddings: open_clip's build_zero_shot_classifier on our model."""
    from open_clip import build_zero_shot_classifier

    return build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates), device=device)
