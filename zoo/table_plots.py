"""The zoo's plots (matplotlib, Agg): accuracy vs images/s per task, images/s and peak memory vs resolution per
family, and our kernels against their peers. Everything is drawn from the joined table and the results files
(zoo.table); ``zoo table`` writes them as ``docs/zoo_*.png``.

matplotlib is a development dependency (``pip install -e ".[dev]"``); the library imports it only here.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from zoo.table import REFRESH, Speed, as_number
from zoo.errors import ConfigError

DPI = 110
REFERENCE_FAMILY = "vit"
"""Softmax-attention ViTs: drawn (grey, dashed) in every other family's resolution panel for reference."""
KERNEL_BASELINES = frozenset({"reference", "torch", "dense", "loop"})
"""``impl`` values of kernel rows that are plain-PyTorch baselines, not peers: left out of the peer plot."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the zoo's plots need matplotlib: pip install 'matplotlib>=3.8' (it is in the dev "
                          "extra: pip install -e '.[dev]'), or run zoo table --plots ''") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """A palette PNG (a third of the RGBA file's size, same look) at :data:`DPI`."""
    import io

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    _pyplot().close(fig)
    Image.open(buf).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


def _empty(plt, text: str):
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def _grid(plt, n: int, ncols: int, w: float, h: float):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


# ---------------------------------------------------------------------------------------------- accuracy
def accuracy_points(rows: list[dict]) -> dict[tuple, tuple[str, list[dict]]]:
    """(task, data set, metric) -> (mode, points {name, value, img_per_s, mode}) of the native rows that have
    both an accuracy and a speed. A panel's mode is the one most of its models are measured in (inference on
    a tie); a model measured only in the other mode shows that one (a hollow marker)."""
    by_panel: dict[tuple, dict[str, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["native"] and r.get("value") is not None and r.get("img_per_s"):
            by_panel[(r["task"], r["dataset"].split(" (")[0], r["metric"])][r["name"]][r["mode"]] = r
    panels = {}
    for key, models in sorted(by_panel.items()):
        mode = max(("infer", "train"), key=lambda m: (sum(m in v for v in models.values()), m == "infer"))
        points = []
        for name, modes in models.items():
            r = modes.get(mode) or next(iter(modes.values()))
            points.append({"name": name, "value": r["value"], "img_per_s": r["img_per_s"], "mode": r["mode"]})
        panels[key] = (mode, points)
    return panels


def plot_accuracy(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    panels = accuracy_points(rows)
    if not panels:
        return _save(_empty(plt, "no model has both an accuracy and a measured speed yet"), path)
    fig, axes = _grid(plt, len(panels), 3, 4.6, 3.4)
    from matplotlib.ticker import NullFormatter

    for ax, ((task, dataset, metric), (mode, points)) in zip(axes, panels.items()):
        for p in points:
            filled = p["mode"] == mode
            ax.scatter(p["img_per_s"], p["value"], s=36, marker="o", edgecolors="C0",
                       facecolors="C0" if filled else "none")
            ax.annotate(p["name"], (p["img_per_s"], p["value"]), fontsize=6.5, xytext=(4, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_title(f"{task} · {dataset}", fontsize=9)
        other = {"infer": "training", "train": "inference"}[mode]
        ax.set_xlabel(f"images/s at native px, {'inference' if mode == 'infer' else 'training'}"
                      + (f" (hollow: {other})" if any(p["mode"] != mode for p in points) else ""), fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.margins(x=0.35, y=0.2)
    fig.suptitle("Accuracy vs images/s (one GPU, bf16)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- resolution
def resolution_series(speeds: list[Speed]) -> dict[tuple[str, str], list[Speed]]:
    """(model, mode) -> the points of one source and one execution (at least two sizes): the refresh's if it
    has them, else plain eager, bf16, the newest file, the most sizes; per size the fastest of that source."""
    runs: dict[tuple, dict[int, Speed]] = defaultdict(dict)
    for s in speeds:
        if s.img_per_s:
            point = runs[(s.model, s.mode, s.source.name, s.exec)]
            if s.img_size not in point or s.img_per_s > point[s.img_size].img_per_s:
                point[s.img_size] = s
    chosen: dict[tuple[str, str], tuple] = {}
    for (model, mode, source, execution), points in runs.items():
        if len(points) < 2:
            continue
        first = next(iter(points.values()))
        rank = (source == REFRESH, execution == "eager", first.dtype.startswith("bf16"), first.source.sort_date,
                len(points))
        if (model, mode) not in chosen or rank > chosen[(model, mode)][0]:
            chosen[(model, mode)] = (rank, [points[k] for k in sorted(points)])
    return {k: v[1] for k, v in sorted(chosen.items())}


def plot_resolution(speeds: list[Speed], entries: list, path: Path) -> Path:
    plt = _pyplot()
    family = {e.name: e.family for e in entries}
    series = resolution_series(speeds)
    families = sorted({family[m] for m, _ in series}, key=lambda f: (f == REFERENCE_FAMILY, f))
    if not families:
        return _save(_empty(plt, "no model is measured at two or more resolutions yet"), path)
    refs = {k: v for k, v in series.items() if family[k[0]] == REFERENCE_FAMILY}
    fig, axes = plt.subplots(len(families), 2, figsize=(12, 2.9 * len(families)), squeeze=False)
    for (ax_rate, ax_mem), fam in zip(axes, families):
        own = {k: v for k, v in series.items() if family[k[0]] == fam}
        colors = {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(m for m, _ in own))}
        lines = [(k, v, colors[k[0]], 1.6) for k, v in own.items()]
        if fam != REFERENCE_FAMILY:
            lines += [(k, v, "0.6", 1.0) for k, v in refs.items()]
        batches: dict[int, set] = defaultdict(set)
        for (model, mode), points, color, width in lines:
            xs = [p.img_size for p in points]
            for p in points:
                batches[p.img_size].add(p.batch)
            style = dict(color=color, lw=width, ls="-" if mode == "infer" else "--",
                         marker="o" if mode == "infer" else "s", ms=3.5)
            label = f"{model} {mode}" + (" (softmax ref.)" if color == "0.6" else "")
            ax_rate.plot(xs, [p.img_per_s for p in points], label=label, **style)
            mem = [(p.img_size, p.peak_gib) for p in points if p.peak_gib is not None]
            if mem:
                ax_mem.plot(*zip(*mem), **style)
        for ax, ylabel in ((ax_rate, "images/s"), (ax_mem, "peak GiB")):
            ax.set_xscale("log", base=2)
            ticks = sorted(batches)  # px, with the batch when every point there has the same one
            ax.set_xticks(ticks, [f"{t}\nb{next(iter(batches[t]))}" if len(batches[t]) == 1 and None not in
                                  batches[t] else str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        ax_rate.set_yscale("log")
        ax_rate.set_title(f"family {fam}: images/s vs px (solid: inference, dashed: training)", fontsize=9)
        ax_mem.set_title(f"family {fam}: peak memory vs px", fontsize=9)
        ax_mem.legend(*ax_rate.get_legend_handles_labels(), fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1),
                      frameon=False)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- kernels
def kernel_ratios(results: list[tuple[Path, dict, list[dict]]]) -> list[dict[str, Any]]:
    """peer ms / our ms for every (op, shape, mode, peer) of the kernel benchmarks, ours and the peer from the
    same file (the same run); ours is the variant the op picks itself (``auto``) when rows say, else the fastest.
    Where several files time the same comparison the newest wins."""
    from zoo.table import row_source

    found: dict[tuple, dict] = {}
    for path, meta, rows in results:
        timed = [r for r in rows if r.get("op") and as_number(r.get("ms")) and r.get("status", "ok") == "ok"]
        ours: dict[tuple, dict] = {}
        for r in timed:
            if r.get("impl") != "ours":
                continue
            k = (r["op"], r.get("shape"), r.get("mode"), r.get("dtype"))
            if k not in ours or (bool(r.get("auto")), -r["ms"]) > (bool(ours[k].get("auto")), -ours[k]["ms"]):
                ours[k] = r
        for r in timed:
            impl = str(r.get("impl") or "")
            k = (r["op"], r.get("shape"), r.get("mode"), r.get("dtype"))
            if impl.startswith("ours") or impl in KERNEL_BASELINES or k not in ours:
                continue
            source = row_source(path, meta, r)
            entry = {"op": r["op"], "shape": r.get("shape"), "mode": r.get("mode"), "peer": impl,
                     "ratio": r["ms"] / ours[k]["ms"], "source": path.stem, "date": source.sort_date}
            key = (r["op"], r.get("shape"), r.get("mode"), impl)
            if key not in found or entry["date"] >= found[key]["date"]:
                found[key] = entry
    return sorted(found.values(), key=lambda e: (e["op"], e["peer"], str(e["shape"]), str(e["mode"])))


def plot_kernels(results: list[tuple[Path, dict, list[dict]]], path: Path) -> Path:
    plt = _pyplot()
    ratios = kernel_ratios(results)
    if not ratios:
        return _save(_empty(plt, "no kernel benchmark with a peer yet"), path)
    by_op: dict[str, list[dict]] = defaultdict(list)
    for e in ratios:
        by_op[e["op"]].append(e)
    ops = list(by_op)
    columns = [ops[0::2], ops[1::2]] if len(ops) > 1 else [ops]
    height = max(sum(len(by_op[o]) * 0.24 + 0.75 for o in col) for col in columns)
    fig = plt.figure(figsize=(13, height))
    for c, col in enumerate(columns):
        grid = fig.add_gridspec(len(col), 1, left=0.24 + 0.5 * c, right=0.47 + 0.5 * c,
                                height_ratios=[len(by_op[o]) + 1.5 for o in col], hspace=0.9)
        for i, op in enumerate(col):
            ax = fig.add_subplot(grid[i])
            bars = by_op[op]
            ys = range(len(bars))
            ax.barh(ys, [math.log2(b["ratio"]) for b in bars],
                    color=["#4c9a2a" if b["ratio"] >= 1 else "#c0392b" for b in bars])
            ax.set_yticks(list(ys), [f"{b['shape']} {b['mode']} vs {b['peer']}" for b in bars], fontsize=6)
            ax.invert_yaxis()
            ax.axvline(0, color="k", lw=0.8)
            for y, b in zip(ys, bars):
                ax.text(math.log2(b["ratio"]), y, f" {b['ratio']:.2f}x ", va="center", fontsize=6,
                        ha="left" if b["ratio"] >= 1 else "right")
            lim = max(abs(math.log2(b["ratio"])) for b in bars) + 1.2
            ax.set_xlim(-lim, lim)
            ax.tick_params(axis="x", labelsize=6)
            ax.set_title(f"{op} ({', '.join(sorted({b['source'] for b in bars}))})", fontsize=8)
    fig.suptitle("Our kernels vs peers: peer time / our time (log2 axis; > 1: ours faster; same run, one GPU)",
                 fontsize=10, y=1.0)
    return _save(fig, path)


def write_all(rows: list[dict], speeds: list[Speed], entries: list, results: list, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    return [plot_accuracy(rows, out / "zoo_accuracy.png"), plot_resolution(speeds, entries, out / "zoo_resolution.png"),
            plot_kernels(results, out / "zoo_kernels.png")]
