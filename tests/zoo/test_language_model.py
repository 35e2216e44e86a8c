"""The language-model kinds, the Tiny Shakespeare data, and the LM recipe (fit, exact resume, export, eval)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from zoo.data.text import (TINYSHAKESPEARE_CHARS, CharTokenizer, TinyShakespeareDataModule, prompt_answer_example,
                           split_text)
from zoo.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shakespeare(shared_data, monkeypatch, zoo_cache):
    monkeypatch.setenv("ZOO_DATA", str(shared_data))
    return shared_data / "tinyshakespeare.txt"


def test_char_tokenizer():
    tok = CharTokenizer(TINYSHAKESPEARE_CHARS)
    assert tok.vocab_size == 67 and (tok.end_id, tok.mask_id) == (65, 66)
    ids = tok.encode("ROMEO:\nO")
    assert tok.decode(ids + [tok.end_id] + ids) == "ROMEO:\nO"
    assert tok.decode([tok.mask_id, *ids[:2]]) == "_RO"
    assert CharTokenizer.from_json(tok.to_json()) == tok
    with pytest.raises(ConfigError, match="'é'.*not in this model's vocabulary"):
        tok.encode("café")


def test_shakespeare_split_and_windows(shakespeare):
    text = shakespeare.read_text()
    assert "".join(sorted(set(text))) == TINYSHAKESPEARE_CHARS
    train, val = split_text(text)
    assert len(train) == 1_003_854 and train + val == text
    dm = TinyShakespeareDataModule(context=256, batch_size=4)
    dm.setup()
    assert len(dm.val_data) == 435 and len(dm.train_data) == len(train) - 255
    assert torch.equal(dm.val_data[1], torch.tensor(dm.tokenizer.encode(val[256:512])))
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 256) and batch.dtype == torch.long


def test_prompt_answer_batch_masks_the_answer_only():
    from zoo.recipes.language_model import LanguageModelTask

    tok = CharTokenizer(TINYSHAKESPEARE_CHARS)
    ids, maskable = prompt_answer_example(tok, "Q:", "Ay.", 8)
    assert tok.decode(ids) == "Q:Ay." and ids[5:].tolist() == [tok.end_id] * 3
    assert maskable.tolist() == [False, False] + [True] * 6
    task = LanguageModelTask(model="mdlm_tiny", chars=TINYSHAKESPEARE_CHARS)
    torch.manual_seed(0)
    loss = task.lm_loss(ids[None].repeat(4, 1), maskable[None].repeat(4, 1))
    assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ConfigError, match="do not fit"):
        prompt_answer_example(tok, "Q:", "Ay.", 5)


def test_kinds_share_one_network():
    from zoo.kinds.language_model import language_model_builder, parse_lm_name

    mdlm = language_model_builder("diffusion-lm", "tiny")()
    ar = language_model_builder("causal-lm", "tiny")()
    assert mdlm.kind == "diffusion-lm" and ar.kind == "causal-lm" and ar.causal and not mdlm.causal
    assert [n for n, _ in mdlm.named_parameters()] == [n for n, _ in ar.named_parameters()]
    assert mdlm(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 67)
    assert parse_lm_name("ar_small_gla") == ("causal-lm", "small_gla")
    with pytest.raises(ConfigError, match="mdlm_<size>"):
        parse_lm_name("gpt_small")


def _fit(args):
    from zoo.recipes.cli import main
    return main(args)


TINY = ["--model.init_args.model", "mdlm_tiny", "--model.init_args.model_args", "{dropout: 0.1, max_len: 64}",
        "--model.init_args.warmup_steps", "2", "--data.init_args.context", "16", "--data.init_args.batch_size", "4",
        "--data.init_args.val_windows", "2", "--data.init_args.eval_batch_size", "2",
        "--model.init_args.val_nelbo_samples", "2", "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
        "--trainer.enable_model_summary", "false", "--trainer.deterministic", "true",
        "--checkpoint_every_n_steps", "3", "--trainer.max_time", "null", "--progress", "none"]  # a clock in the schedule is not repeatable


def _state(ckpt: Path):
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    return c["state_dict"], c["optimizer_states"][0]["state"]


@pytest.mark.parametrize("model", ["mdlm_tiny", pytest.param("ar_tiny", marks=pytest.mark.slow)])
def test_killed_and_resumed_lm_fit_matches_uninterrupted(shakespeare, tmp_path, monkeypatch, model):
    import zoo.recipes.cli as cli
    from lightning.pytorch.callbacks import Callback

    monkeypatch.chdir(REPO)
    common = ["--config", "configs/tinyshakespeare_mdlm_attn.yaml", *TINY, "--model.init_args.model", model]
    straight = tmp_path / "straight"
    assert _fit(common + ["--trainer.default_root_dir", str(straight)]) == 0

    class Killed(RuntimeError):
        pass

    class KillAtStep(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                raise Killed()

    real = cli._make_callbacks
    monkeypatch.setattr(cli, "_make_callbacks", lambda *a, **k: real(*a, **k) + [KillAtStep()])
    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        _fit(common + ["--trainer.default_root_dir", str(resumed)])
    monkeypatch.setattr(cli, "_make_callbacks", real)
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _fit(common + ["--trainer.default_root_dir", str(resumed), "--resume"]) == 0
    assert not [w for w in caught if "not resumable" in str(w.message)]  # the loader resumes through the module
    w_a, opt_a = _state(straight / "checkpoints" / "last.ckpt")
    w_b, opt_b = _state(resumed / "checkpoints" / "last.ckpt")
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        assert torch.equal(w_a[k], w_b[k]), k
    for i in opt_a:
        assert torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"])
    summary = json.loads((straight / "fit_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["val"]["val/nats_per_char"] > 0
    from zoo.cli import main as zoo_main
    from zoo.kinds.language_model import evaluate_language_model, load_language_model

    m = load_language_model(straight / "export.safetensors")
    assert m.kind == ("diffusion-lm" if model.startswith("mdlm") else "causal-lm")
    res = evaluate_language_model(m, context=16, num_t=2, max_windows=3)
    assert res["windows"] == 3 and res["chars_scored"] == (48 if m.kind == "diffusion-lm" else 45)
    assert 0 < res["nats_per_char"] < 10 and res["bits_per_char"] > res["nats_per_char"]
    out = tmp_path / "eval.json"                                # zoo eval dispatches language models here
    assert zoo_main(["eval", model, "--checkpoint", str(straight / "export.safetensors"), "--num-t", "2",
                     "--max-windows", "3", "--context", "16", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["nats_per_char"] == pytest.approx(res["nats_per_char"], rel=1e-6)


def test_recipe_errors(shakespeare, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="optimiser"):
        _fit(["--config", "configs/tinyshakespeare_ar_attn.yaml", "--optimiser.lr", "1"])
    with pytest.raises(ConfigError, match="val_nelbo_samples"):
        _fit(["--config", "configs/tinyshakespeare_ar_attn.yaml", "--model.init_args.val_nelbo_samples", "0"])


def test_subword_tokenizer_wraps_minilm(shakespeare):
    from zoo.data.text import SubwordTokenizer

    tok = SubwordTokenizer()
    ids = tok.encode("a dog runs on the grass")
    assert ids and tok.mask_id not in ids and tok.vocab_size > 30_000
    assert tok.decode(ids + [tok.end_id, *ids]) == "a dog runs on the grass"


def _periodic_batch(batch: int, length: int, period: int = 8) -> torch.Tensor:
    """One fixed batch of a random 8-symbol phrase repeated from random offsets: learnable within tens of steps
    by both objectives (a masked or next symbol follows from its neighbours), unlike uniform noise."""
    g = torch.Generator().manual_seed(0)
    phrase = torch.randint(0, len(TINYSHAKESPEARE_CHARS), (period,), generator=g)
    return phrase[(torch.randint(0, period, (batch, 1), generator=g) + torch.arange(length)) % period]


def _fit_one_batch(prefix, size, device, amp, batch, length, lr, steps=40, model_args=None):
    """Fit ONE fixed batch for ``steps`` AdamW steps at a fixed lr (no warmup), under bf16 autocast with ``amp``:
    every gradient finite, and the loss of a fixed noising of the batch (the same t and masks before and
    after, so MDLM's sampling noise does not decide) below 0.7x its value at init."""
    from zoo.recipes.language_model import LanguageModelTask

    dev = torch.device(device)
    x = _periodic_batch(batch, length).to(dev)
    torch.manual_seed(0)
    task = LanguageModelTask(model=f"{prefix}_{size}", chars=TINYSHAKESPEARE_CHARS, model_args=model_args).to(dev)

    def fixed_loss() -> float:
        with torch.no_grad(), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
                torch.autocast(dev.type, torch.bfloat16, enabled=amp):
            torch.manual_seed(1)
            return float(task.lm_loss(x, None))

    opt = torch.optim.AdamW(task.model.parameters(), lr=lr, weight_decay=0.0)
    first = fixed_loss()
    for step in range(steps):
        with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
            loss = task.lm_loss(x, None)
        loss.backward()
        bad = [n for n, p in task.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert math.isfinite(loss.item()) and not bad, (prefix, step, loss.item(), bad[:3])
        opt.step()
        opt.zero_grad(set_to_none=True)
    last = fixed_loss()
    assert last < 0.7 * first, (prefix, first, last)


def _check_samplers(size, device, amp, length, model_args=None):
    """The AR key/value cache gives the uncached tokens (exactly in fp32, > 90% in bf16, where a near-tie may
    round the other way), and the MDLM block sampler with the prefix cache fills every position."""
    import zoo
    from heads.lm.sampling import generate

    dev = torch.device(device)
    ar = zoo.create_model(f"ar_{size}", **(model_args or {})).to(dev).eval()
    mdlm = zoo.create_model(f"mdlm_{size}", **(model_args or {})).to(dev).eval()
    prompt = ar.tokenizer.encode("ROMEO:")
    with torch.autocast(dev.type, torch.bfloat16, enabled=amp):
        a = generate(ar, prompt, length, temperature=1.0, seed=1, batch_size=4)
        b = generate(ar, prompt, length, temperature=1.0, seed=1, batch_size=4, cache=True)
        out = generate(mdlm, prompt, length, steps=length // 2, block=length // 4, temperature=1.0, cache=True,
                       batch_size=4)
    assert (a == b).float().mean() > 0.9 if amp else torch.equal(a, b)
    assert out.shape == (4, len(prompt) + length) and not bool((out == mdlm.tokenizer.mask_id).any())


@pytest.mark.parametrize("prefix", ["mdlm", "ar"])
def test_fp32_one_batch_fit_on_cpu(prefix):
    """The GPU test's logic at a tiny size in fp32 on the CPU."""
    _fit_one_batch(prefix, "tiny", "cpu", amp=False, batch=4, length=32, lr=3e-3)


def test_fp32_samplers_on_cpu():
    _check_samplers("tiny", "cpu", amp=False, length=16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("size", ["small_attn", "small_gla"])
def test_gpu_bf16_training_step_and_samplers(size):
    """On the GPU under bf16 autocast (the recipes' precision), at the shipped sizes, MDLM and its AR twin fit
    one batch (fp32 on the CPU: 0.35x (MDLM) and 0.04x (AR) of the initial loss after 40 steps at 64 tokens),
    and the cached samplers agree with the uncached ones."""
    for prefix in ("mdlm", "ar"):
        _fit_one_batch(prefix, size, "cuda", amp=True, batch=16, length=256, lr=1e-3)
    _check_samplers(size, "cuda", amp=True, length=64)


def test_export_best_keeps_the_best_validation_weights(shakespeare, tmp_path, monkeypatch):
    """--export_best val/loss: export.safetensors holds the weights of the lowest validation loss (its step in
    the metadata matches the logged curve) and the final weights go to export_last.safetensors."""
    import csv

    from safetensors import safe_open

    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    args = ["--config", "configs/tinyshakespeare_ar_attn.yaml", *TINY, "--model.init_args.model", "ar_tiny",
            "--trainer.max_steps", "8", "--trainer.val_check_interval", "2", "--model.init_args.lr", "3e-2",
            "--trainer.default_root_dir", str(run)]
    assert _fit(args) == 0
    rows = [r for v in sorted((run / "csv").glob("version_*")) for r in csv.DictReader(open(v / "metrics.csv"))
            if r.get("val/loss")]
    curve = {int(r["step"]) + 1: float(r["val/loss"]) for r in rows}   # logged step is 0-based
    best_step = min(curve, key=curve.get)
    with safe_open(str(run / "export.safetensors"), "pt") as f:
        meta = f.metadata()
        best_w = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["selected_by"] == f"min val/loss {curve[best_step]:.6g} at step {best_step}", (meta, curve)
    with safe_open(str(run / "export_last.safetensors"), "pt") as f:
        assert "selected_by" not in f.metadata()
        last_w = {k: f.get_tensor(k) for k in f.keys()}
    assert best_w.keys() == last_w.keys()
    assert (best_step == 8) == all(torch.equal(best_w[k], last_w[k]) for k in best_w)


def test_export_best_refuses_a_bad_mode():
    from zoo.errors import ConfigError
    from zoo.recipes.callbacks import BestExport

    with pytest.raises(ConfigError, match="export_best_mode"):
        BestExport(Path("."), "val/loss", mode="lowest")
    assert BestExport(Path("."), "val/top1").mode == "max" and BestExport(Path("."), "val/loss").mode == "min"


def test_graphs_need_cuda():
    import zoo
    from heads.lm.sampling import generate

    model = zoo.create_model("mdlm_tiny")
    with pytest.raises(ValueError, match="CUDA device"):
        generate(model, [1], 8, graphs=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("size", ["small_attn", "small_gla"])
def test_gpu_graphed_samplers_equal_eager(size):
    """graphs=True replays the same kernels on the same shapes: diffusion samples equal the eager ones exactly
    (fp32 and bf16 autocast), with the prefix cache too (one windowed graph per block); the AR twin on its padded
    window equals its token-by-token decoding in fp32, and refuses graphs with its key/value cache."""
    import zoo
    from heads.lm.sampling import generate

    torch.manual_seed(0)
    mdlm = zoo.create_model(f"mdlm_{size}").cuda().eval()
    ar = zoo.create_model(f"ar_{size}").cuda().eval()
    prompt = ar.tokenizer.encode("ROMEO:")
    for amp in (False, True):
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            for kw in (dict(sampler="low_confidence", steps=32, block=16), dict(sampler="threshold", threshold=0.5),
                       dict(sampler="ddpm_cache", steps=64), dict(sampler="low_confidence", steps=32, block=16, cache=True),
                       dict(sampler="threshold", threshold=0.5, block=16, cache=True)):
                eager = generate(mdlm, prompt, 64, temperature=1.0, seed=3, batch_size=4, **kw)
                graphed = generate(mdlm, prompt, 64, temperature=1.0, seed=3, batch_size=4, graphs=True, **kw)
                assert torch.equal(eager, graphed), (amp, kw)
    a = generate(ar, prompt, 48, temperature=0.0, batch_size=2)
    b = generate(ar, prompt, 48, temperature=0.0, batch_size=2, graphs=True)
    assert a.shape == b.shape and (a == b).float().mean() > 0.95
    with pytest.raises(ValueError, match="cache=False"):
        generate(ar, prompt, 8, cache=True, graphs=True)


def test_cached_graph_orchestration_equals_the_eager_cache(monkeypatch):
    """The CUDA-graph plumbing of the cached sampler on the CPU: a stand-in with a graph's semantics (a static
    input buffer copied into, a static output overwritten at each replay) must give the eager cached samples
    exactly, capture one windowed forward per block (the refresh pass stays eager) and count the same forwards."""
    import zoo
    from heads.lm import sampling

    captured = []

    class Replay:
        def __init__(self, fn, example):
            self.fn, self.x = fn, example.clone()
            self.out = fn(self.x).clone()
            captured.append(tuple(example.shape))

        def __call__(self, x):
            self.x.copy_(x)
            self.out.copy_(self.fn(self.x))
            return self.out

    torch.manual_seed(0)
    model = zoo.create_model("mdlm_tiny").eval()
    prompt = torch.tensor([model.tokenizer.encode("ROMEO:")] * 2)
    monkeypatch.setattr(sampling, "_GraphedForward", Replay)
    for kw in (dict(sampler="low_confidence", steps=16, block=8), dict(sampler="threshold", threshold=0.5, block=8)):
        runs = []
        for graphs in (False, True):
            captured.clear()
            stats = sampling.SampleStats(tokens=64)
            out = sampling._diffusion(model, prompt.clone(), 32, kw.get("steps", 32), kw["block"], kw["sampler"],
                                      kw.get("threshold"), 1.0, sampling._Rng(3, torch.device("cpu")), True, stats,
                                      graphs=graphs)
            runs.append((out, stats.forwards, stats.cached_forwards, list(captured)))
        (eager, f0, c0, cap0), (graphed, f1, c1, cap1) = runs
        assert torch.equal(eager, graphed), kw
        assert (f0, c0) == (f1, c1) and cap0 == [] and c1 > 0
        P = prompt.shape[1]
        windows = [(2, P + 32 - lo) for lo in range(P, P + 32, 8)]  # one per block, in order
        if kw["sampler"] == "low_confidence":  # 4 steps a block: every block replays its window
            assert cap1 == windows
        else:                                  # a block decoded in one step has nothing to replay
            assert cap1 and all(w in windows for w in cap1)
