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
