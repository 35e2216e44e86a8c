"""Scale-out on the CPU (gloo): the rank-sharded resumable sampler, the FSDP block policy, a two-process DDP
`zoo fit` resumed on one process, and sharded `zoo eval` equal to one process."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


# ------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_sharded_sampler_covers_every_index_once(world, drop_last):
    from zoo.data.sampling import ResumableRandomSampler

    n = 23
    shards = []
    for r in range(world):
        s = ResumableRandomSampler(n, seed=5, num_replicas=world, rank=r, drop_last=drop_last)
        s.set_epoch(3)
        shards.append(list(s))
        assert len(s) == len(shards[-1])
    perm = ResumableRandomSampler(n, seed=5).permutation(3)
    assert len({len(x) for x in shards}) == 1  # equal length: DDP needs as many batches on every rank
    flat = [i for x in shards for i in x]
    if drop_last:
        assert len(set(flat)) == len(flat) == n - n % world
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world  # padding repeats the start
    # strided: the ranks' k-th indices together are the permutation's next `world` entries
    interleaved = [x[k] for k in range(len(shards[0])) for x in shards]
    assert interleaved[:min(n, len(interleaved))] == perm[:len(interleaved)][:n]


@pytest.mark.parametrize("new_world", [1, 2, 3])
def test_sharded_sampler_resumes_mid_epoch_on_any_world_size(new_world):
    from zoo.data.sampling import ResumableRandomSampler

    n, old_world, taken = 30, 2, 4
    samplers = [ResumableRandomSampler(n, 0, old_world, r) for r in range(old_world)]
    seen = []
    for s in samplers:
        s.set_epoch(1)
        it = iter(s)
        seen += [next(it) for _ in range(taken)]
    state = samplers[0].state_dict()
    assert state["consumed"] == taken * old_world and state["world_size"] == old_world
    assert samplers[0].state_dict(consumed=6)["consumed"] == 6
    rest = []
    for r in range(new_world):
        s = ResumableRandomSampler(n, 0, new_world, r)
        s.load_state_dict(state)
        s.set_epoch(1)  # Lightning calls this on restart: keeps the offset
        assert len(s) >= -(-n // new_world)
        rest += list(s)
    # the consumed samples are the permutation's first 8; the resumed ranks cover exactly the other 22
    perm = samplers[0].permutation(1)
    assert sorted(seen) == sorted(perm[:taken * old_world])
    assert set(rest) == set(perm[taken * old_world:]) and set(rest).isdisjoint(seen)
    assert len(rest) - len(set(rest)) < new_world  # only padding repeats


class _FakeTrainer:
    def __init__(self, world, rank):
        self.distributed_sampler_kwargs = {"num_replicas": world, "rank": rank}


def test_data_modules_shard_from_the_trainer(tmp_path):
    """Both data layers build their sampler from trainer.distributed_sampler_kwargs, and Lightning leaves a
    DistributedSampler alone (no DistributedSamplerWrapper re-shuffling our order)."""
    from torch.utils.data import DistributedSampler

    from zoo.data.modules import InMemoryImageDataModule, TensorImages

    seen = []
    for rank in range(2):
        dm = InMemoryImageDataModule(path="unused", batch_size=3, drop_last=True)
        dm.train_dataset = TensorImages(torch.zeros(14, 3, 4, 4, dtype=torch.uint8), torch.arange(14), ["a"])
        dm.trainer = _FakeTrainer(2, rank)
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, DistributedSampler) and len(loader) == 2  # 7 per rank, batch 3
        seen += [i for b in loader for i in b[2].tolist()]
    assert len(seen) == len(set(seen)) == 12


def test_block_policy_finds_each_family_s_blocks():
    import zoo
    from backbones.vim import VimBlock
    from backbones.vit import Block
    from zoo.recipes.distributed import BlockPolicy, block_classes, resolve_strategy

    vit = zoo.create_model("vit_micro_patch4_32", num_classes=10, depth=2)
    vim = zoo.create_model("vim_micro_patch4_32", num_classes=10, depth=2)
    assert block_classes(vit) == {Block} and block_classes(vim) == {VimBlock}
    targets = BlockPolicy()._run_policy(torch.nn.ModuleDict({"model": vim}), set(), {})
    assert set(targets) == set(vim.backbone.layers)

    class Declared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stage = torch.nn.Linear(2, 2)

        def block_classes(self):
            return {torch.nn.Linear}

    assert block_classes(Declared()) == {torch.nn.Linear}
    strategy = resolve_strategy("fsdp", activation_checkpointing=True)
    assert type(strategy).__name__ == "FSDPStrategy" and strategy._state_dict_type == "full"
    assert resolve_strategy("ddp") == "ddp"


def test_norm_clipping_under_fsdp_goes_through_the_root_module(monkeypatch):
    """Lightning's FSDPPrecision refuses gradient_clip_algorithm='norm' (the H200 scaling run stopped on it);
    the task clips through the FSDP root module instead, and leaves every other strategy to Lightning."""
    from types import SimpleNamespace

    import lightning.pytorch as pl

    from zoo.recipes.classification import ClassificationTask
    from zoo.recipes.distributed import resolve_strategy

    clipped, lightning_path = [], []
    task = ClassificationTask("vit_micro_patch4_32", num_classes=10, model_args={"depth": 1})
    strategy = resolve_strategy("fsdp")
    strategy._lightning_module = task
    strategy.model = SimpleNamespace(clip_grad_norm_=clipped.append)
    monkeypatch.setattr(type(task), "trainer", property(lambda self: SimpleNamespace(strategy=strategy)))
    monkeypatch.setattr(pl.LightningModule, "configure_gradient_clipping",
                        lambda self, *a, **k: lightning_path.append(a))
    task.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert clipped == [1.0] and not lightning_path
    task.configure_gradient_clipping(None, gradient_clip_val=0.5, gradient_clip_algorithm="value")
    strategy = "ddp"
    task.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert clipped == [1.0] and len(lightning_path) == 2


# ------------------------------------------------------------------------------------------- processes
@pytest.fixture
def env(zoo_cache):
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing")
    e = dict(os.environ, ZOO_CACHE=str(zoo_cache), ZOO_OFFLINE="1", OMP_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "zoo"), str(REPO)]))
    e.pop("ZOO_TEST_EXIT_AT_STEP", None)
    e.pop("TRITON_INTERPRET", None)  # set by the kernel tests' conftest when collected in the same process
    return e


def _zoo(args, env, timeout=240):
    out = subprocess.run([sys.executable, "-m", "zoo.cli", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_ddp_two_processes_then_resume_on_one(env, tmp_path):
    """40 images, batch 5 per rank on 2 gloo ranks: 4 steps an epoch. A 'crash' after step 6 (mid epoch 1,
    checkpointed at step 6) with both ranks' weights identical; resumed on ONE process the epoch's other 20
    images make 4 more steps (batch 5), then validation."""
    run = tmp_path / "run"
    common = ["fit", "--config", "configs/cifar10_vit_micro.yaml", "--trainer.accelerator", "cpu",
              "--data.train_subset", "4", "--data.val_subset", "2", "--data.batch_size", "5",
              "--data.eval_batch_size", "20", "--model.model_args", "{depth: 1}", "--trainer.max_epochs", "2",
              "--trainer.default_root_dir", str(run), "--progress", "none", "--trainer.enable_model_summary",
              "false", "--trainer.callbacks", "_dist_helpers.Probe", "--checkpoint_every_n_steps", "3",
              "--model.mixup_alpha", "0", "--model.cutmix_alpha", "0"]   # batch 5: mixup needs an even one
    _zoo(common + ["--trainer.strategy", "ddp", "--trainer.devices", "2"], dict(env, ZOO_TEST_EXIT_AT_STEP="6"))
    r0, r1 = (torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["num_training_batches"] == 4 and r0["epoch_end_steps"] == [4] and r0["global_step"] == 6
    assert r0["weights"].keys() == r1["weights"].keys()
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 6 and ck["zoo_world_size"] == 2
    assert ck["InMemoryImageDataModule"]["sampler"] == {"seed": 0, "n": 40, "epoch": 1, "world_size": 2,
                                                        "consumed": 20}
    for k, v in r0["weights"].items():
        assert torch.equal(ck["state_dict"]["model." + k], v), k

    (run / "rank1.pt").unlink()
    _zoo(common + ["--trainer.devices", "1", "--resume"], env)
    one = torch.load(run / "rank0.pt", weights_only=True)
    assert one["world_size"] == 1 and one["global_step"] == 10 and one["epoch_end_steps"] == [10]
    assert not (run / "rank1.pt").exists()
    summary = __import__("json").loads((run / "fit_summary.json").read_text())
    assert summary["world_size"] == 1 and summary["global_step"] == 10 and summary["val_top1"] is not None


def test_sharded_eval_equals_one_process(env, tmp_path):
    """Same weights, 2 gloo processes vs 1: identical top-1/top-5 (counts gathered, nothing doubled)."""
    import zoo
    from zoo.distributed import shard
    from zoo.hub import save_state_dict

    assert [list(shard(list(range(7)), r, 3)) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_state_dict(zoo.create_model("vit_micro_patch4_32", num_classes=10, depth=1).state_dict(), weights)
    rows = []
    for extra in ([], ["--nproc", "2"]):
        out_csv = tmp_path / f"r{len(rows)}.csv"
        _zoo(["eval", "vit_micro_patch4_32", "--data", str(SHARED / "cifar10-test.zip"), "--subset", "3",
              "--batch-size", "4", "--workers", "0", "--model-args", '{"depth": 1}', "--checkpoint", str(weights),
              "--csv", str(out_csv), *extra], env)
        rows.append(list(csv.DictReader(out_csv.open())))
    assert len(rows[0]) == len(rows[1]) == 1
    assert rows[0][0]["top1"] == rows[1][0]["top1"] and rows[0][0]["top5"] == rows[1][0]["top5"]


@pytest.mark.slow
def test_ddp_audio_recipe_two_processes(env, tmp_path):
    run = tmp_path / "run"
    _zoo(["fit", "--config", "fsdd_vim_audio", "--fast-dev-run", "--data.train_subset", "2", "--data.val_subset",
          "1", "--data.batch_size", "4", "--data.num_workers", "0", "--model.model_args",
          "{depth: 1, patch_size: 8}", "--trainer.default_root_dir", str(run), "--trainer.accelerator", "cpu",
          "--trainer.strategy", "ddp", "--trainer.devices", "2"], env)
    assert (run / "export.safetensors").is_file()
