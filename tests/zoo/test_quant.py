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
    tensors, meta = quant.quantize_int8(state, {"model": "m"})
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
        quant.quantize_int8({"w@int8_scale": torch.randn(64, 64)})


def test_read_state_dict_dequantizes_an_int8_file(tmp_path):
    state = _state()
    path = tmp_path / "w.safetensors"
    path.write_bytes(quant.int8_bytes(state, {"model": "m"}))
    assert path.stat().st_size < 0.7 * sum(v.numel() * v.element_size() for v in state.values())
    read = hub.read_state_dict(path)
    assert torch.equal(read["proj.weight"], quant.dequantize(*quant.quantize_int8(state))["proj.weight"])
    assert set(read) == set(state)
    plain = tmp_path / "fp16.safetensors"                 # a file without the format key reads as stored
    hub.save_state_dict(state, plain)
    assert all(torch.equal(hub.read_state_dict(plain)[k], v) for k, v in state.items())


def test_damaged_or_unknown_int8_files_are_refused(tmp_path):
    tensors, meta = quant.quantize_int8(_state())
    del tensors["proj.weight@int8_scale"]
    with pytest.raises(WeightLoadError, match="damaged int8-rowwise-v1"):
        quant.dequantize(tensors, meta)
    with pytest.raises(WeightLoadError, match="upgrade speedzoo"):
        quant.dequantize({}, {"weights_format": "int4-v9"})
    tensors, meta = quant.quantize_int8(_state())
    tensors["proj.weight@int8_scale"] = torch.full((96,), float("nan"))
    path = tmp_path / "nan.safetensors"
    hub.save_state_dict(tensors, path, metadata=meta)
    with pytest.raises(WeightLoadError, match="NaN or inf"):      # the finite check sees the dequantized values
        hub.read_state_dict(path)
