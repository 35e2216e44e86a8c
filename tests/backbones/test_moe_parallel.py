"""Expert-parallel MoE (backbones.layers.moe_parallel) on the CPU: two gloo processes, each holding half of the
experts, against the single-process layer on the concatenation of both ranks' batches, in value and in gradient
(inputs, router, shared expert, every expert), with DDP reducing the replicated weights; an expert that gets no
token and a rank that gets no row; the gathered checkpoint across expert-parallel sizes 2 -> 1 and 1 -> 2;
the global gradient norm; the refusals.

One spawn runs every case (the processes' start-up is most of the cost); each rank writes what it computed and
the tests compare it here against the single-process truth."""
from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.nn as nn

from backbones.layers.moe import MoEMlp

WORLD = 2
DIM, HIDDEN, E = 8, 16, 4
B, N = 2, 5  # per rank: 2 images of 5 tokens


def _layer(case: str) -> MoEMlp:
    """The single-process layer of ``case``, same weights on every rank (seeded); some router rows pushed down
    so that chosen experts get no token (inputs are positive, so a very negative row never wins)."""
    torch.manual_seed(0)
    opts = {"topk": dict(k=2, num_shared=1), "topk_starved_rank": dict(k=1),
            "expert_choice": dict(k=2, router="expert_choice"), "soft": dict(router="soft", slots_per_expert=2),
            "swiglu": dict(k=2, activation="swiglu")}[case]
    m = MoEMlp(DIM, HIDDEN, num_experts=E, z_weight=0.0, balance_weight=0.0, **opts)
    with torch.no_grad():
        for w in (m.w1, m.w2):
            w.normal_(std=0.3)
        m.b1.normal_(std=0.1), m.b2.normal_(std=0.1)
        if m.router is not None:
            m.router.weight.normal_()
            starved = {"topk": [3], "topk_starved_rank": [2, 3]}.get(case, [])
            m.router.weight[starved] = -10.0
    return m


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(WORLD * B, N, DIM, generator=g) + 0.1  # positive: see _layer
    probe = torch.randn(WORLD * B, N, DIM, generator=g)  # loss = sum(y * probe): every output element matters
    return x, probe


CASES = ("topk", "topk_starved_rank", "expert_choice", "soft", "swiglu")


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from backbones.layers.moe_parallel import (ExpertParallelMoEMlp, clip_grad_norm_, expert_parallel_groups,
                                               register_expert_grad_hooks, shard_experts)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # a timeout: a rank that fails must not leave the other waiting forever in a collective
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    result = {}
    x_all, probe_all = _inputs()
    rows = slice(rank * B, (rank + 1) * B)
    ep_group, replica = expert_parallel_groups(WORLD)
    assert replica is None
    for case in CASES:
        layer = _layer(case)
        model = nn.Sequential(layer)  # not the root: DDP's ignore list misses a root module's own parameters
        names = shard_experts(model, ep_group)
        assert isinstance(layer, ExpertParallelMoEMlp) and layer.w1.shape[0] == E // WORLD
        DDP._set_params_and_buffers_to_ignore_for_model(model, names)  # what zoo.recipes.ep does
        ddp = DDP(model)
        register_expert_grad_hooks(layer, WORLD)
        x = x_all[rows].clone().requires_grad_(True)
        y = ddp(x)
        (y * probe_all[rows]).sum().backward()
        result[case] = {"y": y.detach(), "x_grad": x.grad,
                        "grads": {n: p.grad.clone() for n, p in layer.named_parameters()},
                        "expert_names": [n[2:] for n in names], "load": layer.last_load}
        if case == "topk":
            # the DDP wrapper must not have touched the expert parameters
            assert set(names) == {"0.w1", "0.b1", "0.w2", "0.b2"}
            assert set(ddp.parameters_to_ignore) == set(names)
            result[case]["norm"] = clip_grad_norm_(layer.parameters(), 1e9, ep_group)
            full = layer.state_dict()  # collective: the full expert set in the single-process layout
            if rank == 0:
                torch.save(full, os.path.join(out_dir, "ep2_state.pt"))
            # load the single-process (EP = 1) checkpoint into a fresh EP = 2 layer
            fresh = _layer(case)
            with torch.no_grad():
                for p in fresh.parameters():
                    p.normal_()
            shard_experts(fresh, ep_group)
            fresh.load_state_dict(torch.load(os.path.join(out_dir, "ep1_state.pt"), weights_only=True))
            result[case]["y_from_ep1"] = fresh(x_all[rows]).detach()
    # a layer whose expert count the group does not divide
    odd = MoEMlp(DIM, HIDDEN, num_experts=3, k=1)
    try:
        shard_experts(odd, ep_group)
    except ValueError as e:
        result["odd_error"] = str(e)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    from zoo.distributed import free_port

    out = tmp_path_factory.mktemp("ep")
    single = _layer("topk")
    with torch.no_grad():
        for p in single.parameters():  # different weights from _layer's: the load must replace all of them
            p.add_(0.5 * torch.randn_like(p))
    torch.save(single.state_dict(), out / "ep1_state.pt")
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out, single


def _reference(case: str):
    """The single-process layer on both ranks' images at once: output, input gradient, parameter gradients of
    the sum over ranks of sum(y * probe), divided by the world (DDP's data-parallel mean)."""
    layer = _layer(case)
    x_all, probe_all = _inputs()
    x = x_all.clone().requires_grad_(True)
    y = layer(x)
    (y * probe_all).sum().backward()
    return y.detach(), x.grad, {n: p.grad / WORLD for n, p in layer.named_parameters()}, layer


@pytest.mark.parametrize("case", CASES)
def test_sharded_layer_equals_single_process_in_value_and_gradient(ranks, case):
    results, _, _ = ranks
    y, x_grad, grads, layer = _reference(case)
    if case == "topk":
        assert layer.last_load[3] == 0  # the case has an expert without a token
    if case == "topk_starved_rank":
        assert layer.last_load[2:].sum() == 0  # rank 1's experts get nothing: it receives no row at all
    for rank, res in enumerate(results):
        r = res[case]
        rows = slice(rank * B, (rank + 1) * B)
        torch.testing.assert_close(r["y"], y[rows], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["x_grad"], x_grad[rows], rtol=1e-5, atol=1e-6)
        local = slice(rank * E // WORLD, (rank + 1) * E // WORLD)
        assert set(r["grads"]) == set(grads)
        for name, g in grads.items():
            want = g[local] if name in r["expert_names"] else g
            torch.testing.assert_close(r["grads"][name], want, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{case}, rank {rank}, {name}: {m}")
        # the load statistic is of the rank's own tokens over all experts
        assert r["load"].shape == (E,)


def test_starved_expert_gets_a_zero_gradient_not_none(ranks):
    results, _, _ = ranks
    g = results[1]["topk_starved_rank"]["grads"]
    for name in ("w1", "b1", "w2", "b2"):
        assert torch.count_nonzero(g[name]) == 0
    assert torch.count_nonzero(results[1]["topk"]["grads"]["w1"][1]) == 0  # expert 3 = rank 1's second
    assert torch.count_nonzero(results[1]["topk"]["grads"]["w1"][0]) > 0


def test_checkpoint_saved_under_ep2_loads_under_ep1(ranks):
    results, out, _ = ranks
    state = torch.load(out / "ep2_state.pt", weights_only=True)
    plain = _layer("topk")
    assert set(state) == set(plain.state_dict())
    assert state["w1"].shape == plain.w1.shape  # gathered: the single-process key layout
    with torch.no_grad():
        for p in plain.parameters():
            p.zero_()
    plain.load_state_dict(state)
    torch.testing.assert_close(plain.w1, _layer("topk").w1)
    x_all, _ = _inputs()
    y = plain(x_all)
    for rank, res in enumerate(results):
        torch.testing.assert_close(res["topk"]["y"], y[rank * B:(rank + 1) * B].detach(), rtol=1e-5, atol=1e-6)


def test_checkpoint_saved_under_ep1_loads_under_ep2(ranks):
    results, _, single = ranks
    x_all, _ = _inputs()
    y = single(x_all).detach()
    for rank, res in enumerate(results):
        torch.testing.assert_close(res["topk"]["y_from_ep1"], y[rank * B:(rank + 1) * B], rtol=1e-5, atol=1e-6)


def test_gradient_norm_counts_every_expert_once(ranks):
    results, _, _ = ranks
    _, _, grads, _ = _reference("topk")
    want = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    for res in results:
        torch.testing.assert_close(res["topk"]["norm"], want, rtol=1e-5, atol=1e-6)


def test_refusals(ranks):
    results, _, _ = ranks
    assert "divisible by 2" in results[0]["odd_error"]
    from backbones.layers.moe_parallel import shard_experts

    with pytest.raises(ValueError, match="process group"):
        shard_experts(nn.Sequential(MoEMlp(DIM, HIDDEN, num_experts=E)))
