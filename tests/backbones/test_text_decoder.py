"""Text decoder: layouts, causality of the twin, and cached decoding against recomputation."""
from __future__ import annotations

import pytest
import torch

from backbones.text_decoder import TEXT_DECODER_CONFIGS, TextDecoder, parse_layout

V = 12


def _net(layout, causal, depth=2, **kw):
    torch.manual_seed(0)
    return TextDecoder(V, dim=32, depth=depth, num_heads=2, layout=layout, causal=causal, mlp_hidden=48,
                       **kw).eval()


def test_layout_patterns():
    assert parse_layout("gla", 3) == ["gla"] * 3
    assert parse_layout("mamba*3,attn", 4) == ["mamba"] * 3 + ["attn"]
    assert parse_layout("attn,gla", 4) == ["attn", "gla", "attn", "gla"]
    with pytest.raises(ValueError, match="unknown mixer"):
        parse_layout("conv", 2)
    with pytest.raises(ValueError, match="does not fill depth"):
        parse_layout("attn,gla,gla", 4)


@pytest.mark.parametrize("layout", ["attn", "gla", "mamba", "gla,attn"])
def test_causal_twin_never_sees_the_future(layout):
    net = _net(layout, causal=True)
    x = torch.randint(0, V, (2, 24))
    y = x.clone()
    y[:, 15] = (y[:, 15] + 1) % V
    with torch.no_grad():
        a, b = net(x), net(y)
    assert torch.equal(a[:, :15], b[:, :15])
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 1e-4
    bi = _net(layout, causal=False)
    with torch.no_grad():  # the bidirectional network does see it
        assert (bi(x)[:, :15] - bi(y)[:, :15]).abs().max() > 1e-4


def test_causal_mamba_drops_the_backward_direction():
    net = _net("mamba", causal=True)
    names = [n for n, _ in net.named_parameters()]
    backward = ("A_b_log", "D_b", "conv1d_b", "x_proj_b", "dt_proj_b")
    assert not any(part in backward for n in names for part in n.split("."))
    assert any("A_b_log" in n for n, _ in _net("mamba", causal=False).named_parameters())
    assert not net.supports_cache


@pytest.mark.parametrize("layout", ["attn", "gla", "gla,attn"])
def test_cached_decoding_equals_recomputation(layout):
    """KV cache (softmax) and carried state (GLA): a prefix, then chunks of 1, 3 and 5 tokens."""
    net = _net(layout, causal=True)
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        full = net(x)
        cache = net.new_cache()
        outs, pos = [net(x[:, :11], cache=cache, commit=11)], 11
        for n in (1, 3, 5):
            outs.append(net(x[:, pos:pos + n], cache=cache, commit=n))
            pos += n
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["attn", "gla"])
def test_bidirectional_prefix_cache(layout):
    """One layer: the window on the cached prefix equals the full pass exactly (the prefix's keys or forward
    state depend on the tokens only). A refresh (full pass that stores the prefix) equals the plain pass."""
    x = torch.randint(0, V, (2, 24))
    one = _net(layout, causal=False, depth=1)
    with torch.no_grad():
        full = one(x)
        cache = one.new_cache()
        one(x[:, :10], cache=cache, commit=10)
        window = one(x[:, 10:], cache=cache)
    torch.testing.assert_close(window, full[:, 10:], atol=1e-5, rtol=1e-4)
    deep = _net(layout, causal=False, depth=2)
    with torch.no_grad():
        cache = deep.new_cache()
        torch.testing.assert_close(deep(x, cache=cache, commit=10), deep(x), atol=1e-6, rtol=1e-5)
        assert cache.length == 10
        with pytest.raises(ValueError, match="starts at"):
            deep(x[:, 12:], cache=cache, start=12)


def test_shipped_sizes_fit_an_8_mb_fp16_file():
    chars = 65 + 2
    for name in ("small_attn", "small_gla", "small_mamba", "small_hybrid"):
        net = TextDecoder(chars, **TEXT_DECODER_CONFIGS[name])
        n = sum(p.numel() for p in net.parameters())  # the head is tied to the embedding
        assert 3.5e6 < n and 2 * n < 8e6, (name, n)


def test_bad_input():
    net = _net("attn", causal=False, max_len=16)
    with pytest.raises(ValueError, match="exceeds max_len"):
        net(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        net(torch.zeros(17, dtype=torch.long))
    with pytest.raises(ValueError, match="Mamba"):
        _net("mamba", causal=False).new_cache()
