"""What ``zoo fit`` adds to Lightning's Trainer: last.ckpt at epoch ends and every N steps, written atomically;
progress lines for log files; the fit summary; the state that makes ``--resume`` continue a run as if it
had never stopped (epoch metrics, world-size change, throughput totals); the count of unreadable training
files; and the lock that keeps two runs out of one run directory.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import (Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar,
                                         TQDMProgressBar)

from torchmetrics.utilities.data import dim_zero_sum

from zoo.distributed import is_fsdp
from zoo.errors import ConfigError
from zoo.recipes.task import batch_size_of

log = logging.getLogger(__name__)
progress_log = logging.getLogger("zoo.fit")
_IMPORTED = time.perf_counter()  # about when `zoo fit` started: the progress log says how long set-up took


class EpochCheckpoint(ModelCheckpoint):
    """last.ckpt at every epoch end. Lightning 2.6 writes ``last`` only in a step that also made a top-k
    save, which ``save_top_k=0`` never does, so the stock callback would write nothing at epoch ends."""

    def on_train_epoch_end(self, trainer, pl_module):
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class StepCheckpoint(ModelCheckpoint):
    """ModelCheckpoint every N train steps; its own state key so it coexists with the epoch-end one."""

    @property
    def state_key(self) -> str:
        return "StepCheckpoint" + super().state_key


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint to a temp file beside it, then os.replace: a kill never leaves half a file.

    Lightning's own save goes through fsspec's transaction, whose temp file lies in the system temp dir
    and is moved (a copy across file systems, not atomic) into place."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class UnreadableFiles(Callback):
    """Counts the training files the data module's loader skipped as unreadable (zoo.data.sources'
    SkipUnreadable + collate_skipping), logs one summary line per epoch and raises DataError once more than
    the data module's ``max_bad`` fraction of them is unreadable (as ``zoo eval`` does).

    Each rank counts the files of its shard against its shard's size; the epoch's line (rank 0) gives the
    sums over the ranks. Files a data set dropped when it was opened (audio header checks) count on rank 0."""

    def __init__(self):
        self.tally = None

    def on_train_epoch_start(self, trainer, pl_module):
        from zoo.data.sources import SkipUnreadable, UnreadableTally

        self.tally = None
        dm = trainer.datamodule
        loader = trainer.train_dataloader
        ds = getattr(loader, "dataset", None)
        if dm is None or not hasattr(dm, "max_bad") or not isinstance(ds, SkipUnreadable):
            return
        sampler = getattr(loader, "sampler", None)
        total = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else len(ds)
        opened = ds.skipped_at_open if trainer.is_global_zero else []
        self.tally = UnreadableTally(total, dm.max_bad, opened, where=f"the training data ({dm.path})")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from zoo.recipes.task import unreadable_names

        if self.tally is not None:
            self.tally.add(unreadable_names(batch))

    def on_train_epoch_end(self, trainer, pl_module):
        if self.tally is None:
            return
        counts = torch.tensor([float(len(self.tally.names)), float(self.tally.total)])
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        if trainer.is_global_zero and counts[0] > 0:
            self.tally.summary(count=int(counts[0]), total=int(counts[1]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """One run per run directory: ``<run dir>/run.lock`` holds the owner's pid and host while a fit runs.

    Taken atomically (``O_CREAT | O_EXCL``) by the launching process and removed when the fit ends, on error
    too (a context manager). A lock whose pid is dead on this host (a killed run) is taken over with a
    warning, so ``--resume`` of a killed run works; a live one, or one from another host, raises ConfigError
    naming the directory, the owner and how to pick another directory."""

    NAME = "run.lock"
    GRACE_S = 5.0  # a lock file this young with no content yet is being written by its owner

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.NAME
        self.host = socket.gethostname()
        self.held = False

    def _owner(self) -> Optional[dict]:
        """The lock file's {pid, host} (None when it is unreadable: half written or damaged)."""
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    def _refuse(self, owner: Optional[dict]) -> ConfigError:
        who = (f"process {owner['pid']} on host {owner.get('host', '?')}" if owner
               else "another process (it is writing the lock now)")
        return ConfigError(
            f"Run directory {self.run_dir} is in use by {who} (lock file {self.path}). Two runs in one directory "
            f"would overwrite each other's checkpoints and logs: choose another with --trainer.default_root_dir "
            f"runs/<name>, or wait for that run to end. If it is gone (e.g. it ran on another host), delete "
            f"{self.path}.")

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    try:
                        young = time.time() - self.path.stat().st_mtime < self.GRACE_S
                    except FileNotFoundError:  # released meanwhile: try again
                        continue
                    if young:
                        raise self._refuse(None) from None
                elif owner.get("host") != self.host or _pid_alive(owner["pid"]):
                    raise self._refuse(owner) from None
                log.warning("taking over the stale lock %s of %s (that process is gone: a killed run)",
                            self.path, f"pid {owner['pid']}" if owner else "an unknown process")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": self.host, "started": time.time()}, f)
            self.held = True
            return self
        raise self._refuse(self._owner())

    def release(self) -> None:
        """Remove the lock if it is still this process's (never one another run took over)."""
        if self.held:
            self.held = False
            owner = self._owner()
            if owner and owner["pid"] == os.getpid() and owner.get("host") == self.host:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class SparseProgress(Callback):
    """One log line every N optimizer steps and one per validation: for logs that are files, not terminals."""

    def __init__(self, every_n_steps: int = 50):
        self.every = max(1, int(every_n_steps))
        self._tlast = 0.0
        self._samples = 0
        self._fit_t0 = 0.0

    def on_train_start(self, trainer, pl_module):
        self._fit_t0 = self._tlast = time.perf_counter()
        progress_log.info("training %s: %s steps (%d epochs × %d batches), run dir %s (set-up took %.0f s)",
                          getattr(pl_module.hparams, "model", type(pl_module).__name__),
                          trainer.estimated_stepping_batches, trainer.max_epochs, trainer.num_training_batches,
                          trainer.default_root_dir, self._fit_t0 - _IMPORTED)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._samples += batch_size_of(batch) or 0
        step = trainer.global_step
        if step % self.every == 0 and step > 0:
            now = time.perf_counter()
            rate = self._samples / max(now - self._tlast, 1e-9)
            m = trainer.callback_metrics
            loss = m.get("train/loss_step", m.get("train/loss"))
            lr = m.get("lr")
            progress_log.info("epoch %d/%d step %d/%d loss %.4f lr %.3g %.0f samples/s",
                              trainer.current_epoch + 1, trainer.max_epochs, step,
                              trainer.estimated_stepping_batches, float(loss) if loss is not None else math.nan,
                              float(lr) if lr is not None else math.nan, rate)
            self._tlast, self._samples = now, 0

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(v):.4f}" for k, v in sorted(m.items())
                 if k.startswith("val/") or k in ("train/loss_epoch", "train/top1")]
        progress_log.info("epoch %d/%d done (step %d, %.0fs): %s", trainer.current_epoch + 1,
                          trainer.max_epochs, trainer.global_step, time.perf_counter() - self._fit_t0,
                          ", ".join(parts))


class FitSummary(Callback):
    """Training samples/s over all processes and the final validation metrics, written to fit_summary.json
    by rank 0. Its totals are checkpointed, so after ``--resume`` the summary covers the whole run.

    Time runs from one batch end to the next, so each epoch's first batch (start-up, compilation, loader
    creation) and validation are left out; what remains is the steady training rate a benchmark wants."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.seconds = 0.0
        self.samples = 0
        self.resumes = 0
        self._last: Optional[float] = None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "samples": self.samples, "resumes": self.resumes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict.get("seconds", 0.0))
        self.samples = int(state_dict.get("samples", 0))
        self.resumes = int(state_dict.get("resumes", 0)) + 1

    def on_train_epoch_start(self, trainer, pl_module):
        self._last = None

    def on_validation_start(self, trainer, pl_module):
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._last is not None:
            self.samples += (batch_size_of(batch) or 0) * trainer.world_size
            self.seconds += now - self._last
        self._last = now

    def on_fit_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        final = {k: float(v) for k, v in sorted(trainer.callback_metrics.items())
                 if k.startswith("val/") and isinstance(v, torch.Tensor) and v.numel() == 1}
        summary = {
            "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision), "epochs": trainer.current_epoch,
            "global_step": trainer.global_step, "resumes": self.resumes,
            "train_seconds": round(self.seconds, 3), "train_samples": self.samples,
            "img_per_s": self.samples / self.seconds if self.seconds > 0 else None,
            "val_top1": final.get("val/top1"), "val": final,
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "fit_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


class WorldSizeResume(Callback):
    """Resume a mid-epoch checkpoint on another number of processes.

    The data modules' samplers keep their position as samples consumed over all ranks, so they continue
    exactly; Lightning's epoch counter, though, counts batches per rank and would end the resumed epoch too
    early (fewer ranks) or too late (more). This rescales that counter to the new world size (rounded down)
    before Lightning restores its loops, so the epoch has its normal length and its validation runs."""

    KEY = "zoo_world_size"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.KEY] = trainer.world_size

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        old, new = int(checkpoint.get(self.KEY, trainer.world_size)), trainer.world_size
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if old == new or not progress:
            return
        current = progress["current"]
        before = current["processed"]
        after = before * old // new
        # keep the fields' offsets (a save in on_train_batch_end has processed = completed + 1, which is
        # how Lightning tells where in the batch it stopped)
        for k in ("ready", "started", "processed", "completed"):
            current[k] = max(0, after - (before - current[k]))
        log.info("checkpoint written by %d processes, resuming on %d: batches done this epoch %d -> %d",
                 old, new, before, after)


class EpochMetricsResume(Callback):
    """Carry the running epoch aggregates of training metrics (``train/loss`` epoch mean, a torchmetrics
    accuracy's counts) across a mid-epoch checkpoint.

    Lightning restores its loops but starts the epoch's logged aggregates from zero, so after ``--resume``
    the epoch's ``train/loss_epoch`` would average only the batches after the restart (2.1459 instead of the
    uninterrupted 2.1298 in the report). The sums, batch-size totals and metric states are saved with the
    checkpoint and added back once the resumed epoch's first batch has been logged (the aggregates exist
    only from their first ``self.log`` on)."""

    KEY = "zoo_epoch_metrics"

    def __init__(self):
        self._pending: Optional[dict] = None

    @staticmethod
    def _results(trainer):
        return trainer.fit_loop.epoch_loop._results

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not trainer.training:
            return
        saved = {}
        for key, rm in self._results(trainer).items():
            if not key.startswith("training_step.") or not rm.meta.on_epoch or rm.has_reset:
                continue
            if rm.is_tensor:
                entry = {"value": rm.value.detach().cpu().clone()}
                if rm.meta.is_mean_reduction:
                    entry["cumulated_batch_size"] = rm.cumulated_batch_size.detach().cpu().clone()
                saved[key] = entry
            elif rm.meta.metric_attribute:
                # sum-reduced states (counts) add up across the restart; other kinds are not carried
                state = {k: v.detach().cpu().clone() for k, v in rm.value.metric_state.items()
                         if isinstance(v, torch.Tensor) and rm.value._reductions.get(k) is dim_zero_sum}
                saved[key] = {"metric_attribute": rm.meta.metric_attribute, "state": state}
        checkpoint[self.KEY] = {"epoch": trainer.current_epoch, "metrics": saved}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = checkpoint.get(self.KEY)

    def _for_this_epoch(self, trainer) -> Optional[dict]:
        """The saved aggregates if they belong to the running epoch; a checkpoint written at an epoch's end
        resumes in the next one, where nothing of them runs on."""
        if self._pending is not None and self._pending["epoch"] != trainer.current_epoch:
            self._pending = None
        return self._pending

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        # metric objects first: the batch's own update then adds to the restored counts
        if self._for_this_epoch(trainer) is None:
            return
        modules = dict(pl_module.named_modules())
        for entry in self._pending["metrics"].values():
            metric = modules.get(entry["metric_attribute"]) if "metric_attribute" in entry else None
            if metric is not None:
                for name, value in entry["state"].items():
                    setattr(metric, name, getattr(metric, name) + value.to(getattr(metric, name).device))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pending, self._pending = self._for_this_epoch(trainer), None
        if pending is None:
            return
        results = self._results(trainer)
        for key, entry in pending["metrics"].items():
            rm = results.get(key)
            if rm is None or not rm.is_tensor or "value" not in entry:
                continue
            rm.value = rm.value + entry["value"].to(rm.value.device, rm.value.dtype)
            if "cumulated_batch_size" in entry:
                rm.cumulated_batch_size = rm.cumulated_batch_size + entry["cumulated_batch_size"].to(
                    rm.cumulated_batch_size.device)


class BestExport(Callback):
    """``zoo fit --export_best val/loss``: keep the weights of the best validation so far as the run's
    ``export.safetensors`` (rewritten atomically at each improvement, metadata ``selected_by``), so a model
    that overfits late ships its best point, not its last; the final weights then go to
    ``export_last.safetensors``. The best value and step are checkpointed, so ``--resume`` keeps comparing
    against them. ``mode`` 'auto' minimises losses and maximises metrics named like top1 / acc / recall / R@k.
    Not with FSDP (rank 0 holds only a shard of the weights between steps)."""

    MAXIMISED = ("top1", "top5", "acc", "recall", "r@", "map", "bleu", "cider")

    def __init__(self, run_dir: Path, monitor: str, mode: str = "auto", recipe: str = "custom"):
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"--export_best_mode {mode!r}: choose auto, min or max.")
        if mode == "auto":
            mode = "max" if any(m in monitor.lower() for m in self.MAXIMISED) else "min"
        self.run_dir, self.monitor, self.mode, self.recipe = Path(run_dir), monitor, mode, recipe
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self._warned = False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_step = state_dict.get("best"), state_dict.get("best_step")

    def setup(self, trainer, pl_module, stage=None):
        if is_fsdp(trainer.strategy):
            raise ConfigError("--export_best does not work with FSDP (the weights are sharded between steps); "
                              "use --trainer.strategy ddp, or export the final weights.")

    def improved(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best):
            return not math.isnan(value)
        return value < self.best if self.mode == "min" else value > self.best

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                log.warning("--export_best %s: no such validation metric (have: %s); exporting the final weights",
                            self.monitor, ", ".join(sorted(k for k in trainer.callback_metrics if "/" in k)))
                self._warned = True
            return
        value = float(value)
        if not self.improved(value):
            return
        from zoo.recipes.export import export_weights

        self.best, self.best_step = value, trainer.global_step
        export_weights(pl_module, trainer, self.run_dir, self.recipe,
                       extra={"selected_by": f"{self.mode} {self.monitor} {value:.6g} at step {trainer.global_step}"})
        progress_log.info("best %s %.4f at step %d: exported to %s", self.monitor, value, trainer.global_step,
                          self.run_dir / "export.safetensors")


def make_callbacks(run_dir: Path, every_n_steps: int, progress: str, progress_every: int,
                   checkpoints: bool = True, export_best: Optional[str] = None,
                   export_best_mode: str = "auto") -> list:
    """The callbacks every ``zoo fit`` run gets (before any the config adds)."""
    ckpt_dir = run_dir / "checkpoints"
    cbs: list = []
    if checkpoints:  # both write last.ckpt: at each training epoch's end, and every N steps
        cbs.append(EpochCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_epochs=1,
                                   enable_version_counter=False))
        if every_n_steps and every_n_steps > 0:
            cbs.append(StepCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                                      every_n_train_steps=every_n_steps, enable_version_counter=False))
    if progress == "rich":
        cbs.append(RichProgressBar())
    elif progress == "tqdm":
        cbs.append(TQDMProgressBar(refresh_rate=max(1, progress_every // 10)))
    elif progress == "log":
        cbs.append(SparseProgress(progress_every))
    cbs += [LearningRateMonitor(logging_interval="epoch"), FitSummary(run_dir), WorldSizeResume(),
            EpochMetricsResume(), UnreadableFiles()]
    if export_best:
        cbs.append(BestExport(run_dir, export_best, export_best_mode))
    return cbs
