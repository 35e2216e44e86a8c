"""The bad-input matrix (issue #24): every registered kind and a representative model of each family, each
bad input answered by one zoo.errors exception whose message names the fix, or by a documented behaviour
(README, "What each kind accepts"). Cases that run the backbone on slow CPU families, and the
vision-language kind (its text tower loads MiniLM), are in the slow suite. Weight-file and cache faults are
here per family where the family matters; the cache-folder and concurrent-download cases live in
test_integrity.py, bad data folders in test_bad_media.py."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoo
from zoo import hub
from zoo.errors import ChecksumError, ConfigError, InputShapeError, UnknownModelError, WeightLoadError
from zoo.kinds import KINDS

# name, overrides (tiny), whether it needs one input size, whether its forward is slow on the CPU
MODELS = {
    "vit": ("vit_micro_patch4_32", {"depth": 1}, True, False),
    "vit-gla": ("vit_tiny_gla_patch4_32", {"depth": 1}, True, False),
    "vim": ("vim_micro_patch4_32", {"depth": 1}, True, True),
    "efficientvit": ("efficientvit_b0", {"img_size": 64}, False, False),
    "audio-vim": ("vim_micro_patch4_32.fsdd", {"depth": 1}, True, True),
}


def test_every_kind_is_in_the_matrix():
    covered = {"image", "audio", "vision-language", "diffusion-lm", "causal-lm",
               "captioner"}  # the captioner's rows: tests/zoo/test_captioner.py::test_bad_input
    assert set(KINDS) <= covered, f"kinds {set(KINDS) - covered} need rows in the bad-input matrix"
    assert zoo.list_models(kind="audio") and zoo.list_models(kind="vision-language")


_built: dict[str, torch.nn.Module] = {}


def _model(key: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    name, kw, _, _ = MODELS[key]
    if key not in _built:
        torch.manual_seed(0)
        _built[key] = zoo.create_model(name, **kw).eval()
    m = _built[key]
    m.check_finite_inputs = False
    return m, tuple(m.pretrained_cfg["input_size"])


def _fwd_param(key):
    return pytest.param(key, marks=pytest.mark.slow) if MODELS[key][3] else key


REFUSED = {  # case -> (make the input from the model's (C, H, W), words the message must hold)
    "batch-0": (lambda c, h, w: torch.randn(0, c, h, w), "at least one"),
    "uint8": (lambda c, h, w: torch.zeros(2, c, h, w, dtype=torch.uint8), "x.float() / 255"),
    "int64": (lambda c, h, w: torch.zeros(2, c, h, w, dtype=torch.long), "floating-point"),
    "bool": (lambda c, h, w: torch.zeros(2, c, h, w, dtype=torch.bool), "floating-point"),
    "complex": (lambda c, h, w: torch.zeros(2, c, h, w, dtype=torch.complex64), "floating-point"),
    "float64": (lambda c, h, w: torch.zeros(2, c, h, w, dtype=torch.float64), "x.to(torch.float32)"),
    "rank-3": (lambda c, h, w: torch.zeros(c, h, w), "x.unsqueeze(0)"),
    "rank-5": (lambda c, h, w: torch.zeros(1, 2, c, h, w), "rank 4"),
    "rank-2": (lambda c, h, w: torch.zeros(h, w), "rank 4"),
    "channels": (lambda c, h, w: torch.zeros(2, c + 1, h, w), "in_chans="),
    "list": (lambda c, h, w: [[0.0] * w] * h, "torch.Tensor"),
}


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_inputs(key, case):
    model, (c, h, w) = _model(key)
    make, words = REFUSED[case]
    with pytest.raises(InputShapeError) as err:
        model(make(c, h, w))
    assert words in str(err.value)


@pytest.mark.parametrize("key", list(MODELS))
def test_wrong_size_where_the_family_needs_one(key):
    model, (c, h, w) = _model(key)
    fixed = MODELS[key][2]
    x = torch.randn(1, c, h + 32, w + 32)
    if fixed:
        with pytest.raises(InputShapeError, match=r"img_size=\("):
            model(x)
    else:  # convolutional families take other sizes (documented)
        with torch.no_grad():
            assert model(x).shape == (1, model.num_classes)


@pytest.mark.parametrize("key", [_fwd_param(k) for k in MODELS])
def test_layouts_and_non_finite_inputs(key):
    """Non-contiguous and channels-last inputs give the contiguous result; NaN/inf propagate by default and
    are refused with the opt-in check."""
    model, (c, h, w) = _model(key)
    x = torch.randn(1, c, w, h).transpose(2, 3)  # non-contiguous [1, c, h, w]
    assert not x.is_contiguous()
    with torch.no_grad():
        ref = model(x.contiguous())
        assert torch.allclose(model(x), ref, atol=1e-5)
        assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5)
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        assert not torch.isfinite(model(bad)).all()  # documented: NaN in, NaN out
        model.check_finite_inputs = True
        for value in (float("nan"), float("inf")):
            bad[0, 0, 0, 0] = value
            with pytest.raises(InputShapeError, match="NaN or inf"):
                model(bad)
        model.check_finite_inputs = False


def test_other_float_dtypes_work_under_autocast():
    model, (c, h, w) = _model("vit")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, c, h, w, dtype=torch.bfloat16)).shape == (1, model.num_classes)
    half = zoo.create_model("vit_micro_patch4_32", depth=1).to(torch.bfloat16).eval()
    with torch.no_grad():
        assert half(torch.randn(1, c, h, w, dtype=torch.bfloat16)).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize("key", list(MODELS))
def test_unknown_and_wrongly_typed_config_keys(key):
    name = MODELS[key][0]
    with pytest.raises(ConfigError, match="Did you mean|Valid (keys|arguments)") as err:
        zoo.create_model(name, not_a_key=1)
    assert "not_a_key" in str(err.value)
    with pytest.raises(ConfigError):
        zoo.create_model(name, depth="two")


def test_unknown_name_and_tag():
    with pytest.raises(UnknownModelError, match="vit_micro_patch4_32"):
        zoo.create_model("vit_micro_patch4_23")
    with pytest.raises(Exception, match="cifar10") as err:
        zoo.create_model("vit_micro_patch4_32.nosuchtag")
    assert isinstance(err.value, zoo.ZooError)


# ------------------------------------------------------------------------------------------ weight files
FILES = {  # case -> (write a bad file at path given a state dict, the error type, words)
    "missing": (lambda p, s: None, WeightLoadError, "does not exist"),
    "empty": (lambda p, s: p.write_bytes(b""), WeightLoadError, "empty file"),
    "text": (lambda p, s: p.write_text("hello"), WeightLoadError, "a text file"),
    "truncated": (lambda p, s: p.write_bytes(hub.save_state_dict(s, p).read_bytes()[:-300]), WeightLoadError,
                  "truncated"),
    "nan": (lambda p, s: hub.save_state_dict({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                              for k, v in s.items()}, p), WeightLoadError, "NaN"),
}


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("case", list(FILES))
def test_bad_weight_files(tmp_path, key, case):
    name, kw, _, _ = MODELS[key]
    path = tmp_path / "w.safetensors"
    write, kind, words = FILES[case]
    write(path, zoo.create_model(name, **kw).state_dict())
    with pytest.raises(kind, match=words) as err:
        zoo.create_model(name, checkpoint_path=path, **kw)
    assert "weights_only=False" not in str(err.value)


@pytest.mark.parametrize("key", list(MODELS))
def test_foreign_weights_name_the_keys(tmp_path, key):
    name, kw, _, _ = MODELS[key]
    other = "efficientvit_b0" if key != "efficientvit" else "vit_micro_patch4_32"
    path = hub.save_state_dict(zoo.create_model(other).state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(WeightLoadError, match=r"(missing|unexpected|not in a layout)"):
        zoo.create_model(name, checkpoint_path=path, **kw)


def test_damaged_packaged_weights_raise_checksum_error(tmp_path, monkeypatch):
    """A packaged tag's registered sha256 is checked too: a damaged install raises, it never loads."""
    import zoo.weights

    src = zoo.weights.weights_dir()
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    damaged = tmp_path / "vit_micro_patch4_32.cifar10.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1000:] = b"\x7f" * 1000
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(zoo.weights, "weights_dir", lambda: tmp_path)
    with pytest.raises(ChecksumError, match="delete it"):
        zoo.create_model("vit_micro_patch4_32.cifar10", pretrained=True)


# ------------------------------------------------------------------------------------------ vision-language
@pytest.fixture(scope="module")
def clip():
    return zoo.create_model("clip_vit_tiny_d6_minilm_128").eval()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["batch-0", "uint8", "float64", "rank-3", "channels"])
def test_vision_language_image_inputs(clip, case):
    c, h, w = clip.pretrained_cfg.get("input_size", (3, 128, 128))
    make, words = REFUSED[case]
    with pytest.raises(InputShapeError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        clip.encode_image(make(c, h, w))


@pytest.mark.slow
@pytest.mark.parametrize("text", [None, "a cat", [""]], ids=["none", "raw-string", "untokenised-list"])
def test_vision_language_text_must_be_tokenised(clip, text):
    with pytest.raises(InputShapeError, match="token ids"):
        clip.encode_text(text)


@pytest.mark.slow
@pytest.mark.parametrize("ids", [[[-1, 5]], [[10 ** 6, 5]]], ids=["negative", "beyond-vocabulary"])
def test_vision_language_token_ids_out_of_range(clip, ids):
    with pytest.raises(InputShapeError, match="vocab") as err:
        clip.encode_text(torch.tensor(ids))
    assert "tokenize captions with the model's tokenizer" in str(err.value)


# ------------------------------------------------------------------------------------------ training faults
REPO = Path(__file__).resolve().parents[2]
FIT = ["--config", "configs/cifar10_vit_micro.yaml", "--data.train_subset", "4", "--data.val_subset", "2",
       "--data.batch_size", "10", "--data.eval_batch_size", "20", "--model.model_args", "{depth: 1}",
       "--trainer.max_steps", "12", "--checkpoint_every_n_steps", "1", "--progress", "none",
       "--trainer.enable_model_summary", "false"]


def _fit_process(run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "zoo.cli", "fit", *FIT, "--trainer.default_root_dir", str(run),
                             *extra], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _every_file_loads(run: Path) -> None:
    for ck in (run / "checkpoints").glob("*.ckpt"):
        torch.load(ck, map_location="cpu", weights_only=True)  # a torn checkpoint would raise here
    if (run / "export.safetensors").exists():
        hub.read_state_dict(run / "export.safetensors")


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume(tmp_path, zoo_cache, monkeypatch):
    """kill -9 of `zoo fit` at several random moments after its first checkpoint: every file on disk loads each
    time, --resume continues from the last complete checkpoint, and the finished run's export loads."""
    if not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("shared data missing")
    monkeypatch.setenv("ZOO_DATA", str(REPO.parent / "shared" / "data"))
    run = tmp_path / "run"
    rng = random.Random(24)
    last_step = -1
    for attempt in range(3):
        proc = _fit_process(run, *(["--resume"] if attempt else []))
        began = time.time()
        while proc.poll() is None and time.time() < began + 300:  # the first run: until its first checkpoint
            if (run / "checkpoints" / "last.ckpt").exists() and (attempt == 0 or time.time() > began + 2):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 3.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _every_file_loads(run)
        step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
        assert step >= last_step  # never behind the checkpoint the previous attempt left
        last_step = step
    proc = _fit_process(run, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    _every_file_loads(run)
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 12
    assert (run / "export.safetensors").exists()


# ------------------------------------------------------------------------------------------ language models
LMS = ["mdlm_small_attn", "ar_small_attn"]  # diffusion-lm, causal-lm
TOKENS = {  # case -> (make token ids from (vocab, max_len), words; None: refused today, raw error left)
    "float": (lambda v, n: torch.zeros(2, 8), "integer token ids"),
    "rank-1": (lambda v, n: torch.zeros(8, dtype=torch.long), "integer token ids"),
    "negative": (lambda v, n: torch.tensor([[-1, 2]]), "[0, "),
    "beyond-vocabulary": (lambda v, n: torch.tensor([[v, 2]]), "[0, "),
    "empty": (lambda v, n: torch.zeros(2, 0, dtype=torch.long), "empty token batch"),
    "batch-0": (lambda v, n: torch.zeros(0, 8, dtype=torch.long), "empty token batch"),
    "over-long": (lambda v, n: torch.zeros(1, n + 1, dtype=torch.long), "exceeds max_len"),
}


@pytest.mark.parametrize("case", list(TOKENS))
def test_token_batch_check(case):
    """zoo.inputs.check_token_batch, what the language-model kinds call (see below)."""
    from zoo.inputs import check_token_batch

    make, words = TOKENS[case]
    with pytest.raises(InputShapeError) as err:
        check_token_batch(make(67, 16), vocab_size=67, max_len=16)
    assert words in str(err.value)
    check_token_batch(torch.randint(0, 67, (2, 16)), vocab_size=67, max_len=16)


def _lm(name):
    return _built.get(name) or _built.setdefault(name, zoo.create_model(name).eval())


@pytest.mark.parametrize("entry", ["forward", "likelihood"])
@pytest.mark.parametrize("name, case", [(n, c) for n in LMS for c in TOKENS])
def test_language_model_token_inputs(name, case, entry):
    """forward and likelihood answer every bad token batch with the shared check's InputShapeError."""
    model = _lm(name)
    make, words = TOKENS[case]
    with torch.no_grad(), pytest.raises(InputShapeError) as err:
        getattr(model, entry)(make(model.vocab_size, model.max_len))
    assert words in str(err.value)


PROMPTS = {  # case -> (make prompt ids from (vocab, max_len), words)
    "float-tensor": (lambda v, n: torch.zeros(1, 3), "integer token ids"),
    "float-list": (lambda v, n: [0.5, 1.0], "integer token ids"),
    "text": (lambda v, n: "ROMEO:", "model.tokenizer.encode"),
    "rank-3": (lambda v, n: torch.zeros(1, 1, 3, dtype=torch.long), "integer token ids"),
    "negative": (lambda v, n: [-1, 2], "[0, "),
    "beyond-vocabulary": (lambda v, n: [v], "[0, "),
    "batch-0": (lambda v, n: torch.zeros(0, 3, dtype=torch.long), "empty token batch"),
    "over-long": (lambda v, n: [0] * (n + 1), "exceeds max_len"),
}


@pytest.mark.parametrize("name, case", [(n, c) for n in LMS for c in PROMPTS])
def test_language_model_bad_prompts(name, case):
    model = _lm(name)
    make, words = PROMPTS[case]
    with pytest.raises(InputShapeError) as err:
        model.generate(make(model.vocab_size, model.max_len), 4, steps=4)
    assert words in str(err.value)


def test_empty_prompt_is_unconditional_for_diffusion_and_refused_for_ar():
    assert _lm("mdlm_small_attn").generate([], 4, steps=2).shape == (1, 4)
    with pytest.raises(ConfigError, match="needs a prompt of at least one token"):
        _lm("ar_small_attn").generate([], 4)
    with pytest.raises(ConfigError, match="positive number of tokens"):  # sampler arguments: ConfigError too
        _lm("ar_small_attn").generate([1], 0)


def test_causal_likelihood_needs_two_tokens():
    with pytest.raises(InputShapeError, match="at least 2 tokens"):
        _lm("ar_small_attn").likelihood(torch.zeros(1, 1, dtype=torch.long))


def test_token_range_check_reads_no_device_memory_in_forward():
    """Off the CPU, forward checks shape and dtype on a stand-in (a meta tensor has no data: any read of the
    ids would raise); the debug flag turns the range check on, and generate/likelihood always run it."""
    model = _lm("mdlm_small_attn")
    far = torch.full((2, 4), 10 ** 6, dtype=torch.long, device="meta")
    assert model.check_tokens(far) is far
    for bad, words in ((far.float(), "integer token ids"), (far[:, :0], "empty token batch"),
                       (torch.zeros(1, model.max_len + 1, dtype=torch.long, device="meta"), "exceeds max_len")):
        with pytest.raises(InputShapeError, match=words):
            model.check_tokens(bad)
    with pytest.raises(RuntimeError, match="meta"):
        model.check_tokens(far, values=True)          # the range check reads the ids
    model.check_token_values = True
    try:
        with pytest.raises(RuntimeError, match="meta"):
            model.check_tokens(far)
    finally:
        model.check_token_values = False


def test_small_integer_id_dtypes_are_accepted():
    model = _lm("ar_small_attn")
    ids = torch.randint(0, 65, (1, 6))
    with torch.no_grad():
        ref = model(ids)
        for dtype in (torch.uint8, torch.int16, torch.int32):
            assert torch.equal(model(ids.to(dtype)), ref)
