"""Language-model heads: decoder features ``[B, T, C]`` -> token logits ``[B, T, V]``.

- :class:`TokenHead`: the output projection, tied to the token embedding (no parameters of its own: the
  embedding's weight is read at call time, so the state dict holds it once and safetensors sees no shared
  tensors) or untied (its own ``fc``).
- :func:`subs_logits`: MDLM's SUBS parameterisation of the denoiser's output. The [MASK] logit is -inf (the
  denoiser never predicts [MASK]); at positions whose input is not [MASK] the distribution is the input token
  itself (carry-over), so a loss over it is zero there and only masked positions are learned.

The masked-diffusion objective and its NELBO are in ``heads.lm.diffusion``; the samplers in
``heads.lm.sampling``. Heads know nothing of the registry or of Lightning.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TokenHead", "subs_logits"]


class TokenHead(nn.Module):
    """Features -> vocabulary logits; ``tie_to`` an ``nn.Embedding`` shares its weight (GPT-2, LLaDA-style)."""

    def __init__(self, dim: int, vocab_size: int, tie_to: nn.Embedding | None = None):
        super().__init__()
        self.in_features, self.vocab_size = dim, vocab_size
        self.tied = tie_to is not None
        if self.tied:
            if tie_to.weight.shape != (vocab_size, dim):
                raise ValueError(f"cannot tie a [{vocab_size}, {dim}] head to an embedding of shape "
                                 f"{tuple(tie_to.weight.shape)}")
            self.__dict__["_embed"] = tie_to  # not a submodule: its weight belongs to the backbone
            self.fc = None
        else:
            self.fc = nn.Linear(dim, vocab_size, bias=False)
            nn.init.normal_(self.fc.weight, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        return self._embed.weight if self.tied else self.fc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, vocab_size={self.vocab_size}, tied={self.tied}"


def subs_logits(logits: torch.Tensor, tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: log-probabilities (fp32) with [MASK] never predicted and unmasked inputs carried over.

    ``logits [B, T, V]`` of the denoiser on the noised ``tokens [B, T]``. Returns log p_theta(x0 | z_t):
    at masked positions log_softmax with the [MASK] entry at -inf; elsewhere 0 at the input token and -inf
    at every other one.
    """
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    logp = logits.log_softmax(-1)
    keep = tokens != mask_id
    if keep.any():
        carry = torch.full_like(logp, float("-inf")).scatter_(-1, tokens.unsqueeze(-1), 0.0)
        logp = torch.where(keep.unsqueeze(-1), carry, logp)
    return logp
