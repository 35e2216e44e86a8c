"""Vision-language evaluation: retrieval recalls and zero-shot metrics against literal computations on tiny
synthetic sets, the zero-shot classifier (open_clip's), CLIP_benchmark's result layout, and `zoo eval` on a
slice of Flickr8k and CIFAR-10 with the real MiniLM text tower."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from zoo.vl.metrics import classification_metrics, recall_at_k, retrieval_metrics, zero_shot_classifier


def test_retrieval_recalls_by_hand():
    # 3 images (one-hot directions), 6 captions, two per image: caption t describes image t // 2
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0.1, 0.0],    # -> image 0, ranked first           (t2i rank 1)
                        [0.2, 0.9, 0.0],    # -> image 0, ranked second behind 1 (t2i rank 2)
                        [0.0, 0.3, 1.0],    # -> image 1, ranked second behind 2 (t2i rank 2)
                        [0.0, 0.0, -1.0],   # -> image 1, scores (0, 0, -1): ties broken by topk, image 1 in top 2
                        [0.0, 0.0, 1.0],    # -> image 2, first
                        [0.5, 0.4, 0.3]])   # -> image 2, last (rank 3)
    t2i = torch.tensor([0, 0, 1, 1, 2, 2])
    m = retrieval_metrics(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), t2i, ks=(1, 2, 3))
    scores = F.normalize(txt, dim=-1) @ img.t()
    ranks = [int((scores[t] > scores[t, t2i[t]]).sum()) + 1 for t in range(6)]   # strict rank of the true image
    assert ranks[0] == 1 and ranks[4] == 1 and ranks[1] == 2 and ranks[2] == 2 and ranks[5] == 3
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 6)
    assert m["image_retrieval_recall@3"] == 1.0
    # image -> text: image 0's best caption is 0 (hit), image 1's best is caption 1 (0.9; not its own), image 2's
    # best are captions 2 and 4 (both 1.0 before normalising; 4 is its own, 2 is not)
    sim = (F.normalize(txt, dim=-1) @ img.t()).t()                                # [image, caption]
    own = torch.zeros(3, 6, dtype=torch.bool)
    own[t2i, torch.arange(6)] = True
    for k in (1, 2, 3):
        hand = sum(bool(own[i, sim[i].argsort(descending=True)[:k]].any()) for i in range(3)) / 3
        assert m[f"text_retrieval_recall@{k}"] == pytest.approx(hand)
    assert m["text_retrieval_recall@1"] < 1.0 and m["text_retrieval_recall@3"] == 1.0
    assert recall_at_k(torch.tensor([[0.0, 1.0]]), torch.tensor([[True, False]]), 1) == 0.0


def test_classification_metrics_by_hand():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0],    # true 0: top-1 hit
                           [3.0, 2.0, 1.0, 0.0, -1.0, -2.0],    # true 1: top-5 only
                           [0.0, 0.0, 0.0, 0.0, 0.0, 9.0],      # true 5: hit
                           [9.0, 0.0, 0.0, 0.0, 0.0, -9.0]])    # true 5: miss at 5 (last)
    y = torch.tensor([0, 1, 5, 5])
    m = classification_metrics(logits, y)
    assert m["acc1"] == pytest.approx(2 / 4) and m["acc5"] == pytest.approx(3 / 4)
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0 + 0.5) / 3)


class _TextOnly(torch.nn.Module):
    """encode_text returns a fixed vector per token id: enough to check the classifier's averaging."""

    def __init__(self):
        super().__init__()
        self.table = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))

    def encode_text(self, tok, normalize=False):
        x = self.table[tok["input_ids"][:, 0]]
        return F.normalize(x, dim=-1) if normalize else x


class _Tok:
    def __init__(self):
        self.vocab = {}

    def __call__(self, texts):
        from transformers import BatchEncoding
        ids = [self.vocab.setdefault(t, len(self.vocab)) for t in texts]
        return BatchEncoding({"input_ids": torch.tensor(ids)[:, None]})


def test_zero_shot_classifier_averages_normalised_template_embeddings():
    model, tok = _TextOnly(), _Tok()
    classes, templates = ["cat", "dog", "ship"], ["a photo of a {}.", "a {} in the wild."]
    w = zero_shot_classifier(model, tok, classes, templates)
    assert w.shape == (4, 3)
    for j, c in enumerate(classes):
        e = F.normalize(model.table[[tok.vocab[t.format(c)] for t in templates]], dim=-1).mean(0)
        assert torch.allclose(w[:, j], F.normalize(e, dim=0), atol=1e-6)


def test_clip_benchmark_result_layout(tmp_path):
    from zoo.vl.evaluate import benchmark_result, write_result

    r = benchmark_result("flickr8k", {"model": "clip_x", "pretrained": "flickr8k"}, "zeroshot_retrieval",
                         {"image_retrieval_recall@5": 0.5})
    assert set(r) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    path = write_result(r, tmp_path)
    assert path.name == "flickr8k_flickr8k_clip_x_en_zeroshot_retrieval.json"
    assert json.loads(path.read_text()) == r


@pytest.mark.slow
def test_zoo_eval_on_a_slice_with_the_real_text_tower(tmp_path, shared_data, monkeypatch):
    """An export of a (one-block) model through `zoo eval`'s dispatch: both CLIP_benchmark results."""
    from zoo.hub import save_state_dict
    from zoo.recipes.contrastive import ContrastiveTask
    from zoo.evaluate import main as zoo_eval

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    task = ContrastiveTask("clip_vit_tiny_d6_minilm_128", model_args={"depth": 1})
    meta = {"model": "clip_vit_tiny_d6_minilm_128", "kind": "vision-language", "model_args": '{"depth": 1}'}
    export = save_state_dict(task.export_state_dict(), tmp_path / "export.safetensors", metadata=meta)
    assert zoo_eval([str(export), "--data", "flickr8k", "--subset", "4", "--output", str(tmp_path / "res"),
                     "--batch-size", "32"]) == 0
    files = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert files == ["cifar10_export_clip_vit_tiny_d6_minilm_128_en_zeroshot_classification.json",
                     "flickr8k_export_clip_vit_tiny_d6_minilm_128_en_zeroshot_retrieval.json"]
    ret = json.loads((tmp_path / "res" / files[1]).read_text())["metrics"]
    assert set(ret) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert ret["image_retrieval_recall@5"] == 1.0          # 4 images: every caption's image is in the top 5
    zs = json.loads((tmp_path / "res" / files[0]).read_text())["metrics"]
    assert set(zs) == {"acc1", "acc5", "mean_per_class_recall"} and 0.0 <= zs["acc1"] <= zs["acc5"] <= 1.0


def test_demo_takes_the_published_clip_tag_with_the_best_text_to_image_recall(monkeypatch):
    from types import SimpleNamespace

    import zoo.registry
    from zoo.vl import demo

    recall = {"a.flickr8k": 19.5, "b.flickr8k": 31.0, "c.other": None}
    monkeypatch.setattr(zoo, "list_models", lambda **kw: sorted(recall))
    monkeypatch.setattr(zoo.registry, "get_entry", lambda base: base)
    monkeypatch.setattr(zoo.registry, "get_tag", lambda base, tag: SimpleNamespace(metrics={} if recall[f"{base}.{tag}"] is None else {
        "flickr8k (test retrieval)": {"image_retrieval_recall@10": recall[f"{base}.{tag}"], "text_retrieval_recall@10": 99.0},
        "cifar10 (test zero-shot)": {"acc1": 50.0}}))
    assert demo.published_models() == ["b.flickr8k", "a.flickr8k", "c.other"]
