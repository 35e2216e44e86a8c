"""``zoo fit --trainer.strategy ep`` on the CPU: two gloo processes with the MoE ViT's experts sharded over them,
a checkpoint in the single-process layout (experts and their Adam moments gathered), the export likewise, both
ranks ending with the same full model, and the run resumed on ONE process (expert-parallel size 2 -> 1)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture
def env(zoo_cache):
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing")
    e = dict(os.environ, ZOO_CACHE=str(zoo_cache), ZOO_OFFLINE="1", OMP_NUM_THREADS="1", ZOO_DATA=str(SHARED),
             PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "zoo"), str(REPO)]))
    for k in ("ZOO_TEST_EXIT_AT_STEP", "TRITON_INTERPRET"):
        e.pop(k, None)
    return e


def _zoo(args, env, timeout=300):
    out = subprocess.run([sys.executable, "-m", "zoo.cli", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_expert_parallel_fit_checkpoints_full_layout_and_resumes_on_one_process(env, tmp_path):
    run = tmp_path / "run"
    common = ["fit", "--config", "configs/cifar10_vit_micro_moe.yaml", "--trainer.accelerator", "cpu",
              "--data.train_subset", "4", "--data.val_subset", "2", "--data.batch_size", "5",
              "--data.eval_batch_size", "20", "--model.model_args", "{depth: 2}",
              "--trainer.default_root_dir", str(run), "--progress", "none", "--trainer.enable_model_summary",
              "false", "--trainer.callbacks", "_dist_helpers.Probe", "--checkpoint_every_n_steps", "4",
              "--model.mixup_alpha", "0", "--model.cutmix_alpha", "0"]
    _zoo(common + ["--trainer.strategy", "ep", "--trainer.devices", "2", "--trainer.max_steps", "4"], env)
    r0, r1 = (torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2 and r0["global_step"] == 4
    experts = [k for k in r0["weights"] if k.endswith("mlp.w1")]
    assert experts and all(r0["weights"][k].shape[0] == 8 for k in experts)  # gathered: all 8 experts
    for k in r0["weights"]:  # replicated weights kept in step by DDP, experts gathered from both halves
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in r0["weights"].items():
        assert torch.equal(ck["state_dict"]["model." + k], v), k
    full = {tuple(v.shape) for k, v in r0["weights"].items() if k.endswith(("mlp.w1", "mlp.b1", "mlp.w2", "mlp.b2"))}
    half = {(s[0] // 2,) + s[1:] for s in full}
    shapes = [tuple(s["exp_avg"].shape) for s in ck["optimizer_states"][0]["state"].values()]
    assert not half & set(shapes) and sum(s in full for s in shapes) >= 4  # expert moments in the full layout too
    moments = [s["exp_avg"] for s in ck["optimizer_states"][0]["state"].values() if tuple(s["exp_avg"].shape) in full]
    assert all(torch.count_nonzero(m[4:]) > 0 for m in moments)  # rank 1's half is there, not zeros

    from zoo.hub import read_state_dict

    export = read_state_dict(run / "export.safetensors")
    for k in experts:
        torch.testing.assert_close(export[k].float(), r0["weights"][k], rtol=1e-3, atol=1e-3)

    (run / "rank1.pt").unlink()
    _zoo(common + ["--trainer.devices", "1", "--trainer.max_steps", "6", "--resume"], env)
    one = torch.load(run / "rank0.pt", weights_only=True)
    assert one["world_size"] == 1 and one["global_step"] == 6
    assert not (run / "rank1.pt").exists()


def test_ep_shorthand_and_refusals():
    from zoo.errors import ConfigError
    from zoo.recipes.distributed import resolve_strategy
    from zoo.recipes.ep import ExpertParallelStrategy

    s = resolve_strategy("ep")
    assert isinstance(s, ExpertParallelStrategy) and s.expert_parallel_size is None and s.collective_state_dict
    with pytest.raises(ConfigError, match="fsdp"):
        resolve_strategy("ep", activation_checkpointing=True)
    with pytest.raises(ConfigError, match="positive int"):
        ExpertParallelStrategy(expert_parallel_size=0)
