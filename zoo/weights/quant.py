"""int8 weight-only storage for shipped weight files (format ``int8-rowwise-v1``).

The package ships its own weights inside a fixed budget (zoo.weights.manifest: 8 MB a file, 20 MB in all);
fp16 language-model and CLIP exports do not fit together, int8 does. Every floating tensor with ``ndim >= 2``
and at least :data:`MIN_ELEMENTS` elements is stored as int8 with one symmetric fp32 scale per output row
(row = dim 0, scale = absmax / 127, so each element is off by at most scale / 2); the rest (biases, norms,
small tensors) stays fp16. Compute stays in floating point: loaders dequantize on read
(``zoo.hub.read_state_dict`` does it when a file's metadata says ``weights_format: int8-rowwise-v1``).

Key scheme: the scale of tensor ``name`` is stored as ``name@int8_scale``. ``@`` never appears in a state-dict
key that PyTorch builds from module attribute names (they are Python identifiers joined by dots), and
:func:`quantize_int8` refuses any input key that ends with the suffix, so a scale key can never shadow a real
one and :func:`dequantize` knows the quantized tensors from their keys alone.
"""
from __future__ import annotations

from typing import Mapping

import torch

from zoo.errors import WeightLoadError

FORMAT = "int8-rowwise-v1"
FORMAT_KEY = "weights_format"
SCALE_SUFFIX = "@int8_scale"
COUNT_KEY = "int8_tensors"  # how many tensors are quantized: a file that lost a scale is refused, not misread
MIN_ELEMENTS = 4096
"""Smaller tensors stay fp16: their scales would cost more than int8 saves, and they are the sensitive ones."""

__all__ = ["FORMAT", "FORMAT_KEY", "SCALE_SUFFIX", "quantize_int8", "dequantize", "is_int8", "int8_bytes", "storage"]


def _quantizable(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.ndim >= 2 and t.numel() >= MIN_ELEMENTS


def quantize_int8(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the int8-rowwise-v1 copy of ``state_dict``; ``metadata`` (e.g. an export's)
    is carried over with ``weights_format`` added. Raises ValueError for a key that ends with the scale suffix."""
    clash = [k for k in state_dict if k.endswith(SCALE_SUFFIX)]
    if clash:
        raise ValueError(f"keys {clash[:3]} end with {SCALE_SUFFIX!r}, the int8 format's scale suffix; "
                         f"this state dict is already quantized or cannot be stored as {FORMAT}")
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if not _quantizable(t):
            out[name] = t.to(torch.float16) if t.is_floating_point() else t
            continue
        rows = t.float().reshape(t.shape[0], -1)
        scale = rows.abs().amax(dim=1) / 127.0
        q = torch.round(rows / torch.where(scale > 0, scale, 1.0)[:, None]).clamp_(-127, 127)
        out[name] = q.to(torch.int8).reshape(t.shape).contiguous()
        out[name + SCALE_SUFFIX] = scale.contiguous()
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[FORMAT_KEY] = FORMAT
    meta[COUNT_KEY] = str(sum(k.endswith(SCALE_SUFFIX) for k in out))
    return out, meta


def is_int8(metadata: Mapping[str, str] | None) -> bool:
    """Whether a safetensors file's metadata says its tensors are in the int8 format."""
    return (metadata or {}).get(FORMAT_KEY) == FORMAT


def dequantize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
               source: str = "weights") -> dict[str, torch.Tensor]:
    """The floating state dict of an int8-rowwise-v1 file (quantized tensors as fp32 ``q * scale``); tensors
    of a file in no known quantized format come back unchanged. A damaged file raises WeightLoadError."""
    fmt = (metadata or {}).get(FORMAT_KEY)
    if fmt is None:
        return dict(tensors)
    if fmt != FORMAT:
        raise WeightLoadError(f"{source} is stored as {fmt!r}, a weights format this version cannot read (it "
                              f"reads {FORMAT!r}); upgrade speedzoo or re-export the weights")
    out = {k: v for k, v in tensors.items() if not k.endswith(SCALE_SUFFIX)}
    for key, scale in tensors.items():
        if not key.endswith(SCALE_SUFFIX):
            continue
        name = key[: -len(SCALE_SUFFIX)]
        q = out.get(name)
        if q is None or q.dtype != torch.int8 or scale.ndim != 1 or scale.shape[0] != q.shape[0]:
            raise WeightLoadError(f"{source} is a damaged {FORMAT} file: scale {key} has no int8 tensor "
                                  f"{name} of {scale.shape[0] if scale.ndim == 1 else '?'} rows")
        out[name] = (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)
    found = sum(k.endswith(SCALE_SUFFIX) for k in tensors)
    if str(found) != str((metadata or {}).get(COUNT_KEY)):
        raise WeightLoadError(f"{source} is a damaged {FORMAT} file: it holds {found} scales but its metadata "
                              f"counts {(metadata or {}).get(COUNT_KEY)!r} int8 tensors")
    return out


def storage(int8: bool) -> str:
    """How a shipped file stores its weights, in words (a record's notes)."""
    return f"int8 weight-only ({FORMAT})" if int8 else "fp16"


def int8_bytes(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors file of the int8 copy, in memory (what zoo.weights.manifest.ship_file writes)."""
    from safetensors.torch import save

    tensors, meta = quantize_int8(state_dict, metadata)
    return save(tensors, metadata=meta)
