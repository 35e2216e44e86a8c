"""The vision-language part of ``zoo demo``: the zoo's CLIP weights on bundled images.

For each bundled Flickr8k test sample: its three closest Flickr8k test captions (all 5,000 when the data set
is under ZOO_DATA, else the samples' own) and its zero-shot CIFAR-10 labels; for the bundled CIFAR-10 images:
zero-shot labels against their true class. The text tower is the MiniLM of ZOO_DATA (data set ``minilm``),
so the part is skipped, saying why, without it or without published vision-language weights.
"""
from __future__ import annotations

import logging

from zoo.errors import DataError, ZooError

log = logging.getLogger(__name__)

SAMPLE_CAPTIONS = {  # the bundled samples' first Flickr8k caption, for the fallback caption bank
    "1084040636_97d9633581.jpg": "A closeup of a white dog that is laying its head on its paws .",
    "113678030_87a6a6e42e.jpg": "A snowboarder sits on a slope with skiers and boarders nearby .",
    "1174629344_a2e1a2bdbf.jpg": "A crowd of people walk down a busy sidewalk .",
    "1248940539_46d33ed487.jpg": "Three children are playing in sand near to the beach .",
}


def published_models() -> list[str]:
    """The published CLIP tags, best first: by their registered Flickr8k test text->image R@10."""
    import zoo
    from zoo.registry import get_entry, get_tag, split_name

    def t2i_r10(name: str) -> float:
        base, tag = split_name(name)
        metrics = get_tag(get_entry(base), tag).metrics
        return max((m.get("image_retrieval_recall@10", 0.0) for d, m in metrics.items() if d.startswith("flickr8k")),
                   default=0.0)

    return sorted(zoo.list_models(pretrained=True, kind="vision-language"), key=t2i_r10, reverse=True)


def run(model_name: str | None = None, captions: int | None = None) -> bool:
    """Print the demo; returns False (with the reason printed) when it cannot run here."""
    from zoo.assets import asset_files
    from zoo.vl.evaluate import load_model, tokenizer_for
    from zoo.vl.service import VLIndex, decode_image, sample_files

    names = [model_name] if model_name else published_models()
    if not names:
        print("vision-language: no published CLIP weights yet (zoo list --kind vision-language lists the "
              "architectures; train one with configs/flickr8k_clip_vit.yaml)\n")
        return False
    name = names[0]
    try:
        model, info = load_model(name)
        tokenizer = tokenizer_for()
        try:
            from zoo.data.image_text import open_image_text

            bank = open_image_text("flickr8k", "test").flat_captions()[:captions]
            where = f"{len(bank)} Flickr8k test captions"
        except DataError:
            bank, where = list(SAMPLE_CAPTIONS.values()), "the samples' own captions (Flickr8k not under ZOO_DATA)"
        samples = [(p.name, decode_image(p.read_bytes())) for p in sample_files()]
        index = VLIndex(model, tokenizer, bank, samples)
    except ZooError as e:
        print(f"vision-language: skipped ({e})\n")
        return False
    print(f"{info['model']} ({info['pretrained']}): closest of {where}, zero-shot CIFAR-10 labels")
    for fname, image in samples:
        d = index.describe(image, k_labels=3, k_captions=3)
        labels = "  ".join(f"{x['label']} {x['prob']:.0%}" for x in d["labels"])
        print(f"  {fname}  [{labels}]")
        for c in d["captions"]:
            print(f"      {c['score']:.3f}  {c['caption']}")
    files = asset_files("cifar10")
    correct = 0
    for f in files:
        d = index.describe(decode_image(f.read_bytes()), k_labels=1, k_captions=1)
        correct += d["labels"][0]["label"] == f.name.split("_")[0]
    print(f"  zero-shot on the bundled CIFAR-10 images: {correct}/{len(files)} correct\n")
    return True
