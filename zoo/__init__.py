"""speedzoo: a model zoo of efficient architectures on portable Triton kernels.

>>> import zoo
>>> zoo.list_models("vit_*")
>>> model = zoo.create_model("vit_tiny_patch16_224", num_classes=10)

Floors (imports point down only): ``kernels`` < ``backbones`` < ``heads`` < ``zoo``. In ``zoo``:
``zoo.kinds`` (the composed model of each kind), ``zoo.families`` (registry entries per family),
``zoo.registry``, ``zoo.factory`` (``create_model``), ``zoo.weights`` (shipped weights and their manifest).
"""
from __future__ import annotations

__version__ = "0.1.0"

from zoo import errors
from zoo.errors import ZooError
from zoo.factory import create_model, load_weights
from zoo.registry import list_models, list_pretrained
from zoo import families as _families  # noqa: F401  (fills the registry)
from zoo.kinds import KINDS
from zoo.info import model_info
from zoo.timm_interop import register_with_timm as _register_with_timm

_register_with_timm()
from zoo.vl.openclip import register_when_imported as _register_with_open_clip

_register_with_open_clip()  # the CLIP configs of zoo/vl/model_configs, once open_clip is imported

__all__ = ["create_model", "list_models", "list_pretrained", "model_info", "load_weights", "errors", "ZooError",
           "KINDS"]
