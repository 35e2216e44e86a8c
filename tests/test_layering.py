"""The four floors: imports point down only (kernels < backbones < heads < zoo), read with ``ast``.

kernels import only the standard library, torch, triton and kernels; backbones never import heads or zoo;
heads never import zoo or Lightning. ``TYPE_CHECKING`` blocks count too: an upward arrow for types is
still an upward arrow. Imports inside functions count as well.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("kernels", "backbones", "heads", "zoo")
STDLIB = set(sys.stdlib_module_names)
KERNEL_ALLOWED = {"torch", "triton", "kernels"}
FORBIDDEN = {
    "backbones": {"heads", "zoo", "lightning", "pytorch_lightning"},
    "heads": {"zoo", "lightning", "pytorch_lightning"},
}


def imported_roots(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path``; relative imports stay in the floor."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def upward_arrows(root: Path) -> list[str]:
    """Every import in ``root``'s floors that points up (or, for kernels, outside torch/triton/stdlib)."""
    bad = []
    for floor in FLOORS:
        for path in sorted((root / floor).rglob("*.py")):
            rel = path.relative_to(root)
            for line, mod in imported_roots(path):
                if floor == "kernels":
                    wrong = mod not in KERNEL_ALLOWED and mod not in STDLIB
                else:
                    wrong = mod in FORBIDDEN.get(floor, ())
                if wrong:
                    bad.append(f"{rel}:{line} imports {mod}")
    return bad


def test_the_tree_has_no_upward_arrow():
    bad = upward_arrows(ROOT)
    assert not bad, "imports point up a floor (see DESIGN.md, the house):\n" + "\n".join(bad)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


CLEAN = {
    "kernels/op/__init__.py": "import os\nimport torch\nimport triton.language as tl\nfrom kernels.common import x\n"
                              "from . import reference\n",
    "backbones/net.py": "import torch\nfrom kernels.op import f\nfrom backbones.layers import Mlp\n",
    "heads/cls/__init__.py": "from backbones.layers import Mlp\nimport torch.nn as nn\n",
    "zoo/model.py": "import lightning\nfrom heads.cls import Head\nfrom backbones.net import Net\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    assert upward_arrows(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize("rel, text, expect", [
    ("kernels/op/bad.py", "import numpy as np\n", "kernels/op/bad.py:1 imports numpy"),
    ("kernels/op/bad.py", "def f():\n    from backbones.vit import Block\n", "kernels/op/bad.py:2 imports backbones"),
    ("backbones/bad.py", "from zoo.registry import register\n", "backbones/bad.py:1 imports zoo"),
    ("backbones/bad.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import heads.cls\n",
     "backbones/bad.py:3 imports heads"),
    ("heads/cls/bad.py", "import lightning.pytorch as pl\n", "heads/cls/bad.py:1 imports lightning"),
    ("heads/cls/bad.py", "from zoo import errors\n", "heads/cls/bad.py:1 imports zoo"),
])
def test_checker_catches_a_planted_upward_arrow(tmp_path, rel, text, expect):
    files = dict(CLEAN)
    files[rel] = text
    assert upward_arrows(_tree(tmp_path, files)) == [expect]
