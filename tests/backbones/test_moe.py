"""MoE routing (kernels.moe.routing) against literal re-statements on tiny cases, and the MoE MLP layer
(backbones.layers.moe): which tokens go where, gates, drops, losses by hand, balancing, group boundaries."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backbones.layers.aux_loss import collect_aux_losses, collect_aux_stats
from backbones.layers.moe import MoEMlp, moe_layer_indices
from kernels.moe.routing import (apply_capacity, balance_loss, capacity, expert_choice_route, expert_load,
                                 router_scores, router_z_loss, soft_moe_weights, top_k_route, update_bias)


# -- routing functions ----------------------------------------------------------------------------------------
def test_softmax_top2_with_and_without_renormalisation():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 3.5]])
    scores = router_scores(logits, "softmax")
    z0 = math.exp(2) + 1 + math.exp(1) + math.exp(-1)
    z1 = 1 + math.exp(3) + 1 + math.exp(3.5)
    idx, gates = top_k_route(scores, 2, renormalize=False)
    assert idx.tolist() == [[0, 2], [3, 1]]
    torch.testing.assert_close(gates, torch.tensor([[math.exp(2) / z0, math.exp(1) / z0],
                                                    [math.exp(3.5) / z1, math.exp(3) / z1]]))
    _, renorm = top_k_route(scores, 2, renormalize=True)
    e = math.exp
    torch.testing.assert_close(renorm, torch.tensor([[e(2) / (e(2) + e(1)), e(1) / (e(2) + e(1))],
                                                     [e(3.5) / (e(3.5) + e(3)), e(3) / (e(3.5) + e(3))]]))


def test_sigmoid_scores_are_per_expert():
    logits = torch.tensor([[0.0, 2.0, -2.0]])
    s = router_scores(logits, "sigmoid")
    torch.testing.assert_close(s, torch.tensor([[0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))]]))
    idx, gates = top_k_route(s, 2, renormalize=True)
    assert idx.tolist() == [[1, 0]]
    a, b = 1 / (1 + math.exp(-2)), 0.5
    torch.testing.assert_close(gates, torch.tensor([[a / (a + b), b / (a + b)]]))


def test_bias_moves_the_choice_but_not_the_gate():
    scores = torch.tensor([[0.5, 0.3, 0.2]])
    bias = torch.tensor([0.0, 0.0, 0.4])
    idx, gates = top_k_route(scores, 1, renormalize=False, bias=bias)
    assert idx.tolist() == [[2]] and gates.tolist() == [[pytest.approx(0.2)]]
    idx, gates = top_k_route(scores, 2, renormalize=True, bias=bias)
    assert idx.tolist() == [[2, 0]]
    torch.testing.assert_close(gates, torch.tensor([[0.2 / 0.7, 0.5 / 0.7]]))


def test_capacity_formula():
    assert capacity(10, 4, 2, 1.25) == 7  # ceil(1.25 * 2 * 10 / 4) = ceil(6.25)
    assert capacity(8, 4, 1, 1.0) == 2
    with pytest.raises(ValueError, match="capacity_factor"):
        capacity(8, 4, 1, 0.0)


def test_capacity_drop_in_token_order_choice_major():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    gates = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    kept, g = apply_capacity(idx, gates, num_experts=3, cap=2, priority="token")
    # first choices in token order: t0, t1 fill expert 0, t2's first choice overflows, t3 -> expert 1;
    # second choices: t0 -> 1 (2nd of 2), t1 -> 2, t2 -> 1 (full), t3 -> 0 (full)
    assert kept.tolist() == [[0, 1], [0, 2], [-1, -1], [1, -1]]
    torch.testing.assert_close(g, torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.0, 0.0], [0.7, 0.0]]))


def test_capacity_drop_by_score_priority():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0]])
    gates = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    kept, g = apply_capacity(idx, gates, num_experts=3, cap=2, priority="score")
    # service order by first gate: t2 (0.9), t3 (0.7), t0 (0.6), t1 (0.5)
    # first choices: t2 -> 0, t3 -> 1, t0 -> 0, t1 -> 0 overflows; second: t2 -> 1, t3 -> 0 full, t0 -> 1 full, t1 -> 2
    assert kept.tolist() == [[0, -1], [-1, 2], [0, 1], [1, -1]]
    torch.testing.assert_close(g, torch.tensor([[0.6, 0.0], [0.0, 0.5], [0.9, 0.1], [0.7, 0.0]]))
    with pytest.raises(ValueError, match="priority"):
        apply_capacity(idx, gates, 3, 2, priority="random")


def test_expert_choice_picks_top_tokens_per_group_and_expert():
    scores = torch.tensor([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]],
                           [[0.3, 0.7], [0.5, 0.5], [0.1, 0.9]]])
    idx, gates = expert_choice_route(scores, cap=2)
    # group 0: expert 0 takes tokens 0, 2; expert 1 takes tokens 1, 2. group 1: expert 0 -> 1, 0; expert 1 -> 2, 0
    assert idx.tolist() == [[0, -1], [-1, 1], [0, 1], [0, 1], [0, -1], [-1, 1]]
    torch.testing.assert_close(gates, torch.tensor([[0.9, 0.0], [0.0, 0.8], [0.6, 0.4],
                                                    [0.3, 0.7], [0.5, 0.0], [0.0, 0.9]]))


def test_expert_choice_never_looks_across_groups():
    torch.manual_seed(0)
    scores = torch.rand(3, 5, 4)
    idx, gates = expert_choice_route(scores, cap=2)
    boosted = scores.clone()
    boosted[1] += 10.0  # group 1 now outscores every other group's tokens
    idx2, gates2 = expert_choice_route(boosted, cap=2)
    for g in (0, 2):
        rows = slice(5 * g, 5 * g + 5)
        assert torch.equal(idx[rows], idx2[rows]) and torch.equal(gates[rows], gates2[rows])
    assert (expert_load(idx.reshape(3, 5, 4)[1], 4) == 2).all()  # every expert takes exactly cap per group


def test_balance_loss_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    # both tokens chose expert 0: f = (1, 0), P = (0.55, 0.45) -> 2 * 0.55
    assert balance_loss(probs, torch.tensor([[0], [0]]), 2).item() == pytest.approx(1.1)
    # top-2 over 3 experts, slots: 0, 1 | 0, 2 -> f = (2/4, 1/4, 1/4)
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3]])
    expected = 3 * (0.5 * 0.55 + 0.25 * 0.2 + 0.25 * 0.25)
    assert balance_loss(probs, torch.tensor([[0, 1], [0, 2]]), 3).item() == pytest.approx(expected)
    probs.requires_grad_(True)
    balance_loss(probs, torch.tensor([[0], [0]]), 3).backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[1.5, 0.0, 0.0], [1.5, 0.0, 0.0]]))  # E f_i / T


def test_z_loss_by_hand():
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    lse = [math.log(2), math.log(math.exp(1) + math.exp(2))]
    assert router_z_loss(logits).item() == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2)


def test_bias_update_rule_follows_sign_of_mean_minus_load():
    bias = torch.zeros(4)
    update_bias(bias, torch.tensor([3.0, 1.0, 2.0, 2.0]), rate=0.01)
    torch.testing.assert_close(bias, torch.tensor([-0.01, 0.01, 0.0, 0.0]))
    assert expert_load(torch.tensor([[0, -1], [0, 3]]), 4).tolist() == [2.0, 0.0, 0.0, 1.0]


def test_soft_moe_weights_by_hand():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]]])  # 3 tokens, 2 slots
    dispatch, combine = soft_moe_weights(logits)
    col = torch.tensor([[1.0, math.e ** 2, math.e], [math.e, 1.0, math.e]])  # exp per slot over tokens
    torch.testing.assert_close(dispatch[0], (col / col.sum(1, keepdim=True)).t())
    torch.testing.assert_close(combine[0], logits[0].softmax(-1))


# -- the layer ------------------------------------------------------------------------------------------------
def _expert(layer: MoEMlp, e: int, v: torch.Tensor) -> torch.Tensor:
    return F.gelu(v @ layer.w1[e] + layer.b1[e]) @ layer.w2[e] + layer.b2[e]


def _randomise(layer: MoEMlp) -> MoEMlp:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_token_choice_layer_is_the_routed_sum(capacity_factor):
    layer = _randomise(MoEMlp(6, 10, num_experts=4, k=2, capacity_factor=capacity_factor))
    x = torch.randn(2, 5, 6)
    y = layer(x)
    flat = x.reshape(-1, 6)
    logits = flat @ layer.router.weight.t()
    scores = logits.softmax(-1)
    top = scores.topk(2, -1)
    expected = torch.zeros_like(flat)
    cap = math.ceil(capacity_factor * 2 * 10 / 4) if capacity_factor else 10 ** 9
    used = [0] * 4
    keep = torch.ones(10, 2, dtype=torch.bool)
    for j in range(2):  # literal capacity: choice level by level, tokens in order
        for t in range(10):
            e = int(top.indices[t, j])
            keep[t, j] = used[e] < cap
            used[e] += 1
    for t in range(10):
        g = top.values[t] / top.values[t].sum()
        for j in range(2):
            if keep[t, j]:
                expected[t] += g[j] * _expert(layer, int(top.indices[t, j]), flat[t])
    torch.testing.assert_close(y.reshape(-1, 6), expected, rtol=1e-5, atol=1e-5)
    stats = collect_aux_stats(layer)
    assert stats["expert_load"].shape == (4,) and stats["expert_load"].sum().item() == pytest.approx(1.0)
    if capacity_factor:
        assert stats["moe_dropped"].item() == pytest.approx(1 - keep.float().mean().item())


def test_token_choice_losses_by_hand_and_only_in_training():
    layer = _randomise(MoEMlp(6, 8, num_experts=3, k=1, balance_weight=0.1, z_weight=0.01))
    x = torch.randn(7, 6)
    layer(x)
    losses = collect_aux_losses(layer)
    logits = x @ layer.router.weight.t()
    probs = logits.softmax(-1)
    f = torch.bincount(probs.argmax(-1), minlength=3).float() / 7
    torch.testing.assert_close(losses["moe_balance"], 0.1 * 3 * (f * probs.mean(0)).sum())
    torch.testing.assert_close(losses["moe_z"], 0.01 * torch.logsumexp(logits, -1).pow(2).mean())
    layer.eval()
    layer(x)
    assert collect_aux_losses(layer) == {} and "expert_load" in collect_aux_stats(layer)


def test_router_and_experts_get_gradients():
    layer = MoEMlp(8, 16, num_experts=4, k=2)
    x = torch.randn(3, 4, 8, requires_grad=True)
    layer(x).square().sum().backward()
    for name in ("w1", "b1", "w2", "b2", "router.weight"):
        g = layer.get_parameter(name).grad
        assert g is not None and g.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_aux_loss_free_bias_buffer_updates_in_training_and_selects_only():
    layer = MoEMlp(6, 8, num_experts=4, k=1, bias_update_rate=0.05, renormalize=False)
    assert "expert_bias" in layer.state_dict()
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 5.0  # expert 0 wins every token with x[:, 0] > 0
    x = torch.randn(16, 6).abs()
    layer(x)
    load = collect_aux_stats(layer)["expert_load"]
    assert load.tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(layer.expert_bias, torch.tensor([-0.05, 0.05, 0.05, 0.05]))
    layer.eval()
    layer(x)
    torch.testing.assert_close(layer.expert_bias, torch.tensor([-0.05, 0.05, 0.05, 0.05]))  # frozen in eval
    with torch.no_grad():  # a bias that overrides the scores moves the choice, gates stay the unbiased score
        layer.expert_bias.copy_(torch.tensor([-10.0, 10.0, 0.0, 0.0]))
    y = layer(x)
    scores = (x @ layer.router.weight.t()).softmax(-1)
    expected = torch.stack([scores[t, 1] * _expert(layer, 1, x[t]) for t in range(16)])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)


def test_expert_choice_layer_stays_within_each_image():
    layer = _randomise(MoEMlp(6, 8, num_experts=4, k=1, router="expert_choice", capacity_factor=1.0))
    x = torch.randn(3, 8, 6)
    y = layer(x)
    x2 = x.clone()
    x2[1] = torch.randn(8, 6) * 10  # another image 1
    y2 = layer(x2)
    torch.testing.assert_close(y2[0], y[0]), torch.testing.assert_close(y2[2], y[2])
    # literal: per image, expert e takes its 2 best tokens (ceil(1 * 1 * 8 / 4)) with its softmax score as gate
    scores = (x @ layer.router.weight.t()).softmax(-1)
    expected = torch.zeros_like(x)
    for b in range(3):
        for e in range(4):
            for t in scores[b, :, e].topk(2).indices.tolist():
                expected[b, t] += scores[b, t, e] * _expert(layer, e, x[b, t])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    stats = collect_aux_stats(layer)
    torch.testing.assert_close(stats["expert_load"], torch.full((4,), 0.25))


def test_soft_moe_layer_is_dispatch_experts_combine_per_image():
    layer = _randomise(MoEMlp(6, 8, num_experts=2, router="soft", slots_per_expert=3))
    x = torch.randn(2, 5, 6)
    y = layer(x)
    phi = F.normalize(layer.slots, dim=0) * layer.slot_scale
    for b in range(2):
        logits = F.normalize(x[b], dim=-1) @ phi  # [5 tokens, 6 slots]
        slot_in = logits.softmax(0).t() @ x[b]  # each slot: a convex mix of this image's tokens
        slot_out = torch.stack([_expert(layer, s // 3, slot_in[s]) for s in range(6)])
        torch.testing.assert_close(y[b], logits.softmax(1) @ slot_out, rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[1] += 3.0
    torch.testing.assert_close(layer(x2)[0], y[0])


def test_shared_experts_add_a_dense_mlp():
    layer = _randomise(MoEMlp(6, 4, num_experts=4, k=2, num_shared=2))
    assert layer.shared.fc1.out_features == 8
    x = torch.randn(5, 6)
    shared = layer.shared(x)
    shared_mlp, layer.shared = layer.shared, None
    y_routed = layer(x)
    layer.shared = shared_mlp
    torch.testing.assert_close(layer(x), y_routed + shared)


def test_upcycled_layer_equals_the_dense_mlp():
    from backbones.layers import Mlp

    dense = _randomise(Mlp(6, 10))
    layer = MoEMlp(6, 10, num_experts=4, k=2)
    layer.load_dense(dense)
    x = torch.randn(9, 6)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="widths must match"):
        MoEMlp(6, 5, num_experts=4, k=2).load_dense(dense)


@pytest.mark.parametrize("kwargs, match", [
    (dict(router="hash"), "unknown MoE router"),
    (dict(k=5), "moe.k"),
    (dict(capacity_factor=0), "capacity_factor"),
    (dict(capacity_factor=-1.0), "capacity_factor"),
    (dict(score="relu"), "router score"),
    (dict(router="soft", bias_update_rate=1e-3), "needs router='topk'"),
])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoEMlp(6, 8, **{"num_experts": 4, **kwargs})


def test_moe_layer_indices():
    assert moe_layer_indices(12) == (1, 3, 5, 7, 9, 11)
    assert moe_layer_indices(6, every=3) == (2, 5)
    assert moe_layer_indices(12, layers=[-1, 0]) == (0, 11)
    with pytest.raises(ValueError, match="out of range"):
        moe_layer_indices(4, layers=[4])


def test_active_params_count_the_experts_a_token_uses():
    from backbones.layers import Mlp
    from backbones.layers.moe import active_params

    per_expert = 6 * 10 + 10 + 10 * 6 + 6
    top2 = MoEMlp(6, 10, num_experts=4, k=2)
    assert active_params(top2, 8) == 4 * 6 + 2 * per_expert  # router + two experts
    ec = MoEMlp(6, 10, num_experts=4, k=1, router="expert_choice")  # 4 experts x 2 tokens of 8: one per token
    assert ec.experts_per_token(8) == 1.0 and active_params(ec, 8) == 4 * 6 + per_expert
    soft = MoEMlp(6, 10, num_experts=4, router="soft", slots_per_expert=4)  # 16 slots for 8 tokens
    assert active_params(soft, 8) == 6 * 16 + 1 + 2 * per_expert
    dense = Mlp(6, 10)
    assert active_params(dense, 8) == sum(p.numel() for p in dense.parameters())
