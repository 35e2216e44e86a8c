"""Kernel switches the benchmarks set around their calls."""
import os

from zoo.bench.options import forced_env


def test_forced_env_sets_and_restores(monkeypatch):
    monkeypatch.delenv("SPEEDZOO_SCAN_CHUNK", raising=False)
    monkeypatch.setenv("SPEEDZOO_SCAN_VARIANT", "auto")
    with forced_env("SPEEDZOO_SCAN_CHUNK", 8), forced_env("SPEEDZOO_SCAN_VARIANT", "chunked"):
        assert os.environ["SPEEDZOO_SCAN_CHUNK"] == "8" and os.environ["SPEEDZOO_SCAN_VARIANT"] == "chunked"
    assert "SPEEDZOO_SCAN_CHUNK" not in os.environ and os.environ["SPEEDZOO_SCAN_VARIANT"] == "auto"
    with forced_env("SPEEDZOO_SCAN_VARIANT", None):      # None: left as it is
        assert os.environ["SPEEDZOO_SCAN_VARIANT"] == "auto"
    try:
        with forced_env("SPEEDZOO_SCAN_CHUNK", 4):
            raise RuntimeError("a failing measurement")
    except RuntimeError:
        pass
    assert "SPEEDZOO_SCAN_CHUNK" not in os.environ
