"""Shared fixtures: the real data beside the checkout (also as ZOO_DATA, where named data sets resolve), and an
offline, empty weight cache per test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# named data sets (cifar10, fsdd, ...: zoo.data.catalog) resolve under ZOO_DATA; tests read the real data
# beside the checkout unless the caller chose another folder. Set at import, so subprocesses inherit it.
if SHARED_DATA.is_dir():
    os.environ.setdefault("ZOO_DATA", str(SHARED_DATA))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing")
    return SHARED_DATA


@pytest.fixture
def zoo_cache(tmp_path, monkeypatch) -> Path:
    """An empty ZOO_CACHE with network access forbidden."""
    cache = tmp_path / "zoo-cache"
    cache.mkdir()
    monkeypatch.setenv("ZOO_CACHE", str(cache))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    return cache
