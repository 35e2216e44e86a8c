"""The zoo's CLIP towers inside open_clip: model configs shipped as open_clip JSON (``zoo/vl/model_configs``).

After ``import zoo`` (and open_clip's import, in either order):

    model, _, preprocess = open_clip.create_model_and_transforms("zoo-vit-tiny-d6-128")
    tokenizer = open_clip.get_tokenizer("zoo-vit-tiny-d6-128")

builds open_clip's ``CLIP`` whose image tower is open_clip's ``TimmModel`` over the zoo backbone the
registry's CLIP model of that tower uses (``zoo_<clip name>_visual``: same architecture, same 128 px, since
TimmModel does not pass its ``image_size`` to timm), with open_clip's own text transformer and tokenizer, so
open_clip's training script can train a zoo tower end to end on a CSV of captions, offline. The registry's
``clip_*_minilm_128`` models pair the same image towers with the pretrained MiniLM instead (zoo.kinds.
vision_language says why that pairing is a class of ours).

Registration waits for open_clip: when it is not imported yet, a meta-path hook registers right after its
import, so ``import zoo`` does not pay for importing open_clip.
"""
from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).with_name("model_configs")
VISUAL_SUFFIX = "_visual"
_done = False


def _visual_entrypoint(clip_name: str):
    def entry(pretrained: bool = False, **kwargs):
        from zoo.errors import ConfigError
        from zoo.factory import create_model
        from zoo.families.clip import TOWERS

        if pretrained:
            raise ConfigError(f"zoo_{clip_name}{VISUAL_SUFFIX} has no pretrained timm weights; load a zoo CLIP export "
                              f"with zoo.create_model('{clip_name}', checkpoint_path=...) instead.")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        tower, args, _ = TOWERS[clip_name]
        model = create_model(tower, img_size=kwargs.pop("img_size", 128), **{**args, **kwargs})
        return _pooled_width_as_num_features(model)

    entry.__name__ = entry.__qualname__ = f"zoo_{clip_name}{VISUAL_SUFFIX}"
    entry.__module__ = __name__
    entry.__doc__ = f"The image tower of speedzoo's {clip_name} at 128 px, for open_clip's timm_model_name."
    return entry


def _pooled_width_as_num_features(model):
    """open_clip's TimmModel sizes its projection by ``num_features`` read after ``reset_classifier(0)``,
    but what it then receives is the pooled width, ``head_hidden_size`` (EfficientViT's head has a 1280-wide
    hidden layer over 128 channels; timm's own EfficientViT would not fit either). Keep the two equal here."""
    width = getattr(model, "head_hidden_size", None)
    if not width or width == model.num_features:
        return model
    reset = model.reset_classifier

    def reset_classifier(num_classes: int, *args, **kw):
        reset(num_classes, *args, **kw)
        model.num_features = width

    model.reset_classifier = reset_classifier
    model.num_features = width
    return model


def register() -> list[str]:
    """Register the image towers with timm and the JSON configs with open_clip (idempotent)."""
    global _done
    if _done:
        return []
    import open_clip
    from timm.models import is_model, register_model

    from zoo.families.clip import TOWERS

    added = []
    module = sys.modules[__name__]
    for clip_name in TOWERS:
        fn = _visual_entrypoint(clip_name)
        if not is_model(fn.__name__):
            setattr(module, fn.__name__, fn)
            register_model(fn)
            added.append(fn.__name__)
    open_clip.add_model_config(CONFIG_DIR)
    _done = True
    return added


class _AfterOpenClip(importlib.abc.MetaPathFinder):
    """Runs :func:`register` once open_clip's module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "open_clip":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_register(mod, _exec=exec_module):
                    _exec(mod)
                    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterOpenClip)]
                    register()

                spec.loader.exec_module = exec_and_register
                return spec
        return None


def register_when_imported() -> None:
    """Register now if open_clip is loaded, else right after it is."""
    if "open_clip" in sys.modules:
        register()
    elif not any(isinstance(f, _AfterOpenClip) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterOpenClip())
