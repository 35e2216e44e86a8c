"""Our namespace `kernels` must not mislead transformers, and the zoo must import without a GPU."""
import subprocess
import sys


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
    """`pip install .` (a wheel, not the checkout) holds the namespace packages, recipes and demo samples."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(pip + ["wheel", str(repo), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wh")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "wh").glob("speedzoo-*.whl")
    target = tmp_path / "site"
    inst = subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    code = ("import zoo, backbones.vim, kernels.selective_scan, heads.classification\n"
            "from zoo.recipes.cli import shipped_configs\n"
            "from zoo.assets import asset_files\n"
            "print(zoo.__file__); print(sorted(shipped_configs())); print(len(asset_files('cifar10')), len(asset_files('fsdd')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(target), "ZOO_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    where, configs, counts = out.stdout.strip().splitlines()[-3:]
    assert where.startswith(str(target))
    assert "cifar10_vim_micro.yaml" in configs and "fsdd_vim_audio.yaml" in configs
    assert counts == "10 10"
