"""Configuration of ``zoo fit``: finding the YAML recipe, reading and merging it, the task class it names,
and checking every key before LightningCLI sees them (jsonargparse reports only the first unknown key, in
its own words; here each one gets the closest valid keys).

The task is LightningCLI's ``model:`` section: ``model: {class_path: zoo.recipes.classification.
ClassificationTask, init_args: {...}}``, or a top-level ``task: <class path>`` with the task's arguments
directly under ``model:``, or neither (classification, the shipped image and audio recipes).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import re
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from zoo.errors import ConfigError

TOP_LEVEL_KEYS = {"model", "data", "trainer", "seed_everything", "config", "print_config", "ckpt_path",
                  "checkpoint_every_n_steps", "progress", "progress_every_n_steps", "export", "recipe",
                  "activation_checkpointing", "task", "export_best", "export_best_mode"}
RESUME_AUTO = "auto"
DEFAULT_TASK = "zoo.recipes.classification.ClassificationTask"


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


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def init_params(obj) -> tuple[list[str], bool]:
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


def import_class(path: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def parse_overrides(args: list[str]) -> list[tuple[str, Optional[str]]]:
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
    model_keys, _ = init_params(task_cls)
    trainer_keys, _ = init_params(Trainer)

    data_cls_path = None
    data_cfg = config.get("data")
    if isinstance(data_cfg, dict):
        data_cls_path = data_cfg.get("class_path")
    elif isinstance(data_cfg, str):
        data_cls_path = data_cfg
    for key, val in overrides:
        if key in ("data", "data.class_path") and val:
            data_cls_path = val
    data_cls = import_class(data_cls_path) if data_cls_path else None
    data_keys, data_any = init_params(data_cls) if data_cls is not None else ([], True)

    def check(section: str, key: str, valid: list[str], any_ok: bool = False):
        if not any_ok and key not in valid:
            unknown.append((f"{section}.{key}" if section else key, [f"{section}.{v}" if section else v for v in valid]))

    for top, value in config.items():
        check("", top, sorted(TOP_LEVEL_KEYS))
        if top == "model" and isinstance(value, dict):
            init = value.get("init_args") or {} if "class_path" in value else value
            for k in init:
                check("model", k, model_keys)
            for k in value:
                if "class_path" in value and k not in ("class_path", "init_args", "dict_kwargs"):
                    check("model", k, ["class_path", "init_args"])
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
            sub = parts[2] if parts[1] == "init_args" and len(parts) > 2 else parts[1]
            if sub not in ("class_path", "init_args"):
                check("model", sub, model_keys)
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


def explain_parser_error(msg: str) -> ConfigError:
    """Turn a jsonargparse error message into a ConfigError (fallback when validate_keys saw nothing)."""
    msg = str(msg).strip()
    m = re.search(r"unrecognized arguments: (.+)", msg)
    if m:
        return ConfigError(f"Unknown command-line option(s): {m.group(1)}. Use dotted keys of the config, e.g. "
                           f"--model.lr 1e-3, --data.batch_size 64, --trainer.max_epochs 3 (zoo fit --help).")
    return ConfigError(f"Invalid configuration: {msg}")


def preparse(argv: list[str]) -> tuple[list[str], dict]:
    """Pull out the zoo-only flags (--resume, --fast-dev-run, -v) and resolve --config paths."""
    out: list[str] = []
    opts: dict[str, Any] = {"resume": None, "configs": []}
    i = 0
    while i < len(argv):
        tok = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if tok == "--resume" or tok.startswith("--resume="):
            if "=" in tok:
                opts["resume"] = tok.split("=", 1)[1] or RESUME_AUTO
            elif nxt is not None and not nxt.startswith("-"):
                opts["resume"] = nxt
                i += 1
            else:
                opts["resume"] = RESUME_AUTO
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


def load_yaml(paths: list[Path]) -> dict:
    import yaml

    merged: dict = {}
    for p in paths:
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"Config file {p} must hold a mapping (model:, data:, trainer:), not {type(data).__name__}.")
        merged = deep_merge(merged, data)
    return merged


def strip_configs(args: list[str]) -> list[str]:
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


def task_class_path(config: dict, overrides: list[tuple[str, Optional[str]]]) -> str:
    """The task's class path: ``--model.class_path`` / ``--task`` on the command line, else the YAML's
    ``model.class_path`` or ``task``, else classification."""
    for key, val in reversed(overrides):
        if key in ("model.class_path", "task", "model") and val:
            return val
    model = config.get("model")
    if isinstance(model, dict) and model.get("class_path"):
        return str(model["class_path"])
    if isinstance(model, str):
        return model
    return str(config.get("task") or DEFAULT_TASK)


def task_class(path: str):
    """The Task subclass at ``path``; ConfigError when it is missing or not a Task."""
    from zoo.recipes.task import Task

    cls = import_class(path)
    if cls is None:
        raise ConfigError(f"task {path!r} cannot be imported; give a class path such as {DEFAULT_TASK} "
                          f"(model.class_path or task: in the YAML).")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task {path!r} is not a zoo.recipes.task.Task subclass.")
    return cls
