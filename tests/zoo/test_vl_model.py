"""Vision-language models: the registry's CLIP kind, its open_clip configs, the contrastive task's loss against
open_clip's ClipLoss and a literal computation, and export / reload without the referenced text tower."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import ConfigError, InputShapeError

SMALL = dict(depth=1)  # one ViT block keeps these CPU tests fast


def test_registry_lists_the_vision_language_kind():
    names = zoo.list_models(kind="vision-language")
    assert {"clip_vit_tiny_d6_minilm_128", "clip_vim_tiny_d12_minilm_128", "clip_efficientvit_b0_minilm_128"} <= set(names)


@pytest.mark.parametrize("name", ["clip_vit_tiny_d6_minilm_128", "clip_efficientvit_b0_minilm_128"])
def test_clip_model_contract(name):
    model = zoo.create_model(name, text_tower="cached", **(SMALL if "vit" in name and "efficient" not in name else {}))
    assert model.pretrained_cfg["kind"] == "vision-language" and model.pretrained_cfg["input_size"] == (3, 128, 128)
    x, t = torch.randn(2, 3, 128, 128), torch.randn(2, 384)
    img, txt, scale = model(x, t)
    assert img.shape == txt.shape == (2, 256)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert torch.allclose(model.encode_image(x, normalize=True), img, atol=1e-6)
    with pytest.raises(InputShapeError, match=r"\[B, 384\]"):
        model.encode_text(torch.randn(2, 100))
    with pytest.raises(ConfigError, match="no text encoder attached"):
        model.encode_text(torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="text_tower='nope'"):
        zoo.create_model(name, text_tower="nope")


def test_open_clip_config_with_a_zoo_tower_builds_through_open_clip():
    import open_clip

    assert "zoo-vit-tiny-d6-128" in open_clip.list_models()
    model, _, preprocess = open_clip.create_model_and_transforms("zoo-vit-tiny-d6-128")
    assert type(model.visual).__name__ == "TimmModel"
    assert model.visual.trunk.pretrained_cfg["architecture"] == "vit_tiny_patch16_224"
    assert len(model.visual.trunk.backbone.blocks) == 6              # the registry CLIP model's image tower
    tok = open_clip.get_tokenizer("zoo-vit-tiny-d6-128")(["a dog on grass", "two children"])
    with torch.no_grad():
        img, txt, scale = model(torch.randn(2, 3, 128, 128), tok)
    assert img.shape == txt.shape == (2, 256)


def _task(**kw):
    from zoo.recipes.contrastive import ContrastiveTask

    return ContrastiveTask("clip_vit_tiny_d6_minilm_128", model_args=SMALL, **kw)


def test_contrastive_loss_equals_open_clip_cliploss_and_the_formula():
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    task = _task()
    x, t = torch.randn(6, 3, 128, 128), torch.randn(6, 384)
    loss, metrics = task.shared_step((x, t), "val")
    img, txt, scale = task.model(x, t)
    ref = ClipLoss()(img, txt, scale)
    logits = scale * img @ txt.t()
    labels = torch.arange(6)
    literal = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6) and loss.item() == pytest.approx(literal.item(), rel=1e-5)
    sim = img @ txt.t()
    assert metrics["i2t_top1"].item() == pytest.approx((sim.argmax(1) == labels).float().mean().item())
    assert metrics["t2i_top1"].item() == pytest.approx((sim.argmax(0) == labels).float().mean().item())
    loss.backward()
    grads = {n: p.grad for n, p in task.model.named_parameters()}
    assert grads["logit.logit_scale"] is not None and grads["text_proj.proj.weight"].abs().sum() > 0


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
def test_several_captions_per_image_average_the_losses_of_each_caption_set(loss_name):
    from open_clip.loss import ClipLoss, SigLipLoss

    torch.manual_seed(0)
    task = _task(loss=loss_name)
    x, t = torch.randn(4, 3, 128, 128), torch.randn(4, 3, 384)
    loss, _ = task.shared_step((x, t), "val")
    ref = ClipLoss() if loss_name == "clip" else SigLipLoss()
    per_set = []
    for j in range(3):
        out = task.model(x, t[:, j])
        per_set.append(ref(*out).item())
    assert loss.item() == pytest.approx(sum(per_set) / 3, rel=1e-5)
    assert len(set(round(v, 6) for v in per_set)) == 3     # the sets differ, so the mean is not one of them


def test_siglip_loss_and_bad_task_options():
    from open_clip.loss import SigLipLoss

    task = _task(loss="siglip")
    x, t = torch.randn(4, 3, 128, 128), torch.randn(4, 384)
    loss, _ = task.shared_step((x, t), "val")
    img, txt, scale, bias = task.model(x, t)
    assert bias.item() == -10.0 and loss.item() == pytest.approx(SigLipLoss()(img, txt, scale, bias).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="loss='focal'"):
        _task(loss="focal")
    with pytest.raises(ConfigError, match="lock_text true"):
        _task(lock_text=False)
    with pytest.raises(ConfigError, match="trains vision-language models"):
        from zoo.recipes.contrastive import ContrastiveTask
        ContrastiveTask("vit_micro_patch4_32", text_tower="cached")


def test_export_leaves_out_the_locked_text_tower_and_reloads(tmp_path):
    from zoo.hub import read_state_dict, save_state_dict

    task = _task()
    state = task.export_state_dict()
    assert state and not any(k.startswith("text.") for k in state)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    path = save_state_dict(state, tmp_path / "export.safetensors")
    other = zoo.create_model("clip_vit_tiny_d6_minilm_128", text_tower="cached", **SMALL)
    other.load_export(read_state_dict(path))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = task.model.half().float().encode_image(x)
        b = other.encode_image(x)
    assert torch.allclose(a, b, atol=1e-4)
    from zoo.errors import WeightLoadError
    with pytest.raises(WeightLoadError, match="missing"):
        other.load_export({k: v for k, v in state.items() if not k.startswith("image_proj")})


def test_siglip_export_loads_into_the_registered_model_with_its_bias(tmp_path):
    """`zoo eval` builds the registered model (no logit bias); a SigLIP export brings its learned bias along."""
    from zoo.hub import read_state_dict, save_state_dict

    task = _task(loss="siglip")
    with torch.no_grad():
        task.model.logit.logit_bias.fill_(-7.5)
    path = save_state_dict(task.export_state_dict(), tmp_path / "export.safetensors")
    other = zoo.create_model("clip_vit_tiny_d6_minilm_128", text_tower="cached", **SMALL)
    assert other.logit_bias is None
    other.load_export(read_state_dict(path))
    assert other.logit_bias is not None and other.logit_bias.item() == -7.5


@pytest.mark.parametrize("arch", ["vit", "vim"])
def test_tower_init_from_cifar10_weights_is_average_pooling_then_the_cifar_tower(arch):
    """A patch-4 CIFAR-10 tower starts the patch-16 CLIP tower at 128 px: its kernel repeated 4x4 over 16, so
    the tower on an image equals the CIFAR backbone on the image's 4x4 average pooling, to float rounding."""
    from zoo.recipes.contrastive import ContrastiveTask

    task = ContrastiveTask(f"clip_{arch}_micro_p16_minilm_128", tower_init=f"{arch}_micro_patch4_32.cifar10")
    cifar = zoo.create_model(f"{arch}_micro_patch4_32.cifar10", pretrained=True, num_classes=0).eval()
    tower = task.model.visual.eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        want, got = cifar(F.avg_pool2d(x, 4)), tower(x)
    assert got.shape == want.shape == (2, 128)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    fresh = zoo.create_model(f"clip_{arch}_micro_p16_minilm_128", text_tower="cached").visual.eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x), want, atol=1e-2)               # the weights did the work
    with pytest.raises(ConfigError, match="not a tag of this model's image tower"):
        ContrastiveTask(f"clip_{arch}_micro_p16_minilm_128", tower_init="vit_tiny_patch16_224.augreg_in21k")
    with pytest.raises(ConfigError, match="names no weights"):
        ContrastiveTask(f"clip_{arch}_micro_p16_minilm_128", tower_init=f"{arch}_micro_patch4_32")


def test_patch_kernel_resample_other_ratios_use_the_pseudo_inverse():
    from zoo.factory import resample_patch_kernel

    w = torch.randn(8, 3, 4, 4)
    up = resample_patch_kernel(w, (8, 8))
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(F.conv2d(x, up, stride=8), F.conv2d(F.avg_pool2d(x, 2), w, stride=4), atol=1e-5)
    odd = resample_patch_kernel(w, (6, 6))                               # not a multiple: FlexiViT's PI-resize
    assert odd.shape == (8, 3, 6, 6) and torch.isfinite(odd).all()


def test_open_clip_configs_cover_every_registered_tower():
    import open_clip

    from zoo.families.clip import TOWERS
    from zoo.vl.openclip import CONFIG_DIR

    named = {json_name: __import__("json").loads((CONFIG_DIR / json_name).read_text())["vision_cfg"]["timm_model_name"]
             for json_name in (p.name for p in CONFIG_DIR.glob("*.json"))}
    assert set(named.values()) == {f"zoo_{n}_visual" for n in TOWERS}
    model, _, _ = open_clip.create_model_and_transforms("zoo-vit-micro-p16-128")
    assert model.visual.trunk.backbone.patch_embed.grid_size == (8, 8)
    model, _, _ = open_clip.create_model_and_transforms("zoo-vit-micro-p8-128")
    assert model.visual.trunk.backbone.patch_embed.grid_size == (16, 16)


def test_tag_into_another_patch_and_grid_resamples_both():
    """Patch 4 -> 16 and an 8 x 8 -> 12 x 12 grid (192 px): the kernel and the position embeddings are resampled."""
    from zoo.factory import load_tag_into

    model = zoo.create_model("vit_micro_patch4_32", num_classes=0, img_size=192, patch_size=16)
    load_tag_into(model, "vit_micro_patch4_32.cifar10")
    cifar = zoo.create_model("vit_micro_patch4_32.cifar10", pretrained=True, num_classes=0)
    assert model.backbone.pos_embed.shape == (1, 145, 128)
    assert torch.equal(model.backbone.pos_embed[:, :1], cifar.backbone.pos_embed[:, :1])        # the class token's
    w = model.backbone.patch_embed.proj.weight
    assert torch.allclose(w, cifar.backbone.patch_embed.proj.weight.repeat_interleave(4, -2).repeat_interleave(4, -1) / 16)


@pytest.mark.parametrize("config", sorted(p.name for p in Path("configs").glob("flickr8k_clip_*.yaml")))
def test_clip_recipes_parse(config, capsys):
    """Every shipped CLIP recipe parses against the task's and the data module's signatures (keys, types)."""
    from zoo.cli import main

    assert main(["fit", "--config", f"configs/{config}", "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "class_path: zoo.recipes.contrastive.ContrastiveTask" in printed and "model: clip_" in printed
