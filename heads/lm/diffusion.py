"""Masked (absorbing-state) diffusion for text: noise schedule, masking, the MDLM loss and its NELBO.

Forward process: each token of x0 is replaced by [MASK] independently with probability ``1 - alpha_t``.
Schedule: MDLM's log-linear one, sigma(t) = -log(1 - (1 - eps) t), i.e. ``alpha_t = 1 - (1 - eps) t``: clean
at t = 0, all but a fraction eps masked at t = 1. The continuous-time NELBO (MDLM eq. 10, with SUBS) is

    NELBO(x0) = E_{t ~ U(0,1)} E_{z_t} [ w(t) * sum_{i : z_t^i = [MASK]} -log p_theta(x0^i | z_t) ],
    w(t) = -alpha'_t / (1 - alpha_t) = 1 / t,

an upper bound on -log p(x0) in nats (the eps-sized prior term at t = 1 is left out, as MDLM does). Training
draws one t per sequence, stratified over the batch (antithetic: t_i = (u + i / B) mod 1, one u), and divides
the sum by the number of tokens that can be masked, so the loss reads in nats per token.

Prompt/answer (SFT) training: ``maskable`` marks the answer; the prompt is never masked and the loss is
normalised by the answer's length (LLaDA's SFT). Padding the answer with the end token and counting it as
answer teaches the model where text ends, which the samplers use for variable-length generation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from heads.lm import subs_logits

__all__ = ["LogLinearSchedule", "antithetic_t", "mask_tokens", "mdlm_loss", "nelbo", "next_token_loss"]


@dataclass(frozen=True)
class LogLinearSchedule:
    """alpha_t = 1 - (1 - eps) t: the probability that a token is still clean at time t."""

    eps: float = 1e-3

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - (1 - self.eps) * t

    def mask_rate(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.eps) * t

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'_t / (1 - alpha_t), the NELBO's weight of the masked-token cross-entropy: 1 / t."""
        return 1.0 / t


def antithetic_t(n: int, device=None, generator: torch.Generator | None = None, groups: int = 1) -> torch.Tensor:
    """``[groups, n]`` times in (0, 1], stratified along ``n``: t_i = 1 - ((u + i / n) mod 1), one u per group.

    (The 1 - (.) keeps t away from 0, where the weight 1/t is infinite.) ``groups=1`` returns ``[n]``.
    """
    u = torch.rand(groups, 1, generator=generator, device=device if generator is None else generator.device)
    t = 1 - torch.remainder(u + torch.arange(n, device=u.device) / n, 1.0)
    t = t.to(device) if device is not None else t
    return t[0] if groups == 1 else t


def mask_tokens(x0: torch.Tensor, t: torch.Tensor, mask_id: int, schedule: LogLinearSchedule = LogLinearSchedule(),
                maskable: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """z_t: each maskable token of ``x0 [B, L]`` becomes ``mask_id`` with probability mask_rate(t_b)."""
    r = torch.rand(x0.shape, generator=generator, device=x0.device if generator is None else generator.device)
    masked = r.to(x0.device) < schedule.mask_rate(t).to(x0.device)[:, None]
    if maskable is not None:
        masked &= maskable.bool()
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def _weighted_masked_ce(logits: torch.Tensor, x0: torch.Tensor, zt: torch.Tensor, t: torch.Tensor, mask_id: int,
                        schedule: LogLinearSchedule) -> torch.Tensor:
    """Per sequence: w(t) * sum over masked positions of -log p_theta(x0 | z_t) under SUBS, ``[B]`` fp32."""
    logp = subs_logits(logits, zt, mask_id)
    masked = zt == mask_id
    nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    nll = torch.where(masked, nll, torch.zeros_like(nll))  # carry-over positions: exactly 0 under SUBS
    return schedule.weight(t.float()) * nll.sum(-1)


def mdlm_loss(logits: torch.Tensor, x0: torch.Tensor, zt: torch.Tensor, t: torch.Tensor, mask_id: int,
              schedule: LogLinearSchedule = LogLinearSchedule(), maskable: torch.Tensor | None = None) -> torch.Tensor:
    """The MDLM training loss in nats per (maskable) token: sum_b w(t_b) * masked CE_b / #maskable tokens."""
    per_seq = _weighted_masked_ce(logits, x0, zt, t, mask_id, schedule)
    count = maskable.sum() if maskable is not None else torch.tensor(float(x0.numel()), device=x0.device)
    return per_seq.sum() / count.clamp_min(1).float()


@torch.no_grad()
def nelbo(logits_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, mask_id: int, num_t: int = 32,
          schedule: LogLinearSchedule = LogLinearSchedule(), maskable: torch.Tensor | None = None,
          generator: torch.Generator | None = None, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo NELBO of each sequence of ``x0 [B, L]`` over ``num_t`` antithetic times per sequence.

    Returns (nats ``[B]``: the bound on -log p(x0) summed over the sequence, tokens ``[B]``: how many it
    covers). nats / tokens is nats per token; divide by ln 2 for bits. ``chunk`` caps the sequences per
    forward pass (each sequence is noised ``num_t`` times).
    """
    B, L = x0.shape
    t = antithetic_t(num_t, device=x0.device, generator=generator, groups=B).reshape(-1)      # [B * K]
    xs = x0.repeat_interleave(num_t, 0)
    ms = maskable.repeat_interleave(num_t, 0) if maskable is not None else None
    zt = mask_tokens(xs, t, mask_id, schedule, ms, generator)
    out = []
    for i in range(0, xs.shape[0], chunk):
        logits = logits_fn(zt[i:i + chunk])
        out.append(_weighted_masked_ce(logits, xs[i:i + chunk], zt[i:i + chunk], t[i:i + chunk], mask_id, schedule))
    nats = torch.cat(out).reshape(B, num_t).mean(1)
    tokens = maskable.sum(-1).float() if maskable is not None else torch.full((B,), float(L), device=x0.device)
    return nats, tokens


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Autoregressive cross-entropy: position i predicts token i + 1 (nats per predicted token)."""
    V = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V).float(), tokens[:, 1:].reshape(-1),
                                             reduction=reduction)


BITS_PER_NAT = 1 / math.log(2)
