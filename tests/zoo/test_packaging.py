"""Our namespace `kernels` must not mislead transformers, the zoo must import without a GPU, and the
installed package holds the library only: no benchmark lab, no environment switches beyond the dispatch's."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# what only the lab (top-level benchmarks/) may hold: builds of peers' CUDA code and imports of peers' kernels
PEER_CODE = re.compile(r"^\s*(import|from)\s+(torch\.utils\.cpp_extension|mamba_ssm|causal_conv1d|fla|"
                       r"selective_scan_cuda)\b|cpp_extension\.load|load_selective_scan_cuda", re.M)


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_transformers_models_import_beside_our_kernels():
    out = _run(
        "import zoo, kernels.common\n"
        "import transformers\n"
        "from transformers import BertModel\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "print(is_kernels_available())\n")
    assert out.strip().splitlines()[-1] == "False"


def test_kernels_import_compiles_nothing():
    out = _run(
        "import sys, importlib, pkgutil, kernels\n"
        "names = [m.name for m in pkgutil.iter_modules(kernels.__path__, 'kernels.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(len(names), 'torch.cuda' in sys.modules and __import__('torch').cuda.is_initialized())\n")
    count, cuda_initialised = out.split()
    assert int(count) >= 1 and cuda_initialised == "False"


def test_non_editable_wheel_ships_code_recipes_and_samples(tmp_path):
    """`pip install .` (a wheel, not the checkout) holds the namespace packages, recipes and demo samples, and
    none of the benchmark lab: no benchmarks/ package, no module that builds or imports a peer's kernels."""
    repo = REPO
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(pip + ["wheel", str(repo), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wh")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "wh").glob("speedzoo-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        code = {n: zf.read(n).decode() for n in names if n.endswith(".py")}
    assert "zoo/bench/throughput.py" in names and "kernels/selective_scan/triton.py" in names
    assert not [n for n in names if n.startswith("benchmarks/")]
    assert not [n for n in names if n.startswith("zoo/bench/") and n.rsplit("/", 1)[-1] not in
                ("__init__.py", "results.py", "timing.py", "throughput.py")]
    assert not [n for n, text in code.items() if PEER_CODE.search(text)]
    assert PEER_CODE.search((repo / "benchmarks" / "official.py").read_text())  # the net catches the lab
    target = tmp_path / "site"
    inst = subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    code = ("import zoo, backbones.vim, kernels.selective_scan, heads.classification\n"
            "from zoo.recipes.config import shipped_configs\n"
            "from zoo.assets import asset_files\n"
            "print(zoo.__file__); print(sorted(shipped_configs())); print(len(asset_files('cifar10')), len(asset_files('fsdd')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(target), "ZOO_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    where, configs, counts = out.stdout.strip().splitlines()[-3:]
    assert where.startswith(str(target))
    assert "cifar10_vim_micro.yaml" in configs and "fsdd_vim_audio.yaml" in configs
    assert counts == "10 10"


def test_only_the_dispatch_reads_speedzoo_switches():
    """Kernel variants are keyword arguments: outside kernels/common no module (library or lab) reads a
    SPEEDZOO_* variable or keeps its name in a constant to read later; the lab may set SPEEDZOO_KERNELS for
    a run (benchmarks/options.py --kernels)."""
    patterns = [re.compile(r"(environ\.get|getenv|environ\.pop)\(\s*['\"]SPEEDZOO_"),
                re.compile(r"environ\[\s*['\"]SPEEDZOO_\w*['\"]\s*\](?!\s*=[^=])"),
                re.compile(r"['\"]SPEEDZOO_\w*['\"]\s+(not\s+)?in\s+(os\.)?environ"),
                re.compile(r"^\s*\w+\s*=\s*['\"]SPEEDZOO_")]
    readers = []
    for top in ("kernels", "backbones", "heads", "zoo", "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path.parent == REPO / "kernels" / "common":
                continue
            for line in path.read_text().splitlines():
                if any(p.search(line) for p in patterns):
                    readers.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert not readers, readers
    assert any(p.search('x = os.environ.get("SPEEDZOO_SCAN_CHUNK")') for p in patterns)  # the net catches one


def test_the_library_never_imports_the_lab():
    """benchmarks/ may import zoo, never the reverse: an installed zoo has no benchmarks package to import."""
    lab = re.compile(r"^\s*(from|import)\s+benchmarks\b", re.M)
    importers = [str(path.relative_to(REPO)) for top in ("kernels", "backbones", "heads", "zoo")
                 for path in sorted((REPO / top).rglob("*.py")) if lab.search(path.read_text())]
    assert not importers, importers
    assert lab.search("x = 1\n    from benchmarks.options import bench_command\n")  # the net catches one
