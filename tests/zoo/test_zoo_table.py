"""`zoo table`: the zoo at a glance from the registry and hand-made results files (CPU, no network)."""
import csv
import json

import pytest

import zoo
from zoo import table, table_plots as plots
from zoo.cli import main as zoo_main
from zoo.registry import ModelEntry, PretrainedTag, WeightSource

H200 = {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0"}
PNG = b"\x89PNG\r\n\x1a\n"


def _write(folder, name, rows, date, command, commit="abc1234"):
    meta = {"date": date, "commit": commit, "command": command, **H200}
    (folder / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}))


def _row(model, size, mode, rate, **kw):
    return {"model": model, "img_size": size, "mode": mode, "impl": "ours", "dtype": "bf16", "batch": 8,
            "img_per_s": rate, "peak_gib": 0.5, **kw}


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    vim = "vim_tiny_patch16_224"
    _write(folder, "vim_bench", [
        _row(vim, 224, "infer", 2000.0, batch=64),
        _row(vim, 224, "infer", 9000.0, exec="cuda_graph"),           # a variant: loses to eager
        _row(vim, 224, "infer", 15000.0, impl="timm"),               # a peer's implementation: left out
        _row(vim, 512, "infer", 277.0),
        _row(vim, 512, "train", 90.0),
        _row(vim, 1024, "infer", 271.0, stage="whole forward"),     # a profile's part: left out
        {"model": vim, "img_size": 1024, "mode": "train", "impl": "ours", "batch": 8, "note": "out of memory: ..."},
        _row("deit_tiny_patch16_224", 224, "infer", 11000.0, impl="timm"),  # not registered
        _row("vit_tiny_linear_patch16_224", 224, "infer", 6288.0),   # registered, no weights
        _row("vit_tiny_linear_patch16_224", 512, "infer", 1164.0),
    ], "2026-11-29 02:56 UTC", "python -m benchmarks.vim_bench")
    _write(folder, table.REFRESH, [
        _row(vim, 224, "infer", 1900.0, batch=64, param_count=7.15, gmacs=1.25,
             command="zoo bench throughput vim_tiny_patch16_224 --img-size 224", date="2026-11-01 10:00 UTC"),
    ], "2026-11-01 10:00 UTC", "zoo table --merge ...")
    _write(folder, "kernels", [
        {"op": "scan", "shape": "B8_L4096", "mode": "fwd", "impl": "ours", "dtype": "bf16", "ms": 1.0},
        {"op": "scan", "shape": "B8_L4096", "mode": "fwd", "impl": "mamba_ssm", "dtype": "bf16", "ms": 2.0},
        {"op": "scan", "shape": "B8_L4096", "mode": "fwd", "impl": "reference", "dtype": "bf16", "ms": 50.0},
    ], "2026-11-29 08:41 UTC", "python -m benchmarks.selective_scan")
    (folder / "notes.json").write_text("[1, 2]")  # not a results file: skipped
    return folder


def _by(rows, name, size, mode):
    (row,) = [r for r in rows if r["name"] == name and str(r["img_size"]) == str(size) and r["mode"] == mode]
    return row


def test_renderer_joins_registry_and_results(tmp_path, results):
    out = table.regenerate(results, csv_path=tmp_path / "zoo.csv", md_path=tmp_path / "ZOO.md",
                           plots_dir=tmp_path / "docs")
    lines = list(csv.DictReader((tmp_path / "zoo.csv").open()))
    assert list(lines[0]) == table.CSV_COLUMNS and len(lines) == len(out["rows"])

    name = "vim_tiny_patch16_224.in1k"
    rows = [r for r in lines if r["name"] == name]
    assert sorted({(r["img_size"], r["mode"]) for r in rows}) == [
        (s, m) for s in ("1024", "224", "512") for m in ("infer", "train")]  # native, 512 and 1024 px
    native = _by(lines, name, 224, "infer")
    assert native["native"] == "True" and native["task"] == "image" and native["metric"] == "top1"
    assert float(native["value"]) == 76.1 and native["accuracy_source"].startswith("published with hf-hub:")
    # the refresh's row wins over a newer, faster eager row and over the CUDA-graph variant
    assert float(native["img_per_s"]) == 1900.0 and native["speed_source"].endswith(f"{table.REFRESH}.json")
    assert native["speed_command"] == "zoo bench throughput vim_tiny_patch16_224 --img-size 224"
    assert native["params_m"] == "7.15" and native["gflops"] == "2.5" and native["gpu"] == "NVIDIA H200"
    assert float(_by(lines, name, 512, "infer")["img_per_s"]) == 277.0
    assert _by(lines, name, 512, "infer")["speed_command"] == "python -m benchmarks.vim_bench"
    assert _by(lines, name, 1024, "train")["note"] == "OOM" and not _by(lines, name, 1024, "train")["img_per_s"]
    assert not _by(lines, name, 1024, "infer")["img_per_s"]  # the profile's stage row is not the model's figure
    # every measured row names the command, commit and date that produced it
    for r in lines:
        if r["img_per_s"]:
            assert r["speed_command"] and r["speed_commit"] and r["speed_date"]
        if r["tag"]:
            assert r["accuracy_source"]

    # registered with weights, absent from every results file: still a row, empty speed cells
    absent = [r for r in lines if r["name"] == "vim_small_patch16_224.in1k"]
    assert len(absent) == 6 and not any(r["img_per_s"] for r in absent) and absent[0]["value"] == "80.5"
    # a shipped tag names the zoo eval that measured it
    shipped = _by(lines, "vit_micro_patch4_32.cifar10", 32, "infer")
    assert shipped["accuracy_command"].startswith("zoo eval vit_micro_patch4_32.cifar10")
    # an architecture without weights appears once measured; unregistered peers never
    assert _by(lines, "vit_tiny_linear_patch16_224", 512, "infer")["img_per_s"] == "1164.0"
    assert not [r for r in lines if r["model"] == "deit_tiny_patch16_224"]

    md = (tmp_path / "ZOO.md").read_text()
    assert f"| {name} | image | imagenet-1k | top1 76.1 |" in md and "| OOM |" in md
    assert "`zoo bench throughput vim_tiny_patch16_224 --img-size 224`" in md
    assert "`python -m benchmarks.vim_bench` (commit abc1234, 2026-11-29 02:56 UTC, NVIDIA H200)" in md
    assert "## Architectures without weights, measured" in md and "vit_tiny_linear_patch16_224" in md
    assert "| vim_small_patch16_224.in1k | image | imagenet-1k | top1 80.5 |" in md
    assert "![zoo_accuracy](docs/zoo_accuracy.png)" in md

    assert [p.name for p in out["plots"]] == ["zoo_accuracy.png", "zoo_resolution.png", "zoo_kernels.png"]
    for p in out["plots"]:
        data = p.read_bytes()
        assert data.startswith(PNG) and 1000 < len(data) < 150_000


def test_a_new_registry_entry_appears_with_no_hand_editing(tmp_path, results):
    entry = ModelEntry(name="newnet_tiny_224", kind="image", family="newnet", builder=lambda **k: None,
                       default_cfg={"input_size": (3, 224, 224)})
    entry.tags["in1k"] = PretrainedTag(tag="in1k", source=WeightSource(hf_repo="x/newnet", hf_file="m.safetensors"),
                                       metrics={"imagenet-1k (published)": {"top5": 91.0, "top1": 71.5}})
    rows, _, _ = table.build(results, entries=[entry])
    assert {r["name"] for r in rows} == {"newnet_tiny_224.in1k"}  # no other entry was given
    assert (rows[0]["metric"], rows[0]["value"]) == ("top1", 71.5) and not any(r.get("img_per_s") for r in rows)
    _write(results, "newnet", [_row("newnet_tiny_224", 1024, "train", 42.0)], "2026-12-01", "zoo bench throughput newnet")
    rows, _, _ = table.build(results, entries=[entry])
    assert _by(rows, "newnet_tiny_224.in1k", 1024, "train")["img_per_s"] == 42.0


def test_plan_merge_and_cli(tmp_path, results, capsys):
    assert [table.batch_for(px) for px in (32, 128, 224, 512, 1024)] == [512, 128, 64, 8, 8]
    groups = table.plan(["vim_tiny_patch16_224", "vit_micro_patch4_32", "vit_tiny_linear_*"], chunk=8)
    assert groups[0] == (32, 512, ["vit_micro_patch4_32"])  # models with weights first, at every size
    assert (1024, 8, ["vim_tiny_patch16_224", "vit_micro_patch4_32"]) in groups
    assert groups[-1] == (1024, 8, ["vit_tiny_linear_patch16_224", "vit_tiny_linear_patch4_32"])
    done = {("vit_micro_patch4_32", 32)}
    assert all("vit_micro_patch4_32" not in names for px, _, names in table.plan(["vit_micro_*"], done=done)
               if px == 32)

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _write(a, "part", [_row("vit_micro_patch4_32", 32, m, 100.0) for m in ("infer", "train")], "2026-12-01 10:00 UTC",
           "zoo bench throughput vit_micro_patch4_32 --img-size 32")
    _write(b, "part", [_row("vit_micro_patch4_32", 32, "infer", 200.0)], "2026-12-02 10:00 UTC",
           "zoo bench throughput vit_micro_patch4_32 --img-size 32 --iters 50")
    into = tmp_path / "merged" / "zoo_throughput.json"
    assert zoo_main(["table", "--merge", str(a / "part.json"), "--into", str(into)]) == 0
    assert zoo_main(["table", "--merge", str(b / "part.json"), "--into", str(into)]) == 0
    rows = json.loads(into.read_text())["rows"]
    assert [(r["mode"], r["img_per_s"], r["date"]) for r in rows] == [
        ("infer", 200.0, "2026-12-02 10:00 UTC"), ("train", 100.0, "2026-12-01 10:00 UTC")]
    assert rows[0]["command"].endswith("--iters 50") and into.with_suffix(".md").is_file()
    assert table.measured_in(into) == {("vit_micro_patch4_32", 32)}

    capsys.readouterr()
    assert zoo_main(["table", "--plan", "--models", "vit_micro_patch4_32", "--sizes", "native"]) == 0
    assert capsys.readouterr().out == "32 512 vit_micro_patch4_32\n"
    assert zoo_main(["table", "--results", str(results), "--csv", str(tmp_path / "t.csv"), "--md",
                     str(tmp_path / "t.md"), "--plots", "", "--no-counts"]) == 0
    assert (tmp_path / "t.csv").is_file() and not (tmp_path / "zoo_accuracy.png").exists()


def test_kernel_ratios_pair_ours_with_peers_of_the_same_run(results):
    (ratio,) = plots.kernel_ratios(table.read_results(results))
    assert (ratio["op"], ratio["peer"], ratio["ratio"], ratio["source"]) == ("scan", "mamba_ssm", 2.0, "kernels")


def test_parameter_counts_fill_cells_no_results_row_measured():
    """A tag's parameters come from building its architecture (meta device, else CPU), without its weights."""
    assert table.count_params("vit_micro_patch4_32.cifar10") == pytest.approx(
        sum(p.numel() for p in zoo.create_model("vit_micro_patch4_32", num_classes=10).parameters()) / 1e6)
    assert table.count_params("no_such_model_anywhere") is None
