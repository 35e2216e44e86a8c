"""Weight-only storage for shipped weight files: ``int8-rowwise-v1`` and ``int4-group32-v1``.

The package ships its own weights inside a fixed budget (zoo.weights.manifest: 8 MB a file, 20 MB in all);
fp16 language-model and CLIP exports do not fit together, quantized copies do. Compute stays in floating point:
loaders dequantize on read (``zoo.hub.read_state_dict`` does it when a file's metadata names a format here).

- ``int8-rowwise-v1`` (``--quant int8``): every floating tensor with ``ndim >= 2`` and at least
  :data:`MIN_ELEMENTS` elements is stored as int8 with one symmetric fp32 scale per output row (row = dim 0,
  scale = absmax / 127, so each element is off by at most scale / 2).
- ``int4-group32-v1`` (``--quant int4``, about a quarter of fp16): the same tensors, when their last dimension
  is a multiple of :data:`GROUP`, as 4-bit codes in groups of 32 consecutive elements of a row, one fp16 scale a
  group (scale = absmax / 7, codes -7..7 stored as ``code + 8``, two to a byte: element 2i in the low nibble,
  2i + 1 in the high one). Groups this small keep a language model within ~0.01 nats/char of fp16 (measured on
  the shipped files: see their records' notes).
The rest (biases, norms, small tensors, and for int4 tensors whose rows do not split into groups) stays fp16.

Key scheme: the scale of tensor ``name`` is stored as ``name@int8_scale`` / ``name@int4_scale``. ``@`` never
appears in a state-dict key that PyTorch builds from module attribute names (they are Python identifiers joined by
dots), and :func:`quantize` refuses any input key that ends with a scale suffix, so a scale key can never shadow a
real one and :func:`dequantize` knows the quantized tensors from their keys alone.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from zoo.errors import WeightLoadError

FORMATS = {"int8": "int8-rowwise-v1", "int4": "int4-group32-v1"}
"""``--quant`` choice -> the ``weights_format`` a file's metadata names."""
FORMAT_KEY = "weights_format"
SUFFIXES = {"int8": "@int8_scale", "int4": "@int4_scale"}
MIN_ELEMENTS = 4096
"""Smaller tensors stay fp16: their scales would cost more than quantizing saves, and they are the sensitive ones."""
GROUP = 32
"""Elements per int4 scale (consecutive along a row's last dimension)."""

__all__ = ["FORMATS", "FORMAT_KEY", "SUFFIXES", "quantize", "dequantize", "is_quantized", "quantized_bytes",
           "storage"]


def _count_key(quant: str) -> str:
    """How many tensors are quantized (e.g. ``int8_tensors``): a file that lost a scale is refused, not misread."""
    return f"{quant}_tensors"


def _quant_of(fmt: str) -> Optional[str]:
    return next((q for q, f in FORMATS.items() if f == fmt), None)


def _quantizable(t: torch.Tensor, quant: str) -> bool:
    ok = t.is_floating_point() and t.ndim >= 2 and t.numel() >= MIN_ELEMENTS
    return ok and (quant != "int4" or t.shape[-1] % GROUP == 0)


def _int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = t.float().reshape(t.shape[0], -1)
    scale = rows.abs().amax(dim=1) / 127.0
    q = torch.round(rows / torch.where(scale > 0, scale, 1.0)[:, None]).clamp_(-127, 127)
    return q.to(torch.int8).reshape(t.shape).contiguous(), scale.contiguous()


def _int4_groups(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    groups = t.float().reshape(*t.shape[:-1], t.shape[-1] // GROUP, GROUP)
    scale = (groups.abs().amax(dim=-1) / 7.0).half()        # rounded first: codes are exact for the stored scale
    s = scale.float()
    codes = torch.round(groups / torch.where(s > 0, s, 1.0)[..., None]).clamp_(-7, 7).to(torch.uint8) + 8
    codes = codes.reshape(*t.shape[:-1], t.shape[-1])
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.contiguous(), scale.contiguous()


def quantize(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
             quant: str = "int8") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the ``quant`` (``int8`` / ``int4``) copy of ``state_dict``; ``metadata`` (e.g. an
    export's) is carried over with ``weights_format`` added. Raises ValueError for a key that ends with a scale
    suffix or an unknown ``quant``."""
    if quant not in FORMATS:
        raise ValueError(f"unknown weight quantization {quant!r}; choose one of {sorted(FORMATS)}")
    clash = [k for k in state_dict if k.endswith(tuple(SUFFIXES.values()))]
    if clash:
        raise ValueError(f"keys {clash[:3]} end with a scale suffix ({', '.join(SUFFIXES.values())}); this state "
                         f"dict is already quantized or cannot be stored as {FORMATS[quant]}")
    encode, suffix = (_int8_rows if quant == "int8" else _int4_groups), SUFFIXES[quant]
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        if not _quantizable(t, quant):
            out[name] = t.to(torch.float16) if t.is_floating_point() else t
            continue
        out[name], out[name + suffix] = encode(t)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[FORMAT_KEY] = FORMATS[quant]
    meta[_count_key(quant)] = str(sum(k.endswith(suffix) for k in out))
    return out, meta


def is_quantized(metadata: Mapping[str, str] | None) -> bool:
    """Whether a safetensors file's metadata names one of the formats here."""
    return _quant_of((metadata or {}).get(FORMAT_KEY, "")) is not None


def _damaged(source: str, fmt: str, what: str) -> WeightLoadError:
    return WeightLoadError(f"{source} is a damaged {fmt} file: {what}")


def _decode(quant: str, q: torch.Tensor, scale: torch.Tensor, key: str, source: str) -> torch.Tensor:
    fmt = FORMATS[quant]
    if quant == "int8":
        if q.dtype != torch.int8 or scale.ndim != 1 or scale.shape[0] != q.shape[0]:
            raise _damaged(source, fmt, f"scale {key} has no int8 tensor of {scale.shape[0] if scale.ndim == 1 else '?'} rows")
        return (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)
    cols = q.shape[-1] * 2 if q.ndim else 0
    if q.dtype != torch.uint8 or cols % GROUP or tuple(scale.shape) != (*q.shape[:-1], cols // GROUP):
        raise _damaged(source, fmt, f"scale {key} of shape {tuple(scale.shape)} does not match packed int4 codes "
                                    f"of shape {tuple(q.shape)}")
    codes = torch.stack((q & 0xF, q >> 4), dim=-1).reshape(*q.shape[:-1], cols).to(torch.int8) - 8
    groups = codes.float().reshape(*q.shape[:-1], cols // GROUP, GROUP) * scale.float()[..., None]
    return groups.reshape(*q.shape[:-1], cols)


def dequantize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None,
               source: str = "weights") -> dict[str, torch.Tensor]:
    """The floating state dict of a file in a format here (quantized tensors as fp32 ``code * scale``); tensors
    of a file without a format come back unchanged. A damaged file raises WeightLoadError."""
    fmt = (metadata or {}).get(FORMAT_KEY)
    if fmt is None:
        return dict(tensors)
    quant = _quant_of(fmt)
    if quant is None:
        raise WeightLoadError(f"{source} is stored as {fmt!r}, a weights format this version cannot read (it "
                              f"reads {', '.join(repr(f) for f in FORMATS.values())}); upgrade speedzoo or re-export "
                              f"the weights")
    suffix = SUFFIXES[quant]
    out = {k: v for k, v in tensors.items() if not k.endswith(suffix)}
    for key, scale in tensors.items():
        if not key.endswith(suffix):
            continue
        name = key[: -len(suffix)]
        if name not in out:
            raise _damaged(source, fmt, f"scale {key} has no tensor {name}")
        out[name] = _decode(quant, out[name], scale, key, source)
    found = sum(k.endswith(suffix) for k in tensors)
    if str(found) != str((metadata or {}).get(_count_key(quant))):
        raise _damaged(source, fmt, f"it holds {found} scales but its metadata counts "
                                    f"{(metadata or {}).get(_count_key(quant))!r} {quant} tensors")
    return out


def storage(quant: Optional[str]) -> str:
    """How a shipped file stores its weights, in words (a record's notes)."""
    return f"{quant} weight-only ({FORMATS[quant]})" if quant else "fp16"


def quantized_bytes(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                    quant: str = "int8") -> bytes:
    """The safetensors file of the ``quant`` copy, in memory (what zoo.weights.manifest.ship_file writes)."""
    from safetensors.torch import save

    tensors, meta = quantize(state_dict, metadata, quant)
    return save(tensors, metadata=meta)
