"""Package discovery that pyproject.toml cannot express.

zoo is a regular package; kernels, backbones and heads are PEP 420 namespace packages (no top-level
__init__.py). Hugging Face's `kernels` distribution (a regular package, required by transformers >= 5.25) would
shadow our `kernels`: pyproject.toml keeps transformers below 5.25 until ours is renamed. The YAML recipes live in the
top-level configs/ folder and are installed as the data package `zoo.configs`.
"""
from setuptools import find_namespace_packages, setup

packages = find_namespace_packages(include=["zoo", "zoo.*", "kernels", "kernels.*", "backbones", "backbones.*", "heads", "heads.*"])
packages = [p for p in packages if "__pycache__" not in p and not p.startswith("zoo.assets.")] + ["zoo.configs"]

setup(packages=packages, package_dir={"zoo.configs": "configs"})
