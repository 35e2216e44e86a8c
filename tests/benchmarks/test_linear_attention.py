"""The linear-attention benchmark script on the CPU (tiny shapes, no fla): a check of the script, not a figure."""
import json

import pytest


def test_rows_variants_and_incremental_results(tmp_path):
    from benchmarks.linear_attention import main

    assert main(["--no-fla", "--ops", "simple_gla,gated_delta", "--bwd", "fused,chunked,chunked@16", "--out-dir",
                 str(tmp_path), "--name", "la"]) == 0
    rows = json.loads((tmp_path / "la.json").read_text())["rows"]
    got = {(r["op"], r["impl"], r["mode"]) for r in rows}
    assert {("simple_gla", "ours", "fwd"), ("simple_gla", "ours", "fwdbwd"),
            ("simple_gla", "ours-chunked-bwd", "fwdbwd"), ("simple_gla", "ours-chunked@16-bwd", "fwdbwd"),
            ("gated_delta", "ours", "fwdbwd"),
            ("sdpa_causal", "torch-sdpa", "fwd")} <= got
    assert not any(r["op"] == "gated_delta" and r["impl"] != "ours" for r in rows)  # one backward only
    chunked = next(r for r in rows if r["impl"] == "ours-chunked-bwd")
    assert chunked["status"] == "ok" and chunked["bwd"] == "chunked" and chunked["x_own_fwd"] > 0
    assert (tmp_path / "la.md").read_text().count("ours-chunked-bwd") == 1


def test_unknown_shape_is_refused(tmp_path):
    from benchmarks.linear_attention import main

    with pytest.raises(SystemExit):
        main(["--no-fla", "--shapes", "huge", "--out-dir", str(tmp_path)])


def test_bwd_entries_become_keywords():
    from benchmarks.linear_attention import bwd_keywords

    assert bwd_keywords(None) == {}
    assert bwd_keywords("split") == {"bwd_layout": "split", "bwd_block_v": None}
    assert bwd_keywords("chunked@64") == {"bwd_layout": "chunked", "bwd_block_v": 64}
