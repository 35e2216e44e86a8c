"""The zoo at a glance: every registered model's accuracy joined with its speed and memory across resolutions.

    zoo table [--results benchmarks/results] [--csv benchmarks/results/zoo.csv] [--md ZOO.md] [--plots docs]
    zoo table --plan [--models 'vim_*' ...] [--sizes native,512,1024]     # what the GPU refresh times
    zoo table --merge A.json B.json ... [--into benchmarks/results/zoo_throughput.json]

The table joins, by model name, two kinds of data that already exist and nothing typed by hand:

- accuracy: the registry's pretrained tags (``zoo/weights/manifest.json`` for the zoo's own weights, written by
  ``zoo publish`` from ``zoo eval``; the published figures for converted official weights);
- speed and memory: every results file under ``benchmarks/results`` (``{meta, rows}``, zoo.bench.results) whose
  rows name a registered ``model``, an ``img_size`` and a ``mode`` (``infer`` / ``train``) with ``img_per_s``
  (or ``<mode>_img_per_s``, ``tower_<mode>_img_per_s``), measured on a GPU by our implementation (rows of a
  peer implementation such as timm's and rows of several GPUs are left out).

Rows: one per (model.tag, image size, mode) for every tag at its native resolution and at 512 and 1024 px, plus
every architecture without weights that has a measurement; an architecture's speed serves each tag whose input
equals the architecture's. When several rows measure one (model, size, mode) the table takes, in this order:
a row of ``zoo_throughput.json`` (the one-command refresh, ``benchmarks/zoo_refresh_h200.sh``), plain eager
execution over CUDA graphs / compiled / channels-last variants, bf16, the newest file, the fastest. Every CSV row
names the file, command, commit and date its figures come from; ZOO.md numbers the sources under the table.
Parameters and GFLOPs (2 x the GMACs FlopCounterMode counts; custom kernels such as the selective scan are not
counted) come from the measurement rows that carry them (``zoo bench throughput`` writes both).
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from zoo.bench.results import RESULTS_DIR

log = logging.getLogger(__name__)

REFRESH = "zoo_throughput"
"""The results file the GPU refresh writes (``benchmarks/zoo_refresh_h200.sh``); its rows win over all others."""
SIZES = (512, 1024)
"""Image sizes every image model is shown at besides its native one."""
MODES = ("infer", "train")
MODEL_PEERS = frozenset({"timm", "official", "reference", "open_clip", "mamba_ssm"})
"""``impl`` values of model rows that time someone else's implementation of a name (kept out of the table)."""
METRIC_ORDER = ("top1", "acc1", "cider", "CIDEr", "text_retrieval_recall@1", "image_retrieval_recall@1",
                "nats_per_char", "bits_per_char")
"""Which of a data set's metrics is the row's headline figure (the first present; else the first listed)."""
BREAKDOWN_KEYS = ("stage", "kernel", "table")
"""Rows carrying one of these keys are parts of a profile (a stage, a kernel), not a whole model's figure."""
CSV_COLUMNS = ["name", "model", "tag", "family", "task", "dataset", "metric", "value", "metrics",
               "accuracy_source", "accuracy_command", "accuracy_date", "accuracy_commit", "params_m", "img_size",
               "native", "mode", "batch", "dtype", "exec", "gflops", "img_per_s", "peak_gib", "note", "gpu",
               "speed_source", "speed_command", "speed_commit", "speed_date"]
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2})?")


# ---------------------------------------------------------------------------------------------- measurements
@dataclass(frozen=True)
class Source:
    """Where figures come from: a results file (or a tag's record) and the command, commit, date and GPU."""

    name: str
    command: str = ""
    commit: str = ""
    date: str = ""
    gpu: str = ""

    @property
    def sort_date(self) -> str:
        found = _DATE.search(self.date or "")
        return found.group(0) if found else ""


@dataclass
class Speed:
    """One measured (model, image size, mode) of one results row."""

    model: str
    img_size: int
    mode: str
    source: Source
    img_per_s: float | None
    peak_gib: float | None = None
    batch: int | None = None
    dtype: str = ""
    exec: str = "eager"
    params_m: float | None = None
    gmacs: float | None = None
    note: str = ""

    def rank(self) -> tuple:
        """Larger is preferred (see the module docstring)."""
        return (self.source.name == REFRESH, self.exec == "eager", self.dtype.startswith("bf16"),
                self.source.sort_date, self.peak_gib is not None, self.img_per_s or 0.0)


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def read_file(path: Path) -> tuple[Path, dict, list[dict]] | None:
    """(path, meta, rows) of a ``{meta, rows}`` JSON; None for any other file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        log.warning("skipping %s: %s", path, e)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        return None
    return Path(path), data.get("meta") or {}, [r for r in data["rows"] if isinstance(r, dict)]


def read_results(results_dir: str | Path) -> list[tuple[Path, dict, list[dict]]]:
    """Every results file in ``results_dir``, sorted by name."""
    return [f for f in map(read_file, sorted(Path(results_dir).glob("*.json"))) if f]


def row_source(path: Path, meta: dict, row: dict) -> Source:
    """A row's provenance: its own ``command`` / ``date`` / ``commit`` / ``gpu`` (merged files) or its file's."""
    def pick(key):
        return _one_line(row.get(key) or meta.get(key))
    return Source(name=path.stem, command=pick("command"), commit=pick("commit").split(" ")[0], date=pick("date"),
                  gpu=pick("gpu"))


def _exec_label(row: dict) -> str:
    parts = [str(v) for v in (row.get("exec"), row.get("variant")) if v and v != "eager"]
    parts += [flag for flag in ("compiled", "channels_last") if row.get(flag)]
    return "+".join(parts) or "eager"


def as_number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def speeds_of(path: Path, meta: dict, rows: list[dict], known: set[str], include_cpu: bool = False) -> list[Speed]:
    """The speed rows of one results file that belong in the table (registered models, our implementation,
    one GPU; ``include_cpu`` also keeps CPU rows)."""
    out = []
    for row in rows:
        model, size = row.get("model"), row.get("img_size")
        if model not in known or not isinstance(size, int) or row.get("impl") in MODEL_PEERS:
            continue
        if any(k in row for k in BREAKDOWN_KEYS):
            continue
        if (as_number(row.get("gpus")) or 1) > 1:
            continue
        source = row_source(path, meta, row)
        if not include_cpu and (not source.gpu or source.gpu == "cpu"):
            continue
        figures = {}
        if row.get("mode") in MODES and ("img_per_s" in row or "note" in row):
            figures[row["mode"]] = row.get("img_per_s")
        labels = {}
        for mode in MODES:
            for key, label in ((f"{mode}_img_per_s", None), (f"tower_{mode}_img_per_s", "image tower")):
                if mode not in figures and as_number(row.get(key)) is not None:
                    figures[mode], labels[mode] = row[key], label
        for mode, rate in figures.items():
            note = _one_line(row.get("note"))
            if as_number(rate) is None and not note:
                continue
            own = row.get("mode") == mode
            params = row.get("param_count", row.get("params_m"))
            out.append(Speed(model=model, img_size=size, mode=mode, source=source, img_per_s=as_number(rate),
                             peak_gib=as_number(row.get("peak_gib")) if own else None,
                             batch=row.get("batch") if own else None, dtype=str(row.get("dtype") or ""),
                             exec=labels.get(mode) or _exec_label(row), params_m=as_number(params),
                             gmacs=as_number(row.get("gmacs", row.get("active_gmacs"))),
                             note="OOM" if note.startswith("out of memory") else note))
    return out


def collect_speeds(results_dir: str | Path, known: set[str], include_cpu: bool = False) -> list[Speed]:
    return [s for path, meta, rows in read_results(results_dir) for s in speeds_of(path, meta, rows, known, include_cpu)]


def best(speeds: Iterable[Speed]) -> Speed | None:
    speeds = list(speeds)
    return max(speeds, key=Speed.rank) if speeds else None


# ---------------------------------------------------------------------------------------------- accuracy
def headline(metrics: dict[str, dict[str, float]], tag: str | None) -> tuple[str, str, float | None]:
    """(data set, metric, value) of a tag's metrics: the data set named like the tag if any, else the first;
    its metric by :data:`METRIC_ORDER`."""
    if not metrics:
        return "", "", None
    dataset = next((d for d in metrics if tag and d.split(" ")[0].split("-")[0] == tag), next(iter(metrics)))
    figures = metrics[dataset]
    metric = next((m for m in METRIC_ORDER if m in figures), next(iter(figures), ""))
    return dataset, metric, figures.get(metric)


def _git_commit(path: Path) -> tuple[str, str]:
    """(short commit, date) of the last commit touching ``path``; empty when git cannot say."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h %cs", "--", str(path)], capture_output=True,
                             text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "", ""
    return (out[0], out[1]) if len(out) == 2 else ("", "")


def accuracy_source(name: str, tag: str, record, dataset: str) -> Source:
    """What produced a tag's metrics: the command its notes give (``reproduce: ...``), else ``zoo eval`` of
    the shipped file (``zoo publish`` measured it), else the figures published with the converted weights."""
    notes = record.notes or ""
    date = (_DATE.search(notes) or [""])[0] if notes else ""
    if record.source.package_file:
        from zoo.data import catalog
        from zoo.weights import weights_dir

        found = re.search(r"reproduce: (zoo eval [^;\n]+)", notes)
        data = dataset.split(" ")[0]
        command = found.group(1).strip() if found else (
            f"zoo eval {name}.{tag}" + (f" --data {data}" if catalog.is_name(data) else ""))
        commit, committed = _git_commit(weights_dir() / record.source.package_file)
        return Source(name="zoo/weights/manifest.json", command=command, commit=commit, date=date or committed)
    return Source(name=f"published with {record.source.describe()}", date=date)


# ---------------------------------------------------------------------------------------------- the table
@dataclass
class Item:
    """One line of the zoo: a model.tag (or an architecture without weights) and what is known of it."""

    model: str
    tag: str
    family: str
    task: str
    input_size: tuple
    arch_input: tuple
    dataset: str = ""
    metric: str = ""
    value: float | None = None
    metrics: dict = field(default_factory=dict)
    acc: Source | None = None

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}" if self.tag else self.model

    @property
    def native(self) -> int | None:
        size = self.input_size
        return int(size[-1]) if len(size) == 3 and size[-1] == size[-2] else None

    @property
    def timed(self) -> bool:
        """Whether the architecture's measurements describe this item (same input as the architecture)."""
        return self.native is not None and self.input_size == self.arch_input


def _entries(entries=None) -> list:
    if entries is not None:
        return list(entries)
    import zoo
    from zoo.registry import get_entry

    return [get_entry(n) for n in zoo.list_models()]


def items_of(entries, speeds: list[Speed]) -> list[Item]:
    """Every tag of every entry, then every entry without tags that has a measurement (each part by task,
    family and name)."""
    measured = {s.model for s in speeds}
    items = []
    for entry in entries:
        arch_input = tuple(entry.default_cfg.get("input_size") or ())
        for tag, record in entry.tags.items():
            dataset, metric, value = headline(record.metrics, tag)
            items.append(Item(model=entry.name, tag=tag, family=entry.family, task=entry.tag_kind(record),
                              input_size=tuple(record.preprocess.get("input_size") or arch_input),
                              arch_input=arch_input, dataset=dataset, metric=metric, value=value,
                              metrics=record.metrics, acc=accuracy_source(entry.name, tag, record, dataset)))
        if not entry.tags and entry.name in measured:
            items.append(Item(model=entry.name, tag="", family=entry.family, task=entry.kind, input_size=arch_input,
                              arch_input=arch_input))
    return sorted(items, key=lambda i: (not i.tag, i.task, i.family, i.model, i.tag))


def _metrics_text(metrics: dict) -> str:
    return "; ".join(f"{ds}: " + ", ".join(f"{k}={v}" for k, v in m.items()) for ds, m in metrics.items())


def count_params(name: str) -> float | None:
    """Millions of parameters of ``name`` (``model.tag``: with the tag's architecture, no weights loaded), built on
    the meta device where the builder allows it, else on the CPU; None when it cannot be built here (e.g. a tower
    that needs data this machine lacks)."""
    import torch

    import zoo

    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = zoo.create_model(name, pretrained=False)
        except Exception:  # noqa: BLE001 -- a count is optional: the cell stays empty, the table is still written
            continue
        return sum(p.numel() for p in model.parameters()) / 1e6
    return None


def build_rows(items: list[Item], speeds: list[Speed], counts: bool = False) -> list[dict[str, Any]]:
    """The long table: one row per (item, image size, mode). ``counts``: fill the parameters that no results row
    measured by building each model (:func:`count_params`, about 30 s for the registry on two cores)."""
    by_key: dict[tuple, list[Speed]] = {}
    for s in speeds:
        by_key.setdefault((s.model, s.img_size, s.mode), []).append(s)
    params, gmacs = {}, {}  # from whichever row counted them (the preferred one where several did)
    for s in sorted(speeds, key=Speed.rank):
        if s.params_m is not None:
            params[s.model] = s.params_m
        if s.gmacs is not None:
            gmacs[(s.model, s.img_size)] = s.gmacs
    rows = []
    for item in items:
        sizes = sorted({item.native, *SIZES}) if item.timed else [item.native]
        base = {"name": item.name, "model": item.model, "tag": item.tag, "family": item.family, "task": item.task,
                "dataset": item.dataset, "metric": item.metric, "value": item.value,
                "metrics": _metrics_text(item.metrics), "params_m": params.get(item.model)}
        if base["params_m"] is None and counts:
            base["params_m"] = count_params(item.name)
        if item.acc:
            base.update(accuracy_source=item.acc.name, accuracy_command=item.acc.command,
                        accuracy_date=item.acc.date, accuracy_commit=item.acc.commit)
        for size in sizes:
            for mode in MODES:
                row = {**base, "img_size": size if size is not None else "x".join(map(str, item.input_size[1:])),
                       "native": size == item.native, "mode": mode}
                s = best(by_key.get((item.model, size, mode), [])) if item.timed else None
                if s is not None:
                    row.update(batch=s.batch, dtype=s.dtype, exec=s.exec, img_per_s=s.img_per_s, peak_gib=s.peak_gib,
                               note=s.note,
                               gpu=s.source.gpu, speed_source=f"benchmarks/results/{s.source.name}.json",
                               speed_command=s.source.command, speed_commit=s.source.commit,
                               speed_date=s.source.date)
                elif not item.timed and item.input_size != item.arch_input and item.arch_input:
                    row["note"] = (f"input {item.input_size} differs from the architecture's {item.arch_input}: "
                                   f"not timed")
                if (item.model, size) in gmacs and item.timed:
                    row["gflops"] = round(2 * gmacs[(item.model, size)], 3)
                rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return path


# ---------------------------------------------------------------------------------------------- Markdown
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}g}"
    return str(value)


def _cell(row: dict | None, key: str) -> str:
    if not row:
        return ""
    text = _fmt(row.get(key), 3)
    if key == "img_per_s":
        if not text and row.get("note") == "OOM":
            return "OOM"
        if text and row.get("exec") not in (None, "", "eager"):
            text += f" ({row['exec']})"
    return text


def render_markdown(rows: list[dict], plots: Iterable[str] = (), command: str = "zoo table") -> str:
    """ZOO.md: the joined table, one line per (model.tag, image size), sources numbered beneath."""
    sources: dict[tuple, int] = {}

    def ref(*key) -> str:
        if not key[0]:
            return ""
        sources.setdefault(key, len(sources) + 1)
        return f"[{sources[key]}]"

    lines = ["# The zoo at a glance", "",
             f"Generated by `{command}` from the registry (`zoo/weights/manifest.json`) and `benchmarks/results/*.json`; "
             "do not edit by hand. `bash benchmarks/zoo_refresh_h200.sh` refreshes the measurements on a GPU "
             "(`zoo bench throughput` of every registered image model at its native size, 512 and 1024 px, "
             "inference and training, bf16), then `zoo table` regenerates this page, `benchmarks/results/zoo.csv` "
             "and the plots.", "",
             "images/s and peak GiB: one GPU, our implementation, eager unless marked; batch as given. Accuracy: "
             "the tag's headline metric (all metrics in zoo.csv). An empty cell has not been measured yet; "
             "512 and 1024 px lines appear once measured (zoo.csv lists them empty). "
             "GFLOPs count matmuls, convolutions and SDPA (FlopCounterMode), not custom kernels such as the "
             "selective scan.", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    header = ["model", "task", "data set", "accuracy", "params (M)", "px", "GFLOPs", "batch", "infer img/s",
              "infer GiB", "train img/s", "train GiB", "sources"]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["name"], r["img_size"]), {})[r["mode"]] = r
    sections = {True: [], False: []}
    for (name, size), modes in groups.items():
        first = next(iter(modes.values()))
        infer, train = modes.get("infer"), modes.get("train")
        if not first["native"] and not any(m.get("img_per_s") or m.get("note") for m in (infer, train) if m):
            continue  # a size not measured yet: in zoo.csv, empty
        acc = ""
        if first["native"] and first.get("value") is not None:
            acc = f"{first['metric']} {_fmt(first['value'], 4)}"
        refs = [ref(first.get("accuracy_source"), first.get("accuracy_command"), first.get("accuracy_commit"),
                    first.get("accuracy_date"), "") if first["native"] else ""]
        refs += [ref(m.get("speed_source"), m.get("speed_command"), m.get("speed_commit"), m.get("speed_date"),
                     m.get("gpu")) for m in (infer, train) if m]
        batches = "/".join(dict.fromkeys(str(m["batch"]) for m in (infer, train) if m and m.get("batch")))
        gflops = next((m["gflops"] for m in (infer, train) if m and m.get("gflops") is not None), None)
        px = f"**{size}**" if first["native"] and size else str(size)
        sections[bool(first["tag"])].append(
            [name, first["task"], first["dataset"].split(" (")[0] if first["native"] else "", acc,
             _fmt(first.get("params_m"), 4), px, _fmt(gflops), batches, _cell(infer, "img_per_s"),
             _cell(infer, "peak_gib"), _cell(train, "img_per_s"), _cell(train, "peak_gib"),
             " ".join(dict.fromkeys(r for r in refs if r))])
    titles = {True: "Models with weights (shipped or converted)",
              False: "Architectures without weights, measured"}
    for tagged in (True, False):
        if not sections[tagged]:
            continue
        lines += ["", f"## {titles[tagged]}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in sections[tagged]]
    lines += ["", "## Sources", "", "Bold px: the model's native resolution. Each row's sources: the command "
              "that produced its accuracy and its measurements, with commit, date and GPU.", ""]
    for (name, command, commit, date, gpu), n in sources.items():
        facts = ", ".join(x for x in (f"commit {commit}" if commit else "", date, gpu) if x)
        lines.append(f"{n}. {name}" + (f": `{command}`" if command else "") + (f" ({facts})" if facts else ""))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- commands
def build(results_dir: str | Path = RESULTS_DIR, entries=None, include_cpu: bool = False, counts: bool = False
          ) -> tuple[list[dict], list[Speed], list]:
    """(table rows, every speed record, the registry entries) from the results files and the registry."""
    entries = _entries(entries)
    speeds = collect_speeds(results_dir, {e.name for e in entries}, include_cpu)
    return build_rows(items_of(entries, speeds), speeds, counts), speeds, entries


def regenerate(results_dir: str | Path = RESULTS_DIR, csv_path: str | Path | None = None,
               md_path: str | Path | None = "ZOO.md", plots_dir: str | Path | None = "docs", entries=None,
               include_cpu: bool = False, command: str = "zoo table", counts: bool = False) -> dict[str, Any]:
    """Write the CSV, the Markdown page and the plots; returns the rows and the paths written."""
    rows, speeds, entries = build(results_dir, entries, include_cpu, counts)
    csv_path = Path(csv_path) if csv_path else Path(results_dir) / "zoo.csv"
    written = {"rows": rows, "csv": write_csv(rows, csv_path), "plots": []}
    if plots_dir:
        from zoo import table_plots as plots

        written["plots"] = plots.write_all(rows, speeds, entries, read_results(results_dir), plots_dir)
    if md_path:
        md_path = Path(md_path)
        rel = [Path(p).resolve() for p in written["plots"]]
        try:
            shown = [str(p.relative_to(md_path.resolve().parent)) for p in rel]
        except ValueError:
            shown = [str(p) for p in rel]
        md_path.write_text(render_markdown(rows, shown, command))
        written["md"] = md_path
    return written


def batch_for(px: int) -> int:
    """About as many pixels per batch as 64 images at 224 px: a power of two in [8, 512] (512 at 32 px, 64 at
    224, 8 at 512 and above, the batches of the committed benchmarks)."""
    target = 64 * (224 / px) ** 2
    batch = 8
    while batch * 2 <= min(target, 512):
        batch *= 2
    return batch


def measured_in(path: str | Path | None) -> set[tuple[str, int]]:
    """(model, image size) pairs a results file holds in both modes (a figure or a note such as out of memory)."""
    found = read_file(Path(path)) if path and Path(path).is_file() else None
    modes: dict[tuple, set] = {}
    for r in found[2] if found else []:
        if r.get("img_per_s") is not None or r.get("note"):
            modes.setdefault((r.get("model"), r.get("img_size")), set()).add(r.get("mode"))
    return {k for k, v in modes.items() if set(MODES) <= v}


def plan(patterns: list[str] | None = None, sizes: str = "native,512,1024", chunk: int = 8, entries=None,
         done: set[tuple[str, int]] = frozenset()) -> list[tuple[int, int, list[str]]]:
    """(image size, batch, models) groups for the refresh: every architecture of a timm kind (image / audio
    classifiers, which ``zoo bench throughput`` times) matching ``patterns``, all sizes of the models with
    weights first; (model, size) pairs in ``done`` are left out."""
    from zoo.kinds import KIND_TABLE

    chosen = [e for e in _entries(entries) if KIND_TABLE[e.kind].timm and
              (not patterns or any(fnmatch.fnmatch(e.name, p) for p in patterns))]
    groups: dict[tuple[bool, int, int], list[str]] = {}
    for e in sorted(chosen, key=lambda e: e.name):
        native = int((e.default_cfg.get("input_size") or (3, 224, 224))[-1])
        want = [native if s == "native" else int(s) for s in sizes.split(",") if s.strip()]
        for px in dict.fromkeys(want):
            if (e.name, px) not in done:
                groups.setdefault((not e.tags, px, batch_for(px)), []).append(e.name)
    return [(px, b, names[i:i + chunk]) for (_, px, b), names in sorted(groups.items())
            for i in range(0, len(names), chunk)]


def merge(paths: list[str | Path], into: str | Path) -> Path:
    """Rows of ``paths`` (results files of ``zoo bench throughput``), each keeping its file's command, date,
    commit and GPU, merged into ``into``: a new row replaces an old one of the same (model, size, mode)."""
    from zoo.bench.results import write_results

    into = Path(into)
    key = lambda r: (r.get("model"), r.get("img_size"), r.get("mode"))  # noqa: E731
    merged: dict[tuple, dict] = {}
    sources = [into] if into.is_file() else []
    for path, meta, rows in filter(None, map(read_file, [*sources, *map(Path, paths)])):
        for r in rows:
            merged[key(r)] = {**r, **{k: r.get(k) or meta.get(k) for k in ("command", "date", "commit", "gpu")}}
    return write_results(into.stem, list(merged.values()), command="zoo table --merge " + " ".join(map(str, paths)),
                         out_dir=into.parent)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo table", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(RESULTS_DIR), help="folder of results JSON files (default %(default)s)")
    p.add_argument("--csv", default=None, help="the joined table (default RESULTS/zoo.csv)")
    p.add_argument("--md", default="ZOO.md", help="the rendered page (default %(default)s; '' skips it)")
    p.add_argument("--plots", default="docs", help="folder for zoo_*.png (default %(default)s; '' skips them)")
    p.add_argument("--include-cpu", action="store_true", help="also use rows measured on the CPU")
    p.add_argument("--no-counts", dest="counts", action="store_false",
                   help="leave parameters no results row measured empty instead of building each model (~30 s)")
    p.add_argument("--plan", action="store_true", help="print 'PX BATCH MODEL...' lines for the GPU refresh")
    p.add_argument("--models", nargs="*", default=None, metavar="PATTERN", help="--plan: fnmatch patterns")
    p.add_argument("--sizes", default="native,512,1024", help="--plan: sizes (default %(default)s)")
    p.add_argument("--chunk", type=int, default=8, help="--plan: models per zoo bench call (default %(default)s)")
    p.add_argument("--missing", default=None, metavar="JSON",
                   help="--plan: leave out (model, size) pairs this results file holds in both modes")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="results files to merge into --into")
    p.add_argument("--into", default=str(RESULTS_DIR / f"{REFRESH}.json"), help="--merge target (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.plan:
        for px, batch, names in plan(args.models, args.sizes, args.chunk, done=measured_in(args.missing)):
            print(px, batch, *names)
        return 0
    if args.merge:
        print(f"wrote {merge(args.merge, args.into)}")
        return 0
    out = regenerate(args.results, args.csv, args.md or None, args.plots or None, include_cpu=args.include_cpu,
                     counts=args.counts)
    print(f"wrote {out['csv']} ({len(out['rows'])} rows)" + (f", {out['md']}" if out.get("md") else ""))
    for p in out["plots"]:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
