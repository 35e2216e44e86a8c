"""``zoo fit``: train a recipe from YAML with LightningCLI.

    zoo fit --config configs/cifar10_vit_micro.yaml [--trainer.max_epochs=3 ...] [--resume [PATH|auto]]
            [--fast-dev-run [N]] [--progress {auto,rich,tqdm,log,none}]

The YAML is LightningCLI's: ``model:`` holds ClassificationTask's arguments, ``data:`` a ``class_path`` +
``init_args`` (any LightningDataModule: the in-memory image module, the data layer's Image/AudioDataModule),
``trainer:`` the Trainer's. Dotted overrides (``--model.lr 1e-3``, ``--data.train_subset 8``) win over it.
A run lives in ``trainer.default_root_dir`` (the recipes use ``runs/<recipe>``): ``checkpoints/last.ckpt``
(every ``checkpoint_every_n_steps`` steps and at each epoch end, written atomically), ``csv/`` and ``tb/``
logs, the resolved ``config.yaml``, and at the end ``export.safetensors`` (fp16 weights, EMA when enabled,
with metadata to register as a pretrained tag). ``--resume`` (= ``--resume auto``) continues from the run's
``last.ckpt``: same global step, optimizer, scheduler, RNG and data order, mid-epoch included.

Defaults: bf16-mixed precision on a GPU, fp32 on the CPU; a Rich progress bar in a terminal, one log line
every ``progress_every_n_steps`` steps (and per epoch) otherwise. ``fit_summary.json`` in the run directory
records throughput (images/s over all processes, first batch of each epoch and validation excluded) and the
final validation accuracy.

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

import datetime
import difflib
import importlib
import inspect
import json
import logging
import math
import os
import re
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch

from zoo.errors import ConfigError
from zoo.recipes.distributed import WorldSizeResume, is_fsdp, resolve_strategy, set_distributed_env

log = logging.getLogger(__name__)
progress_log = logging.getLogger("zoo.fit")

TOP_LEVEL_KEYS = {"model", "data", "trainer", "seed_everything", "config", "print_config", "ckpt_path",
                  "checkpoint_every_n_steps", "progress", "progress_every_n_steps", "export", "recipe",
                  "activation_checkpointing"}
_RESUME_AUTO = "auto"


# ------------------------------------------------------------------------------------------ config files
def shipped_configs() -> dict[str, Path]:
    """Recipes shipped as ``zoo.configs`` (the top-level configs/ folder of a checkout)."""
    folders = []
    try:
        folders.append(Path(str(resources.files("zoo.configs"))))
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    folders.append(Path(__file__).resolve().parents[2] / "configs")
    out: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for f in sorted(folder.glob("*.yaml")):
                out.setdefault(f.name, f)
    return out


def resolve_config(path: str) -> Path:
    """``path`` relative to the cwd, else a shipped recipe by file name (with or without ``.yaml``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    shipped = shipped_configs()
    for name in (p.name, p.name + ".yaml"):
        if name in shipped:
            return shipped[name]
    close = difflib.get_close_matches(p.name, list(shipped), n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"Config file {path} not found (relative to {Path.cwd()}) and not a shipped recipe.{hint} "
                      f"Shipped recipes: {', '.join(shipped) or 'none'}.")


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def _params(obj) -> tuple[list[str], bool]:
    """Init parameter names of a class and whether it takes **kwargs (then any key may be valid). A class
    whose ``__init__`` passes **kwargs on to its base (Task subclasses) has its bases' names too."""
    names: list[str] = []
    for cls in (obj.__mro__ if isinstance(obj, type) else [obj]):
        if "__init__" not in vars(cls) and cls is not obj:
            continue
        try:
            sig = inspect.signature(cls.__init__)
        except (TypeError, ValueError):
            return names, True
        var_kw = False
        for p in sig.parameters.values():
            if p.kind is p.VAR_KEYWORD:
                var_kw = True
            elif p.name != "self" and p.kind is not p.VAR_POSITIONAL and p.name not in names:
                names.append(p.name)
        if not var_kw or not isinstance(obj, type):
            return names, var_kw
        if cls.__module__.startswith(("lightning", "torch")):
            return names, True
    return names, True


def _import_class(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _parse_overrides(args: list[str]) -> list[tuple[str, Optional[str]]]:
    """(dotted key, value) of every ``--key[=value]`` / ``--key value`` token."""
    out = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok.startswith("--"):
            key, eq, val = tok[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                val = args[i + 1]
                i += 1
            out.append((key, val if (eq or val) else None))
        i += 1
    return out


def validate_keys(config: dict, overrides: list[tuple[str, Optional[str]]], task_cls) -> None:
    """Every key of the YAML and of the overrides must exist; ConfigError lists the unknown ones with the
    closest valid keys (jsonargparse reports only the first one, and in its own words)."""
    from lightning.pytorch import Trainer

    unknown: list[tuple[str, list[str]]] = []
    model_keys, _ = _params(task_cls)
    trainer_keys, _ = _params(Trainer)

    data_cls_path = None
    data_cfg = config.get("data")
    if isinstance(data_cfg, dict):
        data_cls_path = data_cfg.get("class_path")
    elif isinstance(data_cfg, str):
        data_cls_path = data_cfg
    for key, val in overrides:
        if key in ("data", "data.class_path") and val:
            data_cls_path = val
    data_cls = _import_class(data_cls_path) if data_cls_path else None
    data_keys, data_any = _params(data_cls) if data_cls is not None else ([], True)

    def check(section: str, key: str, valid: list[str], any_ok: bool = False):
        if not any_ok and key not in valid:
            unknown.append((f"{section}.{key}" if section else key, [f"{section}.{v}" if section else v for v in valid]))

    for top, value in config.items():
        check("", top, sorted(TOP_LEVEL_KEYS))
        if top == "model" and isinstance(value, dict):
            for k in value:
                check("model", k, model_keys)
        elif top == "trainer" and isinstance(value, dict):
            for k in value:
                check("trainer", k, trainer_keys)
        elif top == "data" and isinstance(value, dict):
            init = value.get("init_args") if "class_path" in value else value
            for k in (init or {}):
                check("data", k, data_keys, data_any)
            for k in value:
                if "class_path" in value and k not in ("class_path", "init_args", "dict_kwargs"):
                    check("data", k, ["class_path", "init_args"])
    for key, _ in overrides:
        parts = key.split(".")
        if parts[0] in ("help", "h"):
            continue
        check("", parts[0], sorted(TOP_LEVEL_KEYS))
        if len(parts) < 2:
            continue
        if parts[0] == "model":
            check("model", parts[1], model_keys)
        elif parts[0] == "trainer":
            check("trainer", parts[1], trainer_keys)
        elif parts[0] == "data":
            sub = parts[2] if parts[1] == "init_args" and len(parts) > 2 else parts[1]
            if sub not in ("class_path", "init_args"):
                check("data", sub, data_keys, data_any)
    if unknown:
        lines = []
        for key, valid in unknown:
            lines.append(str(ConfigError.unknown_key(key, valid)))
        raise ConfigError("\n".join(lines) + "\nSee `zoo fit --help` (or --print_config) for every valid key.")


def _explain_parser_error(msg: str) -> ConfigError:
    """Turn a jsonargparse error message into a ConfigError (fallback when validate_keys saw nothing)."""
    msg = str(msg).strip()
    m = re.search(r"unrecognized arguments: (.+)", msg)
    if m:
        return ConfigError(f"Unknown command-line option(s): {m.group(1)}. Use dotted keys of the config, e.g. "
                           f"--model.lr 1e-3, --data.batch_size 64, --trainer.max_epochs 3 (zoo fit --help).")
    return ConfigError(f"Invalid configuration: {msg}")


# ------------------------------------------------------------------------------------------ callbacks
def _make_callbacks(run_dir: Path, every_n_steps: int, progress: str, progress_every: int,
                    checkpoints: bool = True) -> list:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar

    ckpt_dir = run_dir / "checkpoints"
    cbs: list = []
    if checkpoints:  # both write last.ckpt: at each training epoch's end, and every N steps
        cbs.append(_epoch_checkpoint_cls()(dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_epochs=1,
                                           enable_version_counter=False))
        if every_n_steps and every_n_steps > 0:
            cbs.append(_step_checkpoint_cls()(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                                              every_n_train_steps=every_n_steps, enable_version_counter=False))
    if progress == "rich":
        cbs.append(RichProgressBar())
    elif progress == "tqdm":
        cbs.append(TQDMProgressBar(refresh_rate=max(1, progress_every // 10)))
    elif progress == "log":
        cbs.append(_sparse_progress_cls()(progress_every))
    cbs.append(LearningRateMonitor(logging_interval="epoch"))
    cbs.append(_fit_summary_cls()(run_dir))
    cbs.append(WorldSizeResume())
    return cbs


def _fit_summary_cls():
    from lightning.pytorch.callbacks import Callback

    class FitSummary(Callback):
        """Training images/s over all processes and the final val/top1, written to fit_summary.json by rank 0.

        Time runs from one batch end to the next, so each epoch's first batch (start-up, compilation, loader
        creation) and validation are left out; what remains is the steady training rate a benchmark wants."""

        def __init__(self, run_dir: Path):
            self.run_dir = Path(run_dir)
            self.seconds = 0.0
            self.samples = 0
            self._last: Optional[float] = None

        def on_train_epoch_start(self, trainer, pl_module):
            self._last = None

        def on_validation_start(self, trainer, pl_module):
            self._last = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            if self._last is not None:
                x = batch[0] if isinstance(batch, (tuple, list)) else None
                self.samples += int(x.shape[0]) * trainer.world_size if isinstance(x, torch.Tensor) else 0
                self.seconds += now - self._last
            self._last = now

        def on_fit_end(self, trainer, pl_module):
            if not trainer.is_global_zero:
                return
            val = trainer.callback_metrics.get("val/top1")
            summary = {
                "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                "precision": str(trainer.precision), "epochs": trainer.current_epoch,
                "global_step": trainer.global_step, "train_seconds": round(self.seconds, 3),
                "train_samples": self.samples,
                "img_per_s": self.samples / self.seconds if self.seconds > 0 else None,
                "val_top1": None if val is None else float(val),
            }
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "fit_summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    return FitSummary


def _epoch_checkpoint_cls():
    from lightning.pytorch.callbacks import ModelCheckpoint

    class EpochCheckpoint(ModelCheckpoint):
        """last.ckpt at every epoch end. Lightning 2.6 writes ``last`` only in a step that also made a top-k
        save, which ``save_top_k=0`` never does, so the stock callback would write nothing at epoch ends."""

        def on_train_epoch_end(self, trainer, pl_module):
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    return EpochCheckpoint


def _step_checkpoint_cls():
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StepCheckpoint(ModelCheckpoint):
        """ModelCheckpoint every N train steps; its own state key so it coexists with the epoch-end one."""

        @property
        def state_key(self) -> str:
            return "StepCheckpoint" + super().state_key

    return StepCheckpoint


def _sparse_progress_cls():
    from lightning.pytorch.callbacks import Callback

    class _SparseProgress(Callback):
        """One log line every N optimizer steps and one per validation: for logs that are files, not terminals."""

        def __init__(self, every_n_steps: int = 50):
            self.every = max(1, int(every_n_steps))
            self._t0 = self._tlast = 0.0
            self._samples = 0
            self._fit_t0 = 0.0

        def on_train_start(self, trainer, pl_module):
            self._fit_t0 = self._tlast = time.perf_counter()
            total = trainer.estimated_stepping_batches
            progress_log.info("training %s: %s steps (%d epochs × %d batches), run dir %s",
                              getattr(pl_module.hparams, "model", type(pl_module).__name__), total,
                              trainer.max_epochs, trainer.num_training_batches, trainer.default_root_dir)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            x = batch[0] if isinstance(batch, (tuple, list)) else None
            self._samples += int(x.shape[0]) if isinstance(x, torch.Tensor) else 0
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

    return _SparseProgress


def _atomic_checkpoint_io():
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

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

    return AtomicCheckpointIO()


# ------------------------------------------------------------------------------------------ export
def export_weights(task, trainer, datamodule, run_dir: Path, recipe: str,
                   full_state: Optional[dict] = None) -> Path:
    """fp16 safetensors of the final (EMA when enabled) weights with what a pretrained tag needs.

    ``full_state``: the LightningModule's gathered state dict, for strategies whose module holds only a
    shard (FSDP); its ``model.*`` entries are exported."""
    from zoo import __version__
    from zoo.hub import save_state_dict

    metrics = trainer.callback_metrics
    val_top1 = metrics.get("val/top1")
    model = task.model
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    data_cfg = getattr(datamodule, "data_config", None)
    audio_cfg = datamodule.front_end_config() if hasattr(datamodule, "front_end_config") else None
    hp = task.hparams
    meta = {
        "format": "speedzoo-export-v1",
        "model": str(hp.model).split(".")[0],
        "recipe": recipe,
        "epochs": str(trainer.current_epoch),
        "global_step": str(trainer.global_step),
        "val_top1": "" if val_top1 is None else f"{float(val_top1):.6f}",
        "num_classes": str(model.num_classes),
        "class_names": json.dumps(list(getattr(datamodule, "class_names", []) or [])),
        "in_chans": str(cfg.get("input_size", (None,))[0]),
        "img_size": json.dumps(list(cfg.get("input_size", (None, None, None))[1:])),
        "model_args": json.dumps(dict(hp.model_args or {})),
        "ema": str(bool(hp.ema_decay > 0)),
        "init": _init_weights(hp),
        "preprocess": json.dumps(audio_cfg if audio_cfg else (data_cfg or {}), default=list),
        "zoo_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if full_state is not None:
        weights = {k[len("model."):]: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.cpu())
                   for k, v in full_state.items() if k.startswith("model.")}
    else:
        weights = task.export_state_dict(torch.float16)
    path = save_state_dict(weights, run_dir / "export.safetensors", metadata=meta)
    log.info("exported %s", path)
    return path


def _init_weights(hp) -> str:
    """Where the run's weights started: '' (random), a pretrained tag with its sha256, or a local file."""
    from zoo.registry import get_entry, get_tag, split_name

    if hp.checkpoint_path:
        return str(hp.checkpoint_path)
    if not hp.pretrained:                     # a tag alone selects a config, as in timm; weights need pretrained
        return ""
    name, tag = split_name(str(hp.model))
    record = get_tag(get_entry(name), tag)
    return f"{name}.{record.tag}" + (f" (sha256 {record.sha256[:12]})" if record.sha256 else "")


# ------------------------------------------------------------------------------------------ main
def _preparse(argv: list[str]) -> tuple[list[str], dict]:
    """Pull out the zoo-only flags (--resume, --fast-dev-run, -v) and resolve --config paths."""
    out: list[str] = []
    opts: dict[str, Any] = {"resume": None, "configs": []}
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok == "--resume" or tok.startswith("--resume="):
            if "=" in tok:
                opts["resume"] = tok.split("=", 1)[1] or _RESUME_AUTO
            elif nxt is not None and not nxt.startswith("-"):
                opts["resume"] = nxt
                i += 1
            else:
                opts["resume"] = _RESUME_AUTO
        elif tok in ("--fast-dev-run", "--fast_dev_run") or tok.startswith(("--fast-dev-run=", "--fast_dev_run=")):
            val = "true"
            if "=" in tok:
                val = tok.split("=", 1)[1]
            elif nxt is not None and nxt.isdigit():
                val = nxt
                i += 1
            out.append(f"--trainer.fast_dev_run={val}")
        elif tok in ("--config", "-c") or tok.startswith("--config="):
            if "=" in tok:
                val = tok.split("=", 1)[1]
            else:
                if nxt is None:
                    raise ConfigError("--config needs a file, e.g. --config configs/cifar10_vit_micro.yaml")
                val = nxt
                i += 1
            path = resolve_config(val)
            opts["configs"].append(path)
            out += ["--config", str(path)]
        else:
            out.append(tok)
        i += 1
    return out, opts


def _load_yaml(paths: list[Path]) -> dict:
    import yaml

    merged: dict = {}
    for p in paths:
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"Config file {p} must hold a mapping (model:, data:, trainer:), not {type(data).__name__}.")
        merged = _deep_merge(merged, data)
    return merged


def _setup_logging() -> None:
    if not any(getattr(h, "_zoo_fit", False) for h in progress_log.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        h._zoo_fit = True
        progress_log.addHandler(h)
    progress_log.setLevel(logging.INFO)
    progress_log.propagate = False
    logging.getLogger("lightning.pytorch").propagate = False  # it has its own handler; avoid double lines


def build_cli(args: list[str], progress_default: str = "auto"):
    """The LightningCLI (run=False) for ``args``; raises ConfigError for invalid configuration."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from zoo.recipes.classification import ClassificationTask

    class ZooCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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
                                                          checkpoints=not config.get("fast_dev_run"))
            if config.get("logger") in (None, True):
                from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

                config["logger"] = [CSVLogger(run_dir, name="csv"), TensorBoardLogger(run_dir, name="tb")]
            if config.get("precision") is None:
                config["precision"] = "bf16-mixed" if torch.cuda.is_available() else "32-true"
            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(hasattr(p, "save_checkpoint") for p in plugins):
                plugins.append(_atomic_checkpoint_io())
            config["plugins"] = plugins
            config["strategy"] = resolve_strategy(config.get("strategy", "auto"),
                                                  bool(cfg.get("activation_checkpointing", False)))
            if is_fsdp(config["strategy"]) and getattr(self.model.hparams, "ema_decay", 0) > 0:
                raise ConfigError("model.ema_decay > 0 is not supported with FSDP (the EMA copy would be a full, "
                                  "unsharded model on every device); use --trainer.strategy ddp or ema_decay 0.")
            return super()._instantiate_trainer(config, callbacks)

    try:
        return ZooCLI(ClassificationTask, LightningDataModule, subclass_mode_data=True, args=args, run=False,
                      auto_configure_optimizers=False, save_config_kwargs={"overwrite": True},
                      parser_kwargs={"exit_on_error": False, "default_env": False}, seed_everything_default=0)
    except Exception as e:  # jsonargparse's ArgumentError / validation errors
        if isinstance(e, ConfigError) or type(e).__module__.startswith("zoo"):
            raise
        if e.__class__.__name__ in ("ArgumentError", "ParserError", "NSKeyError", "TypeError", "ValueError") \
                and not isinstance(e, ConfigError):
            raise _explain_parser_error(str(e)) from None
        raise


def find_resume_checkpoint(resume: Optional[str], run_dir: Path) -> Optional[str]:
    """``auto``: the run's checkpoints/last.ckpt if present (else start fresh); a path must exist."""
    if resume is None:
        return None
    if resume == _RESUME_AUTO:
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


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    set_distributed_env()  # before Lightning starts any process: they inherit it
    args, opts = _preparse(argv)
    if any(a in ("-h", "--help", "--print_config") or a.startswith("--print_config=") for a in args):
        try:
            build_cli(args)
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    from zoo.recipes.classification import ClassificationTask, check_num_classes

    validate_keys(_load_yaml(opts["configs"]), _parse_overrides(_strip_configs(args)), ClassificationTask)
    try:
        cli = build_cli(args)
    except SystemExit as e:  # jsonargparse still exits on some errors (e.g. --help inside values)
        if e.code in (0, None):
            return 0
        raise ConfigError("Invalid command line for zoo fit; see the message above and `zoo fit --help`.") from None
    trainer, task, dm = cli.trainer, cli.model, cli.datamodule
    check_num_classes(task, dm)
    run_dir = Path(trainer.default_root_dir)
    ckpt = find_resume_checkpoint(opts["resume"], run_dir)
    if ckpt is None and (run_dir / "checkpoints" / "last.ckpt").exists() and not trainer.fast_dev_run:
        progress_log.info("note: %s exists; this fresh run overwrites it (use --resume to continue it)",
                          run_dir / "checkpoints" / "last.ckpt")
    if ckpt:
        progress_log.info("resuming from %s", ckpt)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    if trainer.interrupted:
        progress_log.info("training interrupted; resume with: zoo fit %s --resume", " ".join(argv))
        return 130
    recipe = cli.config.get("recipe") or (opts["configs"][-1].stem if opts["configs"] else "custom")
    if cli.config.get("export", True):
        # FSDP: every rank takes part in gathering the full weights (onto rank 0), so all ranks call this
        full_state = trainer.strategy.lightning_module_state_dict() if is_fsdp(trainer.strategy) else None
        if trainer.is_global_zero:
            path = export_weights(task, trainer, dm, run_dir, recipe, full_state)
            progress_log.info("exported weights to %s", path)
    val = trainer.callback_metrics.get("val/top1")
    if val is not None and trainer.is_global_zero:
        progress_log.info("final val/top1 %.4f", float(val))
    return 0


def _strip_configs(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--config":
            skip = True
            continue
        out.append(a)
    return out
