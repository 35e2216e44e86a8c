"""``zoo fit``: train a recipe from YAML with LightningCLI.

    zoo fit --config configs/cifar10_vit_micro.yaml [--trainer.max_epochs=3 ...] [--resume [PATH|auto]]
            [--fast-dev-run [N]] [--progress {auto,rich,tqdm,log,none}]

The YAML is LightningCLI's: ``model:`` is the task (a zoo.recipes.task.Task subclass: ``class_path`` +
``init_args``, or its arguments alone with ``task: <class path>`` or, by default, classification), ``data:``
a ``class_path`` + ``init_args`` (any LightningDataModule: zoo.data.modules' in-memory image module or
Image/AudioDataModule), ``trainer:`` the Trainer's. Dotted overrides (``--model.lr 1e-3``, ``--data.train_subset 8``) win over it.
A run lives in ``trainer.default_root_dir`` (the recipes use ``runs/<recipe>``): ``checkpoints/last.ckpt``
(every ``checkpoint_every_n_steps`` steps and at each epoch end, written atomically), ``csv/`` and ``tb/``
logs, the resolved ``config.yaml``, and at the end ``export.safetensors`` (fp16 weights, EMA when enabled,
with metadata to register as a pretrained tag). ``--resume`` (= ``--resume auto``) continues from the run's
``last.ckpt``: same global step, optimizer, scheduler, RNG and data order, mid-epoch included. While a fit
runs, ``run.lock`` in the run directory (pid and host) refuses a second run there; a killed run's lock is
taken over.

Defaults: bf16-mixed precision on a GPU, fp32 on the CPU; a Rich progress bar in a terminal, one log line
every ``progress_every_n_steps`` steps (and per epoch) otherwise. ``fit_summary.json`` in the run directory
records throughput (samples/s over all processes, first batch of each epoch and validation excluded) and the
final validation metrics, over the whole run across resumes.

Several GPUs (Lightning starts one process per device; ``data.batch_size`` is per device):

    zoo fit -c configs/cifar10_vit_micro.yaml --trainer.strategy ddp --trainer.devices 4
    zoo fit -c configs/cifar10_vit_micro.yaml --trainer.strategy fsdp --trainer.devices 4 [--activation_checkpointing true]

``fsdp`` (and ``fsdp_cpu_offload``) build Lightning's FSDPStrategy with one FSDP unit per backbone block
(zoo.recipes.distributed.BlockPolicy: ViT ``Block``, Vim ``VimBlock``, any ``blocks``/``layers`` element or
``block_classes()``), optionally recomputing block activations in the backward, and full state dicts: a
checkpoint written on N devices resumes on any other number (the data position is counted over all ranks).
On the CPU, ``--trainer.accelerator cpu --trainer.strategy ddp --trainer.devices 2`` runs two gloo processes.
NCCL_NVLS_ENABLE=0 and TORCH_SYMM_MEM_DISABLE_MULTICAST=1 are set (unless already set) before any process starts.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from zoo.distributed import is_fsdp, set_distributed_env
from zoo.errors import ConfigError
from zoo.recipes.config import (RESUME_AUTO, explain_parser_error, load_yaml, parse_overrides, preparse,
                                strip_configs, task_class, task_class_path, validate_keys)

log = logging.getLogger(__name__)
progress_log = logging.getLogger("zoo.fit")


def _setup_logging() -> None:
    if not any(getattr(h, "_zoo_fit", False) for h in progress_log.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        h._zoo_fit = True
        progress_log.addHandler(h)
    progress_log.setLevel(logging.INFO)
    progress_log.propagate = False
    logging.getLogger("lightning.pytorch").propagate = False  # it has its own handler; avoid double lines


def _make_callbacks(*args, **kwargs) -> list:
    """The run's callbacks (zoo.recipes.callbacks.make_callbacks); one name tests can wrap."""
    from zoo.recipes.callbacks import make_callbacks

    return make_callbacks(*args, **kwargs)


def build_cli(args: list[str], progress_default: str = "auto", task: Optional[str] = None):
    """The LightningCLI (run=False) for ``args``; ``task`` is the default class path of ``model:`` (the
    YAML's own ``class_path`` wins). Raises ConfigError for invalid configuration."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from zoo.recipes.callbacks import AtomicCheckpointIO
    from zoo.recipes.config import DEFAULT_TASK
    from zoo.recipes.distributed import resolve_strategy
    from zoo.recipes.task import Task

    class ZooCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            # model: without a class_path is this task (classification unless the YAML's task: says otherwise)
            parser.set_defaults({"model": {"class_path": task or DEFAULT_TASK}})
            parser.add_argument("--task", type=Optional[str], default=None,
                                help="class path of the task when model: holds only its arguments "
                                     f"(default {DEFAULT_TASK})")
            parser.add_argument("--recipe", type=Optional[str], default=None,
                                help="recipe name stored in the export metadata (default: the config file's stem)")
            parser.add_argument("--checkpoint_every_n_steps", type=int, default=500,
                                help="also write last.ckpt every N optimizer steps (0: only at epoch ends)")
            parser.add_argument("--progress", type=str, default=progress_default,
                                help="auto (rich in a terminal, else log), rich, tqdm, log or none")
            parser.add_argument("--progress_every_n_steps", type=int, default=50,
                                help="steps between progress lines with --progress log")
            parser.add_argument("--export", type=bool, default=True,
                                help="write export.safetensors (fp16, EMA when enabled) at the end of fit")
            parser.add_argument("--export_best", type=Optional[str], default=None,
                                help="a validation metric (e.g. val/loss): export.safetensors holds the weights "
                                     "of its best value, rewritten at each improvement; the final weights go to "
                                     "export_last.safetensors")
            parser.add_argument("--export_best_mode", type=str, default="auto",
                                help="min, max, or auto (max for top1/acc/recall-like names, else min)")
            parser.add_argument("--activation_checkpointing", type=bool, default=False,
                                help="with --trainer.strategy fsdp: recompute each block's activations in the "
                                     "backward pass (less memory, ~30%% more compute)")

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
            cfg = self.config
            run_dir = Path(config.get("default_root_dir") or "runs/default").expanduser()
            config["default_root_dir"] = str(run_dir)
            progress = cfg.get("progress", "auto")
            if progress not in ("auto", "rich", "tqdm", "log", "none"):
                raise ConfigError(f"--progress {progress!r}: choose auto, rich, tqdm, log or none.")
            if progress == "auto":
                progress = "rich" if sys.stdout.isatty() else "log"
            if config.get("enable_progress_bar") is False and progress in ("rich", "tqdm"):
                progress = "log"
            if progress in ("log", "none"):
                config["enable_progress_bar"] = False
            # fast_dev_run: Lightning suppresses checkpoints except save_last's at train end; skip them all
            callbacks = list(callbacks) + _make_callbacks(run_dir, cfg.get("checkpoint_every_n_steps", 500),
                                                          progress, cfg.get("progress_every_n_steps", 50),
                                                          checkpoints=not config.get("fast_dev_run"),
                                                          export_best=cfg.get("export_best"),
                                                          export_best_mode=cfg.get("export_best_mode", "auto"))
            if config.get("logger") in (None, True):
                from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

                config["logger"] = [CSVLogger(run_dir, name="csv"), TensorBoardLogger(run_dir, name="tb")]
            if config.get("precision") is None:
                config["precision"] = "bf16-mixed" if torch.cuda.is_available() else "32-true"
            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(hasattr(p, "save_checkpoint") for p in plugins):
                plugins.append(AtomicCheckpointIO())
            config["plugins"] = plugins
            config["strategy"] = resolve_strategy(config.get("strategy", "auto"),
                                                  bool(cfg.get("activation_checkpointing", False)))
            if is_fsdp(config["strategy"]) and getattr(self.model.hparams, "ema_decay", 0) > 0:
                raise ConfigError("model.ema_decay > 0 is not supported with FSDP (the EMA copy would be a full, "
                                  "unsharded model on every device); use --trainer.strategy ddp or ema_decay 0.")
            return super()._instantiate_trainer(config, callbacks)

    try:
        return ZooCLI(Task, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
                      run=False, auto_configure_optimizers=False, save_config_kwargs={"overwrite": True},
                      parser_kwargs={"exit_on_error": False, "default_env": False}, seed_everything_default=0)
    except Exception as e:  # jsonargparse's ArgumentError / validation errors
        if isinstance(e, ConfigError) or type(e).__module__.startswith("zoo"):
            raise
        if e.__class__.__name__ in ("ArgumentError", "ParserError", "NSKeyError", "TypeError", "ValueError"):
            raise explain_parser_error(str(e)) from None
        raise


def find_resume_checkpoint(resume: Optional[str], run_dir: Path) -> Optional[str]:
    """``auto``: the run's checkpoints/last.ckpt if present (else start fresh); a path must exist."""
    if resume is None:
        return None
    if resume == RESUME_AUTO:
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return str(last)
        log.warning("--resume auto: no %s yet; starting a fresh run", last)
        progress_log.info("no checkpoint at %s; starting a fresh run", last)
        return None
    p = Path(resume).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt" if (p / "checkpoints").is_dir() else p / "last.ckpt"
    if not p.is_file():
        raise ConfigError(f"--resume {resume}: no checkpoint at {p}. Pass a .ckpt file, a run directory, or "
                          f"--resume auto to continue the run in {run_dir}.")
    return str(p)


def _run_lock(run_dir: Path):
    """The run directory's lock (zoo.recipes.callbacks.RunLock), taken by the launching process only: the
    processes Lightning or torchrun start for the other ranks (RANK/LOCAL_RANK/NODE_RANK > 0) run inside it."""
    from contextlib import nullcontext

    from zoo.recipes.callbacks import RunLock

    if any(int(os.environ.get(v, "0") or 0) > 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        return nullcontext()
    return RunLock(run_dir)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    set_distributed_env()  # before Lightning starts any process: they inherit it
    args, opts = preparse(argv)
    config = load_yaml(opts["configs"])
    overrides = parse_overrides(strip_configs(args))
    task_path = task_class_path(config, overrides)
    if any(a in ("-h", "--help", "--print_config") or a.startswith("--print_config=") for a in args):
        try:
            build_cli(args, task=task_path)
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    validate_keys(config, overrides, task_class(task_path))
    try:
        cli = build_cli(args, task=task_path)
    except SystemExit as e:  # jsonargparse still exits on some errors (e.g. --help inside values)
        if e.code in (0, None):
            return 0
        raise ConfigError("Invalid command line for zoo fit; see the message above and `zoo fit --help`.") from None
    trainer, task, dm = cli.trainer, cli.model, cli.datamodule
    task.check_data(dm)
    run_dir = Path(trainer.default_root_dir)
    ckpt = find_resume_checkpoint(opts["resume"], run_dir)
    if ckpt is None and (run_dir / "checkpoints" / "last.ckpt").exists() and not trainer.fast_dev_run:
        progress_log.info("note: %s exists; this fresh run overwrites it (use --resume to continue it)",
                          run_dir / "checkpoints" / "last.ckpt")
    if ckpt:
        progress_log.info("resuming from %s", ckpt)
    from zoo.recipes.callbacks import BestExport

    recipe = cli.config.get("recipe") or (opts["configs"][-1].stem if opts["configs"] else "custom")
    best = next((cb for cb in trainer.callbacks if isinstance(cb, BestExport)), None)
    if best is not None:
        best.recipe = recipe
    with _run_lock(run_dir):
        trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
        if trainer.interrupted:
            progress_log.info("training interrupted; resume with: zoo fit %s --resume", " ".join(argv))
            return 130
        if cli.config.get("export", True):
            from zoo.recipes.export import export_weights

            # FSDP and expert parallelism: every rank takes part in gathering the full weights, so all ranks call this
            gathers = is_fsdp(trainer.strategy) or getattr(trainer.strategy, "collective_state_dict", False)
            full_state = trainer.strategy.lightning_module_state_dict() if gathers else None
            if trainer.is_global_zero:
                selected = best is not None and best.best_step is not None
                path = export_weights(task, trainer, run_dir, recipe, full_state,
                                      filename="export_last.safetensors" if selected else "export.safetensors")
                progress_log.info("exported the final weights to %s", path)
                if selected:
                    progress_log.info("export.safetensors holds the best %s (%.4f at step %d)", best.monitor,
                                      best.best, best.best_step)
    val = trainer.callback_metrics.get("val/top1", trainer.callback_metrics.get("val/loss"))
    if val is not None and trainer.is_global_zero:
        name = "val/top1" if "val/top1" in trainer.callback_metrics else "val/loss"
        progress_log.info("final %s %.4f", name, float(val))
    return 0
