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
