"""torch.compile through the Triton paths: the launchers are custom ops (speedzoo::*), so dynamo traces the
autograd Functions around them in one graph instead of stepping into Triton's launch code (which it cannot
trace), and the compiled forward and backward equal eager ones."""
import pytest
import torch

from kernels.causal_conv1d import causal_conv1d
from kernels.common import rel_rms
from kernels.norm import layer_norm, rms_norm


def _values_and_grads(fn, leaves):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
    return outs, torch.autograd.grad(loss, leaves)


def _check_compiled_equals_eager(fn, leaves):
    explain = torch._dynamo.explain(fn)(*leaves)
    assert (explain.graph_count, explain.graph_break_count) == (1, 0), explain.break_reasons
    torch._dynamo.reset()
    outs, grads = _values_and_grads(fn, leaves)
    outs_c, grads_c = _values_and_grads(torch.compile(fn, backend="aot_eager", fullgraph=True), leaves)
    for a, b in zip(outs_c + grads_c, outs + grads):
        assert rel_rms(a, b) < 1e-6


@pytest.mark.parametrize("reverse", [False, True])
def test_causal_conv1d_compiles(reverse):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 6, 9, generator=g), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    _check_compiled_equals_eager(lambda x, w, b: causal_conv1d(x, w, b, activation="silu", reverse=reverse), [x, w, b])


@pytest.mark.parametrize("norm", [rms_norm, layer_norm])
def test_fused_add_norm_compiles(norm):
    g = torch.Generator().manual_seed(1)
    x, r = torch.randn(3, 5, 16, generator=g), torch.randn(3, 5, 16, generator=g)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    _check_compiled_equals_eager(
        lambda x, r, w, b: norm(x, w, b, residual=r, prenorm=True, residual_in_fp32=True), [x, r, w, b])


def test_vim_training_step_traces_as_one_graph():
    """The whole Vim (scan, conv, add+norm on the Triton path) is one graph for torch.compile, forward and loss."""
    import zoo

    model = zoo.create_model("vim_micro_patch4_32", depth=1, img_size=8, num_classes=10).train()
    explain = torch._dynamo.explain(lambda x: model(x).square().sum())(torch.randn(1, 3, 8, 8))
    assert (explain.graph_count, explain.graph_break_count) == (1, 0), explain.break_reasons
