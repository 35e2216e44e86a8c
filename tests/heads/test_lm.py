"""LM head and the masked-diffusion objective: SUBS, the MDLM loss against its literal statement, the NELBO."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from heads.lm import TokenHead, subs_logits
from heads.lm.diffusion import LogLinearSchedule, antithetic_t, mask_tokens, mdlm_loss, nelbo, next_token_loss

V, MASK = 7, 6


def test_token_head_tied_and_untied():
    emb = nn.Embedding(V, 4)
    tied = TokenHead(4, V, emb)
    assert list(tied.parameters()) == [] and tied.weight is emb.weight
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(tied(x), x @ emb.weight.T)
    untied = TokenHead(4, V)
    assert untied.fc.weight.shape == (V, 4)
    with pytest.raises(ValueError, match="cannot tie"):
        TokenHead(5, V, emb)


def test_subs_rules():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, V)
    z = torch.tensor([[MASK, 1, MASK, 3, 0], [2, MASK, MASK, MASK, 4]])
    logp = subs_logits(logits, z, MASK)
    p = logp.exp()
    assert torch.all(p[..., MASK] == 0)                       # [MASK] is never predicted
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))
    keep = z != MASK
    onehot = torch.nn.functional.one_hot(z[keep], V).float()
    torch.testing.assert_close(p[keep], onehot)                  # unmasked positions carry over
    ref = logits[~keep][:, :MASK].log_softmax(-1)               # masked: softmax over the real tokens
    torch.testing.assert_close(logp[~keep][:, :MASK], ref)


def test_antithetic_times_are_stratified():
    g = torch.Generator().manual_seed(1)
    t = antithetic_t(8, generator=g)
    assert t.shape == (8,) and bool(((t > 0) & (t <= 1)).all())
    gaps = torch.diff(torch.sort(t).values)
    torch.testing.assert_close(gaps, torch.full((7,), 1 / 8), atol=1e-6, rtol=0)
    assert antithetic_t(4, generator=g, groups=3).shape == (3, 4)


def test_mask_rate_and_prompt_never_masked():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, MASK, (4, 4000))
    t = torch.tensor([0.1, 0.5, 0.9, 1.0])
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, :100] = False                                    # the prompt
    zt = mask_tokens(x0, t, MASK, LogLinearSchedule(1e-3), maskable, g)
    assert torch.equal(zt[:, :100], x0[:, :100])
    rate = (zt[:, 100:] == MASK).float().mean(1)
    torch.testing.assert_close(rate, (1 - 1e-3) * t, atol=0.03, rtol=0)
    assert torch.equal(zt[zt != MASK], x0[zt != MASK])


def test_mdlm_loss_is_the_literal_objective():
    """sum over sequences of (1/t) * sum over masked positions of -log p(x0 | z_t), / number of tokens."""
    torch.manual_seed(3)
    B, L = 3, 6
    x0 = torch.randint(0, MASK, (B, L))
    t = torch.tensor([0.2, 0.55, 0.9])
    zt = x0.clone()
    zt[0, [1, 4]] = MASK
    zt[1, [0, 2, 3]] = MASK
    zt[2, :5] = MASK
    logits = torch.randn(B, L, V)
    total = 0.0
    for b in range(B):
        for i in range(L):
            if zt[b, i] == MASK:
                lp = logits[b, i, :MASK] - torch.logsumexp(logits[b, i, :MASK], 0)
                total += -float(lp[x0[b, i]]) / float(t[b])
    loss = mdlm_loss(logits, x0, zt, t, MASK)
    assert math.isclose(float(loss), total / (B * L), rel_tol=1e-5)
    maskable = torch.ones(B, L, dtype=torch.bool)
    maskable[:, 0] = False
    maskable[1, 0] = True
    sft = mdlm_loss(logits, x0, zt, t, MASK, maskable=maskable)  # answer-length normalisation
    assert math.isclose(float(sft), total / int(maskable.sum()), rel_tol=1e-5)


def test_nelbo_of_a_uniform_and_an_oracle_denoiser():
    torch.manual_seed(0)
    x0 = torch.randint(0, MASK, (8, 256))  # the 1/t weight makes small t noisy: enough samples for 3%
    g = torch.Generator().manual_seed(0)
    uniform = lambda z: torch.zeros(*z.shape, V)                # noqa: E731
    nats, tokens = nelbo(uniform, x0, MASK, num_t=32, generator=g)
    per_tok = float(nats.sum() / tokens.sum())
    assert abs(per_tok - (1 - 1e-3) * math.log(V - 1)) < 0.03 * math.log(V - 1)
    oracle = lambda z: 50.0 * torch.nn.functional.one_hot(x0.repeat_interleave(32, 0)[: z.shape[0]], V).float()  # noqa
    nats, _ = nelbo(oracle, x0, MASK, num_t=32, generator=g, chunk=10_000)
    assert float(nats.max()) < 1e-6


def test_next_token_loss():
    torch.manual_seed(0)
    logits, x = torch.randn(2, 5, V), torch.randint(0, V, (2, 5))
    ref = -torch.stack([logits[b, i].log_softmax(-1)[x[b, i + 1]] for b in range(2) for i in range(4)]).mean()
    torch.testing.assert_close(next_token_loss(logits, x), ref)
