"""zoo fit: smoke runs of the shipped recipes on tiny real subsets, exact resume, config errors."""
from __future__ import annotations

import csv
import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

TINY_IMAGE = ["--data.train_subset", "4", "--data.val_subset", "2", "--data.batch_size", "10",
              "--data.eval_batch_size", "20", "--model.model_args", "{depth: 2}"]


@pytest.fixture
def in_repo(monkeypatch, zoo_cache):
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing")
    monkeypatch.setenv("ZOO_DATA", str(SHARED))  # where the recipes' named data sets (cifar10, fsdd) resolve
    monkeypatch.chdir(REPO)                      # the configs/ paths are relative to the repository root
    return zoo_cache


def _fit(args):
    from zoo.recipes.cli import main
    return main(args)


def _meta(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_fit_smoke_image_recipe(in_repo, tmp_path, capfd, monkeypatch):
    import logging

    run = tmp_path / "run"
    monkeypatch.setattr(logging.getLogger("zoo.fit"), "handlers", [])  # a handler on this test's stdout
    rc = _fit(["--config", "configs/cifar10_vit_micro.yaml", "--fast-dev-run", *TINY_IMAGE,
               "--trainer.default_root_dir", str(run), "--progress", "log"])
    assert rc == 0
    out = capfd.readouterr()
    (start,) = [ln for ln in (out.out + out.err).splitlines() if " training vit_micro" in ln]
    assert "set-up took" in start and str(run) in start  # the log says when training began, after how long
    meta = _meta(run / "export.safetensors")
    assert meta["model"] == "vit_micro_patch4_32" and meta["recipe"] == "cifar10_vit_micro"
    assert meta["num_classes"] == "10" and meta["val_top1"] != "" and meta["init"] == ""
    from safetensors.torch import load_file
    assert all(v.dtype == torch.float16 for v in load_file(str(run / "export.safetensors")).values()
               if v.is_floating_point())
    assert list((in_repo / "datasets").glob("*.pt")), "decoded subset was not cached"


def test_export_records_the_starting_weights():
    """A continued run names the tag (and its sha256) or file it started from; publish notes repeat it."""
    from types import SimpleNamespace

    from zoo.recipes.export import init_weights as _init_weights
    from zoo.registry import get_entry

    sha = get_entry("vim_micro_patch4_32").tags["cifar10"].sha256
    hp = SimpleNamespace(checkpoint_path=None, pretrained=True, model="vim_micro_patch4_32.cifar10")
    assert _init_weights(hp) == f"vim_micro_patch4_32.cifar10 (sha256 {sha[:12]})"
    assert _init_weights(SimpleNamespace(checkpoint_path=None, pretrained=False, model=hp.model)) == ""
    assert _init_weights(SimpleNamespace(checkpoint_path="w.pth", pretrained=False, model="x")) == "w.pth"


def test_compile_option_runs_the_compiled_model(monkeypatch):
    """model.compile wraps the model in torch.compile (eager backend here, to keep the test fast); the task
    calls the compiled module (an OptimizedModule has no truth value: `compiled or model` raised)."""
    from zoo.recipes.classification import ClassificationTask

    calls = []
    real_compile = torch.compile

    def eager_compile(model, **kw):
        calls.append(model)
        return real_compile(model, backend="eager", **kw)

    monkeypatch.setattr(torch, "compile", eager_compile)
    task = ClassificationTask(model="vit_micro_patch4_32", num_classes=10, compile=True,
                              model_args={"depth": 1}).eval()
    x = torch.randn(2, 3, 32, 32)
    assert calls == [task.model]
    with torch.no_grad():
        assert torch.allclose(task(x), task.model(x))


def test_fit_smoke_audio_recipe(in_repo, tmp_path):
    run = tmp_path / "run"
    rc = _fit(["--config", "fsdd_vim_audio", "--fast-dev-run", "--data.train_subset", "2", "--data.val_subset", "1",
               "--data.batch_size", "8", "--data.num_workers", "0", "--model.model_args", "{depth: 1, patch_size: 8}",
               "--trainer.default_root_dir", str(run)])
    assert rc == 0
    meta = _meta(run / "export.safetensors")
    assert meta["in_chans"] == "1" and meta["img_size"] == "[64, 96]"
    assert '"kaldi_fbank"' in meta["preprocess"]


def _epoch_losses(run: Path) -> dict[int, float]:
    """epoch -> train/loss_epoch from the run's CSV logs (a resumed run's last version holds the epoch end)."""
    out = {}
    for f in sorted((run / "csv").glob("version_*/metrics.csv")):
        for row in csv.DictReader(f.open()):
            if row.get("train/loss_epoch"):
                out[int(row["epoch"])] = float(row["train/loss_epoch"])
    return out


def _state(ckpt: Path) -> tuple[dict, dict]:
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    return c["state_dict"], c["optimizer_states"][0]["state"]


def test_killed_and_resumed_run_matches_uninterrupted(in_repo, tmp_path, monkeypatch):
    """6 steps straight vs 3 steps + kill + resume (mid-epoch: 4 batches an epoch), on the CPU."""
    import zoo.recipes.cli as cli
    from lightning.pytorch.callbacks import Callback

    common = ["--config", "configs/cifar10_vit_micro.yaml", *TINY_IMAGE, "--trainer.max_steps", "6",
              "--data.eval_batch_size", "20", "--model.warmup_steps", "2", "--model.drop_path_rate", "0.1",
              "--checkpoint_every_n_steps", "3", "--progress", "none", "--trainer.enable_model_summary", "false",
              "--trainer.deterministic", "true"]
    straight = tmp_path / "straight"
    assert _fit(common + ["--trainer.default_root_dir", str(straight)]) == 0

    class Killed(RuntimeError):
        pass

    class KillAtStep(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:  # after step 3's checkpoint, before step 4 ends epoch 1
                raise Killed()

    real = cli._make_callbacks
    monkeypatch.setattr(cli, "_make_callbacks", lambda *a, **k: real(*a, **k) + [KillAtStep()])
    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        _fit(common + ["--trainer.default_root_dir", str(resumed)])
    monkeypatch.setattr(cli, "_make_callbacks", real)
    ck = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _fit(common + ["--trainer.default_root_dir", str(resumed), "--resume"]) == 0
    # the training loader is resumable (its sampler's position is its state): no warning saying otherwise
    assert not [w for w in caught if "not resumable" in str(w.message)]
    # the epoch the kill cut in two logs the same train loss as the uninterrupted run (running sums restored)
    assert _epoch_losses(resumed)[0] == pytest.approx(_epoch_losses(straight)[0], rel=1e-6)
    # the summary covers the whole run: 2 batches of 10 before the kill, 1 after (the first batch of each
    # start is not timed), against 3 + 1 straight
    s_straight, s_resumed = (json.loads((d / "fit_summary.json").read_text()) for d in (straight, resumed))
    assert s_straight["train_samples"] == 40 and s_straight["resumes"] == 0
    assert s_resumed["train_samples"] == 30 and s_resumed["resumes"] == 1 and s_resumed["global_step"] == 6
    # the export is readable like any file the user writes (not safetensors' 0600)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((resumed / "export.safetensors").stat().st_mode) == 0o666 & ~umask

    w_a, opt_a = _state(straight / "checkpoints" / "last.ckpt")
    w_b, opt_b = _state(resumed / "checkpoints" / "last.ckpt")
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        torch.testing.assert_close(w_a[k], w_b[k], rtol=0, atol=1e-6, msg=k)
    for i in opt_a:
        torch.testing.assert_close(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"], rtol=0, atol=1e-6)


def test_epoch_end_writes_last_checkpoint_without_step_checkpoints(in_repo, tmp_path, monkeypatch):
    """checkpoint_every_n_steps 0: a run killed in its second epoch resumes from the first epoch's end."""
    import zoo.recipes.cli as cli
    from lightning.pytorch.callbacks import Callback

    class Killed(RuntimeError):
        pass

    class KillInSecondEpoch(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                raise Killed()

    real = cli._make_callbacks
    monkeypatch.setattr(cli, "_make_callbacks", lambda *a, **k: real(*a, **k) + [KillInSecondEpoch()])
    run = tmp_path / "run"
    with pytest.raises(Killed):
        _fit(["--config", "configs/cifar10_vit_micro.yaml", *TINY_IMAGE, "--trainer.max_epochs", "3",
              "--checkpoint_every_n_steps", "0", "--progress", "none", "--trainer.enable_model_summary", "false",
              "--trainer.default_root_dir", str(run)])
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 0 and ck["global_step"] == 4     # 40 images / batch 10: the end of epoch 1
    # resumed from an epoch's end, the next epochs' train losses are their own (nothing of epoch 1 carried
    # into them) and equal an uninterrupted run's
    monkeypatch.setattr(cli, "_make_callbacks", real)
    common = ["--config", "configs/cifar10_vit_micro.yaml", *TINY_IMAGE, "--trainer.max_epochs", "3",
              "--checkpoint_every_n_steps", "0", "--progress", "none", "--trainer.enable_model_summary", "false"]
    assert _fit(common + ["--trainer.default_root_dir", str(run), "--resume"]) == 0
    assert _fit(common + ["--trainer.default_root_dir", str(tmp_path / "straight")]) == 0
    straight, resumed = _epoch_losses(tmp_path / "straight"), _epoch_losses(run)
    assert sorted(resumed) == [0, 1, 2]
    for epoch in (1, 2):
        assert resumed[epoch] == pytest.approx(straight[epoch], rel=1e-6)


def test_unknown_config_key_suggests_the_right_one(in_repo):
    from zoo.errors import ConfigError
    with pytest.raises(ConfigError, match=r"model\.lrr.*Did you mean: model\.lr"):
        _fit(["--config", "configs/cifar10_vit_micro.yaml", "--model.lrr", "0.1"])
    with pytest.raises(ConfigError, match=r"data\.batch_sise.*data\.batch_size"):
        _fit(["--config", "configs/cifar10_vit_micro.yaml", "--data.batch_sise", "3"])


def test_unknown_key_in_yaml(in_repo, tmp_path):
    from zoo.errors import ConfigError
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((REPO / "configs" / "cifar10_vit_micro.yaml").read_text().replace("max_epochs:", "max_epoch:"))
    with pytest.raises(ConfigError, match=r"trainer\.max_epoch'.*trainer\.max_epochs"):
        _fit(["--config", str(cfg)])


def test_missing_config_names_shipped_recipes(in_repo):
    from zoo.errors import ConfigError
    with pytest.raises(ConfigError, match="cifar10_vit_micro.yaml"):
        _fit(["--config", "cifar10_vit_mikro.yaml"])


def test_num_classes_mismatch(in_repo):
    from zoo.errors import ConfigError
    with pytest.raises(ConfigError, match=r"num_classes=7.*10 classes.*model\.num_classes: 10"):
        _fit(["--config", "configs/cifar10_vit_micro.yaml", "--fast-dev-run", *TINY_IMAGE, "--model.num_classes", "7"])


def test_missing_data_path_is_a_data_error(in_repo):
    from zoo.errors import DataError
    with pytest.raises(DataError, match="does not exist"):
        _fit(["--config", "configs/cifar10_vit_micro.yaml", "--fast-dev-run", *TINY_IMAGE,
              "--data.path", "no/such/cifar.zip"])


def test_device_side_crop_and_flip():
    from zoo.data.modules import InMemoryImageDataModule, TensorImages

    dm = InMemoryImageDataModule(path="unused", crop_padding=2, padding_mode="zeros", seed=3)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    dm.train_dataset = TensorImages(x.to(torch.uint8), torch.zeros(2, dtype=torch.long), ["a"])
    out = dm.augment_batch(x, torch.tensor([0, 1]), epoch=5)
    table = dm._epoch_table(5, 2)
    for i in range(2):
        dy, dx, flip = table[i].tolist()
        ref = torch.nn.functional.pad(x[i], (2, 2, 2, 2))[:, dy:dy + 8, dx:dx + 8]
        torch.testing.assert_close(out[i], ref.flip(-1) if flip else ref)


def test_freeze_modes():
    from zoo.recipes.classification import ClassificationTask, parse_freeze
    from zoo.errors import ConfigError

    assert parse_freeze("freeze_blocks:3") == ("freeze_blocks", 3)
    with pytest.raises(ConfigError):
        parse_freeze("freeze_some")
    t = ClassificationTask("vit_micro_patch4_32", num_classes=10, model_args={"depth": 4}, freeze="freeze_blocks:2")
    trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("backbone.blocks.0.", "backbone.blocks.1.", "backbone.patch_embed")) for n in trainable)
    assert any(n.startswith("backbone.blocks.2.") for n in trainable) and "head.fc.weight" in trainable
    t = ClassificationTask("vit_micro_patch4_32", num_classes=10, model_args={"depth": 2}, freeze="linear_probe")
    assert {n for n, p in t.model.named_parameters() if p.requires_grad} == {"head.fc.weight", "head.fc.bias"}
    groups = ClassificationTask("vit_micro_patch4_32", num_classes=10, model_args={"depth": 2}).param_groups()
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0


def test_warmup_cosine_follows_steps_or_time_budget():
    from zoo.recipes.task import warmup_cosine
    assert warmup_cosine(0, 4, 100, 0.01) == pytest.approx(1 / 5)
    assert warmup_cosine(4, 4, 100, 0.01) == pytest.approx(1.0)
    assert warmup_cosine(52, 4, 100, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine(100, 4, 100, 0.01) == pytest.approx(0.01)
    # a time budget further along than the steps wins; one behind them does not
    assert warmup_cosine(10, 4, 100, 0.01, time_fraction=1.0) == pytest.approx(0.01)
    assert warmup_cosine(52, 4, 100, 0.01, time_fraction=0.1) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine(2, 4, 100, 0.01, time_fraction=0.9) == pytest.approx(3 / 5)  # warmup stays step-based


class _Router(torch.nn.Module):
    """A toy MoE-router stand-in: a balance loss on a parameter no task loss touches, and a load statistic."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def forward(self, x):
        from backbones.layers.aux_loss import record_aux_loss, record_aux_stat
        record_aux_loss(self, "balance", 0.5 * (self.w ** 2).sum())
        record_aux_stat(self, "load", torch.tensor([1.0, 3.0]))
        return x


class _ToyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 1)
        self.routers = torch.nn.ModuleList([_Router(), _Router()])

    def forward(self, x):
        for r in self.routers:
            x = r(x)
        return self.fc(x).squeeze(-1)


def test_aux_losses_are_summed_over_modules_and_cleared():
    from backbones.layers.aux_loss import clear_aux, collect_aux_losses, collect_aux_stats

    net = _ToyNet()
    net(torch.randn(2, 3))
    net(torch.randn(2, 3))           # a second forward replaces, never accumulates: nothing held grows
    losses = collect_aux_losses(net)
    assert list(losses) == ["balance"] and losses["balance"].item() == pytest.approx(2 * 0.5 * 4)
    assert collect_aux_losses(net) == {}
    torch.testing.assert_close(collect_aux_stats(net)["load"], torch.tensor([1.0, 3.0]))  # mean over modules
    net(torch.randn(2, 3))
    clear_aux(net)
    assert collect_aux_losses(net) == {} and collect_aux_stats(net) == {}
    with pytest.raises(ValueError, match="scalar"):
        from backbones.layers.aux_loss import record_aux_loss
        record_aux_loss(net, "bad", torch.ones(3))


def test_task_adds_aux_losses_to_the_loss_logs_them_and_backpropagates(tmp_path):
    """A Task whose model records an aux loss: total = task loss + aux, logged as train/aux/<name>, and the
    router parameter (used by the aux loss alone) gets its gradient."""
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader, TensorDataset

    from zoo.recipes.task import Task

    class Regression(Task):
        def build_model(self):
            return _ToyNet()

        def shared_step(self, batch, stage):
            x, y = batch
            out = self.net(stage)(x)
            self.last_task_loss = F.mse_loss(out, y)
            return self.last_task_loss, {"mae": (out - y).abs().mean()}

    seen = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["aux"] = sum(0.5 * (r.w.detach() ** 2).sum().item() for r in pl_module.model.routers)
            seen["w"] = pl_module.model.routers[0].w.detach().clone()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen["grad"] = pl_module.model.routers[0].w.grad.clone()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["loss"] = outputs["loss"].item()
            seen["task"] = pl_module.last_task_loss.item()
            seen["logged"] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    data = DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8)), batch_size=4)
    task = Regression(model="toy", lr=1e-2, weight_decay=0.0)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[Probe()],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, train_dataloaders=data, val_dataloaders=data)
    assert seen["loss"] == pytest.approx(seen["task"] + seen["aux"], rel=1e-5)
    assert seen["logged"]["train/aux/balance_step"] == pytest.approx(seen["aux"], rel=1e-5)
    assert seen["logged"]["train/stat/load_max_step"] == pytest.approx(1.5)    # max / mean of [1, 3]
    assert "val/mae" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    torch.testing.assert_close(seen["grad"], seen["w"])   # d/dw of 0.5 * sum(w^2), through the Task's total loss


def test_task_class_from_the_yaml(in_repo, tmp_path):
    """model: {class_path, init_args} (LightningCLI's form) and a top-level task: key both pick the task;
    init_args keys are validated against that class; a path that is no Task is a ConfigError."""
    import yaml
    from zoo.errors import ConfigError

    base = yaml.safe_load((REPO / "configs" / "cifar10_vit_micro.yaml").read_text())
    nested = dict(base, model={"class_path": "zoo.recipes.classification.ClassificationTask", "init_args": base["model"]})
    (tmp_path / "nested.yaml").write_text(yaml.safe_dump(nested))
    run = tmp_path / "run"
    assert _fit(["--config", str(tmp_path / "nested.yaml"), "--fast-dev-run", *TINY_IMAGE,
                 "--trainer.default_root_dir", str(run)]) == 0
    assert _meta(run / "export.safetensors")["task"] == "classification"
    with pytest.raises(ConfigError, match=r"model\.lrr.*model\.lr"):
        _fit(["--config", str(tmp_path / "nested.yaml"), "--model.init_args.lrr", "0.1"])
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(dict(base, task="zoo.recipes.task.NoSuchTask")))
    with pytest.raises(ConfigError, match="NoSuchTask.*cannot be imported"):
        _fit(["--config", str(tmp_path / "task.yaml")])
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(dict(base, task="zoo.data.modules.ImageDataModule")))
    with pytest.raises(ConfigError, match="not a zoo.recipes.task.Task subclass"):
        _fit(["--config", str(tmp_path / "task.yaml")])
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(dict(base, task="zoo.recipes.classification.ClassificationTask")))
    assert _fit(["--config", str(tmp_path / "task.yaml"), "--fast-dev-run", *TINY_IMAGE,
                 "--trainer.default_root_dir", str(tmp_path / "run2")]) == 0


# ------------------------------------------------------------------------------------------ one run per dir
def _other_process(alive: bool):
    """A pid that is alive (a sleeping child) or dead (a child that has exited and been reaped)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)" if alive else "pass"])
    if not alive:
        p.wait()
    return p


def _write_lock(run: Path, pid: int, host: str | None = None) -> Path:
    import socket

    run.mkdir(parents=True, exist_ok=True)
    lock = run / "run.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 0}))
    return lock


def test_run_lock_refuses_a_live_run_and_takes_over_a_stale_one(tmp_path, caplog):
    import logging

    from zoo.errors import ConfigError
    from zoo.recipes.callbacks import RunLock

    run = tmp_path / "run"
    live = _other_process(alive=True)
    try:
        lock = _write_lock(run, live.pid)
        with pytest.raises(ConfigError) as err:
            RunLock(run).acquire()
        msg = str(err.value)
        assert str(run) in msg and str(live.pid) in msg and "--trainer.default_root_dir" in msg
        assert json.loads(lock.read_text())["pid"] == live.pid  # the owner's lock is untouched
    finally:
        live.kill()
        live.wait()
    _write_lock(run, os.getpid(), host="other-host")
    with pytest.raises(ConfigError, match="other-host"):  # another host's pid cannot be checked: refused
        RunLock(run).acquire()
    _write_lock(run, _other_process(alive=False).pid)
    with caplog.at_level(logging.WARNING, logger="zoo.recipes.callbacks"):
        with RunLock(run):
            assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()
            with pytest.raises(ConfigError):  # held: a second taker is refused
                RunLock(run).acquire()
    assert "stale" in caplog.text and not (run / "run.lock").exists()


def test_run_lock_is_released_when_the_fit_fails(in_repo, tmp_path, monkeypatch):
    """A fit that raises leaves no lock behind; one that finds a live lock never starts; one that finds a
    killed run's lock takes it over."""
    import zoo.recipes.cli as cli
    from lightning.pytorch.callbacks import Callback

    from zoo.errors import ConfigError

    class Boom(RuntimeError):
        pass

    class Fail(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            assert (Path(trainer.default_root_dir) / "run.lock").is_file()  # held while training
            raise Boom()

    run = tmp_path / "run"
    args = ["--config", "configs/cifar10_vit_micro.yaml", "--fast-dev-run", *TINY_IMAGE, "--progress", "none",
            "--trainer.default_root_dir", str(run)]
    real = cli._make_callbacks
    monkeypatch.setattr(cli, "_make_callbacks", lambda *a, **k: real(*a, **k) + [Fail()])
    with pytest.raises(Boom):
        _fit(args)
    assert not (run / "run.lock").exists()
    monkeypatch.setattr(cli, "_make_callbacks", real)
    live = _other_process(alive=True)
    try:
        _write_lock(run, live.pid)
        with pytest.raises(ConfigError, match=str(live.pid)):
            _fit(args)
    finally:
        live.kill()
        live.wait()
    assert not (run / "export.safetensors").exists()
    _write_lock(run, live.pid)  # that run was killed: --resume takes its lock over
    assert _fit(args + ["--resume"]) == 0
    assert (run / "export.safetensors").exists() and not (run / "run.lock").exists()
