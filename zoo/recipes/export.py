"""The end of a ``zoo fit`` run: ``export.safetensors``, fp16 weights (EMA when enabled) with the metadata a
pretrained tag needs (``zoo publish`` and ``zoo eval --checkpoint`` read it back through zoo.evaluate's
export_info). The fields come from the task (Task.export_metadata: kind, task, model, metrics; a subclass
adds its own, e.g. classes and preprocessing); this module adds the run's: format, recipe, versions, date,
where the weights started.

The file is written by zoo.hub.save_state_dict: atomically (temp file beside it, then a rename) and readable
like any file the user writes (0666 less the umask), not safetensors' 0600.
"""
from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Optional

import torch

from zoo.hub import save_state_dict

log = logging.getLogger(__name__)

EXPORT_FORMAT = "speedzoo-export-v1"


def init_weights(hp) -> str:
    """Where the run's weights started: '' (random), a pretrained tag with its sha256, or a local file."""
    from zoo.registry import get_entry, get_tag, split_name

    if getattr(hp, "checkpoint_path", None):
        return str(hp.checkpoint_path)
    if not hp.pretrained:                     # a tag alone selects a config, as in timm; weights need pretrained
        return ""
    name, tag = split_name(str(hp.model))
    record = get_tag(get_entry(name), tag)
    return f"{name}.{record.tag}" + (f" (sha256 {record.sha256[:12]})" if record.sha256 else "")


# the export's writer is the hub's (atomic, default file mode); the old name stays for callers of it
write_safetensors = save_state_dict


def export_weights(task, trainer, run_dir: Path, recipe: str, full_state: Optional[dict] = None,
                   filename: str = "export.safetensors", extra: Optional[dict] = None) -> Path:
    """fp16 safetensors of the current (EMA when enabled) weights with what a pretrained tag needs.

    ``full_state``: the LightningModule's gathered state dict, for strategies whose module holds only a
    shard (FSDP); its ``model.*`` entries are exported. ``extra``: more metadata (e.g. which validation
    selected these weights)."""
    from zoo import __version__

    meta = {"format": EXPORT_FORMAT, "recipe": recipe}
    meta.update({k: str(v) for k, v in task.export_metadata().items()})
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    meta.update({
        "init": init_weights(task.hparams),
        "zoo_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    if full_state is not None:
        weights = {k[len("model."):]: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.cpu())
                   for k, v in full_state.items() if k.startswith("model.")}
    else:
        weights = task.export_state_dict(torch.float16)
    path = save_state_dict(weights, Path(run_dir) / filename, meta)
    log.info("exported %s", path)
    return path
