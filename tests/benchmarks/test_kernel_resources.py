"""Kernels compiled for the H200 (sm_90) on the CPU: every launch configuration the ops use at head
dimension 128 fits the H200's shared memory (the linear-attention backward once asked for 256 KB there)."""
import os

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="kernels defined under TRITON_INTERPRET=1 cannot be compiled")


def test_linear_attention_fits_the_h200_at_d128():
    from benchmarks.kernel_resources import SM90_SHARED_LIMIT, linear_attention_rows

    rows = linear_attention_rows(128, 100)
    assert [r["kernel"] for r in rows] == ["_state_kernel", "_apply_kernel", "_bwd_q_kernel", "_bwd_kv_kernel"]
    for r in rows:
        assert 0 < r["shared"] <= SM90_SHARED_LIMIT and 0 < r["regs"] <= 255, r


def test_gla_and_delta_kernels_fit_the_h200_at_k128():
    from benchmarks.kernel_resources import SM90_SHARED_LIMIT, gla_rows

    rows = gla_rows(128, 128)
    assert {r["kernel"] for r in rows} == {"_fwd_kernel", "_bwd_dh_kernel", "_bwd_kernel fused",
                                           "_bwd_kernel chunked", "_split_dv_kernel", "_split_dqk_kernel"}
    assert len(rows) == 22
    for r in rows:
        assert 0 < r["shared"] <= SM90_SHARED_LIMIT, r
        if r["kernel"].startswith("_split"):  # their block sizes were chosen for this
            assert r["spill_bytes"] == 0, r


def test_refuses_unknown_constexprs_and_plain_functions():
    import kernels.linear_attention.triton as la
    from benchmarks.kernel_resources import sm90_resources

    with pytest.raises(ValueError, match="no argument"):
        sm90_resources(la._apply_kernel, {"NOPE": 1})
    with pytest.raises(TypeError, match="not a compiled-mode"):
        sm90_resources(lambda x: x, {})


def test_scan_backward_keeps_tokens_in_thread():
    """The selective-scan backward's tiles put one channel on each lane and the chunk's tokens in the thread, so
    its scans and N-loop stay in-thread: Triton's coalescing once laid 16 lanes along the (contiguous) tokens and
    the layout spread to the scans (946 static shuffles and 611 spill loads and stores at CHUNK 16, BLOCK_D 32)."""
    from benchmarks.kernel_resources import scan_layouts, selective_scan_rows

    rows = selective_scan_rows()
    assert len(rows) == 6
    for r in rows:
        layouts = scan_layouts(r["ttgir"])
        assert layouts and all("threadsPerWarp = [1, 32]" in lay for lay in layouts), (r["config"], layouts)
        assert r["shuffles"] < 600, r["config"]
    assert all(r["spill_bytes"] == 0 for r in rows if r["config"].startswith("CHUNK 8")), rows


def test_conv_backward_does_not_spill():
    """The conv backward's tiles keep its W x W pre-activation recomputation in registers, one or two directions
    (2048-element tiles spilled 0.5-8 KB per thread on sm_90)."""
    from benchmarks.kernel_resources import conv_rows

    rows = conv_rows()
    assert len(rows) == 6 and all(r["spill_bytes"] == 0 and r["regs"] <= 255 for r in rows), rows
