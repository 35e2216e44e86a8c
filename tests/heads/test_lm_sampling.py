"""Samplers: committed tokens stay, blocks are decoded in order, the threshold and schedule rules hold, caches
give the uncached result where they are exact, runs repeat under a seed."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from backbones.text_decoder import TextDecoder
from heads.lm.sampling import generate, linear_schedule
from zoo.data.text import CharTokenizer
from zoo.kinds.language_model import LanguageModel

TOK = CharTokenizer("abcdefgh")
MASK, END = TOK.mask_id, TOK.end_id


def _model(kind="diffusion-lm", layout="attn", depth=2, seed=0):
    torch.manual_seed(seed)
    net = TextDecoder(TOK.vocab_size, dim=32, depth=depth, num_heads=2, layout=layout,
                      causal=kind == "causal-lm", mlp_hidden=48, max_len=128)
    return LanguageModel(net, TOK, kind).eval()


class Recorder(nn.Module):
    """The model with every full-pass input and logits recorded; ``no_end`` forbids the end token."""

    def __init__(self, model, no_end=True, end_at=None):
        super().__init__()
        self.inner, self.no_end, self.end_at = model, no_end, end_at
        self.inputs, self.logits = [], []
        self.tokenizer, self.backbone = model.tokenizer, model.backbone

    causal = property(lambda self: self.inner.causal)
    vocab_size = property(lambda self: self.inner.vocab_size)
    max_len = property(lambda self: self.inner.max_len)

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, x, cache=None, commit=0):
        out = self.inner(x, cache=cache, commit=commit).clone()
        if self.no_end:
            out[..., END] = -1e4
        if self.end_at is not None and x.shape[1] > self.end_at:
            out[:, self.end_at, END] = 1e4
        self.inputs.append(x.clone())
        self.logits.append(out.float())
        return out


PROMPT = TOK.encode("abc")


@pytest.mark.parametrize("sampler", ["low_confidence", "random", "threshold", "ddpm", "ddpm_cache"])
def test_committed_tokens_stay_and_blocks_go_in_order(sampler):
    rec = Recorder(_model())
    out = generate(rec, PROMPT, 12, steps=None if sampler == "threshold" else 6, block=4, sampler=sampler,
                   threshold=0.3, temperature=1.0, seed=1)
    P = len(PROMPT)
    assert out.shape == (1, P + 12) and not bool((out == MASK).any())
    assert out[0, :P].tolist() == PROMPT
    xs = rec.inputs
    for a, b in zip(xs, xs[1:]):
        kept = a != MASK
        assert torch.equal(b[kept], a[kept])                       # a committed token never changes
    for x in xs:  # earlier blocks finished, later ones untouched, while a block decodes
        masked = (x[0, P:] == MASK).reshape(3, 4)
        current = int(masked.any(-1).nonzero()[0])
        assert not bool(masked[:current].any()) and bool(masked[current + 1:].all())
    assert torch.equal(xs[-1][xs[-1] != MASK], out[xs[-1] != MASK])


def test_low_confidence_follows_the_linear_schedule_and_confidence():
    rec = Recorder(_model())
    out = generate(rec, PROMPT, 8, steps=4, block=8, sampler="low_confidence", temperature=0.0)
    P = len(PROMPT)
    states = rec.inputs + [out]
    assert linear_schedule(8, 3) == [3, 3, 2]
    for k, (a, b, logits) in enumerate(zip(states, states[1:], rec.logits)):
        new = ((a == MASK) & (b != MASK))[0]
        assert int(new.sum()) == linear_schedule(8, 4)[k]
        lg = logits[0].clone()
        lg[:, MASK] = float("-inf")
        conf = lg.softmax(-1).max(-1).values
        conf[a[0] != MASK] = -1
        assert set(new.nonzero().flatten().tolist()) == set(conf.topk(int(new.sum())).indices.tolist())
        assert torch.equal(b[0][new], lg.argmax(-1)[new])


def test_threshold_rule():
    rec = Recorder(_model())
    tau = 0.2
    out = generate(rec, PROMPT, 8, block=4, sampler="threshold", threshold=tau, temperature=0.0)
    states = rec.inputs + [out]
    P = len(PROMPT)
    for a, b, logits in zip(states, states[1:], rec.logits):
        new = ((a == MASK) & (b != MASK))[0]
        lg = logits[0].clone()
        lg[:, MASK] = float("-inf")
        conf = lg.softmax(-1).max(-1).values
        masked = a[0] == MASK
        first = int(masked.nonzero()[0])
        blk = torch.zeros_like(masked)
        start = P + ((first - P) // 4) * 4
        blk[start:start + 4] = True
        cand = masked & blk
        expect = cand & (conf > tau)
        expect[torch.where(cand, conf, torch.full_like(conf, -1)).argmax()] = True   # at least one per step
        assert torch.equal(new, expect)


@pytest.mark.parametrize("layout", ["attn", "gla"])
def test_prefix_cache_is_exact_where_the_prefix_cannot_change(layout):
    """One layer: the prefix's keys / forward state depend on its (committed) tokens only, so the block-wise
    prefix cache gives exactly the uncached samples, with fewer full passes."""
    m = Recorder(_model(layout=layout, depth=1))
    a, sa = generate(m, PROMPT, 12, steps=6, block=4, temperature=1.0, seed=5, return_stats=True)
    b, sb = generate(m, PROMPT, 12, steps=6, block=4, temperature=1.0, seed=5, cache=True, return_stats=True)
    assert torch.equal(a, b)
    assert sb.forwards == 3 and sb.cached_forwards == 3 and sa.forwards == 6


@pytest.mark.parametrize("layout", ["attn", "gla", "gla,attn"])
def test_ar_kv_cache_equals_recomputation(layout):
    m = _model("causal-lm", layout=layout)
    a, sa = generate(m, [PROMPT, PROMPT], 10, temperature=1.0, seed=2, return_stats=True)
    b, sb = generate(m, [PROMPT, PROMPT], 10, temperature=1.0, seed=2, cache=True, return_stats=True)
    assert torch.equal(a, b) and sb.forwards == 1 and sa.forwards == 10


def test_ddpm_cache_reuses_predictions_without_changing_samples():
    m = _model()
    found = False
    for seed in range(4):
        a, sa = generate(m, PROMPT, 12, steps=12, sampler="ddpm", temperature=1.0, seed=seed, return_stats=True)
        b, sb = generate(m, PROMPT, 12, steps=12, sampler="ddpm_cache", temperature=1.0, seed=seed,
                         return_stats=True)
        assert torch.equal(a, b) and sb.forwards <= sa.forwards
        found |= sb.forwards < sa.forwards
    assert found


def test_seeded_runs_repeat_and_seeds_differ():
    m = _model()
    kw = dict(steps=6, block=6, temperature=1.0)
    a, b = generate(m, PROMPT, 12, seed=7, **kw), generate(m, PROMPT, 12, seed=7, **kw)
    c = generate(m, PROMPT, 12, seed=8, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    batch = generate(m, PROMPT, 12, seed=7, batch_size=3, **kw)
    assert batch.shape == (3, 15)


def test_end_token_ends_the_text():
    P = len(PROMPT)
    rec = Recorder(_model(), no_end=False, end_at=P + 2)
    out, st = generate(rec, PROMPT, 12, steps=12, block=4, temperature=0.0, return_stats=True)
    assert int(out[0, P + 2]) == END and bool((out[0, P + 2:] == END).all())
    assert st.steps == 4 and TOK.decode(out[0]).startswith("abc")     # blocks after the end are skipped
    ar = Recorder(_model("causal-lm"), no_end=False, end_at=P - 1)
    out = generate(ar, PROMPT, 6, temperature=0.0)
    assert out.shape == (1, P + 6) and bool((out[0, P:] == END).all())


def test_bad_arguments():
    m, ar = _model(), _model("causal-lm")
    with pytest.raises(ValueError, match="positive number"):
        generate(m, PROMPT, 0)
    with pytest.raises(ValueError, match="exceed the 8 tokens"):
        generate(m, PROMPT, 8, steps=9)
    with pytest.raises(ValueError, match="divisor"):
        generate(m, PROMPT, 8, block=3)
    with pytest.raises(ValueError, match="split evenly"):
        generate(m, PROMPT, 8, steps=3, block=4)
    with pytest.raises(ValueError, match="threshold"):
        generate(m, PROMPT, 8, sampler="threshold")
    with pytest.raises(ValueError, match="unknown sampler"):
        generate(m, PROMPT, 8, sampler="beam")
    with pytest.raises(ValueError, match="at least one token"):
        generate(ar, [], 4)
    with pytest.raises(ValueError, match="positions"):
        generate(m, PROMPT, 200)
