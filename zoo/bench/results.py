"""Benchmark results in the project's format: ``{meta, rows}`` JSON plus a rendered Markdown table.

``meta`` holds date, commit, gpu, torch, triton and the command; each row holds at least ``op`` or
``model``, ``shape`` or ``img_size``, ``mode``, ``impl``, ``dtype`` and its figures (``ms``, ``img_per_s``,
``peak_gib``, ...). Peers are measured in the same process and run as ours, so ratios are meaningful.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path("benchmarks") / "results"


def _commit() -> str:
    """``ZOO_BENCH_COMMIT`` when set (a device copy of the tree has no .git, or a stale one), else git's HEAD."""
    if os.environ.get("ZOO_BENCH_COMMIT"):
        return os.environ["ZOO_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def collect_meta(command: str | None = None) -> dict[str, Any]:
    """Where and how a benchmark ran."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton_version,
        "command": command or " ".join(sys.argv),
    }


def render_markdown(name: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A Markdown table of all rows, columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    lines = [f"# {name}", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(name: str, rows: list[dict[str, Any]], command: str | None = None,
                  out_dir: str | os.PathLike | None = None, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/<name>.json`` and ``<name>.md``; returns the JSON path."""
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    meta = collect_meta(command)
    if extra_meta:
        meta.update(extra_meta)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / f"{name}.md").write_text(render_markdown(name, meta, rows))
    return path
