"""What an image or spectrogram model accepts, checked before its backbone runs, so a bad input ends in one
:class:`~zoo.errors.InputShapeError` naming the fix rather than a raw error from deep inside torch.

Refused (as timm's models would fail on them, but clearly): anything not a tensor; complex, bool or integer
tensors (a uint8 image is not yet scaled and normalised: use the model's transform, or ``x.float() / 255``
then the mean/std of ``model.pretrained_cfg``); a floating dtype other than the model's outside autocast
(``x.to(dtype)``: float64 is not converted silently, as torch does not); rank other than 4 (one image:
``x.unsqueeze(0)``); a batch of 0. Accepted as they are: non-contiguous and channels-last tensors. NaN and
inf propagate to the logits (as in torch and timm), unless the model's ``check_finite_inputs`` is set to
True, which refuses them (one reduction per batch). Channels and size are the backbone's patch embedding's
checks, which run next.
"""
from __future__ import annotations

import torch

from zoo.errors import InputShapeError


def _autocast_on(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return False


def check_image_batch(x, dtype: torch.dtype | None = None, finite: bool = False, what: str = "image") -> None:
    """Raise :class:`InputShapeError` unless ``x`` is a [B, C, H, W] floating batch with B >= 1 that a model
    whose parameters are of ``dtype`` can take; with ``finite``, also when it holds NaN or inf."""
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"expected a torch.Tensor [B, C, H, W], got {type(x).__name__}; convert it with "
                              f"torch.as_tensor or the model's transform (timm.data.create_transform).")
    if x.is_complex() or x.dtype == torch.bool or not x.is_floating_point():
        raise InputShapeError(
            f"expected a floating-point {what} batch, got dtype {x.dtype}. Scale and normalise it first: the model's "
            f"transform (timm.data.create_transform(**timm.data.resolve_data_config(model=model))) does, or "
            f"x.float() / 255 followed by the mean/std of model.pretrained_cfg.")
    if x.ndim != 4:
        hint = " For one input add the batch dimension: x.unsqueeze(0)." if x.ndim == 3 else ""
        raise InputShapeError(f"expected a batch of {what}s of rank 4 [B, C, H, W], got shape {tuple(x.shape)}.{hint}")
    if x.shape[0] == 0:
        raise InputShapeError(f"got a batch of 0 {what}s (shape {tuple(x.shape)}); pass at least one, or skip the "
                              f"call for an empty batch.")
    if dtype is not None and x.dtype != dtype and not _autocast_on(x.device):
        raise InputShapeError(f"the {what} batch is {x.dtype} but the model's weights are {dtype}; convert it with "
                              f"x.to({dtype}), or the model with model.to({x.dtype}), or run under torch.autocast.")
    if finite and not bool(torch.isfinite(x).all()):
        raise InputShapeError(f"the {what} batch holds NaN or inf values ({int((~torch.isfinite(x)).sum())} of "
                              f"{x.numel()}); fix the data (a failed decode or a division by zero upstream), or set "
                              f"model.check_finite_inputs = False to let them through.")


def check_token_batch(tokens, vocab_size: int, max_len: int | None = None) -> None:
    """Raise :class:`InputShapeError` unless ``tokens`` is an integer [B, T] batch with B, T >= 1, ids in
    [0, vocab_size) and T <= max_len (over-long text is refused, not truncated: cutting a prompt silently
    changes what the model answers). For the language-model and text-tower kinds' input checks."""
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex() \
            or tokens.dtype == torch.bool or tokens.ndim != 2:
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise InputShapeError(f"expected integer token ids [B, T], got {got}; tokenise the text first "
                              f"(for one sequence: ids.unsqueeze(0)).")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InputShapeError(f"got an empty token batch {tuple(tokens.shape)}; pass at least one token in each of "
                              f"at least one sequence (an empty prompt needs a start token).")
    if max_len is not None and tokens.shape[1] > max_len:
        raise InputShapeError(f"sequence of {tokens.shape[1]} tokens exceeds max_len {max_len}; shorten or split "
                              f"the text (tokens[:, -{max_len}:] keeps the end).")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise InputShapeError(f"token ids must lie in [0, {vocab_size}) for this vocabulary, got ids from {lo} to "
                              f"{hi}; encode the text with the model's own tokenizer.")
