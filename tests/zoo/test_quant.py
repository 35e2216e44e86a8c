"""int8 weight-only storage (zoo.weights.quant) and its transparent read through zoo.hub.read_state_dict."""
import pytest
import torch

from zoo import hub
from zoo.errors import WeightLoadError
from zoo.weights import quant


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "proj.weight": (torch.randn(96, 64, generator=g) * torch.linspace(0.01, 3, 96)[:, None]).half(),
        "conv.weight": torch.randn(64, 3, 8, 8, generator=g).half(),      # 4-D: one scale per output channel
        "zero.weight": torch.zeros(64, 64, dtype=torch.float16),           # an all-zero row has scale 0
        "small.weight": torch.randn(8, 8, generator=g),                    # < 4096 elements: stays fp16
        "proj.bias": torch.randn(96, generator=g),                         # 1-D: stays fp16
        "steps": torch.tensor([3, 4], dtype=torch.long),                   # not floating: as it is
    }


def test_round_trip_error_is_at_most_half_a_step_per_row():
    state = _state()
    tensors, meta = quant.quantize(state, {"model": "m"})
    assert meta == {"model": "m", "weights_format": "int8-rowwise-v1", "int8_tensors": "3"}
    assert set(tensors) == set(state) | {f"{k}@int8_scale" for k in ("proj.weight", "conv.weight", "zero.weight")}
    for k in ("proj.weight", "conv.weight", "zero.weight"):
        assert tensors[k].dtype == torch.int8 and tensors[k].shape == state[k].shape
        assert tensors[k + "@int8_scale"].dtype == torch.float32
        assert tensors[k + "@int8_scale"].shape == (state[k].shape[0],)
    assert tensors["small.weight"].dtype == torch.float16 and tensors["proj.bias"].dtype == torch.float16
    assert torch.equal(tensors["steps"], state["steps"])
    back = quant.dequantize(tensors, meta)
    assert set(back) == set(state)
    for k in ("proj.weight", "conv.weight"):
        scale = tensors[k + "@int8_scale"]
        err = (back[k] - state[k].float()).abs().reshape(len(scale), -1)
        assert (err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-12).all(), k
        assert int(tensors[k].abs().reshape(len(scale), -1).amax(1).min()) == 127  # every row uses the full range
    assert torch.equal(back["zero.weight"], torch.zeros(64, 64))
    assert torch.equal(back["small.weight"], state["small.weight"].half())


def test_key_scheme_refuses_a_colliding_key():
    with pytest.raises(ValueError, match="@int8_scale"):
        quant.quantize({"w@int8_scale": torch.randn(64, 64)})


def test_read_state_dict_dequantizes_an_int8_file(tmp_path):
    state = _state()
    path = tmp_path / "w.safetensors"
    path.write_bytes(quant.quantized_bytes(state, {"model": "m"}))
    assert path.stat().st_size < 0.7 * sum(v.numel() * v.element_size() for v in state.values())
    read = hub.read_state_dict(path)
    assert torch.equal(read["proj.weight"], quant.dequantize(*quant.quantize(state))["proj.weight"])
    assert set(read) == set(state)
    plain = tmp_path / "fp16.safetensors"                 # a file without the format key reads as stored
    hub.save_state_dict(state, plain)
    assert all(torch.equal(hub.read_state_dict(plain)[k], v) for k, v in state.items())


def test_damaged_or_unknown_int8_files_are_refused(tmp_path):
    tensors, meta = quant.quantize(_state())
    del tensors["proj.weight@int8_scale"]
    with pytest.raises(WeightLoadError, match="damaged int8-rowwise-v1"):
        quant.dequantize(tensors, meta)
    with pytest.raises(WeightLoadError, match="upgrade speedzoo"):
        quant.dequantize({}, {"weights_format": "int4-v9"})
    tensors, meta = quant.quantize(_state())
    tensors["proj.weight@int8_scale"] = torch.full((96,), float("nan"))
    path = tmp_path / "nan.safetensors"
    hub.save_state_dict(tensors, path, metadata=meta)
    with pytest.raises(WeightLoadError, match="NaN or inf"):      # the finite check sees the dequantized values
        hub.read_state_dict(path)


def test_int4_round_trip_by_hand_and_error_bound(tmp_path):
    """int4-group32-v1: codes by hand on one group (two to a byte, low nibble first), then the bound on real
    tensors (at most half an fp16-rounded group scale), fp16 fallback for rows that do not split into groups."""
    row = torch.arange(-16, 16, dtype=torch.float32)[None].repeat(128, 1)            # one group a row: absmax 16
    tensors, meta = quant.quantize({"w": row}, {"model": "m"}, "int4")
    assert meta == {"model": "m", "weights_format": "int4-group32-v1", "int4_tensors": "1"}
    scale = tensors["w@int4_scale"]
    assert scale.dtype == torch.float16 and scale.shape == (128, 1) and float(scale[0, 0]) == pytest.approx(16 / 7, rel=1e-3)
    codes = torch.round(row[0] / float(scale[0, 0])).clamp(-7, 7) + 8                 # -16 -> -7 -> stored 1
    assert tensors["w"].dtype == torch.uint8 and tensors["w"].shape == (128, 16)
    assert int(tensors["w"][0, 0]) == int(codes[0]) | (int(codes[1]) << 4)
    back = quant.dequantize(tensors, meta)["w"]
    assert torch.equal(back[0], (codes - 8) * float(scale[0, 0]))

    state = _state()
    tensors, meta = quant.quantize(state, None, "int4")
    assert meta["int4_tensors"] == "2"                    # conv.weight's rows (last dim 8) stay fp16
    assert tensors["conv.weight"].dtype == torch.float16 and tensors["proj.weight"].shape == (96, 32)
    back = quant.dequantize(tensors, meta)
    s = tensors["proj.weight@int4_scale"].float()
    err = (back["proj.weight"] - state["proj.weight"].float()).abs().reshape(96, 2, 32)
    assert (err <= s[..., None] / 2 * (1 + 1e-3) + 1e-6).all()
    assert torch.equal(back["zero.weight"], torch.zeros(64, 64))
    path = tmp_path / "w4.safetensors"
    path.write_bytes(quant.quantized_bytes(state, None, "int4"))
    assert torch.equal(hub.read_state_dict(path)["proj.weight"], back["proj.weight"])
    big = {k: state[k] for k in ("proj.weight", "zero.weight")}       # the quantized ones: about a quarter of fp16
    path.write_bytes(quant.quantized_bytes(big, None, "int4"))
    assert path.stat().st_size < 0.35 * sum(v.numel() * 2 for v in big.values())


def test_damaged_int4_files_and_unknown_quant_are_refused():
    tensors, meta = quant.quantize(_state(), None, "int4")
    tensors["proj.weight@int4_scale"] = tensors["proj.weight@int4_scale"][:, :1]
    with pytest.raises(WeightLoadError, match="damaged int4-group32-v1"):
        quant.dequantize(tensors, meta)
    tensors, meta = quant.quantize(_state(), None, "int4")
    del tensors["proj.weight@int4_scale"]
    with pytest.raises(WeightLoadError, match="holds 1 scales"):
        quant.dequantize(tensors, meta)
    with pytest.raises(ValueError, match="unknown weight quantization"):
        quant.quantize(_state(), None, "int2")
    with pytest.raises(ValueError, match="@int4_scale"):
        quant.quantize({"w@int4_scale": torch.randn(64, 64)}, None, "int8")
